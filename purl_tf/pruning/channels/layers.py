"""Where the channels sit in the weights of the layers channel pruning can thin.

A layer takes part in a channel group through a *role*: OUT (its output channels: a Conv2D's
filters, a Dense's units, a SeparableConv2D's pointwise filters), IN (its input channels) or
CHANNEL (a per-channel layer whose input and output channels are the same ones: batch norm, a
depthwise conv of depth multiplier 1). `weight_axes` says, for each weight of such a layer,
which of its axes index which role; the mask, the shrink and the counter all read it.
"""
from typing import Dict, Optional

import tf_keras as keras

OUT, IN, CHANNEL = "out", "in", "channel"
ROLES = (OUT, IN, CHANNEL)

# class name -> {weight attribute: {axis: role}}; a missing attribute (use_bias=False,
# center=False) is skipped. Shapes: Conv2D kernel (kh, kw, c_in, c_out); Dense kernel
# (c_in, c_out); DepthwiseConv2D depthwise_kernel (kh, kw, c, 1); SeparableConv2D
# depthwise_kernel (kh, kw, c_in, 1), pointwise_kernel (1, 1, c_in, c_out); biases and
# batch-norm vectors (c,).
_AXES = {
    "Conv2D": {"kernel": {2: IN, 3: OUT}, "bias": {0: OUT}},
    "Dense": {"kernel": {0: IN, 1: OUT}, "bias": {0: OUT}},
    "DepthwiseConv2D": {"depthwise_kernel": {2: CHANNEL}, "bias": {0: CHANNEL}},
    "SeparableConv2D": {"depthwise_kernel": {2: IN}, "pointwise_kernel": {2: IN, 3: OUT},
                        "bias": {0: OUT}},
    "BatchNormalization": {"gamma": {0: CHANNEL}, "beta": {0: CHANNEL},
                           "moving_mean": {0: CHANNEL}, "moving_variance": {0: CHANNEL}},
}
# The attribute of each producer's config that holds its number of output channels.
_WIDTH = {"Conv2D": "filters", "SeparableConv2D": "filters", "Dense": "units"}
# Weights whose multiply-accumulates are counted (a kernel is applied at each output position).
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def kind(layer: keras.layers.Layer) -> str:
  """The exact class name: a subclass of a supported layer is treated as unknown."""
  return type(layer).__name__


def weight_axes(layer: keras.layers.Layer) -> Dict[str, Dict[int, str]]:
  """{weight attribute: {axis: role}} of the layer's present weights; {} for other layers.

  A grouped Conv2D holds c_in / groups inputs per filter, so its kernel's axis 2 is not its
  input channels: only its OUT axes are listed (its channels are always left whole).
  """
  axes = _AXES.get(kind(layer), {})
  if kind(layer) == "Conv2D" and layer.groups > 1:
    axes = {"kernel": {3: OUT}, "bias": {0: OUT}}
  return {name: roles for name, roles in axes.items() if getattr(layer, name, None) is not None}


def width_key(layer: keras.layers.Layer) -> Optional[str]:
  """The config key of the layer's output channel count ('filters', 'units'), or None."""
  return _WIDTH.get(kind(layer))
