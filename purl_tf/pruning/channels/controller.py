"""The controller of a channel search: one decision per channel group, written as masks.

ChannelController(model) finds the model's channel groups (graph.py), ranks each group's
channels once from the dense weights (importance.py), and holds a copy of the model wrapped
for masking (channels/wrap.py). A group's level is the fraction of its channels removed,
least important first, one always kept (keep.least_important_removed). Setting a level
writes the masks of the layers the group touches (assign: every compiled train and eval
function sees them on its next call, nothing retraces) and multiplies their weights by
them; MaskedTrainer re-applies the masks after each optimizer step, so a removed channel
outputs exactly zero while training too. A channel taken back gets its snapshot values
(weights, and its batch norms' moving statistics) as pruning.PruningController's weights do.

What a state costs is counted exactly on the thinner model it stands for (channels.cost,
the removed channels' interactions included), and `shrink()` builds that model with the
current weights. It is duck-compatible with pruning.PruningController where PruningEnv
drives it (num_layers, names, infos, sizes, set_level, apply, sparsity/sparsities,
global_sparsity, reset/snapshot, save_step/undo_step, save_state/load_state, mask_digest,
allocation, costs); its global sparsity is the fraction of the dense FLOPs removed.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.accounting import LayerInfo
from purl_tf.pruning.channels.allocations import allocate
from purl_tf.pruning.channels.flops import Cost, cost, count
from purl_tf.pruning.channels.graph import channel_groups
from purl_tf.pruning.channels.keep import (axis_size, least_important_removed,
                                           removed_positions)
from purl_tf.pruning.channels.layers import OUT, kind, weight_axes
from purl_tf.pruning.channels.shrink import shrink
from purl_tf.pruning.channels.wrap import channel_wrappers, wrap_channels
from purl_tf.pruning import state
from purl_tf.pruning.controller import SPARSITY
from purl_tf.pruning.state import VariableCopy

_COST_CACHE = 4096  # states whose cost is remembered (a few ms each to count)


class ChannelController:
  """Sets and reads the channel level of each group of a model wrapped for channel masks.

  Build it inside the strategy scope the model is trained in; train `controller.model`
  (e.g. with MaskedTrainer). It keeps an in-memory copy of every variable of the wrapped
  model, taken at construction or by `snapshot()`; `reset()` restores it.

  Args:
    model: a flat, built tf-keras functional or Sequential model of fixed input size (it is
      copied, not changed).
    importance: how channels are ranked, 'l1' or 'bn_gamma' (channels.importance).
  Attributes:
    model: the wrapped copy to train and evaluate.
    groups: the channel groups (channels.Group), in network order: one decision each.
    names, sizes, infos: per group, its name, channel count and LayerInfo.
  """

  def __init__(self, model: keras.Model, importance: str = "l1"):
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    found = channel_groups(plain, importance)
    if not found.groups:
      raise PurlError(f"model {model.name} has no channel group to prune"
                      + (f" ({'; '.join(found.warnings)})" if found.warnings else "")
                      + ": channel pruning needs Conv2D, Dense or SeparableConv2D layers "
                      "whose outputs are not the model's outputs.")
    self._plain = plain  # the dense architecture: counting, and shrink's template
    self.groups = found.groups
    self.warnings = found.warnings
    self.names = [group.name for group in self.groups]
    self.sizes = np.array([group.channels for group in self.groups], np.int64)
    self.model, masked = wrap_channels(plain, self.groups)
    wrappers = channel_wrappers(self.model)
    self._layers = {layer.name: layer for layer in self.model.layers}
    self._layers.update({name: wrapper.layer for name, wrapper in wrappers.items()})
    # Per masked weight: (layer name, weight attribute, variable, mask).
    self._masked = []
    for name, weights in masked.items():
      for weight, (variable, mask, _) in zip(weights, wrappers[name].pruning_vars):
        self._masked.append((name, weight, variable, mask))
    self._layer_groups = self._layers_of_groups()
    self._dense = count(plain)
    self._costs: Dict[Tuple[int, ...], Cost] = {}
    self.infos = self._describe()
    self._prunable_params = self._dense.params - self._emptied(self.groups).params
    self._removed = np.zeros(len(self.groups), np.int64)  # channels removed per group
    variables = self.model.variables
    self._saved = VariableCopy(variables, "dense_copy")
    self._removed_at_snapshot = self._removed.copy()
    fixed = {id(mask) for _, _, _, mask in self._masked}
    for wrapper in wrappers.values():
      fixed |= {id(threshold) for _, _, threshold in wrapper.pruning_vars}
      fixed.add(id(wrapper.pruning_step))
    self._trained = [v for v in variables if id(v) not in fixed]  # what training moves
    self._step_copy = None  # save_step's copy of self._trained, made on first use
    self._step_masks: List[Tuple[tf.Variable, np.ndarray]] = []
    self._removed_at_step = self._removed.copy()
    self._digest = None  # mask_digest's compiled function, made on first use

  # ----------------------------------------------------------------- description

  def _layers_of_groups(self) -> List[List[str]]:
    """Per group, the layers whose weights it has an axis in, in first-seen order."""
    return [list(dict.fromkeys(member.layer for member in group.members))
            for group in self.groups]

  def _emptied(self, groups: Sequence) -> Cost:
    """The cost with every channel of `groups` gone (a width of 0 on their axes)."""
    gone = {}
    for group in groups:
      for member in group.members:
        key = (member.layer, member.role)
        gone[key] = gone.get(key, 0) + len(member.positions)
    widths = {key: axis_size(self._plain.get_layer(key[0]), key[1]) - positions
              for key, positions in gone.items()}
    return count(self._plain, widths)

  def _describe(self) -> List[LayerInfo]:
    """One LayerInfo per group: its first producer's kind, kernel, stride and channels;
    params and flops are the parameters and FLOPs its channels carry (what removing all of
    them would save: a kernel between two groups counts for both), and the shares are
    their fractions of the dense model's parameters and FLOPs."""
    infos = []
    for group in self.groups:
      layer = self._plain.get_layer(group.producers[0])
      emptied = self._emptied([group])
      params, flops = self._dense.params - emptied.params, self._dense.flops - emptied.flops
      is_dense = kind(layer) == "Dense"
      infos.append(LayerInfo(
          name=group.name, kind="dense" if is_dense else "conv",
          kernel=1 if is_dense else int(max(layer.kernel_size)),
          stride=1 if is_dense else int(max(layer.strides)),
          in_channels=int(layer.get_input_shape_at(0)[-1]), out_channels=int(group.channels),
          params=int(params), flops=int(flops),
          param_share=params / max(self._dense.params, 1),
          flop_share=flops / max(self._dense.flops, 1)))
    return infos

  @property
  def num_layers(self) -> int:
    """Number of decisions: one per channel group."""
    return len(self.groups)

  def index(self, name: str) -> int:
    """Position of a group by its name (its first producer's)."""
    try:
      return self.names.index(name)
    except ValueError:
      raise PurlError(f"{name!r} is not a channel group of {self.model.name}; its groups are "
                      f"{self.names}.") from None

  # ----------------------------------------------------------------- levels and costs

  def _counts(self, levels: Sequence[float]) -> np.ndarray:
    """Channels removed per group for `levels` (fractions): round(f * channels), one kept."""
    if len(levels) != self.num_layers:
      raise PurlError(f"{len(levels)} levels given for {self.num_layers} channel groups.")
    counts = []
    for name, size, level in zip(self.names, self.sizes, levels):
      if not 0.0 <= level <= 1.0:
        raise PurlError(f"channel level {level} of group {name} is outside [0, 1].")
      counts.append(min(int(round(level * size)), int(size) - 1))
    return np.array(counts, np.int64)

  def _keep(self, removed: np.ndarray) -> List[np.ndarray]:
    return least_important_removed(self.groups, (removed / self.sizes).tolist())

  def keep(self) -> List[np.ndarray]:
    """The kept channels of each group now (sorted indices into its channels)."""
    return self._keep(self._removed)

  def _cost(self, removed: np.ndarray) -> Cost:
    key = tuple(removed.tolist())
    if key not in self._costs:
      if len(self._costs) >= _COST_CACHE:
        self._costs.clear()
      self._costs[key] = cost(self._plain, self.groups, self._keep(removed))
    return self._costs[key]

  def sparsity(self, group: int) -> float:
    """Fraction of the group's channels removed now."""
    return float(self._removed[group] / self.sizes[group])

  def sparsities(self) -> np.ndarray:
    """Per-group fraction of channels removed, float64 (num_layers,)."""
    return self._removed / self.sizes

  def flops(self) -> int:
    """Multiply-accumulates per example of the thinner model the current masks stand for."""
    return self._cost(self._removed).flops

  def params(self) -> int:
    """Parameters of the thinner model the current masks stand for."""
    return self._cost(self._removed).params

  def global_sparsity(self) -> float:
    """Fraction of the dense model's FLOPs the current masks remove (exact)."""
    return 1.0 - self.flops() / self._dense.flops

  def removed_fraction(self, levels: Sequence[float]) -> float:
    """Fraction of the dense FLOPs that `levels` (one per group) would remove; no mask moves."""
    return 1.0 - self._cost(self._counts(levels)).flops / self._dense.flops

  def one_shot(self, name: str, target_flops: float) -> np.ndarray:
    """Per-group fraction of channels the one-shot allocation `name` (CHANNEL_ALLOCATIONS)
    removes at `target_flops`, read from the dense weights (those of construction until
    `shrink` copies the trained ones); float64 (num_layers,). No mask moves."""
    return np.asarray(allocate(name, self._plain, self.groups, target_flops), np.float64)

  def fitted(self, levels: Mapping[str, float], target_flops: float) -> Dict[str, float]:
    """{group name: fraction of its channels removed}: `levels` (one per group) with every
    group's width scaled by one factor, the widest such allocation that still removes
    `target_flops` of the dense FLOPs (a group keeps one channel at least, all at most), so
    the groups keep their ratios. A search that overshoots its budget hands over the
    allocation it chose at the budget. No mask moves."""
    missing = sorted(set(self.names) - set(levels))
    if missing:
      raise PurlError(f"the allocation names no level for the channel groups {missing}.")
    kept = np.maximum([1.0 - levels[name] for name in self.names], 1.0 / self.sizes)

    def removed(factor):
      counts = self.sizes - np.clip(np.round(factor * kept * self.sizes), 1, self.sizes)
      return counts.astype(np.int64), 1.0 - self._cost(counts.astype(np.int64)).flops / (
          self._dense.flops)

    low, high = 0.0, 1.0 / float(kept.min())  # every group at one channel / whole
    if removed(low)[1] < target_flops:
      raise PurlError(f"no width of this allocation removes {target_flops} of the FLOPs: "
                      "lower train_eval.target_flops.")
    for _ in range(40):  # removed() falls as the factor grows
      middle = (low + high) / 2
      low, high = (middle, high) if removed(middle)[1] >= target_flops else (low, middle)
    return dict(zip(self.names, (removed(low)[0] / self.sizes).tolist()))

  def allocation(self) -> dict:
    """{group name: fraction of its channels removed}."""
    return dict(zip(self.names, self.sparsities().tolist()))

  def costs(self) -> dict:
    """Parameters and FLOPs of the dense model and of the current state, with the keys of
    pruning.costs: global_sparsity (here the FLOPs fraction removed), params_total,
    params_remaining, prunable_params (those the groups carry), flops_total,
    flops_remaining."""
    now = self._cost(self._removed)
    return {"global_sparsity": self.global_sparsity(),
            "params_total": self._dense.params, "params_remaining": now.params,
            "prunable_params": self._prunable_params,
            "flops_total": self._dense.flops, "flops_remaining": now.flops}

  # ----------------------------------------------------------------- writing masks

  def _write(self, before: np.ndarray, after: np.ndarray, layers):
    """Writes the masks of `layers` for the state `after` (channels removed per group) and
    multiplies their weights by them; what `before` removed and `after` keeps takes its
    snapshot value (and so do such channels' batch-norm moving statistics)."""
    layers = set(layers)
    gone_before = removed_positions(self.groups, self._keep(before))
    gone_after = removed_positions(self.groups, self._keep(after))

    def kept(layer, weight, removed):
      axes = weight_axes(layer)[weight]
      shape = tuple(getattr(layer, weight).shape)
      flags = np.ones(shape, bool)
      for axis, role in axes.items():
        positions = removed.get((layer.name, role))
        if positions is not None and positions.size:
          index = [slice(None)] * len(shape)
          index[axis] = positions
          flags[tuple(index)] = False
      return flags

    masked = set()
    for name, weight, variable, mask in self._masked:
      if name not in layers:
        continue
      layer = self._inner(name)
      new, old = kept(layer, weight, gone_after), kept(layer, weight, gone_before)
      value = variable.numpy()
      revived = new & ~old
      if revived.any():
        value = np.where(revived, self._saved.of(variable).numpy(), value)
      mask.assign(new.astype(mask.dtype.as_numpy_dtype))
      variable.assign(value * new)
      masked.add((name, weight))
    for name in layers:  # weights with channel axes but no mask: batch-norm statistics
      layer = self._inner(name)
      for weight in weight_axes(layer):
        if (name, weight) in masked:
          continue
        variable = getattr(layer, weight)
        revived = kept(layer, weight, gone_after) & ~kept(layer, weight, gone_before)
        if revived.any():
          variable.assign(np.where(revived, self._saved.of(variable).numpy(),
                                   variable.numpy()))

  def _inner(self, name: str) -> keras.layers.Layer:
    """The layer of the wrapped model named `name` (a wrapper's own layer)."""
    return self._layers[name]

  def set_level(self, group: int, level: float, mode: str = SPARSITY) -> float:
    """Removes round(level * channels) of the group's least important channels (one is
    always kept); returns the level in force (the fraction removed)."""
    if mode != SPARSITY:
      raise PurlError(f"channel pruning levels are fractions of a group's channels (mode "
                      f"'{SPARSITY}'), not {mode!r}.")
    if not 0 <= group < self.num_layers:
      raise PurlError(f"channel group {group} does not exist: {self.model.name} has "
                      f"{self.num_layers} (0..{self.num_layers - 1}).")
    levels = self.sparsities().copy()
    levels[group] = level
    after = self._removed.copy()
    after[group] = self._counts(levels)[group]
    self._write(self._removed, after, self._layer_groups[group])
    self._removed = after
    return self.sparsity(group)

  def apply(self, levels: Sequence[float], mode: str = SPARSITY) -> np.ndarray:
    """Sets every group's level at once; returns the levels in force."""
    if mode != SPARSITY:
      raise PurlError(f"channel pruning levels are fractions of a group's channels (mode "
                      f"'{SPARSITY}'), not {mode!r}.")
    after = self._counts(levels)
    changed = np.flatnonzero(after != self._removed)
    self._write(self._removed, after,
                dict.fromkeys(name for g in changed for name in self._layer_groups[g]))
    self._removed = after
    return self.sparsities()

  # ----------------------------------------------------------------- state

  def snapshot(self):
    """Remembers the current variables (and masks) as the state `reset()` returns to."""
    self._saved.take()
    self._removed_at_snapshot = self._removed.copy()

  def reset(self):
    """Restores every variable of the wrapped model from the snapshot (dense at first)."""
    self._saved.restore()
    self._removed = self._removed_at_snapshot.copy()

  def save_step(self, group: int):
    """Remembers what a step on `group` can change (the variables training moves, the
    masks of the group's layers), so that `undo_step()` can return to it."""
    if self._step_copy is None:
      self._step_copy = VariableCopy(self._trained, "step_copy")
    else:
      self._step_copy.take()
    layers = set(self._layer_groups[group])
    self._step_masks = [(mask, mask.numpy()) for name, _, _, mask in self._masked
                        if name in layers]
    self._removed_at_step = self._removed.copy()

  def undo_step(self):
    """Restores the variables, masks and levels of the last `save_step()`."""
    self._step_copy.restore()
    for mask, value in self._step_masks:
      mask.assign(value)
    self._removed = self._removed_at_step.copy()

  def save_state(self, path: str) -> str:
    """Writes every variable (weights, masks, statistics) and the levels to `path` (.npz),
    so that `load_state` brings this exact network back, in any process."""
    return state.save_state(path, self.model.variables, removed=self._removed,
                            groups=np.array(self.names))

  def load_state(self, path: str):
    """Restores the network `save_state` wrote to `path`."""
    removed = state.load_state(path, self.model.variables, ("removed",),
                               groups=np.array(self.names))["removed"]
    self._removed = removed.astype(np.int64)

  def mask_digest(self) -> np.ndarray:
    """float64 (num_layers, 2): per group, the channels its masks keep and the sum of their
    indices modulo 65521, read from the first producer's mask on this process's device.
    Two processes with equal digests hold equal levels but for a collision of the sum."""
    if self._digest is None:
      reads = []
      for group in self.groups:
        member = next(m for m in group.members if m.layer == group.producers[0]
                      and m.role == OUT)
        layer = self._inner(member.layer)
        mask, axis = next((mask, axis) for name, weight, _, mask in self._masked
                          if name == member.layer
                          for axis, role in weight_axes(layer)[weight].items() if role == OUT)
        reads.append((mask, axis, member.positions, member.channels % 65521))

      def digest():
        rows = []
        for mask, axis, positions, channels in reads:
          others = [a for a in range(len(mask.shape)) if a != axis]
          kept = tf.gather(tf.reduce_max(tf.cast(mask, tf.float64), axis=others), positions)
          rows.append(tf.stack([tf.reduce_sum(kept),
                                tf.reduce_sum(kept * tf.constant(channels, tf.float64))]))
        return tf.stack(rows)

      self._digest = tf.function(digest, autograph=False)
    return self._digest().numpy()

  # ----------------------------------------------------------------- the thinner model

  def shrink(self) -> keras.Model:
    """The physically thinner plain tf-keras model of the current state: the kept channels
    with their current (retrained) weights, every other weight as in the wrapped model."""
    for layer in self._plain.layers:
      if layer.weights:
        layer.set_weights(self._inner(layer.name).get_weights())
    return shrink(self._plain, self.groups, self.keep())
