"""Removing the pruning wrappers: a plain tf-keras model with the zeros baked in."""
import os

import tensorflow as tf
import tf_keras as keras

from purl_tf.pruning.tfmot_loader import tfmot
from purl_tf.pruning.wrap import apply_masks, prunable_layers


def strip(model: keras.Model) -> keras.Model:
  """A plain tf-keras model sharing the wrapped model's layers, masks applied to weights.

  It holds only built-in layer classes, so it loads anywhere tf-keras does.
  """
  apply_masks(prunable_layers(model))
  return tfmot.sparsity.keras.strip_pruning(model)


def save(model: keras.Model, path: str) -> str:
  """Strips `model` and saves it to `path` (.keras, .h5, or a folder for a SavedModel).

  Written beside the target first and renamed, so a crash leaves no partial model.
  """
  plain = strip(model)
  path = os.path.abspath(os.path.expanduser(path))
  tf.io.gfile.makedirs(os.path.dirname(path))
  root, extension = os.path.splitext(path)
  partial = f"{root}.partial{extension}"
  if tf.io.gfile.exists(partial):
    _remove(partial)
  plain.save(partial)
  if tf.io.gfile.exists(path):
    _remove(path)
  tf.io.gfile.rename(partial, path)
  return path


def _remove(path):
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  else:
    tf.io.gfile.remove(path)
