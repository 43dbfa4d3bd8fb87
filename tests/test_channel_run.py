"""Channel granularity end to end: train_eval with granularity='channel' on the session's
pre-trained LeNet-5 (mnist5k) for PuRL and one one-shot baseline, with tiny budgets; the
PruningEnv over a ChannelController; a search stopped and resumed; the one-line errors;
purl_tf.prune's channel knobs.

Checked: results.json holds the channel fields (FLOPs removed at the target, the measured
speed of the shrunk model beside the dense one's, its flatbuffers); the saved pruned model is
physically thinner, loads in plain tf-keras and scores on test what results.json says; an
episode of all-zero actions still removes target_flops of the FLOPs and its observations
stay in bounds; a weight method in channel mode (and vice versa) is one line naming the
valid ones.
"""
import json
import os
import signal
import subprocess
import sys

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels import ChannelController, count
from purl_tf.pruning.channels import allocations as channel_allocations
from purl_tf.pruning.training import MaskedTrainer
from purl_tf.rl.env import CHANNEL_LEVELS, NUM_FEATURES, PruningEnv
from purl_tf.run import channels, methods, pipeline
from purl_tf.runtime import files
from purl_tf.runtime.results import TARGET_TOLERANCE, RunResult

from conftest import REPO, start_from

TARGET = 0.6  # fraction of the dense FLOPs removed
GROUPS = ("conv1", "conv2", "fc1")  # LeNet-5's channel groups (the classifier is the output)
DENSE_PARAMS, DENSE_FLOPS = 431_080, 2_293_000  # LeNet-5 at 28x28x1, 10 classes


def tiny(data_dir, method, export):
  """quickstart_channels shrunk to seconds: 2 collect + 2 greedy episodes of 1 retrain batch
  per group, 3 re-score batches, 6 fine-tune steps; a small speed measurement."""
  return [f"load_splits.data_dir = '{data_dir}'", "make_strategy.name = 'default'",
          f"train_eval.method = '{method}'", f"train_eval.target_flops = {TARGET}",
          f"train_eval.export_tflite = {export}", "SearchRunner.num_episodes = 2",
          "SearchRunner.eval_interval = 1", "PruningEnv.retrain_steps = 1",
          "SearchRunner.rescore_steps = 3", "finetune.epochs = 0.1",
          "measure_speed.latency_rounds = 1", "measure_speed.latency_repeats = 3",
          "measure_speed.throughput_repeats = 1", "measure_speed.batch_size = 8",
          "measure_speed.max_test_examples = 50"]


@pytest.fixture(scope="module")
def runs(data_dir, pretrained_lenet, tmp_path_factory):
  """method -> (root_dir, RunResult) of PuRL (speed measured) and global_filter (not)."""
  base, done = tmp_path_factory.mktemp("channel_runs"), {}
  for method, export in (("purl", True), ("global_filter", False)):
    root = str(base / method)
    start_from(root, pretrained_lenet.weights_path)
    gin.clear_config()
    pipeline.parse_gin(["quickstart_channels"], tiny(data_dir, method, export))
    done[method] = root, pipeline.train_eval(root)
  gin.clear_config()
  return done


def read_results(root):
  with open(os.path.join(root, files.RESULTS)) as handle:
    return json.load(handle)


def test_a_channel_run_reaches_target_flops_and_reports_its_measured_speed(runs):
  root, result = runs["purl"]
  results = read_results(root)
  assert RunResult(**results).to_json() == result.to_json()  # every field, as written
  assert results["granularity"] == "channel" and results["target_flops"] == TARGET
  assert set(results["allocation"]) == set(GROUPS)
  # The FLOPs removed are counted on the shrunk model, and reach the target.
  assert results["global_sparsity"] >= TARGET - TARGET_TOLERANCE and results["reached_target"]
  assert results["flops_total"] == DENSE_FLOPS and results["params_total"] == DENSE_PARAMS
  assert results["global_sparsity"] == pytest.approx(
      1 - results["flops_remaining"] / results["flops_total"])
  speed = results["speed"]
  assert speed["dense"]["flops"] == DENSE_FLOPS
  assert speed["pruned"]["flops"] == results["flops_remaining"]
  assert speed["pruned"]["params"] == results["params_remaining"] < DENSE_PARAMS
  for name in ("dense", "pruned"):
    assert set(speed[name]["latency_ms"]) == {"1", "2"}
    assert speed[name]["throughput_images_per_s"] > 0
  assert results["speedup_1_thread"] == speed["speedup_1_thread"] > 1.0
  assert results["speedup_2_threads"] == speed["speedup_2_threads"] > 0
  for variant in ("float32", "full_int8"):
    row = speed["tflite"][variant]
    assert os.path.isfile(row["path"]) and row["bytes"] > 0
    assert row["litert_accuracy"] > 0.5
  best = json.load(open(os.path.join(root, files.BEST_ALLOCATION)))
  assert best["granularity"] == "channel" and best["reached_target"]
  assert set(results["comparison"]) == {"chosen", "uniform", "global_filter"}


@pytest.mark.parametrize("method", ["purl", "global_filter"])
def test_the_saved_model_is_thinner_and_scores_what_results_json_says(method, runs,
                                                                      mnist5k_splits):
  root, result = runs[method]
  model = keras.models.load_model(result.pruned_model, compile=False)  # plain tf-keras
  assert model.count_params() == result.params_remaining < DENSE_PARAMS
  assert count(model).flops == result.flops_remaining
  widths = {name: model.get_layer(name).kernel.shape[-1] for name in GROUPS}
  dense = {"conv1": 20, "conv2": 50, "fc1": 500}
  for name in GROUPS:  # each group keeps what its allocation did not remove
    assert widths[name] == dense[name] - round(result.allocation[name] * dense[name])
  assert sum(widths.values()) < sum(dense.values())
  assert channels.accuracy(model, mnist5k_splits.test) == result.pruned_test_accuracy
  assert result.pruned_test_accuracy > 0.5  # fine-tuned, not a broken network


def test_a_one_shot_baseline_removes_at_least_the_target(runs):
  _, result = runs["global_filter"]
  assert result.method == "global_filter" and result.search_episodes == 0
  assert result.global_sparsity >= TARGET and result.reached_target
  assert result.speed == {} and result.speedup_1_thread is None  # export_tflite = False
  # Not uniform: one threshold over the channels' normalised L1 norms.
  assert len({round(v, 2) for v in result.allocation.values()}) > 1


def decided(root):
  """What a channel run decided: every episode's levels and scores, the best allocation,
  and the shrunk network's allocation and test accuracy (its timings left out)."""
  results = read_results(root)
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  return {"episodes": [(e["episode"], e["policy"], e["levels"], e["rewards"], e["accuracy"])
                       for e in episodes],
          "best": json.load(open(os.path.join(root, files.BEST_ALLOCATION))),
          "results": {k: results[k] for k in ("allocation", "global_sparsity",
                                              "pruned_test_accuracy", "params_remaining")}}


def test_a_channel_search_stopped_mid_search_ends_as_an_uninterrupted_one(
    runs, data_dir, pretrained_lenet, tmp_path):
  reference, _ = runs["purl"]  # run once without a stop
  root = str(tmp_path / "stopped")
  start_from(root, pretrained_lenet.weights_path)
  # The reference's bindings but for the speed measurement, which decides nothing.
  command = [sys.executable, "-m", "purl_tf.train", "--gin_file=quickstart_channels",
             f"--root_dir={root}", *(f"--gin_bindings={b}" for b in tiny(data_dir, "purl", False))]
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=REPO)
  for line in process.stdout:
    if line.startswith("[collect] episode    1"):  # the second episode runs
      process.send_signal(signal.SIGTERM)
      break
  output = process.communicate(timeout=600)[0]
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert "rerun the same command to resume" in output
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "Resuming the search after episode 1" in done.stdout
  assert decided(root) == decided(reference)


@pytest.fixture(scope="module")
def lenet(pretrained_lenet):
  """(the pre-trained LeNet-5, a ChannelController of it)."""
  dense = pretrained_lenet()
  return dense, ChannelController(dense)


def test_one_shot_channel_allocations_remove_at_least_the_target(lenet):
  dense, controller = lenet
  nearest_below = 0
  for method in ("uniform", "global_filter"):
    for target in np.linspace(0.3, 0.8, 11):
      nearest = channel_allocations.allocate(method, dense, controller.groups, target)
      nearest_below += nearest.flops_removed < target
      found = methods.channel_allocation(method, dense, controller, target)
      assert found.flops_removed >= target, (method, target)
      assert found.flops_removed == pytest.approx(controller.removed_fraction(found))
      assert found.flops_removed - target <= 0.1  # the next rung, not far past it
  assert nearest_below  # the rung nearest the target was sometimes below it


@pytest.fixture(scope="module")
def channel_env(pretrained_lenet, lenet):
  """A PruningEnv over a ChannelController of the pre-trained LeNet-5, retraining nothing
  (the target's enforcement and the observations do not depend on training)."""
  splits = pretrained_lenet.splits
  strategy = tf.distribute.get_strategy()
  controller = lenet[1]
  trainer = MaskedTrainer(controller.model, strategy)

  def make(**options):
    return PruningEnv(controller, trainer, splits.train_stream, splits.reward.take(2),
                      target_sparsity=0.7, retrain_steps=0, recalibrate_batches=0, **options)
  return make


def episode(env, action):
  """The observations of one episode taking `action` at every step, and its last step."""
  step = env.reset()
  observations = [step.observation]
  while not step.is_last():
    step = env.step(np.int64(action))
    observations.append(step.observation)
  return np.array(observations), step


def test_the_channel_env_enforces_target_flops_and_keeps_observations_in_bounds(channel_env):
  env = channel_env()
  assert env.levels == CHANNEL_LEVELS and env.num_layers == len(GROUPS)
  spec = env.observation_spec()
  for action in (0, env.action_spec().maximum):
    observations, _ = episode(env, action)
    assert observations.shape == (len(GROUPS) + 1, NUM_FEATURES)
    assert observations.min() >= spec.minimum and observations.max() <= spec.maximum
    assert observations[:, :15].max() <= 1.0  # all but accuracy and previous level
    assert env.controller.global_sparsity() >= 0.7  # all-zero actions too (enforced)
  zeros, last = episode(env, 0)  # all-zero actions: raised to reach the target anyway
  removed = env.controller.global_sparsity()
  assert removed >= env.target
  assert removed == env.controller.removed_fraction([s.level for s in env.episode])
  assert zeros[-1, 12] == pytest.approx(removed)  # feature 12: FLOPs removed so far
  assert np.all(np.diff(zeros[:-1, 11]) > 0)  # feature 11: the earlier groups' FLOPs share
  assert last.is_last()
  free = channel_env(enforce_target=False)
  episode(free, 0)
  assert free.controller.global_sparsity() == 0.0  # without enforcement nothing goes


def test_the_channel_env_refuses_a_target_its_grid_cannot_reach(channel_env):
  with pytest.raises(PurlError, match="reaches at most .* of the FLOPs removed"):
    channel_env(levels=(0.0, 0.1))


def test_a_channel_prior_scales_the_width_of_a_one_shot_allocation(channel_env, lenet):
  plain, controller = lenet
  env = channel_env(prior="uniform", prior_factors=(1.5, 1.0, 0.67))
  assert env.action_spec().maximum == 2
  uniform = channel_allocations.allocate("uniform", plain, controller.groups, 0.7)
  one_channel = 1.0 / controller.sizes.min()
  episode(env, 1)  # factor 1.0 everywhere: the uniform allocation itself
  assert [s.level for s in env.episode] == pytest.approx(list(uniform), abs=one_channel)
  env.reset()
  env.step(np.int64(0))  # the first group 1.5 times as wide as uniform keeps it
  assert 1 - env.episode[0].level == pytest.approx(1.5 * (1 - uniform[0]), abs=one_channel)
  while not env.step(np.int64(1)).is_last():
    pass
  assert env.controller.global_sparsity() >= 0.7  # the later groups make up for it
  with pytest.raises(PurlError, match="PruningEnv.prior='lamp' is not one of .*uniform"):
    channel_env(prior="lamp")


def test_fit_to_target_scales_every_width_to_the_widest_allocation_at_the_budget(lenet):
  _, controller = lenet
  chosen = dict(zip(GROUPS, (0.5, 0.9, 0.9)))  # removes far more than 0.6 of the FLOPs
  fitted = controller.fitted(chosen, TARGET)
  removed = controller.removed_fraction([fitted[name] for name in GROUPS])
  assert controller.removed_fraction(list(chosen.values())) > removed >= TARGET
  kept = np.array([1 - fitted[name] for name in GROUPS]) * controller.sizes
  ratios = kept / (np.array([1 - chosen[name] for name in GROUPS]) * controller.sizes)
  assert kept[0] == controller.sizes[0]  # conv1 would pass its whole width: kept whole
  rounding = 1 / ((1 - np.array([chosen[name] for name in GROUPS])) * controller.sizes)
  assert ratios[1] > 1 and abs(ratios[1] - ratios[2]) <= rounding[1] + rounding[2]
  with pytest.raises(PurlError, match="names no level for the channel groups"):
    controller.fitted({"conv1": 0.5}, TARGET)


def test_a_method_of_the_other_granularity_is_a_one_line_error():
  for method, granularity, valid in (("lamp", "channel", methods.CHANNEL_METHODS),
                                     ("gradual", "channel", methods.CHANNEL_METHODS),
                                     ("global_filter", "weight", methods.METHODS)):
    with pytest.raises(PurlError) as error:
      pipeline.run("/nonexistent/never_made", None, None, method=method,
                   granularity=granularity, target_flops=0.5)
    message = str(error.value)
    assert "\n" not in message and f"train_eval.method={method!r}" in message
    assert str(list(valid)) in message
  with pytest.raises(PurlError, match=r"^train_eval.target_flops=None is not in \(0, 1\)"):
    pipeline.run("/nonexistent/never_made", None, None, granularity="channel")
  with pytest.raises(PurlError, match="applies to granularity 'channel'"):
    pipeline.run("/nonexistent/never_made", None, None, target_flops=0.5)


def test_prune_takes_the_channel_knobs(pretrained_lenet, tmp_path):
  splits = pretrained_lenet.splits
  result = purl_tf.prune(pretrained_lenet(), splits.train, splits.reward, test=splits.test,
                         method="uniform", granularity="channel", target_flops=0.5,
                         root_dir=str(tmp_path / "run"),
                         **{"finetune.epochs": 0.05, "make_strategy.name": "default"})
  assert result.results["granularity"] == "channel"
  assert result.results["global_sparsity"] >= 0.5
  assert result.model.count_params() == result.results["params_remaining"] < DENSE_PARAMS
  assert set(result.allocation) == set(GROUPS)
  config = open(os.path.join(result.root_dir, files.CONFIG)).read()
  assert "granularity='channel', target_flops=0.5" in config.splitlines()[0]
