"""A learned pruning policy moves to another network (SearchRunner.initial_policy)."""
import os

import pytest

import purl_tf  # noqa: F401
import gin
import tensorflow as tf
import tf_keras as keras

from purl_tf import models, pruning, search
from purl_tf.env import PruningEnv
from purl_tf.errors import PurlError
from purl_tf.training import MaskedTrainer

# The greedy policy `make demo` saves in runs/quickstart/policy: 100 episodes of the
# quickstart (LeNet-5 on mnist5k, target 0.9, Q-network (64, 64), 13 levels).
QUICKSTART_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                                 "quickstart_policy")


def small_cnn(input_shape, num_classes):
  """Not LeNet-5: three 3x3 convolutions (two strided), a dense layer, a head."""
  inputs = keras.Input(input_shape)
  x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
  x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
  x = keras.layers.Conv2D(64, 3, strides=2, activation="relu")(x)
  x = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(x))
  return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def cnn_env(mnist5k_splits, tmp_path_factory):
  splits = mnist5k_splits
  keras.utils.set_random_seed(0)
  model = small_cnn(splits.image_shape, splits.num_classes)
  models.pretrain(model, splits, str(tmp_path_factory.mktemp("cnn")), epochs=3, verbose=0)
  controller = pruning.PruningController(pruning.wrap(model))
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy())
  # Not enforcing the target: reaching it must be the policy's own doing.
  return PruningEnv(controller, trainer, splits.train_stream, splits.reward,
                    retrain_steps=5, target_sparsity=0.9, enforce_target=False)


def test_the_quickstart_policy_prunes_another_network_to_the_target_at_once(cnn_env, tmp_path):
  gin.bind_parameter("make_agent.fc_layer_params", (64, 64))
  result = search.search(cnn_env, str(tmp_path), num_episodes=1, eval_interval=1,
                         initial_policy=QUICKSTART_POLICY)
  first = result.episodes[0]
  assert (first.policy, first.episode) == (search.GREEDY, 0)  # before any training here
  assert len(first.levels) == 5 != 4  # another network than the one it learned on
  assert first.sparsity >= 0.9
  # It kept the network working, which a policy that has not learned does not.
  assert first.accuracy > 0.85
  assert os.path.exists(os.path.join(str(tmp_path), "policy", "saved_model.pb"))


def test_a_policy_of_another_q_network_is_refused(cnn_env, tmp_path):
  gin.bind_parameter("make_agent.fc_layer_params", (32,))
  with pytest.raises(PurlError, match="same make_agent.fc_layer_params"):
    search.search(cnn_env, str(tmp_path), num_episodes=1, initial_policy=QUICKSTART_POLICY)


def test_a_path_that_is_no_policy_is_refused(cnn_env, tmp_path):
  with pytest.raises(PurlError, match="is not a policy saved by purl_tf"):
    search.search(cnn_env, str(tmp_path), num_episodes=1, initial_policy=str(tmp_path))
