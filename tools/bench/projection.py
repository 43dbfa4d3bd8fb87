"""The per-episode cost of the ImageNet configs, projected from step costs measured here."""
import datetime
import statistics
from typing import Callable

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import gin
import numpy as np
import tensorflow as tf

from purl_tf import data, models, pruning
from purl_tf.pruning import training
from purl_tf.rl import search
from purl_tf.run import pipeline
from purl_tf.rl.env import PruningEnv

from .common import command_line, fmt_ms, machine, median_seconds, per_step_seconds, Section

FLAGS = flags.FLAGS

flags.DEFINE_integer("projection_batch", 8, "imagenet_projection: images per measured batch.")

PROJECTED = (("ResNet-50", "resnet50", "resnet50"),  # (title, shipped config, builder)
             ("MobileNet-V2", "mobilenet_v2", "mobilenet_v2"))


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
  train_step = statistics.median(per_step_seconds(lambda: trainer.train(stream, 2), 2,
                                                   repeats))
  evaluation = trainer.distribute(single.repeat(2))
  eval_step = statistics.median(per_step_seconds(lambda: trainer.evaluate(evaluation), 2,
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
    pipeline.parse_gin([gin_file], [f"{builder_name}.weights = None"])
    builder = getattr(models, builder_name)
    size = int(pipeline.bound(data.load_splits, "image_size"))
    batch = int(pipeline.bound(data.load_splits, "batch_size"))
    reward = int(pipeline.bound(data.load_splits, "reward_size"))
    retrain = int(pipeline.bound(PruningEnv, "retrain_steps"))
    episodes = int(pipeline.bound(search.SearchRunner, "num_episodes"))
    interval = int(pipeline.bound(search.SearchRunner, "eval_interval"))
    print(f"{title}: measuring train and eval steps at {size}x{size}, batch "
          f"{FLAGS.projection_batch} ...", flush=True)
    costs = _step_costs(builder, size, FLAGS.projection_batch, FLAGS.repeats)
    layers = costs["layers"]
    step = (retrain * batch * costs["train_image"] + reward * costs["eval_image"]
            + costs["set_all"] / layers)
    episode = layers * step + costs["reset"]
    evaluated = search.evaluated_episodes(episodes, interval)
    rows.append(
        f"| `--gin_file={gin_file}` ({title}, {size}x{size}) | {layers} | {layers * retrain * batch:,}, "
        f"{layers * reward:,} | {costs['train_image']:.3f}, {costs['eval_image']:.3f} | "
        f"{step / 60:.1f} min | {episode / 3600:.1f} h | {evaluated * episode / 86400:,.0f} "
        "days |")
    notes.append(f"{title}: {retrain} retrain batches of {batch} and a {reward:,}-image "
                 f"measurement per step; setting every layer's level "
                 f"{fmt_ms(costs['set_all'])}, reset {fmt_ms(costs['reset'])}.")
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
