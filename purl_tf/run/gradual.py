"""Gradual magnitude pruning (Zhu & Gupta) with tfmot's own schedule and wrapper.

The baseline that prunes while it trains: tfmot's PolynomialDecay raises each prunable
layer's sparsity from 0 to its share of a one-shot allocation at the target (ERK unless
`gradual.allocation` names another of pruning.ALLOCATIONS) along a cubic ramp over
`prune_steps` train steps (masks recomputed from magnitudes), then training goes on at the
target for the fine-tune budget. The optimizer is the fine-tune's: SGD with momentum and a
cosine decay of the learning rate over all steps. tfmot cannot prune DepthwiseConv2D:
those layers stay dense.

Uniform layer targets (Zhu & Gupta's) prune a 72-weight first conv and the classifier as
hard as the rest: on ResNet-20 at 0.98 that leaves one or two weights in the first conv
and the network at chance, so the default ramps to ERK's targets, which keep small layers
denser.
"""
import dataclasses
import logging
import os
import time
from typing import Dict, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import models, pruning
from purl_tf.models import keras3
from purl_tf.runtime import files, interrupt
from purl_tf.errors import PurlError
from purl_tf.pruning.tfmot_loader import tfmot
from purl_tf.pruning.training import MaskedTrainer

_log = logging.getLogger(__name__)

TFMOT_SKIPS = ("DepthwiseConv2D",)  # layer types tfmot's registry cannot prune


def schedule(target: float, prune_steps: int, frequency: int = 100):
  """tfmot PolynomialDecay: Zhu & Gupta's cubic ramp from 0 to `target` over `prune_steps`.

  Masks are recomputed every f = min(frequency, prune_steps // 10) steps (at least 1), so
  there are at least 10 updates, the last of them at the end of the ramp (a multiple of f).
  """
  every = max(1, min(frequency, prune_steps // 10))
  end = max(every, every * (prune_steps // every))
  return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target,
                                              begin_step=0, end_step=end, frequency=every)


def tfmot_prune(dense: keras.Model, schedules: Dict[str, object]) -> keras.Model:
  """A copy of `dense` whose layers named in `schedules` are wrapped by tfmot, each under
  its schedule; layer types tfmot cannot prune (TFMOT_SKIPS) stay dense."""

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    copy = layer.__class__.from_config(layer.get_config())
    if layer.name in schedules and type(layer).__name__ not in TFMOT_SKIPS:
      return tfmot.sparsity.keras.prune_low_magnitude(
          copy, pruning_schedule=schedules[layer.name])
    return copy

  wrapped = keras.models.clone_model(dense, clone_function=clone)
  pruning.copy_weights(dense, wrapped)
  return wrapped


def layer_targets(controller: pruning.PruningController, target: float,
                  allocation: str) -> Dict[str, float]:
  """{layer: final sparsity} of the one-shot `allocation` (a pruning.ALLOCATIONS name) at
  `target`; leaves the controller dense."""
  if allocation not in pruning.ALLOCATIONS:
    raise PurlError(f"gradual.allocation={allocation!r} is unknown: use one of "
                    f"{list(pruning.ALLOCATIONS)}.")
  return pruning.allocate(controller, allocation, target)


def mask_sparsities(model: keras.Model, names: Sequence[str]) -> Dict[str, float]:
  """{layer: share of its weights masked out} of a tfmot-wrapped model; 0 where unwrapped."""
  wrappers = {w.layer.name: w for w in pruning.prunable_layers(model)}
  out = {}
  for name in names:
    masks = [mask.numpy() for _, mask, _ in wrappers[name].pruning_vars] if (
        name in wrappers) else []
    out[name] = float(1.0 - sum(m.sum() for m in masks) / sum(m.size for m in masks)) if (
        masks) else 0.0
  return out


class _LastLoss(keras.callbacks.Callback):
  """Keeps the training loss Keras reports at the end of a fit call."""

  def __init__(self):
    super().__init__()
    self.loss = float("nan")

  def on_epoch_end(self, epoch, logs=None):
    self.loss = float((logs or {}).get("loss", float("nan")))


@dataclasses.dataclass
class _Progress:
  """Counts a tfmot model's train steps across fit calls."""
  total: int
  done: int = 0
  chunks: int = 0


@gin.configurable(denylist=["dense", "controller", "strategy", "splits", "root_dir",
                            "target", "prune_steps", "tune_steps", "learning_rate",
                            "momentum", "seed"])
def gradual(dense: keras.Model, controller: pruning.PruningController,
            strategy: tf.distribute.Strategy, splits, root_dir: str, target: float,
            prune_steps: int, tune_steps: int, learning_rate: float, momentum: float,
            seed: int, allocation: str = "erk", frequency: int = 100) -> dict:
  """Prunes a copy of `dense` gradually for prune_steps, trains tune_steps more at the
  target, strips and saves it; returns finetune()'s fields (costs included).

  Args:
    dense: the dense model (built in `strategy`'s scope, holding the dense weights).
    controller: the run's PruningController (names and costs of the prunable layers).
    strategy, splits, root_dir: the run's.
    target: target global sparsity of the prunable weights.
    prune_steps: train steps of the ramp (the search budget of PuRL).
    tune_steps, learning_rate, momentum: the fine-tune budget and optimizer.
    seed: seeds the data order of each chunk of training.
    allocation: the one-shot allocation (a pruning.ALLOCATIONS name) whose per-layer
      sparsities at `target` the ramps end at.
    frequency: train steps between tfmot's mask updates (at most).
  """
  names = controller.names
  total = prune_steps + tune_steps
  targets = layer_targets(controller, target, allocation)
  _log.info(f"[gradual] ramping each layer to its {allocation} sparsity at {target} over "
            f"{prune_steps:,} steps, then {tune_steps:,} at the target.")
  with strategy.scope():
    model = tfmot_prune(dense, {name: schedule(share, max(prune_steps, 1), frequency)
                                for name, share in targets.items() if share > 0.0})
    decay = keras.optimizers.schedules.CosineDecay(learning_rate, max(total, 1))
    model.compile(optimizer=keras.optimizers.SGD(decay, momentum=momentum),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=not models.outputs_probabilities(model)))
  progress = _Progress(total)
  sizes = controller.sizes.astype(np.float64)
  started = time.time()
  for steps in (prune_steps, tune_steps):
    _train(model, splits, seed, steps, progress, names, sizes)
  allocation = mask_sparsities(model, names)
  path = pruning.save(model, os.path.join(root_dir, files.PRUNED_MODEL))
  keras3_path = keras3.write_pruned(pruning.strip(model), root_dir)
  with strategy.scope():
    pruned = MaskedTrainer(pruning.strip(model), strategy)
    dense_trainer = MaskedTrainer(dense, strategy)
  test = pruned.distribute(splits.test)
  tuned = {"dense_test_accuracy": dense_trainer.evaluate(test),
           "pruned_test_accuracy": pruned.evaluate(test),
           "pruned_reward_accuracy": pruned.evaluate(pruned.distribute(splits.reward)),
           "finetune_steps": tune_steps, "finetune_restarts": 0,
           "finetune_seconds": time.time() - started, "pruned_model": path,
           "pruned_model_keras3": keras3_path,
           "allocation": allocation}
  tuned.update(pruning.costs(controller.infos, [allocation[n] for n in names],
                             controller.total_params))
  return tuned


def _train(model, splits, seed, steps, progress, names, sizes):
  """Trains `steps` batches in chunks of at most one pass over the train split, each on
  its own stream seeded by (seed, chunk); tfmot's UpdatePruningStep drives the masks."""
  per_epoch = max(splits.num_examples["train"] // splits.batch_size, 1)
  while steps > 0:
    interrupt.check()
    chunk = min(per_epoch, steps)
    last = _LastLoss()
    model.fit(splits.train_stream(seed=seed * 7919 + progress.chunks), steps_per_epoch=chunk,
              epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), last])
    if not np.isfinite(last.loss):
      raise PurlError(f"gradual pruning: training loss {last.loss} at step {progress.done}: "
                      "lower finetune.learning_rate.")
    steps -= chunk
    progress.done += chunk
    progress.chunks += 1
    shares = np.array(list(mask_sparsities(model, names).values()))
    _log.info(f"[gradual] step {progress.done:6d}/{progress.total}  loss {last.loss:.4f}  "
              f"sparsity {float(np.dot(shares, sizes) / sizes.sum()):.3f}")
