"""One-shot channel allocations at a FLOPs budget: the baselines of the channel search.

Each allocation returns, per channel group (in the order of `ChannelGroups.groups`), the
fraction of its channels removed: k / channels for a whole k, in [0, 1), at least one
channel kept per group. `least_important_removed(groups, fractions)` turns it into keep-sets
(it removes exactly k: round(k / channels * channels) == k), which pick each group's least
important channels by the groups' own `importance`.

The budget `target_flops` is the fraction of the dense network's FLOPs removed (0.7 keeps
30 %), counted exactly by `channels.cost` (a removed output is the next layer's removed
input). Each method orders its removals on a *ladder*: step by step, one more channel (or,
for the uniform ratios, one more channel of every group whose rounded count moves at that
ratio) is removed, and the FLOPs removed never go down along it. The allocation is the rung
nearest `target_flops` (a tie goes to the rung above), found by bisection over the rungs
(about log2(channels) + 2 cost evaluations: 15 for MobileNet-V2's 4,144 channels).

Tolerance: |flops_removed - target_flops| <= half the FLOPs of one step of the ladder, so
never more than half a channel's worth below or above the target for global_filter,
bn_scale and random_allocation; for uniform and uniform_keep_ends a step is one channel of
each group whose count moves at that ratio (every group of one width, and any width whose
ratio grid meets it, e.g. 16 and 48 at 1/32, 3/32, ...), so half of those channels' worth.
One channel's worth is at most the FLOPs it carries in the dense network. A target beyond
the last rung (every group but one channel removed; the ends whole for keep-ends) is a
PurlError.

`flops_removed(model, groups, fractions)` is the exact fraction a given allocation removes;
the returned ChannelAllocation carries it (equal to 1 - count(shrink(...)).flops / dense).
"""
import fractions
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.flops import cost, count
from purl_tf.pruning.channels.graph import ChannelGroups
from purl_tf.pruning.channels.importance import channel_importance
from purl_tf.pruning.channels.keep import least_important_removed
from purl_tf.pruning.channels.layers import CHANNEL, kind

_log = logging.getLogger(__name__)


class ChannelAllocation(list):
  """Per-group fractions of channels removed: a plain list of floats aligned with the groups
  (pass it wherever a list of fractions goes), with two attributes:

  flops_removed: the exact fraction of the dense FLOPs it removes (flops_removed()).
  warnings: what the method could not do as named (bn_scale's groups without a batch norm,
    ties it broke by network order); each also logged.
  """

  def __init__(self, removed: Sequence[float] = (), flops_removed: float = 0.0,
               warnings: Sequence[str] = ()):
    super().__init__(float(fraction) for fraction in removed)
    self.flops_removed = float(flops_removed)
    self.warnings = tuple(warnings)

  def __repr__(self):
    return (f"ChannelAllocation({list(self)!r}, flops_removed={self.flops_removed!r}, "
            f"warnings={self.warnings!r})")


def _groups_of(groups) -> tuple:
  """The groups of a ChannelGroups, or the sequence given; refused when empty."""
  groups = tuple(groups.groups if isinstance(groups, ChannelGroups) else groups)
  if not groups:
    raise PurlError("there are no channel groups to allocate over (channel_groups(model).groups "
                    "is empty): prune a model with prunable conv or dense channels.")
  return groups


def _check_target(target_flops: float):
  if not 0.0 <= target_flops < 1.0:
    raise PurlError(f"target_flops {target_flops} is outside [0, 1): give the fraction of the "
                    "dense FLOPs to remove, e.g. 0.7.")


def _fractions(groups: Sequence, counts: np.ndarray) -> List[float]:
  """Channels removed per group as fractions of its channels (exact for least_important_removed)."""
  return [int(k) / group.channels for k, group in zip(counts, groups)]


def _removed_from(model, groups, fractions, dense_flops: int) -> float:
  kept = cost(model, groups, least_important_removed(groups, fractions)).flops
  return (dense_flops - kept) / dense_flops


def flops_removed(model: keras.Model, groups, removed_fractions: Sequence[float]) -> float:
  """The exact fraction of `model`'s dense FLOPs that removing `removed_fractions` of each
  group's channels (least important first, least_important_removed) removes."""
  groups = _groups_of(groups)
  return _removed_from(model, groups, list(removed_fractions), count(model).flops)


class _Ladder:
  """Removals in order: `order[i]` is the group losing one more channel at event i; the rungs
  are the event counts `bounds` (0 first, every event last) an allocation may stop at."""

  def __init__(self, order: Sequence[int], bounds: Sequence[int], size: int):
    self.order = np.asarray(order, np.int64)
    self.bounds = np.asarray(bounds, np.int64)
    self.size = size

  def counts(self, rung: int) -> np.ndarray:
    return np.bincount(self.order[:self.bounds[rung]], minlength=self.size)


def _ratio_ladder(groups: Sequence, members: Sequence[int]) -> _Ladder:
  """One ratio r for the groups `members`: each removes round(r * channels) (halves up), at
  most channels - 1. A group gains its (k+1)-th channel at r = (2k + 1) / (2 channels); the
  ratios are compared exactly, so groups whose counts move at one ratio form one rung."""
  events = sorted((fractions.Fraction(2 * k + 1, 2 * groups[g].channels), g)
                  for g in members for k in range(groups[g].channels - 1))
  keys = [key for key, _ in events]
  bounds = [0] + [n for n in range(1, len(keys)) if keys[n] != keys[n - 1]]
  return _Ladder([g for _, g in events], bounds + [len(keys)] if keys else [0], len(groups))


def _score_ladder(scores: Sequence[np.ndarray]) -> _Ladder:
  """One global threshold on per-channel scores: channels go lowest score first (ties: the
  earlier group in network order, then the lower index), one per rung; each group's highest
  scored channel (the last of its stable order) is never removed."""
  score, group, rank = [], [], []
  for g, values in enumerate(scores):
    order = np.argsort(values, kind="stable")[:-1]
    score.append(np.asarray(values, np.float64)[order])
    group.append(np.full(len(order), g))
    rank.append(np.arange(len(order)))
  score, group, rank = (np.concatenate(parts) for parts in (score, group, rank))
  events = group[np.lexsort((rank, group, score))]
  return _Ladder(events, np.arange(len(events) + 1), len(scores))


def _at_target(model: keras.Model, groups: Sequence, target_flops: float, ladder: _Ladder,
               method: str, warnings: Sequence[str] = (),
               reach: str = "every group but one channel") -> ChannelAllocation:
  """The ladder's rung nearest `target_flops` (ties: the rung above), by bisection."""
  dense = count(model).flops
  seen: Dict[int, float] = {}

  def removed(rung: int) -> float:
    if rung not in seen:
      seen[rung] = (_removed_from(model, groups, _fractions(groups, ladder.counts(rung)), dense)
                    if rung else 0.0)
    return seen[rung]

  last = len(ladder.bounds) - 1
  if target_flops > removed(last):
    raise PurlError(f"target_flops {target_flops} is out of reach for {method}: removing "
                    f"{reach} removes {removed(last):.4f} of the FLOPs at most; lower "
                    "target_flops.")
  low, high = 0, last  # the first rung removing at least the target lies in [low, high]
  while low < high:
    middle = (low + high) // 2
    if removed(middle) >= target_flops:
      high = middle
    else:
      low = middle + 1
  if high and target_flops - removed(high - 1) < removed(high) - target_flops:
    high -= 1
  counts = ladder.counts(high)
  _log.info("%s at target_flops %.4f removes %.6f of the FLOPs (%d channels of %d; %d cost "
            "evaluations)", method, target_flops, removed(high), counts.sum(),
            sum(group.channels for group in groups), len([r for r in seen if r]))
  return ChannelAllocation(_fractions(groups, counts), removed(high), warnings)


def uniform(model: keras.Model, groups, target_flops: float) -> ChannelAllocation:
  """Every group the same fraction removed: round(r * channels) channels (halves up, at most
  all but one) for the one ratio r whose FLOPs are nearest `target_flops`. Groups of one
  width get identical fractions; others differ from r by at most half a channel."""
  groups = _groups_of(groups)
  _check_target(target_flops)
  return _at_target(model, groups, target_flops, _ratio_ladder(groups, range(len(groups))),
                    "uniform")


def end_groups(model: keras.Model, groups) -> Tuple[int, int]:
  """Indices of the groups kept whole by uniform_keep_ends, in network order (model.layers,
  which is topological): the group made by the first layer producing any group's channels
  (the first conv), and the group made by the last such layer (the last prunable layer: the
  last conv, or a dense before the classifier, whose outputs feed the classifier). One group
  may be both."""
  groups = _groups_of(groups)
  position = {layer.name: index for index, layer in enumerate(model.layers)}
  first = min(range(len(groups)), key=lambda g: min(position[p] for p in groups[g].producers))
  last = max(range(len(groups)), key=lambda g: max(position[p] for p in groups[g].producers))
  return first, last


def uniform_keep_ends(model: keras.Model, groups, target_flops: float) -> ChannelAllocation:
  """uniform over every group but the two of end_groups, which keep all their channels
  (standard practice: the first conv sees the image, the last layer feeds the classifier)."""
  groups = _groups_of(groups)
  _check_target(target_flops)
  ends = set(end_groups(model, groups))
  middle = [g for g in range(len(groups)) if g not in ends]
  names = " and ".join(groups[g].name for g in sorted(ends))
  return _at_target(model, groups, target_flops, _ratio_ladder(groups, middle),
                    "uniform_keep_ends", reach=f"all but one channel of every group but the "
                    f"ends ({names}, kept whole)")


def _l1(model: keras.Model, group) -> np.ndarray:
  if group.importance is not None:
    return np.asarray(group.importance, np.float64)
  return channel_importance(model, group, "l1")


def _over_mean(values: np.ndarray) -> np.ndarray:
  """values / their mean; all zeros when the mean is 0 (a group of all-zero filters)."""
  mean = float(np.mean(values))
  return values / mean if mean > 0 else np.zeros_like(values)


def global_filter(model: keras.Model, groups, target_flops: float) -> ChannelAllocation:
  """Global filter ranking: a channel's importance (the groups' `importance`: the L1 norm of
  its filters with channel_groups' default criterion; computed so when a group has none)
  divided by its group's mean importance, one threshold over all channels."""
  groups = _groups_of(groups)
  _check_target(target_flops)
  scores = [_over_mean(_l1(model, group)) for group in groups]
  return _at_target(model, groups, target_flops, _score_ladder(scores), "global_filter")


def batch_norm_scale(model: keras.Model, group) -> Optional[np.ndarray]:
  """(channels,) mean |gamma| of each channel over the group's batch norms (over every
  position carrying it, after a Flatten), or None when the group has no scaled batch norm.
  The mean, not the sum: a residual stream's channel has a batch norm in every block."""
  total = np.zeros(group.channels, np.float64)
  seen = np.zeros(group.channels, np.int64)
  for member in group.members:
    layer = model.get_layer(member.layer)
    if (member.role != CHANNEL or kind(layer) != "BatchNormalization"
        or layer.gamma is None):
      continue
    np.add.at(total, member.channels, np.abs(layer.gamma.numpy()[member.positions]))
    seen += np.bincount(member.channels, minlength=group.channels)
  return total / seen if seen.all() else None


def bn_scale(model: keras.Model, groups, target_flops: float) -> ChannelAllocation:
  """Network Slimming's pruning without its sparsity training: one threshold on the channels'
  batch-norm |gamma| (batch_norm_scale). A group without a batch norm is ranked by its L1
  importance over its group mean, times the mean |gamma| of the other groups' channels (so
  on the same scale), and named in the returned warnings. Refused when no group has one.

  For least_important_removed to remove the very channels the threshold picks, build the
  groups with channel_groups(model, importance='bn_gamma') (that orders each group's
  channels as the mean does; the default 'l1' picks by filter norm instead).
  """
  groups = _groups_of(groups)
  _check_target(target_flops)
  scales = [batch_norm_scale(model, group) for group in groups]
  scaled = [values for values in scales if values is not None]
  if not scaled:
    raise PurlError(f"bn_scale ranks channels by batch-norm scale, but no channel group of "
                    f"model {model.name} has a batch norm with a scale (gamma): use "
                    "'global_filter'.")
  gammas = np.concatenate(scaled)
  warnings = []
  missing = [group.name for group, values in zip(groups, scales) if values is None]
  if missing:
    warnings.append(f"bn_scale: channel groups {', '.join(missing)} have no batch norm: ranked "
                    "by their L1 importance over the group mean, scaled to the mean |gamma|")
  if np.all(gammas == gammas[0]):
    warnings.append(f"bn_scale: every batch-norm |gamma| is {gammas[0]:g} (an untrained "
                    "network?): the tied channels go in network order")
  for warning in warnings:
    _log.warning("%s", warning)
  scores = [values if values is not None else _over_mean(_l1(model, group)) * gammas.mean()
            for group, values in zip(groups, scales)]
  return _at_target(model, groups, target_flops, _score_ladder(scores), "bn_scale", warnings)


def random_allocation(model: keras.Model, groups, target_flops: float,
                      rng) -> ChannelAllocation:
  """One random allocation at the budget: per-group removed fractions d drawn uniformly in
  (0, 1], all scaled by the one factor s whose allocation (round(s * d * channels) channels
  removed, halves up, at most all but one) is nearest `target_flops`. Random search draws
  as many as the search evaluates.

  Args:
    rng: a numpy Generator, or a seed for numpy.random.default_rng.
  """
  groups = _groups_of(groups)
  _check_target(target_flops)
  direction = 1.0 - np.random.default_rng(rng).random(len(groups))  # in (0, 1]
  key, owner = [], []
  for g, group in enumerate(groups):
    steps = np.arange(group.channels - 1)
    key.append((steps + 0.5) / (direction[g] * group.channels))  # s at which step k is taken
    owner.append(np.full(len(steps), g))
  key, owner = np.concatenate(key), np.concatenate(owner)
  events = owner[np.lexsort((owner, key))]  # within a group its keys rise with k
  return _at_target(model, groups, target_flops,
                    _Ladder(events, np.arange(len(events) + 1), len(groups)),
                    "random_allocation")


Allocation = Callable[[keras.Model, object, float], ChannelAllocation]

# The one-shot channel allocations by name (random_allocation needs a generator, so it is
# called directly).
CHANNEL_ALLOCATIONS: Dict[str, Allocation] = {
    "uniform": uniform, "uniform_keep_ends": uniform_keep_ends,
    "global_filter": global_filter, "bn_scale": bn_scale}


def allocate(name: str, model: keras.Model, groups, target_flops: float) -> ChannelAllocation:
  """CHANNEL_ALLOCATIONS[name](model, groups, target_flops)."""
  if name not in CHANNEL_ALLOCATIONS:
    raise PurlError(f"channel allocation {name!r} is unknown: use one of "
                    f"{', '.join(sorted(CHANNEL_ALLOCATIONS))}.")
  return CHANNEL_ALLOCATIONS[name](model, groups, target_flops)
