"""Writing run artefacts so that a crash never leaves a partial file."""
import json
import os

import tensorflow as tf


def write_json(path: str, value) -> str:
  """Writes `value` as indented JSON to a temporary file beside `path`, then renames it."""
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
  partial = path + ".partial"
  with tf.io.gfile.GFile(partial, "w") as handle:
    handle.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
  tf.io.gfile.rename(partial, path, overwrite=True)
  return path


def read_json(path: str, default=None):
  """The JSON value at `path`, or `default` when there is no such file."""
  if not tf.io.gfile.exists(path):
    return default
  with tf.io.gfile.GFile(path) as handle:
    return json.load(handle)
