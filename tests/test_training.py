"""MaskedTrainer (purl_tf.training): masks held through retraining, no retracing when levels
change, and the same numbers under MirroredStrategy on two logical CPUs."""
import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf

from purl_tf import distribute, models, pruning, training

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
