"""The DQN learns: on a synthetic pruning MDP whose best allocation is known, the greedy
policy a SearchRunner trains beats random search given as many evaluated allocations.

The synthetic environment stands in for PruningEnv without a network: six layers of known
sizes, four of them small and very sensitive (accuracy falls linearly with their level),
two big and insensitive (accuracy falls with level**8). The reward is PruningEnv's
(rewards.DenseReward on rewards.Outcome) and the target is enforced as PruningEnv
enforces it, so every episode ends at the target and the agent decides where the
sparsity goes. The best allocation prunes only the two big layers; a uniformly random
allocation almost always puts some sparsity on a sensitive layer.
"""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tf_keras as keras
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from purl_tf.rl import rewards, search
from purl_tf.rl.env import SPARSITY_LEVELS, StepRecord
from purl_tf.runtime.results import reached_target

NAMES = ("small0", "big1", "small2", "small3", "big4", "small5")
SIZES = np.array([600, 45_000, 900, 1_500, 50_000, 2_000])
SENSITIVITY = np.array([0.5, 0.05, 0.5, 0.5, 0.05, 0.5])
POWER = np.array([1, 8, 1, 1, 8, 1])
SENSITIVE = SENSITIVITY > 0.1
DENSE_ACCURACY = 0.95
TARGET = 0.8
LEVELS = np.array(SPARSITY_LEVELS)
# The synthetic steps take no time: every timing field of a StepRecord is 0.
NO_TIME = {f.name: 0.0 for f in dataclasses.fields(StepRecord) if f.name.endswith("_seconds")}


def accuracy_of(levels) -> float:
  """Accuracy with the first len(levels) layers at `levels`, the others dense."""
  levels = np.asarray(levels, float)
  k = len(levels)
  return float(DENSE_ACCURACY * np.prod(1.0 - SENSITIVITY[:k] * levels ** POWER[:k]))


def best_allocation_at_target():
  """(accuracy, levels) of the best allocation reaching TARGET, by exhaustive search."""
  shape = (len(LEVELS),) * len(SIZES)
  pruned = np.zeros(shape, np.float64)
  accuracy = np.full(shape, DENSE_ACCURACY)
  for i in range(len(SIZES)):
    axis = [1] * len(SIZES)
    axis[i] = len(LEVELS)
    pruned = pruned + np.round(LEVELS * SIZES[i]).reshape(axis)
    accuracy = accuracy * (1.0 - SENSITIVITY[i] * LEVELS ** POWER[i]).reshape(axis)
  accuracy = np.where(pruned / SIZES.sum() >= TARGET - 1e-3, accuracy, -1.0)
  index = np.unravel_index(np.argmax(accuracy), shape)
  return float(accuracy[index]), [float(LEVELS[i]) for i in index]


class SyntheticPruningEnv(py_environment.PyEnvironment):
  """The pruning MDP of SIZES and SENSITIVITY, with PruningEnv's interface to the runner."""

  def __init__(self, target: float = TARGET):
    super().__init__(handle_auto_reset=True)
    self.levels = tuple(SPARSITY_LEVELS)
    self.target = target
    self.num_layers = len(SIZES)
    self.retrain_steps = self.episode_retrain_steps = 0  # no network to retrain
    self.train_position = 0
    self.failed_steps = 0
    self.seeks = []
    self.reward_fn = rewards.DenseReward()
    self._action_spec = array_spec.BoundedArraySpec(
        (), np.int64, minimum=0, maximum=len(self.levels) - 1, name="level")
    self._observation_spec = array_spec.BoundedArraySpec(
        (8,), np.float32, minimum=0.0, maximum=1.5, name="observation")
    self.episode = []
    self._pruned = []  # weights pruned per layer so far

  def observation_spec(self):
    return self._observation_spec

  def action_spec(self):
    return self._action_spec

  def seek(self, position):
    self.seeks.append(position)

  # The runner's candidate networks: here a network is its levels.
  num_classes = 10
  dense_accuracy = DENSE_ACCURACY

  def save_network(self, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
      json.dump([r.level for r in self.episode], handle)

  def rescore(self, path, position, steps):
    del steps
    self.seek(position)
    with open(path, encoding="utf-8") as handle:
      return accuracy_of(json.load(handle))

  def _sparsity(self) -> float:
    return sum(self._pruned) / SIZES.sum()

  def _observe(self):
    t = min(len(self._pruned), self.num_layers - 1)
    share = SIZES / SIZES.sum()
    before = share[:t].sum()
    needed = (self.target - self._sparsity()) / (1.0 - before)
    accuracy = accuracy_of([r.level for r in self.episode])
    previous = self.episode[-1].level if self.episode else 0.0
    return np.array([t / (self.num_layers - 1), math.log10(SIZES[t]) / 8, share[t], before,
                     self._sparsity(), float(np.clip(needed, 0.0, 1.0)),
                     accuracy / DENSE_ACCURACY, previous / self.levels[-1]], np.float32)

  def _lowest_level(self) -> float:
    """PruningEnv's enforce_target: the smallest level that keeps the target reachable."""
    t = len(self._pruned)
    later = sum(int(round(self.levels[-1] * size)) for size in SIZES[t + 1:])
    needed = int(math.ceil(self.target * SIZES.sum() - 1e-9)) - sum(self._pruned) - later
    for level in self.levels:
      if int(round(level * SIZES[t])) >= needed:
        return level
    return self.levels[-1]

  def _reset(self):
    self._pruned = []
    self.episode = []
    return ts.restart(self._observe())

  def _step(self, action):
    t = len(self._pruned)
    level = max(self.levels[int(action)], self._lowest_level())
    previous_sparsity = self._sparsity()
    previous_accuracy = accuracy_of([r.level for r in self.episode])
    self._pruned.append(int(round(level * SIZES[t])))
    accuracy = accuracy_of([r.level for r in self.episode] + [level])
    outcome = rewards.Outcome(step=t, num_steps=self.num_layers, accuracy=accuracy,
                              previous_accuracy=previous_accuracy,
                              dense_accuracy=DENSE_ACCURACY, sparsity=self._sparsity(),
                              previous_sparsity=previous_sparsity, target=self.target)
    reward = self.reward_fn(outcome)
    self.episode.append(StepRecord(
        layer=NAMES[t], action=int(action), level=level,
        layer_sparsity=self._pruned[-1] / SIZES[t], sparsity=self._sparsity(),
        accuracy=accuracy, reward=reward, loss=0.0, **NO_TIME))
    observation = self._observe()
    if len(self._pruned) == self.num_layers:
      return ts.termination(observation, np.float32(reward))
    return ts.transition(observation, np.float32(reward), discount=np.float32(1.0))


NUM_EPISODES, EVAL_INTERVAL = 150, 10


def run_search(root_dir, learner):
  keras.utils.set_random_seed(0)  # the Q-network's initial weights
  gin.bind_parameter("make_agent.fc_layer_params", (64, 64))
  gin.bind_parameter("make_replay_buffer.capacity", 2_000)  # small checkpoints
  env = SyntheticPruningEnv()
  return search.SearchRunner(env, str(root_dir), learner=learner, num_episodes=NUM_EPISODES,
                             eval_interval=EVAL_INTERVAL, log_every=1_000, seed=0).run()


def test_the_trained_greedy_policy_beats_random_search_with_as_many_allocations(tmp_path):
  optimum, optimal_levels = best_allocation_at_target()
  assert [level for level, sensitive in zip(optimal_levels, SENSITIVE) if sensitive] == [0.0] * 4

  dqn = run_search(tmp_path / "dqn", search.DQN)
  random = run_search(tmp_path / "random", search.RANDOM)
  assert len(random.episodes) == len(dqn.episodes) == search.evaluated_episodes(
      NUM_EPISODES, EVAL_INTERVAL)
  assert {e.policy for e in random.episodes} == {search.RANDOM}

  final = [e for e in dqn.episodes if e.policy == search.GREEDY][-1]
  summary = (f"DQN final greedy {final.levels} acc {final.accuracy:.4f}; random best "
             f"{random.best.levels} acc {random.best.accuracy:.4f}; optimum {optimal_levels} "
             f"acc {optimum:.4f}")
  assert reached_target(final.sparsity, TARGET), summary
  # Random search rarely spares all four sensitive layers (at most 1 in 13**4 draws): its best
  # stays far below the optimum, while the learned policy spares them and gets close.
  assert final.accuracy > random.best.accuracy + 0.1, summary
  assert final.accuracy > optimum - 0.08, summary
  assert [level for level, sensitive in zip(final.levels, SENSITIVE) if sensitive] == [0.0] * 4
  # The accuracies the runner recorded are the environment's, for the levels it recorded.
  assert final.accuracy == pytest.approx(accuracy_of(final.levels))
