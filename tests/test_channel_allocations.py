"""One-shot channel allocations at a FLOPs budget, on ResNet-20 (width 8) and MobileNet-V2.

Each allocation must land on the rung of its ladder nearest the target: within half a step,
where a step is bounded by the dense FLOPs of one channel (global_filter, bn_scale, random)
or of one channel of every group whose count moves at one uniform ratio. A channel's dense
worth is measured here with channels.cost (one channel of one group removed), not with the
module's code. The reported fraction must equal what the shrunk model's count gives.
"""
import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

import dataclasses  # noqa: E402
import fractions  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402

from purl_tf import models  # noqa: E402
from purl_tf.errors import PurlError  # noqa: E402
from purl_tf.pruning.channels import (CHANNEL, allocations, channel_groups, cost,  # noqa: E402
                                      count, least_important_removed, shrink)

L = keras.layers
METHODS = ["uniform", "uniform_keep_ends", "global_filter", "bn_scale", "random"]
RATIO_METHODS = ("uniform", "uniform_keep_ends")


def _resnet20():
  keras.utils.set_random_seed(0)
  return models.cifar_resnet((32, 32, 3), 10, depth=20, width=8)


def _mobilenet_v2():
  keras.utils.set_random_seed(0)
  return keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None,
                                        classes=10)


def _with_random_gammas(model, seed=0):
  """Every batch norm's gamma drawn by hand: |gamma| spread over [0.05, 2], signs mixed, so
  that an untrained network's ties (all gammas 1) do not decide the ranking."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      size = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.05, 2.0, size) * rng.choice([-1.0, 1.0], size))
  return model


class Net:
  """A model, its groups, and each group's dense per-channel FLOPs fraction ("worth")."""

  def __init__(self, model):
    self.model = _with_random_gammas(model)
    self.groups = channel_groups(self.model).groups
    dense = count(self.model).flops
    self.worth = np.array([
        (dense - cost(self.model, self.groups, [np.arange(1 if i == g else 0, group.channels)
                                                for i, group in enumerate(self.groups)]).flops)
        / dense for g, group in enumerate(self.groups)])


@pytest.fixture(scope="module")
def nets():
  return {"resnet20": Net(_resnet20()), "mobilenet_v2": Net(_mobilenet_v2())}


def _allocate(method, net, target, seed=0):
  if method == "random":
    return allocations.random_allocation(net.model, net.groups, target, seed)
  return allocations.allocate(method, net.model, net.groups, target)


def _step_bound(method, net):
  """The largest FLOPs one step of the method's ladder can remove (dense worth: removing a
  channel never saves more than it does from the dense network)."""
  if method not in RATIO_METHODS:
    return float(net.worth.max())
  skipped = (set(allocations.end_groups(net.model, net.groups))
             if method == "uniform_keep_ends" else set())
  at_ratio = {}
  for g, group in enumerate(net.groups):
    if g not in skipped:
      for k in range(group.channels - 1):
        key = fractions.Fraction(2 * k + 1, 2 * group.channels)
        at_ratio[key] = at_ratio.get(key, 0.0) + net.worth[g]
  return max(at_ratio.values())


def _removed_counts(groups, removed):
  """Channels removed per group, checking each fraction is k / channels with 0 <= k < c."""
  counts = []
  for group, fraction in zip(groups, removed):
    k = fraction * group.channels
    assert 0.0 <= fraction < 1.0 and abs(k - round(k)) < 1e-9, (group.name, fraction)
    counts.append(int(round(k)))
  kept = least_important_removed(groups, removed)
  assert [group.channels - len(keep) for group, keep in zip(groups, kept)] == counts
  return np.array(counts)


@pytest.mark.parametrize("target", [0.5, 0.8])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net_name", ["resnet20", "mobilenet_v2"])
def test_reaches_target_within_half_a_step(net_name, method, target, nets):
  net = nets[net_name]
  removed = _allocate(method, net, target)
  assert isinstance(removed, list) and len(removed) == len(net.groups)
  _removed_counts(net.groups, removed)
  assert allocations.flops_removed(net.model, net.groups, removed) == removed.flops_removed
  bound = _step_bound(method, net)
  assert abs(removed.flops_removed - target) <= bound / 2, (removed.flops_removed, bound)
  assert bound < 0.1  # so the check is not vacuous (one stem channel of ResNet-20/8 is 5 %)


def test_uniform_is_the_nearest_rung(nets):
  """Every uniform ratio of ResNet-20 evaluated by brute force: the allocation is the one
  nearest each target (ties: the one above)."""
  net = nets["resnet20"]
  ratios = sorted({fractions.Fraction(2 * k + 1, 2 * group.channels)
                   for group in net.groups for k in range(group.channels - 1)})
  reached = [0.0]
  for ratio in ratios:
    counts = [min(int(ratio * group.channels + fractions.Fraction(1, 2)), group.channels - 1)
              for group in net.groups]
    reached.append(allocations.flops_removed(
        net.model, net.groups, [k / group.channels for k, group in zip(counts, net.groups)]))
  reached = np.array(reached)
  for target in (0.1, 0.33, 0.5, 0.62, 0.8, 0.9, 0.95):
    gaps = np.abs(reached - target)
    best = reached[np.flatnonzero(gaps == gaps.min()).max()]
    assert allocations.uniform(net.model, net.groups, target).flops_removed == best, target


@pytest.mark.parametrize("method", RATIO_METHODS)
@pytest.mark.parametrize("net_name", ["resnet20", "mobilenet_v2"])
def test_uniform_gives_equal_fractions(net_name, method, nets):
  """Groups of one width get the same fraction; all are round(r * channels) / channels of
  one ratio r (their half-channel intervals meet); keep-ends' end groups stay whole."""
  net = nets[net_name]
  ends = (set(allocations.end_groups(net.model, net.groups))
          if method == "uniform_keep_ends" else set())
  for target in (0.5, 0.8):
    removed = _allocate(method, net, target)
    counts = _removed_counts(net.groups, removed)
    middle = [g for g in range(len(net.groups)) if g not in ends]
    by_width = {}
    for g in middle:
      by_width.setdefault(net.groups[g].channels, set()).add(removed[g])
    assert all(len(values) == 1 for values in by_width.values()), by_width
    lows = [(counts[g] - 0.5) / net.groups[g].channels for g in middle]
    highs = [(counts[g] + 0.5) / net.groups[g].channels for g in middle]
    assert max(lows) <= min(highs)
    assert len(set(removed[g] for g in middle)) > 1  # widths differ: rounding shows


def _producing(net, layer):
  return next(g for g, group in enumerate(net.groups) if layer in group.producers)


@pytest.mark.parametrize("net_name, first, last", [
    ("resnet20", "conv1", "stage3_block3_conv2"),
    ("mobilenet_v2", "Conv1", "Conv_1")])
def test_keep_ends_keeps_the_first_conv_and_last_prunable_layer_whole(net_name, first, last,
                                                                        nets):
  net = nets[net_name]
  ends = (_producing(net, first), _producing(net, last))
  assert allocations.end_groups(net.model, net.groups) == ends
  for target in (0.5, 0.8):
    removed = allocations.uniform_keep_ends(net.model, net.groups, target)
    assert [removed[g] for g in ends] == [0.0, 0.0]
    assert all(removed[g] > 0.0 for g in range(len(net.groups)) if g not in ends)


def _follows_threshold(groups, scores, removed):
  """Every removed channel scores at most every kept one (a group's top channel, kept even
  when all others go, aside): one global threshold did the removing."""
  counts = _removed_counts(groups, removed)
  gone, stayed = [], []
  for group, values, k in zip(groups, scores, counts):
    order = np.argsort(values, kind="stable")
    gone.append(values[order[:k]])
    stayed.append(values[order[k:-1]])
  gone, stayed = np.concatenate(gone), np.concatenate(stayed)
  assert gone.size and stayed.size
  return gone.max() <= stayed.min()


def test_global_filter_removes_the_lowest_normalised_importance_first(nets):
  """Hand-set importance, each group's scaled by 10**g: ranked raw, the low-scaled groups
  would go first; ranked over their group means, the allocation follows one threshold."""
  net = nets["resnet20"]
  rng = np.random.default_rng(1)
  groups = [dataclasses.replace(group, importance=rng.uniform(0.1, 1.0, group.channels) * 10.0**g)
            for g, group in enumerate(net.groups)]
  normalised = [group.importance / group.importance.mean() for group in groups]
  for target in (0.5, 0.8):
    removed = allocations.global_filter(net.model, groups, target)
    assert _follows_threshold(groups, normalised, removed)
    assert not _follows_threshold(groups, [group.importance for group in groups], removed)


def _mean_abs_gamma(model, group):
  """Independent of the module: each channel's |gamma| averaged over the group's batch norms."""
  values = [[] for _ in range(group.channels)]
  for member in group.members:
    layer = model.get_layer(member.layer)
    if member.role == CHANNEL and isinstance(layer, L.BatchNormalization):
      gamma = np.abs(layer.gamma.numpy())
      for position, channel in zip(member.positions, member.channels):
        values[channel].append(gamma[position])
  return np.array([np.mean(v) for v in values])


@pytest.mark.parametrize("net_name", ["resnet20", "mobilenet_v2"])
def test_bn_scale_follows_gamma(net_name, nets):
  """Gammas set by hand (signs mixed): one threshold on the mean |gamma| over each group's
  batch norms (a residual stream's 4 of them weigh as one block's 1)."""
  net = nets[net_name]
  scores = [_mean_abs_gamma(net.model, group) for group in net.groups]
  for target in (0.5, 0.8):
    removed = allocations.bn_scale(net.model, net.groups, target)
    assert removed.warnings == ()
    assert _follows_threshold(net.groups, scores, removed)


def test_bn_scale_mean_not_sum(nets):
  """On ResNet-20 a residual group holds 4 batch norms, an inner group 1: summing |gamma|
  would keep the residual streams and break the threshold on the means."""
  net = nets["resnet20"]
  norms = [sum(m.role == CHANNEL and m.layer.endswith("_bn") for m in group.members)
           for group in net.groups]
  assert sorted(set(norms)) == [1, 4]
  removed = allocations.bn_scale(net.model, net.groups, 0.8)
  sums = [_mean_abs_gamma(net.model, group) * n for group, n in zip(net.groups, norms)]
  assert not _follows_threshold(net.groups, sums, removed)


def _small_model(batch_norm_after_b=False, batch_norm_after_a=True):
  keras.utils.set_random_seed(2)
  inputs = keras.Input((16, 16, 3))
  x = L.Conv2D(12, 3, name="a")(inputs)
  if batch_norm_after_a:
    x = L.BatchNormalization(name="a_bn")(x)
  x = L.Conv2D(10, 3, name="b")(L.ReLU(name="a_relu")(x))
  if batch_norm_after_b:
    x = L.BatchNormalization(name="b_bn")(x)
  x = L.Dense(6, name="c")(L.GlobalAveragePooling2D(name="pool")(L.ReLU(name="b_relu")(x)))
  return _with_random_gammas(keras.Model(inputs, L.Dense(3, name="out")(x)))


def test_bn_scale_falls_back_to_normalised_l1_with_a_warning():
  """Group a's |gamma| average about 0.05: the groups without a batch norm are ranked on
  that scale (their L1 over its mean, times 0.05), not on their L1's own (mean 1)."""
  model = _small_model()
  model.get_layer("a_bn").gamma.assign(model.get_layer("a_bn").gamma * 0.05)
  groups = channel_groups(model).groups
  assert [group.name for group in groups] == ["a", "b", "c"]
  removed = allocations.bn_scale(model, groups, 0.5)
  assert removed.warnings == ("bn_scale: channel groups b, c have no batch norm: ranked by "
                              "their L1 importance over the group mean, scaled to the mean "
                              "|gamma|",)
  gamma = _mean_abs_gamma(model, groups[0])
  scores = [gamma] + [group.importance / group.importance.mean() * gamma.mean()
                      for group in groups[1:]]
  assert _follows_threshold(groups, scores, removed)
  with pytest.raises(PurlError, match=r"^bn_scale ranks channels by batch-norm scale, but no "
                     r"channel group of model \w+ has a batch norm .*: use 'global_filter'\.$"):
    plain = _small_model(batch_norm_after_a=False)
    allocations.bn_scale(plain, channel_groups(plain).groups, 0.5)


def test_every_group_keeps_a_channel():
  """A group ranked below every other channel loses all but its top one, whichever method:
  a's gammas near 0 (bn_scale), a's importance all zero (global_filter)."""
  model = _small_model(batch_norm_after_b=True)
  model.get_layer("a_bn").gamma.assign(np.full(12, 1e-4) + np.arange(12) * 1e-6)
  groups = channel_groups(model).groups
  assert allocations.bn_scale(model, groups, 0.93)[0] == 11 / 12
  zeroed = [dataclasses.replace(groups[0], importance=np.zeros(12))] + list(groups[1:])
  assert allocations.global_filter(model, zeroed, 0.93)[0] == 11 / 12


def test_bn_scale_warns_of_untrained_ties():
  model = _resnet20()  # every gamma 1
  removed = allocations.bn_scale(model, channel_groups(model), 0.5)
  assert removed.warnings == ("bn_scale: every batch-norm |gamma| is 1 (an untrained "
                              "network?): the tied channels go in network order",)


@pytest.mark.parametrize("method", METHODS)
def test_shrunk_flops_equal_the_reported_fraction(method, nets):
  net = nets["resnet20"]
  dense = count(net.model).flops
  removed = _allocate(method, net, 0.8)
  thin = count(shrink(net.model, net.groups, least_important_removed(net.groups, removed)))
  assert (dense - thin.flops) / dense == removed.flops_removed


def test_shrunk_mobilenet_flops_equal_the_reported_fraction(nets):
  net = nets["mobilenet_v2"]
  dense = count(net.model).flops
  removed = allocations.global_filter(net.model, net.groups, 0.5)
  thin = count(shrink(net.model, net.groups, least_important_removed(net.groups, removed)))
  assert (dense - thin.flops) / dense == removed.flops_removed


@pytest.mark.parametrize("method", METHODS)
def test_unreachable_target_is_one_line_error(method, nets):
  with pytest.raises(PurlError, match=r"^target_flops 0.999 is out of reach for \w+: "
                     r"removing .* removes 0\.\d{4} of the FLOPs at most; lower target_flops\.$"):
    _allocate(method, nets["resnet20"], 0.999)


def test_keep_ends_reach_is_lower(nets):
  """MobileNet-V2 with its first conv and its 1280-channel last conv whole cannot lose 90 %."""
  with pytest.raises(PurlError, match=r"out of reach for uniform_keep_ends: removing all but "
                     r"one channel of every group but the ends \(Conv1 and Conv_1, kept whole\)"):
    allocations.uniform_keep_ends(nets["mobilenet_v2"].model, nets["mobilenet_v2"].groups, 0.9)
  net = nets["mobilenet_v2"]
  assert allocations.uniform(net.model, net.groups, 0.9).flops_removed == pytest.approx(0.9,
                                                                                      abs=5e-3)


def test_bad_arguments(nets):
  net = nets["resnet20"]
  for target in (1.0, -0.1):
    with pytest.raises(PurlError, match=r"^target_flops .* is outside \[0, 1\)"):
      allocations.uniform(net.model, net.groups, target)
  with pytest.raises(PurlError, match="channel allocation 'lamp' is unknown: use one of "
                     "bn_scale, global_filter, uniform, uniform_keep_ends"):
    allocations.allocate("lamp", net.model, net.groups, 0.5)
  with pytest.raises(PurlError, match="there are no channel groups"):
    allocations.uniform(net.model, [], 0.5)


@pytest.mark.parametrize("method", METHODS)
def test_zero_target_removes_nothing(method, nets):
  removed = _allocate(method, nets["resnet20"], 0.0)
  assert removed == [0.0] * len(nets["resnet20"].groups) and removed.flops_removed == 0.0


def test_random_allocations(nets):
  """Seeded draws repeat; different draws differ, each at the budget; a Generator is taken."""
  net = nets["resnet20"]
  first = allocations.random_allocation(net.model, net.groups, 0.6, 3)
  assert first == allocations.random_allocation(net.model, net.groups, 0.6, 3)
  rng = np.random.default_rng(4)
  draws = [allocations.random_allocation(net.model, net.groups, 0.6, rng) for _ in range(3)]
  assert len({tuple(draw) for draw in draws + [first]}) == 4
  for draw in draws:
    assert abs(draw.flops_removed - 0.6) <= net.worth.max() / 2
    assert len(set(draw)) > len(net.groups) // 2  # not uniform


@pytest.mark.parametrize("method", METHODS)
def test_bisection_is_cheap(method, nets, monkeypatch):
  """MobileNet-V2's 4,144 channels: about log2(4,144) + 2 cost evaluations, not one per rung."""
  calls = []

  def counted(*args):
    calls.append(1)
    return cost(*args)

  monkeypatch.setattr(allocations, "cost", counted)
  _allocate(method, nets["mobilenet_v2"], 0.8)
  assert 5 <= len(calls) <= 16


def test_allocation_is_a_plain_list(nets):
  removed = allocations.uniform(nets["resnet20"].model, nets["resnet20"].groups, 0.5)
  assert json.loads(json.dumps(removed)) == list(removed)
  assert "flops_removed=" in repr(removed)
