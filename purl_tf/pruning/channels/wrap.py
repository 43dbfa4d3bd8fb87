"""Wrapping a model for a channel search: tfmot wrappers whose masks cover whole channels.

Every layer a channel group touches is wrapped in pruning.wrap's MaskedPruning (tfmot's
PruneLowMagnitude, with its mask, threshold and strip machinery, and the FixedMasks schedule
that never recomputes a mask). Its prunable weights, named to tfmot through the layer's
`get_prunable_weights` (tfmot's PrunableLayer interface: tfmot accepts any layer that has
the method), are all of its weights with a channel axis, as channels.mask.mask_channels
zeroes them: a producer's kernel and bias, a batch norm's gamma and beta (its moving
statistics are never masked: with gamma = beta = 0 its output is 0 whatever they are), a
depthwise kernel and bias, and the consumers' input slices (kernels' IN axes).

The consumers' input slices would not need a mask when every removed channel reaches them
as exact zeros; but a channel can reach them non-zero (a sigmoid or softplus producer, an
Activation layer mapping 0 elsewhere), and a kernel that makes a group's channels carries
a full-size mask anyway, so masking its IN axis too costs nothing and makes the masked
model compute exactly what the shrunk one does, whatever the activations.

The method is set on each copied layer instance (not a subclass), as pruning.wrap does for
DepthwiseConv2D: channels' graph, counter and shrink read layers by their exact class name,
and a stripped model then holds plain Keras layers that load without custom objects.

Masks start at all ones; the weights stay masked because whoever changes them re-applies the
masks: the ChannelController when it writes them, MaskedTrainer after every optimizer step.
"""
from typing import Dict, Sequence, Tuple

import tf_keras as keras

from purl_tf.pruning.channels.layers import kind, weight_axes
from purl_tf.pruning.channels.mask import ZEROED
from purl_tf.pruning.wrap import FixedMasks, MaskedPruning, PruneLowMagnitude, rebuilt


def masked_weights(layer: keras.layers.Layer, roles) -> Tuple[str, ...]:
  """Attributes of `layer`'s weights that get a mask when its `roles` axes carry channels
  of a group: every weight with such an axis, batch norms' gamma and beta only."""
  zeroed = ZEROED.get(kind(layer))
  return tuple(weight for weight, axes in weight_axes(layer).items()
               if set(axes.values()) & set(roles) and (zeroed is None or weight in zeroed))


def _roles(groups: Sequence) -> Dict[str, set]:
  """layer name -> the roles through which the groups take part in it."""
  roles = {}
  for group in groups:
    for member in group.members:
      roles.setdefault(member.layer, set()).add(member.role)
  return roles


def channel_wrappers(model: keras.Model) -> Dict[str, PruneLowMagnitude]:
  """{wrapped layer's own name: its wrapper} of a model from `wrap_channels`."""
  return {layer.layer.name: layer for layer in model.layers
          if isinstance(layer, PruneLowMagnitude)}


def wrap_channels(model: keras.Model, groups: Sequence) -> Tuple[keras.Model,
                                                                  Dict[str, Tuple[str, ...]]]:
  """A copy of `model`, weights copied, whose layers in `groups` are wrapped for masking.

  Args:
    model: a flat, built tf-keras functional or Sequential model (unchanged).
    groups: ChannelGroups.groups of `model`.
  Returns:
    (the wrapped copy, {layer name: names of its masked weights, in the order of its
    wrapper's pruning_vars}).
  """
  masked = {}
  for name, roles in _roles(groups).items():
    weights = masked_weights(model.get_layer(name), roles)
    if weights:
      masked[name] = weights

  def clone(layer):
    copy = rebuilt(layer)
    if layer.name not in masked:
      return copy
    names = masked[layer.name]
    copy.get_prunable_weights = lambda: [getattr(copy, weight) for weight in names]
    return MaskedPruning(copy, pruning_schedule=FixedMasks())

  wrapped = keras.models.clone_model(model, clone_function=clone)
  wrappers = channel_wrappers(wrapped)
  for layer in model.layers:
    if layer.weights:
      target = wrappers.get(layer.name) or wrapped.get_layer(layer.name)
      (target.layer if isinstance(target, PruneLowMagnitude) else target).set_weights(
          layer.get_weights())
  return wrapped, masked
