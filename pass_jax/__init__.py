"""PASS encrypted traffic classification in JAX/Flax: models, losses, train steps, trainers."""
import os

# TensorFlow (tf.data, tfds) prints C++ INFO lines at import unless told otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
