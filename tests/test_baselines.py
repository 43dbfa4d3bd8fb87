"""tools/baselines.py: every baseline writes a PuRL run's results.json fields (tiny budgets)."""
import json
import os
import shutil

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
from purl_tf import files
from purl_tf.env import SPARSITY_LEVELS
from purl_tf.errors import PurlError

from conftest import QUICKSTART, load_tool


# The results.json fields of a PuRL run (train.train_eval) that every method must write.
FIELDS = ("dense_test_accuracy", "pruned_test_accuracy", "pruned_reward_accuracy",
          "global_sparsity", "params_remaining", "params_total", "prunable_params",
          "flops_remaining", "flops_total", "allocation", "search_seconds",
          "finetune_seconds", "finetune_steps", "search_retrain_steps",
          "search_overhead_share", "search_episodes", "comparison", "tflite", "failed_steps",
          "target_sparsity", "reached_target", "model", "dataset", "pruned_model",
          "dense_reward_accuracy", "best_episode", "replicas", "method")
LAYERS = ("conv1", "conv2", "fc1", "predictions")


def load_baselines():
  """tools/baselines.py as a module."""
  return load_tool("baselines")


def tiny(data_dir, target=0.9):
  """The quickstart shrunk to seconds: 1 collect + 1 greedy episode of 1 retrain step per
  layer, a fine-tune of 5 steps (0.1 epoch of 3,500 examples in batches of 64)."""
  return [f"load_splits.data_dir = '{data_dir}'", "make_strategy.name = 'default'",
          "train_eval.export_tflite = False", f"train_eval.target_sparsity = {target}",
          "search.num_episodes = 1", "search.eval_interval = 1",
          "PruningEnv.retrain_steps = 1", "finetune.epochs = 0.1"]


def with_dense(pretrained_lenet, root_dir):
  """A run folder holding the session's pre-trained LeNet-5 as its dense model."""
  os.makedirs(os.path.join(root_dir, "dense"))
  shutil.copyfile(pretrained_lenet.weights_path, os.path.join(root_dir, files.DENSE_WEIGHTS))
  return str(root_dir)


def check_fields(results, method, target):
  missing = [f for f in FIELDS if f not in results]
  assert not missing, missing
  assert results["method"] == method
  assert set(results["allocation"]) == set(LAYERS)
  assert 0.0 < results["pruned_test_accuracy"] <= 1.0
  assert results["dense_test_accuracy"] > 0.9
  assert results["global_sparsity"] == pytest.approx(target, abs=2e-3)
  assert set(results["comparison"]) == {"purl", "uniform", "global_magnitude"}
  on_disk = json.load(open(os.path.join(os.path.dirname(results["pruned_model"]),
                                        files.RESULTS)))
  assert on_disk["pruned_test_accuracy"] == results["pruned_test_accuracy"]


@pytest.mark.parametrize("method", ["global_magnitude", "uniform"])
def test_one_shot_baselines_write_the_results_fields(method, data_dir, pretrained_lenet,
                                                     tmp_path):
  baselines = load_baselines()
  root = with_dense(pretrained_lenet, tmp_path / method)
  results = baselines.run(method, root, [QUICKSTART], tiny(data_dir))
  check_fields(results, method, 0.9)
  assert results["finetune_steps"] == 6  # ceil(0.1 * 3500 // 64)
  assert results["search_retrain_steps"] == 0
  if method == "uniform":  # tfmot prunes every layer to the target
    assert all(v == pytest.approx(0.9, abs=1e-3) for v in results["allocation"].values())


def test_gradual_spends_the_planned_search_steps_then_the_finetune(data_dir, pretrained_lenet,
                                                                  tmp_path):
  baselines = load_baselines()
  root = with_dense(pretrained_lenet, tmp_path / "gradual")
  results = baselines.run("gradual", root, [QUICKSTART], tiny(data_dir))
  check_fields(results, "gradual", 0.9)
  # 1 collect + 1 greedy episode x 4 layers x 1 retrain step.
  assert results["search_retrain_steps"] == 8
  assert results["finetune_steps"] == 6


def test_random_search_evaluates_the_purl_budget_and_reuses_a_finished_run(
    data_dir, pretrained_lenet, tmp_path):
  baselines = load_baselines()
  root = with_dense(pretrained_lenet, tmp_path / "random")
  results = baselines.run("random", root, [QUICKSTART], tiny(data_dir, target=0.5))
  check_fields(results, "random", results["global_sparsity"])
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  assert len(episodes) == 2 and results["search_episodes"] == 2
  assert results["search_retrain_steps"] == 8
  expected = [np.random.default_rng([0, i]).integers(0, 13, 4).tolist() for i in range(2)]
  assert [e["levels"] for e in episodes] == [[SPARSITY_LEVELS[a] for a in row]
                                             for row in expected]
  assert 0.0 <= results["search_overhead_share"] < 1.0
  mtime = os.path.getmtime(os.path.join(root, files.RESULTS))
  again = baselines.run("random", root, [QUICKSTART], tiny(data_dir, target=0.5))
  assert again == results
  assert os.path.getmtime(os.path.join(root, files.RESULTS)) == mtime


def test_episodic_runs_purl_with_the_episodic_reward(data_dir, tmp_path, monkeypatch):
  """The wiring only: the episodic reward itself is tested in test_env and test_rewards."""
  baselines = load_baselines()
  seen = {}

  def fake_purl(root_dir, options):
    del options
    seen["reward_fn"] = str(gin.query_parameter("PruningEnv.reward_fn"))
    return {"root_dir": root_dir}

  monkeypatch.setitem(baselines.METHODS, "episodic", fake_purl)
  monkeypatch.setitem(baselines.METHODS, "purl", fake_purl)
  results = baselines.run("episodic", str(tmp_path / "e"), [QUICKSTART], tiny(data_dir))
  assert seen["reward_fn"] == "@EpisodicReward()"
  assert results["method"] == "episodic"
  assert json.load(open(tmp_path / "e" / files.RESULTS))["method"] == "episodic"
  baselines.run("purl", str(tmp_path / "p"), [QUICKSTART], tiny(data_dir))
  assert seen["reward_fn"] == "@DenseReward()"


def test_bad_input_is_a_one_line_error(data_dir, tmp_path):
  baselines = load_baselines()
  with pytest.raises(PurlError, match="unknown"):
    baselines.run("magnitude", str(tmp_path), [QUICKSTART], tiny(data_dir))
  with pytest.raises(PurlError, match="no finished PuRL run"):
    baselines.run("random", str(tmp_path / "r"), [QUICKSTART], tiny(data_dir),
                  baselines.Options(reference=str(tmp_path / "missing")))
  with pytest.raises(PurlError, match="does not exist"):
    baselines.copy_dense(str(tmp_path / "nowhere"), str(tmp_path / "x"))
  root = str(tmp_path / "claimed")
  baselines.claim(root, "uniform", "config a")
  with pytest.raises(PurlError, match="another method or config") as error:
    baselines.claim(root, "gradual", "config a")
  assert "\n" not in str(error.value)


def test_gradual_schedule_ends_its_ramp_on_a_mask_update():
  baselines = load_baselines()
  schedule = baselines.gradual_schedule(0.9, 95)
  assert (schedule.frequency, schedule.end_step) == (9, 90)
  assert baselines.gradual_schedule(0.9, 2200).frequency == 100
  assert baselines.gradual_schedule(0.9, 3).end_step == 3
