"""muse_jax: Muse-style text-to-image generation (arXiv 2301.00704) in JAX/Flax."""
import os

# TensorFlow is imported only to read TFDS datasets (and by etils for gs:// paths); keep its
# C++ start-up chatter quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Its oneDNN notice is printed before that level applies; TF computes nothing here, so the
# oneDNN kernels it would announce never run.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
