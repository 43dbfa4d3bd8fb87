"""Static descriptors of prunable layers, and the parameters and FLOPs a pruning leaves.

FLOPs here are multiply-accumulates of one example through a layer; a weight that is
pruned removes its share of them (unstructured sparsity, zero activations ignored).
"""
import dataclasses
from typing import List, Sequence

import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.wrap import PruneLowMagnitude, leaf_layers, prunable_layers

KINDS = ("conv", "depthwise", "dense")


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """What the agent and the reports know about one prunable layer before pruning it."""
  name: str  # the wrapped layer's name
  kind: str  # one of KINDS
  kernel: int  # side of the pruned kernel (max of height, width); 1 for dense, pointwise
  stride: int  # max stride; 1 for dense
  in_channels: int
  out_channels: int
  params: int  # prunable weights (the kernel)
  flops: int  # dense multiply-accumulates of the pruned weight per example, all calls
  param_share: float  # params / all prunable weights
  flop_share: float  # flops / all prunable layers' flops


def _calls(wrapper: PruneLowMagnitude):
  """(input shape, output shape) of each call of the layer in its model; > 1 when shared."""
  return [(tuple(wrapper.get_input_shape_at(i)), tuple(wrapper.get_output_shape_at(i)))
          for i in range(len(wrapper.inbound_nodes))]


def _positions(wrapper: PruneLowMagnitude, output_shape) -> int:
  """Output positions of one call: H * W for a conv (B, H, W, C), 1 for a dense (B, C)."""
  inner = output_shape[1:-1]
  if any(d is None for d in inner):
    raise PurlError(f"layer {wrapper.layer.name} has outputs of unknown size "
                    f"{output_shape}: give the model a fixed input size, e.g. "
                    "keras.Input((224, 224, 3)), so that its FLOPs can be counted.")
  return int(np.prod(inner, dtype=np.int64))


def _describe_one(wrapper: PruneLowMagnitude):
  """LayerInfo fields but the shares; FLOPs summed over every call of a shared layer.

  A grouped convolution's kernel already holds c_in / groups inputs per output, and a
  separable one's pruned weight is its 1x1 pointwise kernel: FLOPs = weights * positions.
  """
  layer = wrapper.layer
  weight = wrapper.pruning_vars[0][0]
  params = int(np.prod(weight.shape))
  calls = _calls(wrapper)
  positions = sum(_positions(wrapper, output_shape) for _, output_shape in calls)
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    kind = "depthwise"
  elif isinstance(layer, keras.layers.Dense):
    kind = "dense"
  else:
    kind = "conv"
  kernel = max(weight.shape[:-2]) if len(weight.shape) > 2 else 1  # of the pruned weight
  strides = getattr(layer, "strides", (1,))
  input_shape, output_shape = calls[0]
  return dict(name=layer.name, kind=kind, kernel=int(kernel), stride=int(max(strides)),
              in_channels=int(input_shape[-1]), out_channels=int(output_shape[-1]),
              params=params, flops=params * positions)


def describe(model: keras.Model) -> List[LayerInfo]:
  """LayerInfo of each prunable layer of a wrapped model, in network order."""
  rows = [_describe_one(wrapper) for wrapper in prunable_layers(model)]
  total_params = sum(row["params"] for row in rows)
  total_flops = sum(row["flops"] for row in rows) or 1
  return [LayerInfo(param_share=row["params"] / total_params,
                    flop_share=row["flops"] / total_flops, **row) for row in rows]


def parameter_count(model: keras.Model) -> int:
  """Weights of the model as it would be stripped: masks and pruning counters excluded."""
  return int(sum((layer.layer if isinstance(layer, PruneLowMagnitude) else layer).count_params()
                 for layer in leaf_layers(model)))


def costs(infos: Sequence[LayerInfo], sparsities: Sequence[float], total_params: int) -> dict:
  """Parameters and FLOPs left when layer i keeps a (1 - sparsities[i]) share of its weights.

  Returns a dict: global_sparsity (over prunable weights), params_total, params_remaining
  (whole model), prunable_params, flops_total, flops_remaining (prunable layers).
  """
  sizes = np.array([info.params for info in infos], np.float64)
  flops = np.array([info.flops for info in infos], np.float64)
  keep = 1.0 - np.asarray(sparsities, np.float64)
  pruned = float(np.sum(sizes * (1.0 - keep)))
  return {
      "global_sparsity": pruned / float(np.sum(sizes)),
      "params_total": int(total_params),
      "params_remaining": int(round(total_params - pruned)),
      "prunable_params": int(np.sum(sizes)),
      "flops_total": int(np.sum(flops)),
      "flops_remaining": int(round(float(np.sum(flops * keep)))),
  }
