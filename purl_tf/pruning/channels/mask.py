"""Masking: removed channels zeroed in place, so the model computes what its shrunk twin does.

For each removed channel: the producer's filter and bias, the depthwise filter and bias, the
batch norm's gamma and beta (its output is then beta + gamma * (x - mean) / sd = 0 exactly,
whatever its moving statistics, which stay as they are) and every consumer's input weights
for it. The channel then outputs exactly zero after the producer, its batch norm and any
depthwise conv, and nothing downstream reads it.
"""
from typing import Sequence

import numpy as np
import tf_keras as keras

from purl_tf.pruning.channels.keep import removed_positions
from purl_tf.pruning.channels.layers import kind, weight_axes

# Weights zeroed per class when not all of weight_axes' weights are.
ZEROED = {"BatchNormalization": ("gamma", "beta")}


def mask_channels(model: keras.Model, groups: Sequence, keep: Sequence):
  """Zeroes, in place, the weights of the channels `keep` leaves out of `groups`.

  Args:
    model: the model the groups were found in (a plain, unwrapped tf-keras model); copy it
      first (clone_model + set_weights) to keep its dense weights.
    groups: ChannelGroups.groups.
    keep: one keep-set per group (keep.py).
  """
  removed = removed_positions(groups, keep)
  for name in dict.fromkeys(layer for layer, _ in removed):
    layer = model.get_layer(name)
    for weight, roles in weight_axes(layer).items():
      if weight not in ZEROED.get(kind(layer), (weight,)):
        continue
      variable = getattr(layer, weight)
      value = variable.numpy()
      for axis, role in roles.items():
        gone = removed.get((name, role))
        if gone is not None and gone.size:
          index = [slice(None)] * value.ndim
          index[axis] = gone
          value[tuple(index)] = 0
      variable.assign(value)
