"""tools/benchmark.py: the comparison table, episodes-to-best, plans and the profiler (no runs)."""
import statistics
import types

import pytest

import purl_tf  # noqa: F401
from purl_tf.errors import PurlError

from conftest import load_tool



@pytest.fixture(scope="module")
def benchmark():
  """tools/benchmark.py's modules in tools/bench, loaded as the script loads them."""
  load_tool("benchmark")
  from bench import common, comparison  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(common=common, comparison=comparison)


def episode(accuracy, sparsity, index=0, policy="collect"):
  """An episodes.json record with what the table reads."""
  return {"episode": index, "policy": policy, "episode_return": 0.0, "accuracy": accuracy,
          "sparsity": sparsity, "epsilon": 0.0, "seconds": 1.0, "allocation": {},
          "levels": [0.5] * 4, "rewards": [0.0] * 4, "retrain_seconds": 0.5,
          "measure_seconds": 0.1, "mask_seconds": 0.0}


def test_episodes_to_within_counts_evaluated_episodes_until_near_the_final_best(benchmark):
  target = 0.9
  episodes = [episode(0.99, 0.5),   # below the target: never the answer
              episode(0.90, 0.92),  # 1st at target, 5 points under the final best
              episode(0.946, 0.95),  # 0.4 points under 0.95: within 0.5 points
              episode(0.80, 0.97),
              episode(0.95, 0.93, policy="greedy")]  # the final best
  assert benchmark.comparison.episodes_to_within(episodes, target) == 3
  # Exactly 0.5 points under counts as within; the margin is a parameter.
  assert benchmark.comparison.episodes_to_within(episodes[:2] + [episode(0.945, 0.95)] + episodes[3:],
                                      target) == 3
  assert benchmark.comparison.episodes_to_within(episodes, target, margin=0.0) == 5
  assert benchmark.comparison.episodes_to_within(episodes[:1], target) is None  # never at the target
  assert benchmark.comparison.episodes_to_within([], target) is None


def run(benchmark, method, seed, accuracy, target=0.95, sparsity=None, episodes=None,
        seconds=(100.0, 10.0), steps=(2000, 162)):
  results = {"global_sparsity": sparsity or target, "pruned_test_accuracy": accuracy,
             "dense_test_accuracy": 0.97, "search_seconds": seconds[0],
             "finetune_seconds": seconds[1], "search_retrain_steps": steps[0],
             "finetune_steps": steps[1]}
  return benchmark.comparison.Run(method, target, seed, results, episodes)


def test_table_gives_mean_spread_time_steps_and_episodes_to_best(benchmark):
  near = [episode(0.9, 0.96), episode(0.95, 0.96), episode(0.951, 0.96)]  # 2 of 3
  late = [episode(0.9, 0.96)] * 3 + [episode(0.95, 0.96)]  # 4 of 4
  runs = [run(benchmark, "purl", 0, 0.96, episodes=near),
          run(benchmark, "purl", 1, 0.97, episodes=late),
          run(benchmark, "purl", 2, 0.95, episodes=near),
          run(benchmark, "global_magnitude", 0, 0.90, seconds=(0.1, 9.9), steps=(0, 162)),
          run(benchmark, "global_magnitude", 1, 0.92, seconds=(0.1, 9.9), steps=(0, 162))]
  summary = benchmark.comparison.method_summary([r for r in runs if r.method == "purl"])
  assert summary["accuracy"].mean == pytest.approx(0.96)
  assert summary["accuracy"].std == pytest.approx(statistics.stdev([0.96, 0.97, 0.95]))
  assert (summary["accuracy"].low, summary["accuracy"].high) == (0.95, 0.97)
  assert summary["to_within"] == [2, 4, 2]
  table = benchmark.comparison.comparison_table(runs, 0.95).splitlines()
  assert len(table) == 4  # header, rule, purl, global magnitude
  purl_row = table[2].split(" | ")
  assert purl_row[0] == "| PuRL (dense reward)"
  assert purl_row[1] == "0.9500"
  assert purl_row[2] == "96.00 ± 1.00 (95.00–97.00)"
  assert purl_row[3] == "110 s"
  assert purl_row[4] == "2,162"
  assert purl_row[5] == "2.7 (2, 4, 2) of 4 |"
  global_row = table[3].split(" | ")
  assert global_row[2] == "91.00 ± 1.41 (90.00–92.00)"
  assert global_row[4] == "162" and global_row[5] == "— |"


def test_goals_say_met_or_not_met_with_the_numbers(benchmark):
  fast = [episode(0.95, 0.96)] * 4  # within at 1
  slow = [episode(0.9, 0.96)] * 3 + [episode(0.95, 0.96)]  # within at 4
  runs = [run(benchmark, "purl", 0, 0.96, episodes=fast),
          run(benchmark, "episodic", 0, 0.96, episodes=slow),
          run(benchmark, "global_magnitude", 0, 0.97),
          run(benchmark, "uniform", 0, 0.90, sparsity=0.93)]
  lines = benchmark.comparison.goals(runs, 0.95)
  assert "global magnitude: NOT MET (96.00 % vs 97.00 %" in lines[0]
  assert "uniform: MET (96.00 % vs 90.00 %" in lines[1]
  assert "episodic reward: MET (1.0 vs 4.0 evaluated episodes" in lines[2]
  assert "Below the target sparsity: uniform seed 0 (0.930)" in lines[3]
  never = [episode(0.99, 0.5)]
  lines = benchmark.comparison.goals([run(benchmark, "purl", 0, 0.9, episodes=never),
                           run(benchmark, "episodic", 0, 0.9, episodes=slow)], 0.95)
  assert "not comparable" in lines[0]


def test_plan_checks_its_flags_and_lays_out_the_runs(benchmark, tmp_path):
  plan = benchmark.comparison.make_plan("mnist5k", str(tmp_path), ["0", "2"], 7, False, ["x = 1"])
  assert plan.seeds == (0, 2) and plan.episodes == 7
  assert plan.run_dir(0.98, 2, "random") == str(tmp_path / "mnist5k" / "target0.98" / "seed2"
                                                / "random")
  bindings = plan.bindings(0.98, 2)
  assert bindings[-4:] == ["train_eval.target_sparsity = 0.98", "train_eval.seed = 2",
                           "SearchRunner.num_episodes = 7", "x = 1"]
  assert any(b.startswith("PruningEnv.levels = (0.0, 0.5") for b in bindings)
  mock = benchmark.comparison.make_plan("imagenet_resnet50", str(tmp_path), ["0"], None, True)
  assert mock.root_dir == str(tmp_path / "mock" / "imagenet_resnet50")
  assert "resnet50.weights = None" in mock.bindings(0.8, 0)
  for seeds, message in ((["a"], "must be integers"), (["1", "1"], "each once"),
                         ([], "at least one")):
    with pytest.raises(PurlError, match=message):
      benchmark.comparison.make_plan("mnist5k", str(tmp_path), seeds, None, False)
  with pytest.raises(PurlError, match="at least 1"):
    benchmark.comparison.make_plan("mnist5k", str(tmp_path), ["0"], 0, False)
  with pytest.raises(PurlError, match="--mock"):  # no GPU on the test machines
    benchmark.comparison.make_plan("imagenet_resnet50", str(tmp_path), ["0"], None, False)


def test_write_section_replaces_only_its_own_section(benchmark, tmp_path):
  path = str(tmp_path / "b.md")
  benchmark.common.write_section(path, benchmark.common.Section("A", "one\n\n### sub\n\ntext"))
  benchmark.common.write_section(path, benchmark.common.Section("B", "two"))
  benchmark.common.write_section(path, benchmark.common.Section("A", "three"))
  text = open(path).read()
  assert "one" not in text and "### sub" not in text
  assert text.index("## A") < text.index("three") < text.index("## B") < text.index("two")
