r"""Benchmarks of purl_tf, each printing a markdown section and writing it into a docs file.

  .venv/bin/python tools/benchmark.py --benchmark=mnist5k --output=docs/benchmarks.md
  .venv/bin/python tools/benchmark.py --benchmark=search_speed --output=docs/benchmarks.md
  .venv/bin/python tools/benchmark.py --benchmark=imagenet_resnet50 --mock
  .venv/bin/python tools/benchmark.py --benchmark=pruning_speed --output=docs/benchmarks.md

Benchmarks:
  mnist5k, cifar10, imagenet_resnet50, imagenet_mobilenet_v2
      PuRL against its baselines (tools/baselines.py) over --seeds, one subprocess per run
      in --root_dir/<benchmark>/target<t>/seed<s>/<method>; finished runs are reused, so a
      rerun only adds what is missing and rebuilds the table. Only mnist5k runs on a CPU
      machine; --mock checks the others end to end on tfds mock data.
  search_speed
      one profiled PuRL search on mnist5k: the share of its wall time outside retraining
      and measuring, by component, and the retrain/measure steps against plain Keras.
  imagenet_projection
      the per-episode cost of the ImageNet configs, from step costs measured here.
  pruning_speed
      setting every ResNet-50 layer's level against one forward pass.

Each benchmark is a function returning a `Section` (a level-2 heading and its markdown
body); `--output` replaces that heading's section in the file (or appends it), leaving
the other sections as they are.
"""
import collections
import dataclasses
import datetime
import functools
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import app
from absl import flags
from absl import logging
import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import files, models, pruning, search, train, training
from purl_tf.env import PruningEnv
from purl_tf.errors import PurlError

FLAGS = flags.FLAGS

_DOC_TITLE = "# Benchmarks"
_DOC_INTRO = ("Measured with `tools/benchmark.py` on the machine named in each section. "
              "Each section is rewritten when its benchmark is run again with `--output`.")


@dataclasses.dataclass
class Section:
  heading: str  # without the leading '## '
  body: str  # markdown, without the heading


def machine() -> str:
  """One line naming the machine: logical CPUs, CPU model, OS, Python and TF versions."""
  model = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if names:
      model = names[0]
  except OSError:
    pass
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  gpus = len(tf.config.list_physical_devices("GPU"))
  return (f"{cpus} CPU cores (nproc) of {model}, {gpus} GPU; {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, TensorFlow "
          f"{tf.__version__}")


def command_line() -> str:
  """The command that reproduces this run, relative to the repository root."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]))
  return " ".join([".venv/bin/python", script] + sys.argv[1:])


def median_seconds(function: Callable[[], object], repeats: int,
                   before: Optional[Callable[[], object]] = None) -> List[float]:
  """Wall times of `repeats` calls of function (before() runs untimed ahead of each)."""
  times = []
  for _ in range(repeats):
    if before is not None:
      before()
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return times


def _fmt_ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.1f} ms"


def _spread(times: Sequence[float]) -> str:
  return f"{_fmt_ms(min(times))} – {_fmt_ms(max(times))}"


# --- pruning_speed ------------------------------------------------------------------------------

flags.DEFINE_integer("repeats", 7, "Timed repetitions of each measured operation.")
flags.DEFINE_integer("batch_size", 32, "pruning_speed: images per forward pass.")
flags.DEFINE_integer("image_size", 224, "pruning_speed: side of the square input images.")
flags.DEFINE_integer("seed", 0, "Seed of the random levels and inputs.")


def pruning_speed() -> Section:
  """How long setting every layer's level takes, next to one forward pass of ResNet-50.

  The PuRL search sets levels at every step of every episode; the target is that doing
  so costs less than a tenth of one inference batch.
  """
  repeats, batch, size = FLAGS.repeats, FLAGS.batch_size, FLAGS.image_size
  rng = np.random.default_rng(FLAGS.seed)
  shape = (size, size, 3)

  build_start = time.perf_counter()
  model = pruning.wrap(models.resnet50(shape, 1000, weights=None))
  controller = pruning.PruningController(model)
  build_seconds = time.perf_counter() - build_start
  print(f"ResNet-50 built and wrapped in {build_seconds:.1f} s: {controller.num_layers} "
        f"prunable layers, {int(controller.sizes.sum()):,} prunable weights.", flush=True)

  images = tf.constant(rng.uniform(-100, 100, (batch,) + shape).astype(np.float32))
  forward = tf.function(lambda x: model(x, training=False))
  for _ in range(2):  # warm-up: trace, then one untimed run
    forward(images).numpy()
  forward_times = median_seconds(lambda: forward(images).numpy(), repeats)
  print(f"forward pass: median {_fmt_ms(statistics.median(forward_times))}", flush=True)

  level_sets = [rng.uniform(0.3, 0.95, controller.num_layers).tolist()
                for _ in range(repeats + 1)]
  controller.reset()
  controller.apply(level_sets[-1])  # warm-up (first reset traces the copy function)
  pending = iter(level_sets[:repeats])
  set_times = median_seconds(lambda: controller.apply(next(pending)), repeats,
                             before=controller.reset)
  reached = controller.sparsities()
  measured = controller.measured_sparsities()
  exact = bool(np.all(np.abs(reached - measured) <= 1.0 / controller.sizes + 1e-7))
  print(f"set {controller.num_layers} levels: median "
        f"{_fmt_ms(statistics.median(set_times))}", flush=True)

  reset_times = median_seconds(controller.reset, repeats,
                               before=lambda: controller.apply(level_sets[0]))

  # Retracing: train one small batch after each of several level changes.
  trainer = training.MaskedTrainer(model, tf.distribute.get_strategy())
  train_images = rng.uniform(-100, 100, (2,) + shape).astype(np.float32)
  train_labels = rng.integers(0, 1000, 2).astype(np.int64)
  stream = trainer.stream(tf.data.Dataset.from_tensors((train_images, train_labels)))
  rounds = 3
  for levels in level_sets[:rounds]:
    controller.reset()
    controller.apply(levels)
    trainer.train(stream, 1)
  traces = trainer.tracing_counts()["train"]
  controller.reset()

  forward_median = statistics.median(forward_times)
  set_median = statistics.median(set_times)
  ratio = set_median / forward_median
  rows = [
      ("forward pass, batch of "
       f"{batch} at {size}x{size} (tf.function, training=False)",
       _fmt_ms(forward_median), _spread(forward_times)),
      (f"set all {controller.num_layers} layers' sparsity from dense "
       "(random levels in [0.3, 0.95])", _fmt_ms(set_median), _spread(set_times)),
      ("ratio set / forward (target < 0.1)", f"{ratio:.3f}",
       "meets the target" if ratio < 0.1 else "MISSES the target"),
      ("controller.reset() (all variables from the dense snapshot)",
       _fmt_ms(statistics.median(reset_times)), _spread(reset_times)),
      (f"train function traces after {rounds} level changes", str(traces),
       "no retrace" if traces == 1 else "RETRACED"),
  ]
  table = ["| measurement | median | range / note |", "| --- | --- | --- |"]
  table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
  body = "\n".join([
      f"Keras ResNet-50 (weights=None, 1000 classes, {size}x{size}x3) wrapped by "
      f"`pruning.wrap`: {controller.num_layers} prunable layers, "
      f"{int(controller.sizes.sum()):,} prunable weights. Medians of {repeats} runs after "
      "warm-up; each level set starts from the dense state (`controller.reset()` before "
      "it, untimed). Levels reached exactly (controller and zeros in the weights agree): "
      f"{'yes' if exact else 'NO'}.",
      "",
      *table,
      "",
      f"- Command: `{command_line()}`",
      f"- Machine: {machine()}",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ])
  return Section(heading="Pruning speed (ResNet-50)", body=body)


# --- PuRL against its baselines ------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(REPO, "tools", "baselines.py")
# In the order they run: random and gradual spend the budget of the seed's PuRL run.
METHOD_ORDER = ("purl", "episodic", "random", "global_magnitude", "uniform", "gradual")
METHOD_NAMES = {
    "purl": "PuRL (dense reward)",
    "episodic": "PuRL agent, episodic reward",
    "random": "random search",
    "global_magnitude": "global magnitude",
    "uniform": "uniform (tfmot ConstantSparsity)",
    "gradual": "gradual (tfmot PolynomialDecay)",
}
NEEDS_REFERENCE = ("random", "gradual")
SEARCHES = ("purl", "episodic", "random")  # methods that leave search/episodes.json
RL_SEARCHES = ("purl", "episodic")
WITHIN = 0.005  # "within 0.5 points": reward-split accuracy, as a fraction
# The default grid tops at 0.98, so global 0.98 would need every layer at its maximum.
WIDE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
# Shrinks a GPU config to seconds on tfds mock data (as tests/test_configs.py does).
MOCK_BINDINGS = ("load_splits.image_size = 32", "load_splits.batch_size = 4",
                 "load_splits.eval_batch_size = 8", "load_splits.reward_size = 8",
                 "load_splits.shuffle_buffer = 16", "PruningEnv.retrain_steps = 1",
                 "make_strategy.name = 'default'", "search.eval_interval = 1",
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
  episodes: int  # search.num_episodes of every search
  bindings: Tuple[str, ...] = ()
  mock_bindings: Tuple[str, ...] = ()  # further bindings of --mock runs
  runs_here: bool = False  # measurable on a 2-core CPU machine


SUITES = {
    "mnist5k": Suite(
        "mnist5k", "mnist5k: LeNet-5 at 0.95 and 0.98", "gin/quickstart.gin", (0.95, 0.98),
        episodes=50,
        bindings=("train_eval.export_tflite = False", f"PruningEnv.levels = {WIDE_LEVELS}",
                  "search.eval_interval = 10"),
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
    return os.path.join(self.root_dir, f"seed{seed}", "dense")

  def bindings(self, target: float, seed: int) -> List[str]:
    """The gin bindings of every method's run at (target, seed), in order."""
    mock = (*MOCK_BINDINGS, *self.suite.mock_bindings) if self.mock else ()
    return [*self.suite.bindings, *mock, f"train_eval.target_sparsity = {target}",
            f"train_eval.seed = {seed}", f"search.num_episodes = {self.episodes}",
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
  """Runs one method of one (target, seed) in a subprocess of tools/baselines.py, unless
  it finished before. Returns its run folder; raises PurlError naming the log on failure."""
  folder = plan.dense_dir(seed) if method == "dense" else plan.run_dir(target, seed, method)
  if os.path.exists(os.path.join(folder, files.RESULTS)):
    return folder
  command = [sys.executable, BASELINES, f"--method={method}", f"--root_dir={folder}",
             f"--gin_file={os.path.join(REPO, plan.suite.gin_file)}"]
  command += [f"--gin_bindings={b}" for b in plan.bindings(target, seed)]
  if method != "dense":
    command.append(f"--dense_from={plan.dense_dir(seed)}")
  if method in NEEDS_REFERENCE:
    command.append(f"--reference={plan.run_dir(target, seed, 'purl')}")
  if plan.mock:
    command.append(f"--mock_examples={MOCK_EXAMPLES}")
  log = folder.rstrip(os.sep) + ".log"
  os.makedirs(os.path.dirname(log), exist_ok=True)
  started = time.time()
  with open(log, "a", encoding="utf-8") as handle:
    handle.write(f"$ {' '.join(command)}\n")
    handle.flush()
    code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
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
  for seed in plan.seeds:
    run_method(plan, "dense", plan.suite.targets[0], seed)
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
  if best is None or best.sparsity < target - 1e-6:
    return None
  for count, leader in enumerate(history, 1):
    if leader.sparsity >= target - 1e-6 and leader.accuracy >= best.accuracy - margin:
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
            and r.results["global_sparsity"] < target - 1e-3]
  if missed:
    out.append(f"- Below the target sparsity: {', '.join(missed)}.")
  return out


def elapsed_minutes(plan: Plan) -> Tuple[float, int, int]:
  """(wall minutes, processes counted, processes in the plan) of the run processes whose
  elapsed time was recorded (dense runs included)."""
  folders = [plan.dense_dir(seed) for seed in plan.seeds]
  folders += [plan.run_dir(t, seed, m) for seed in plan.seeds for t in plan.suite.targets
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
    skipped = sorted({len(r.results.get("tfmot_skipped_layers", [])) for r in chosen
                      if r.results.get("tfmot_skipped_layers")})
    if skipped:
      verdicts.append(f"- tfmot cannot prune DepthwiseConv2D: uniform and gradual leave "
                      f"{skipped[0]} depthwise layers dense, so their global sparsity over "
                      "the layers PuRL prunes stays below the target.")
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
      "- Each method: `.venv/bin/python tools/baselines.py --method=<method> "
      "--root_dir=<run> --gin_file=... --gin_bindings=... --dense_from=<seed's dense run> "
      "[--reference=<seed's purl run>]` (see its docstring).",
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


# --- the search's own speed -------------------------------------------------------------------

# Components of a search step, in the order reported; what is patched to time each.
RETRAIN, MEASURE = "retrain", "accuracy measurement"
COMPONENTS = (RETRAIN, MEASURE, "mask setting (set level, undo copy)",
              "episode reset (dense weights, optimizer, a new train stream replacing the "
              "last)", "observation",
              "agent inference", "agent training (updates, replay sampler)",
              "replay buffer add", "checkpoint", "episodes.json", "TensorBoard and plots")
OTHER = "other (driver, rewards, seeding, search record, progress lines)"
# Once per search, not per step: reported apart from the per-step shares.
SETUP, FINISH = "setup (agent, replay buffer, checkpoint)", "finish (policy export, best allocation)"
_MISSING = object()


class Profiler:
  """Wall time spent in chosen functions while installed, by component.

  `timed(owner, name, component)` replaces owner.name by a timing wrapper until
  `restore()`. A call made while another timed call runs is left to the outer one, so
  no time is counted twice.
  """

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.calls = collections.defaultdict(int)
    self.durations = collections.defaultdict(list)  # seconds of each call, in order
    self._patches = []
    self._busy = False

  def wrap(self, function: Callable, component: str) -> Callable:
    """`function` with its wall time added to `component`."""
    profiler = self

    @functools.wraps(function)
    def timed(*args, **kwargs):
      if profiler._busy:
        return function(*args, **kwargs)
      profiler._busy = True
      start = time.perf_counter()
      try:
        return function(*args, **kwargs)
      finally:
        elapsed = time.perf_counter() - start
        profiler.seconds[component] += elapsed
        profiler.calls[component] += 1
        profiler.durations[component].append(elapsed)
        profiler._busy = False

    return timed

  def replace(self, owner, name: str, replacement):
    """Sets owner.name = replacement until restore()."""
    self._patches.append((owner, name, vars(owner).get(name, _MISSING)))
    setattr(owner, name, replacement)

  def timed(self, owner, name: str, component: str, optional: bool = False):
    """Times owner.name (a function of a module, or a method of a class).

    optional: skip silently when owner has no such attribute (a private name that may
    move), instead of raising AttributeError.
    """
    if optional and not hasattr(owner, name):
      return
    self.replace(owner, name, self.wrap(getattr(owner, name), component))

  def restore(self):
    for owner, name, original in reversed(self._patches):
      if original is _MISSING:  # inherited: remove the shadowing attribute
        delattr(owner, name)
      else:
        setattr(owner, name, original)
    self._patches.clear()


def _install(profiler: Profiler):
  """Times every part of a search step (see COMPONENTS)."""
  from purl_tf import plots  # pylint: disable=import-outside-toplevel
  from tf_agents.policies import py_tf_eager_policy  # pylint: disable=import-outside-toplevel
  from tf_agents.replay_buffers import tf_uniform_replay_buffer  # pylint: disable=import-outside-toplevel
  from tf_agents.utils import common  # pylint: disable=import-outside-toplevel
  buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer
  c = dict(enumerate(COMPONENTS))
  profiler.timed(training.MaskedTrainer, "train", c[0])
  profiler.timed(training.MaskedTrainer, "evaluate", c[1])
  profiler.timed(pruning.PruningController, "set_level", c[2])
  profiler.timed(pruning.PruningController, "save_step", c[2])
  profiler.timed(PruningEnv, "_reset", c[3])  # with dropping the last episode's stream
  profiler.timed(PruningEnv, "_observe", c[4])
  profiler.timed(py_tf_eager_policy.PyTFEagerPolicyBase, "_action", c[5])
  function = common.function  # makes the agent's train function: time what it returns

  def timed_train_function(*args, **kwargs):
    compiled = function(*args, **kwargs)
    if args and getattr(args[0], "__name__", "") == "train":  # agent.train, not policies'
      return profiler.wrap(compiled, c[6])
    return compiled

  profiler.replace(common, "function", timed_train_function)
  profiler.timed(buffer, "as_dataset", c[6])
  profiler.timed(buffer, "add_batch", c[7])
  profiler.timed(tf.train.CheckpointManager, "save", c[8])
  profiler.timed(files, "write_json", c[9])
  for name in ("scalar", "histogram", "image"):
    profiler.timed(tf.summary, name, c[10])
  profiler.timed(plots, "allocations", c[10])
  loop = getattr(search, "_Search", None)  # private: timed only while it exists
  if loop is not None:
    profiler.timed(loop, "__init__", SETUP, optional=True)
    profiler.timed(loop, "restore", SETUP, optional=True)
    profiler.timed(loop, "finish", FINISH, optional=True)


def _prototype(profiler: Profiler):
  """Prototype of two library changes, for measuring them (not for real runs):

  1. every MaskedTrainer keeps the first train stream it is given, so a search starts
     (and drops) one shuffled stream instead of one per episode;
  2. the per-episode reseeding seeds Python and NumPy only: tf.random.set_seed (inside
     tf.keras.utils.set_random_seed) clears TensorFlow's kernel caches, and the first
     call of every function after it pays for that.
  """
  original = training.MaskedTrainer.stream

  def stream(self, dataset):
    if getattr(self, "_benchmark_stream", None) is None:
      self._benchmark_stream = original(self, dataset)
    return self._benchmark_stream

  def seed_python_and_numpy(value):
    random.seed(value)
    np.random.seed(value)

  profiler.replace(training.MaskedTrainer, "stream", stream)
  profiler.replace(tf.keras.utils, "set_random_seed", seed_python_and_numpy)


def profile_search(parts, root_dir: str, seed: int, prototype: bool = False):
  """Runs search.search under the Profiler (with `prototype`, under _prototype too).

  Returns (SearchResult, seconds per component, wall seconds of the episode loop: the
  search's wall time without SETUP and FINISH, which are in the dict too, and the
  seconds of every call per component).
  """
  profiler = Profiler()
  _install(profiler)
  if prototype:
    _prototype(profiler)
  try:
    started = time.perf_counter()
    found = search.search(parts.env, root_dir, seed=seed)
    wall = time.perf_counter() - started
  finally:
    profiler.restore()
  seconds = {name: profiler.seconds.get(name, 0.0) for name in (*COMPONENTS, SETUP, FINISH)}
  loop_wall = wall - seconds[SETUP] - seconds[FINISH]
  seconds[OTHER] = max(0.0, loop_wall - sum(seconds[name] for name in COMPONENTS))
  return found, seconds, loop_wall, dict(profiler.durations)


def _per_step_seconds(run: Callable[[], object], steps: int, repeats: int) -> List[float]:
  """Seconds per train step of `repeats` calls of run() (each `steps` steps), after one
  untimed warm-up call."""
  run()
  return [t / steps for t in median_seconds(run, repeats)]


def keras_speed(parts, dense_weights: str, retrain_steps: int, repeats: int,
                jit: bool) -> dict:
  """Per-step seconds of the search's retrain and measurement next to plain Keras.

  MaskedTrainer (a new one, XLA as `jit`) trains the wrapped model `retrain_steps` batches
  per call, as a search step does; plain Keras runs its compiled train_function (one
  batch per call, as fit does) on the unwrapped model with the same weights, optimizer
  and batches, under the same strategy. Evaluation: one pass of MaskedTrainer.evaluate
  over the reward split vs Keras' compiled test_function over the same batches, each
  timing starting the pass's dataset iterator.
  """
  strategy, splits, controller = parts.strategy, parts.splits, parts.controller
  controller.reset()
  pruning.uniform(controller, 0.9)  # masks as in a search (their values do not matter)
  with strategy.scope():
    trainer = training.MaskedTrainer(controller.model, strategy, jit_compile=jit)
    plain = parts_builder(parts)(input_shape=splits.image_shape,
                                 num_classes=splits.num_classes)
    plain.load_weights(dense_weights)
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=not models.outputs_probabilities(plain)),
                  metrics=["accuracy"], jit_compile=jit)
  plain.make_train_function()
  plain.make_test_function()
  stream = trainer.stream(splits.train_stream(1))
  keras_stream = iter(strategy.experimental_distribute_dataset(splits.train_stream(1)))
  ours_train = _per_step_seconds(lambda: trainer.train(stream, retrain_steps), retrain_steps,
                                 repeats)

  def keras_train():
    for _ in range(retrain_steps):
      plain.train_function(keras_stream)

  theirs_train = _per_step_seconds(keras_train, retrain_steps, repeats)
  reward = trainer.distribute(splits.reward)
  batches = sum(1 for _ in splits.reward)
  ours_eval = _per_step_seconds(lambda: trainer.evaluate(reward), batches, repeats)
  keras_reward = strategy.experimental_distribute_dataset(splits.reward)
  keras_iterators = []

  def keras_eval():
    iterator = keras_iterators.pop()
    for _ in range(batches):
      plain.test_function(iterator)

  theirs_eval = []
  keras_iterators.append(iter(keras_reward))
  keras_eval()  # warm-up
  for _ in range(repeats):
    start = time.perf_counter()
    keras_iterators.append(iter(keras_reward))  # a pass starts an iterator, as ours does
    keras_eval()
    theirs_eval.append((time.perf_counter() - start) / batches)
  controller.reset()
  return {"train": (statistics.median(ours_train), statistics.median(theirs_train)),
          "eval": (statistics.median(ours_eval), statistics.median(theirs_eval)),
          "traces": trainer.tracing_counts()}


def _first_and_later(calls: Sequence[float], layers: int) -> Tuple[Optional[float],
                                                                      Optional[float]]:
  """Median seconds of each episode's first call and of its other calls (None: no calls),
  from per-call seconds in order, `layers` calls per episode."""
  first = [t for i, t in enumerate(calls) if i % layers == 0]
  later = [t for i, t in enumerate(calls) if i % layers]
  return (statistics.median(first) if first else None,
          statistics.median(later) if later else None)


def _ratio_row(label: str, jit: bool, ours: float, theirs: float, traces: str) -> str:
  """A row of the speed table: seconds per batch of ours and of Keras, their ratio."""
  ratio = theirs / ours
  return (f"| {label} | {'on' if jit else 'off'} | {_fmt_ms(ours)} | {_fmt_ms(theirs)} | "
          f"{ratio:.3f} {'meets' if ratio >= 0.9 else 'MISSES'} | {traces} |")


def parts_builder(parts) -> Callable:
  """The model builder the parts were made with (train_eval.model_builder)."""
  del parts
  value = gin.query_parameter("train_eval.model_builder")
  return value.scoped_configurable_fn


flags.DEFINE_string("speed_gin_file", "gin/quickstart.gin", "search_speed: the config.")


def search_speed() -> Section:
  """The share of a search's wall time outside retraining and measuring, by component, in
  one run; and the retrain/measure steps against plain compiled Keras."""
  episodes = FLAGS.episodes or SUITES["mnist5k"].episodes
  bindings = ["train_eval.export_tflite = False", f"search.num_episodes = {episodes}",
              "search.eval_interval = 10", f"PruningEnv.levels = {WIDE_LEVELS}",
              "train_eval.target_sparsity = 0.95", *FLAGS.gin_bindings]
  train._parse_gin([os.path.join(REPO, FLAGS.speed_gin_file)], bindings)  # pylint: disable=protected-access
  base = os.path.abspath(os.path.expanduser(FLAGS.root_dir or os.path.join("runs", "benchmark")))
  cache = os.path.join(base, "search_speed", "dense")
  root_dir = os.path.join(base, "search_speed",
                          datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
  if os.path.exists(os.path.join(cache, files.DENSE_WEIGHTS)):
    os.makedirs(os.path.join(root_dir, "dense"))
    shutil.copyfile(os.path.join(cache, files.DENSE_WEIGHTS),
                    os.path.join(root_dir, files.DENSE_WEIGHTS))
  seed = int(gin.query_parameter("train_eval.seed"))
  tf.keras.utils.set_random_seed(seed)
  parts = train.build(root_dir, parts_builder(None),
                      float(gin.query_parameter("train_eval.target_sparsity")))
  if not os.path.exists(os.path.join(cache, files.DENSE_WEIGHTS)):
    os.makedirs(os.path.join(cache, "dense"), exist_ok=True)
    shutil.copyfile(os.path.join(root_dir, files.DENSE_WEIGHTS),
                    os.path.join(cache, files.DENSE_WEIGHTS))
  print(f"Profiling a {episodes}-episode search in {root_dir} ...", flush=True)
  found, seconds, wall, durations = profile_search(parts, root_dir, seed)
  prototype_dir = root_dir + "-prototype"
  os.makedirs(os.path.join(prototype_dir, "dense"))
  shutil.copyfile(os.path.join(root_dir, files.DENSE_WEIGHTS),
                  os.path.join(prototype_dir, files.DENSE_WEIGHTS))
  print(f"Profiling it again under the prototype changes in {prototype_dir} ...", flush=True)
  proto_found, proto_seconds, proto_wall, proto_durations = profile_search(
      parts, prototype_dir, seed, prototype=True)
  steps = sum(len(e.levels) for e in found.episodes)
  proto_steps = sum(len(e.levels) for e in proto_found.episodes)
  retrain_steps = parts.env.retrain_steps
  inside = seconds[RETRAIN] + seconds[MEASURE]
  proto_inside = proto_seconds[RETRAIN] + proto_seconds[MEASURE]
  rows = ["| component | share of the loop's wall time | per search step | prototype: "
          "share | per step |", "| --- | --- | --- | --- | --- |"]
  for name in (*COMPONENTS, OTHER):
    rows.append(f"| {name} | {100 * seconds[name] / wall:.1f} % | "
                f"{_fmt_ms(seconds[name] / steps)} | "
                f"{100 * proto_seconds[name] / proto_wall:.1f} % | "
                f"{_fmt_ms(proto_seconds[name] / proto_steps)} |")
  outside = 1.0 - inside / wall
  proto_outside = 1.0 - proto_inside / proto_wall
  rows.append(f"| **outside retrain and measurement** (target < 10 %) | "
              f"**{100 * outside:.1f} %** {'meets' if outside < 0.1 else 'MISSES'} | "
              f"{_fmt_ms((wall - inside) / steps)} | **{100 * proto_outside:.1f} %** "
              f"{'meets' if proto_outside < 0.1 else 'MISSES'} | "
              f"{_fmt_ms((proto_wall - proto_inside) / proto_steps)} |")
  rows.append(f"| whole step | 100 % | {_fmt_ms(wall / steps)} | 100 % | "
              f"{_fmt_ms(proto_wall / proto_steps)} |")
  print("\n".join(rows), flush=True)
  speed_rows = ["| step | XLA | ours per batch | plain Keras per batch | Keras / ours "
                "(target ≥ 0.9) | traces (train, eval) |",
                "| --- | --- | --- | --- | --- | --- |"]
  dense_weights = os.path.join(root_dir, files.DENSE_WEIGHTS)
  labels = {"train": f"retrain, MaskedTrainer ({retrain_steps} batches per call)",
            "eval": "measurement, MaskedTrainer.evaluate (reward split)"}
  measured = {}
  for jit in (False, True):
    try:
      measured[jit] = keras_speed(parts, dense_weights, retrain_steps, FLAGS.repeats, jit)
    except Exception as error:  # XLA may be unavailable for some ops on some builds
      speed_rows.append(f"| retrain and measurement | {'on' if jit else 'off'} | failed: "
                        f"{type(error).__name__}: {str(error).splitlines()[0][:120]} | | | |")
      continue
    traces = measured[jit]["traces"]
    for kind in ("train", "eval"):
      ours, theirs = measured[jit][kind]
      speed_rows.append(_ratio_row(labels[kind], jit, ours, theirs,
                                   f"{traces['train']}, {traces['eval']}"))
  batches = sum(1 for _ in parts.splits.reward)
  in_search = {"train": seconds[RETRAIN] / max(steps * retrain_steps, 1),
               "eval": seconds[MEASURE] / max(steps * batches, 1)}
  in_prototype = {"train": proto_seconds[RETRAIN] / max(proto_steps * retrain_steps, 1),
                  "eval": proto_seconds[MEASURE] / max(proto_steps * batches, 1)}
  layers = parts.env.num_layers
  first, later = _first_and_later(durations.get(RETRAIN, []), layers)
  proto_first, proto_later = _first_and_later(proto_durations.get(RETRAIN, []), layers)
  stream_note = ""
  if first and later and proto_first:
    stream_note = (f" An episode's first retrain call took {_fmt_ms(first)} (median), its "
                   f"later ones {_fmt_ms(later)}; under the prototype {_fmt_ms(proto_first)} "
                   f"and {_fmt_ms(proto_later)}.")
  search_traces = parts.env.trainer.tracing_counts()
  if False in measured:
    for kind, label in (("train", "retrain inside the search"),
                        ("eval", "measurement inside the search")):
      for where, values in (("", in_search), (", prototype", in_prototype)):
        speed_rows.append(_ratio_row(label + where, False, values[kind],
                                     measured[False][kind][1],
                                     f"{search_traces['train']}, {search_traces['eval']}"))
  body = "\n".join([
      f"One PuRL search on mnist5k with LeNet-5 ({episodes} collect episodes plus greedy "
      f"evaluations: {len(found.episodes)} episodes, {steps} search steps of "
      f"{retrain_steps} retrain batches of {parts.splits.batch_size} and one measurement "
      f"of the {parts.splits.num_examples['reward']}-image reward split), every part of "
      "a step timed by wrapping the functions that do it (tools/benchmark.py "
      f"`Profiler`). Episode loop wall time {wall:.0f} s ({wall / steps * 1e3:,.0f} ms per "
      f"step); once per search besides: {SETUP} {seconds[SETUP]:.1f} s, {FINISH} "
      f"{seconds[FINISH]:.1f} s. The search's own search_overhead_share (results.json) "
      f"for this run: {100 * found.overhead_share:.1f} %. The last two columns profile the "
      "same search again in the same process (functions already traced) under a prototype "
      "of two library changes (tools/benchmark.py `_prototype`, not in purl_tf): one train "
      "stream for the whole search instead of a freshly shuffled one every episode, and "
      "per-episode reseeding of Python and NumPy only (tf.random.set_seed clears "
      "TensorFlow's kernel caches, so the first call of every function after it is slow). "
      "The prototype changes which batches and exploration draws an episode gets, not the "
      "work it does.",
      "",
      *rows,
      "",
      "Retrain and measurement against a plain compiled Keras step of the same model "
      "(LeNet-5, unwrapped, same weights), batch and strategy; medians of "
      f"{FLAGS.repeats} calls after warm-up; the last four rows take ours from the profiled "
      f"searches.{stream_note} The search's trainer traced its train and eval "
      f"functions {search_traces['train']} and {search_traces['eval']} times over "
      f"{steps} steps (no per-step retracing).",
      "",
      *speed_rows,
      "",
      f"- Command: `{command_line()}`",
      f"- Config: `{FLAGS.speed_gin_file}` plus " + ", ".join(f"`{b}`" for b in bindings),
      f"- Machine: {machine()} (shared with other work while measured)",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ])
  return Section(heading="Search speed (mnist5k, LeNet-5)", body=body)


# --- ImageNet: the cost of an episode, projected from measured step costs ------------------------

flags.DEFINE_integer("projection_batch", 8, "imagenet_projection: images per measured batch.")

PROJECTED = (("ResNet-50", "gin/resnet50.gin", "resnet50"),
             ("MobileNet-V2", "gin/mobilenet_v2.gin", "mobilenet_v2"))


def _config_value(name: str):
  """A parameter of the parsed gin config, or the default of the function it belongs to."""
  try:
    return gin.query_parameter(name)
  except ValueError:
    defaults = {"load_splits.eval_batch_size": None, "search.eval_interval": 10}
    return defaults[name]


def _step_costs(builder: Callable, size: int, batch: int, repeats: int) -> dict:
  """Measured seconds per image of a masked train step and an eval step at size x size, and
  of setting every layer's level and resetting, for the wrapped network on this machine."""
  rng = np.random.default_rng(FLAGS.seed)
  model = pruning.wrap(builder((size, size, 3), 1000, weights=None))
  controller = pruning.PruningController(model)
  strategy = tf.distribute.get_strategy()
  trainer = training.MaskedTrainer(model, strategy)
  images = rng.uniform(-100, 100, (batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int64)
  single = tf.data.Dataset.from_tensors((images, labels))
  stream = trainer.stream(single)
  controller.apply(rng.uniform(0.3, 0.95, controller.num_layers).tolist())
  train_step = statistics.median(_per_step_seconds(lambda: trainer.train(stream, 2), 2,
                                                   repeats))
  evaluation = trainer.distribute(single.repeat(2))
  eval_step = statistics.median(_per_step_seconds(lambda: trainer.evaluate(evaluation), 2,
                                                  repeats))
  levels = [rng.uniform(0.3, 0.95, controller.num_layers).tolist() for _ in range(repeats)]
  pending = iter(levels)
  set_all = statistics.median(median_seconds(lambda: controller.apply(next(pending)), repeats,
                                             before=controller.reset))
  reset = statistics.median(median_seconds(controller.reset, repeats))
  return {"layers": controller.num_layers, "train_image": train_step / batch,
          "eval_image": eval_step / batch, "set_all": set_all, "reset": reset}


def imagenet_projection() -> Section:
  """Per-episode cost of the two ImageNet configs on this machine, from measured step costs."""
  rows = ["| config | prunable layers | per episode: train images, eval images | train, "
          "eval s/image here | search step here | episode here | whole search here "
          "(episodes + greedy) |", "| --- | --- | --- | --- | --- | --- | --- |"]
  notes = []
  for title, gin_file, builder_name in PROJECTED:
    gin.clear_config()
    train._parse_gin([os.path.join(REPO, gin_file)], [f"{builder_name}.weights = None"])  # pylint: disable=protected-access
    builder = getattr(models, builder_name)
    size = int(_config_value("load_splits.image_size"))
    batch = int(_config_value("load_splits.batch_size"))
    reward = int(_config_value("load_splits.reward_size"))
    retrain = int(_config_value("PruningEnv.retrain_steps"))
    episodes = int(_config_value("search.num_episodes"))
    interval = int(_config_value("search.eval_interval"))
    print(f"{title}: measuring train and eval steps at {size}x{size}, batch "
          f"{FLAGS.projection_batch} ...", flush=True)
    costs = _step_costs(builder, size, FLAGS.projection_batch, FLAGS.repeats)
    layers = costs["layers"]
    step = (retrain * batch * costs["train_image"] + reward * costs["eval_image"]
            + costs["set_all"] / layers)
    episode = layers * step + costs["reset"]
    evaluated = episodes + -(-episodes // interval)
    rows.append(
        f"| `{gin_file}` ({title}, {size}x{size}) | {layers} | {layers * retrain * batch:,}, "
        f"{layers * reward:,} | {costs['train_image']:.3f}, {costs['eval_image']:.3f} | "
        f"{step / 60:.1f} min | {episode / 3600:.1f} h | {evaluated * episode / 86400:,.0f} "
        "days |")
    notes.append(f"{title}: {retrain} retrain batches of {batch} and a {reward:,}-image "
                 f"measurement per step; setting every layer's level "
                 f"{_fmt_ms(costs['set_all'])}, reset {_fmt_ms(costs['reset'])}.")
  gin.clear_config()
  body = "\n".join([
      "ImageNet cannot be measured on this machine (no GPU, no ImageNet, 2 CPU cores). "
      "What is measured here: a masked train step and an eval step of each network at "
      f"224x224 with batch {FLAGS.projection_batch} on random images (medians of "
      f"{FLAGS.repeats} after warm-up, per image), and setting/resetting all masks. The "
      "projection multiplies them by what the config spends per episode (layers x (retrain "
      "batches x batch + reward images)); it leaves out JPEG decoding and augmentation, "
      "and the agent's own overhead (see the search speed section: per step it does not "
      "grow with the network). The first column is hardware independent: divide it by a "
      "GPU's measured training and inference throughput (images/s) for that machine's "
      "per-episode cost.",
      "",
      *rows,
      "",
      *[f"- {note}" for note in notes],
      f"- Command: `{command_line()}`",
      f"- Machine: {machine()} (shared with other work while measured)",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ])
  return Section(heading="ImageNet: projected cost of an episode", body=body)


BENCHMARKS: Dict[str, Callable[[], Section]] = {
    "pruning_speed": pruning_speed,
    "search_speed": search_speed,
    "imagenet_projection": imagenet_projection,
    **{name: functools.partial(comparison, name) for name in SUITES},
}

# --root_dir, --gin_bindings come from purl_tf.train (imported above).
flags.DEFINE_list("seeds", ["0", "1", "2"], "Comparison benchmarks: seeds to run.")
flags.DEFINE_integer("episodes", None, "Collect episodes of every search (default: the "
                     "benchmark's: 50 for mnist5k and search_speed, 150 on GPU).")
flags.DEFINE_bool("mock", False, "Comparison benchmarks: run on tfds mock data with tiny "
                  "budgets (checks a GPU benchmark's definition on any machine).")

flags.DEFINE_enum("benchmark", "pruning_speed", sorted(BENCHMARKS), "Benchmark to run.")
flags.DEFINE_string("output", None,
                    "Markdown file whose section of this benchmark is replaced (or appended).")


def write_section(path: str, section: Section):
  """Replaces `## heading` and its body up to the next level-2 heading, or appends it."""
  text = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
  if not text.strip():
    text = f"{_DOC_TITLE}\n\n{_DOC_INTRO}\n"
  block = f"## {section.heading}\n\n{section.body.rstrip()}\n"
  pattern = re.compile(rf"^## {re.escape(section.heading)}[ \t]*\n.*?(?=^## |\Z)",
                       re.MULTILINE | re.DOTALL)
  if pattern.search(text):
    text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
  else:
    text = text.rstrip() + "\n\n" + block
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = path + ".partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(partial, path)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tf-agents and tfds log every read/checkpoint
  try:
    section = BENCHMARKS[FLAGS.benchmark]()
  except PurlError as error:
    print(f"benchmark: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  print(f"\n## {section.heading}\n\n{section.body}\n")
  if FLAGS.output:
    write_section(FLAGS.output, section)
    print(f"Wrote the section to {FLAGS.output}.")


if __name__ == "__main__":
  app.run(main)
