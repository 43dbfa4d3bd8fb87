"""tools/bench: methods and verdicts (method against method, no runs) and markdown's sections."""
import dataclasses
import os
import shlex
import statistics

import gin
import pytest

import purl_tf  # noqa: F401
from purl_tf.runtime import files
from purl_tf.errors import PurlError
from purl_tf.runtime.results import reached_target
from purl_tf.run import configs, pipeline
from tools.bench import channels, markdown, verdicts
from tools.bench import methods as benchmark

LAYERS = ("conv1", "conv2", "dense1", "dense2")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def episode(accuracy, sparsity, index=0, policy="collect"):
  """An episodes.json record (every search.Episode field)."""
  return {"episode": index, "policy": policy, "episode_return": 0.0, "accuracy": accuracy,
          "sparsity": sparsity, "epsilon": 0.0, "seconds": 1.0,
          "allocation": {layer: sparsity for layer in LAYERS}, "levels": [0.5] * 4,
          "rewards": [0.0] * 4, "retrain_seconds": 0.5, "measure_seconds": 0.1,
          "mask_seconds": 0.0}


def results(accuracy, target=0.95, sparsity=None, seconds=(100.0, 10.0), steps=(2000, 162),
            dense=0.97):
  """A results.json dict with every key cell_record reads."""
  sparsity = target if sparsity is None else sparsity
  return {"pruned_test_accuracy": accuracy, "dense_test_accuracy": dense,
          "global_sparsity": sparsity, "reached_target": reached_target(sparsity, target),
          "pruned_reward_accuracy": accuracy - 0.01,
          "best_reward_accuracy_in_search": accuracy - 0.005,
          "rescored_reward_accuracy": accuracy - 0.007,
          "search_seconds": seconds[0], "finetune_seconds": seconds[1],
          "search_retrain_steps": steps[0], "finetune_steps": steps[1],
          "allocation": {layer: sparsity for layer in LAYERS}, "warnings": []}


def cell(method, seed, accuracy, target=0.95, episodes=None, wall=None, **kwargs):
  """cell_record of a Run with results(accuracy, target, **kwargs)."""
  return benchmark.cell_record(benchmark.Run(method, target, seed,
                                             results(accuracy, target, **kwargs),
                                             episodes, wall))


# Episodes at target 0.95 whose best so far comes within 0.5 pt at the 1st / 2nd / 4th.
AT_1 = [episode(0.95, 0.96)] * 4
AT_2 = [episode(0.9, 0.96), episode(0.95, 0.96), episode(0.951, 0.96)]
AT_4 = [episode(0.9, 0.96)] * 3 + [episode(0.95, 0.96)]
NEVER = [episode(0.99, 0.5)]


def test_best_so_far_is_none_until_the_target_then_the_best_accuracy_at_it():
  target = 0.9
  episodes = [episode(0.99, 0.5),   # below the target: never the answer
              episode(0.90, 0.92),  # 1st at target
              episode(0.946, 0.95),
              episode(0.80, 0.97),  # worse: the best stays
              episode(0.999, 0.85),  # higher accuracy below the target: ignored
              episode(0.95, 0.93, policy="greedy")]  # the final best
  assert verdicts.best_so_far(episodes, target) == [None, 0.90, 0.946, 0.946, 0.946, 0.95]
  assert verdicts.best_so_far(episodes[:1], target) == [None]
  assert verdicts.best_so_far([], target) == []


def test_episodes_to_within_counts_evaluated_episodes_until_near_the_final_best():
  target = 0.9
  episodes = [episode(0.99, 0.5),   # below the target: never the answer
              episode(0.90, 0.92),  # 1st at target, 5 points under the final best
              episode(0.946, 0.95),  # 0.4 points under 0.95: within 0.5 points
              episode(0.80, 0.97),
              episode(0.95, 0.93, policy="greedy")]  # the final best
  assert verdicts.episodes_to_within(episodes, target, verdicts.WITHIN) == 3
  assert verdicts.episodes_to_within(episodes, target) == 3  # WITHIN by default
  # Exactly 0.5 points under counts as within; the margin is a parameter.
  assert verdicts.episodes_to_within(episodes[:2] + [episode(0.945, 0.95)] + episodes[3:],
                                      target) == 3
  assert verdicts.episodes_to_within(episodes, target, 0.0) == 5
  assert verdicts.episodes_to_within(episodes, target, 0.05) == 2
  assert verdicts.episodes_to_within(episodes[:1], target) is None  # never at the target
  assert verdicts.episodes_to_within([], target) is None


def test_cell_record_reads_results_and_episodes():
  record = cell("purl", 1, 0.96, episodes=AT_2, wall=321.0, seconds=(100.0, 10.0),
                steps=(2000, 162))
  assert record == {
      "method": "purl", "target": 0.95, "seed": 1, "test_accuracy": 0.96,
      "dense_test_accuracy": 0.97, "sparsity": 0.95, "reached_target": True,
      "reward_accuracy": pytest.approx(0.95),
      "search_reward_accuracy": pytest.approx(0.955),
      "rescored_reward_accuracy": pytest.approx(0.953), "episodes": 3,
      "episodes_to_within": 2, "best_so_far": [0.9, 0.95, 0.951], "train_steps": 2162,
      "method_seconds": 110.0,
      "wall_seconds": 321.0, "allocation": {layer: 0.95 for layer in LAYERS},
      "warnings": []}
  # One-shot methods have no episodes-to-best even if given episodes; older results
  # without the optional keys still read.
  one_shot = results(0.9, sparsity=0.93)
  del one_shot["rescored_reward_accuracy"], one_shot["warnings"]
  record = benchmark.cell_record(benchmark.Run("lamp", 0.95, 0, one_shot, AT_2))
  assert record["episodes_to_within"] is None and record["reached_target"] is False
  assert record["rescored_reward_accuracy"] is None and record["warnings"] == []
  assert record["wall_seconds"] is None
  assert cell("random", 0, 0.9, episodes=NEVER)["episodes_to_within"] is None
  assert cell("episodic", 0, 0.9, episodes=None)["episodes"] == 0


def test_summary_and_table_give_mean_spread_time_steps_and_episodes_to_best():
  cells = [cell("global_magnitude", 1, 0.92, seconds=(0.1, 9.9), steps=(0, 162)),
           cell("global_magnitude", 0, 0.90, seconds=(0.1, 9.9), steps=(0, 162)),
           cell("purl", 2, 0.95, episodes=AT_2),
           cell("purl", 0, 0.96, episodes=AT_2),
           cell("purl", 1, 0.97, episodes=AT_4),
           cell("random", 0, 0.80, episodes=NEVER),
           cell("purl", 0, 0.50, target=0.98, episodes=AT_2)]  # another target: not shown
  summary = verdicts.summary([c for c in cells if c["method"] == "purl"
                               and c["target"] == 0.95])
  assert summary["seeds"] == [0, 1, 2]  # sorted by seed
  assert summary["accuracy"].mean == pytest.approx(0.96)
  assert summary["accuracy"].std == pytest.approx(statistics.stdev([0.96, 0.97, 0.95]))
  assert (summary["accuracy"].low, summary["accuracy"].high) == (0.95, 0.97)
  assert summary["accuracy"].count == 3
  assert summary["to_within"] == [2, 4, 2] and summary["episodes"] == [3, 4, 3]
  assert summary["seconds"].mean == pytest.approx(110.0)
  assert summary["steps"].mean == pytest.approx(2162)
  assert verdicts.summary([c for c in cells if c["method"] == "global_magnitude"]
                           )["to_within"] is None
  table = verdicts.table(cells, 0.95).splitlines()
  assert len(table) == 5  # header, rule, then METHOD_ORDER: purl, random, global magnitude
  assert table[1] == "| --- | --- | --- | --- | --- | --- |"
  purl_row = table[2].split(" | ")
  assert purl_row[0] == "| PuRL (dense reward)"
  assert purl_row[1] == "0.9500"
  assert purl_row[2] == "96.00 ± 1.00 (95.00–97.00)"
  assert purl_row[3] == "110 s"
  assert purl_row[4] == "2,162"
  assert purl_row[5] == "2.7 (2, 4, 2) of 4 |"
  random_row = table[3].split(" | ")
  assert random_row[0] == "| random search" and random_row[1] == "0.9500"
  assert random_row[2] == "80.00 ± 0.00 (80.00–80.00)"
  assert random_row[5] == "n/a (not reached) of 1 |"
  global_row = table[4].split(" | ")
  assert global_row[0] == "| global magnitude"
  assert global_row[2] == "91.00 ± 1.41 (90.00–92.00)"
  assert global_row[3] == "10 s"
  assert global_row[4] == "162" and global_row[5] == "— |"


def rivals_at(target, accuracies, **kwargs):
  """Cells of every rival: {method: [accuracy of seed 0, 1, ...]}."""
  return [cell(method, seed, accuracy, target, **kwargs)
          for method, values in accuracies.items() for seed, accuracy in enumerate(values)]


def test_goals_at_the_highest_target_need_the_margin_and_every_seed(monkeypatch):
  target = 0.95
  rivals = {"global_magnitude": [0.960, 0.962, 0.964], "lamp": [0.940, 0.945, 0.950],
            "erk": [0.940, 0.941, 0.942], "random": [0.900, 0.900, 0.900]}
  searches = ([cell("purl", s, a, target, episodes=AT_2) for s, a in
               enumerate([0.966, 0.968, 0.970])]
              + [cell("episodic", s, 0.9, target, episodes=AT_4) for s in range(3)])
  uniform = [cell("uniform", s, 0.999, target) for s in range(3)]  # not a rival
  cells = searches + rivals_at(target, rivals) + uniform
  lines = verdicts.goals(cells, target, highest=True)
  assert len(lines) == 2
  assert lines[0] == (
      "- PuRL at least 0.5 pt above the best rival (global magnitude) and ahead of every "
      "rival on every seed: MET (96.80 vs 96.20 %, lead +0.60 pt; PuRL minus the best "
      "rival of each seed: seed 0: +0.60, seed 1: +0.60, seed 2: +0.60 pt).")
  assert lines[1] == (
      "- Dense reward within 0.5 pt of its best in at most half the episodes of the "
      "episodic reward: MET (2.0 vs 4.0 evaluated episodes, means over seeds).")
  # The same numbers with a larger required lead fall short.
  monkeypatch.setattr(verdicts, "MARGIN", 0.007)
  assert ": NOT MET (96.80 vs 96.20 %, lead +0.60 pt" in verdicts.goals(cells, target,
                                                                         True)[0]
  monkeypatch.undo()
  # The mean lead is still enough (+0.60 pt over global magnitude) but LAMP, not the best
  # rival on the mean, beats PuRL on seed 2: paired against every rival, NOT MET.
  rivals["lamp"][2] = 0.972
  lines = verdicts.goals(searches + rivals_at(target, rivals) + uniform, target, True)
  assert lines[0] == (
      "- PuRL at least 0.5 pt above the best rival (global magnitude) and ahead of every "
      "rival on every seed: NOT MET (96.80 vs 96.20 %, lead +0.60 pt; PuRL minus the best "
      "rival of each seed: seed 0: +0.60, seed 1: +0.60, seed 2: -0.20 pt).")
  # A lead under the margin on the mean is NOT MET even when every seed wins.
  close = [cell("purl", s, a, target, episodes=AT_2) for s, a in
           enumerate([0.964, 0.966, 0.968])]
  rivals["lamp"][2] = 0.950
  lines = verdicts.goals(close + rivals_at(target, rivals), target, True)
  assert "NOT MET (96.60 vs 96.20 %, lead +0.40 pt" in lines[0]
  assert "seed 0: +0.40, seed 1: +0.40, seed 2: +0.40 pt" in lines[0]


def test_the_speed_goal_needs_half_the_episodes_of_the_episodic_reward():
  target = 0.98
  rivals = rivals_at(target, {"global_magnitude": [0.9]})

  def speed(purl_episodes, episodic_episodes):
    cells = [cell("purl", 0, 0.95, target, episodes=e) for e in [purl_episodes]]
    cells += [cell("episodic", 0, 0.95, target, episodes=episodic_episodes)]
    return verdicts.goals(cells + rivals, target, True)[1]

  at = lambda n: [episode(0.9, 0.99)] * (n - 1) + [episode(0.95, 0.99)]  # noqa: E731
  assert "episodic reward: MET (2.0 vs 4.0 evaluated" in speed(at(2), at(4))  # exactly half
  assert "episodic reward: NOT MET (3.0 vs 4.0 evaluated" in speed(at(3), at(4))
  assert "episodic reward: MET (1.0 vs 4.0 evaluated" in speed(at(1), at(4))
  assert speed(NEVER, at(4)) == ("- Episodes to the best: not comparable (a search never "
                                 "reached the target).")
  assert "not comparable" in speed(at(1), NEVER)
  assert verdicts.goals([cell("purl", 0, 0.95, target, episodes=at(1))] + rivals, target,
                         True)[1] == ("- Episodes to the best: not evaluated yet (PuRL agent, "
                                      "episodic reward has no finished cell at this target).")
  # Means over the seeds that reached the target.
  cells = [cell("purl", s, 0.95, target, episodes=e) for s, e in enumerate([at(1), at(3)])]
  cells += [cell("episodic", s, 0.95, target, episodes=e)
            for s, e in enumerate([at(4), NEVER, at(4)])]
  assert "MET (2.0 vs 4.0 evaluated" in verdicts.goals(cells + rivals, target, True)[1]


def test_a_partial_table_is_judged_on_the_seeds_every_compared_method_has():
  """A seed PuRL has finished and its rivals not yet (a table still running) is left
  out of both means, and the goal says so."""
  target = 0.98
  at = lambda n: [episode(0.9, 0.99)] * (n - 1) + [episode(0.95, 0.99)]  # noqa: E731
  cells = [cell("purl", s, a, target, episodes=at(n))
           for s, (a, n) in enumerate([(0.90, 2), (0.80, 2), (0.99, 1)])]
  cells += [cell("episodic", s, 0.9, target, episodes=at(n)) for s, n in enumerate([4, 2])]
  cells += rivals_at(target, {"lamp": [0.96, 0.96]})
  accuracy, speed = verdicts.goals(cells, target, True)[:2]
  assert "(85.00 vs 96.00 %, lead -11.00 pt; PuRL minus the best rival of each seed: " \
         "seed 0: -6.00, seed 1: -16.00 pt; over seeds 0, 1 only" in accuracy
  assert "NOT MET (2.0 vs 3.0 evaluated episodes, means over seeds; over seeds 0, 1 " \
         "only" in speed
  whole = cells + [cell("episodic", 2, 0.9, target, episodes=at(4))]
  whole += rivals_at(target, {"lamp": [0.96, 0.96, 0.96]})[2:]
  assert "only" not in " ".join(verdicts.goals(whole, target, True))


def test_goals_say_when_the_required_lead_would_pass_the_dense_network():
  target = 0.95  # every dense network at 97.00 % (results()' default)
  purl = [cell("purl", s, 0.96, target, episodes=AT_2) for s in range(3)]
  episodic = [cell("episodic", s, 0.96, target, episodes=AT_4) for s in range(3)]
  rivals = {"lamp": [0.964, 0.9649, 0.950], "erk": [0.950, 0.950, 0.966]}
  lines = verdicts.goals(purl + episodic + rivals_at(target, rivals), target, True)
  assert lines[-1] == (
      "- Headroom: the bar (the best rival of each seed + 0.5 pt: 96.90, 96.99, 97.10 %) is "
      "at or above the dense network's test accuracy (97.00, 97.00, 97.00 %) on 1 of 3 "
      "seeds: the goal asks a network pruned to 0.95 to match the unpruned one; a higher "
      "target leaves an allocation room to show.")
  rivals["erk"][2] = 0.9649  # every bar below the dense network: nothing to say
  lines = verdicts.goals(purl + episodic + rivals_at(target, rivals), target, True)
  assert len(lines) == 2 and not any("Headroom" in line for line in lines)
  assert not any("Headroom" in line for line in verdicts.goals(
      purl + rivals_at(target, {"lamp": [0.97] * 3}), target, False))


def test_goals_at_other_targets_allow_the_best_rivals_std_and_name_missed_targets():
  target = 0.9
  rivals = {"global_magnitude": [0.96, 0.97, 0.98], "lamp": [0.95, 0.95, 0.95]}
  purl = [cell("purl", s, 0.961, target, episodes=AT_4) for s in range(3)]
  lines = verdicts.goals(purl + rivals_at(target, rivals), target, highest=False)
  assert lines == [
      "- PuRL not below the best rival (global magnitude) by more than its std: MET (96.10 "
      "vs 97.00 ± 1.00 %; PuRL minus the best rival of each seed: seed 0: +0.10, seed 1: "
      "-0.90, seed 2: -1.90 pt)."]  # no speed goal below the highest target
  low = [cell("purl", s, 0.959, target, episodes=AT_4) for s in range(3)]
  assert ": NOT MET (95.90 vs 97.00 ± 1.00 %" in verdicts.goals(
      low + rivals_at(target, rivals), target, False)[0]
  # Cells below the target sparsity are named, whatever the method, at either kind of
  # target; cells of other targets are not.
  missed = [cell("uniform", 0, 0.90, target, sparsity=0.85),
            cell("gradual", 2, 0.90, target, sparsity=0.8),
            cell("erk", 0, 0.90, 0.95, sparsity=0.5)]
  cells = purl + rivals_at(target, rivals) + missed
  for highest in (False, True):
    assert verdicts.goals(cells, target, highest)[-1] == (
        "- Below the target sparsity: uniform seed 0 (0.850), gradual (tfmot PolynomialDecay "
        "to ERK) seed 2 (0.800).")
  assert not any("Below" in line for line in
                 verdicts.goals(purl + rivals_at(target, rivals), target, False))
  assert verdicts.goals(purl, target, True) == [
      "- Goals: not evaluated (PuRL or its rivals missing at this target)."]
  assert "not evaluated" in verdicts.goals(rivals_at(target, rivals), target, True)[0]


def bound(bindings, name):
  """The value bound to `name` in a list of 'name = value' bindings (the last one)."""
  values = [b.split(" = ", 1)[1] for b in bindings if b.split(" = ", 1)[0] == name]
  assert values, f"{name} is not bound"
  return values[-1]


def test_plan_lays_out_the_cells_with_honest_seeds(tmp_path):
  plan = benchmark.make_plan("mnist5k", str(tmp_path), ["0", "2"], 7, False,
                             extra_bindings=["x = 1"])
  assert plan.seeds == (0, 2) and plan.targets == (0.95, 0.98) and plan.episodes == 7
  assert plan.name == "mnist5k" and not plan.mock and not plan.quick
  assert plan.root_dir == str(tmp_path / "mnist5k")
  assert plan.run_dir(0.98, 2, "random") == str(tmp_path / "mnist5k" / "target0.98" / "seed2"
                                                / "random")
  cells = plan.cells()
  assert len(cells) == 2 * 2 * len(verdicts.METHOD_ORDER)
  assert cells[0] == (0, 0.95, "purl") and cells[-1] == (2, 0.98, "erk_matched")
  assert [c[0] for c in cells] == sorted(c[0] for c in cells)  # seed by seed
  for seed in plan.seeds:
    for target in plan.targets:
      bindings = plan.bindings(target, seed)
      for name in ("train_eval.seed", "load_splits.reward_seed", "load_splits.shuffle_seed"):
        assert bound(bindings, name) == str(seed)
      assert bound(bindings, "train_eval.target_sparsity") == str(target)
      assert bound(bindings, "SearchRunner.num_episodes") == "7"
  bindings = plan.bindings(0.98, 2)
  assert bindings[-6:] == ["train_eval.target_sparsity = 0.98", "train_eval.seed = 2",
                           "load_splits.reward_seed = 2", "load_splits.shuffle_seed = 2",
                           "SearchRunner.num_episodes = 7", "x = 1"]
  assert bindings[:len(benchmark.SUITES["mnist5k"].bindings)] == list(
      benchmark.SUITES["mnist5k"].bindings)
  assert not set(benchmark.MOCK_BINDINGS) & set(bindings)
  default = benchmark.make_plan("mnist_resnet20", str(tmp_path), ["1"], None, False)
  assert default.episodes == benchmark.SUITES["mnist_resnet20"].episodes
  assert default.targets == (0.95, 0.98, 0.99)


def test_quick_keeps_the_first_seed_and_the_highest_target(tmp_path):
  for suite, highest in (("mnist5k", 0.98), ("mnist_resnet20", 0.99)):
    plan = benchmark.make_plan(suite, str(tmp_path), ["3", "1"], None, False, quick=True)
    assert plan.seeds == (3,) and plan.targets == (highest,) and plan.quick
    assert plan.name == f"{suite}_quick"
    assert [c[:2] for c in plan.cells()] == [(3, highest)] * len(verdicts.METHOD_ORDER)
    assert plan.run_dir(highest, 3, "purl") == str(tmp_path / suite / f"target{highest}"
                                                   / "seed3" / "purl")
    assert bound(plan.bindings(highest, 3), "load_splits.shuffle_seed") == "3"


def test_targets_pick_some_of_the_suites_targets_in_the_suites_order(tmp_path):
  plan = benchmark.make_plan("mnist_resnet20", str(tmp_path), ["1", "2"], None, False,
                             targets=["0.95"])
  assert plan.targets == (0.95,) and plan.name == "mnist_resnet20"
  assert [c[:2] for c in plan.cells()][::len(verdicts.METHOD_ORDER)] == [(1, 0.95), (2, 0.95)]
  both = benchmark.make_plan("mnist5k", str(tmp_path), ["0"], None, False,
                             targets=["0.98", "0.95"])
  assert both.targets == (0.95, 0.98)
  for targets, message in ((["0.97"], "does not have: use some of 0.95, 0.98"),
                           (["x"], "must be numbers")):
    with pytest.raises(PurlError, match=message):
      benchmark.make_plan("mnist_resnet20", str(tmp_path), ["0"], None, False, targets=targets)


def test_mock_plan_runs_elsewhere_on_tiny_budgets(tmp_path, monkeypatch):
  mock = benchmark.make_plan("imagenet_resnet50", str(tmp_path), ["0"], None, True)
  assert mock.root_dir == str(tmp_path / "mock" / "imagenet_resnet50")
  assert mock.name == "imagenet_resnet50_mock" and mock.episodes == 1
  bindings = mock.bindings(0.8, 0)
  assert "resnet50.weights = None" in bindings
  assert set(benchmark.MOCK_BINDINGS) <= set(bindings)
  quick = benchmark.make_plan("mnist5k", str(tmp_path), ["0"], 3, True, quick=True)
  assert quick.name == "mnist5k_quick_mock" and quick.episodes == 3
  assert quick.root_dir == str(tmp_path / "mock" / "mnist5k")
  monkeypatch.chdir(tmp_path)  # no --out_dir: runs/benchmarks under the current folder
  plan = benchmark.make_plan("mnist5k", None, ["0"], None, False)
  assert plan.root_dir == str(tmp_path / "runs" / "benchmarks" / "mnist5k")


def test_plan_checks_its_flags(tmp_path):
  for seeds, message in ((["a"], "must be integers"), (["1.5"], "must be integers"),
                         (["1", "1"], "each once"), (["0", "1", "0"], "each once"),
                         ([], "at least one")):
    with pytest.raises(PurlError, match=message):
      benchmark.make_plan("mnist5k", str(tmp_path), seeds, None, False)
  for episodes in (0, -3):
    with pytest.raises(PurlError, match="at least 1"):
      benchmark.make_plan("mnist5k", str(tmp_path), ["0"], episodes, False)
  for suite in ("imagenet_resnet50", "imagenet_mobilenet_v2", "cifar10"):
    with pytest.raises(PurlError, match="--mock"):  # no GPU on the test machines
      benchmark.make_plan(suite, str(tmp_path), ["0"], None, False)
  with pytest.raises(PurlError, match="unknown"):
    benchmark.make_plan("mnist", str(tmp_path), ["0"], None, False)
  assert not os.listdir(tmp_path)  # a plan writes nothing


def finish(plan, seed, target, method, seconds):
  """Fakes a finished cell's wall time, as run_cell leaves it beside the cell's folder."""
  files.write_json(plan.run_dir(target, seed, method) + ".elapsed.json", {"seconds": seconds})


def test_eta_uses_each_methods_mean_else_the_mean_of_all(tmp_path):
  plan = benchmark.make_plan("mnist5k", str(tmp_path), ["0", "1"], 1, False)
  remaining = [(1, 0.95, "purl"), (1, 0.95, "lamp"), (1, 0.95, "erk")]
  assert benchmark.eta_seconds(plan, remaining) is None  # nothing finished
  finish(plan, 0, 0.95, "purl", 10.0)
  assert benchmark.eta_seconds(plan, remaining) == pytest.approx(30.0)
  finish(plan, 0, 0.98, "purl", 20.0)
  finish(plan, 0, 0.95, "lamp", 3.0)
  # purl: mean 15; lamp: 3; erk (none finished): the mean of all, 11.
  assert benchmark.eta_seconds(plan, remaining) == pytest.approx(15.0 + 3.0 + 11.0)
  assert benchmark.eta_seconds(plan, remaining[1:2]) == pytest.approx(3.0)
  assert benchmark.eta_seconds(plan, []) == 0


def test_report_writes_the_results_file_figures_and_section(tmp_path):
  plan = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0", "1"], 4, False)
  expected = {}
  for number, (seed, target, method) in enumerate(plan.cells()):
    if (seed, target, method) == (1, 0.95, "gradual"):
      continue  # not finished: left out
    folder = plan.run_dir(target, seed, method)
    accuracy = round(0.9 + 0.001 * number, 4)
    expected[(method, target, seed)] = accuracy
    files.write_json(os.path.join(folder, files.RESULTS), results(accuracy, target))
    if method in verdicts.SEARCHES:
      files.write_json(os.path.join(folder, files.EPISODES),
                       [episode(0.9, 0.99, i) for i in range(3)] + [episode(0.95, 0.99, 3)])
    finish(plan, seed, target, method, 60.0)
  output = tmp_path / "docs" / "benchmarks.md"
  results_dir = tmp_path / "docs" / "benchmarks"
  section = benchmark.report(plan, str(output), str(results_dir))

  written = files.read_json(str(results_dir / "mnist5k.json"))
  assert written["benchmark"] == "mnist5k" and written["seeds"] == [0, 1]
  assert written["targets"] == [0.95, 0.98] and written["episodes"] == 4
  assert not written["quick"] and not written["mock"]
  got = {(c["method"], c["target"], c["seed"]): c["test_accuracy"] for c in written["cells"]}
  assert got == expected
  purl = next(c for c in written["cells"] if (c["method"], c["seed"]) == ("purl", 0))
  assert purl["episodes"] == 4 and purl["episodes_to_within"] == 4
  assert purl["wall_seconds"] == 60.0
  for kind in ("accuracy", "layers", "progress"):
    with open(results_dir / f"mnist5k_{kind}.png", "rb") as handle:
      assert handle.read(len(PNG_MAGIC)) == PNG_MAGIC

  assert section.heading == "mnist5k: LeNet-5 at 0.95 and 0.98"
  cells = written["cells"]
  for target in plan.targets:
    assert f"### Target sparsity {target}" in section.body
    assert verdicts.table(cells, target) in section.body
    for line in verdicts.goals(cells, target, target == 0.98):
      assert line in section.body
  for kind in ("accuracy", "layers", "progress"):  # relative to the markdown file
    assert f"![mnist5k_{kind}.png](benchmarks/mnist5k_{kind}.png)" in section.body
  finished = len(plan.cells()) - 1  # a minute each
  assert f"{finished} of {len(plan.cells())} cell processes took {finished} min" in section.body


def test_cells_in_the_committed_results_file_are_not_run_again(tmp_path, capsys):
  """A fresh clone has no cell folders, only the results file: its cells count as done
  (none is run: after_cell is never called), the report keeps them, and a file written
  with other bindings is not trusted."""
  plan = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0"], 4, False, quick=True)
  results_dir = str(tmp_path / "docs" / "benchmarks")
  for seed, target, method in plan.cells():
    folder = plan.run_dir(target, seed, method)
    files.write_json(os.path.join(folder, files.RESULTS), results(0.9, target))
    if method in verdicts.SEARCHES:
      files.write_json(os.path.join(folder, files.EPISODES),
                       [episode(a, 0.99) for a in (0.9, 0.95, 0.951)])
    finish(plan, seed, target, method, 30.0)
  benchmark.report(plan, None, results_dir)
  written = files.read_json(benchmark.results_path(plan, results_dir))
  purl = next(c for c in written["cells"] if c["method"] == "purl")
  assert purl["best_so_far"] == [0.9, 0.95, 0.951]
  assert next(c for c in written["cells"] if c["method"] == "lamp")["best_so_far"] is None

  os.rename(plan.root_dir, plan.root_dir + ".gone")  # as in a fresh clone
  ran = []
  benchmark.run_plan(plan, results_dir, after_cell=lambda: ran.append(1))
  assert not ran and "(finished before)" in capsys.readouterr().out
  assert benchmark.collect(plan, results_dir) == written["cells"]
  assert benchmark.eta_seconds(plan, plan.cells()[:2],
                               benchmark.recorded(plan, results_dir)) == pytest.approx(60.0)
  other = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0"], 5, False, quick=True)
  assert benchmark.recorded(other, results_dir) == {}  # 5 episodes, not 4: measure again


def test_the_whole_table_takes_the_cells_its_quick_run_finished(tmp_path, monkeypatch):
  """In a fresh clone (only the results files), the whole table runs none of the cells its
  --quick twin recorded, and --rerun forgets a method in both files."""
  root, results_dir = str(tmp_path / "runs"), str(tmp_path / "docs" / "benchmarks")
  quick = benchmark.make_plan("mnist5k", root, ["0"], 4, False, quick=True)

  def run_cell(plan, seed, target, method, results_dir):
    ran.append((seed, target, method))
    files.write_json(os.path.join(plan.run_dir(target, seed, method), files.RESULTS),
                     results(0.9, target))

  ran = []
  monkeypatch.setattr(benchmark, "run_cell", run_cell)
  benchmark.run_plan(quick, results_dir)
  benchmark.report(quick, None, results_dir)
  os.rename(root, root + ".gone")
  ran.clear()
  table = benchmark.make_plan("mnist5k", root, ["0", "1"], 4, False)
  benchmark.run_plan(table, results_dir)
  assert ran == [cell for cell in table.cells() if cell not in quick.cells()]
  assert quick.cells() and set(quick.cells()) <= set(table.cells())
  rerun = benchmark.make_plan("mnist5k", root, ["0"], 4, False, methods=["lamp"])
  benchmark.forget(rerun, results_dir)
  assert "lamp" not in {method for _, _, method in benchmark.recorded(quick, results_dir)}


def test_a_part_of_the_table_adds_to_the_results_file_and_drops_none_of_it(tmp_path):
  root, results_dir = str(tmp_path / "runs"), str(tmp_path / "docs" / "benchmarks")

  def run_part(seeds, targets):
    plan = benchmark.make_plan("mnist5k", root, seeds, 4, False, targets=targets)
    for seed, target, method in plan.cells():
      folder = plan.run_dir(target, seed, method)
      files.write_json(os.path.join(folder, files.RESULTS), results(0.9, target))
      if method in verdicts.SEARCHES:
        files.write_json(os.path.join(folder, files.EPISODES), [episode(0.95, 0.99)])
    section = benchmark.report(plan, None, results_dir)
    os.rename(root, f"{root}.{seeds[0]}")  # only the results file is left, as in a clone
    return section, files.read_json(benchmark.results_path(plan, results_dir))

  run_part(["0"], ["0.98"])
  section, written = run_part(["1"], ["0.95"])
  per_method = len(verdicts.METHOD_ORDER)
  assert [(c["seed"], c["target"]) for c in written["cells"]][::per_method] == [
      (0, 0.98), (1, 0.95)]  # seed 0's cells at 0.98 are kept, in plan order
  assert (written["seeds"], written["targets"]) == ([0, 1], [0.95, 0.98])
  assert "### Target sparsity 0.95" in section.body and "### Target sparsity 0.98" in section.body
  assert "Seeds 0, 1;" in section.body


def test_methods_run_only_their_cells_and_the_report_keeps_the_others(tmp_path, monkeypatch):
  plan = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0"], 4, False, quick=True,
                             methods=["lamp", "purl"])
  assert plan.methods == ("purl", "lamp")  # in METHOD_ORDER
  results_dir = str(tmp_path / "docs" / "benchmarks")

  def run_cell(plan, seed, target, method, results_dir):
    ran.append(method)
    files.write_json(os.path.join(plan.run_dir(target, seed, method), files.RESULTS),
                     results(0.9, target))

  ran = []
  monkeypatch.setattr(benchmark, "run_cell", run_cell)
  for seed, target, method in plan.cells():
    if method not in (*plan.methods, "erk"):  # erk is left unfinished, and not run
      run_cell(plan, seed, target, method, results_dir)
  ran.clear()
  benchmark.run_plan(plan, results_dir)
  assert ran == ["purl", "lamp"]
  shown = [c["method"] for c in benchmark.collect(plan, results_dir)]
  assert shown == [m for m in verdicts.METHOD_ORDER if m != "erk"]
  with pytest.raises(PurlError, match="--methods names lamb, which the benchmark does not"):
    benchmark.make_plan("mnist5k", str(tmp_path), ["0"], 4, False, methods=["lamb", "lamp"])


def test_rerun_measures_its_methods_again_and_keeps_the_other_cells(tmp_path, monkeypatch):
  every = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0"], 4, False, quick=True)
  plan = benchmark.make_plan("mnist5k", str(tmp_path / "runs"), ["0"], 4, False, quick=True,
                             methods=["gradual"])
  results_dir = str(tmp_path / "docs" / "benchmarks")

  def run_cell(plan, seed, target, method, results_dir):  # as the real one: once a folder
    path = os.path.join(plan.run_dir(target, seed, method), files.RESULTS)
    if not os.path.exists(path):
      ran.append(method)
      files.write_json(path, results(0.9, target))
      finish(plan, seed, target, method, 60.0)
      with open(plan.log_path(target, seed, method), "w", encoding="utf-8") as log:
        log.write("a cell's log\n")

  ran = []
  monkeypatch.setattr(benchmark, "run_cell", run_cell)
  benchmark.run_plan(every, results_dir)
  benchmark.report(every, None, results_dir)
  ran.clear()
  benchmark.forget(plan, results_dir)
  (seed, target, _), = every.cells()[:1]
  for method, kept in (("gradual", False), ("lamp", True)):  # its log and wall time go too
    assert os.path.exists(plan.log_path(target, seed, method)) == kept
    assert (benchmark.cell_seconds(plan, seed, target, method) == 60.0) == kept
  assert [key[2] for key in benchmark.recorded(every, results_dir)] == [
      m for m in verdicts.METHOD_ORDER if m != "gradual"]
  benchmark.run_plan(plan, results_dir)
  assert ran == ["gradual"]
  with pytest.raises(PurlError, match="--rerun would measure the whole table again"):
    benchmark.forget(every, results_dir)


def test_the_report_names_the_command_of_the_whole_table_quoted_for_a_shell(tmp_path):
  plan = benchmark.make_plan("mnist_resnet20", str(tmp_path), ["0", "1", "2"], None, False,
                             extra_bindings=["PruningEnv.prior = 'erk'"], variant="v")
  part = ["--benchmark=mnist_resnet20", "--variant=v", "--targets=0.98", "--seeds", "1,2",
          "--methods=purl", "--rerun", "--gin_bindings=PruningEnv.prior = 'erk'"]
  command = benchmark.table_command(plan, part)
  assert command.endswith(''' "--gin_bindings=PruningEnv.prior = 'erk'"''')  # pastes as typed
  words = shlex.split(command)
  assert words[words.index("--benchmark=mnist_resnet20"):] == [
      "--benchmark=mnist_resnet20", "--variant=v", "--gin_bindings=PruningEnv.prior = 'erk'"]
  two_seeds = dataclasses.replace(plan, seeds=(0, 2), targets=(0.98,))
  assert shlex.split(benchmark.table_command(two_seeds, part))[-2:] == [
      "--seeds=0,2", "--targets=0.98"]


def test_write_section_replaces_only_its_own_section(tmp_path):
  path = str(tmp_path / "docs" / "b.md")
  quick = "A: LeNet-5 (quick: one seed, one target)"  # a heading with regex characters
  markdown.write_section(path, markdown.Section("A", "alpha\n\n### sub\n\ntext"))
  markdown.write_section(path, markdown.Section(quick, "q-old"))
  markdown.write_section(path, markdown.Section("B", "bee"))
  markdown.write_section(path, markdown.Section("A", "gamma"))
  markdown.write_section(path, markdown.Section(quick, "q-new"))
  text = open(path, encoding="utf-8").read()
  assert text.startswith("# Benchmarks\n")
  assert "alpha" not in text and "### sub" not in text and "q-old" not in text
  assert text.count("## A\n") == 1 and text.count(f"## {quick}\n") == 1
  assert (text.index("## A\n") < text.index("gamma") < text.index(f"## {quick}")
          < text.index("q-new") < text.index("## B") < text.index("bee"))
  assert not os.path.exists(path + ".partial")


def test_a_variant_changes_the_searches_and_shares_the_other_cells(tmp_path):
  base = benchmark.make_plan("mnist5k", str(tmp_path), ["0"], 4, False, quick=True)
  plan = benchmark.make_plan("mnist5k", str(tmp_path), ["0"], 4, False, quick=True,
                             extra_bindings=["PruningEnv.prior = 'lamp'"], variant="prior")
  assert plan.name == "mnist5k_quick_prior" and plan.base_name == base.name
  for seed, target, method in plan.cells():
    bindings = plan.bindings(target, seed, method)
    # gradual's ramp and the matched rows' longer fine-tune: the search's budget
    if method in (*verdicts.SEARCHES, "gradual", "lamp_matched", "erk_matched"):
      assert plan.run_dir(target, seed, method) == os.path.join(
          base.root_dir, "prior", f"target{target}", f"seed{seed}", method)
      assert bindings == base.bindings(target, seed, method) + ["PruningEnv.prior = 'lamp'"]
    else:
      assert plan.run_dir(target, seed, method) == base.run_dir(target, seed, method)
      assert bindings == base.bindings(target, seed, method)
  results_dir = str(tmp_path / "docs")
  assert benchmark.kept_dense(plan, results_dir, 0) == benchmark.kept_dense(base, results_dir, 0)
  for name, bindings in (("bad name", ["x = 1"]), ("prior", [])):
    with pytest.raises(PurlError, match="--variant"):
      benchmark.make_plan("mnist5k", str(tmp_path), ["0"], 4, False, extra_bindings=bindings,
                          variant=name)


# Channel pruning (the mnist_resnet20_channels suite): fake cells of channel runs.
GROUPS = ("conv1", "stage1_block1_conv1", "stage2_block1_conv2", "stage3_block1_conv2")
CHANNEL = "mnist_resnet20_channels"


def channel_results(accuracy, target=0.9, removed=None, speedups=(2.0, 1.6), fractions=None,
                    dense_flops=8_000_000, dense_params=70_000, reached=None, reward=None):
  """A channel run's results.json: global_sparsity is the FLOPs removed, `speed` is
  run/speed.measure_speed's dict, the speedups also at the top level."""
  removed = target if removed is None else removed
  pruned_flops = round(dense_flops * (1 - removed))
  pruned_params = dense_params // 4
  fractions = fractions or {group: 0.5 for group in GROUPS}
  latency = {"1": 1.0, "2": 0.6}
  speed = {"dense": {"params": dense_params, "flops": dense_flops, "latency_ms": latency,
                     "throughput_images_per_s": 1000.0},
           "pruned": {"params": pruned_params, "flops": pruned_flops,
                      "latency_ms": {"1": 1.0 / speedups[0], "2": 0.6 / speedups[1]},
                      "throughput_images_per_s": 3000.0},
           "speedup_1_thread": speedups[0], "speedup_2_threads": speedups[1],
           "throughput_speedup": 3.0}
  out = results(accuracy, target, sparsity=removed)
  out.update({"granularity": "channel", "target_flops": target, "allocation": dict(fractions),
              "reached_target": reached_target(removed, target) if reached is None else reached,
              "flops_total": dense_flops, "flops_remaining": pruned_flops,
              "params_total": dense_params, "params_remaining": pruned_params,
              "speed": speed, "speedup_1_thread": speedups[0],
              "speedup_2_threads": speedups[1]})
  if reward is not None:
    out["pruned_reward_accuracy"] = reward
  return out


def channel_cell(method, seed, accuracy, target=0.9, episodes=None, wall=None, **kwargs):
  return benchmark.cell_record(
      benchmark.Run(method, target, seed, channel_results(accuracy, target, **kwargs),
                    episodes, wall), verdicts.CHANNEL)


# Channel episodes at FLOPs budget 0.9 whose best comes within 0.5 pt at the 1st / 4th.
C_AT_1 = [episode(0.95, 0.91)] * 4
C_AT_4 = [episode(0.9, 0.91)] * 3 + [episode(0.95, 0.91)]


def channel_table(accuracies, target=0.9, purl_episodes=C_AT_1, episodic_episodes=C_AT_4,
                  **kwargs):
  """Cells of {method: [accuracy of seed 0, 1, ...]} at one budget."""
  cells = []
  for method, values in accuracies.items():
    for seed, accuracy in enumerate(values):
      episodes = {"purl": purl_episodes, "episodic": episodic_episodes,
                  "random": C_AT_4}.get(method)
      cells.append(channel_cell(method, seed, accuracy, target, episodes, **kwargs))
  return cells


def test_the_channel_suite_plans_flops_budgets_and_every_channel_method(tmp_path):
  plan = benchmark.make_plan(CHANNEL, str(tmp_path), ["0", "1", "2"], None, False)
  suite = benchmark.SUITES[CHANNEL]
  assert suite.kind is verdicts.CHANNEL and suite.runs_here
  assert plan.targets == (0.8,) == suite.targets and plan.episodes == suite.episodes
  assert plan.methods == verdicts.CHANNEL_METHOD_ORDER == (
      "purl", "episodic", "random", "uniform", "uniform_keep_ends", "global_filter", "bn_scale",
      "uniform_matched", "uniform_keep_ends_matched", "global_filter_matched",
      "bn_scale_matched")
  cells = plan.cells()
  assert len(cells) == 3 * 11 and cells[0] == (0, 0.8, "purl")
  assert cells[-1] == (2, 0.8, "bn_scale_matched")
  assert not {"lamp", "erk", "gradual", "global_magnitude"} & {c[2] for c in cells}
  bindings = plan.bindings(0.8, 2, "global_filter")
  assert bound(bindings, "train_eval.target_flops") == "0.8"
  assert not any(b.startswith("train_eval.target_sparsity") for b in bindings)
  for name in ("train_eval.seed", "load_splits.reward_seed", "load_splits.shuffle_seed"):
    assert bound(bindings, name) == "2"  # a seed changes the split, order, search, fine-tune
  assert benchmark.method_bindings("bn_scale_matched", suite.kind) == [
      "train_eval.method = 'bn_scale'", "train_eval.match_search_steps = True"]
  assert benchmark.method_bindings("bn_scale", suite.kind) == ["train_eval.method = 'bn_scale'"]
  assert benchmark.method_bindings("lamp_matched") == [  # the weight suites' rows unchanged
      "train_eval.method = 'lamp'", "train_eval.match_search_steps = True"]
  quick = benchmark.make_plan(CHANNEL, str(tmp_path), ["4", "1"], None, False, quick=True)
  assert quick.seeds == (4,) and quick.targets == (0.8,) == (suite.quick_target,)
  assert [c[2] for c in quick.cells()] == list(verdicts.CHANNEL_METHOD_ORDER)
  with pytest.raises(PurlError, match="--methods names lamp, which the benchmark does not"):
    benchmark.make_plan(CHANNEL, str(tmp_path), ["0"], None, False, methods=["lamp", "purl"])
  with pytest.raises(PurlError, match="--rerun would measure the whole table again"):
    benchmark.forget(plan, str(tmp_path))
  varied = benchmark.make_plan(CHANNEL, str(tmp_path), ["0"], None, False, quick=True,
                               extra_bindings=["PruningEnv.retrain_steps = 4"], variant="r4")
  assert varied.run_dir(0.8, 0, "uniform_matched") == str(
      tmp_path / CHANNEL / "r4" / "target0.8" / "seed0" / "uniform_matched")
  assert varied.run_dir(0.8, 0, "uniform") == quick.run_dir(0.8, 0, "uniform")


def test_the_channel_gin_file_prunes_channels_of_the_width_8_resnet():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin",
                      f"{benchmark.SUITES[CHANNEL].gin_file}.gin")
  lines = {line.split(" = ", 1)[0]: line.split(" = ", 1)[1]
           for line in open(path, encoding="utf-8").read().splitlines()
           if " = " in line and not line.startswith("#")}
  assert lines["train_eval.granularity"] == "'channel'"
  assert lines["load_splits.dataset"] == "'mnist_full'"
  assert lines["load_splits.reward_split"] == "'validation'"  # rewards never on test
  assert (lines["cifar_resnet.depth"], lines["cifar_resnet.width"]) == ("20", "8")
  assert "train_eval.target_sparsity" not in lines and "PruningEnv.prior" not in lines


def test_a_channel_cell_records_flops_parameters_and_speed():
  record = channel_cell("purl", 1, 0.97, 0.9, C_AT_4, wall=100.0, removed=0.9021,
                        speedups=(2.5, 1.9))
  assert record["flops_removed"] == 0.9021 and record["reached_target"] is True
  assert (record["dense_flops"], record["pruned_flops"]) == (8_000_000, 783_200)
  assert (record["dense_params"], record["pruned_params"]) == (70_000, 17_500)
  assert (record["speedup_1_thread"], record["speedup_2_threads"]) == (2.5, 1.9)
  assert record["throughput_speedup"] == 3.0
  assert record["latency_ms"]["pruned"] == {"1": 0.4, "2": pytest.approx(0.6 / 1.9)}
  assert record["latency_ms"]["dense"] == {"1": 1.0, "2": 0.6}
  assert record["allocation"] == {group: 0.5 for group in GROUPS}
  assert record["episodes_to_within"] == 4  # episodes' sparsity is the FLOPs removed
  below = channel_cell("uniform", 0, 0.9, 0.9, removed=0.85)
  assert below["reached_target"] is False and below["episodes_to_within"] is None
  # Without the speed measurement (export_tflite off): the counts of the run, no speedups.
  bare = channel_results(0.9)
  for key in ("speed", "speedup_1_thread", "speedup_2_threads"):
    del bare[key]
  record = benchmark.cell_record(benchmark.Run("bn_scale", 0.9, 0, bare), verdicts.CHANNEL)
  assert (record["dense_flops"], record["pruned_flops"]) == (8_000_000, 800_000)
  assert record["speedup_1_thread"] is None and record["throughput_speedup"] is None
  assert "flops_removed" not in benchmark.cell_record(
      benchmark.Run("lamp", 0.95, 0, results(0.9)))  # weight cells as before


EVERY = {"purl": [0.970, 0.972, 0.968], "episodic": [0.960, 0.961, 0.962],
         "random": [0.950, 0.955, 0.958],
         "uniform": [0.900, 0.905, 0.910], "uniform_keep_ends": [0.930, 0.931, 0.932],
         "global_filter": [0.940, 0.945, 0.942], "bn_scale": [0.935, 0.936, 0.937],
         "uniform_matched": [0.940, 0.941, 0.942],
         "uniform_keep_ends_matched": [0.950, 0.951, 0.952],
         "global_filter_matched": [0.960, 0.962, 0.962],
         "bn_scale_matched": [0.955, 0.956, 0.957]}


def test_the_channel_table_names_flops_removed_and_every_method():
  cells = channel_table(EVERY)
  lines = verdicts.table(cells, 0.9, verdicts.CHANNEL).splitlines()
  assert lines[0].startswith("| method | FLOPs removed | test accuracy % (mean ± sd")
  assert len(lines) == 2 + 11
  assert [row.split(" | ")[0][2:] for row in lines[2:]] == [
      verdicts.CHANNEL.names[m] for m in verdicts.CHANNEL_METHOD_ORDER]
  purl = lines[2].split(" | ")
  assert purl[1] == "0.9000" and purl[2] == "97.00 ± 0.20 (96.80–97.20)"
  assert purl[5] == "1.0 (1, 1, 1) of 4 |"
  assert lines[-1].split(" | ")[0] == (
      "| batch-norm scale (network slimming's ranking), fine-tuned as long as a search trains")


def test_channel_goals_need_half_a_point_on_every_seed_at_the_equal_budget(monkeypatch):
  cells = channel_table(EVERY)
  lines = channels.goals(cells, 0.9)
  assert lines[0] == (
      "- PuRL at least 0.5 pt ahead of the best of the heuristics and random search on every "
      "seed at the equal budget: MET (per seed: seed 0: +1.00 (global filter ranking (L1 over "
      "the group mean), fine-tuned as long as a search trains), seed 1: +1.00 (global filter "
      "ranking (L1 over the group mean), fine-tuned as long as a search trains), seed 2: "
      "+0.60 (global filter ranking (L1 over the group mean), fine-tuned as long as a search "
      "trains) pt).")
  assert lines[1] == (
      "- Dense reward within 0.5 pt of its best in at most half the episodes of the "
      "episodic reward: MET (1.0 vs 4.0 evaluated episodes, means over seeds).")
  assert len(lines) == 2
  # One seed under the margin (random search 0.4 pt behind PuRL on seed 2): NOT MET, though
  # the one-shot rows at the shared fine-tune are far behind.
  close = dict(EVERY, random=[0.950, 0.955, 0.964])
  line = channels.goals(channel_table(close), 0.9)[0]
  assert ": NOT MET (per seed: " in line and "seed 2: +0.40 (random search)" in line
  monkeypatch.setattr(channels, "MARGIN", 0.011)  # a wider margin fails every seed
  assert ": NOT MET" in channels.goals(cells, 0.9)[0]
  monkeypatch.undo()
  # The episodic reward as fast as the dense one: the speed goal fails.
  slow = channel_table(EVERY, purl_episodes=C_AT_4)
  assert "episodic reward: NOT MET (4.0 vs 4.0" in channels.goals(slow, 0.9)[1]
  # A cell below the budget is named with its FLOPs removed.
  missed = cells + [channel_cell("uniform", 3, 0.9, 0.9, removed=0.85)]
  assert channels.goals(missed, 0.9)[-1] == (
      "- Below the FLOPs budget: uniform width seed 3 (0.850).")
  assert channels.goals([c for c in cells if c["method"] == "purl"], 0.9) == [
      "- Goals: not evaluated (PuRL or its rivals at the equal budget missing at this "
      "budget)."]


def test_channel_comparisons_pair_purl_with_the_best_rival_of_each_seed():
  at_shared = dict(EVERY, random=[0.950, 0.975, 0.958], global_filter=[0.980, 0.945, 0.942])
  shared, equal = channels.comparisons(channel_table(at_shared), 0.9)
  assert shared == (
      "- PuRL minus the best of the heuristics and random search at the shared fine-tune (a "
      "one-shot allocation gets only the fine-tune), per seed: seed 0: -1.00 (global filter "
      "ranking (L1 over the group mean)), seed 1: -0.30 (random search), seed 2: +1.00 "
      "(random search) pt.")
  assert equal.startswith("- PuRL minus the best of the heuristics and random search at the "
                          "equal budget (the one-shot allocations fine-tuned as long as a "
                          "search trains), per seed: seed 0: +1.00 (global filter ranking")
  assert "seed 1: -0.30 (random search)" in equal
  # A seed a rival has not finished is left out, and said so.
  partial = [c for c in channel_table(EVERY)
             if not (c["method"] == "global_filter_matched" and c["seed"] == 2)]
  equal = channels.comparisons(partial, 0.9)[1]
  assert "seed 2" not in equal and equal.endswith(
      "; over seeds 0, 1 only, the ones every compared method has finished.")


def test_the_separation_line_judges_uniform_width_on_the_reward_split_not_test():
  # results() puts every reward-split accuracy 1 pt under the test accuracy.
  assert channels.separation(channel_table(EVERY), 0.9) == [
      "- The budget separates allocations (uniform width at least 2 pt below the best other "
      "heuristic after the shared fine-tune, on the reward split: validation digits, never "
      "the test split): yes (global filter ranking (L1 over the group mean) 93.23 vs uniform "
      "width 89.50 %, +3.73 pt; on test +3.73 pt)."]
  near = dict(EVERY, uniform=[0.925, 0.925, 0.925])  # 1.73 pt behind: not enough
  assert ": no (" in channels.separation(channel_table(near), 0.9)[0]
  assert "+1.73 pt; on test +1.73 pt" in channels.separation(channel_table(near), 0.9)[0]
  # Far apart on test, close on the reward split: the reward split decides.
  cells = channel_table({m: v for m, v in EVERY.items() if m != "uniform"})
  cells += [channel_cell("uniform", s, 0.90, reward=0.93) for s in range(3)]
  line = channels.separation(cells, 0.9)[0]
  assert ": no (global filter ranking (L1 over the group mean) 93.23 vs uniform width 93.00 " \
         "%, +0.23 pt; on test +4.23 pt)." in line
  assert "not evaluated" in channels.separation(channel_table({"purl": [0.9]}), 0.9)[0]


def test_the_latency_table_gives_every_networks_flops_and_speedups():
  cells = channel_table({"purl": [0.97, 0.97], "uniform": [0.9, 0.9]}, removed=0.9)
  cells += [channel_cell("global_filter", 0, 0.94, speedups=(3.0, 2.0)),
            channel_cell("global_filter", 1, 0.94, speedups=(2.0, 1.0))]
  lines = channels.speed_table(cells, 0.9).splitlines()
  assert lines[0] == ("| network | FLOPs (of dense) | parameters (of dense) | LiteRT ms, 1 "
                      "thread | speedup, 1 thread | speedup, 2 threads | Keras throughput "
                      "speedup |")
  assert lines[2] == ("| dense | 8.00 M (100 %) | 70,000 (100 %) | 1.000 (1.000–1.000) | 1 | "
                      "1 | 1 |")
  assert lines[3] == ("| PuRL (dense reward) | 0.80 M (10.0 %) | 17,500 (25.0 %) | 0.500 "
                      "(0.500–0.500) | 2.00 (2.00–2.00) | 1.60 (1.60–1.60) | 3.00 "
                      "(3.00–3.00) |")
  assert lines[4].startswith("| uniform width | 0.80 M (10.0 %)")
  assert lines[5] == ("| global filter ranking (L1 over the group mean) | 0.80 M (10.0 %) | "
                      "17,500 (25.0 %) | 0.417 (0.333–0.500) | 2.50 (2.00–3.00) | "
                      "1.50 (1.00–2.00) | 3.00 (3.00–3.00) |")
  assert len(lines) == 6
  bare = channel_results(0.9)
  for key in ("speed", "speedup_1_thread", "speedup_2_threads"):
    del bare[key]
  cells = [benchmark.cell_record(benchmark.Run("purl", 0.9, 0, bare), verdicts.CHANNEL)]
  assert channels.speed_table(cells, 0.9).splitlines()[3] == (
      "| PuRL (dense reward) | 0.80 M (10.0 %) | 17,500 (25.0 %) | — | — | — | — |")


def test_the_allocation_table_puts_purl_beside_the_best_heuristic():
  purl = {group: value for group, value in zip(GROUPS, (0.0, 0.5, 0.75, 0.9))}
  bn = {group: value for group, value in zip(GROUPS, (0.5, 0.5, 0.5, 0.5))}
  cells = [channel_cell("purl", s, 0.97, fractions=purl) for s in range(2)]
  cells += [channel_cell("uniform", s, 0.90, fractions={g: 0.7 for g in GROUPS})
            for s in range(2)]
  cells += [channel_cell("bn_scale", s, a, fractions=bn) for s, a in enumerate((0.95, 0.93))]
  cells += [channel_cell("global_filter", s, 0.93) for s in range(2)]  # 93.0 < 94.0: not best
  cells += [channel_cell("bn_scale_matched", s, 0.99) for s in range(2)]  # not a heuristic row
  assert channels.best_heuristic(cells, 0.9) == "bn_scale"
  lines = channels.allocation_table(cells, 0.9).splitlines()
  assert lines[0] == ("| group | PuRL (dense reward) (seeds 0, 1; mean) | batch-norm scale "
                      "(network slimming's ranking) (seeds 0, 1; mean) |")
  assert lines[1] == "| --- | --- | --- |"
  assert lines[2] == "| conv1 | 0.00, 0.00; 0.00 | 0.50, 0.50; 0.50 |"
  assert lines[5] == "| stage3_block1_conv2 | 0.90, 0.90; 0.90 | 0.50, 0.50; 0.50 |"
  assert len(lines) == 6
  one = channels.allocation_table([c for c in cells if c["seed"] == 0], 0.9).splitlines()
  assert one[0].endswith("(seeds 0) |") and one[2] == "| conv1 | 0.00 | 0.50 |"
  assert channels.allocation_table(cells, 0.8) == "No allocation at this budget yet."


def test_the_channel_report_writes_tables_goals_latency_and_allocations(tmp_path, monkeypatch):
  # Two budgets, the first deciding (--quick's).
  monkeypatch.setitem(benchmark.SUITES, CHANNEL, dataclasses.replace(
      benchmark.SUITES[CHANNEL], targets=(0.9, 0.95), quick_target=0.9))
  plan = benchmark.make_plan(CHANNEL, str(tmp_path / "runs"), ["0", "1"], 4, False)
  for seed, target, method in plan.cells():
    folder = plan.run_dir(target, seed, method)
    accuracy = EVERY[method][seed] - (0.05 if target == 0.95 else 0.0)
    files.write_json(os.path.join(folder, files.RESULTS), channel_results(accuracy, target))
    if method in verdicts.SEARCHES:
      files.write_json(os.path.join(folder, files.EPISODES),
                       C_AT_4 if method == "episodic" else [episode(0.95, 0.96)] * 4)
    finish(plan, seed, target, method, 60.0)
  output = tmp_path / "docs" / "results.md"
  results_dir = tmp_path / "docs" / "benchmarks"
  section = benchmark.report(plan, str(output), str(results_dir))
  written = files.read_json(str(results_dir / f"{CHANNEL}.json"))
  assert written["targets"] == [0.9, 0.95] and len(written["cells"]) == 2 * 2 * 11
  assert "train_eval.target_flops = <target>" in written["bindings"]
  cells = written["cells"]
  assert all(c["speedup_1_thread"] == 2.0 for c in cells)
  body = section.body
  assert "### FLOPs budget 0.9 (10 % of the dense FLOPs kept) (the deciding budget)" in body
  assert "### FLOPs budget 0.95 (5 % of the dense FLOPs kept)\n" in body
  assert "Target sparsity" not in body and "gradual" not in body
  for target in (0.9, 0.95):
    for part in (verdicts.table(cells, target, verdicts.CHANNEL),
                 channels.speed_table(cells, target), channels.allocation_table(cells, target),
                 *channels.comparisons(cells, target), *channels.goals(cells, target),
                 *channels.separation(cells, target)):
      assert part in body
  assert body.count(": MET (per seed") == 2
  for kind in ("accuracy", "layers", "progress"):
    with open(results_dir / f"{CHANNEL}_{kind}.png", "rb") as handle:
      assert handle.read(len(PNG_MAGIC)) == PNG_MAGIC
    assert f"![{CHANNEL}_{kind}.png](benchmarks/{CHANNEL}_{kind}.png)" in body
  assert f"{len(plan.cells())} of {len(plan.cells())} cell processes took 44 min" in body
  # A fresh clone continues from the results file alone, cell by cell.
  os.rename(plan.root_dir, plan.root_dir + ".gone")
  assert benchmark.collect(plan, str(results_dir)) == cells


VARIANTS = [name.split("/", 1)[1] for name in configs.names() if name.startswith("variants/")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_shipped_variant_binds_real_parameters_of_its_suite_config(variant):
  """A variant goes on top of its suite's config (channels_*: mnist_resnet20_channels);
  a misspelt parameter or configurable is a parse error here, not an hour into a run."""
  suite = "mnist_resnet20_channels" if variant.startswith("channels_") else "mnist_resnet20"
  gin.clear_config()
  try:
    pipeline.parse_gin([suite], benchmark.variant_bindings(variant))
  finally:
    gin.clear_config()
