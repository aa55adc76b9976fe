"""pcap -> flows -> tokens -> tfds dataset -> tf.data batches and triples. Never imports Flax."""
import os

# TensorFlow (tf.data, tfds) prints C++ INFO lines at import unless told otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
