"""The shipped gin configs build and take pruning steps (ImageNet/CIFAR on mock data)."""
import os

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tensorflow_datasets as tfds

from purl_tf.run import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Reduced input size and budgets; everything else comes from the config file.
SHRINK = ["load_splits.image_size = 32", "load_splits.batch_size = 4",
          "load_splits.eval_batch_size = 8", "load_splits.reward_size = 8",
          "load_splits.shuffle_buffer = 16", "PruningEnv.retrain_steps = 1",
          "make_strategy.name = 'default'"]


@pytest.mark.parametrize("config, builder, layers, bindings", [
    ("resnet50", "resnet50", 54, ["resnet50.weights = None"]),
    ("mobilenet_v2", "mobilenet_v2", 53, ["mobilenet_v2.weights = None"]),
])
def test_config_takes_two_pruning_steps_on_mock_data(config, builder, layers, bindings,
                                                     tmp_path):
  gin.parse_config_files_and_bindings([os.path.join(REPO, "gin", f"{config}.gin")],
                                      SHRINK + bindings)
  model_builder = gin.query_parameter("train_eval.model_builder").scoped_configurable_fn
  target = gin.query_parameter("train_eval.target_sparsity")
  with tfds.testing.mock_data(num_examples=24):
    parts = pipeline.build(str(tmp_path), model_builder, target)
    env = parts.env
    assert model_builder.__name__ == builder
    assert env.num_layers == layers
    env.reset()
    for action in (3, len(env.levels) - 1):
      step = env.step(np.int64(action))
      assert np.isfinite(step.reward) and np.all(np.isfinite(step.observation))
  assert [r.level for r in env.episode] == [env.levels[3], env.levels[-1]]
  # Each step's retrain took a finite step from the random initialisation: 1,000 classes
  # put the loss near ln(1000) ~ 6.9 (the ImageNet train step on the masked network).
  assert all(1.0 < r.loss < 50.0 for r in env.episode), [r.loss for r in env.episode]
  assert env.episode[1].layer_sparsity == pytest.approx(env.levels[-1], abs=1e-2)
  assert parts.splits.image_shape == (32, 32, 3)


def test_cifar10_config_builds_its_network():
  gin.parse_config_files_and_bindings([os.path.join(REPO, "gin", "cifar10.gin")], [])
  builder = gin.query_parameter("train_eval.model_builder").scoped_configurable_fn
  model = builder(input_shape=(32, 32, 3), num_classes=10)
  assert model.name == "cifar_resnet20"
  assert gin.query_parameter("load_splits.dataset") == "cifar10"
  assert gin.query_parameter("load_splits.augment") == "flip_crop"
