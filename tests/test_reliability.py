"""Crashes, signals, numerical faults and bad input lose nothing and explain themselves."""
import dataclasses
import glob
import logging
import os
import random

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tensorflow as tf

from purl_tf import pruning
from purl_tf.rl import search
from purl_tf.run import finetune, pipeline
from purl_tf.runtime import files
from purl_tf.rl.env import PruningEnv
from purl_tf.errors import PurlError
from purl_tf.pruning.training import MaskedTrainer

from conftest import weight_env


def test_a_random_search_crashed_at_a_random_step_ends_as_an_uninterrupted_one(
    pretrained_lenet, tmp_path, monkeypatch, caplog):
  """The random learner's resume (a SIGKILL of a whole run is test_resume's): a search that
  dies in the middle of an episode, rerun in a fresh environment, repeats the episodes,
  the best and the chosen allocation of a search never stopped."""
  caplog.set_level(logging.INFO, logger="purl_tf")
  splits = pretrained_lenet.splits

  def runner(root):  # a fresh network and environment, as a new process would build
    env = weight_env(pretrained_lenet(), splits, retrain_steps=2, target_sparsity=0.9)
    # Random search runs as many episodes as a DQN search evaluates: 2 + 1 here.
    return search.SearchRunner(env, str(tmp_path / root), learner=search.RANDOM,
                               num_episodes=2, eval_interval=2, rescore_steps=5,
                               checkpoint_seconds=0, log_every=100)

  def outcome(result):
    episodes = [{k: v for k, v in dataclasses.asdict(e).items() if "seconds" not in k}
                for e in result.episodes]
    return episodes, result.best.allocation, result.chosen.allocation, result.selection

  reference = outcome(runner("reference").run())
  layers = len(reference[0][0]["levels"])
  crash_at = random.Random(3).randrange(layers + 1, 3 * layers)  # in episode 2 or 3
  real_step, steps = PruningEnv._step, []

  def crash(self, action):
    steps.append(action)
    if len(steps) == crash_at:
      raise RuntimeError("crash")
    return real_step(self, action)

  monkeypatch.setattr(PruningEnv, "_step", crash)
  with pytest.raises(RuntimeError, match="crash"):
    runner("stopped").run()
  monkeypatch.setattr(PruningEnv, "_step", real_step)
  caplog.clear()
  resumed = outcome(runner("stopped").run())
  assert f"Resuming the search after episode {(crash_at - 1) // layers}/" in (
      caplog.text)
  assert resumed == reference


@pytest.fixture
def lenet(pretrained_lenet):
  wrapped = pruning.wrap(pretrained_lenet())
  return pruning.PruningController(wrapped), pretrained_lenet.splits


def test_a_non_finite_retrain_undoes_the_step_and_pays_the_worst_reward(lenet):
  controller, splits = lenet
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy(), learning_rate=1e30)
  env = PruningEnv(controller, trainer, splits.train_stream, splits.reward, retrain_steps=3)
  env.reset()
  before = [v.numpy().copy() for v in controller.model.variables]
  step = env.step(np.int64(6))
  assert env.failed_steps == 1
  assert float(step.reward) == env.reward_fn.worst()  # nothing changed: worst() alone
  assert np.isnan(env.episode[0].loss)
  assert env.episode[0].layer_sparsity == 0.0 and controller.global_sparsity() == 0.0
  # The level in force is told, not the one undone: in the record and the observation.
  assert env.episode[0].level == 0.0 and env.levels[6] > 0.0
  assert step.observation[16] == 0.0  # previous level / largest level
  for value, variable in zip(before, controller.model.variables):
    np.testing.assert_array_equal(value, variable.numpy())
  assert env.episode[0].accuracy == env.dense_accuracy


def test_finetune_rolls_back_a_non_finite_epoch_and_gives_up_when_it_repeats(
    lenet, tmp_path, monkeypatch):
  controller, splits = lenet
  allocation = {"conv1": 0.5, "conv2": 0.5, "fc1": 0.9, "predictions": 0.5}
  real_train = MaskedTrainer.train
  calls = []

  def first_call_diverges(self, iterator, steps):
    calls.append(steps)
    return float("nan") if len(calls) == 1 else real_train(self, iterator, steps)

  monkeypatch.setattr(MaskedTrainer, "train", first_call_diverges)
  strategy = tf.distribute.get_strategy()
  results = finetune.finetune(controller, strategy, splits, allocation, str(tmp_path / "a"),
                              epochs=1.0)
  assert results["finetune_restarts"] == 1
  assert len(calls) == 2 and results["pruned_test_accuracy"] > 0.9
  # The restart count is checkpointed: a resumed fine-tune still knows it (and seeds its
  # data from it), here a rerun of the finished one.
  again = finetune.finetune(controller, strategy, splits, allocation, str(tmp_path / "a"),
                            epochs=1.0)
  assert again["finetune_restarts"] == 1 and len(calls) == 2

  monkeypatch.setattr(MaskedTrainer, "train", lambda self, it, steps: float("nan"))
  with pytest.raises(PurlError, match="diverged 3 times in a row"):
    finetune.finetune(controller, strategy, splits, allocation, str(tmp_path / "b"),
                      epochs=1.0, max_restarts=2)


def test_a_corrupt_checkpoint_falls_back_to_the_one_before(lenet, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="purl_tf")
  controller, splits = lenet
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy())
  env = PruningEnv(controller, trainer, splits.train_stream, splits.reward, retrain_steps=1)
  root = str(tmp_path)
  search.SearchRunner(env, root, num_episodes=2, eval_interval=5, log_every=100,
                      rescore_steps=0, checkpoint_seconds=0).run()
  newest = sorted(glob.glob(os.path.join(root, files.SEARCH_CHECKPOINTS, "ckpt-2.data*")))
  for path in newest:
    with open(path, "r+b") as handle:
      handle.truncate(16)
  caplog.clear()
  result = search.SearchRunner(env, root, num_episodes=3, eval_interval=5, log_every=100,
                               rescore_steps=0, checkpoint_seconds=0).run()
  output = caplog.text
  assert "skipped unreadable checkpoint(s) ckpt-2" in output
  assert "Resuming the search after episode 1/3" in output
  assert sum(e.policy == search.COLLECT for e in result.episodes) == 3

  for path in glob.glob(os.path.join(root, files.SEARCH_CHECKPOINTS, "ckpt-*.data*")):
    with open(path, "r+b") as handle:
      handle.truncate(16)
  with pytest.raises(PurlError, match="no readable checkpoint"):
    search.SearchRunner(env, root, num_episodes=4, eval_interval=5).run()


@pytest.mark.parametrize("gin_files, bindings, message", [
    ([], ["SearchRunner.num_episode = 3"], "doesn't have a parameter named 'num_episode'"),
    ([], ["SearchRuner.num_episodes = 3"], "No configurable matching 'SearchRuner'"),
    (["gin/missing.gin"], [], "gin file gin/missing.gin does not exist"),
    ([], ["train_eval.model_builder = @lenet6"], "No configurable matching reference"),
])
def test_gin_mistakes_are_one_line_errors(gin_files, bindings, message):
  with pytest.raises(PurlError) as error:
    pipeline.parse_gin(gin_files, bindings)
  assert message in str(error.value) and "\n" not in str(error.value)
  gin.clear_config()
