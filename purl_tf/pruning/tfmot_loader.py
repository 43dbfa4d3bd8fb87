"""tfmot, imported without loading Keras 3 (every purl_tf module takes tfmot from here).

tfmot's prune registry probes `keras.src.engine`, which Keras 3 does not have: the probe
imports the whole Keras 3 package (1.9-2.4 s of every process's start, measured) only to
fail and fall back. While Keras 3 is not loaded, the probe is made to fail at once instead:
the registry ends the same (its fallback; base_layer None either way), and Keras 3 stays
free to load later, for a user's Keras 3 model (purl_tf.models.keras3).
"""
import sys

_KERAS3_UNLOADED = "keras" not in sys.modules
if _KERAS3_UNLOADED:
  sys.modules["keras"] = None  # `import keras` raises ImportError while this is set
try:
  import tensorflow_model_optimization as tfmot
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
finally:
  if _KERAS3_UNLOADED:
    del sys.modules["keras"]

__all__ = ["pruning_wrapper", "tfmot"]
