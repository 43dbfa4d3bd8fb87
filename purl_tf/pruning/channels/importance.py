"""How much each channel of a group matters: larger is more important.

'l1' (default): the L1 norm of the channel's filters, summed over the group's producers
  (every Conv2D / Dense kernel, or SeparableConv2D pointwise kernel, that outputs it).
'bn_gamma': the batch-norm scale |gamma| of the channel, summed over the group's batch norms
  (network slimming); a group without a scaled batch norm is refused.
"""
import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.layers import CHANNEL, KERNELS, OUT, kind, weight_axes

CRITERIA = ("l1", "bn_gamma")


def _per_position(layer, role: str, weight: str) -> np.ndarray:
  """|weight| summed over every axis but the one holding `role`: shape (positions,)."""
  value = np.abs(getattr(layer, weight).numpy().astype(np.float64))
  axis = next(a for a, r in weight_axes(layer)[weight].items() if r == role)
  return value.sum(axis=tuple(a for a in range(value.ndim) if a != axis))


def channel_importance(model: keras.Model, group, criterion: str = "l1") -> np.ndarray:
  """(group.channels,) float64 importance of `group`'s channels under `criterion`."""
  if criterion not in CRITERIA:
    raise PurlError(f"channel importance {criterion!r} is unknown: use one of {CRITERIA}.")
  importance = np.zeros(group.channels, np.float64)
  used = 0
  for member in group.members:
    layer = model.get_layer(member.layer)
    if criterion == "l1" and member.role == OUT:
      weights = [w for w, roles in weight_axes(layer).items() if w in KERNELS and OUT in
                 roles.values()]
    elif (criterion == "bn_gamma" and member.role == CHANNEL
          and kind(layer) == "BatchNormalization" and layer.gamma is not None):
      weights = ["gamma"]
    else:
      continue
    for weight in weights:
      np.add.at(importance, member.channels,
                _per_position(layer, member.role, weight)[member.positions])
      used += 1
  if not used and criterion == "bn_gamma":
    raise PurlError(f"channel group {group.name} has no batch norm with a scale (gamma) to "
                    "rank its channels by: use importance 'l1'.")
  if not used:
    raise PurlError(f"channel group {group.name} has no conv or dense kernel making its "
                    "channels: its producers' layers are not supported for channel pruning.")
  return importance
