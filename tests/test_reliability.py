"""Crashes, signals, numerical faults and bad input lose nothing and explain themselves."""
import glob
import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tensorflow as tf

from purl_tf import files, finetune, pipeline, pruning, search
from purl_tf.env import PruningEnv
from purl_tf.errors import PurlError
from purl_tf.training import MaskedTrainer

from conftest import REPO, start_from, train_command


def test_a_random_search_killed_at_a_random_moment_ends_as_an_uninterrupted_one(
    data_dir, pretrained_lenet, tmp_path):
  extra = ("train_eval.method = 'random'", "train_eval.export_tflite = False",
           "finetune.epochs = 0.1", "SearchRunner.checkpoint_seconds = 0")
  reference, root = str(tmp_path / "reference"), str(tmp_path / "stopped")
  for folder in (reference, root):  # the search is what is stopped: no pre-training
    start_from(folder, pretrained_lenet.weights_path)
  done = subprocess.run(train_command(reference, data_dir, *extra), capture_output=True,
                        text=True, cwd=REPO, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  process = subprocess.Popen(train_command(root, data_dir, *extra), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=REPO)
  for line in process.stdout:
    if line.startswith("[random ] episode    2"):
      time.sleep(random.Random(3).uniform(0.0, 1.0))
      process.kill()
      break
  process.communicate(timeout=600)
  assert process.returncode == -signal.SIGKILL
  again = subprocess.run(train_command(root, data_dir, *extra), capture_output=True,
                         text=True, cwd=REPO, timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "Resuming the search after episode" in again.stdout
  episodes = [{k: v for k, v in e.items() if "seconds" not in k}
              for e in json.load(open(os.path.join(root, files.EPISODES)))]
  assert episodes == [{k: v for k, v in e.items() if "seconds" not in k}
                      for e in json.load(open(os.path.join(reference, files.EPISODES)))]
  assert (json.load(open(os.path.join(root, files.BEST_ALLOCATION)))
          == json.load(open(os.path.join(reference, files.BEST_ALLOCATION))))


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


def test_a_corrupt_checkpoint_falls_back_to_the_one_before(lenet, tmp_path, capsys):
  controller, splits = lenet
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy())
  env = PruningEnv(controller, trainer, splits.train_stream, splits.reward, retrain_steps=1)
  root = str(tmp_path)
  search.SearchRunner(env, root, num_episodes=2, eval_interval=5, log_every=100,
                      checkpoint_seconds=0).run()
  newest = sorted(glob.glob(os.path.join(root, files.SEARCH_CHECKPOINTS, "ckpt-2.data*")))
  for path in newest:
    with open(path, "r+b") as handle:
      handle.truncate(16)
  capsys.readouterr()
  result = search.SearchRunner(env, root, num_episodes=3, eval_interval=5,
                               log_every=100, checkpoint_seconds=0).run()
  output = capsys.readouterr().out
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
