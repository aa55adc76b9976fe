"""Comparison methods of the paper's experiments that are not deep backbones.

features.py: flat per-flow features (length statistics, raw lengths + bytes);
shallow.py: random forest and LightGBM; imbalance.py: ROS, RUS, SMOTE, class
weights. The deep baselines (2D-CNN, BiLSTM, BiGRU) live in
pass_jax/models/backbones.py.
"""
