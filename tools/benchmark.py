r"""The benchmarks of purl_tf, one command: method against method, and speed.

  python tools/benchmark.py --benchmark=mnist_resnet20                 # the whole table
  python tools/benchmark.py --benchmark=mnist_resnet20 --quick         # one seed, one target
  python tools/benchmark.py --benchmark=mnist_resnet20_channels --quick  # channels, 0.8 of FLOPs
  python tools/benchmark.py --benchmark=mnist_resnet20 --variant=cheap_search_fit_lamp \
      --seeds=0 --targets=0.99 --methods=purl,lamp_matched,erk_matched
  python tools/benchmark.py --benchmark=imagenet_resnet50 --mock       # a GPU suite, checked
  python tools/benchmark.py --benchmark=search_speed
  python tools/benchmark.py --benchmark=mnist5k --update_docs          # and its docs section

Everything is written into --out_dir (default runs/benchmarks), each file named by its
benchmark, so that benchmarks, their variants and the studies of tools/proxy_study.py share
one folder (and its cached dense networks); each benchmark's markdown section goes to
<out_dir>/results.md. Nothing in the checkout changes unless --update_docs is given: then the
section also replaces its namesake in --docs (default docs/results.md), and the results file
and figures it links are copied into --docs_data (default docs/benchmarks).

Method against method (tools/bench/methods.py): every allocation method over targets and
seeds, each cell one `python -m purl_tf.train` process; --quick, --seeds, --targets,
--methods, --rerun, --episodes, --mock, --variant, --gin_bindings.
  mnist_resnet20, mnist5k            measurable on 2 CPU cores (weights)
  mnist_resnet20_channels            measurable on 2 CPU cores: channels at FLOPs budgets
                                     (train_eval.target_flops), every network's LiteRT
                                     speedup beside its FLOPs; --quick: the deciding budget
  cifar10, imagenet_resnet50, imagenet_mobilenet_v2   GPU suites (--mock checks them here)

Speed and measurement (tools/bench/<module>.py, each returning a Section):
  search_speed
      a PuRL search of the quickstart's LeNet-5 and of a ResNet-20: the share of its wall
      time outside retraining and measuring, by part, and the retrain/measure steps inside
      the search against plain compiled Keras on the same batches.
  imagenet_projection
      the per-episode cost of the ImageNet configs, from step costs measured here.
  pruning_speed
      setting every ResNet-50 layer's level against one forward pass.
  allocation_recovery
      how fast one-shot and random-search allocations recover with retraining: does the
      search's measurement tell allocations apart?
  measurement_noise
      one allocation replayed as whole episodes: the spread of what the episodes measure.
  allocation_transfer
      finished runs' allocations fine-tuned from the dense weights, beside their results.
  onednn_speed
      train and inference steps of the mnist_resnet20 network with TensorFlow's oneDNN
      kernels off and on.
"""
import os
import sys

from purl_tf import console  # first: importing purl_tf selects tf-keras before TensorFlow

if __name__ == "__main__":
  console.install()  # before TensorFlow loads: its libraries print while they load

# pylint: disable=wrong-import-position
from absl import app, flags, logging  # noqa: E402

from purl_tf.errors import PurlError  # noqa: E402

if __package__:  # imported as tools.benchmark (the tests), or run as python -m tools.benchmark
  from .bench import (common, methods, onednn, projection, pruning_speed,  # noqa: E402
                      recovery, search_speed, transfer)
else:  # python tools/benchmark.py: Python puts tools/ first on the path
  from bench import (common, methods, onednn, projection, pruning_speed,  # noqa: E402
                     recovery, search_speed, transfer)

FLAGS = flags.FLAGS

SPEED = {
    "pruning_speed": pruning_speed.pruning_speed,
    "search_speed": search_speed.search_speed,
    "imagenet_projection": projection.imagenet_projection,
    "allocation_recovery": recovery.allocation_recovery,
    "measurement_noise": recovery.measurement_noise,
    "allocation_transfer": transfer.allocation_transfer,
    "onednn_speed": onednn.onednn_speed,
}


def _define_flags():
  """The command line's flags besides the speed benchmarks' own (tools/bench defines those,
  and the shared --out_dir, --seed, --episodes, --variant and --gin_bindings)."""
  flags.DEFINE_enum("benchmark", "mnist_resnet20", [*sorted(methods.SUITES), *sorted(SPEED)],
                    "Benchmark to run.")
  flags.DEFINE_bool("update_docs", False, "Also replace the benchmark's section of --docs "
                    "and copy its results file and figures into --docs_data.")
  flags.DEFINE_string("docs", os.path.join("docs", "results.md"), "The docs page "
                      "--update_docs writes the section into.")
  flags.DEFINE_string("docs_data", os.path.join("docs", "benchmarks"), "The folder of the "
                      "docs page's results files and figures (with --update_docs).")
  flags.DEFINE_bool("quick", False, "One seed and one target (the suite's deciding one, else "
                    "the highest), every method.")
  flags.DEFINE_list("seeds", [str(seed) for seed in methods.SEEDS], "Seeds to run.")
  flags.DEFINE_list("targets", [], "Some of the benchmark's targets to run (default: all).")
  flags.DEFINE_list("methods", [], "Some of the methods to run (default: all); the report "
                    "keeps the other methods' finished cells.")
  flags.DEFINE_bool("rerun", False, "Measure the cells of --methods again (at --seeds and "
                    "--targets): their folders and records are removed first.")
  flags.DEFINE_bool("mock", False, "Run on tfds mock data with tiny budgets (checks a GPU "
                    "benchmark's definition on any machine).")
  for module in (common, onednn, projection, pruning_speed, recovery, search_speed, transfer):
    flags.adopt_module_key_flags(module)  # --help lists them too


def _compare_methods() -> methods.Section:
  """The method-against-method benchmark the flags name: its cells run, its section."""
  if FLAGS.variant and FLAGS.gin_bindings:
    raise PurlError("--variant and --gin_bindings: a variant's bindings are its gin file, "
                    "gin/variants/<name>.gin; write the change there (or as a new variant).")
  variant = methods.variant_bindings(FLAGS.variant) if FLAGS.variant else ()
  out_dir = common.out_dir()
  plan = methods.make_plan(FLAGS.benchmark, out_dir, FLAGS.seeds, FLAGS.episodes, FLAGS.mock,
                           FLAGS.quick, variant or FLAGS.gin_bindings, FLAGS.variant,
                           FLAGS.targets, FLAGS.methods)
  print(f"{plan.name}: {len(plan.seeds)} seeds x {len(plan.targets)} targets x "
        f"{len(plan.methods)} methods in {plan.root_dir}.", flush=True)
  docs = FLAGS.docs if FLAGS.update_docs else None
  return methods.run(plan, out_dir, FLAGS.rerun, docs, FLAGS.docs_data)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tf-agents and tfds log every read/checkpoint
  console.show_logs()  # what the library logs while a speed benchmark runs it here
  sections = common.out_dir(methods.SECTIONS)
  try:
    if FLAGS.benchmark in methods.SUITES:
      section = _compare_methods()
    else:
      section = SPEED[FLAGS.benchmark]()
      common.write_section(sections, section)
      if FLAGS.update_docs:
        common.write_section(FLAGS.docs, section)
  except PurlError as error:
    print(f"benchmark: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  print(f"\n## {section.heading}\n\n{section.body}\n")
  print(f"Wrote the section to {sections}" + (f" and {FLAGS.docs}" if FLAGS.update_docs
                                                else "") + ".")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
