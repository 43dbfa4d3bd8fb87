"""Shrink: the physically thinner model, holding the kept channels' weights."""
from typing import Sequence

import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.keep import kept_positions
from purl_tf.pruning.channels.layers import OUT, weight_axes, width_key


def _sliced(layer, kept, weight: str) -> np.ndarray:
  """`layer`'s `weight` with only the kept positions of each of its channel axes."""
  value = getattr(layer, weight).numpy()
  for axis, role in weight_axes(layer)[weight].items():
    positions = kept.get((layer.name, role))
    if positions is not None:
      value = np.take(value, positions, axis=axis)
  return value


def _copy(layer, thin, kept):
  """Copies `layer`'s weights into its thin twin, slicing the channel axes."""
  axes = weight_axes(layer)
  if not axes:
    thin.set_weights(layer.get_weights())
    return
  covered = {id(getattr(layer, weight)) for weight in axes}
  if any(id(variable) not in covered for variable in layer.weights):
    raise PurlError(f"layer {layer.name} ({type(layer).__name__}) holds weights channel "
                    "pruning does not know: build it from the plain Keras layer.")
  for weight in axes:
    getattr(thin, weight).assign(_sliced(layer, kept, weight))


def shrink(model: keras.Model, groups: Sequence, keep: Sequence) -> keras.Model:
  """A copy of `model` whose groups hold only their kept channels, weights copied.

  Producers are rebuilt from their configs with fewer `filters` / `units`; batch norms,
  depthwise convs and consumers take their new widths from their inputs. Layer names and
  the model name are kept. Every output equals the masked model's (mask.py).

  Args:
    model: the model the groups were found in (unchanged).
    groups: ChannelGroups.groups.
    keep: one keep-set per group (keep.py).
  """
  kept = kept_positions(model, groups, keep)

  def clone(layer):
    config = layer.get_config()
    if (layer.name, OUT) in kept:
      config[width_key(layer)] = len(kept[(layer.name, OUT)])
    return layer.__class__.from_config(config)

  thin = keras.models.clone_model(model, clone_function=clone)
  for layer in model.layers:
    if layer.weights:
      _copy(layer, thin.get_layer(layer.name), kept)
  return thin
