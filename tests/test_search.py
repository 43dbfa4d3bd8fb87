"""The search end to end through train_eval: its artefacts, the report, a finished run.

Killing and resuming runs is tested in test_reliability.py.
"""
import glob
import json
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tf_keras as keras

from purl_tf import pruning
from purl_tf.rl import search
from purl_tf.run import export, pipeline
from purl_tf.runtime import files
from purl_tf.rl.env import PruningEnv
from purl_tf.errors import PurlError

from conftest import QUICKSTART, REPO, load_tool, quick_bindings, train_command, weight_env

def test_train_eval_writes_every_artefact(finished_run):
  root, results = finished_run
  for name in (files.RESULTS, files.BEST_ALLOCATION, files.CONFIG, files.OPERATIVE_CONFIG,
               files.PRUNED_MODEL, files.DENSE_WEIGHTS, files.EPISODES):
    assert os.path.exists(os.path.join(root, name)), name
  assert glob.glob(os.path.join(root, files.SEARCH_CHECKPOINTS, "ckpt-3*"))
  for kind in files.TENSORBOARD_DIRS:
    assert glob.glob(os.path.join(root, kind, "events.out.tfevents.*")), kind

  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  collect = [e for e in episodes if e["policy"] == search.COLLECT]
  greedy = [e for e in episodes if e["policy"] == search.GREEDY]
  assert [e["episode"] for e in collect] == [0, 1, 2]
  assert [e["episode"] for e in greedy] == [2, 3]
  assert all(len(e["rewards"]) == 4 for e in episodes)  # LeNet-5: 4 prunable layers

  best = json.load(open(os.path.join(root, files.BEST_ALLOCATION)))
  assert set(best["allocation"]) == {"conv1", "conv2", "fc1", "predictions"}
  assert best["global_sparsity"] == pytest.approx(results["global_sparsity"], abs=1e-3)
  for key in ("dense_test_accuracy", "pruned_test_accuracy", "global_sparsity",
              "params_remaining", "flops_remaining", "search_seconds", "finetune_seconds"):
    assert key in results, key
  assert 0.0 < results["pruned_test_accuracy"] <= 1.0
  assert results["search_episodes"] == 5  # allocations evaluated: 3 collect + 2 greedy
  assert set(results["comparison"]) == {"purl", "uniform", "global_magnitude"}
  for row in results["comparison"].values():
    assert row["global_sparsity"] == pytest.approx(best["global_sparsity"], abs=1e-3)
  assert set(results["tflite"]) == {export.DENSE, "float32_sparse"}
  for row in results["tflite"].values():
    assert os.path.getsize(row["path"]) == row["bytes"]
    assert os.path.dirname(row["path"]) == os.path.join(root, files.TFLITE_DIR)

  model = keras.models.load_model(results["pruned_model"])
  kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
  zeros = sum(np.count_nonzero(k == 0) for k in kernels)
  assert zeros / sum(k.size for k in kernels) == pytest.approx(results["global_sparsity"],
                                                               abs=1e-3)
  assert "SearchRunner.num_episodes = 3" in open(os.path.join(root, files.OPERATIVE_CONFIG)).read()
  assert os.path.exists(os.path.join(root, files.POLICY_DIR, "saved_model.pb"))


def test_a_finished_run_is_not_redone(finished_run, data_dir, caplog):
  caplog.set_level(logging.INFO, logger="purl_tf")
  root, results = finished_run
  gin.parse_config_files_and_bindings([QUICKSTART], quick_bindings(data_dir))
  caplog.clear()
  assert pipeline.train_eval(root).to_json() == json.load(open(os.path.join(root, files.RESULTS)))
  assert "holds a finished run" in caplog.text


def test_a_root_dir_with_another_config_is_refused_unless_overwritten(finished_run, data_dir):
  root, _ = finished_run
  gin.parse_config_files_and_bindings([QUICKSTART], quick_bindings(data_dir)
                                      + ["SearchRunner.num_episodes = 5"])
  before = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(root, "*"))}
  with pytest.raises(PurlError, match="holds a run with another config"):
    pipeline.train_eval(root)
  assert before == {path: os.path.getmtime(path) for path in glob.glob(os.path.join(root, "*"))}


def test_report_writes_markdown_and_plots(finished_run):
  root, results = finished_run
  path = load_tool("report").write_report(root)
  report = open(path).read()
  assert f"{results['pruned_test_accuracy']:.4f}" in report
  for image in ("episodes.png", "allocations.png"):
    assert f"]({image})" in report
    with open(os.path.join(os.path.dirname(path), image), "rb") as handle:
      assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| float32_sparse |" in report and "| global_magnitude |" in report


def test_export_tool_re_exports_a_finished_run(finished_run, tmp_path):
  root, results = finished_run
  copy = str(tmp_path / "run")
  shutil.copytree(root, copy)
  shutil.rmtree(os.path.join(copy, files.TFLITE_DIR))  # the flatbuffers are gone
  exported = load_tool("export_tflite").export_root(copy)
  assert set(exported) == {export.DENSE, "float32_sparse"}
  for name, row in exported.items():  # written again, and the same model as the run's
    assert os.path.getsize(row["path"]) == row["bytes"] > 0
    assert row["bytes"] == results["tflite"][name]["bytes"]
    assert row["litert_accuracy"] == results["tflite"][name]["litert_accuracy"]


def test_export_tool_on_a_folder_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(PurlError, match="holds no finished purl_tf run"):
    load_tool("export_tflite").export_root(str(tmp_path))


def test_report_on_a_folder_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(PurlError, match="holds no purl_tf search"):
    load_tool("report").write_report(str(tmp_path))


def test_bad_input_prints_one_line_and_exits_non_zero(data_dir, tmp_path):
  root = tmp_path / "run"
  command = train_command(str(root), data_dir, "train_eval.target_sparsity = 1.5")
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("purl_tf: error:")]
  assert len(errors) == 1 and "outside (0, 1)" in errors[0]


@pytest.mark.parametrize("learner", [search.DQN, search.RANDOM])
def test_the_prior_episode_comes_first_plays_the_prior_and_counts_in_the_budget(
    learner, pretrained_lenet, tmp_path):
  splits = pretrained_lenet.splits
  env = weight_env(pretrained_lenet(), splits, retrain_steps=1, target_sparsity=0.9,
                   prior="lamp")
  controller = env.controller
  runner = search.SearchRunner(env, str(tmp_path), learner=learner, num_episodes=2,
                               eval_interval=2, log_every=100, rescore_steps=0,
                               prior_episode=True)
  result = runner.run()
  assert [e.policy for e in result.episodes][0] == search.PRIOR
  assert len(result.episodes) == runner.planned_evaluated == search.evaluated_episodes(2, 2) + 1
  assert sum(e.policy == search.PRIOR for e in result.episodes) == 1
  controller.reset()
  pruning.lamp(controller, 0.9)  # the prior's allocation, computed apart from the search
  np.testing.assert_allclose(list(result.episodes[0].allocation.values()),
                             controller.sparsities(), atol=2e-3)
  if learner == search.DQN:  # the DQN learned from it: 2 collect episodes and the prior's
    assert runner.replay.num_frames() == 3 * env.num_layers
  with pytest.raises(PurlError, match="prior_episode needs PruningEnv.prior"):
    search.SearchRunner(PruningEnv(controller, env.trainer, splits.train_stream, splits.reward),
                        str(tmp_path / "no_prior"), prior_episode=True)
