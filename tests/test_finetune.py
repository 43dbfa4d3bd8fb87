"""Fine-tuning under MirroredStrategy over two logical CPUs; resuming a finished fine-tune."""
import logging

import numpy as np
import pytest

import purl_tf  # noqa: F401
import tf_keras as keras

from purl_tf import pruning
from purl_tf.run import finetune

ALLOCATION = {"conv1": 0.5, "conv2": 0.8, "fc1": 0.95, "predictions": 0.6}


def test_mirrored_finetune_keeps_the_allocation_and_saves_a_plain_model(
    pretrained_lenet, mirrored_strategy, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="purl_tf")
  strategy = mirrored_strategy
  assert strategy.num_replicas_in_sync == 2  # conftest split the CPU in two
  with strategy.scope():
    controller = pruning.PruningController(pruning.wrap(pretrained_lenet()))
  splits = pretrained_lenet.splits
  results = finetune.finetune(controller, strategy, splits, ALLOCATION, str(tmp_path),
                              epochs=1.0)

  sizes = controller.sizes
  expected = sum(ALLOCATION[n] * s for n, s in zip(controller.names, sizes)) / sizes.sum()
  assert results["global_sparsity"] == pytest.approx(expected, abs=1e-4)
  assert results["finetune_steps"] == splits.num_examples["train"] // splits.batch_size
  assert results["dense_test_accuracy"] > 0.95
  assert results["pruned_test_accuracy"] > 0.93
  np.testing.assert_allclose(controller.measured_sparsities(),
                             [ALLOCATION[n] for n in controller.names], atol=1e-3)

  plain = keras.models.load_model(results["pruned_model"])
  images = next(iter(splits.test))[0]
  with strategy.scope():  # tfmot's wrappers assign masks through the strategy's context
    wrapped_outputs = controller.model(images).numpy()
  np.testing.assert_allclose(plain(images).numpy(), wrapped_outputs, atol=1e-5)
  for name, fraction in ALLOCATION.items():
    kernel = plain.get_layer(name).kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(fraction, abs=1e-3)

  caplog.clear()
  again = finetune.finetune(controller, strategy, splits, ALLOCATION, str(tmp_path),
                            epochs=1.0)
  assert "Resuming fine-tuning after step" in caplog.text
  assert again["pruned_test_accuracy"] == pytest.approx(results["pruned_test_accuracy"])
