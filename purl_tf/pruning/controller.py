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


def kth_smallest(values: np.ndarray, k: int) -> float:
  """The k-th smallest (0-based) of a flat array, exactly, in a few linear passes.

  A sorted sample brackets the answer (by 4 standard deviations of the sample rank);
  only the values strictly inside the bracket are partitioned, so the many equal zeros
  of an already pruned layer cost one count. Falls back to a full partition when the
  bracket misses.
  """
  size = values.size
  if size > 1 << 17:
    sample = np.sort(values[::size // 16384])
    quantile = k / size
    position = quantile * sample.size
    margin = 4.0 * np.sqrt(sample.size * quantile * (1.0 - quantile)) + 16.0
    low = sample[int(position - margin)] if position - margin >= 0 else -np.inf
    high = sample[int(position + margin)] if position + margin < sample.size else np.inf
    up_to_low = np.count_nonzero(values <= low)
    if k < up_to_low:
      if np.count_nonzero(values < low) <= k:
        return low
    else:
      inside = values[(values > low) & (values < high)]
      if k < up_to_low + inside.size:
        return np.partition(inside, k - up_to_low)[k - up_to_low]
  return np.partition(values, k)[k]


def keep_largest(weight: np.ndarray, keep: int):
  """(bool mask of weight's shape, threshold): the `keep` largest |weight| kept.

  Ties at the threshold go to lower positions, so exactly `keep` weights remain.
  """
  magnitude = np.abs(weight).ravel()
  if keep >= magnitude.size:
    return np.ones(weight.shape, bool), 0.0
  threshold = kth_smallest(magnitude, magnitude.size - keep)
  mask = magnitude > threshold
  missing = keep - np.count_nonzero(mask)
  if missing > 0:
    mask[np.flatnonzero(magnitude == threshold)[:missing]] = True
  return mask.reshape(weight.shape), float(threshold)


def above_threshold(weight: np.ndarray, alpha: float):
  """(bool mask, threshold): |weight| > alpha * std(weight); the largest one always kept."""
  magnitude = np.abs(weight)
  threshold = alpha * float(np.std(weight, dtype=np.float64))
  mask = magnitude > threshold
  if not mask.any():
    mask.flat[np.argmax(magnitude)] = True
  return mask, threshold


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
    saved = {id(v): copy for v, copy in zip(model.variables, self._saved)}
    self._saved_weights = [saved[id(weight)] for weight, _, _ in self._vars]
    self._kept_at_snapshot = self._kept.copy()
    self._step_copy = None  # variables of save_step(), made on first use
    self._kept_at_step = self._kept.copy()

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

  def _values(self, layer: int) -> np.ndarray:
    """The layer's weights as if unpruned, as a read-only view (no copy on the CPU).

    Weights pruned earlier take back their snapshot values first, so a new level is
    chosen among all of the layer's weights whatever its previous level was.
    """
    weight, mask, _ = self._vars[layer]
    if self._kept[layer] < self.sizes[layer]:
      weight.assign(tf.where(mask > 0, weight, self._saved_weights[layer]))
    return np.asarray(weight.value())

  def save_step(self):
    """Remembers the current variables, so that `undo_step()` can return to them."""
    if self._step_copy is None:
      self._step_copy = [tf.Variable(v, trainable=False, name="step_copy")
                         for v in self.model.variables]
    else:
      self._copy(self.model.variables, self._step_copy)
    self._kept_at_step = self._kept.copy()

  def undo_step(self):
    """Restores the variables and levels of the last `save_step()`."""
    self._copy(self._step_copy, self.model.variables)
    self._kept = self._kept_at_step.copy()

  def _write(self, layer: int, mask: np.ndarray, threshold: float) -> float:
    """Stores a bool mask (1 byte per weight crosses to TF) and zeroes the pruned weights."""
    weight, mask_var, threshold_var = self._vars[layer]
    mask_var.assign(tf.cast(mask, mask_var.dtype))
    weight.assign(weight * mask_var)
    threshold_var.assign(threshold)
    self._kept[layer] = int(np.count_nonzero(mask))
    return self.sparsity(layer)

  def set_sparsity(self, layer: int, fraction: float) -> float:
    """Prunes the smallest-magnitude `fraction` of layer's weights; returns sparsity reached."""
    if not 0.0 <= fraction < 1.0:
      raise PurlError(f"sparsity {fraction} of layer {self.names[layer]} is outside [0, 1).")
    size = int(self.sizes[layer])
    keep = max(1, size - int(round(fraction * size)))
    return self._write(layer, *keep_largest(self._values(layer), keep))

  def set_threshold(self, layer: int, alpha: float) -> float:
    """Prunes weights with |w| <= alpha * std(w) of the layer; returns sparsity reached."""
    if alpha < 0:
      raise PurlError(f"threshold alpha {alpha} of layer {self.names[layer]} is negative.")
    return self._write(layer, *above_threshold(self._values(layer), alpha))

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
