"""Setting every ResNet-50 layer's pruning level, next to one forward pass."""
import datetime
import statistics
import time

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import numpy as np
import tensorflow as tf

from .common import command_line, fmt_ms, machine, median_seconds, Section, spread
from purl_tf import models, pruning
from purl_tf.pruning import training

FLAGS = flags.FLAGS

flags.DEFINE_integer("batch_size", 32, "pruning_speed: images per forward pass.")
flags.DEFINE_integer("image_size", 224, "pruning_speed: side of the square input images.")


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
  print(f"forward pass: median {fmt_ms(statistics.median(forward_times))}", flush=True)

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
        f"{fmt_ms(statistics.median(set_times))}", flush=True)

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
       fmt_ms(forward_median), spread(forward_times)),
      (f"set all {controller.num_layers} layers' sparsity from dense "
       "(random levels in [0.3, 0.95])", fmt_ms(set_median), spread(set_times)),
      ("ratio set / forward (target < 0.1)", f"{ratio:.3f}",
       "meets the target" if ratio < 0.1 else "MISSES the target"),
      ("controller.reset() (all variables from the dense snapshot)",
       fmt_ms(statistics.median(reset_times)), spread(reset_times)),
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
