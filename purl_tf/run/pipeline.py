"""One run end to end: dense model -> a method's allocation -> fine-tune -> export -> results.

`run` is the one core: it takes the model (a builder) and the data (a Splits maker) as
arguments. Two entry points call it, so they cannot drift apart:

  train_eval  gin-configurable (purl_tf.train is its command line): the model and data
              come from gin-bound builders (train_eval.model_builder, load_splits).
  prune       purl_tf.run.api (purl_tf.prune): the caller's model and data, gin knobs as
              keyword arguments.

Every other knob is a gin parameter: those of load_splits, the model builders, pretrain,
wrap, MaskedTrainer, PruningEnv, the rewards, make_agent, make_replay_buffer,
SearchRunner, finetune, gradual, measure_speed and make_strategy. Rerunning with the same
root_dir resumes an interrupted run; a finished stage is not redone.

Granularity: 'weight' (the paper's, the default) prunes weights to `target_sparsity`;
'channel' removes whole channels to `target_flops` (a pruning.channels.ChannelController
drives the same MDP, one decision per channel group), fine-tunes under channel masks, saves
the physically thinner model and measures its speed against the dense network (channels.py).
"""
import dataclasses
import functools
import inspect
import logging
import os
from typing import Callable, Optional, Sequence

import gin
import tensorflow as tf

from purl_tf import data, models, pruning
from purl_tf.pruning.channels import CRITERIA, ChannelController
from purl_tf.run import channels, compare, configs, export, finetune, gradual, methods
from purl_tf.runtime import distribute, files, interrupt
from purl_tf.rl.env import PruningEnv
from purl_tf.errors import PurlError
from purl_tf.runtime.results import RunResult, doubts, reached_target
from purl_tf.pruning.training import MaskedTrainer

_log = logging.getLogger(__name__)


FINETUNE_FROM = ("search", "dense")


@dataclasses.dataclass
class Parts:
  """Everything a run is made of, built and ready to choose an allocation."""
  strategy: tf.distribute.Strategy
  splits: data.Splits
  model_name: str
  dense_reward_accuracy: float
  controller: pruning.PruningController  # or a ChannelController (channel granularity)
  env: PruningEnv
  dense: Optional[tf.keras.Model] = None  # the dense model, unwrapped (channel granularity)


# What makes a run's data: (num_replicas=...) -> data.Splits, batches sized for the replicas.
SplitsMaker = Callable[..., data.Splits]


def build(root_dir: str, model_builder, target_sparsity: float, seed: int = 0,
          strategy: Optional[tf.distribute.Strategy] = None, reward_fn=None,
          splits: SplitsMaker = data.load_splits, granularity: str = methods.WEIGHT,
          channel_importance: str = "l1") -> Parts:
  """Data, the dense model (pre-trained or loaded from root_dir), its pruning and the MDP.

  `granularity` 'channel' makes the controller a ChannelController ranking channels by
  `channel_importance`, and `target_sparsity` the fraction of the dense FLOPs to remove.

  Everything that can be checked without training is checked before pre-training. The
  environment's train stream is seeded by `seed`; `strategy` defaults to make_strategy()'s;
  `reward_fn` (None: the environment's default or binding) is the environment's reward;
  `splits(num_replicas=...)` makes the data (default: load_splits, as gin binds it).
  """
  strategy = strategy or distribute.make_strategy()
  splits = splits(num_replicas=strategy.num_replicas_in_sync)
  _log.info(f"Data: {splits.name} {splits.image_shape}, {splits.num_classes} classes, "
            f"examples {splits.num_examples}.")
  with strategy.scope():
    model = model_builder(input_shape=splits.image_shape, num_classes=splits.num_classes)
    models.check_compatible(model, splits.image_shape, splits.num_classes)
    by_channel = granularity == methods.CHANNEL
    if not by_channel:
      pruning.wrap(model, check_only=True)
    dense_accuracy = models.pretrain(model, splits, root_dir)
    _log.info(f"Dense {model.name}: reward-split accuracy {dense_accuracy:.4f}.")
    if by_channel:
      controller = ChannelController(model, importance=channel_importance)
    else:
      controller = pruning.PruningController(pruning.wrap(model))
    trainer = MaskedTrainer(controller.model, strategy)
  options = {"reward_fn": reward_fn} if reward_fn else {}
  env = PruningEnv(controller, trainer, functools.partial(splits.train_stream, seed=seed),
                   splits.reward, target_sparsity=target_sparsity, **options)
  around = f", scaling {env.prior}'s levels" if env.prior else ""
  if by_channel:
    _log.info(f"Search over {env.num_layers} channel groups, {env.action_spec().maximum + 1} "
              f"levels (fractions of a group's channels, least {channel_importance} "
              f"first), target FLOPs removed {target_sparsity}.")
  else:
    _log.info(f"Search over {env.num_layers} prunable layers, "
              f"{env.action_spec().maximum + 1} levels ({env.mode}{around}), target "
              f"sparsity {target_sparsity}.")
  return Parts(strategy, splits, model.name, dense_accuracy, controller, env,
               model if by_channel else None)


@gin.configurable(denylist=["root_dir", "overwrite"])
def train_eval(root_dir: str, method: str = "purl", model_builder=models.lenet5,
               target_sparsity: float = 0.9, seed: int = 0, deterministic: bool = False,
               export_tflite: bool = True, finetune_from: str = "search",
               match_search_steps: bool = False, fit_to_target: bool = True,
               overwrite: bool = False, granularity: str = methods.WEIGHT,
               target_flops: Optional[float] = None,
               channel_importance: Optional[str] = None) -> RunResult:
  """Prunes the model `model_builder` builds to `target_sparsity` (or `target_flops`) by
  `method`, on the data load_splits loads: `run` with gin's model and data.

  Args:
    root_dir: run folder.
    method: how the allocation is chosen, one of methods.METHODS ('purl', 'episodic',
      'random', 'global_magnitude', 'uniform', 'gradual'); with granularity 'channel' one
      of methods.CHANNEL_METHODS ('purl', 'episodic', 'random', 'uniform',
      'uniform_keep_ends', 'global_filter', 'bn_scale').
    model_builder: gin-configurable builder taking (input_shape, num_classes), e.g.
      @resnet50, @mobilenet_v2, @cifar_resnet, @lenet5 or @saved_model.
    target_sparsity: target global sparsity of the prunable weights, in (0, 1).
    seed: seeds TensorFlow once, the search's train stream and episodes, and the
      fine-tune's data order.
    deterministic: also make TensorFlow's ops deterministic (slower), so that a run
      resumed after a crash ends exactly as an uninterrupted one. It stays on for the
      rest of the process (TensorFlow has no public switch back), and its kernels give
      other numbers than the default ones: a later run in the same process differs.
    export_tflite: write and measure the TFLite flatbuffers (see export.py).
    finetune_from: for a searched method, 'search' fine-tunes the network the search
      measured for its chosen allocation (masks and retrained weights); 'dense' applies
      the allocation to the dense weights instead, as one-shot methods do.
    match_search_steps: a one-shot method (global_magnitude, lamp, erk, uniform,
      uniform_keep_ends) fine-tunes for the train steps a search of this config spends
      as well, so that it trains as long as the searches and gradual (an equal-budget
      comparison); no effect on those, which spend the steps choosing.
    fit_to_target: when a searched allocation is applied to the dense weights
      (finetune_from='dense'), first scale every layer's density by one factor so that it
      reaches exactly `target_sparsity` (pruning.fit): a search on a coarse action grid
      overshoots (0.983 for 0.98), which a fine-tune from the dense weights need not pay.
      At channel granularity every group's width is scaled by one factor, to the widest
      allocation that still removes `target_flops` (ChannelController.fitted).
    overwrite: delete a run with another config found in root_dir instead of refusing.
    granularity: 'weight' (default: prune weights, the paper's PuRL) or 'channel' (remove
      whole channels: a level is the fraction of a channel group's channels removed, the
      pruned model is physically thinner, and its LiteRT speed is measured against the
      dense network's; target_sparsity is then not used).
    target_flops: with granularity 'channel', the fraction of the dense network's FLOPs
      to remove, in (0, 1): 0.7 keeps 30 %.
    channel_importance: with granularity 'channel', how a group's channels are ranked
      (the least important go first): 'l1' (filter L1 norm) or 'bn_gamma' (batch-norm
      |gamma|); default 'bn_gamma' for method 'bn_scale' (so that it removes the channels
      its threshold picks), 'l1' otherwise.
  Returns:
    the RunResult written to root_dir/results.json.
  """
  return run(root_dir, model_builder, data.load_splits, method=method,
             target_sparsity=target_sparsity, seed=seed, deterministic=deterministic,
             export_tflite=export_tflite, finetune_from=finetune_from,
             match_search_steps=match_search_steps, fit_to_target=fit_to_target,
             overwrite=overwrite, granularity=granularity, target_flops=target_flops,
             channel_importance=channel_importance)


def run(root_dir: str, model_builder, splits: SplitsMaker, method: str = "purl",
        target_sparsity: float = 0.9, seed: int = 0, deterministic: bool = False,
        export_tflite: bool = True, finetune_from: str = "search",
        match_search_steps: bool = False, fit_to_target: bool = True,
        overwrite: bool = False, description: str = "",
        warnings: Sequence[str] = (), granularity: str = methods.WEIGHT,
        target_flops: Optional[float] = None,
        channel_importance: Optional[str] = None) -> RunResult:
  """The core of every run: prunes `model_builder`'s model on `splits`'s data.

  The arguments are train_eval's (see there), but for:
    model_builder: (input_shape, num_classes) -> the dense tf-keras model, called in the
      strategy's scope (and again by gradual, for a fresh copy of the dense model).
    splits: (num_replicas=...) -> data.Splits, batches sized for that many replicas.
    description: comment lines on what makes the run beyond gin (purl_tf.prune: its
      arguments, the model's and the data's fingerprints), put atop root_dir/config.gin, so
      a rerun with another model or data is refused, and atop operative_config.gin.
    warnings: lines added to the result's warnings (e.g. no test split was given).
  Returns:
    the RunResult written to root_dir/results.json.
  """
  methods.check(method, granularity)
  if finetune_from not in FINETUNE_FROM:
    raise PurlError(f"train_eval.finetune_from={finetune_from!r} is unknown: use one of "
                    f"{FINETUNE_FROM}.")
  by_channel = granularity == methods.CHANNEL
  if by_channel:
    target = _channel_target(target_flops)
    channel_importance = _importance(method, channel_importance)
  else:
    _refuse_channel_knobs(target_flops, channel_importance)
    target = target_sparsity
  if not 0.0 < target_sparsity < 1.0:
    raise PurlError(f"train_eval.target_sparsity={target_sparsity} is outside (0, 1): bind "
                    "it to a fraction such as 0.9.")
  strategy = distribute.make_strategy()  # first: multi-worker must start before other ops
  lockstep = distribute.Lockstep(strategy)
  interrupt.share(lockstep.any if lockstep.active else None)  # a stop is the cluster's
  root_dir = distribute.run_dir(os.path.abspath(os.path.expanduser(root_dir)), strategy)
  claim(root_dir, description + gin.config_str(), overwrite)
  results_path = os.path.join(root_dir, files.RESULTS)
  finished = files.read_json(results_path)
  if finished:
    _log.info(f"{root_dir} holds a finished run: results in {results_path}.")
    return RunResult(**finished)
  tf.keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  options = {"granularity": granularity, "channel_importance": channel_importance} \
      if by_channel else {}
  parts = build(root_dir, model_builder, target, seed, strategy, methods.reward_fn(method),
                splits, **options)
  choice = methods.choose(method, parts.env, root_dir, seed, lockstep, dense=parts.dense)
  if choice.allocation is None:  # gradual: prunes while it trains
    tuned = _gradual(parts, model_builder, root_dir, target_sparsity, choice, seed)
  else:
    _write_best_allocation(root_dir, method, parts.env, choice)
    if finetune_from == "dense" or not choice.start_state:
      finetune_from, choice.start_state = "dense", None
      if fit_to_target and method in methods.SEARCHED:
        choice.allocation = _fit(parts.controller, choice.allocation, target)
    extra = 0
    if match_search_steps and methods.is_one_shot(method, granularity):
      extra = methods.search_steps(parts.env, root_dir, seed)
      _log.info(f"train_eval.match_search_steps: {extra:,} more fine-tune steps, as many as a "
                "search of this config spends.")
    tuned = finetune.finetune(parts.controller, parts.strategy, parts.splits,
                              choice.allocation, root_dir, seed=seed,
                              start_state=choice.start_state, extra_steps=extra)
  run_warnings = list(warnings)
  channel_fields = {}
  tflite = {}
  if by_channel:
    run_warnings += [*parts.controller.warnings, *choice.warnings, *tuned.pop("warnings")]
    comparison = channels.one_shot(parts.controller, parts.dense, parts.env.trainer,
                                   parts.splits.test, tuned["allocation"])
    channel_fields = _channel_fields(parts, model_builder, root_dir, target,
                                     tuned["pruned_model"],
                                     export_tflite and distribute.is_chief(strategy))
  else:
    comparison = compare.one_shot(parts.controller, parts.env.trainer, parts.splits.test,
                                  tuned["allocation"])
    if export_tflite and distribute.is_chief(strategy):
      tflite = export.export_run(root_dir, parts.splits, tuned["pruned_model"])
  result = RunResult(
      **tuned, **channel_fields, method=method, model=parts.model_name,
      dataset=parts.splits.name, target_sparsity=target,
      reached_target=reached_target(tuned["global_sparsity"], target),
      search_seconds=choice.seconds, search_episodes=choice.episodes,
      search_retrain_steps=choice.retrain_steps, search_overhead_share=choice.overhead_share,
      search_seconds_by_part=choice.seconds_by_part,
      failed_steps=choice.failed_steps, best_episode=choice.best_episode,
      best_reward_accuracy_in_search=choice.best_accuracy,
      dense_reward_accuracy=parts.dense_reward_accuracy,
      comparison=comparison, tflite=tflite, replicas=strategy.num_replicas_in_sync,
      num_classes=parts.splits.num_classes, finetune_from=finetune_from,
      rescored_reward_accuracy=choice.rescored_accuracy, selection=choice.selection)
  result.warnings = run_warnings + doubts(result)
  for line in result.warnings:
    _log.warning(f"{line}")
  operative = description + gin.operative_config_str()
  with tf.io.gfile.GFile(os.path.join(root_dir, files.OPERATIVE_CONFIG), "w") as handle:
    handle.write(operative)
  with tf.summary.create_file_writer(os.path.join(root_dir, "eval")).as_default(step=0):
    tf.summary.text("config/operative", f"```\n{operative}\n```")
  files.write_json(results_path, result.to_json())
  return result


def _write_best_allocation(root_dir: str, method: str, env: PruningEnv,
                           choice: methods.Choice):
  """root_dir/best_allocation.json: the allocation chosen and how it scored."""
  sparsity = _global_sparsity(env.controller, choice.allocation)
  if not reached_target(sparsity, env.target):
    _log.warning(f"the chosen allocation reaches {sparsity:.3f}, below the target "
                 f"{env.target}; fine-tuning it. Search longer or widen PruningEnv.levels.")
  files.write_json(os.path.join(root_dir, files.BEST_ALLOCATION), {
      "allocation": choice.allocation, "accuracy_reward_split": choice.best_accuracy,
      "rescored_accuracy_reward_split": choice.rescored_accuracy,
      "selection": choice.selection,
      "global_sparsity": sparsity, "episode": choice.best_episode, "method": method,
      "target_sparsity": env.target, "reached_target": reached_target(sparsity, env.target),
      "mode": env.mode, **({"granularity": methods.CHANNEL} if env.channels else {})})


def _channel_target(target_flops: Optional[float]) -> float:
  """train_eval.target_flops, checked: the target of a channel run."""
  if target_flops is None or not 0.0 < target_flops < 1.0:
    raise PurlError(f"train_eval.target_flops={target_flops} is not in (0, 1): with "
                    "train_eval.granularity='channel', bind it to the fraction of the dense "
                    "FLOPs to remove, such as 0.7.")
  return float(target_flops)


def _importance(method: str, importance: Optional[str]) -> str:
  """train_eval.channel_importance, checked; None: 'bn_gamma' for bn_scale, else 'l1'."""
  if importance is None:
    return "bn_gamma" if method == "bn_scale" else "l1"
  if importance not in CRITERIA:
    raise PurlError(f"train_eval.channel_importance={importance!r} is unknown: use one of "
                    f"{list(CRITERIA)}.")
  return importance


def _refuse_channel_knobs(target_flops, channel_importance):
  """A PurlError when a channel knob is bound in a weight run (it would do nothing)."""
  for name, value in (("target_flops", target_flops),
                      ("channel_importance", channel_importance)):
    if value is not None:
      raise PurlError(f"train_eval.{name}={value!r} applies to granularity 'channel': bind "
                      "train_eval.granularity='channel', or unbind it (weight pruning "
                      "aims at train_eval.target_sparsity).")


def _channel_fields(parts: Parts, model_builder, root_dir: str, target: float,
                    pruned_model: str, measure: bool) -> dict:
  """RunResult's channel fields; the speed of the shrunk model against the dense one
  when `measure` (train_eval.export_tflite, on the chief)."""
  fields = {"granularity": methods.CHANNEL, "target_flops": target}
  if measure:
    speed = channels.measure(
        root_dir, parts.splits,
        lambda: model_builder(input_shape=parts.splits.image_shape,
                              num_classes=parts.splits.num_classes), pruned_model)
    fields.update(speed=speed, speedup_1_thread=speed.get("speedup_1_thread"),
                  speedup_2_threads=speed.get("speedup_2_threads"))
  return fields


def _global_sparsity(controller: pruning.PruningController, allocation: dict) -> float:
  """Share of the prunable weights that `allocation` ({layer: sparsity}) prunes (for a
  ChannelController: the fraction of the dense FLOPs it removes)."""
  if isinstance(controller, ChannelController):
    return controller.removed_fraction([allocation[n] for n in controller.names])
  return pruning.costs(controller.infos, [allocation[n] for n in controller.names],
                       controller.total_params)["global_sparsity"]


def _fit(controller: pruning.PruningController, allocation: dict, target: float) -> dict:
  """train_eval.fit_to_target: the allocation scaled to exactly `target`, said aloud."""
  before = _global_sparsity(controller, allocation)
  if isinstance(controller, ChannelController):
    fitted = controller.fitted(allocation, target)
  else:
    fitted = pruning.fitted(controller, allocation, target)
  _log.info(f"train_eval.fit_to_target: the chosen allocation (global sparsity {before:.4f}) "
            f"scaled to the target {target} ({_global_sparsity(controller, fitted):.4f}) "
            "before its fine-tune from the dense weights.")
  return fitted


def _gradual(parts: Parts, model_builder, root_dir, target, choice, seed) -> dict:
  """gradual.gradual from the dense weights, with finetune()'s budget and optimizer."""
  budget = {name: bound(finetune.finetune, name)
            for name in ("epochs", "learning_rate", "momentum")}
  with parts.strategy.scope():
    dense = model_builder(input_shape=parts.splits.image_shape,
                          num_classes=parts.splits.num_classes)
    dense.load_weights(os.path.join(root_dir, files.DENSE_WEIGHTS))
  return gradual.gradual(dense, parts.controller, parts.strategy, parts.splits, root_dir,
                         target, choice.retrain_steps,
                         finetune.steps(parts.splits, budget["epochs"]),
                         budget["learning_rate"], budget["momentum"], seed)


def bound(function, parameter: str):
  """The value gin binds to `function`'s parameter, else the parameter's default."""
  try:
    return gin.query_parameter(f"{function.__name__}.{parameter}")
  except ValueError:
    return inspect.signature(function).parameters[parameter].default


def claim(root_dir: str, config: str, overwrite: bool):
  """Records `config` as root_dir's; refuses a root_dir holding a run of another config."""
  path = os.path.join(root_dir, files.CONFIG)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as handle:
      if handle.read() != config:
        if not overwrite:
          raise PurlError(f"{root_dir} holds a run with another config ({path}): use another "
                          "root_dir, or overwrite it (--overwrite; prune(..., overwrite=True)) "
                          "to delete that run.")
        _log.info(f"--overwrite: deleting the run in {root_dir}.")
        tf.io.gfile.rmtree(root_dir)
  tf.io.gfile.makedirs(root_dir)
  if not tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path + ".partial", "w") as handle:
      handle.write(config)
    tf.io.gfile.rename(path + ".partial", path, overwrite=True)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str]):
  """gin.parse_config_files_and_bindings, with gin's errors made one-line PurlErrors."""
  paths = [configs.find(name) for name in gin_files]
  gin.add_config_file_search_path(configs.folder())  # `include "resnet50.gin"` anywhere
  try:
    gin.parse_config_files_and_bindings(paths, list(bindings))
  except (ValueError, KeyError, SyntaxError, ImportError) as error:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    where = next((line for line in lines[1:] if line.startswith("In ")), "")
    raise PurlError(f"gin: {lines[0].strip(chr(34))} {where}".strip()
                    + " (see docs/configuration.md for the parameters).") from error
