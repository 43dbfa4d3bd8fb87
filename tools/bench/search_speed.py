"""One profiled PuRL search: where a step's time goes, and the retrain and measurement
against a plain compiled Keras step."""
import collections
import datetime
import functools
import os
import random
import shutil
import statistics
import time
from typing import Callable, Optional, Sequence, Tuple

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from bench.common import command_line, fmt_ms, machine, per_step_seconds, REPO, Section
from bench.comparison import SUITES, WIDE_LEVELS
from purl_tf import files, models, pruning, search, train, training
from purl_tf.env import PruningEnv

FLAGS = flags.FLAGS

# Components of a search step, in the order reported; what is patched to time each.
RETRAIN, MEASURE = "retrain", "accuracy measurement"
COMPONENTS = (RETRAIN, MEASURE, "mask setting (set level, undo copy)",
              "episode reset (dense weights, optimizer, a new train stream replacing the "
              "last)", "observation",
              "agent inference", "agent training (updates, replay sampler)",
              "replay buffer add", "checkpoint", "episodes.json", "TensorBoard and plots")
OTHER = "other (driver, rewards, seeding, search record, progress lines)"
# Once per search, not per step: reported apart from the per-step shares.
SETUP = "setup (agent, replay buffer, checkpoint)"
FINISH = "finish (policy export, best allocation)"
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
  ours_train = per_step_seconds(lambda: trainer.train(stream, retrain_steps), retrain_steps,
                                 repeats)

  def keras_train():
    for _ in range(retrain_steps):
      plain.train_function(keras_stream)

  theirs_train = per_step_seconds(keras_train, retrain_steps, repeats)
  reward = trainer.distribute(splits.reward)
  batches = sum(1 for _ in splits.reward)
  ours_eval = per_step_seconds(lambda: trainer.evaluate(reward), batches, repeats)
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
  return (f"| {label} | {'on' if jit else 'off'} | {fmt_ms(ours)} | {fmt_ms(theirs)} | "
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
  bindings = ["train_eval.export_tflite = False", f"SearchRunner.num_episodes = {episodes}",
              "SearchRunner.eval_interval = 10", f"PruningEnv.levels = {WIDE_LEVELS}",
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
                f"{fmt_ms(seconds[name] / steps)} | "
                f"{100 * proto_seconds[name] / proto_wall:.1f} % | "
                f"{fmt_ms(proto_seconds[name] / proto_steps)} |")
  outside = 1.0 - inside / wall
  proto_outside = 1.0 - proto_inside / proto_wall
  rows.append(f"| **outside retrain and measurement** (target < 10 %) | "
              f"**{100 * outside:.1f} %** {'meets' if outside < 0.1 else 'MISSES'} | "
              f"{fmt_ms((wall - inside) / steps)} | **{100 * proto_outside:.1f} %** "
              f"{'meets' if proto_outside < 0.1 else 'MISSES'} | "
              f"{fmt_ms((proto_wall - proto_inside) / proto_steps)} |")
  rows.append(f"| whole step | 100 % | {fmt_ms(wall / steps)} | 100 % | "
              f"{fmt_ms(proto_wall / proto_steps)} |")
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
    stream_note = (f" An episode's first retrain call took {fmt_ms(first)} (median), its "
                   f"later ones {fmt_ms(later)}; under the prototype {fmt_ms(proto_first)} "
                   f"and {fmt_ms(proto_later)}.")
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
      "a step timed by wrapping the functions that do it (tools/bench/search_speed.py "
      f"`Profiler`). Episode loop wall time {wall:.0f} s ({wall / steps * 1e3:,.0f} ms per "
      f"step); once per search besides: {SETUP} {seconds[SETUP]:.1f} s, {FINISH} "
      f"{seconds[FINISH]:.1f} s. The search's own search_overhead_share (results.json) "
      f"for this run: {100 * found.overhead_share:.1f} %. The last two columns profile the "
      "same search again in the same process (functions already traced) under a prototype "
      "of two library changes (tools/bench/search_speed.py `_prototype`, not in purl_tf): "
      "one train stream for the whole search instead of a freshly shuffled one every "
      "episode, and "
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
