"""muse_jax: Muse-style text-to-image generation (arXiv 2301.00704) in JAX/Flax."""
import os

# TensorFlow is imported only by clu's summary writers; keep its C++ start-up chatter quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
