"""PuRL against its baselines over seeds: the runs (purl_tf.train, one method each) and the
tables."""
import dataclasses
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import tensorflow as tf

from bench.common import command_line, machine, REPO, Section
from purl_tf import files, search
from purl_tf.errors import PurlError
from purl_tf.results import reached_target

FLAGS = flags.FLAGS

# --root_dir and --gin_bindings are purl_tf.train's flags (tools/benchmark.py imports it).
flags.DEFINE_list("seeds", ["0", "1", "2"], "Comparison benchmarks: seeds to run.")
flags.DEFINE_integer("episodes", None, "Collect episodes of every search (default: the "
                     "benchmark's: 50 for mnist5k and search_speed, 150 on GPU).")
flags.DEFINE_bool("mock", False, "Comparison benchmarks: run on tfds mock data with tiny "
                  "budgets (checks a GPU benchmark's definition on any machine).")

# In the order they run: the seed's first PuRL run pre-trains the dense model they share.
METHOD_ORDER = ("purl", "episodic", "random", "global_magnitude", "uniform", "gradual")
METHOD_NAMES = {
    "purl": "PuRL (dense reward)",
    "episodic": "PuRL agent, episodic reward",
    "random": "random search",
    "global_magnitude": "global magnitude",
    "uniform": "uniform",
    "gradual": "gradual (tfmot PolynomialDecay)",
}
SEARCHES = ("purl", "episodic", "random")  # methods that leave search/episodes.json
RL_SEARCHES = ("purl", "episodic")
WITHIN = 0.005  # "within 0.5 points": reward-split accuracy, as a fraction
# The default grid tops at 0.98, so global 0.98 would need every layer at its maximum.
WIDE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
# Shrinks a GPU config to seconds on tfds mock data (as tests/test_configs.py does).
MOCK_BINDINGS = ("load_splits.image_size = 32", "load_splits.batch_size = 4",
                 "load_splits.eval_batch_size = 8", "load_splits.reward_size = 8",
                 "load_splits.shuffle_buffer = 16", "PruningEnv.retrain_steps = 1",
                 "make_strategy.name = 'default'", "SearchRunner.eval_interval = 1",
                 "finetune.epochs = 0.5", "pretrain.epochs = 0")
MOCK_EXAMPLES = 24  # per split
# Beside each run folder: wall seconds of its whole process (start-up, data, pre-training).
ELAPSED = ".elapsed.json"


@dataclasses.dataclass(frozen=True)
class Suite:
  """A named benchmark: one gin config, its targets and the bindings put on top of it."""
  name: str
  title: str
  gin_file: str  # relative to the repository
  targets: Tuple[float, ...]
  episodes: int  # SearchRunner.num_episodes of every search
  bindings: Tuple[str, ...] = ()
  mock_bindings: Tuple[str, ...] = ()  # further bindings of --mock runs
  runs_here: bool = False  # measurable on a 2-core CPU machine


SUITES = {
    "mnist5k": Suite(
        "mnist5k", "mnist5k: LeNet-5 at 0.95 and 0.98", "gin/quickstart.gin", (0.95, 0.98),
        episodes=50,
        bindings=("train_eval.export_tflite = False", f"PruningEnv.levels = {WIDE_LEVELS}",
                  "SearchRunner.eval_interval = 10"),
        runs_here=True),
    "cifar10": Suite(
        "cifar10", "CIFAR-10: ResNet-20 at 0.8", "gin/cifar10.gin", (0.8,), episodes=150,
        bindings=("train_eval.export_tflite = False",)),
    "imagenet_resnet50": Suite(
        "imagenet_resnet50", "ImageNet: ResNet-50 at 0.8", "gin/resnet50.gin", (0.8,),
        episodes=150, bindings=("train_eval.export_tflite = False",),
        mock_bindings=("resnet50.weights = None",)),
    "imagenet_mobilenet_v2": Suite(
        "imagenet_mobilenet_v2", "ImageNet: MobileNet-V2 at 0.7", "gin/mobilenet_v2.gin",
        (0.7,), episodes=150, bindings=("train_eval.export_tflite = False",),
        mock_bindings=("mobilenet_v2.weights = None",)),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where and how every run of a suite goes."""
  suite: Suite
  root_dir: str
  seeds: Tuple[int, ...]
  episodes: int
  mock: bool
  extra_bindings: Tuple[str, ...] = ()

  def run_dir(self, target: float, seed: int, method: str) -> str:
    return os.path.join(self.root_dir, f"target{target}", f"seed{seed}", method)

  def dense_dir(self, seed: int) -> str:
    """The run whose pre-trained dense model every method of the seed starts from."""
    return self.run_dir(self.suite.targets[0], seed, METHOD_ORDER[0])

  def bindings(self, target: float, seed: int) -> List[str]:
    """The gin bindings of every method's run at (target, seed), in order."""
    mock = (*MOCK_BINDINGS, *self.suite.mock_bindings) if self.mock else ()
    return [*self.suite.bindings, *mock, f"train_eval.target_sparsity = {target}",
            f"train_eval.seed = {seed}", f"SearchRunner.num_episodes = {self.episodes}",
            *self.extra_bindings]


def make_plan(suite_name: str, root_dir: Optional[str], seeds: Sequence[str],
              episodes: Optional[int], mock: bool, extra_bindings: Sequence[str] = ()) -> Plan:
  """Checks the flags of a comparison benchmark; one-line PurlErrors for bad ones."""
  suite = SUITES[suite_name]
  try:
    seed_values = tuple(int(s) for s in seeds)
  except ValueError:
    raise PurlError(f"--seeds={','.join(seeds)} must be integers, e.g. --seeds=0,1,2.") from None
  if not seed_values or len(set(seed_values)) != len(seed_values):
    raise PurlError(f"--seeds={','.join(seeds)} must name at least one seed, each once.")
  if episodes is not None and episodes < 1:
    raise PurlError(f"--episodes={episodes} must be at least 1.")
  if not suite.runs_here and not mock and not tf.config.list_physical_devices("GPU"):
    raise PurlError(f"--benchmark={suite_name} is sized for GPU machines and this one has "
                    "none: add --mock to check it on tfds mock data.")
  base = os.path.abspath(os.path.expanduser(root_dir or os.path.join("runs", "benchmark")))
  folder = os.path.join(base, "mock", suite_name) if mock else os.path.join(base, suite_name)
  return Plan(suite, folder, seed_values, episodes or (1 if mock else suite.episodes), mock,
              tuple(extra_bindings))


def run_method(plan: Plan, method: str, target: float, seed: int) -> str:
  """Runs one method of one (target, seed) in a `python -m purl_tf.train` subprocess, unless
  it finished before. Returns its run folder; raises PurlError naming the log on failure."""
  folder = plan.run_dir(target, seed, method)
  if os.path.exists(os.path.join(folder, files.RESULTS)):
    return folder
  dense = os.path.join(plan.dense_dir(seed), files.DENSE_WEIGHTS)
  if folder != plan.dense_dir(seed) and not os.path.exists(
      os.path.join(folder, files.DENSE_WEIGHTS)):
    os.makedirs(os.path.join(folder, os.path.dirname(files.DENSE_WEIGHTS)), exist_ok=True)
    shutil.copyfile(dense, os.path.join(folder, files.DENSE_WEIGHTS))
  command = [sys.executable, "-m", "purl_tf.train", f"--root_dir={folder}",
             f"--gin_file={os.path.join(REPO, plan.suite.gin_file)}"]
  command += [f"--gin_bindings={b}" for b in plan.bindings(target, seed)]
  command.append(f"--gin_bindings=train_eval.method = '{method}'")
  if plan.mock:
    command.append(f"--mock_examples={MOCK_EXAMPLES}")
  log = folder.rstrip(os.sep) + ".log"
  os.makedirs(os.path.dirname(log), exist_ok=True)
  started = time.time()
  with open(log, "a", encoding="utf-8") as handle:
    handle.write(f"$ {' '.join(command)}\n")
    handle.flush()
    code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False,
                          cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
  if not code:
    files.write_json(folder.rstrip(os.sep) + ELAPSED, {"seconds": time.time() - started})
  if code:
    with open(log, encoding="utf-8") as handle:
      tail = [line.strip() for line in handle if line.strip()][-1:]
    raise PurlError(f"{method} (target {target}, seed {seed}) failed with exit code {code}: "
                    f"{tail[0] if tail else ''} (log: {log}).")
  return folder


def run_plan(plan: Plan):
  """Runs every method of every (seed, target), seed by seed; finished runs are reused."""
  jobs = [(seed, target, method) for seed in plan.seeds for target in plan.suite.targets
          for method in METHOD_ORDER]
  started = time.time()
  for number, (seed, target, method) in enumerate(jobs, 1):
    folder = plan.run_dir(target, seed, method)
    reused = os.path.exists(os.path.join(folder, files.RESULTS))
    began = time.time()
    if not reused:
      print(f"[{number:2d}/{len(jobs)}] seed {seed}, target {target}: {method} ... "
            f"(log {folder}.log)", flush=True)
    run_method(plan, method, target, seed)
    results = files.read_json(os.path.join(folder, files.RESULTS))
    print(f"[{number:2d}/{len(jobs)}] seed {seed}, target {target}: {method:16s} "
          f"test {results['pruned_test_accuracy']:.4f} at sparsity "
          f"{results['global_sparsity']:.4f}"
          + ("  (finished before)" if reused else
             f"  in {time.time() - began:.0f} s, {time.time() - started:.0f} s so far"),
          flush=True)


@dataclasses.dataclass
class Run:
  """The outcome of one method at one (target, seed)."""
  method: str
  target: float
  seed: int
  results: dict  # results.json
  episodes: Optional[list] = None  # search/episodes.json of the searches


def collect(plan: Plan) -> List[Run]:
  """Reads every finished run of the plan."""
  runs = []
  for target in plan.suite.targets:
    for seed in plan.seeds:
      for method in METHOD_ORDER:
        folder = plan.run_dir(target, seed, method)
        results = files.read_json(os.path.join(folder, files.RESULTS))
        if results is not None:
          runs.append(Run(method, target, seed, results,
                          files.read_json(os.path.join(folder, files.EPISODES))))
  return runs


def episodes_to_within(episodes: Sequence[dict], target: float,
                       margin: float = WITHIN) -> Optional[int]:
  """Evaluated episodes (collect and greedy, in the order run) until the best so far first
  reached the target and came within `margin` (a fraction: 0.005 is 0.5 points) of the
  search's final best reward-split accuracy. None when no episode reached the target.

  The best so far follows search.is_better's accuracy_at_target rule.
  """
  best, history = None, []
  for record in episodes:
    episode = record if isinstance(record, search.Episode) else search.Episode(**record)
    if search.is_better(episode, best, target, "accuracy_at_target"):
      best = episode
    history.append(best)
  if best is None or not reached_target(best.sparsity, target):
    return None
  for count, leader in enumerate(history, 1):
    if reached_target(leader.sparsity, target) and leader.accuracy >= best.accuracy - margin:
      return count
  return None  # unreachable: the final best qualifies


@dataclasses.dataclass(frozen=True)
class Stats:
  """Mean, sample standard deviation (0 for one value), minimum and maximum."""
  mean: float
  std: float
  low: float
  high: float
  count: int


def stats(values: Sequence[float]) -> Stats:
  values = [float(v) for v in values]
  if not values:
    raise ValueError("stats of no values")
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return Stats(statistics.fmean(values), std, min(values), max(values), len(values))


def _pct(value: float) -> str:
  return f"{100 * value:.2f}"


def method_summary(runs: Sequence[Run]) -> dict:
  """Aggregates one method's runs at one target over seeds.

  Keys: seeds, sparsity (Stats, fraction), accuracy (Stats, fraction), seconds (Stats,
  search + fine-tune wall time), steps (Stats, retrain + fine-tune train steps),
  episodes (evaluated episodes, per seed), to_within (per seed, None when the search
  never reached the target), dense (Stats of the dense test accuracy).
  """
  runs = sorted(runs, key=lambda r: r.seed)
  out = {
      "seeds": [r.seed for r in runs],
      "sparsity": stats([r.results["global_sparsity"] for r in runs]),
      "accuracy": stats([r.results["pruned_test_accuracy"] for r in runs]),
      "seconds": stats([r.results["search_seconds"] + r.results["finetune_seconds"]
                        for r in runs]),
      "steps": stats([r.results["search_retrain_steps"] + r.results["finetune_steps"]
                      for r in runs]),
      "dense": stats([r.results["dense_test_accuracy"] for r in runs]),
      "episodes": [len(r.episodes) if r.episodes else 0 for r in runs],
      "to_within": None,
  }
  if runs[0].method in SEARCHES:
    out["to_within"] = [episodes_to_within(r.episodes or [], r.target) for r in runs]
  return out


def _to_within_cell(values: Optional[List[Optional[int]]], episodes: List[int]) -> str:
  if values is None:
    return "—"
  shown = ", ".join("not reached" if v is None else str(v) for v in values)
  reached = [v for v in values if v is not None]
  mean = f"{statistics.fmean(reached):.1f}" if reached else "n/a"
  return f"{mean} ({shown}) of {max(episodes)}"


def comparison_table(runs: Sequence[Run], target: float) -> str:
  """The markdown table of every method at one target (mean and spread over seeds)."""
  lines = ["| method | global sparsity | test accuracy % (mean ± sd, min–max) | wall time "
           "| retraining steps | episodes to within 0.5 pt of final best (mean (per seed) "
           "of evaluated) |", "| --- | --- | --- | --- | --- | --- |"]
  for method in METHOD_ORDER:
    chosen = [r for r in runs if r.method == method and r.target == target]
    if not chosen:
      continue
    s = method_summary(chosen)
    acc = s["accuracy"]
    lines.append(
        f"| {METHOD_NAMES[method]} | {s['sparsity'].mean:.4f} | {_pct(acc.mean)} ± "
        f"{_pct(acc.std)} ({_pct(acc.low)}–{_pct(acc.high)}) | {s['seconds'].mean:,.0f} s | "
        f"{s['steps'].mean:,.0f} | {_to_within_cell(s['to_within'], s['episodes'])} |")
  return "\n".join(lines)


def _mean_accuracy(runs, method, target) -> Optional[float]:
  chosen = [r.results["pruned_test_accuracy"] for r in runs
            if r.method == method and r.target == target]
  return statistics.fmean(chosen) if chosen else None


def goals(runs: Sequence[Run], target: float) -> List[str]:
  """The issue's three goals at one target, each MET / NOT MET with its numbers."""
  purl = _mean_accuracy(runs, "purl", target)
  out = []
  for method, relation, check in (("global_magnitude", "≥", lambda a, b: a >= b),
                                  ("uniform", ">", lambda a, b: a > b)):
    other = _mean_accuracy(runs, method, target)
    if purl is None or other is None:
      continue
    verdict = "MET" if check(purl, other) else "NOT MET"
    out.append(f"- PuRL test accuracy {relation} {METHOD_NAMES[method]}: {verdict} "
               f"({_pct(purl)} % vs {_pct(other)} %, means over seeds).")
  dense = [r for r in runs if r.method == "purl" and r.target == target]
  episodic = [r for r in runs if r.method == "episodic" and r.target == target]
  if dense and episodic:
    a = method_summary(dense)["to_within"]
    b = method_summary(episodic)["to_within"]
    reached_a = [v for v in a if v is not None]
    reached_b = [v for v in b if v is not None]
    if reached_a and reached_b:
      mean_a, mean_b = statistics.fmean(reached_a), statistics.fmean(reached_b)
      verdict = "MET" if mean_a <= mean_b / 2 else "NOT MET"
      out.append(f"- Dense reward within 0.5 pt of its best in at most half the episodes of "
                 f"the episodic reward: {verdict} ({mean_a:.1f} vs {mean_b:.1f} evaluated "
                 "episodes, means over seeds that reached the target).")
    else:
      out.append("- Episodes to the best: not comparable (a search never reached the "
                 "target).")
  missed = [f"{METHOD_NAMES[r.method]} seed {r.seed} ({r.results['global_sparsity']:.3f})"
            for r in runs if r.target == target
            and not reached_target(r.results["global_sparsity"], target)]
  if missed:
    out.append(f"- Below the target sparsity: {', '.join(missed)}.")
  return out


def elapsed_minutes(plan: Plan) -> Tuple[float, int, int]:
  """(wall minutes, processes counted, processes in the plan) of the run processes whose
  elapsed time was recorded (dense runs included)."""
  folders = [plan.run_dir(t, seed, m) for seed in plan.seeds for t in plan.suite.targets
              for m in METHOD_ORDER]
  records = [files.read_json(folder.rstrip(os.sep) + ELAPSED) for folder in folders]
  seconds = [r["seconds"] for r in records if r is not None]
  return sum(seconds) / 60, len(seconds), len(folders)


def comparison_body(plan: Plan, runs: Sequence[Run]) -> str:
  """The markdown section of a comparison benchmark: tables, goals, how it was run."""
  parts = []
  if plan.mock:
    parts.extend(["**Mock data check, not a measurement**: every method ran end to end on "
                  f"`tfds.testing.mock_data` ({MOCK_EXAMPLES} random examples per split, "
                  "32x32 inputs, untrained network, one retrain batch per step) to show the "
                  "benchmark definition runs; the accuracies below are of random images "
                  "and mean nothing.", ""])
  parts.extend([f"Seeds {', '.join(map(str, plan.seeds))}; every search runs "
               f"{plan.episodes} collect episode{'s' if plan.episodes > 1 else ''} (plus "
               "greedy evaluations); all methods of "
               "a seed start from the same dense model, use the same data splits and "
               "fine-tune budget. Wall time is search plus fine-tune (pre-training is "
               "shared and excluded); retraining steps are train batches spent by the "
               "search (every evaluated episode's retrain steps, or gradual's pruning "
               "ramp) plus the fine-tune.", ""])
  for target in plan.suite.targets:
    chosen = [r for r in runs if r.target == target]
    if not chosen:
      continue
    dense = stats([r.results["dense_test_accuracy"] for r in chosen if r.method == "purl"]
                  or [r.results["dense_test_accuracy"] for r in chosen])
    verdicts = (["- Goals are not evaluated on mock data."] if plan.mock
                else goals(chosen, target))
    parts += [f"### Target sparsity {target}", "",
              f"Dense test accuracy {_pct(dense.mean)} ± {_pct(dense.std)} %.", "",
              comparison_table(chosen, target), "", *verdicts, ""]
  bindings = plan.bindings("<target>", "<seed>")
  methods_minutes = sum(r.results["search_seconds"] + r.results["finetune_seconds"]
                        for r in runs) / 60
  elapsed, counted, processes = elapsed_minutes(plan)
  parts += [
      "How it was run:", "",
      f"- Command: `{command_line()}`; a rerun reuses the finished runs in "
      f"`{os.path.relpath(plan.root_dir)}` (delete it to measure again).",
      f"- Time: the methods' wall times add up to {methods_minutes:.0f} min"
      + (f"; {'all ' if counted == processes else ''}{counted} of the {processes} run "
         "processes (with start-up, data loading and the seeds' pre-training) to "
         f"{elapsed:.0f} min." if counted else "."),
      f"- Config: `{plan.suite.gin_file}` plus, for every method, "
      + ", ".join(f"`{b}`" for b in bindings),
      "- Each method: `.venv/bin/python -m purl_tf.train --root_dir=<run> --gin_file=... "
      "--gin_bindings=... --gin_bindings=\"train_eval.method = '<method>'\"`, started with "
      "the dense weights of the seed's first PuRL run (purl_tf/methods.py describes each).",
      f"- Machine: {machine()}",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ]
  return "\n".join(parts)


def comparison(suite_name: str) -> Section:
  """Runs (or reuses) every method of a suite and tabulates them."""
  plan = make_plan(suite_name, FLAGS.root_dir, FLAGS.seeds, FLAGS.episodes, FLAGS.mock,
                   FLAGS.gin_bindings)
  print(f"{suite_name}: {len(plan.seeds)} seeds x {len(plan.suite.targets)} targets x "
        f"{len(METHOD_ORDER)} methods in {plan.root_dir}.", flush=True)
  run_plan(plan)
  heading = plan.suite.title + (" (mock data check)" if plan.mock else "")
  return Section(heading=heading, body=comparison_body(plan, collect(plan)))
