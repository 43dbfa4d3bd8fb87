"""Pruning core (purl_tf.pruning): wrapping, exact per-layer levels, on-device selection, reset,
allocations, accounting, and strip/save/load into plain tf-keras."""
import json
import os
import subprocess
import sys
import textwrap

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from purl_tf import models, pruning
from purl_tf.errors import PurlError
from purl_tf.pruning import selection
from purl_tf.pruning.training import MaskedTrainer

PRUNABLE_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
LENET_LAYERS = ["conv1", "conv2", "fc1", "predictions"]
MOBILENET_DEPTHWISE = 17  # one per inverted-residual block of MobileNet-V2


def _masks(controller):
  return [wrapper.pruning_vars[0][1].numpy() for wrapper in controller.wrappers]


def _weights(controller):
  return [controller.weight(i).numpy().copy() for i in range(controller.num_layers)]


def _expected_pruned(fraction, size):
  """Weights a fraction prunes: round(fraction * size), but at least one weight is kept."""
  return min(int(round(fraction * size)), size - 1)


@pytest.fixture
def lenet(pretrained_lenet):
  """(dense pre-trained LeNet-5, its wrapped copy, a controller of the copy)."""
  dense = pretrained_lenet()
  wrapped = pruning.wrap(dense)
  return dense, wrapped, pruning.PruningController(wrapped)


@pytest.fixture(scope="module")
def mobilenet():
  """(MobileNet-V2 32x32x3, 10 classes, random init; wrapped copy; controller).

  Shared by the module: a test that prunes it calls controller.reset() first.
  """
  keras.utils.set_random_seed(7)
  dense = models.mobilenet_v2((32, 32, 3), 10)
  wrapped = pruning.wrap(dense)
  return dense, wrapped, pruning.PruningController(wrapped)


# --- wrap ----------------------------------------------------------------------------------


def test_wrap_lenet_gets_four_wrappers_and_computes_the_same(lenet):
  dense, wrapped, controller = lenet
  assert [w.layer.name for w in pruning.prunable_layers(wrapped)] == LENET_LAYERS
  assert controller.names == LENET_LAYERS and controller.num_layers == 4
  assert not pruning.prunable_layers(dense), "wrap must not change the model it copies"
  assert all(np.all(mask == 1.0) for mask in _masks(controller))
  x = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
  np.testing.assert_array_equal(wrapped(x, training=False).numpy(),
                                dense(x, training=False).numpy())


def test_wrap_mobilenet_v2_wraps_every_conv_depthwise_and_dense(mobilenet):
  dense, wrapped, controller = mobilenet
  controller.reset()
  expected = [layer.name for layer in dense.layers
              if type(layer) in PRUNABLE_TYPES]  # exact types, in network order
  assert len(expected) == 35 + MOBILENET_DEPTHWISE + 1
  assert [w.layer.name for w in pruning.prunable_layers(wrapped)] == expected
  kinds = [info.kind for info in controller.infos]
  assert kinds.count("depthwise") == MOBILENET_DEPTHWISE
  assert kinds.count("dense") == 1 and kinds.count("conv") == 35
  for info, wrapper in zip(controller.infos, controller.wrappers):
    assert info.params == int(np.prod(wrapper.pruning_vars[0][0].shape))
  x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(wrapped(x, training=False).numpy(),
                             dense(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_wrap_selects_by_regex_and_layer_type(pretrained_lenet):
  dense = pretrained_lenet()

  def names(**kwargs):
    return [w.layer.name for w in pruning.prunable_layers(pruning.wrap(dense, **kwargs))]

  assert names(include="^conv") == ["conv1", "conv2"]
  assert names(exclude="predictions") == ["conv1", "conv2", "fc1"]
  assert names(include="^(conv|fc)", exclude="2$") == ["conv1", "fc1"]
  assert names(layer_types=("Dense",)) == ["fc1", "predictions"]
  assert names(layer_types=("Conv2D",), exclude="conv1") == ["conv2"]


def test_wrap_raises_when_nothing_is_prunable(pretrained_lenet):
  with pytest.raises(PurlError, match="nothing to prune"):
    pruning.wrap(pretrained_lenet(), layer_types=("Conv3D",))
  with pytest.raises(PurlError, match="nothing to prune"):
    pruning.wrap(pretrained_lenet(), include="no_such_layer")
  inputs = keras.Input((8, 8, 3))
  plain = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Flatten()(inputs)))
  with pytest.raises(PurlError, match="nothing to prune"):
    pruning.wrap(plain)
  with pytest.raises(PurlError, match="no pruning wrappers"):
    pruning.PruningController(plain)


def test_wrap_follows_nested_models():
  inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
                            keras.layers.DepthwiseConv2D(3, name="dw")], name="inner")
  inputs = keras.Input((8, 8, 3))
  outputs = keras.layers.Dense(5, activation="softmax", name="fc")(
      keras.layers.Flatten()(inner(inputs)))
  model = keras.Model(inputs, outputs)
  wrapped = pruning.wrap(model)
  assert [w.layer.name for w in pruning.prunable_layers(wrapped)] == ["c1", "dw", "fc"]
  x = np.random.default_rng(2).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(wrapped(x).numpy(), model(x).numpy())


# --- PruningController: exact levels --------------------------------------------------------


def test_set_sparsity_reaches_round_fraction_times_size_exactly(lenet):
  _, _, controller = lenet
  dense = _weights(controller)
  assert all(np.count_nonzero(w == 0) == 0 for w in dense), "trained weights: no exact zeros"
  for fraction in (0.0, 0.1, 0.25, 0.5, 0.73, 0.9, 0.99, 0.999):
    controller.reset()
    reached = controller.apply([fraction] * controller.num_layers)
    measured = controller.measured_sparsities()
    for i, size in enumerate(controller.sizes):
      pruned = _expected_pruned(fraction, int(size))
      assert abs(pruned - fraction * size) <= 1.0  # within one weight of the request
      assert reached[i] == pytest.approx(pruned / size, abs=1e-12)
      assert controller.sparsity(i) == pytest.approx(pruned / size, abs=1e-12)
      zeros = int(np.count_nonzero(controller.weight(i).numpy() == 0))
      assert zeros == pruned, (fraction, controller.names[i])
      assert measured[i] == pytest.approx(pruned / size, abs=1e-6)
      mask = _masks(controller)[i].astype(bool)
      assert int(mask.sum()) == size - pruned
      np.testing.assert_array_equal(controller.weight(i).numpy()[mask], dense[i][mask])
      if 0 < pruned < size:  # the smallest magnitudes went
        assert np.abs(dense[i][~mask]).max() <= np.abs(dense[i][mask]).min()
    assert controller.allocation() == dict(zip(controller.names, reached.tolist()))
    assert controller.global_sparsity() == pytest.approx(
        sum(_expected_pruned(fraction, int(s)) for s in controller.sizes)
        / controller.sizes.sum(), abs=1e-12)


def test_set_sparsity_is_exact_on_every_mobilenet_layer(mobilenet):
  _, _, controller = mobilenet
  controller.reset()
  levels = np.random.default_rng(3).uniform(0.05, 0.95, controller.num_layers)
  reached = controller.apply(levels.tolist())
  zeros = [np.count_nonzero(w == 0) for w in _weights(controller)]
  for i, size in enumerate(controller.sizes):
    pruned = _expected_pruned(levels[i], int(size))
    assert reached[i] == pytest.approx(pruned / size, abs=1e-12)
    assert zeros[i] == pruned, controller.names[i]  # random init has no exact zeros here
  controller.reset()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 2.5])
def test_threshold_mode_prunes_the_share_at_or_below_alpha_std(lenet, alpha):
  _, _, controller = lenet
  dense = _weights(controller)
  reached = controller.apply([alpha] * controller.num_layers, mode=pruning.THRESHOLD)
  for i, weight in enumerate(dense):
    values = weight.astype(np.float64)
    at_or_below = int(np.count_nonzero(np.abs(values) <= alpha * np.std(values)))
    # ... except the largest weight, which stays even when all are at or below.
    expected = min(at_or_below, values.size - 1) / values.size
    assert reached[i] == pytest.approx(expected, abs=1e-12)
    assert controller.measured_sparsities()[i] == pytest.approx(expected, abs=1e-6)
  if alpha == 0.0:
    assert np.all(reached == 0.0)  # trained weights hold no exact zeros
  # set_level dispatches to the same rule.
  controller.reset()
  assert controller.set_level(2, alpha, pruning.THRESHOLD) == pytest.approx(reached[2])


def test_a_layer_always_keeps_at_least_one_weight(lenet):
  _, _, controller = lenet
  dense = _weights(controller)
  conv1 = controller.index("conv1")
  assert controller.sizes[conv1] == 500
  # 0.999999 * 500 rounds to 500: all would go, one (the largest) stays.
  assert controller.set_sparsity(conv1, 0.999999) == pytest.approx(1 - 1 / 500)
  kept = np.flatnonzero(controller.weight(conv1).numpy().ravel())
  assert kept.tolist() == [int(np.argmax(np.abs(dense[conv1]).ravel()))]
  for fraction in (1.0, 1.5, -0.1):
    with pytest.raises(PurlError, match="outside"):
      controller.set_sparsity(conv1, fraction)
  controller.reset()
  fc1 = controller.index("fc1")
  assert controller.set_threshold(fc1, 1e9) == pytest.approx(1 - 1 / controller.sizes[fc1])
  kept = np.flatnonzero(controller.weight(fc1).numpy().ravel())
  assert kept.tolist() == [int(np.argmax(np.abs(dense[fc1]).ravel()))]
  with pytest.raises(PurlError, match="negative"):
    controller.set_threshold(fc1, -0.5)


def test_controller_rejects_bad_requests(lenet):
  _, _, controller = lenet
  with pytest.raises(PurlError, match="'fc9' is not a prunable layer"):
    controller.index("fc9")
  with pytest.raises(PurlError, match="3 levels given for 4"):
    controller.apply([0.5] * 3)
  with pytest.raises(PurlError, match="mode 'random' is unknown"):
    controller.set_level(0, 0.5, "random")


def test_lowering_a_level_without_reset_reports_the_real_sparsity(lenet):
  """set_sparsity returns "the sparsity reached"; after a higher level, weights it zeroed
  stay zero while the controller counts them as kept."""
  _, _, controller = lenet
  fc1 = controller.index("fc1")
  controller.set_sparsity(fc1, 0.9)
  try:
    reached = controller.set_sparsity(fc1, 0.5)
  except PurlError:
    return  # refusing to lower a level without reset() keeps the books right, too
  measured = controller.measured_sparsities()[fc1]
  assert reached == pytest.approx(measured, abs=1e-6), (
      f"controller says {reached}, {measured} of the weights are zero")
  assert controller.costs()["params_remaining"] == (
      controller.total_params - int(np.count_nonzero(controller.weight(fc1).numpy() == 0)))


# --- selection: kth_smallest / keep_largest / above_threshold ---------------------------------


def _arrays(rng, size):
  """Random arrays of one size: continuous, mostly zeros (a pruned layer), heavy ties."""
  yield "normal", rng.normal(size=size).astype(np.float32)
  magnitudes = np.abs(rng.normal(size=size)).astype(np.float32)
  magnitudes[rng.random(size) < 0.9] = 0.0
  yield "zeros", magnitudes
  yield "ties", rng.integers(0, 5, size).astype(np.float32)
  yield "constant", np.full(size, 0.25, np.float32)
  if size > 1 << 17:
    # The strided sample only sees huge values: the bracket misses and it falls back.
    step = size // 16384
    adversarial = rng.uniform(0, 1, size).astype(np.float32)
    adversarial[::step] = 1e6
    yield "strided", adversarial


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 1 << 17, (1 << 17) + 1, 300_001])
def test_kth_smallest_equals_np_partition(size):
  """Sizes on both sides of the 2**17 cutoff above which it brackets with a sample."""
  for seed in range(3):
    rng = np.random.default_rng(seed)
    for kind, values in _arrays(rng, size):
      ks = {0, size - 1, size // 2, int(size * 0.9)} | set(rng.integers(0, size, 4).tolist())
      for k in sorted(ks):
        expected = np.partition(values, k)[k]
        got = float(selection.kth_smallest(values, k))
        assert got == expected, (kind, size, seed, k)


def _keep_largest(weight, keep):
  """selection.keep_largest on an array of any shape: (bool mask of its shape, threshold)."""
  mask, threshold = selection.keep_largest(weight.ravel(), keep)
  return mask.numpy().reshape(weight.shape) > 0, float(threshold)


def test_keep_largest_keeps_exactly_keep_breaking_ties_by_lower_position():
  weight = np.array([[0.5, -1.0, 1.0], [1.0, -0.25, 1.0]], np.float32)
  mask, threshold = _keep_largest(weight, 3)
  assert threshold == 1.0
  # |w| = [.5, 1, 1, 1, .25, 1]: four tie at 1.0 for three places; lower positions win.
  np.testing.assert_array_equal(mask, [[False, True, True], [True, False, False]])
  mask, _ = _keep_largest(weight, 6)
  assert mask.all()
  rng = np.random.default_rng(4)
  for keep in (1, 10, 999, 1000):
    values = rng.integers(-3, 4, (10, 100)).astype(np.float32)
    mask, threshold = _keep_largest(values, keep)
    assert mask.sum() == keep
    assert np.abs(values[mask]).min() >= np.abs(values[~mask]).max(initial=0.0)


# --- reset / snapshot ---------------------------------------------------------------------------


def test_reset_restores_every_variable_exactly(mobilenet):
  _, wrapped, controller = mobilenet
  controller.reset()
  before = [v.numpy().copy() for v in wrapped.variables]
  controller.apply([0.8] * controller.num_layers)
  # Stand in for retraining: move every variable (weights, biases, BN statistics, masks).
  for variable in wrapped.variables:
    variable.assign(variable + tf.ones_like(variable))
  controller.reset()
  assert len(before) == len(wrapped.variables)
  for value, variable in zip(before, wrapped.variables):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)
  assert np.all(controller.sparsities() == 0.0)
  assert controller.global_sparsity() == 0.0


def test_snapshot_moves_the_reset_point(lenet):
  _, wrapped, controller = lenet
  controller.apply([0.2, 0.4, 0.6, 0.8])
  controller.snapshot()
  pruned = [v.numpy().copy() for v in wrapped.variables]
  levels = controller.sparsities().copy()
  controller.apply([0.9] * 4)
  controller.reset()
  np.testing.assert_array_equal(controller.sparsities(), levels)
  for value, variable in zip(pruned, wrapped.variables):
    np.testing.assert_array_equal(variable.numpy(), value)


# --- allocations ------------------------------------------------------------------------------


def _check_global_magnitude(controller, sparsity, dense):
  reached = pruning.global_magnitude(controller, sparsity)
  np.testing.assert_array_equal(reached, controller.sparsities())
  total = int(controller.sizes.sum())
  pruned_total = int(round(controller.global_sparsity() * total))
  assert abs(pruned_total - sparsity * total) <= controller.num_layers
  masks = [m.astype(bool) for m in _masks(controller)]
  pruned_max = max(np.abs(w[~m]).max(initial=0.0) for w, m in zip(dense, masks))
  for i, (weight, mask) in enumerate(zip(dense, masks)):
    if mask.sum() == 1:
      # A layer the threshold would empty keeps its single largest weight.
      assert np.abs(weight[mask])[0] == np.abs(weight).max()
      assert np.abs(weight).max() <= pruned_max
    else:  # one threshold: every kept weight is at least every pruned weight, all layers
      assert np.abs(weight[mask]).min() >= pruned_max, controller.names[i]


@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.9])
def test_global_magnitude_on_a_fresh_lenet(sparsity):
  keras.utils.set_random_seed(11)
  controller = pruning.PruningController(pruning.wrap(models.lenet5((28, 28, 1), 10)))
  _check_global_magnitude(controller, sparsity, _weights(controller))


def test_global_magnitude_on_mobilenet(mobilenet):
  _, _, controller = mobilenet
  controller.reset()
  dense = _weights(controller)
  for sparsity in (0.25, 0.5):
    controller.reset()
    _check_global_magnitude(controller, sparsity, dense)
  controller.reset()
  assert np.all(pruning.global_magnitude(controller, 0.0) == 0.0)
  for bad in (1.0, -0.1):
    with pytest.raises(PurlError, match="outside"):
      pruning.global_magnitude(controller, bad)


def test_global_magnitude_breaks_ties_by_layer_order():
  inputs = keras.Input((4,))
  hidden = keras.layers.Dense(3, use_bias=False, name="first")(inputs)
  outputs = keras.layers.Dense(2, use_bias=False, name="second")(hidden)
  model = keras.Model(inputs, outputs)
  model.get_layer("first").set_weights([np.full((4, 3), -1.0, np.float32)])
  model.get_layer("second").set_weights([np.ones((3, 2), np.float32)])
  controller = pruning.PruningController(pruning.wrap(model))
  # 18 weights all tie at |w| = 1: half (9) go, taken from the first layer (12) first.
  reached = pruning.global_magnitude(controller, 0.5)
  np.testing.assert_allclose(reached, [9 / 12, 0.0])
  assert controller.measured_sparsities().tolist() == pytest.approx([9 / 12, 0.0])


def test_uniform_and_explicit_allocations(lenet):
  _, _, controller = lenet
  reached = pruning.uniform(controller, 0.7)
  for i, size in enumerate(controller.sizes):
    assert reached[i] == pytest.approx(_expected_pruned(0.7, int(size)) / size, abs=1e-12)
  controller.reset()
  reached = pruning.explicit(controller, {"conv2": 0.5, "fc1": 0.95})
  assert reached.tolist() == pytest.approx([0.0, 0.5, 0.95, 0.0], abs=1e-12)
  reached = pruning.explicit(controller, {"predictions": 0.2})  # others stay as they are
  assert reached.tolist() == pytest.approx([0.0, 0.5, 0.95, 0.2], abs=1e-12)
  with pytest.raises(PurlError, match="not a prunable layer"):
    pruning.explicit(controller, {"pool1": 0.5})


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_lamp_keeps_the_weights_of_highest_lamp_score(lenet, sparsity):
  """Against LAMP's definition computed here: score(u) = u^2 / sum of v^2 over the weights
  v of u's layer with v^2 >= u^2; the lowest scores of the network go."""
  _, _, controller = lenet
  scores = []
  for i in range(controller.num_layers):
    squares = np.square(controller.weight(i).numpy().astype(np.float64).ravel())
    ordered = np.sort(squares)
    suffix = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0.0]])
    scores.append(squares / suffix[np.searchsorted(ordered, squares, side="left")])
  flat = np.sort(np.concatenate(scores))
  threshold = flat[int(round(sparsity * flat.size)) - 1]
  expected = [1.0 - max(np.count_nonzero(s > threshold), 1) / s.size for s in scores]
  reached = pruning.lamp(controller, sparsity)
  np.testing.assert_allclose(reached, expected, atol=1e-12)
  assert controller.global_sparsity() == pytest.approx(sparsity, abs=1e-4)
  assert len(set(np.round(reached, 3))) > 1  # layer-adaptive, not uniform


def test_erk_densities_follow_the_kernel_shapes(lenet):
  _, _, controller = lenet
  reached = pruning.erk(controller, 0.9)
  shapes = [np.array(controller.weight(i).shape, np.float64) for i in range(4)]
  raw = np.array([shape.sum() / shape.prod() for shape in shapes])
  density = 1.0 - reached
  # conv1 (5x5x1x20) and the 500x10 head would pass density 1: they stay dense ...
  assert density[0] == 1.0 and density[3] == 1.0
  # ... and conv2, fc1 share one scale of (sum of dims / product), reaching the target.
  scale = density[1:3] / raw[1:3]
  assert scale[0] == pytest.approx(scale[1], rel=1e-3)
  assert np.all(scale * raw[[0, 3]] > 1.0)
  assert controller.global_sparsity() == pytest.approx(0.9, abs=1e-4)


def test_fit_scales_every_density_by_one_factor_to_reach_the_target(lenet):
  _, _, controller = lenet
  names = controller.names
  # An allocation that overshoots 0.9; conv1 so dense that scaling would pass 1.
  chosen = dict(zip(names, [0.1, 0.95, 0.96, 0.8]))
  reached = pruning.fit(controller, chosen, 0.9)
  assert controller.global_sparsity() == pytest.approx(0.9, abs=1e-4)
  density, before = 1.0 - reached, 1.0 - np.array([chosen[n] for n in names])
  assert density[0] == 1.0  # capped: stays dense ...
  scale = density[1:] / before[1:]  # ... the others keep their ratios
  np.testing.assert_allclose(scale, scale[0], rtol=2e-2)
  assert scale[0] > 1.0
  # The same from above the target (too dense) and as a {layer: sparsity} on dense weights.
  fitted = pruning.fitted(controller, dict(zip(names, [0.5, 0.6, 0.7, 0.5])), 0.9)
  assert controller.global_sparsity() == 0.0
  assert pruning.costs(controller.infos, [fitted[n] for n in names],
                       controller.total_params)["global_sparsity"] == pytest.approx(0.9, abs=1e-4)
  with pytest.raises(PurlError, match="no level for the prunable layers"):
    pruning.fit(controller, {names[0]: 0.5}, 0.9)


def test_uniform_keep_ends_leaves_the_first_and_last_layers_dense(lenet):
  _, _, controller = lenet
  reached = pruning.uniform_keep_ends(controller, 0.9)
  assert reached[0] == 0.0 and reached[-1] == 0.0
  assert reached[1] == pytest.approx(reached[2], abs=1e-4) and reached[1] > 0.9
  assert controller.global_sparsity() == pytest.approx(0.9, abs=1e-4)
  controller.reset()
  with pytest.raises(PurlError, match="lower the target"):
    pruning.uniform_keep_ends(controller, 0.99)


# --- accounting ----------------------------------------------------------------------------------


def test_lenet_layer_infos(lenet):
  dense, _, controller = lenet
  infos = {info.name: info for info in pruning.describe(controller.model)}
  # 28x28 -conv5-> 24x24 -pool-> 12x12 -conv5-> 8x8 -pool-> 4x4x50 = 800.
  assert infos["conv1"] == pruning.LayerInfo(
      name="conv1", kind="conv", kernel=5, stride=1, in_channels=1, out_channels=20,
      params=500, flops=500 * 24 * 24, param_share=infos["conv1"].param_share,
      flop_share=infos["conv1"].flop_share)
  conv2, fc1, head = infos["conv2"], infos["fc1"], infos["predictions"]
  assert (conv2.kernel, conv2.in_channels, conv2.out_channels, conv2.params, conv2.flops) == (
      5, 20, 50, 25 * 20 * 50, 25 * 20 * 50 * 8 * 8)
  assert (fc1.kind, fc1.kernel, fc1.stride, fc1.in_channels, fc1.params, fc1.flops) == (
      "dense", 1, 1, 800, 400_000, 400_000)
  assert (head.in_channels, head.out_channels, head.params) == (500, 10, 5000)
  params = sum(info.params for info in infos.values())
  flops = sum(info.flops for info in infos.values())
  for info in infos.values():
    assert info.param_share == pytest.approx(info.params / params)
    assert info.flop_share == pytest.approx(info.flops / flops)
  assert controller.total_params == dense.count_params()


def test_mobilenet_depthwise_layer_info(mobilenet):
  _, _, controller = mobilenet
  info = controller.infos[controller.index("block_1_depthwise")]
  # 32x32 -Conv1 stride 2-> 16x16 -block_1 depthwise stride 2-> 8x8; 3x3 kernel, 96 channels.
  assert (info.kind, info.kernel, info.stride, info.in_channels, info.out_channels) == (
      "depthwise", 3, 2, 96, 96)
  assert info.params == 3 * 3 * 96 and info.flops == 3 * 3 * 96 * 8 * 8


def test_costs_follow_the_sparsities(lenet):
  dense, _, controller = lenet
  start = controller.costs()
  assert start["params_total"] == start["params_remaining"] == dense.count_params()
  assert start["flops_total"] == start["flops_remaining"] == sum(
      info.flops for info in controller.infos)
  assert start["prunable_params"] == int(controller.sizes.sum())
  assert start["global_sparsity"] == 0.0
  controller.apply([0.3, 0.6, 0.9, 0.45])
  costs = controller.costs()
  pruned = [int(np.count_nonzero(w == 0)) for w in _weights(controller)]
  assert costs["params_remaining"] == dense.count_params() - sum(pruned)
  expected_flops = sum(info.flops * (size - p) / size
                       for info, size, p in zip(controller.infos, controller.sizes, pruned))
  assert abs(costs["flops_remaining"] - expected_flops) <= 1
  assert costs["global_sparsity"] == pytest.approx(sum(pruned) / controller.sizes.sum())
  assert costs["global_sparsity"] == pytest.approx(controller.global_sparsity())
  assert costs["params_total"] == start["params_total"]


# --- strip / save / load in plain tf-keras ------------------------------------------------------

_LOADER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tf_keras as keras
    root = sys.argv[1]
    report = {"purl_tf_imported": False, "tfmot_imported": False, "models": {}}
    for entry in json.load(open(os.path.join(root, "manifest.json"))):
      model = keras.models.load_model(entry["path"], compile=False)
      x = np.load(entry["inputs"])
      np.save(entry["path"].rstrip("/") + ".loaded.npy", model(x, training=False).numpy())
      zeros, classes = {}, set()
      stack = list(model.layers)
      while stack:
        layer = stack.pop()
        classes.add(type(layer).__name__)
        if isinstance(layer, keras.Model):
          stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
          zeros[layer.name] = int(np.sum(layer.depthwise_kernel.numpy() == 0))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
          zeros[layer.name] = int(np.sum(layer.kernel.numpy() == 0))
      report["models"][entry["path"]] = {"zeros": zeros, "classes": sorted(classes)}
    report["purl_tf_imported"] = "purl_tf" in sys.modules
    report["tfmot_imported"] = "tensorflow_model_optimization" in sys.modules
    print("REPORT", json.dumps(report))
""")


def _tiny_mixed_model():
  """Conv2D, BatchNormalization, DepthwiseConv2D and Dense: cheap in every save format."""
  inputs = keras.Input((12, 12, 3))
  x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="fc")(x))


@pytest.fixture(scope="module")
def saved_round_trip(tmp_path_factory, pretrained_lenet, mobilenet):
  """Prunes three models, saves them with pruning.save, reloads them in a child process
  that imports only tf-keras. Returns (cases, report): cases maps each saved path to
  (inputs, wrapped model's outputs, zeros per layer in the wrapped model, wrapped model)."""
  root = str(tmp_path_factory.mktemp("saved"))
  rng = np.random.default_rng(5)
  keras.utils.set_random_seed(5)
  _, mobilenet_wrapped, mobilenet_controller = mobilenet
  mobilenet_controller.reset()
  lenet_wrapped = pruning.wrap(pretrained_lenet())
  tiny_wrapped = pruning.wrap(_tiny_mixed_model())
  setups = [
      ("lenet", lenet_wrapped, (".keras", ".h5", "")),
      ("tiny", tiny_wrapped, (".keras", ".h5", "")),  # "" = SavedModel folder
      ("mobilenet", mobilenet_wrapped, (".keras", ".h5")),  # SavedModel of it: ~17 s
  ]
  cases, manifest = {}, []
  for name, wrapped, extensions in setups:
    controller = (mobilenet_controller if wrapped is mobilenet_wrapped
                  else pruning.PruningController(wrapped))
    controller.apply(rng.uniform(0.3, 0.9, controller.num_layers).tolist())
    shape = (4,) + tuple(wrapped.input_shape[1:])
    inputs = rng.uniform(0, 1, shape).astype(np.float32)
    inputs_path = os.path.join(root, f"{name}_inputs.npy")
    np.save(inputs_path, inputs)
    expected = wrapped(inputs, training=False).numpy()
    zeros = {w.layer.name: int(np.count_nonzero(w.pruning_vars[0][0].numpy() == 0))
             for w in controller.wrappers}
    pruned = {n: int(round(s * size)) for n, s, size in
              zip(controller.names, controller.sparsities(), controller.sizes)}
    for extension in extensions:
      path = pruning.save(wrapped, os.path.join(root, name + extension))
      assert os.path.exists(path) and not os.path.exists(
          os.path.join(root, f"{name}.partial{extension}"))
      manifest.append({"path": path, "inputs": inputs_path})
      cases[path] = dict(inputs=inputs, expected=expected, zeros=zeros, pruned=pruned,
                         wrapped=wrapped, name=name)
  with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  script = os.path.join(root, "load_plain.py")
  with open(script, "w", encoding="utf-8") as f:
    f.write(_LOADER)
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  run = subprocess.run([sys.executable, script, root], env=env, cwd=root,
                       capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
  assert len(lines) == 1, run.stdout
  yield cases, json.loads(lines[0][len("REPORT "):])
  mobilenet_controller.reset()


def test_saved_models_load_in_plain_tf_keras_with_the_same_predictions(saved_round_trip):
  cases, report = saved_round_trip
  assert not report["purl_tf_imported"] and not report["tfmot_imported"]
  assert set(report["models"]) == set(cases)
  for path, case in cases.items():
    loaded = np.load(path.rstrip("/") + ".loaded.npy")
    np.testing.assert_allclose(loaded, case["expected"], rtol=1e-5, atol=1e-6, err_msg=path)
    # Saving strips a copy: the wrapped model itself still computes the same.
    np.testing.assert_allclose(case["wrapped"](case["inputs"], training=False).numpy(),
                               case["expected"], rtol=1e-6, atol=1e-7, err_msg=path)
    classes = report["models"][path]["classes"]
    assert not any("Prune" in c for c in classes), (path, classes)


def test_saved_models_keep_each_layers_zeros(saved_round_trip):
  cases, report = saved_round_trip
  depthwise_checked = set()
  for path, case in cases.items():
    zeros = report["models"][path]["zeros"]
    assert zeros == case["zeros"], path  # same zeros, layer by layer
    for layer, count in zeros.items():
      assert count >= case["pruned"][layer] > 0, (path, layer)  # at least what was pruned
    if "block_1_depthwise" in zeros or "dw" in zeros:
      depthwise_checked.add(os.path.basename(path))
  assert {"mobilenet.keras", "mobilenet.h5", "tiny.keras", "tiny.h5", "tiny"} <= (
      depthwise_checked)


def test_strip_gives_a_plain_model_with_masks_applied(lenet):
  _, wrapped, controller = lenet
  controller.apply([0.5, 0.5, 0.5, 0.5])
  plain = pruning.strip(wrapped)
  assert not pruning.prunable_layers(plain)
  assert [layer.name for layer in plain.layers if type(layer) in PRUNABLE_TYPES] == (
      LENET_LAYERS)
  for name, size in zip(controller.names, controller.sizes):
    kernel = plain.get_layer(name).kernel.numpy()
    assert np.count_nonzero(kernel == 0) == _expected_pruned(0.5, int(size))
  x = np.random.default_rng(6).uniform(0, 1, (5, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(plain(x).numpy(), wrapped(x, training=False).numpy(),
                             rtol=1e-6, atol=1e-7)


def test_the_wrapper_writes_no_weight_when_called_the_trainer_keeps_them_sparse(lenet,
                                                                               mnist5k_splits):
  """tfmot's own wrapper assigns weight * mask on every call (an all-reduce per kernel under
  tf.distribute); MaskedPruning calls the layer as it is, and the trainer re-applies the
  masks after each optimizer step."""
  dense, wrapped, controller = lenet
  controller.set_sparsity(2, 0.9)
  weight = controller.weight(2)
  dense_values = dense.get_layer("fc1").kernel.numpy()
  weight.assign(dense_values)  # masked positions hold non-zeros again
  images = next(iter(mnist5k_splits.train))[0]
  wrapped(images, training=True)
  wrapped(images, training=False)
  np.testing.assert_array_equal(weight.numpy(), dense_values)  # no write on any call
  trainer = MaskedTrainer(wrapped, tf.distribute.get_strategy())
  trainer.train(trainer.stream(mnist5k_splits.train), 2)
  mask = controller.wrappers[2].pruning_vars[0][1].numpy()
  assert np.all(weight.numpy()[mask == 0] == 0.0)
  assert controller.measured_sparsities()[2] == pytest.approx(0.9, abs=1e-3)
