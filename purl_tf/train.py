r"""Runs PuRL end to end: dense model -> search -> fine-tune -> results.

  python -m purl_tf.train --gin_file=gin/quickstart.gin --root_dir=runs/quickstart
  python -m purl_tf.train --gin_file=gin/resnet50.gin --root_dir=runs/resnet50 \
      --gin_bindings="load_splits.manual_dir='/data/imagenet'"

Every knob is a gin parameter: `train_eval`'s arguments below, and those of
load_splits, the model builders, pretrain, wrap, MaskedTrainer, PruningEnv, the rewards,
make_agent, make_replay_buffer, search, finetune and make_strategy. Rerunning with the
same root_dir resumes an interrupted run; a finished stage is not redone.
"""
import dataclasses
import os
import sys
import time
from typing import Optional

import purl_tf  # pylint: disable=unused-import  (selects tf-keras before TensorFlow loads)
from absl import app, flags, logging
import gin
import tensorflow as tf

from purl_tf import (compare, data, distribute, export, files, finetune, interrupt, models,
                     pruning, rewards, search)
from purl_tf.env import PruningEnv
from purl_tf.errors import PurlError
from purl_tf.training import MaskedTrainer

del rewards  # Imported so that gin files can name @DenseReward / @EpisodicReward.

FLAGS = flags.FLAGS
flags.DEFINE_string("root_dir", None, "Run folder: results, checkpoints, TensorBoard logs.")
flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. \"search.num_episodes=50\".")
flags.DEFINE_bool("overwrite", False, "Start over in a root_dir that holds a run with another "
                  "config (its files are deleted).")


@dataclasses.dataclass
class Parts:
  """Everything a run is made of, built and ready to search."""
  strategy: tf.distribute.Strategy
  splits: data.Splits
  model_name: str
  dense_reward_accuracy: float
  controller: pruning.PruningController
  env: PruningEnv


def build(root_dir: str, model_builder, target_sparsity: float,
          strategy: Optional[tf.distribute.Strategy] = None) -> Parts:
  """Data, the dense model (pre-trained or loaded from root_dir), its pruning and the MDP.

  Everything that can be checked without training is checked before pre-training.
  `strategy` defaults to make_strategy()'s.
  """
  strategy = strategy or distribute.make_strategy()
  splits = data.load_splits(num_replicas=strategy.num_replicas_in_sync)
  print(f"Data: {splits.name} {splits.image_shape}, {splits.num_classes} classes, "
        f"examples {splits.num_examples}.", flush=True)
  with strategy.scope():
    model = model_builder(input_shape=splits.image_shape, num_classes=splits.num_classes)
    models.check_compatible(model, splits.image_shape, splits.num_classes)
    pruning.wrap(model, check_only=True)
    dense_accuracy = models.pretrain(model, splits, root_dir)
    print(f"Dense {model.name}: reward-split accuracy {dense_accuracy:.4f}.", flush=True)
    wrapped = pruning.wrap(model)
    controller = pruning.PruningController(wrapped)
    trainer = MaskedTrainer(wrapped, strategy)
  env = PruningEnv(controller, trainer, splits.train_stream, splits.reward,
                   target_sparsity=target_sparsity)
  print(f"Search over {env.num_layers} prunable layers, {len(env.levels)} levels "
        f"({env.mode}), target sparsity {target_sparsity}.", flush=True)
  return Parts(strategy, splits, model.name, dense_accuracy, controller, env)


@gin.configurable(denylist=["root_dir", "overwrite"])
def train_eval(root_dir: str, model_builder=models.lenet5, target_sparsity: float = 0.9,
               seed: int = 0, deterministic: bool = False, export_tflite: bool = True,
               overwrite: bool = False) -> dict:
  """Prunes the model `model_builder` builds to `target_sparsity`; returns results.json's dict.

  Args:
    root_dir: run folder.
    model_builder: gin-configurable builder taking (input_shape, num_classes), e.g.
      @resnet50, @mobilenet_v2, @cifar_resnet, @lenet5 or @saved_model.
    target_sparsity: target global sparsity of the prunable weights, in (0, 1).
    seed: seeds Python, NumPy and TensorFlow, per episode and per fine-tune epoch.
    deterministic: also make TensorFlow's ops deterministic (slower), so that a run
      resumed after a crash ends exactly as an uninterrupted one.
    export_tflite: write and measure the TFLite flatbuffers (see export.py).
    overwrite: delete a run with another config found in root_dir instead of refusing.
  """
  if not 0.0 < target_sparsity < 1.0:
    raise PurlError(f"train_eval.target_sparsity={target_sparsity} is outside (0, 1): bind "
                    "it to a fraction such as 0.9.")
  strategy = distribute.make_strategy()  # first: multi-worker must start before other ops
  chief = distribute.is_chief(strategy)
  root_dir = distribute.run_dir(os.path.abspath(os.path.expanduser(root_dir)), strategy)
  _claim(root_dir, gin.config_str(), overwrite)
  results_path = os.path.join(root_dir, files.RESULTS)
  finished = files.read_json(results_path)
  if finished:
    print(f"{root_dir} holds a finished run: results in {results_path}.", flush=True)
    return finished
  tf.keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  parts = build(root_dir, model_builder, target_sparsity, strategy)
  found = search.search(parts.env, root_dir, seed=seed)
  if not found.reached_target:
    print(f"WARNING: no episode reached the target sparsity {target_sparsity}; fine-tuning "
          f"the sparsest ({found.best.sparsity:.3f}). Search longer or widen the levels.",
          flush=True)
  comparison = compare.one_shot(parts.controller, parts.env.trainer, parts.splits.test,
                                found.best.allocation)
  tuned = finetune.finetune(parts.controller, parts.strategy, parts.splits,
                            found.best.allocation, root_dir, seed=seed)
  tflite = {}
  if export_tflite and chief:
    tflite = export.export_run(root_dir, parts.splits, tuned["pruned_model"])
  results = dict(tuned, model=parts.model_name, dataset=parts.splits.name,
                 comparison=comparison, tflite=tflite,
                 target_sparsity=target_sparsity, reached_target=found.reached_target,
                 search_seconds=found.seconds, failed_steps=found.failed_steps,
                 search_overhead_share=found.overhead_share,
                 search_retrain_steps=sum(len(e.levels) for e in found.episodes)
                 * parts.env.retrain_steps,
                 search_episodes=sum(e.policy == search.COLLECT for e in found.episodes),
                 best_episode=found.best.episode,
                 best_reward_accuracy_in_search=found.best.accuracy,
                 dense_reward_accuracy=parts.dense_reward_accuracy,
                 replicas=parts.strategy.num_replicas_in_sync)
  operative = gin.operative_config_str()
  with tf.io.gfile.GFile(os.path.join(root_dir, files.OPERATIVE_CONFIG), "w") as handle:
    handle.write(operative)
  with tf.summary.create_file_writer(os.path.join(root_dir, "eval")).as_default(step=0):
    tf.summary.text("config/operative", f"```\n{operative}\n```")
  files.write_json(results_path, results)
  return results


def _claim(root_dir: str, config: str, overwrite: bool):
  """Records `config` as root_dir's; refuses a root_dir holding a run of another config."""
  path = os.path.join(root_dir, files.CONFIG)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as handle:
      if handle.read() != config:
        if not overwrite:
          raise PurlError(f"{root_dir} holds a run with another config ({path}): use another "
                          "--root_dir, or --overwrite to delete that run.")
        print(f"--overwrite: deleting the run in {root_dir}.", flush=True)
        tf.io.gfile.rmtree(root_dir)
  tf.io.gfile.makedirs(root_dir)
  if not tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path + ".partial", "w") as handle:
      handle.write(config)
    tf.io.gfile.rename(path + ".partial", path, overwrite=True)


def _summary(root_dir: str, results: dict) -> str:
  root_dir = os.path.abspath(root_dir)
  return "\n".join([
      "",
      f"Dense test accuracy   {results['dense_test_accuracy']:.4f}",
      f"Pruned test accuracy  {results['pruned_test_accuracy']:.4f}",
      f"Global sparsity       {results['global_sparsity']:.4f} (target "
      f"{results['target_sparsity']})",
      f"Parameters left       {results['params_remaining']:,} of {results['params_total']:,}",
      f"FLOPs left            {results['flops_remaining']:,} of {results['flops_total']:,}",
      f"Results               {os.path.join(root_dir, files.RESULTS)}",
      f"Best allocation       {os.path.join(root_dir, files.BEST_ALLOCATION)}",
      f"Pruned model          {results['pruned_model']}",
      *([f"TFLite                {os.path.join(root_dir, files.TFLITE_DIR)}/*.tflite",
         "", export.table(results["tflite"])] if results.get("tflite") else []),
      f"TensorBoard           tensorboard --logdir {root_dir}",
  ])


def _parse_gin(gin_files, bindings):
  """gin.parse_config_files_and_bindings, with gin's errors made one-line PurlErrors."""
  for path in gin_files:
    if not tf.io.gfile.exists(path):
      raise PurlError(f"gin file {path} does not exist: check --gin_file.")
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings)
  except (ValueError, KeyError, SyntaxError, ImportError) as error:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    where = next((line for line in lines[1:] if line.startswith("In ")), "")
    raise PurlError(f"gin: {lines[0].strip(chr(34))} {where}".strip()
                    + " (see README for the parameters).") from error


def main(argv):
  del argv
  if not FLAGS.root_dir:
    raise app.UsageError("--root_dir is required.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tf-agents and tfds log every checkpoint/read.
  started = time.time()
  interrupt.install()
  try:
    _parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    results = train_eval(FLAGS.root_dir, overwrite=FLAGS.overwrite)
  except PurlError as error:
    # gin appends "In call to configurable ..." lines; the first line is the message.
    print(f"purl_tf: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  except interrupt.Interrupted as stop:
    print(f"purl_tf: {stop}; finished work is saved in {os.path.abspath(FLAGS.root_dir)}: "
          "rerun the same command to resume.", file=sys.stderr)
    sys.exit(128 + stop.signal_number)
  print(_summary(FLAGS.root_dir, results))
  print(f"Done in {time.time() - started:.0f} s.", flush=True)


if __name__ == "__main__":
  app.run(main)
