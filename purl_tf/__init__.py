"""purl_tf: learn per-layer pruning levels with a DQN agent rewarded at every pruning step.

Importing this package selects Keras 2 (tf-keras) for TensorFlow: tfmot and
tensorflow-probability (so tf-agents) only work with it. That choice must be made
before TensorFlow is first imported, so import purl_tf before tensorflow. On x86-64 it
also turns TensorFlow's oneDNN kernels on unless TF_ENABLE_ONEDNN_OPTS says otherwise.

`purl_tf.prune` and `purl_tf.PruneResult` (purl_tf.run.api) are loaded on first use, so
that importing the package loads no TensorFlow before tf-keras is selected.
"""
import os
import platform
import sys

__version__ = "0.1.0"
# Names of the package that live in a submodule, imported on first use (PEP 562).
_LAZY = {"prune": "purl_tf.run.api", "PruneResult": "purl_tf.run.api"}
__all__ = ["prune", "PruneResult", "__version__"]


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'purl_tf' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))


def _select_legacy_keras():
  """Sets TF_USE_LEGACY_KERAS=1, or fails if TensorFlow already chose Keras 3.

  TensorFlow resolves `tf.keras` on first use, so an imported but unused TensorFlow
  still picks tf-keras; one that already resolved Keras 3 cannot change.
  """
  if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() not in ("1", "true"):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
  if "tensorflow" in sys.modules:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not tf.keras.Model.__module__.startswith("tf_keras"):
      raise ImportError(
          "purl_tf needs tf-keras (Keras 2), but TensorFlow was imported with Keras "
          f"{getattr(tf.keras, '__version__', '3')}: import purl_tf before tensorflow/keras, "
          "or set TF_USE_LEGACY_KERAS=1 in the environment.")
  # Hides TensorFlow's C++ info and warning lines (CPU features, ...), which drown the
  # progress display. The lines its libraries print while they load (oneDNN, CUDA drivers)
  # come through Abseil before logging is set up and ignore it: purl_tf.console drops them.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _enable_onednn():
  """Sets TF_ENABLE_ONEDNN_OPTS=1 on x86-64 unless it is set.

  TensorFlow turns its oneDNN CPU kernels on by itself only on processors with AVX-512;
  on an AVX2-only x86-64 machine its default kernels took 3.3 times as long per train step
  of the benchmarks' ResNet-20 (docs/results.md, "oneDNN on an AVX2 processor"). Other
  machines (aarch64) keep TensorFlow's own choice.
  """
  if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


_select_legacy_keras()
_enable_onednn()
