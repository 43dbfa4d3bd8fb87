"""Search speed: where a search's wall time goes, and its retrain and measurement against a
plain compiled Keras step on the same batches, measured side by side in one process.

What each row is held to: overhead, the share of the search's wall time outside retraining
and measuring, below 10 %; retrain and measurement inside the search at least 0.9 of plain
Keras (Keras seconds per batch / ours). Runs go to <out_dir>/search_speed/<model>/<time>;
each model's dense weights are cached in <out_dir>/search_speed/<model>/dense.
"""
import datetime
import os
import statistics
import time

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import gin
import tensorflow as tf
import tf_keras as keras

from purl_tf import models
from purl_tf.rl import search
from purl_tf.run import pipeline
from purl_tf.runtime import files

from .common import command_line, extra_bindings, fmt_ms, machine, model_builder, out_dir, Section
from .methods import keep_dense, restore_dense

FLAGS = flags.FLAGS

# name -> (title, shipped config, bindings, collect episodes unless --episodes): the
# quickstart as `make demo` runs it, and a deep network on the same data (~45 s an episode).
SPEED_MODELS = {
    "quickstart": ("LeNet-5 (4 prunable layers), the quickstart", "quickstart", (), 100),
    "resnet20": ("CIFAR-style ResNet-20 (22 prunable layers) at 28x28", "quickstart",
                 ("train_eval.model_builder = @cifar_resnet", "cifar_resnet.depth = 20",
                  "pretrain.epochs = 3", "load_splits.channels = 3"), 10),
}
PARTS = (("retrain", "retrain"), ("measure", "accuracy measurement"),
         ("mask", "mask setting and step undo copy"),
         ("episode_other", "rest of the episodes (reset, policy inference, observations, "
          "replay adds, driver)"),
         ("agent", "agent training (DQN updates, replay sampling)"),
         ("checkpoint", "checkpoint and episodes.json"),
         ("summaries", "TensorBoard summaries and charts"), ("other", "other (progress)"))

flags.DEFINE_list("speed_models", list(SPEED_MODELS), "search_speed: the models to measure.")
flags.DEFINE_integer("speed_repeats", 20, "search_speed: timed Keras calls (medians).")


def _searched(name: str, episodes: int, root: str):
  """Builds the model's run in `root` and runs a DQN search of `episodes` collect episodes;
  returns (parts, SearchResult, bindings)."""
  _, gin_file, extra, _ = SPEED_MODELS[name]
  bindings = ["make_strategy.name = 'default'", f"SearchRunner.num_episodes = {episodes}",
              "SearchRunner.eval_interval = 10", *extra, *extra_bindings()]
  gin.clear_config()
  pipeline.parse_gin([gin_file], bindings)
  tf.keras.utils.set_random_seed(0)
  builder = model_builder()
  parts = pipeline.build(root, builder, 0.9)
  result = search.SearchRunner(parts.env, root).run()
  return parts, builder, result, bindings


def _keras_seconds(parts, builder, root: str, repeats: int) -> dict:
  """Seconds per batch of plain compiled Keras (train_function, test_function) on the
  unwrapped model with the run's dense weights, the search's optimizer and batches."""
  splits, strategy = parts.splits, parts.strategy
  with strategy.scope():
    plain = builder(input_shape=splits.image_shape, num_classes=splits.num_classes)
    plain.load_weights(os.path.join(root, files.DENSE_WEIGHTS))
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=not models.outputs_probabilities(plain)))
  train = plain.make_train_function()
  test = plain.make_test_function()
  stream = iter(strategy.experimental_distribute_dataset(splits.train_stream(0)))
  reward = strategy.experimental_distribute_dataset(splits.reward)
  batches = sum(1 for _ in splits.reward)
  train_times, eval_times = [], []
  for repeat in range(repeats + 1):
    started = time.perf_counter()
    train(stream)
    train_times.append(time.perf_counter() - started)
    started = time.perf_counter()
    iterator = iter(reward)  # a pass starts an iterator, as the search's does
    for _ in range(batches):
      test(iterator)
    eval_times.append((time.perf_counter() - started) / batches)
    del repeat
  return {"train": statistics.median(train_times[1:]),
          "eval": statistics.median(eval_times[1:]), "batches": batches}


def _verdict(met: bool) -> str:
  return "meets" if met else "MISSES"


def search_speed() -> Section:
  """Per model: the search's own breakdown of its wall time (results.json's
  search_seconds_by_part) and the ratios to plain Keras."""
  stamp = datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S")
  blocks = []
  for name in FLAGS.speed_models:
    title, episodes = SPEED_MODELS[name][0], FLAGS.episodes or SPEED_MODELS[name][3]
    root = out_dir("search_speed", name, stamp)
    cache = out_dir("search_speed", name, "dense", files.DENSE_WEIGHTS)
    restore_dense(cache, root)
    print(f"search_speed: {title}: a {episodes}-episode search in {root} ...", flush=True)
    parts, builder, found, bindings = _searched(name, episodes, root)
    keep_dense(root, cache)
    keras_seconds = _keras_seconds(parts, builder, root, FLAGS.speed_repeats)
    by_part = found.seconds_by_part
    steps = sum(len(e.levels) for e in found.episodes)
    retrain_steps = parts.env.retrain_steps
    batches = len(found.episodes) * parts.env.episode_retrain_steps
    ours = {"train": by_part["retrain"] / batches,
            "eval": by_part["measure"] / (steps * keras_seconds["batches"])}
    rows = ["| part | seconds | share of the search | per search step |",
            "| --- | --- | --- | --- |"]
    for key, label in PARTS:
      rows.append(f"| {label} | {by_part[key]:.1f} | {100 * by_part[key] / found.seconds:.1f} % "
                  f"| {fmt_ms(by_part[key] / steps)} |")
    overhead = found.overhead_share
    rows.append(f"| **outside retrain and measurement** (target < 10 %) | "
                f"{found.seconds * overhead:.1f} | **{100 * overhead:.1f} %** "
                f"{_verdict(overhead < 0.1)} | {fmt_ms(found.seconds * overhead / steps)} |")
    rows.append(f"| whole search | {found.seconds:.1f} | 100 % | "
                f"{fmt_ms(found.seconds / steps)} |")
    ratio_rows = ["| step | inside the search, per batch | plain Keras, per batch | Keras / "
                  "ours (target ≥ 0.9) |", "| --- | --- | --- | --- |"]
    for kind, label in (("train", f"retrain ({retrain_steps} batches of "
                                  f"{parts.splits.batch_size} per step)"),
                        ("eval", f"measurement ({parts.splits.num_examples['reward']} "
                                 "reward-split images per step)")):
      ratio = keras_seconds[kind] / ours[kind]
      ratio_rows.append(f"| {label} | {fmt_ms(ours[kind])} | {fmt_ms(keras_seconds[kind])} | "
                        f"{ratio:.3f} {_verdict(ratio >= 0.9)} |")
    traces = parts.env.trainer.tracing_counts()
    blocks += [f"### {title}", "",
               f"{episodes} collect episodes plus greedy evaluations: {len(found.episodes)} "
               f"episodes, {steps} steps; the search traced its train and eval functions "
               f"{traces['train']} and {traces['eval']} times. Config: "
               f"`--gin_file={SPEED_MODELS[name][1]}` plus " + ", ".join(f"`{b}`" for b in bindings) + ".",
               "", *rows, "", *ratio_rows, ""]
    print("\n".join(rows + [""] + ratio_rows), flush=True)
  gin.clear_config()
  body = "\n".join([
      "Each model: one DQN search through `SearchRunner` (the breakdown is the search's own, "
      "results.json's `search_seconds_by_part`: every part is timed by the library, not "
      "patched from outside), then plain compiled Keras on the same model and batches in "
      f"the same process (medians of {FLAGS.speed_repeats} calls after one warm-up). The "
      "search's own first calls (tracing) are inside its wall time.", "",
      *blocks,
      f"- Command: `{command_line()}`",
      f"- Machine: {machine()}",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ])
  return Section(heading="Search speed", body=body)
