r"""Method against method: every allocation method over targets and seeds, one table.

  python tools/benchmark.py --benchmark=mnist_resnet20            # the whole table
  python tools/benchmark.py --benchmark=mnist_resnet20 --quick    # one seed, one target
  python tools/benchmark.py --benchmark=imagenet_resnet50 --mock  # a GPU suite, checked
  python tools/benchmark.py --benchmark=mnist_resnet20 --variant=prior_erk_retrain6_final24
  python tools/benchmark.py --benchmark=mnist_resnet20_channels --quick  # channel pruning

Everything goes into --out_dir (default runs/benchmarks), named by the benchmark, so one
folder holds several benchmarks and their variants side by side. Each cell (method, target,
seed) is one `python -m purl_tf.train` process in <out_dir>/<benchmark>/target<t>/seed<s>/
<method>, its log beside it. A finished cell is never run again: its folder's results.json,
or its record in the results file <out_dir>/<name>.json or in that of its --quick (or
whole-table) twin, which runs the same cells (with --update_docs, the copies kept in the
docs are read too, so a benchmark continues in a fresh clone where the last one stopped). The first cell of a seed pre-trains the dense model every other cell of that seed
starts from, deterministically from the seed; its weights are cached in
<out_dir>/<name>_dense/seed<s>.h5 for the other cells (and for studies of that network). A
seed changes the reward split (load_splits.reward_seed), the pre-training and retraining
order (load_splits.shuffle_seed), the search and the fine-tune (train_eval.seed). --seeds,
--targets and --methods run part of a table; the results file keeps the other parts' cells.

A variant (--variant=<name>) is the shipped gin file variants/<name>.gin (gin/variants/ in
the repository): its bindings apply to the searches, gradual and the matched rows, which run
in <out_dir>/<benchmark>/<name>; the other cells are the plain benchmark's, shared.

A suite prunes weights (targets: train_eval.target_sparsity) or channels (targets:
train_eval.target_flops, the fraction of the dense FLOPs removed); its Granularity
(verdicts.WEIGHT, verdicts.CHANNEL) names its methods and its tables' words. A channel suite's
section adds, per budget, PuRL against the best rival of each seed at the shared fine-tune
and at the equal budget, the goals, whether uniform width loses to the other heuristics,
every network's FLOPs and LiteRT speedups, and PuRL's per-group allocation beside the best
heuristic's (channels.py).

Outputs: <out_dir>/<name>.json (every cell's numbers), three PNGs beside it and the
benchmark's section of <out_dir>/results.md (tables and goals, MET or NOT MET); with
--update_docs also the section of the docs page and its results file and PNGs.
"""
import dataclasses
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import purl_tf  # noqa: F401  (first: selects tf-keras before TensorFlow loads)
import gin

from purl_tf.errors import PurlError
from purl_tf.run import configs, pipeline
from purl_tf.runtime import files, plots

from . import channels
from .markdown import command_line, machine, Section, write_section
from .verdicts import (CHANNEL, GRANULARITIES, METHOD_ORDER, SEARCHES, WEIGHT, Granularity,
                       best_so_far, episodes_to_within, goals, percent, stats, summary, table)

OUT_DIR = os.path.join("runs", "benchmarks")  # --out_dir unless given
SECTIONS = "results.md"  # in --out_dir: every benchmark's section



def varied(kind: Granularity) -> Tuple[str, ...]:
  """Methods whose cell depends on the search's settings: the searches, and gradual and the
  matched rows, which train for the search's retrain budget (a variant's bindings apply
  to these)."""
  return (*SEARCHES, "gradual", *kind.matched)


VARIED = varied(WEIGHT)
SEEDS = (0, 1, 2)  # a table's seeds unless --seeds says otherwise
# Flags that pick a part of a table (the report's command names the whole table instead).
PART_FLAGS = ("seeds", "targets", "methods", "rerun", "norerun")
WIDE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
# Shrinks a GPU config to seconds on tfds mock data (as tests/test_configs.py does).
MOCK_BINDINGS = ("load_splits.image_size = 32", "load_splits.batch_size = 4",
                 "load_splits.eval_batch_size = 8", "load_splits.reward_size = 8",
                 "load_splits.shuffle_buffer = 16", "PruningEnv.retrain_steps = 1",
                 "make_strategy.name = 'default'", "SearchRunner.eval_interval = 1",
                 "SearchRunner.rescore_steps = 1", "finetune.epochs = 0.5",
                 "pretrain.epochs = 0")
MOCK_EXAMPLES = 24  # per split
ELAPSED = ".elapsed.json"  # beside each cell's folder: wall seconds of its process


@dataclasses.dataclass(frozen=True)
class Suite:
  """A named benchmark: one gin config, its targets and the bindings put on top of it."""
  name: str
  title: str
  gin_file: str  # a shipped config's name (purl_tf.run.configs.find)
  targets: Tuple[float, ...]
  episodes: int  # SearchRunner.num_episodes of every search
  bindings: Tuple[str, ...] = ()
  mock_bindings: Tuple[str, ...] = ()  # further bindings of --mock runs
  runs_here: bool = False  # measurable on a 2-core CPU machine
  quick_target: Optional[float] = None  # --quick's one target (default: the highest)
  granularity: str = "weight"  # what its config prunes (verdicts.GRANULARITIES)

  @property
  def kind(self) -> Granularity:
    """Its granularity: methods, the binding its targets go to, its tables' words."""
    return GRANULARITIES[self.granularity]


SUITES = {
    "mnist_resnet20": Suite(
        "mnist_resnet20", "mnist_full: ResNet-20 (width 8) at 0.95, 0.98 and 0.99",
        "mnist_resnet20", (0.95, 0.98, 0.99), episodes=40, runs_here=True),
    "mnist5k": Suite(
        "mnist5k", "mnist5k: LeNet-5 at 0.95 and 0.98", "quickstart", (0.95, 0.98),
        episodes=50,
        bindings=("train_eval.export_tflite = False", f"PruningEnv.levels = {WIDE_LEVELS}",
                  "SearchRunner.eval_interval = 10"),
        runs_here=True),
    "cifar10": Suite(
        "cifar10", "CIFAR-10: ResNet-20 at 0.8", "cifar10", (0.8,), episodes=150,
        bindings=("train_eval.export_tflite = False",)),
    "imagenet_resnet50": Suite(
        "imagenet_resnet50", "ImageNet: ResNet-50 at 0.8", "resnet50", (0.8,),
        episodes=150, bindings=("train_eval.export_tflite = False",),
        mock_bindings=("resnet50.weights = None",)),
    "imagenet_mobilenet_v2": Suite(
        "imagenet_mobilenet_v2", "ImageNet: MobileNet-V2 at 0.7", "mobilenet_v2",
        (0.7,), episodes=150, bindings=("train_eval.export_tflite = False",),
        mock_bindings=("mobilenet_v2.weights = None",)),
    # Channel pruning: targets are the fraction of the dense network's FLOPs removed
    # (train_eval.target_flops). The budget is where uniform width loses at least 2 pt to the
    # best other heuristic after the shared fine-tune, judged on the reward split (validation
    # digits): seed 0's one-shot cells put uniform width 3.0 pt behind keeping the ends at
    # 0.8, and level with or ahead of the best other at 0.7 (-0.2 pt), 0.85 (0.0) and 0.9
    # (-0.2); at 0.95 keeping the ends cannot reach the budget (0.937 at most). Over the
    # whole table's three seeds uniform width trails the best other heuristic at 0.8 by 3.0,
    # 0.8 and 2.0 pt: the budget separates on two seeds of three (docs/results.md).
    "mnist_resnet20_channels": Suite(
        "mnist_resnet20_channels",
        "mnist_full: ResNet-20 (width 8), channel pruning at a FLOPs budget",
        "mnist_resnet20_channels", (0.8,), episodes=20, runs_here=True,
        quick_target=0.8, granularity="channel"),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where and how every cell of a suite runs."""
  suite: Suite
  root_dir: str
  seeds: Tuple[int, ...]
  targets: Tuple[float, ...]
  episodes: int
  mock: bool
  quick: bool = False
  extra_bindings: Tuple[str, ...] = ()
  # A named variant of the searches (gin/variants/<variant>.gin, whose bindings are
  # extra_bindings): they apply to the VARIED methods only, which run in
  # root_dir/<variant>; the other cells are the plan's own, shared.
  variant: str = ""
  # The methods whose cells this invocation runs (--methods; empty: every method of the
  # suite's granularity); the report still shows the finished cells of every method.
  methods: Tuple[str, ...] = ()

  def __post_init__(self):
    if not self.methods:
      object.__setattr__(self, "methods", self.suite.kind.methods)

  @property
  def base_name(self) -> str:
    """The name of the plain benchmark (whose dense models a variant shares)."""
    return self.suite.name + ("_quick" if self.quick else "") + ("_mock" if self.mock else "")

  @property
  def name(self) -> str:
    return self.base_name + (f"_{self.variant}" if self.variant else "")

  def cells(self) -> List[Tuple[int, float, str]]:
    """(seed, target, method) in the order they run."""
    return [(seed, target, method) for seed in self.seeds for target in self.targets
            for method in self.suite.kind.methods]

  def cells_to_run(self) -> List[Tuple[int, float, str]]:
    """The cells of `methods`, in the order they run."""
    return [cell for cell in self.cells() if cell[2] in self.methods]

  def run_dir(self, target: float, seed: int, method: str) -> str:
    varied_dir = self.variant if method in varied(self.suite.kind) else ""
    return os.path.join(self.root_dir, varied_dir, f"target{target}", f"seed{seed}", method)

  def log_path(self, target: float, seed: int, method: str) -> str:
    """The cell's log, beside its folder."""
    return self.run_dir(target, seed, method) + ".log"

  def elapsed_path(self, target: float, seed: int, method: str) -> str:
    """The cell's recorded wall time (JSON), beside its folder."""
    return self.run_dir(target, seed, method) + ELAPSED

  def bindings(self, target, seed, method: str = SEARCHES[0]) -> List[str]:
    """The gin bindings of the method's cell at (target, seed), in order."""
    mock = (*MOCK_BINDINGS, *self.suite.mock_bindings) if self.mock else ()
    extra = self.extra_bindings if not self.variant or method in varied(self.suite.kind) else ()
    return [*self.suite.bindings, *mock, f"{self.suite.kind.target_binding} = {target}",
            *seed_bindings(seed), f"SearchRunner.num_episodes = {self.episodes}", *extra]


def seed_bindings(seed) -> List[str]:
  """What a seed changes in a cell: the search, pre-training and fine-tune (train_eval.seed),
  the reward split and the train order. A tool that pre-trains with these bindings on a
  suite's config gets the dense network of that seed's cells."""
  return [f"train_eval.seed = {seed}", f"load_splits.reward_seed = {seed}",
          f"load_splits.shuffle_seed = {seed}"]


def variant_bindings(name: str) -> Tuple[str, ...]:
  """The bindings of the shipped variant `name` (variants/<name>.gin), one string each in
  file order: comment and blank lines dropped, a tuple or list spread over lines joined. A
  variant holds bindings only (it goes on top of a suite's config, as a second --gin_file
  of `python -m purl_tf.train` does)."""
  shipped = [n.split("/", 1)[1] for n in configs.names() if n.startswith("variants/")]
  if name not in shipped:
    raise PurlError(f"--variant={name} is not a shipped variant (gin/variants/<name>.gin): "
                    f"use one of {', '.join(shipped)}.")
  path = configs.find(f"variants/{name}")
  bindings, pending = [], ""
  with open(path, encoding="utf-8") as handle:
    for line in handle:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("include "):
        raise PurlError(f"{path}: a variant holds bindings only, not '{line}'.")
      pending = f"{pending} {line}".strip()
      if sum(pending.count(o) - pending.count(c) for o, c in ("()", "[]", "{}")) <= 0:
        bindings.append(pending)  # else a tuple or list goes on
        pending = ""
  if pending:
    raise PurlError(f"{path}: the binding '{pending}' is not closed.")
  if not bindings:
    raise PurlError(f"{path} holds no bindings.")
  return tuple(bindings)


def model_builder():
  """The model builder gin binds to train_eval.model_builder, through gin's public API:
  the configurable a reference (@cifar_resnet) names, else the bound or default function."""
  bound = pipeline.bound(pipeline.train_eval, "model_builder")
  selector = getattr(bound, "selector", None)
  return gin.get_configurable(selector) if selector else bound


def make_plan(suite_name: str, root_dir: Optional[str], seeds: Sequence[str],
              episodes: Optional[int], mock: bool, quick: bool = False,
              extra_bindings: Sequence[str] = (), variant: str = "",
              targets: Sequence[str] = (), methods: Sequence[str] = ()) -> Plan:
  """Checks a benchmark's flags; one-line PurlErrors for bad ones. The cells go to
  <root_dir>/<benchmark> (<root_dir>/mock/<benchmark> with `mock`); root_dir is --out_dir
  (None: runs/benchmarks). `targets` (empty: all of the suite's) picks some of the suite's
  targets, `methods` (empty: all) the methods whose cells run."""
  if suite_name not in SUITES:
    raise PurlError(f"--benchmark={suite_name} is unknown: use one of {sorted(SUITES)}.")
  suite = SUITES[suite_name]
  try:
    seed_values = tuple(int(s) for s in seeds)
  except ValueError:
    raise PurlError(f"--seeds={','.join(seeds)} must be integers, e.g. --seeds=0,1,2.") from None
  if not seed_values or len(set(seed_values)) != len(seed_values):
    raise PurlError(f"--seeds={','.join(seeds)} must name at least one seed, each once.")
  if episodes is not None and episodes < 1:
    raise PurlError(f"--episodes={episodes} must be at least 1.")
  if variant and (not variant.isidentifier() or not extra_bindings):
    raise PurlError(f"--variant={variant!r} must be a name (letters, digits, _) of a gin "
                    "file gin/variants/<name>.gin holding the bindings that make the variant.")
  if not suite.runs_here and not mock:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not tf.config.list_physical_devices("GPU"):
      raise PurlError(f"--benchmark={suite_name} is sized for GPU machines and this one has "
                      "none: add --mock to check it on tfds mock data.")
  known = ", ".join(str(t) for t in suite.targets)
  try:
    chosen = {float(t) for t in targets}
  except ValueError:
    raise PurlError(f"--targets={','.join(targets)} must be numbers: some of {known}.") from None
  if not chosen <= set(suite.targets):
    raise PurlError(f"--targets={','.join(targets)} names a target {suite_name} does not "
                    f"have: use some of {known}.")
  targets = tuple(t for t in suite.targets if t in chosen) if chosen else suite.targets
  every = suite.kind.methods
  unknown = sorted(set(methods) - set(every))
  if unknown:
    raise PurlError(f"--methods names {', '.join(unknown)}, which the benchmark does not "
                    f"have: use some of {', '.join(every)}.")
  methods = tuple(m for m in every if m in methods) if methods else every
  if quick:
    seed_values = seed_values[:1]
    targets = (suite.quick_target or max(suite.targets),)
  base = os.path.abspath(os.path.expanduser(root_dir or OUT_DIR))
  folder = os.path.join(base, "mock" if mock else "", suite_name)
  return Plan(suite, folder, seed_values, targets, episodes or (1 if mock else suite.episodes),
              mock, quick, tuple(extra_bindings), variant, methods)


def kept_dense(plan: Plan, results_dir: str, seed: int) -> str:
  """Where the dense weights of a seed are cached beside the results file (in --out_dir,
  never in the checkout: they are pre-trained again from the seed where missing)."""
  return os.path.join(results_dir, f"{plan.base_name}_dense", f"seed{seed}.h5")


def restore_dense(kept: str, root: str):
  """Puts the cached dense weights `kept` (when cached) where a run in `root` loads them
  instead of pre-training."""
  weights = os.path.join(root, files.DENSE_WEIGHTS)
  if os.path.exists(kept) and not os.path.exists(weights):
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    shutil.copyfile(kept, weights)


def keep_dense(root: str, kept: str):
  """Caches the dense weights a run in `root` pre-trained as `kept`, unless cached."""
  if not os.path.exists(kept):
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copyfile(os.path.join(root, files.DENSE_WEIGHTS), kept)


def method_bindings(method: str, kind: Granularity = WEIGHT) -> List[str]:
  """The gin bindings that pick a cell's method (a matched row: its one-shot method,
  fine-tuned as long as a search trains)."""
  if method in kind.matched:
    return [f"train_eval.method = '{kind.matched[method]}'",
            "train_eval.match_search_steps = True"]
  return [f"train_eval.method = '{method}'"]


def run_cell(plan: Plan, seed: int, target: float, method: str, results_dir: str) -> str:
  """Runs one cell in a `python -m purl_tf.train` process unless its folder holds a
  finished run. Every cell of a seed starts from the dense weights kept for the seed
  (kept_dense), which the seed's first cell writes. Returns the cell's folder; raises
  PurlError naming the log on failure."""
  folder = plan.run_dir(target, seed, method)
  if os.path.exists(os.path.join(folder, files.RESULTS)):
    return folder
  kept = kept_dense(plan, results_dir, seed)
  restore_dense(kept, folder)
  command = [sys.executable, "-m", "purl_tf.train", f"--root_dir={folder}",
             f"--gin_file={plan.suite.gin_file}"]
  command += [f"--gin_bindings={b}"
              for b in (*plan.bindings(target, seed, method),
                        *method_bindings(method, plan.suite.kind))]
  if plan.mock:
    command.append(f"--mock_examples={MOCK_EXAMPLES}")
  log = plan.log_path(target, seed, method)
  os.makedirs(os.path.dirname(log), exist_ok=True)
  started = time.time()
  with open(log, "a", encoding="utf-8") as handle:
    handle.write(f"$ {' '.join(command)}\n")
    handle.flush()
    code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
  if code:
    with open(log, encoding="utf-8") as handle:
      tail = [line.strip() for line in handle if line.strip()][-1:]
    raise PurlError(f"{method} (target {target}, seed {seed}) failed with exit code {code}: "
                    f"{tail[0] if tail else ''} (log: {log}).")
  files.write_json(plan.elapsed_path(target, seed, method), {"seconds": time.time() - started})
  keep_dense(folder, kept)
  return folder


def cell_seconds(plan: Plan, seed: int, target: float, method: str) -> Optional[float]:
  """Wall seconds of a finished cell's process, when recorded."""
  record = files.read_json(plan.elapsed_path(target, seed, method))
  return None if record is None else record["seconds"]


def eta_seconds(plan: Plan, remaining: Sequence[Tuple[int, float, str]],
                known: Optional[dict] = None) -> Optional[float]:
  """Wall seconds the `remaining` cells should take: each at the mean of the finished
  cells of its method (else of all finished cells; `known` cells of the results file
  count too); None before any finished."""
  done: Dict[str, List[float]] = {}
  for seed, target, method in plan.cells():
    seconds = cell_seconds(plan, seed, target, method)
    if seconds is None and (seed, target, method) in (known or {}):
      seconds = known[(seed, target, method)]["wall_seconds"]
    if seconds is not None:
      done.setdefault(method, []).append(seconds)
  every = [s for values in done.values() for s in values]
  if not every:
    return None
  return sum(statistics.fmean(done.get(method, every)) for _, _, method in remaining)


def results_path(plan: Plan, results_dir: str) -> str:
  return os.path.join(results_dir, f"{plan.name}.json")


def twins(plan: Plan) -> Tuple[Plan, Plan]:
  """The plan and its --quick twin (or whole-table twin): the same cells, run the same way
  in the same folders, so each takes the cells the other finished."""
  return plan, dataclasses.replace(plan, quick=not plan.quick)


def recorded(plan: Plan, results_dir: str) -> Dict[Tuple[int, float, str], dict]:
  """The cells the results files of the plan and its twin hold, by (seed, target,
  method), the plan's own first; none of a file written with other bindings or episodes
  (its cells then measure something else)."""
  found = {}
  for twin in reversed(twins(plan)):
    written = files.read_json(results_path(twin, results_dir))
    if written and (written["bindings"], written["episodes"]) == (
        plan.bindings("<target>", "<seed>"), plan.episodes):
      found.update({(c["seed"], c["target"], c["method"]): c for c in written["cells"]})
  return found


def forget(plan: Plan, results_dir: str):
  """Removes the cells of the plan's methods (plan.cells_to_run) from their folders and
  from the results file, so that run_plan measures them again (e.g. after a change to a
  method); the other cells stay."""
  if plan.methods == plan.suite.kind.methods:
    raise PurlError("--rerun would measure the whole table again: name the methods to rerun "
                    "with --methods, or delete the benchmark's folder.")
  cells = set(plan.cells_to_run())
  for seed, target, method in cells:
    shutil.rmtree(plan.run_dir(target, seed, method), ignore_errors=True)
    for path in (plan.log_path(target, seed, method), plan.elapsed_path(target, seed, method)):
      if os.path.exists(path):
        os.remove(path)
  for twin in twins(plan):
    path = results_path(twin, results_dir)
    written = files.read_json(path)
    if written:
      written["cells"] = [cell for cell in written["cells"]
                          if (cell["seed"], cell["target"], cell["method"]) not in cells]
      files.write_json(path, written)


def run_plan(plan: Plan, results_dir: str, after_cell=lambda: None):
  """Runs the cells of the plan's methods, seed by seed; a cell finished before (in its
  folder or in the results file) is not run again. One line per cell; `after_cell()`
  runs after each cell run here (e.g. to rewrite the results)."""
  cells, known = plan.cells_to_run(), recorded(plan, results_dir)
  for number, (seed, target, method) in enumerate(cells, 1):
    folder = plan.run_dir(target, seed, method)
    before = known.get((seed, target, method))
    reused = before is not None or os.path.exists(os.path.join(folder, files.RESULTS))
    began = time.time()
    if not reused:
      eta = eta_seconds(plan, cells[number - 1:], known)
      print(f"[{number:2d}/{len(cells)}] seed {seed}, target {target}: {method} ... "
            f"(log {plan.log_path(target, seed, method)}; "
            f"ETA {'?' if eta is None else _duration(eta)})", flush=True)
    if before is None:
      run_cell(plan, seed, target, method, results_dir)
      before = cell_record(read_run(plan, seed, target, method), plan.suite.kind)
    kind = plan.suite.kind
    print(f"[{number:2d}/{len(cells)}] seed {seed}, target {target}: {method:17s} "
          f"test {before['test_accuracy']:.4f} at {kind.achieved_column} "
          f"{before[kind.achieved]:.4f}"
          + ("  (finished before)" if reused else f"  in {time.time() - began:.0f} s"),
          flush=True)
    if not reused:
      after_cell()


@dataclasses.dataclass
class Run:
  """The outcome of one cell."""
  method: str
  target: float
  seed: int
  results: dict  # results.json
  episodes: Optional[list] = None  # search/episodes.json of the searches
  seconds: Optional[float] = None  # the process's wall time


def read_run(plan: Plan, seed: int, target: float, method: str) -> Optional[Run]:
  """The finished cell in its folder; None when it has not finished there."""
  folder = plan.run_dir(target, seed, method)
  results = files.read_json(os.path.join(folder, files.RESULTS))
  if results is None:
    return None
  return Run(method, target, seed, results, files.read_json(os.path.join(folder, files.EPISODES)),
             cell_seconds(plan, seed, target, method))


def collect(plan: Plan, results_dir: str) -> List[dict]:
  """The record of every finished cell of the plan, in plan order: from its folder, else
  from the results file."""
  known = recorded(plan, results_dir)
  cells = []
  for key in plan.cells():
    run = read_run(plan, *key)
    record = cell_record(run, plan.suite.kind) if run else known.get(key)
    if record is not None:
      cells.append(record)
  return cells


def cell_record(run: Run, kind: Granularity = WEIGHT) -> dict:
  """One cell of the results file: what the tables and goals read (a channel cell also
  its FLOPs, parameters, latencies and speedups: channel_fields)."""
  results = run.results
  record = {
      "method": run.method, "target": run.target, "seed": run.seed,
      "test_accuracy": results["pruned_test_accuracy"],
      "dense_test_accuracy": results["dense_test_accuracy"],
      "sparsity": (results["global_sparsity"] if kind is WEIGHT
                   else results.get("global_sparsity")),
      "reached_target": results["reached_target"],
      "reward_accuracy": results["pruned_reward_accuracy"],
      "search_reward_accuracy": results["best_reward_accuracy_in_search"],
      "rescored_reward_accuracy": results.get("rescored_reward_accuracy"),
      "episodes": len(run.episodes) if run.episodes else 0,
      "episodes_to_within": (episodes_to_within(run.episodes or [], run.target)
                             if run.method in SEARCHES else None),
      "best_so_far": (best_so_far(run.episodes or [], run.target)
                      if run.method in SEARCHES else None),
      "train_steps": results["search_retrain_steps"] + results["finetune_steps"],
      "method_seconds": results["search_seconds"] + results["finetune_seconds"],
      "wall_seconds": run.seconds, "allocation": results["allocation"],
      "warnings": results.get("warnings", []),
  }
  if kind is CHANNEL:
    record.update(channel_fields(results))
  return record


def _first(results: dict, *paths: Tuple[str, ...]):
  """The value at the first of `paths` (keys into nested dicts) that results.json holds."""
  for path in paths:
    value = results
    for key in path:
      value = value.get(key) if isinstance(value, dict) else None
    if value is not None:
      return value
  return None


def channel_fields(results: dict) -> dict:
  """What a channel cell's results.json says of its network beside the dense one: FLOPs
  removed (the fraction), FLOPs and parameters of both, LiteRT latency per thread count
  ({"dense"/"pruned": {"1": ms, ...}}), the speedups (dense latency over pruned) and the
  Keras throughput speedup. A channel run's results.json holds the FLOPs removed as its
  global_sparsity, the whole model's FLOPs and parameters (flops_total, flops_remaining,
  params_total, params_remaining), the speedups at its top level and the speed measurement
  (run/speed.measure_speed's dict) under "speed", whose counts come first; what is missing
  (a run without export_tflite measures no speed) is None."""
  def speed(*path):
    return _first(results, path, ("speed", *path))

  dense_flops = _first(results, ("speed", "dense", "flops"), ("flops_total",))
  pruned_flops = _first(results, ("speed", "pruned", "flops"), ("flops_remaining",))
  removed = _first(results, ("global_sparsity",))
  if removed is None and dense_flops and pruned_flops is not None:
    removed = 1.0 - pruned_flops / dense_flops
  fields = {
      "flops_removed": removed, "dense_flops": dense_flops, "pruned_flops": pruned_flops,
      "dense_params": _first(results, ("speed", "dense", "params"), ("params_total",)),
      "pruned_params": _first(results, ("speed", "pruned", "params"),
                              ("params_remaining",)),
      "latency_ms": {network: speed(network, "latency_ms") for network in ("dense", "pruned")},
      "throughput_speedup": speed("throughput_speedup"),
  }
  for threads in channels.THREADS:
    key = channels.speedup_key(threads)
    fields[key] = speed(key)
  return fields


def focus_target(plan: Plan) -> float:
  """The target the figures and the searches' goals look at: the suite's deciding one
  (--quick's) when the plan has it, else the highest."""
  quick = plan.suite.quick_target
  return quick if quick in plan.targets else max(plan.targets)


def write_figures(plan: Plan, cells: Sequence[dict], folder: str) -> List[str]:
  """The three PNGs (paths): accuracy against target per method; the allocation of PuRL
  and of some one-shot methods (kind.layer_methods: LAMP and global magnitude of weights)
  at focus_target (first seed); best-so-far reward-split accuracy against episode, dense
  and episodic reward (mean over seeds)."""
  kind = plan.suite.kind
  os.makedirs(folder, exist_ok=True)
  paths = []

  def save(suffix, png):
    path = os.path.join(folder, f"{plan.name}_{suffix}.png")
    with open(path, "wb") as handle:
      handle.write(png)
    paths.append(path)

  curves = {}
  for method in kind.methods:
    points = [(t, summary([c for c in cells if c["method"] == method and c["target"] == t],
                          kind))
              for t in plan.targets
              if any(c["method"] == method and c["target"] == t for c in cells)]
    if points:
      curves[kind.names[method]] = ([t for t, _ in points],
                                      [s["accuracy"].mean for _, s in points],
                                      [s["accuracy"].std for _, s in points])
  if curves:
    save("accuracy", plots.lines(curves, f"target ({kind.achieved_column})", "test accuracy",
                                 f"{plan.suite.name}: test accuracy after fine-tuning"))
  highest, first = focus_target(plan), plan.seeds[0]
  layers = {kind.names[c["method"]]: c["allocation"] for c in cells
            if c["target"] == highest and c["seed"] == first
            and c["method"] in kind.layer_methods}
  if layers:
    save("layers", plots.allocations(layers, f"{kind.layer_label} at {highest}, seed {first}"))
  progress = {}
  for method in ("purl", "episodic"):
    series = [c.get("best_so_far") for c in cells
              if c["method"] == method and c["target"] == highest]
    series = [s for s in series if s]
    if series:
      length = min(len(s) for s in series)
      x, y = [], []
      for i in range(length):
        values = [s[i] for s in series if s[i] is not None]
        if values:
          x.append(i + 1)
          y.append(statistics.fmean(values))
      progress[kind.names[method]] = (x, y, None)
  if progress:
    save("progress", plots.lines(progress, "evaluated episodes",
                                 "best-so-far reward-split accuracy",
                                 f"search progress at {highest} (mean over seeds)"))
  return paths


def body(plan: Plan, cells: Sequence[dict], figures: Sequence[str], results_file: str,
         output: Optional[str]) -> str:
  """The markdown section: how it was run, a table and goals per target, the figures."""
  parts = []
  if plan.mock:
    parts += ["**Mock data check, not a measurement**: every method ran end to end on "
              f"`tfds.testing.mock_data` ({MOCK_EXAMPLES} random examples per split) to show "
              "the benchmark definition runs; the accuracies mean nothing.", ""]
  parts += [f"Seeds {', '.join(map(str, plan.seeds))}; each seed draws its own reward split, "
            "pre-training and retraining order, search and fine-tune. Every search runs "
            f"{plan.episodes} collect episodes (plus greedy evaluations; random search as "
            "many allocations). All methods of a seed start from the same dense model and "
            "get the same fine-tune. Wall time is choosing plus fine-tuning (pre-training "
            "is shared and excluded); train steps are the search's retrain batches"
            + (" (or gradual's ramp)" if "gradual" in plan.suite.kind.methods else "")
            + " plus the fine-tune's.", ""]
  kind, highest = plan.suite.kind, max(plan.targets)
  for target in plan.targets:
    chosen = [c for c in cells if c["target"] == target]
    if not chosen:
      continue
    dense = stats([c["dense_test_accuracy"] for c in chosen if c["method"] == "purl"]
                  or [c["dense_test_accuracy"] for c in chosen])
    if kind is CHANNEL:
      verdict_lines = channels.section(chosen, target, plan.mock)
    else:
      verdict_lines = (["- Goals are not evaluated on mock data."] if plan.mock
                       else goals(chosen, target, target == highest))
    deciding = (" (the deciding budget)" if kind is CHANNEL and len(plan.targets) > 1
                and target == plan.suite.quick_target else "")
    parts += [f"### {kind.heading(target)}{deciding}", "",
              f"Dense test accuracy {percent(dense.mean)} ± {percent(dense.std)} %.", "",
              table(chosen, target, kind), "", *verdict_lines, ""]
  where = os.path.dirname(os.path.abspath(output)) if output else os.getcwd()
  parts += [f"![{os.path.basename(p)}]({os.path.relpath(p, where)})" for p in figures]
  seconds = [c["wall_seconds"] for c in cells if c["wall_seconds"] is not None]
  parts += [
      "", "How it was run:", "",
      f"- Command: `{table_command(plan)}`; a rerun reuses the finished cells in "
      f"`{os.path.relpath(plan.root_dir)}` (delete it to measure again).",
      f"- Every cell's numbers: `{os.path.relpath(results_file, where)}`.",
      f"- Time: {len(seconds)} of {len(plan.cells())} cell processes took "
      f"{sum(seconds) / 60:.0f} min in all.",
      f"- Config: `--gin_file={plan.suite.gin_file}` plus, for every cell, "
      + ", ".join(f"`{b}`" for b in plan.bindings("<target>", "<seed>"))
      + ", `train_eval.method = '<method>'` (the rows fine-tuned as long as a search trains: "
      "their one-shot method and `train_eval.match_search_steps = True`).",
      *([f"- Variant `{plan.variant}` (gin/variants/{plan.variant}.gin): the last "
         f"{len(plan.extra_bindings)} bindings apply to "
         f"{', '.join(varied(kind))} only (gradual and the matched rows train for the search's "
         "retrain budget); the other methods' cells are the plain benchmark's."]
        if plan.variant else []),
      f"- Machine: {machine()}",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ]
  return "\n".join(parts)


def covering(plan: Plan, results_dir: str) -> Plan:
  """The plan widened to every seed and target its results file already holds, so that a
  part of a table (--seeds, --targets) adds to the results file and drops none of it."""
  known = recorded(plan, results_dir)
  return dataclasses.replace(
      plan, seeds=tuple(sorted(set(plan.seeds) | {seed for seed, _, _ in known})),
      targets=tuple(sorted(set(plan.targets) | {target for _, target, _ in known})))


def report(plan: Plan, output: Optional[str], results_dir: str) -> Section:
  """Writes the results file and figures of the finished cells of the plan and of its
  results file (see covering); their section."""
  plan = covering(plan, results_dir)
  cells = collect(plan, results_dir)
  written = files.write_json(results_path(plan, results_dir), {
      "benchmark": plan.suite.name, "quick": plan.quick, "mock": plan.mock,
      "seeds": list(plan.seeds), "targets": list(plan.targets), "episodes": plan.episodes,
      "bindings": plan.bindings("<target>", "<seed>"), "cells": cells})
  figures = write_figures(plan, cells, results_dir)
  title = plan.suite.title + (" (quick: one seed, one target)" if plan.quick else "") + (
      " (mock data check)" if plan.mock else "") + (
          f" (variant {plan.variant}: {', '.join(plan.extra_bindings)} on the searches and "
          "gradual)" if plan.variant else "")
  return Section(heading=title, body=body(plan, cells, figures, written, output))


def table_command(plan: Plan, arguments: Optional[Sequence[str]] = None) -> str:
  """The command that runs the plan's whole table: this process's (or `arguments`)
  without the flags that picked a part of it, with the plan's seeds and targets."""
  arguments = list(sys.argv[1:] if arguments is None else arguments)
  kept = []
  while arguments:
    word = arguments.pop(0)
    name = word.split("=", 1)[0].lstrip("-")
    if name in PART_FLAGS:
      if "=" not in word and name in ("seeds", "targets", "methods") and arguments:
        arguments.pop(0)  # "--seeds 1,2": the value is the next word
      continue
    kept.append(word)
  if plan.seeds != (SEEDS[:1] if plan.quick else SEEDS):
    kept.append(f"--seeds={','.join(str(seed) for seed in plan.seeds)}")
  if plan.targets != plan.suite.targets and not plan.quick:
    kept.append(f"--targets={','.join(str(target) for target in plan.targets)}")
  return command_line(kept)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(plan: Plan, out_dir: str, rerun: bool = False, docs: Optional[str] = None,
        docs_data: Optional[str] = None) -> Section:
  """Runs the plan's missing cells, rewriting its results file, figures and section in
  out_dir (<out_dir>/results.md) after each; with `docs` also the section of that markdown
  file and the results file and figures in `docs_data` (a fresh out_dir first takes the
  cells recorded there, so a table continues where the docs' copy stopped). `rerun`
  measures the plan's methods again (forget). Returns the section."""
  for twin in twins(plan) if docs else ():
    recorded_in_docs, here = results_path(twin, docs_data), results_path(twin, out_dir)
    if os.path.exists(recorded_in_docs) and not os.path.exists(here):
      os.makedirs(out_dir, exist_ok=True)
      shutil.copyfile(recorded_in_docs, here)

  def publish():
    section = report(plan, os.path.join(out_dir, SECTIONS), out_dir)
    write_section(os.path.join(out_dir, SECTIONS), section)
    if docs:
      os.makedirs(docs_data, exist_ok=True)
      shutil.copyfile(results_path(plan, out_dir), results_path(plan, docs_data))
      section = report(plan, docs, docs_data)
      write_section(docs, section)
    return section

  if rerun:
    forget(plan, out_dir)
  run_plan(plan, out_dir, after_cell=publish)
  return publish()
