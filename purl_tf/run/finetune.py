"""Fine-tuning the chosen allocation with its masks fixed, then the final test evaluation.

The fine-tune starts from the network a search measured for its chosen allocation (its
masks and retrained weights, `start_state`), or, for a one-shot method, from the allocation
applied to the dense weights (masks by magnitude, layer by layer); the network is trained
for a gin-set budget under the run's tf.distribute strategy (cosine-decayed SGD), and the
pruned model is saved without wrappers. Progress (weights, optimizer, steps done and restarts) is
checkpointed after every epoch in root_dir/finetune, so a rerun continues from the last
finished epoch on the batches an uninterrupted run would have seen.

With a pruning.channels.ChannelController (channel granularity) the allocation is each
group's fraction of channels removed; the fine-tune trains under its channel masks, and the
saved pruned model is the physically thinner one (channels.save_shrunk), measured itself.
"""
import logging
import math
import os
import time
from typing import Optional

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import pruning
from purl_tf.models import keras3
from purl_tf.runtime import files, interrupt
from purl_tf.data import Splits
from purl_tf.errors import PurlError
from purl_tf.pruning.channels import ChannelController
from purl_tf.pruning.training import MaskedTrainer
from purl_tf.run import channels

_log = logging.getLogger(__name__)


def steps(splits: Splits, epochs: float) -> int:
  """Train steps of `epochs` passes over the train split (full batches)."""
  return int(math.ceil(epochs * max(splits.num_examples["train"] // splits.batch_size, 1)))


@gin.configurable(denylist=["controller", "strategy", "splits", "allocation", "root_dir",
                            "seed", "start_state", "extra_steps"])
def finetune(controller: pruning.PruningController, strategy: tf.distribute.Strategy,
             splits: Splits, allocation: dict, root_dir: str, epochs: float = 2.0,
             learning_rate: float = 0.01, momentum: float = 0.9, max_restarts: int = 3,
             seed: int = 0, start_state: Optional[str] = None, extra_steps: int = 0) -> dict:
  """Fine-tunes `allocation` ({layer: sparsity}) and evaluates dense and pruned on test.

  Args:
    controller: the PruningController (or ChannelController) whose snapshot holds the
      dense weights.
    strategy: the strategy the model was built under.
    splits: data.Splits; train for fine-tuning, reward for progress, test for the result.
    allocation: per-layer sparsity fractions (per channel group: the fraction of its
      channels removed), applied to the dense weights unless `start_state` is given.
    root_dir: run folder; writes root_dir/finetune and root_dir/pruned_model.keras.
    epochs: passes over the train split (fractions allowed); 0 evaluates as pruned.
    learning_rate: initial SGD learning rate, decayed to 0 along a cosine.
    momentum: SGD momentum.
    max_restarts: after a non-finite loss the last checkpoint is restored and the epoch
      retried on reshuffled data; this many failures in a row stop with an error.
    seed: seeds the data order: one stream of batches per restart count, continued at
      the step reached (step s always sees the same batch).
    start_state: a network saved by PruningController.save_state (masks and weights) to
      start from instead.
    extra_steps: train steps on top of `epochs`' (train_eval.match_search_steps gives a
      one-shot allocation the steps a search of the run's config would spend).
  Returns:
    dict with dense_test_accuracy, pruned_test_accuracy, pruned_reward_accuracy,
    finetune_steps, finetune_restarts, finetune_seconds, pruned_model (path),
    pruned_model_keras3 (path, None unless the model came from Keras 3) and the costs of
    the pruning; with a ChannelController also `warnings` (channels.save_shrunk).
  """
  if epochs < 0:
    raise PurlError(f"finetune.epochs={epochs} must not be negative.")
  start = time.time()
  steps_per_epoch = max(splits.num_examples["train"] // splits.batch_size, 1)
  total_steps = steps(splits, epochs) + extra_steps
  with strategy.scope():
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(total_steps, 1))
    trainer = MaskedTrainer(controller.model, strategy, learning_rate=schedule,
                            momentum=momentum)
  done = tf.Variable(0, dtype=tf.int64, trainable=False, name="finetune_steps")
  restarts = tf.Variable(0, dtype=tf.int64, trainable=False, name="finetune_restarts")
  test = trainer.distribute(splits.test)
  reward = trainer.distribute(splits.reward)

  controller.reset()
  dense_test = trainer.evaluate(test)
  by_channel = isinstance(controller, ChannelController)
  if start_state:
    controller.load_state(start_state)
  elif by_channel:
    controller.apply([allocation[name] for name in controller.names])
  else:
    pruning.explicit(controller, allocation)
  checkpoint = tf.train.Checkpoint(model=controller.model, optimizer=trainer.optimizer,
                                   steps=done, restarts=restarts)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(root_dir, files.FINETUNE_CHECKPOINTS), max_to_keep=2)
  if files.restore_latest(checkpoint, manager):
    _log.info(f"Resuming fine-tuning after step {int(done)}/{total_steps}.")
  else:
    manager.save(checkpoint_number=0)  # the pruned start: what a first-epoch failure undoes
  failures = 0
  stream = None
  while int(done) < total_steps:
    interrupt.check()
    chunk = min(steps_per_epoch, total_steps - int(done))
    if stream is None:
      stream = trainer.stream(splits.train_stream(int(done), seed=seed * 7919
                                                  + 100_003 * int(restarts)))
    loss = trainer.train(stream, chunk)
    if not np.isfinite(loss):
      failures += 1
      stream = None
      if failures > max_restarts:
        raise PurlError(f"fine-tuning diverged {failures} times in a row at step "
                        f"{int(done)}: lower finetune.learning_rate.")
      _log.warning(f"fine-tuning loss {loss} at step {int(done)}: back to the last "
                   "checkpoint, retrying on reshuffled data.")
      count = int(restarts) + 1
      files.restore_latest(checkpoint, manager)
      restarts.assign(count)  # after the restore, which rolls it back too
      continue
    failures = 0
    done.assign_add(chunk)
    accuracy = trainer.evaluate(reward)
    _log.info(f"[finetune] step {int(done):6d}/{total_steps}  loss {loss:.4f}  "
              f"reward acc {accuracy:.4f}  sparsity {controller.global_sparsity():.3f}")
    manager.save(checkpoint_number=int(done))

  if by_channel:
    saved = channels.save_shrunk(controller, root_dir, splits.test, splits.reward)
  else:
    saved = {"pruned_model": pruning.save(controller.model,
                                          os.path.join(root_dir, files.PRUNED_MODEL)),
             "pruned_model_keras3": keras3.write_pruned(pruning.strip(controller.model),
                                                        root_dir),
             "pruned_test_accuracy": trainer.evaluate(test),
             "pruned_reward_accuracy": trainer.evaluate(reward)}
  results = {
      "dense_test_accuracy": dense_test,
      "finetune_steps": total_steps,
      "finetune_restarts": int(restarts),
      "finetune_seconds": time.time() - start,
      "allocation": controller.allocation(),
      **saved,
  }
  results.update(controller.costs())
  return results
