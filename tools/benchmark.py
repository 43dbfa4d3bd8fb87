r"""Speed benchmarks of purl_tf, each printing a markdown section and writing it into a
docs file (method-against-method benchmarks are `python -m purl_tf.benchmark`).

  .venv/bin/python tools/benchmark.py --benchmark=search_speed --output=docs/benchmarks.md
  .venv/bin/python tools/benchmark.py --benchmark=pruning_speed --output=docs/benchmarks.md

Benchmarks:
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

Each benchmark is a function of its module in tools/bench/ returning a `Section` (a level-2
heading and its markdown body); `--output` replaces that heading's section in the file (or
appends it), leaving the other sections as they are.
"""
import sys

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import app
from absl import flags
from absl import logging

from bench import common, onednn, projection, pruning_speed, recovery, search_speed, transfer
from purl_tf import train  # noqa: F401  (defines --root_dir, --gin_file, --gin_bindings)
from purl_tf.errors import PurlError

FLAGS = flags.FLAGS

BENCHMARKS = {
    "pruning_speed": pruning_speed.pruning_speed,
    "search_speed": search_speed.search_speed,
    "imagenet_projection": projection.imagenet_projection,
    "allocation_recovery": recovery.allocation_recovery,
    "measurement_noise": recovery.measurement_noise,
    "allocation_transfer": transfer.allocation_transfer,
    "onednn_speed": onednn.onednn_speed,
}

flags.DEFINE_enum("benchmark", "pruning_speed", sorted(BENCHMARKS), "Benchmark to run.")
flags.DEFINE_string("output", None,
                    "Markdown file whose section of this benchmark is replaced (or appended).")


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
    common.write_section(FLAGS.output, section)
    print(f"Wrote the section to {FLAGS.output}.")


if __name__ == "__main__":
  app.run(main)
