"""Every method of train_eval.method on LeNet-5 with tiny budgets: the same RunResult, the
target reached in the saved model (end to end for the searches, gradual and erk, which
takes the path every one-shot method shares), each one-shot method's choice, the budgets
the methods share."""
import json
import logging
import os

import numpy as np
import pytest

import purl_tf  # noqa: F401
import gin
import tf_keras as keras

from purl_tf import models, pruning, train
from purl_tf.rl import search
from purl_tf.run import gradual, methods, pipeline
from purl_tf.runtime import files
from purl_tf.rl.env import SPARSITY_LEVELS
from purl_tf.errors import PurlError
from purl_tf.runtime.results import RunResult

from conftest import QUICKSTART, load_tool, start_from, weight_env

LAYERS = ("conv1", "conv2", "fc1", "predictions")
RESCORE_STEPS = 3
FINAL_STEPS = 2  # PruningEnv.final_retrain_steps
CANDIDATES = 3  # SearchRunner.candidates' default


def tiny(data_dir, method, target=0.9):
  """The quickstart shrunk to seconds: 2 collect + 2 greedy episodes of 1 retrain step per
  layer and FINAL_STEPS more after the last, a fine-tune of 6 steps (0.1 epoch of 3,500
  examples in batches of 64)."""
  return [f"load_splits.data_dir = '{data_dir}'", "make_strategy.name = 'default'",
          "train_eval.export_tflite = False", f"train_eval.target_sparsity = {target}",
          f"train_eval.method = '{method}'", "SearchRunner.num_episodes = 2",
          "SearchRunner.eval_interval = 1", "PruningEnv.retrain_steps = 1",
          f"PruningEnv.final_retrain_steps = {FINAL_STEPS}",
          f"SearchRunner.rescore_steps = {RESCORE_STEPS}", "finetune.epochs = 0.1"]


def run(method, root, data_dir, pretrained_lenet, target=0.9, bindings=()):
  """train_eval of `method` in root, starting from the session's pre-trained LeNet-5
  (with further gin `bindings`)."""
  start_from(root, pretrained_lenet.weights_path)
  gin.clear_config()
  pipeline.parse_gin([QUICKSTART], [*tiny(data_dir, method, target), *bindings])
  return pipeline.train_eval(root)


@pytest.fixture(scope="module")
def finished(data_dir, pretrained_lenet, tmp_path_factory):
  """method -> (root_dir, RunResult): each method run once for the module, on first use."""
  base, done = tmp_path_factory.mktemp("methods"), {}

  def get(method):
    if method not in done:
      root = str(base / method)
      done[method] = root, run(method, root, data_dir, pretrained_lenet)
    return done[method]

  return get


def zeros_share(path):
  """Share of exactly-zero weights in the prunable kernels of a saved pruned model."""
  model = keras.models.load_model(path)
  kernels = [layer.kernel.numpy() for layer in model.layers if layer.name in LAYERS]
  return sum(np.count_nonzero(k == 0) for k in kernels) / sum(k.size for k in kernels)


# End to end: one one-shot method (erk) stands for them all, since every one-shot method
# takes the same pipeline path (methods.choose hands pruning.allocate's allocation to the
# same fine-tune; the pipeline branches on no one-shot method's name); the other one-shot
# methods are checked where they differ, their choice, in
# test_every_one_shot_method_chooses_its_rule_at_the_target (and their rules in
# test_pruning.py).
@pytest.mark.parametrize("method", ["erk", "gradual", "random", "episodic"])
def test_every_method_writes_one_run_result_and_reaches_the_target(method, finished):
  root, result = finished(method)
  on_disk = RunResult(**json.load(open(os.path.join(root, files.RESULTS))))  # every field
  assert on_disk.method == method
  assert set(result.allocation) == set(LAYERS)
  # The saved model holds the zeros the results claim, at the target set above (0.9).
  assert zeros_share(result.pruned_model) == pytest.approx(result.global_sparsity, abs=1e-4)
  assert result.global_sparsity >= 0.9 - 1e-3 and result.reached_target
  assert result.dense_test_accuracy > 0.9  # the shared pre-trained model
  assert result.pruned_test_accuracy > 0.1  # fine-tuned, not a broken network


# Each one-shot method's rule, named here (not read from pruning.ALLOCATIONS).
RULES = {"global_magnitude": pruning.global_magnitude, "lamp": pruning.lamp,
         "erk": pruning.erk, "uniform": pruning.uniform,
         "uniform_keep_ends": pruning.uniform_keep_ends}


def test_every_one_shot_method_chooses_its_rule_at_the_target(pretrained_lenet, tmp_path):
  """What a one-shot method's run fine-tunes: methods.choose's allocation, its own rule's
  at the target, on the dense weights, the controller left dense."""
  assert set(RULES) == set(methods.ONE_SHOT) and set(methods.ONE_SHOT) < set(methods.METHODS)
  splits = pretrained_lenet.splits
  env = weight_env(pretrained_lenet(), splits, splits.reward.take(1), target_sparsity=0.9,
                   retrain_steps=0, recalibrate_batches=0)
  controller = env.controller
  chosen = {}
  for method, rule in RULES.items():
    choice = methods.choose(method, env, str(tmp_path), seed=0)
    assert controller.global_sparsity() == 0.0, method  # left dense for the fine-tune
    allocation = choice.allocation
    assert list(allocation) == list(LAYERS) and choice.episodes == 0, method
    expected = rule(controller, 0.9)  # the rule itself, on the dense weights
    controller.reset()
    assert [allocation[name] for name in LAYERS] == pytest.approx(list(expected), abs=1e-9)
    reached = pruning.costs(controller.infos, [allocation[name] for name in LAYERS],
                            controller.total_params)["global_sparsity"]
    assert reached >= 0.9 - 1e-3, method
    chosen[method] = allocation
  assert all(v == pytest.approx(0.9, abs=1e-3) for v in chosen["uniform"].values())
  for method in ("global_magnitude", "lamp", "erk", "uniform_keep_ends"):
    # layer-adaptive: the layers' sparsities differ
    assert max(chosen[method].values()) - min(chosen[method].values()) > 0.1, method


def test_searched_methods_share_the_purl_budget(finished):
  root, random = finished("random")
  # 2 collect + 2 greedy episodes of the DQN search: 4 random allocations.
  assert random.search_episodes == search.evaluated_episodes(2, 1) == 4
  # Every step of the 4 episodes and their final retrains, then the re-score of each of
  # the 3 candidates.
  assert random.search_retrain_steps == (4 * (len(LAYERS) * 1 + FINAL_STEPS)
                                         + CANDIDATES * RESCORE_STEPS)
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  assert [e["policy"] for e in episodes] == [search.RANDOM] * 4
  assert all(level in SPARSITY_LEVELS for e in episodes for level in e["levels"])
  assert len({tuple(e["levels"]) for e in episodes}) > 1  # not one allocation repeated
  _, gradual = finished("gradual")
  assert gradual.search_retrain_steps == random.search_retrain_steps  # its pruning ramp
  assert gradual.finetune_steps == random.finetune_steps == 6  # ceil(0.1 * 3500 // 64)


def test_gradual_ramps_each_layer_to_its_erk_sparsity(finished):
  """Uniform ramps prune the first conv and the classifier as hard as the rest; gradual
  ends at the ERK allocation's per-layer sparsities (its default gradual.allocation)."""
  _, gradual = finished("gradual")
  _, erk = finished("erk")
  for name in LAYERS:
    assert gradual.allocation[name] == pytest.approx(erk.allocation[name], abs=2e-3), name
  assert max(erk.allocation.values()) - min(erk.allocation.values()) > 0.1  # not uniform


def test_an_unknown_gradual_allocation_is_a_one_line_error():
  controller = pruning.PruningController(pruning.wrap(models.lenet5((28, 28, 1), 10)))
  with pytest.raises(PurlError, match="gradual.allocation='rigl' is unknown: use one of"):
    gradual.layer_targets(controller, 0.9, "rigl")


def test_a_one_shot_method_can_train_as_long_as_the_searches(finished, data_dir,
                                                             pretrained_lenet, tmp_path):
  """ERK, fine-tuned as long as a search trains (train_eval.match_search_steps)."""
  _, random = finished("random")
  matched = run("uniform", str(tmp_path / "erk"), data_dir, pretrained_lenet,
                bindings=["train_eval.method = 'erk'", "train_eval.match_search_steps = True"])
  assert matched.method == "erk"
  assert matched.search_retrain_steps == 0
  assert matched.finetune_steps == random.search_retrain_steps + random.finetune_steps
  _, plain = finished("erk")
  assert matched.allocation == plain.allocation  # the same allocation, trained longer


def test_the_episodic_reward_pays_only_at_the_last_step(finished):
  root, result = finished("episodic")
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  assert result.method == "episodic" and len(episodes) == 4
  for episode in episodes:
    assert episode["rewards"][:-1] == [0.0] * (len(LAYERS) - 1)
    assert episode["rewards"][-1] != 0.0
    assert episode["episode_return"] == episode["rewards"][-1]


def test_a_finished_method_run_is_not_redone(finished, data_dir, pretrained_lenet):
  root, first = finished("random")
  mtime = os.path.getmtime(os.path.join(root, files.RESULTS))
  assert run("random", root, data_dir, pretrained_lenet) == first
  assert os.path.getmtime(os.path.join(root, files.RESULTS)) == mtime


def test_an_unknown_method_is_a_one_line_error(data_dir, tmp_path):
  pipeline.parse_gin([QUICKSTART], tiny(data_dir, "magnitude"))
  with pytest.raises(PurlError, match="train_eval.method='magnitude' is unknown") as error:
    pipeline.train_eval(str(tmp_path))
  assert "global_magnitude" in str(error.value).splitlines()[0]


def test_gradual_schedule_ends_its_ramp_on_a_mask_update():
  schedule = gradual.schedule(0.9, 95)
  assert (schedule.frequency, schedule.end_step) == (9, 90)
  assert gradual.schedule(0.9, 2200).frequency == 100
  assert gradual.schedule(0.9, 3).end_step == 3


def test_a_search_keeps_its_best_networks_and_chooses_by_a_fresh_score(finished):
  root, result = finished("random")
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  candidates = result.selection["candidates"]
  # The candidates are the best episodes by the search's own accuracy, and only their
  # networks are left on disk.
  by_search = sorted(range(len(episodes)),
                     key=lambda i: (-episodes[i]["accuracy"], -episodes[i]["sparsity"]))
  assert [c["index"] for c in candidates] == by_search[:CANDIDATES]
  assert sorted(os.listdir(os.path.join(root, files.SEARCH_CANDIDATES))) == sorted(
      f"episode{c['index']:05d}.npz" for c in candidates)
  # The one kept has the highest re-score, whatever the search measured.
  chosen = max(candidates, key=lambda c: c["rescored_accuracy"])
  assert result.best_episode == chosen["episode"]
  assert result.rescored_reward_accuracy == chosen["rescored_accuracy"]
  assert result.allocation == pytest.approx(episodes[chosen["index"]]["allocation"], abs=1e-6)


@pytest.mark.parametrize("finetune_from", ["search", "dense"])
def test_the_fine_tune_starts_from_the_network_the_search_measured(
    finetune_from, data_dir, pretrained_lenet, tmp_path):
  result = run("random", str(tmp_path / finetune_from), data_dir, pretrained_lenet,
               bindings=["finetune.epochs = 0", f"train_eval.finetune_from = '{finetune_from}'"])
  # With no fine-tune steps, the final model is the start: the re-scored search network
  # (retrained masks and weights), or the allocation put on the dense weights.
  same = result.pruned_reward_accuracy == pytest.approx(result.rescored_reward_accuracy,
                                                        abs=1e-6)
  assert result.finetune_from == finetune_from
  assert same == (finetune_from == "search")


def test_a_searched_allocation_is_fitted_to_the_target_before_a_fine_tune_from_dense(
    data_dir, pretrained_lenet, tmp_path):
  root = str(tmp_path / "fit")
  # A grid whose levels cannot sum to 0.9: the search overshoots it.
  result = run("random", root, data_dir, pretrained_lenet,
               bindings=["finetune.epochs = 0", "PruningEnv.levels = (0.0, 0.5, 0.95, 0.99)",
                         "train_eval.finetune_from = 'dense'"])
  chosen = files.read_json(os.path.join(root, files.BEST_ALLOCATION))
  assert chosen["global_sparsity"] > 0.905  # what the search chose and measured ...
  assert result.global_sparsity == pytest.approx(0.9, abs=1e-3)  # ... fine-tuned at 0.9
  # Fitting down to the target only adds weights back, to every layer it does not keep dense.
  searched = np.array([chosen["allocation"][n] for n in LAYERS])
  fitted = np.array([result.allocation[n] for n in LAYERS])
  assert np.all((fitted < searched) | (fitted == 0.0))


def test_a_run_at_chance_says_so_while_it_searches_and_in_its_results(
    data_dir, pretrained_lenet, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="purl_tf")
  root = str(tmp_path / "chance")
  # Every layer at 99.9 % with no retrain and no fine-tune: a useless network.
  result = run("random", root, data_dir, pretrained_lenet, target=0.98,
               bindings=["PruningEnv.levels = (0.0, 0.999)", "PruningEnv.retrain_steps = 0",
                         "SearchRunner.rescore_steps = 0", "finetune.epochs = 0"])
  printed = caplog.text
  assert result.pruned_test_accuracy < 0.2  # chance is 0.1
  assert "episodes so far end near chance" in printed
  on_disk = json.load(open(os.path.join(root, files.RESULTS)))
  assert on_disk["warnings"] == result.warnings
  assert any(line.startswith("the pruned model is near chance") for line in result.warnings)
  assert (logging.WARNING, result.warnings[0]) in [(r.levelno, r.getMessage())
                                                   for r in caplog.records]
  # The summary closing the run and the report repeat it.
  assert f"WARNING               {result.warnings[0]}" in train.summary(root, result)
  with open(load_tool("report").write_report(root), encoding="utf-8") as report:
    assert f"**Warning:** {result.warnings[0]}" in report.read()
