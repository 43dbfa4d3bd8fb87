"""PruningEnv: tf-agents conformance, reward timing, reset, observations, bad input."""
import numpy as np
import pytest

import purl_tf  # noqa: F401
import tensorflow as tf
from tf_agents.environments import utils as env_utils

from purl_tf import pruning
from purl_tf.rl import rewards
from purl_tf.rl.env import NUM_FEATURES, PruningEnv
from purl_tf.errors import PurlError
from purl_tf.pruning.training import MaskedTrainer


@pytest.fixture(scope="module")
def lenet_parts(pretrained_lenet):
  """(controller, trainer, splits) of a wrapped pre-trained LeNet-5 (4 prunable layers)."""
  wrapped = pruning.wrap(pretrained_lenet())
  controller = pruning.PruningController(wrapped)
  trainer = MaskedTrainer(wrapped, tf.distribute.get_strategy())
  return controller, trainer, pretrained_lenet.splits


def make_env(parts, **kwargs):
  controller, trainer, splits = parts
  kwargs.setdefault("retrain_steps", 2)
  return PruningEnv(controller, trainer, splits.train_stream, splits.reward, **kwargs)


def run_episode(env, actions):
  steps = [env.reset()]
  for action in actions:
    steps.append(env.step(np.int64(action)))
  return steps


def test_conforms_to_the_tf_agents_environment_contract(lenet_parts):
  env = make_env(lenet_parts)
  env_utils.validate_py_environment(env, episodes=2)
  assert env.observation_spec().shape == (NUM_FEATURES,)


# DenseReward's and EpisodicReward's default constants, written out here (not read from
# purl_tf.rl.rewards) so that the expected rewards below are computed independently.
W_SPARSITY, W_ACCURACY, W_MISS = 1.0, 5.0, 5.0

# (actions, enforce_target): with the target enforced every episode ends at or above it (no
# shortfall); without it, small levels leave the episode short of the target, so the
# last-step shortfall penalty is exercised too.
EPISODES = {"reaches_target": ([4, 6, 10, 3], True),
            "misses_target": ([1, 2, 3, 1], False)}


def _progress(sparsity, target):
  return min(sparsity, target) / target


def _expected_dense_rewards(env):
  """r_t = w_s (P(s_t) - P(s_{t-1})) + w_a (a_t - a_{t-1}) / a_dense, minus
  w_miss max(0, T - s_L) / T at the last step; s_{-1} = 0, a_{-1} = a_dense."""
  target, dense = env.target, env.dense_accuracy
  expected, previous_s, previous_a = [], 0.0, dense
  for t, record in enumerate(env.episode):
    r = (W_SPARSITY * (_progress(record.sparsity, target) - _progress(previous_s, target))
         + W_ACCURACY * (record.accuracy - previous_a) / dense)
    if t == len(env.episode) - 1:
      r -= W_MISS * max(0.0, target - record.sparsity) / target
    expected.append(r)
    previous_s, previous_a = record.sparsity, record.accuracy
  return expected


def _expected_episodic_return(env):
  """R = w_s P(s_L) + w_a (a_L - a_dense) / a_dense - w_miss max(0, T - s_L) / T."""
  target, dense, last = env.target, env.dense_accuracy, env.episode[-1]
  return (W_SPARSITY * _progress(last.sparsity, target)
          + W_ACCURACY * (last.accuracy - dense) / dense
          - W_MISS * max(0.0, target - last.sparsity) / target)


@pytest.mark.parametrize("case", sorted(EPISODES))
def test_dense_reward_arrives_at_every_step(lenet_parts, case):
  actions, enforce = EPISODES[case]
  env = make_env(lenet_parts, reward_fn=rewards.DenseReward(), enforce_target=enforce)
  steps = run_episode(env, actions)
  assert [s.step_type for s in steps] == [0, 1, 1, 1, 2]
  assert all(s.reward != 0.0 for s in steps[1:])
  final = env.episode[-1].sparsity
  assert (final >= env.target) if enforce else (final < env.target)  # the case it names
  assert len(env.episode) == len(actions)
  # Each step's reward is the dense formula of its recorded sparsity and accuracy.
  assert [float(s.reward) for s in steps[1:]] == pytest.approx(
      _expected_dense_rewards(env), abs=1e-5)


@pytest.mark.parametrize("case", sorted(EPISODES))
def test_episodic_reward_arrives_only_at_the_end(lenet_parts, case):
  actions, enforce = EPISODES[case]
  env = make_env(lenet_parts, reward_fn=rewards.EpisodicReward(), enforce_target=enforce)
  steps = run_episode(env, actions)
  assert [float(s.reward) for s in steps[1:-1]] == [0.0, 0.0, 0.0]
  assert steps[-1].is_last()
  # The last step pays the whole episode return of the recorded final sparsity/accuracy.
  assert float(steps[-1].reward) == pytest.approx(_expected_episodic_return(env), abs=1e-5)
  assert steps[-1].reward != 0.0


def test_episode_prunes_each_layer_to_its_level_and_reset_restores_the_dense_model(lenet_parts):
  controller = lenet_parts[0]
  env = make_env(lenet_parts)
  env.reset()
  dense = [v.numpy().copy() for v in controller.model.variables]
  assert controller.global_sparsity() == 0.0
  run_episode(env, [4, 6, 10, 3])
  for record, level in zip(env.episode, (env.levels[4], env.levels[6], env.levels[10],
                                         env.levels[3])):
    assert record.level == level
    assert record.layer_sparsity == pytest.approx(level, abs=1e-3)
  np.testing.assert_allclose(controller.measured_sparsities(),
                             [r.layer_sparsity for r in env.episode], atol=1e-3)
  assert env.episode[-1].sparsity == pytest.approx(controller.global_sparsity())
  first = env.reset()
  assert controller.global_sparsity() == 0.0
  for before, variable in zip(dense, controller.model.variables):
    np.testing.assert_array_equal(before, variable.numpy())
  assert first.observation[12] == 0.0  # global sparsity so far


def test_observations_are_bounded_float32_and_track_the_episode(lenet_parts):
  env = make_env(lenet_parts, target_sparsity=0.8)
  steps = run_episode(env, [12, 12, 12, 12])
  for step in steps:
    assert step.observation.dtype == np.float32
    assert step.observation.shape == (NUM_FEATURES,)
    assert np.all(step.observation >= 0.0) and np.all(step.observation <= 1.5)
  positions = [s.observation[0] for s in steps[:-1]]
  assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0
  assert steps[0].observation[13] == pytest.approx(0.8)  # target
  assert steps[0].observation[14] == pytest.approx(0.8)  # still needed on average
  assert steps[-1].observation[12] == pytest.approx(0.98, abs=1e-3)  # all layers at 0.98


def test_levels_do_not_retrace_the_train_or_eval_function(lenet_parts):
  trainer = lenet_parts[1]
  env = make_env(lenet_parts)
  run_episode(env, [1, 2, 3, 4])
  before = trainer.tracing_counts()
  run_episode(env, [12, 0, 7, 9])
  assert trainer.tracing_counts() == before


def test_threshold_mode_prunes_by_alpha_times_std(lenet_parts):
  controller = lenet_parts[0]
  env = make_env(lenet_parts, mode="threshold", target_sparsity=0.5)
  env.reset()
  weights = controller.weight(0).numpy()
  alpha = env.levels[4]
  expected = np.mean(np.abs(weights) <= alpha * np.std(weights))
  env.step(np.int64(4))
  assert env.episode[0].layer_sparsity == pytest.approx(expected, abs=1.0 / weights.size)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_sparsity=1.0), "outside (0, 1)"),
    (dict(target_sparsity=0.0), "outside (0, 1)"),
    (dict(levels=(0.0, 0.5, 0.8)), "reaches at most 0.800"),
    (dict(levels=(0.5, 0.2)), "ascending"),
    (dict(mode="l1"), "unknown"),
])
def test_bad_settings_raise_one_line_errors(lenet_parts, kwargs, message):
  with pytest.raises(PurlError) as error:
    make_env(lenet_parts, **kwargs)
  # gin appends the configurable's name on a line of its own; the error is the first.
  assert message in str(error.value).splitlines()[0]


def test_enforced_target_raises_levels_just_enough_to_reach_it(lenet_parts):
  controller = lenet_parts[0]
  env = make_env(lenet_parts, target_sparsity=0.9)
  run_episode(env, [0, 0, 0, 0])  # the agent asks for no pruning at all
  assert env.episode[-1].sparsity >= 0.9
  assert env.episode[0].level == 0.0  # early layers stay free while the target is reachable
  levels = [r.level for r in env.episode]
  # Lowering any raised level by one grid step would miss the target with the rest at max.
  sizes = controller.sizes
  for t, level in enumerate(levels):
    if level > 0.0:
      lower = env.levels[env.levels.index(level) - 1]
      best_case = (sum(round(l * s) for l, s in zip(levels[:t], sizes[:t]))
                   + round(lower * sizes[t])
                   + sum(round(env.levels[-1] * s) for s in sizes[t + 1:]))
      assert best_case < 0.9 * sizes.sum()
  free = make_env(lenet_parts, target_sparsity=0.9, enforce_target=False)
  run_episode(free, [0, 0, 0, 0])
  assert free.episode[-1].sparsity == 0.0


def test_a_prior_turns_each_action_into_a_scaling_of_that_allocation(lenet_parts):
  controller = lenet_parts[0]
  controller.reset()
  pruning.lamp(controller, 0.9)
  lamp = controller.sparsities()
  controller.reset()
  factors = (4.0, 2.0, 1.0, 0.5)
  env = make_env(lenet_parts, target_sparsity=0.9, prior="lamp", prior_factors=factors,
                 retrain_steps=0)
  assert env.action_spec().maximum == len(factors) - 1
  # Factor 1.0 everywhere is LAMP's own allocation (to a weight per layer).
  run_episode(env, [2] * 4)
  assert [s.layer_sparsity for s in env.episode] == pytest.approx(
      lamp, abs=1.0 / controller.sizes.min())
  # Half LAMP's density on the first layer; the target still holds at the end.
  run_episode(env, [3, 2, 2, 2])
  assert env.episode[0].layer_sparsity == pytest.approx(1 - 0.5 * (1 - lamp[0]), abs=1e-3)
  assert env.episode[-1].sparsity >= 0.9 - 1e-3
  # Four times LAMP's density where that cannot reach the target: raised until it can.
  run_episode(env, [0, 0, 0, 0])
  assert env.episode[-1].sparsity >= 0.9 - 1e-3
  with pytest.raises(PurlError, match="PruningEnv.prior"):
    make_env(lenet_parts, prior="nonesuch")
  with pytest.raises(PurlError, match="descending"):
    make_env(lenet_parts, prior="lamp", prior_factors=(0.5, 2.0))


def test_a_batch_norm_network_is_recalibrated_on_the_stream_before_each_measurement(
    mnist5k_splits):
  """Each step draws retrain_steps + recalibrate_batches batches from the train stream
  when the network has batch normalisation (the last step final_retrain_steps more), and
  its moving mean is then the mean of the pruned network's batch means over the
  recalibration batches."""
  inputs = tf.keras.Input(mnist5k_splits.image_shape)
  x = tf.keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = tf.keras.layers.BatchNormalization(name="bn")(x)
  x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.ReLU()(x))
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, name="head")(x))
  wrapped = pruning.wrap(model)
  controller = pruning.PruningController(wrapped)
  trainer = MaskedTrainer(wrapped, tf.distribute.get_strategy())
  env = make_env((controller, trainer, mnist5k_splits), retrain_steps=1,
                 final_retrain_steps=2, recalibrate_batches=3, target_sparsity=0.5,
                 enforce_target=False)
  bn, conv = wrapped.get_layer("bn"), wrapped.get_layer("masked_pruning_conv")
  env.reset()
  env.step(np.int64(len(env.levels) - 1))
  assert env.train_position == 1 + 3
  # Batches 1-3 of the stream (after the retrain's batch 0) through the pruned conv.
  means = [tf.reduce_mean(conv(images), axis=[0, 1, 2]).numpy()
           for images, _ in mnist5k_splits.train_stream(1).take(3)]
  np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), atol=1e-5)
  env.step(np.int64(0))  # the last of the two prunable layers
  assert env.train_position == (1 + 3) + (1 + 2 + 3)
  assert env.episode_retrain_steps == 2 * 1 + 2
  for knob in ("recalibrate_batches", "final_retrain_steps"):
    with pytest.raises(PurlError, match="must not be negative"):
      make_env((controller, trainer, mnist5k_splits), **{knob: -1})
