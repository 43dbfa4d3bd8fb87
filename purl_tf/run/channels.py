"""The channel-specific end of a run: the shrunk model, its accuracy, its measured speed.

After the fine-tune of a channel allocation (masks of a ChannelController), `save_shrunk`
rebuilds the physically thinner plain tf-keras model with the fine-tuned weights
(controller.shrink()), saves it as the run's pruned model (and, for a Keras 3 input, as a
thinner Keras 3 file: keras3.write_pruned) and measures its accuracies on the model
itself, so results.json reports what the saved file scores. `measure` times it
against the dense network (speed.measure_speed: LiteRT latency at 1 and 2 threads, Keras
throughput, the pruned model's float32 and int8 flatbuffers), and `one_shot` compares the
allocation's one-shot accuracy with uniform width and global filter ranking at the same
FLOPs, as compare.one_shot does for weights.
"""
import logging
import os
from typing import Callable, Dict, List

import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import pruning
from purl_tf.errors import PurlError
from purl_tf.models import keras3
from purl_tf.pruning.channels import ChannelController
from purl_tf.pruning.channels import allocations as channel_allocations
from purl_tf.pruning.training import MaskedTrainer
from purl_tf.run import export, speed
from purl_tf.runtime import files

_log = logging.getLogger(__name__)

# The warning when a Keras 3 input's shrunk model cannot be written as Keras 3 (the reason
# follows).
NO_KERAS3 = "the shrunk model is written as tf-keras only (no pruned_model_keras3): "


def accuracy(model: keras.Model, dataset: tf.data.Dataset) -> float:
  """Top-1 accuracy (fraction) of a plain model over a batched split of (images, labels)."""
  predict = tf.function(lambda images: model(images, training=False), autograph=False,
                        reduce_retracing=True)
  correct = seen = 0
  for images, labels in dataset:
    predicted = np.argmax(predict(images).numpy(), axis=-1)
    correct += int(np.sum(predicted == labels.numpy()))
    seen += len(predicted)
  return correct / max(seen, 1)


def save_shrunk(controller: ChannelController, root_dir: str, test: tf.data.Dataset,
                reward: tf.data.Dataset) -> dict:
  """Shrinks the controller's current state, saves it as root_dir/PRUNED_MODEL (plain
  tf-keras) and measures it: {pruned_model, pruned_model_keras3, pruned_test_accuracy,
  pruned_reward_accuracy, warnings}.

  pruned_model_keras3 is the shrunk model as a Keras 3 file when the run's model came from
  Keras 3 (keras3.write_pruned rebuilds the original with the shrunk widths), else None;
  when it cannot be written, a warning says why and the tf-keras model stands alone.
  """
  shrunk = controller.shrink()
  path = pruning.save(shrunk, os.path.join(root_dir, files.PRUNED_MODEL))
  warnings = []
  try:
    keras3_path = keras3.write_pruned(shrunk, root_dir)
  except PurlError as error:
    keras3_path = None
    warnings.append(NO_KERAS3 + str(error))
  cost = controller.costs()
  _log.info(f"Shrunk {shrunk.name}: {shrunk.count_params():,} parameters, "
            f"{cost['flops_remaining']:,} of {cost['flops_total']:,} FLOPs left.")
  return {"pruned_model": path, "pruned_model_keras3": keras3_path,
          "pruned_test_accuracy": accuracy(shrunk, test),
          "pruned_reward_accuracy": accuracy(shrunk, reward), "warnings": warnings}


def measure(root_dir: str, splits, dense_builder: Callable[[], keras.Model],
            pruned_model: str) -> Dict:
  """speed.measure_speed of the dense network (`dense_builder()` with the run's dense
  weights) against the saved shrunk model, the flatbuffers written to root_dir/TFLITE_DIR."""
  dense = dense_builder()
  dense.load_weights(os.path.join(root_dir, files.DENSE_WEIGHTS))
  pruned = keras.models.load_model(pruned_model, compile=False)
  return speed.measure_speed(dense, pruned, splits.test,
                             export.calibration_images(splits.reward),
                             os.path.join(root_dir, files.TFLITE_DIR))


def one_shot(controller: ChannelController, dense: keras.Model, trainer: MaskedTrainer,
             test: tf.data.Dataset, allocation: dict) -> dict:
  """{method: {allocation, global_sparsity, one_shot_test_accuracy}} of `allocation`
  ('chosen') and of uniform and global_filter at the FLOPs it removes (the rung nearest),
  each set on the dense weights and measured on test without retraining.

  Leaves the controller reset to the dense state.
  """
  test = trainer.distribute(test)
  chosen = [allocation[name] for name in controller.names]
  removed = controller.removed_fraction(chosen)
  levels: Dict[str, List[float]] = {"chosen": chosen}
  for name in ("uniform", "global_filter"):
    levels[name] = list(channel_allocations.allocate(name, dense, controller.groups, removed))
  out = {}
  for name, fractions in levels.items():
    controller.reset()
    controller.apply(fractions)
    out[name] = {"allocation": controller.allocation(),
                 "global_sparsity": controller.global_sparsity(),
                 "one_shot_test_accuracy": trainer.evaluate(test)}
  controller.reset()
  return out
