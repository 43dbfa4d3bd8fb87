"""Parameters and FLOPs of a model, dense or under a keep, counted exactly.

FLOPs are multiply-accumulates per example of the conv and dense kernels, as in
accounting.py: a kernel's size times its layer's output positions (H * W; 1 for a dense on
vectors), summed over the layer's calls. Unlike accounting.py, which counts only the weight
it prunes, a SeparableConv2D counts both its depthwise and its pointwise kernels, since
removing channels thins both. Biases, batch norms, pooling and additions are not counted.
Parameters are all weights, trainable or not (batch-norm statistics included).
"""
import dataclasses
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.keep import kept_positions
from purl_tf.pruning.channels.layers import KERNELS, weight_axes


@dataclasses.dataclass(frozen=True)
class Cost:
  params: int  # weights of the model
  flops: int  # multiply-accumulates per example


def _positions(layer) -> int:
  """Output positions summed over the layer's calls."""
  total = 0
  for index in range(len(layer.inbound_nodes)):
    inner = layer.get_output_shape_at(index)[1:-1]
    if any(size is None for size in inner):
      raise PurlError(f"layer {layer.name} has outputs of unknown size: give the model a "
                      "fixed input size, e.g. keras.Input((32, 32, 3)), to count its FLOPs.")
    total += int(np.prod(inner, dtype=np.int64))
  return total


def count(model: keras.Model,
          widths: Optional[Mapping[Tuple[str, str], int]] = None) -> Cost:
  """Cost of `model`, or of it with (layer name, role) axes narrowed to `widths` lengths."""
  widths = widths or {}
  params = flops = 0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      raise PurlError(f"layer {layer.name} is a nested model: count a flat model.")
    params += layer.count_params()
    for weight, roles in weight_axes(layer).items():
      shape = list(getattr(layer, weight).shape)
      dense = int(np.prod(shape, dtype=np.int64))
      for axis, role in roles.items():
        shape[axis] = widths.get((layer.name, role), shape[axis])
      size = int(np.prod(shape, dtype=np.int64))
      params += size - dense
      if weight in KERNELS:
        flops += size * _positions(layer)
  return Cost(int(params), int(flops))


def cost(model: keras.Model, groups: Sequence, keep: Sequence) -> Cost:
  """Cost of the model `shrink(model, groups, keep)` would build, without building it."""
  kept = kept_positions(model, groups, keep)
  return count(model, {key: len(positions) for key, positions in kept.items()})
