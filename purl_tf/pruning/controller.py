"""Per-layer control of a wrapped model's masks, and the dense snapshot to return to.

Masks are variables: writing one changes what every compiled train/eval function
computes on its next call, with no rebuild and no retrace. Levels are either a sparsity
fraction of the layer's weights (exact: the smallest magnitudes go, ties by position) or
a magnitude threshold of alpha * std of the layer's weights (Han et al.). A layer always
keeps at least one weight.
"""
from typing import List, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning import accounting
from purl_tf.pruning.wrap import prunable_layers

SPARSITY = "sparsity"  # level = fraction of the layer's weights set to zero, in [0, 1)
THRESHOLD = "threshold"  # level = alpha: weights with |w| <= alpha * std(w) go, alpha >= 0
MODES = (SPARSITY, THRESHOLD)


@tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.int32)])
def _keep_largest(weight, keep):
  """Mask (weight's shape) of ones at the `keep` largest |weight|, ties to lower positions."""
  flat = tf.reshape(tf.abs(weight), [-1])
  size = tf.size(flat)

  def ones_at_top():
    _, index = tf.math.top_k(flat, k=keep, sorted=False)
    return tf.scatter_nd(index[:, None], tf.ones([keep]), [size])

  def zeros_at_bottom():  # top_k costs O(n log k): select the smaller side.
    _, index = tf.math.top_k(-flat, k=size - keep, sorted=False)
    return tf.tensor_scatter_nd_update(tf.ones([size]), index[:, None], tf.zeros([size - keep]))

  mask = tf.cond(keep * 2 <= size, ones_at_top, zeros_at_bottom)
  return tf.reshape(mask, tf.shape(weight))


@tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.float32)])
def _above_threshold(weight, alpha):
  """(mask, threshold): ones where |weight| > alpha * std(weight); the largest always kept."""
  magnitude = tf.abs(weight)
  threshold = alpha * tf.math.reduce_std(weight)
  mask = tf.cast(magnitude > threshold, tf.float32)
  largest = tf.cast(tf.equal(tf.reshape(tf.range(tf.size(weight)), tf.shape(weight)),
                             tf.cast(tf.argmax(tf.reshape(magnitude, [-1])), tf.int32)),
                    tf.float32)
  return tf.maximum(mask, largest), threshold


class PruningController:
  """Sets and reads the pruning level of each prunable layer of a wrapped model.

  Build it inside the strategy scope of the model. It keeps an in-memory copy of every
  model variable (weights, batch-norm statistics, masks) taken at construction or by
  `snapshot()`; `reset()` restores it.
  """

  def __init__(self, model: keras.Model):
    self.model = model
    self.wrappers = prunable_layers(model)
    if not self.wrappers:
      raise PurlError(f"model {model.name} has no pruning wrappers: wrap it with "
                      "purl_tf.pruning.wrap first.")
    self.infos: List[accounting.LayerInfo] = accounting.describe(model)
    self.names = [info.name for info in self.infos]
    self.sizes = np.array([info.params for info in self.infos], np.int64)
    self.total_params = accounting.parameter_count(model)
    self._vars = [wrapper.pruning_vars[0] for wrapper in self.wrappers]  # (weight, mask, thr)
    self._kept = self.sizes.copy()
    self._saved = [tf.Variable(v, trainable=False, name="dense_copy") for v in model.variables]
    self._kept_at_snapshot = self._kept.copy()

  @property
  def num_layers(self) -> int:
    return len(self.wrappers)

  def index(self, name: str) -> int:
    """Position of a prunable layer by its (unwrapped) name."""
    try:
      return self.names.index(name)
    except ValueError:
      raise PurlError(f"{name!r} is not a prunable layer of {self.model.name}; its prunable "
                      f"layers are {self.names}.") from None

  def weight(self, layer: int) -> tf.Variable:
    """The prunable weight variable of a layer (kernel or depthwise kernel)."""
    return self._vars[layer][0]

  @tf.function
  def _copy(self, sources, targets):
    for source, target in zip(sources, targets):
      target.assign(source)

  def snapshot(self):
    """Remembers the current variables (and masks) as the state `reset()` returns to."""
    self._copy(self.model.variables, self._saved)
    self._kept_at_snapshot = self._kept.copy()

  def reset(self):
    """Restores every model variable from the in-memory snapshot (dense at construction)."""
    self._copy(self._saved, self.model.variables)
    self._kept = self._kept_at_snapshot.copy()

  def _write(self, layer: int, mask, threshold):
    weight, mask_var, threshold_var = self._vars[layer]
    mask_var.assign(mask)
    threshold_var.assign(threshold)
    weight.assign(weight * mask)
    self._kept[layer] = int(tf.reduce_sum(mask))
    return self.sparsity(layer)

  def set_sparsity(self, layer: int, fraction: float) -> float:
    """Prunes the smallest-magnitude `fraction` of layer's weights; returns sparsity reached."""
    if not 0.0 <= fraction < 1.0:
      raise PurlError(f"sparsity {fraction} of layer {self.names[layer]} is outside [0, 1).")
    size = int(self.sizes[layer])
    keep = max(1, size - int(round(fraction * size)))
    weight = self._vars[layer][0]
    mask = _keep_largest(tf.convert_to_tensor(weight), tf.constant(keep, tf.int32))
    smallest_kept = tf.reduce_min(tf.where(mask > 0, tf.abs(weight), np.inf))
    return self._write(layer, mask, smallest_kept)

  def set_threshold(self, layer: int, alpha: float) -> float:
    """Prunes weights with |w| <= alpha * std(w) of the layer; returns sparsity reached."""
    if alpha < 0:
      raise PurlError(f"threshold alpha {alpha} of layer {self.names[layer]} is negative.")
    mask, threshold = _above_threshold(tf.convert_to_tensor(self._vars[layer][0]),
                                       tf.constant(alpha, tf.float32))
    return self._write(layer, mask, threshold)

  def set_level(self, layer: int, level: float, mode: str = SPARSITY) -> float:
    """set_sparsity or set_threshold by `mode`; returns the sparsity reached."""
    if mode == SPARSITY:
      return self.set_sparsity(layer, level)
    if mode == THRESHOLD:
      return self.set_threshold(layer, level)
    raise PurlError(f"pruning mode {mode!r} is unknown: use one of {MODES}.")

  def sparsity(self, layer: int) -> float:
    """Fraction of the layer's prunable weights that are masked out."""
    return 1.0 - self._kept[layer] / self.sizes[layer]

  def sparsities(self) -> np.ndarray:
    """Per-layer sparsity, float64 (num_layers,)."""
    return 1.0 - self._kept / self.sizes

  def global_sparsity(self) -> float:
    """Fraction of all prunable weights that are masked out."""
    return 1.0 - self._kept.sum() / self.sizes.sum()

  def allocation(self) -> dict:
    """{layer name: sparsity}: the current per-layer levels as fractions."""
    return dict(zip(self.names, self.sparsities().tolist()))

  def costs(self) -> dict:
    """Parameters and FLOPs left now (see accounting.costs)."""
    return accounting.costs(self.infos, self.sparsities(), self.total_params)

  def measured_sparsities(self) -> np.ndarray:
    """Per-layer share of exactly-zero weights, read from the variables (for checks)."""
    return np.array([float(tf.reduce_mean(tf.cast(tf.equal(w, 0.0), tf.float32)))
                     for w, _, _ in self._vars])

  def apply(self, levels: Sequence[float], mode: str = SPARSITY) -> np.ndarray:
    """Sets every layer's level in order; returns the sparsities reached."""
    if len(levels) != self.num_layers:
      raise PurlError(f"{len(levels)} levels given for {self.num_layers} prunable layers.")
    return np.array([self.set_level(i, level, mode) for i, level in enumerate(levels)])
