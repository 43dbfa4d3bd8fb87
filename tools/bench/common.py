"""What the speed benchmarks share: their common flags, wall-time helpers, and (from
markdown) the Section, machine and command lines of a results page."""
import os
import time
from typing import Callable, List, Optional, Sequence

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags

from .markdown import command_line, machine, Section, write_section  # noqa: F401
from .methods import OUT_DIR, model_builder, variant_bindings  # noqa: F401

FLAGS = flags.FLAGS

flags.DEFINE_integer("repeats", 7, "Timed repetitions of each measured operation.")
flags.DEFINE_integer("seed", 0, "Seed of the random levels and inputs, and of the dense "
                     "network a benchmark pre-trains.")
flags.DEFINE_integer("episodes", None, "Collect episodes of every search (default: the "
                     "benchmark's).")
flags.DEFINE_string("out_dir", OUT_DIR, "Folder the benchmark writes into (its runs, results "
                    "files, figures, cached dense weights and <out_dir>/results.md), each "
                    "named by the benchmark.")
flags.DEFINE_multi_string("gin_bindings", [], "Further gin bindings (of every cell of a "
                          "method-against-method benchmark; of the config a speed benchmark "
                          "measures).")
flags.DEFINE_string("variant", "", "A shipped variant, gin/variants/<name>.gin: its bindings "
                    "go on the searches, gradual and the matched rows of a method-against-"
                    "method benchmark (which then runs in <out_dir>/<benchmark>/<name> and "
                    "writes <benchmark>_<name>.json), and on the config a speed benchmark "
                    "measures (before --gin_bindings).")


def extra_bindings() -> List[str]:
  """The bindings a speed benchmark puts on its config: --variant's, then --gin_bindings."""
  return [*(variant_bindings(FLAGS.variant) if FLAGS.variant else ()), *FLAGS.gin_bindings]


def out_dir(*names: str) -> str:
  """A path in --out_dir (absolute)."""
  return os.path.join(os.path.abspath(os.path.expanduser(FLAGS.out_dir)), *names)


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
