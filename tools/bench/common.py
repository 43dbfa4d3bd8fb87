"""What every benchmark shares: its markdown Section, the machine and command lines,
wall-time helpers and the writer of docs/benchmarks.md."""
import dataclasses
import os
import platform
import re
import sys
import time
from typing import Callable, List, Optional, Sequence

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import tensorflow as tf

FLAGS = flags.FLAGS

flags.DEFINE_integer("repeats", 7, "Timed repetitions of each measured operation.")
flags.DEFINE_integer("seed", 0, "Seed of the random levels and inputs.")

# The repository root (tools/bench/common.py is two folders down).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def per_step_seconds(run: Callable[[], object], steps: int, repeats: int) -> List[float]:
  """Seconds per train step of `repeats` calls of run() (each `steps` steps), after one
  untimed warm-up call."""
  run()
  return [t / steps for t in median_seconds(run, repeats)]


def fmt_ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.1f} ms"


def spread(times: Sequence[float]) -> str:
  return f"{fmt_ms(min(times))} – {fmt_ms(max(times))}"


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
