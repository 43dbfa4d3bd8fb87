"""The run folder's layout, and writing its files so that a crash never leaves a partial one."""
import json
import logging
import os

import tensorflow as tf

from purl_tf.errors import PurlError

_log = logging.getLogger(__name__)

# Paths inside a run folder (root_dir).
CONFIG = "config.gin"  # the gin config the run was started with
OPERATIVE_CONFIG = "operative_config.gin"  # every parameter the run used
RESULTS = "results.json"  # written last: its presence marks a finished run
BEST_ALLOCATION = "best_allocation.json"
DENSE_WEIGHTS = os.path.join("dense", "weights.h5")
SEARCH_CHECKPOINTS = os.path.join("search", "checkpoints")
EPISODES = os.path.join("search", "episodes.json")
SEARCH_CANDIDATES = os.path.join("search", "candidates")  # networks of the best episodes
SEARCH_CHOSEN = os.path.join("search", "chosen.npz")  # the chosen one after its re-score
FINETUNE_CHECKPOINTS = "finetune"
PRUNED_MODEL = "pruned_model.keras"
PRUNED_MODEL_KERAS3 = "pruned_model.keras3.keras"  # the same, for Keras 3 (keras3.py)
KERAS3_ORIGINAL = os.path.join("dense", "keras3_original.keras")  # a Keras 3 input model
POLICY_DIR = "policy"  # the trained greedy policy (tf-agents PolicySaver SavedModel)
TFLITE_DIR = "tflite"
REPORT_DIR = "report"
TENSORBOARD_DIRS = ("train", "eval")  # collect / greedy episodes


def write_json(path: str, value) -> str:
  """Writes `value` as indented JSON to a temporary file beside `path`, then renames it."""
  return write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_text(path: str, text: str) -> str:
  """Writes `text` to a temporary file beside `path`, then renames it."""
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
  partial = path + ".partial"
  with tf.io.gfile.GFile(partial, "w") as handle:
    handle.write(text)
  tf.io.gfile.rename(partial, path, overwrite=True)
  return path


def read_json(path: str, default=None):
  """The JSON value at `path`, or `default` when there is no such file."""
  if not tf.io.gfile.exists(path):
    return default
  with tf.io.gfile.GFile(path) as handle:
    return json.load(handle)


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                   validate=None):
  """Restores the newest readable checkpoint of `manager`; returns its path (None: none).

  A checkpoint that fails to restore (truncated, corrupt) or to `validate()` is skipped
  with a warning in favour of the one before it. When none is readable, raises a
  PurlError naming the folder to delete.
  """
  problems = []
  for path in reversed(manager.checkpoints):
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
      if validate is not None:
        validate()
      if problems:
        _log.warning(f"skipped unreadable checkpoint(s) {'; '.join(problems)}; resuming "
                     f"from {path}.")
      return path
    except Exception as error:  # Corruption shows up as many error types.
      problems.append(f"{os.path.basename(path)} ({type(error).__name__})")
  if problems:
    raise PurlError(f"no readable checkpoint in {manager.directory} ({', '.join(problems)}): "
                    "delete that folder to redo this stage.")
  return None
