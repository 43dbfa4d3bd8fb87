"""What the speed benchmarks share: wall-time helpers, and (from purl_tf.markdown) the
Section, machine and command lines of docs/benchmarks.md."""
import os
import time
from typing import Callable, List, Optional, Sequence

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags

from purl_tf.markdown import command_line, machine, Section, write_section  # noqa: F401

FLAGS = flags.FLAGS

flags.DEFINE_integer("repeats", 7, "Timed repetitions of each measured operation.")
flags.DEFINE_integer("seed", 0, "Seed of the random levels and inputs.")
flags.DEFINE_integer("episodes", None, "search_speed: collect episodes of each search "
                     "(default: the benchmark's).")

# The repository root (tools/bench/common.py is two folders down).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
