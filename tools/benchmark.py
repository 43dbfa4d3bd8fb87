"""Benchmarks of purl_tf, each printing a markdown table and writing it into a docs file.

  .venv/bin/python tools/benchmark.py --benchmark=pruning_speed --output=docs/benchmarks.md

Each benchmark is a function returning a `Section` (a level-2 heading and its markdown
body); `--output` replaces that heading's section in the file (or appends it), leaving
the other sections as they are. Add a benchmark by writing such a function and listing it
in BENCHMARKS.
"""
import dataclasses
import datetime
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from purl_tf import models, pruning, training

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


BENCHMARKS: Dict[str, Callable[[], Section]] = {
    "pruning_speed": pruning_speed,
}

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
  section = BENCHMARKS[FLAGS.benchmark]()
  print(f"\n## {section.heading}\n\n{section.body}\n")
  if FLAGS.output:
    write_section(FLAGS.output, section)
    print(f"Wrote the section to {FLAGS.output}.")


if __name__ == "__main__":
  app.run(main)
