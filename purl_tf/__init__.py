"""purl_tf: learn per-layer pruning levels with a DQN agent rewarded at every pruning step.

Importing this package selects Keras 2 (tf-keras) for TensorFlow: tfmot and
tensorflow-probability (so tf-agents) only work with it. That choice must be made
before TensorFlow is first imported, so import purl_tf before tensorflow.
"""
import os
import sys

__version__ = "0.1.0"


def _select_legacy_keras():
  """Sets TF_USE_LEGACY_KERAS=1, or fails if TensorFlow already chose Keras 3."""
  if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not tf.keras.__version__.startswith("2."):
      raise ImportError(
          "purl_tf needs tf-keras (Keras 2), but TensorFlow was imported with Keras "
          f"{tf.keras.__version__}: import purl_tf before tensorflow/keras, or set "
          "TF_USE_LEGACY_KERAS=1 in the environment.")
  os.environ["TF_USE_LEGACY_KERAS"] = "1"
  # TensorFlow's C++ info lines (oneDNN, CUDA probing) drown the progress display.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_select_legacy_keras()
