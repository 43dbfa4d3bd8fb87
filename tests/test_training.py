"""MaskedTrainer (purl_tf.pruning.training): masks held through retraining, no retracing when levels
change, and the same numbers under MirroredStrategy on two logical CPUs."""
import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf

from purl_tf import models, pruning
from purl_tf.pruning import training
from purl_tf.runtime import distribute

LEVELS = [0.5, 0.8, 0.9, 0.3]


def _eager_accuracy(model, dataset):
  """(top-1 accuracy, set of classes predicted) computed eagerly, outside any tf.function."""
  hits = count = 0
  classes = set()
  for images, labels in dataset:
    predicted = np.argmax(model(images, training=False).numpy(), axis=-1)
    hits += int(np.sum(predicted == labels.numpy()))
    count += int(labels.shape[0])
    classes.update(predicted.tolist())
  return hits / count, classes


def _setup(make_model, strategy, learning_rate=0.05):
  with strategy.scope():
    wrapped = pruning.wrap(make_model())
    controller = pruning.PruningController(wrapped)
    trainer = training.MaskedTrainer(wrapped, strategy, learning_rate=learning_rate)
  return wrapped, controller, trainer


@pytest.fixture
def default_setup(pretrained_lenet):
  """(wrapped pre-trained LeNet-5, controller, trainer) under the default strategy."""
  return _setup(pretrained_lenet, tf.distribute.get_strategy())


def test_masks_hold_through_training_and_reset_restores_dense(default_setup, mnist5k_splits):
  wrapped, controller, trainer = default_setup
  dense_values = [v.numpy().copy() for v in wrapped.variables]
  reached = controller.apply(LEVELS)
  masks = [w.pruning_vars[0][1].numpy().astype(bool) for w in controller.wrappers]
  before = [controller.weight(i).numpy().copy() for i in range(controller.num_layers)]

  loss = trainer.train(trainer.stream(mnist5k_splits.train), 30)
  assert np.isfinite(loss) and loss > 0

  for i, mask in enumerate(masks):
    after = controller.weight(i).numpy()
    assert np.all(after[~mask] == 0.0), controller.names[i]  # pruned weights stay exactly 0
    # The kept weights were trained (SGD moved them).
    assert np.mean(after[mask] != before[i][mask]) > 0.5, controller.names[i]
    # The masks themselves did not move.
    np.testing.assert_array_equal(controller.wrappers[i].pruning_vars[0][1].numpy(), mask)
  np.testing.assert_array_equal(controller.sparsities(), reached)
  np.testing.assert_allclose(controller.measured_sparsities(), reached, atol=1e-6)

  # Momentum is state: reset_optimizer zeroes it for the next retrain.
  assert any(np.any(v.numpy() != 0) for v in trainer.optimizer.variables)
  trainer.reset_optimizer()
  assert all(np.all(v.numpy() == 0) for v in trainer.optimizer.variables)

  # reset() returns every variable to its dense value, masks to ones.
  controller.reset()
  for value, variable in zip(dense_values, wrapped.variables):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)
  assert np.all(controller.sparsities() == 0.0)
  assert all(np.all(w.pruning_vars[0][1].numpy() == 1.0) for w in controller.wrappers)


def test_changing_levels_never_retraces(default_setup, mnist5k_splits):
  wrapped, controller, trainer = default_setup
  splits = mnist5k_splits
  test_set, reward_set = trainer.distribute(splits.test), trainer.distribute(splits.reward)
  rounds = [
      ("sparsity", LEVELS, 3, test_set),
      ("sparsity", [0.999999] * 4, 1, reward_set),  # one weight left per layer
      ("threshold", [0.5, 1.0, 1.5, 0.2], 2, test_set),
      ("sparsity", [0.0] * 4, 5, reward_set),
  ]
  train_stream = trainer.stream(splits.train)
  accuracies, classes_predicted = [], []
  for mode, levels, steps, evaluation in rounds:
    controller.reset()
    trainer.reset_optimizer()
    controller.apply(levels, mode=mode)
    # Masks are variables the compiled functions read: the pruned model's accuracy equals
    # what eager Keras computes with the same weights.
    eager, classes = _eager_accuracy(wrapped, splits.test)
    assert trainer.evaluate(test_set) == pytest.approx(eager, abs=1e-9)
    classes_predicted.append(classes)
    loss = trainer.train(train_stream, steps)  # the step count is a tensor: no retrace
    assert np.isfinite(loss)
    accuracies.append(trainer.evaluate(evaluation))
    # (A dataset of another element_spec, e.g. reward's (None, ...) batches instead of
    # train's (64, ...), would trace again: that is a new input signature, not a level.)
    assert trainer.tracing_counts() == {"train": 1, "eval": 1}, (mode, levels)
  # The levels reached the compiled functions. With one weight left in `predictions`, only
  # one logit depends on the input (the others are biases): at most two classes predicted.
  assert len(classes_predicted[1]) <= 2 < len(classes_predicted[0])
  # Dense again after reset: back to the pre-trained network (> 95 % before 5 SGD steps).
  assert accuracies[3] > 0.9

def test_mirrored_strategy_matches_default(pretrained_lenet, mnist5k_splits, default_setup,
                                           mirrored_strategy):
  mirrored = mirrored_strategy  # distribute.make_strategy("mirrored")
  assert mirrored.num_replicas_in_sync == 2  # conftest split the CPU in two
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  default_wrapped, default_controller, default_trainer = default_setup
  mirrored_wrapped, mirrored_controller, mirrored_trainer = _setup(pretrained_lenet, mirrored)
  for a, b in zip(default_wrapped.variables, mirrored_wrapped.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # identical starting points
  results = {}
  # The reward split is fixed-order: both runs see the same batches (of 128, the last
  # one 116), split 64/64 and 58/58 across the two replicas.
  for name, (wrapped, controller, trainer) in {
      "default": (default_wrapped, default_controller, default_trainer),
      "mirrored": (mirrored_wrapped, mirrored_controller, mirrored_trainer)}.items():
    controller.apply(LEVELS)
    losses = [trainer.train(trainer.stream(mnist5k_splits.reward), 4),
              trainer.train(trainer.stream(mnist5k_splits.reward), 4)]
    results[name] = dict(
        losses=losses,
        accuracy=trainer.evaluate(trainer.distribute(mnist5k_splits.test)),
        weights=[v.numpy() for v in wrapped.trainable_variables],
        measured=controller.measured_sparsities(),
        traces=trainer.tracing_counts())
  default, mirrored_result = results["default"], results["mirrored"]
  np.testing.assert_allclose(mirrored_result["losses"], default["losses"], rtol=1e-4)
  assert mirrored_result["accuracy"] == pytest.approx(default["accuracy"], abs=2e-3)
  for got, want in zip(mirrored_result["weights"], default["weights"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.array_equal(got == 0, want == 0)  # same pruned positions
  np.testing.assert_allclose(mirrored_result["measured"], default["measured"])
  assert mirrored_result["traces"] == default["traces"] == {"train": 1, "eval": 1}


def test_make_strategy_hands_out_one_mirrored_strategy_per_process(mirrored_strategy):
  """Two MirroredStrategies in one process share collective instance keys and abort each
  other's all-reduces ("Shape mismatch in the collective instance ..."), so make_strategy
  returns the same one every time; two retrains in a row then both work."""
  assert distribute.make_strategy("mirrored") is mirrored_strategy
  images = np.random.default_rng(0).uniform(0, 1, (256, 28, 28, 1)).astype(np.float32)
  data = tf.data.Dataset.from_tensor_slices((images, np.arange(256) % 10)).batch(64)
  losses = []
  for evaluate_first in (True, False):  # a search then a separate fine-tune, say
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
      model = pruning.wrap(models.lenet5((28, 28, 1), 10))
      pruning.PruningController(model).apply([0.5] * 4)
      trainer = training.MaskedTrainer(model, strategy)
    if evaluate_first:
      trainer.evaluate(trainer.distribute(data))
    losses.append(trainer.train(trainer.stream(data), 2))
  assert all(np.isfinite(losses))


def _conv_bn_net(image_shape, num_classes):
  inputs = tf.keras.Input(image_shape)
  x = tf.keras.layers.Conv2D(6, 3, name="conv")(inputs)
  x = tf.keras.layers.BatchNormalization(name="bn")(x)
  x = tf.keras.layers.ReLU()(x)
  x = tf.keras.layers.GlobalAveragePooling2D()(x)
  return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes, name="head")(x))


def test_recalibrate_sets_batch_norm_statistics_to_the_mean_of_its_batches(mnist5k_splits):
  """The moving statistics become the mean of the batch statistics of the batches given
  (the first BN's input is the conv output, computed here independently); training
  afterwards still moves them with the layer's own momentum, and the model still
  serialises."""
  tf.keras.utils.set_random_seed(0)
  strategy = tf.distribute.get_strategy()
  wrapped, controller, trainer = _setup(
      lambda: _conv_bn_net(mnist5k_splits.image_shape, mnist5k_splits.num_classes), strategy)
  controller.apply([0.5, 0.5])
  batches = list(mnist5k_splits.reward.take(3))
  fed = lambda start, count: iter(trainer.distribute(mnist5k_splits.reward.skip(start).take(count)))
  conv, bn = wrapped.get_layer("masked_pruning_conv"), wrapped.get_layer("bn")
  statistics = [tf.nn.moments(conv(images), axes=[0, 1, 2]) for images, _ in batches[:2]]
  trainer.recalibrate(fed(0, 2), 2)
  np.testing.assert_allclose(bn.moving_mean.numpy(),
                             np.mean([m.numpy() for m, _ in statistics], axis=0), atol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(),
                             np.mean([v.numpy() for _, v in statistics], axis=0), rtol=2e-3)
  assert isinstance(bn.momentum, float) and bn.momentum == 0.99
  wrapped.to_json()  # no variable left in a layer's config

  trainer.recalibrate(fed(0, 1), 1)  # one batch: exactly its statistics
  before, (mean, _) = bn.moving_mean.numpy(), tf.nn.moments(conv(batches[0][0]), [0, 1, 2])
  np.testing.assert_allclose(before, mean.numpy(), atol=1e-5)
  # A train step's forward pass (before its update) moves them by 1 - 0.99 of the way.
  step_mean, _ = tf.nn.moments(conv(batches[2][0]), [0, 1, 2])
  trainer.train(fed(2, 1), 1)
  np.testing.assert_allclose(bn.moving_mean.numpy(),
                             0.99 * before + 0.01 * step_mean.numpy(), atol=1e-5)
  assert trainer.recalibrate_function.experimental_get_tracing_count() == 1
  assert trainer.tracing_counts()["train"] == 1


def test_recalibrate_on_two_replicas_gives_each_the_statistics_of_its_batches(
    mirrored_strategy, mnist5k_splits):
  """Under MirroredStrategy each replica normalises its half of every global batch, and
  keeps its own moving statistics (Keras' on-read variables): after recalibration each
  replica's are the mean of its halves' statistics, and the value read across replicas
  (what a saved model keeps) is their mean."""
  tf.keras.utils.set_random_seed(0)
  wrapped, controller, trainer = _setup(
      lambda: _conv_bn_net(mnist5k_splits.image_shape, mnist5k_splits.num_classes),
      mirrored_strategy)
  controller.apply([0.5, 0.5])
  batches = [images for images, _ in mnist5k_splits.reward.take(2)]
  conv, bn = wrapped.get_layer("masked_pruning_conv"), wrapped.get_layer("bn")
  # moments[replica] = [(mean, variance) of its half of each batch]
  moments = [[tf.nn.moments(conv(tf.split(images, 2)[replica]), axes=[0, 1, 2])
              for images in batches] for replica in range(2)]
  trainer.recalibrate(iter(trainer.distribute(mnist5k_splits.reward.take(2))), 2)
  for index, name in enumerate(("moving_mean", "moving_variance")):
    variable = getattr(bn, name)
    per_replica = [np.mean([m[index].numpy() for m in halves], axis=0) for halves in moments]
    for value, want in zip(mirrored_strategy.experimental_local_results(variable),
                           per_replica):
      np.testing.assert_allclose(value.numpy(), want, rtol=2e-3, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(variable.numpy(), np.mean(per_replica, axis=0), rtol=2e-3,
                               atol=1e-5, err_msg=name)
  assert isinstance(bn.momentum, float) and bn.momentum == 0.99


def test_recalibrate_leaves_a_model_without_batch_norm_alone(default_setup, mnist5k_splits):
  wrapped, _, trainer = default_setup
  before = [v.numpy() for v in wrapped.variables]
  trainer.recalibrate(iter(mnist5k_splits.reward), 2)
  assert not trainer.has_batch_norm
  for got, want in zip(wrapped.variables, before):
    np.testing.assert_array_equal(got.numpy(), want)
