"""tools/proxy_study.py: its allocations, its rank correlation, and a resumable study."""
import json
import types

import numpy as np
import pytest
from scipy import stats

import purl_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from purl_tf import pruning
from purl_tf.errors import PurlError
from purl_tf.pruning.training import MaskedTrainer

from conftest import load_tool

TARGET = 0.9


@pytest.fixture
def controller(pretrained_lenet):
  return pruning.PruningController(pruning.wrap(pretrained_lenet()))


@pytest.mark.parametrize("x, y", [
    ([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]),
    ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]),
    ([0.3, 0.1, 0.1, 0.7, 0.5, 0.2], [0.9, 0.2, 0.4, 0.3, 0.8, 0.8]),
])
def test_rank_correlation_is_spearmans_rho(x, y):
  study = load_tool("proxy_study")
  assert study.rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_rank_correlation_of_a_constant_is_nan():
  study = load_tool("proxy_study")
  assert np.isnan(study.rank_correlation([0.1, 0.1, 0.1], [0.2, 0.5, 0.9]))


def test_the_allocations_reach_the_target_and_the_perturbed_ones_differ(controller):
  study = load_tool("proxy_study")
  allocations = study.candidate_allocations(controller, TARGET, perturbed=3, sigma=0.5,
                                            seed=0)
  assert list(allocations) == [*study.ONE_SHOT, "erk_perturbed0", "erk_perturbed1",
                               "erk_perturbed2"]
  sizes = controller.sizes
  for name, allocation in allocations.items():
    levels = np.array([allocation[layer] for layer in controller.names])
    assert np.dot(levels, sizes) / sizes.sum() == pytest.approx(TARGET, abs=1e-3), name
  erk = np.array(list(allocations["erk"].values()))
  for index in range(3):
    assert np.abs(np.array(list(allocations[f"erk_perturbed{index}"].values())) - erk).max() > 0.01
  again = study.candidate_allocations(controller, TARGET, perturbed=3, sigma=0.5, seed=0)
  assert again == allocations  # seeded


def test_the_perturbed_ones_can_centre_on_lamp(controller):
  study = load_tool("proxy_study")
  allocations = study.candidate_allocations(controller, TARGET, perturbed=2, sigma=0.1,
                                            seed=0, around="lamp")
  assert list(allocations)[-2:] == ["lamp_perturbed0", "lamp_perturbed1"]
  lamp, erk = (np.array(list(allocations[name].values())) for name in ("lamp", "erk"))
  for index in range(2):
    near = np.array(list(allocations[f"lamp_perturbed{index}"].values()))
    assert np.abs(near - lamp).max() < np.abs(near - erk).max()  # around LAMP, not ERK
  with pytest.raises(PurlError, match="--around=random is not one of"):
    study.candidate_allocations(controller, TARGET, perturbed=1, sigma=0.1, seed=0,
                                around="random")


def test_only_keeps_the_named_allocations_and_refuses_an_unknown_name():
  study = load_tool("proxy_study")
  allocations = {"erk": {"a": 0.9}, "lamp": {"a": 0.8}, "erk_perturbed3": {"a": 0.7}}
  assert study.selected(allocations, []) == allocations
  assert list(study.selected(allocations, ["erk_perturbed3", "erk"])) == [
      "erk_perturbed3", "erk"]
  with pytest.raises(PurlError, match="--only=erk_perturbed9 names no allocation"):
    study.selected(allocations, ["erk", "erk_perturbed9"])


def test_each_column_keeps_its_highest_accuracy_and_lowest_loss():
  study = load_tool("proxy_study")
  records = {"a": {"steps": [0, 5], "reward": [0.1, 0.9], "validation": [0.3, 0.8],
                   "loss": [2.0], "sparsity": 0.9},
             "b": {"steps": [0, 5], "reward": [0.2, 0.7], "validation": [0.2, 0.9],
                   "loss": [1.5], "sparsity": 0.9}}
  assert study.picks(records) == {"reward": ["b", "a"], "validation": ["a", "b"],
                                  "train_loss": ["b"]}
  line = study.markdown({"records": records,
                         "correlations": study.correlations(records)}).splitlines()[-1]
  assert line == ("Kept by each column (its place at step 5 on validation): "
                  "reward b (1), a (2); validation a (2), b (1); train_loss b (1).")


def test_a_study_measures_each_allocation_once_and_resumes(controller, pretrained_lenet,
                                                          tmp_path, capsys):
  study = load_tool("proxy_study")
  splits = pretrained_lenet.splits
  parts = types.SimpleNamespace(strategy=tf.distribute.get_strategy(), controller=controller,
                                splits=splits)
  allocations = study.candidate_allocations(controller, TARGET, perturbed=1, sigma=0.5, seed=0)
  output = str(tmp_path / "study.json")
  # mnist5k has no validation split: its test split stands in for one here.
  first = {name: allocations[name] for name in ("erk", "lamp")}
  study.study(parts, splits.test, first, [0, 3], 0.01, 0, output)
  # At step 0 the reward accuracy is the one-shot accuracy of the allocation.
  controller.reset()
  pruning.explicit(controller, allocations["erk"])
  one_shot = float(np.mean(np.concatenate([
      np.argmax(controller.model(images, training=False), -1) == labels
      for images, labels in splits.reward])))
  written = json.load(open(output))
  assert written["records"]["erk"]["reward"][0] == pytest.approx(one_shot, abs=1e-6)
  assert written["records"]["erk"]["steps"] == [0, 3]
  assert len(written["records"]["erk"]["loss"]) == 1
  capsys.readouterr()
  state = study.study(parts, splits.test, allocations, [0, 3], 0.01, 0, output)
  printed = capsys.readouterr().out
  assert "erk:" not in printed and "lamp:" not in printed  # not measured again
  assert "global_magnitude:" in printed and "erk_perturbed0:" in printed
  assert state["records"]["erk"] == written["records"]["erk"]
  assert set(state["records"]) == set(allocations)
  rhos = state["correlations"]["validation"]
  assert rhos[-1] == pytest.approx(1.0)  # the truth ranks itself perfectly
  assert all(-1.0 <= r <= 1.0 for r in state["correlations"]["reward"])
  table = study.markdown(state).splitlines()
  assert len(table) == 2 + len(allocations) + 4  # header, rule, rows, rhos, picks
  assert table[0].count("|") == 1 + 1 + 2 * 2 + 1  # allocation, 2 + 2 accuracies, 1 loss
  losses = [-r["loss"][0] for r in state["records"].values()]
  truth = [r["validation"][-1] for r in state["records"].values()]
  assert state["correlations"]["train_loss"] == [
      pytest.approx(stats.spearmanr(losses, truth).statistic)]


def test_merge_makes_one_study_of_studies_run_in_parts(tmp_path):
  study = load_tool("proxy_study")
  record = lambda final: {"steps": [0, 5], "reward": [0.1, final], "validation": [0.1, final],
                          "loss": [1.0 - final], "sparsity": 0.9}
  parts = {"a": {"erk": record(0.8), "lamp": record(0.9)},
           "b": {"lamp_perturbed0": record(0.7), "global_magnitude": record(0.6)}}
  paths = []
  for name, records in parts.items():
    paths.append(str(tmp_path / f"{name}.json"))
    json.dump({"records": records}, open(paths[-1], "w"))
  state = study.merged(paths)
  assert list(state["records"]) == ["erk", "lamp", "lamp_perturbed0", "global_magnitude"]
  assert state["correlations"]["validation"][-1] == pytest.approx(1.0)
  assert state["correlations"]["reward"][0] != state["correlations"]["reward"][0]  # nan
  rows = study.markdown(state).splitlines()[2:6]  # one table, by final validation
  assert [row.split(" | ")[0] for row in rows] == [
      "| lamp", "| erk", "| lamp_perturbed0", "| global_magnitude"]
  with pytest.raises(PurlError, match="--merge: .* is not a study file"):
    study.merged([paths[0], str(tmp_path / "missing.json")])


def test_another_order_trains_on_other_batches_and_one_order_repeats(controller,
                                                                     pretrained_lenet,
                                                                     tmp_path):
  study = load_tool("proxy_study")
  assert study.stream_seed(2, 0) == 2  # order 0: the seed's own, as every earlier study
  splits = pretrained_lenet.splits
  first = {order: next(iter(splits.train_stream(0, seed=study.stream_seed(0, order))))[1]
           for order in (0, 1, 2)}
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
  parts = types.SimpleNamespace(strategy=tf.distribute.get_strategy(), controller=controller,
                                splits=splits)
  erk = {"erk": pruning.allocate(controller, "erk", TARGET)}
  losses = [study.study(parts, splits.test, erk, [0, 3], 0.01, study.stream_seed(0, 1),
                        str(tmp_path / f"run{run}.json"))["records"]["erk"]["loss"][0]
            for run in range(2)]
  assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # one order, one result


def test_the_batch_norm_statistics_are_re_estimated_before_each_measurement(mnist5k_splits):
  """As the search's environment does: the moving statistics change only when asked."""
  study = load_tool("proxy_study")
  splits = mnist5k_splits
  inputs = keras.Input(splits.image_shape)
  x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
  outputs = keras.layers.Dense(splits.num_classes, activation="softmax")(
      keras.layers.Flatten()(x))
  controller = pruning.PruningController(pruning.wrap(keras.Model(inputs, outputs)))
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy())
  norm = next(layer for layer in controller.model.layers
              if isinstance(layer, keras.layers.BatchNormalization))
  allocation = {name: 0.5 for name in controller.names}
  means = []
  for batches in (0, 2):
    study.measure(controller, trainer, lambda: splits.train_stream(0, seed=0),
                  {"reward": trainer.distribute(splits.reward)}, allocation, [0],
                  lambda: splits.train_stream(0, seed=1), batches)
    means.append(norm.moving_mean.numpy().copy())
  np.testing.assert_array_equal(means[0], np.zeros_like(means[0]))  # untouched: initial
  assert np.abs(means[1]).max() > 1e-4  # re-estimated from the batches
