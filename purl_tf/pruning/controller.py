"""Per-layer control of a wrapped model's masks, and the dense snapshot to return to.

Masks are variables: writing one changes what every compiled train/eval function
computes on its next call, with no rebuild and no retrace. Levels are either a sparsity
fraction of the layer's weights (exact: the smallest magnitudes go, ties by position) or
a magnitude threshold of alpha * std of the layer's weights (Han et al.). A layer always
keeps at least one weight. Masks are chosen and written on the device holding the weights
(pruning/selection.py); only the count of weights kept comes back to the host.
"""
import functools
from typing import List, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning import accounting, selection, state
from purl_tf.pruning.state import VariableCopy
from purl_tf.pruning.wrap import prunable_layers

SPARSITY = "sparsity"  # level = fraction of the layer's weights set to zero, in [0, 1)
THRESHOLD = "threshold"  # level = alpha: weights with |w| <= alpha * std(w) go, alpha >= 0
MODES = (SPARSITY, THRESHOLD)


class PruningController:
  """Sets and reads the pruning level of each prunable layer of a wrapped model.

  Build it inside the strategy scope of the model. It keeps an in-memory copy of every
  model variable (weights, batch-norm statistics, masks) taken at construction or by
  `snapshot()`; `reset()` restores it. `save_step(layer)` / `undo_step()` keep and
  restore only what one step can change: the variables training moves, and that layer's
  mask and threshold.
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
    self._saved = VariableCopy(model.variables, "dense_copy")
    self._saved_weights = [self._saved.of(weight) for weight, _, _ in self._vars]
    self._kept_at_snapshot = self._kept.copy()
    # What training moves: every variable but the masks, thresholds and step counters.
    fixed = {id(v) for _, mask, threshold in self._vars for v in (mask, threshold)}
    fixed |= {id(wrapper.pruning_step) for wrapper in self.wrappers}
    self._trained = [v for v in model.variables if id(v) not in fixed]
    self._step_copy = None  # save_step()'s copy of self._trained, made on first use
    self._step_mask = self._step_threshold = self._step_layer = None
    self._writers = {}  # layer -> its compiled _write
    self._kept_at_step = self._kept.copy()
    self._digest = None  # mask_digest's compiled function, made on first use

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

  def snapshot(self):
    """Remembers the current variables (and masks) as the state `reset()` returns to."""
    self._saved.take()
    self._kept_at_snapshot = self._kept.copy()

  def reset(self):
    """Restores every model variable from the in-memory snapshot (dense at construction)."""
    self._saved.restore()
    self._kept = self._kept_at_snapshot.copy()

  def save_state(self, path: str) -> str:
    """Writes every model variable (weights, masks, statistics) and the levels to `path`
    (.npz), so that `load_state` brings this exact network back, in any process."""
    return state.save_state(path, self.model.variables, kept=self._kept)

  def load_state(self, path: str):
    """Restores the network `save_state` wrote to `path`."""
    kept = state.load_state(path, self.model.variables, ("kept",))["kept"]
    self._kept = kept.astype(np.int64)

  def save_step(self, layer: int):
    """Remembers what a step on `layer` can change, so that `undo_step()` can return to it."""
    _, mask, threshold = self._vars[layer]
    if self._step_copy is None:
      self._step_copy = VariableCopy(self._trained, "step_copy")
      self._step_mask = tf.Variable(mask, trainable=False, shape=tf.TensorShape(None),
                                    name="step_mask")
      self._step_threshold = tf.Variable(threshold, trainable=False, name="step_threshold")
    else:
      self._step_copy.take()
      self._step_mask.assign(mask)
      self._step_threshold.assign(threshold)
    self._step_layer = layer
    self._kept_at_step = self._kept.copy()

  def undo_step(self):
    """Restores the variables and levels of the last `save_step()`."""
    _, mask, threshold = self._vars[self._step_layer]
    self._step_copy.restore()
    mask.assign(self._step_mask)
    threshold.assign(self._step_threshold)
    self._kept = self._kept_at_step.copy()

  def _write(self, weight, mask, threshold, saved, mode, level):
    """Writes the mask of `level` (a keep count, or alpha) chosen among all of the layer's
    weights, the pruned ones taking back their snapshot values first, and zeroes the
    pruned weights; returns the number of weights kept."""
    values = tf.where(mask > 0, weight, saved)
    flat = tf.reshape(values, [-1])
    if mode == SPARSITY:
      chosen, value = selection.keep_largest(flat, tf.cast(level, tf.int64))
    else:
      chosen, value = selection.above_threshold(flat, tf.cast(level, tf.float32))
    chosen = tf.reshape(chosen, tf.shape(values))
    mask.assign(tf.cast(chosen, mask.dtype))
    weight.assign(values * chosen)
    threshold.assign(tf.cast(value, threshold.dtype))
    return tf.reduce_sum(tf.cast(chosen, tf.int64))

  def _set(self, layer: int, mode: str, level: float) -> float:
    """Writes layer's mask for `level` and zeroes its pruned weights, on their device, in
    a graph of the layer's own (traced once per layer and mode)."""
    if layer not in self._writers:
      self._writers[layer] = tf.function(functools.partial(
          self._write, *self._vars[layer], self._saved_weights[layer]), autograph=False)
    kept = self._writers[layer](mode, tf.constant(level, tf.float64))
    self._kept[layer] = int(kept)
    return self.sparsity(layer)

  def set_sparsity(self, layer: int, fraction: float) -> float:
    """Prunes the smallest-magnitude `fraction` of layer's weights; returns sparsity reached."""
    if not 0.0 <= fraction < 1.0:
      raise PurlError(f"sparsity {fraction} of layer {self.names[layer]} is outside [0, 1).")
    size = int(self.sizes[layer])
    return self._set(layer, SPARSITY, max(1, size - int(round(fraction * size))))

  def set_threshold(self, layer: int, alpha: float) -> float:
    """Prunes weights with |w| <= alpha * std(w) of the layer; returns sparsity reached."""
    if alpha < 0:
      raise PurlError(f"threshold alpha {alpha} of layer {self.names[layer]} is negative.")
    return self._set(layer, THRESHOLD, alpha)

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

  def mask_digest(self) -> np.ndarray:
    """float64 (num_layers, 2): per layer, the weights its mask keeps and a checksum of
    where they are (sum of kept positions modulo 65521: exact in float64), read from the
    masks on this process's device. Two processes with equal digests hold equal masks but
    for a collision of the checksum."""
    if self._digest is None:
      self._digest = tf.function(lambda: tf.stack([_digest(mask) for _, mask, _ in self._vars]),
                                 autograph=False)
    return self._digest().numpy()

  def apply(self, levels: Sequence[float], mode: str = SPARSITY) -> np.ndarray:
    """Sets every layer's level in order; returns the sparsities reached."""
    if len(levels) != self.num_layers:
      raise PurlError(f"{len(levels)} levels given for {self.num_layers} prunable layers.")
    return np.array([self.set_level(i, level, mode) for i, level in enumerate(levels)])


def _digest(mask: tf.Variable) -> tf.Tensor:
  """float64 (2,): the ones in `mask` and the sum of their flat positions modulo 65521."""
  kept = tf.reshape(tf.cast(mask, tf.float64) > 0.5, [-1])
  positions = tf.cast(tf.range(tf.size(kept, out_type=tf.int64)) % 65521, tf.float64)
  return tf.stack([tf.reduce_sum(tf.cast(kept, tf.float64)),
                   tf.reduce_sum(tf.where(kept, positions, 0.0))])
