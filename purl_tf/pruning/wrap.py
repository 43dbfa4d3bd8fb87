"""Wrapping a model's prunable layers in tfmot pruning wrappers whose masks purl_tf writes.

tfmot's wrapper multiplies a layer's weight by a mask variable on every call. Its
schedule decides when tfmot itself recomputes the mask; here the schedule never fires
(`FixedMasks`), so a mask changes only when the controller writes it and holds through
any amount of training, under any tf.distribute strategy.
"""
import re
from typing import List, Optional, Sequence

import gin
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
import tf_keras as keras

from purl_tf.errors import PurlError

PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude
DEFAULT_LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")


class FixedMasks(tfmot.sparsity.keras.PruningSchedule):
  """A pruning schedule that never recomputes masks."""

  def __call__(self, step):
    del step
    return tf.constant(False), tf.constant(0.0)

  def get_config(self):
    return {"class_name": type(self).__name__, "config": {}}


def _make_prunable(layer):
  """tfmot lists no prunable weight for DepthwiseConv2D: name its depthwise kernel.

  Done on the instance, as tfmot's registry does for the layers it knows, so a stripped
  model holds a plain DepthwiseConv2D and loads without custom objects.
  """
  if type(layer) is keras.layers.DepthwiseConv2D:  # pylint: disable=unidiomatic-typecheck
    layer.get_prunable_weights = lambda: [layer.depthwise_kernel]
  return layer


def leaf_layers(model: keras.Model) -> List[keras.layers.Layer]:
  """Layers in network order, descending into nested models."""
  out = []
  for layer in model.layers:
    out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
  return out


def prunable_layers(model: keras.Model) -> List[PruneLowMagnitude]:
  """The pruning wrappers of a wrapped model, in network order."""
  return [layer for layer in leaf_layers(model) if isinstance(layer, PruneLowMagnitude)]


def apply_masks(wrappers: Sequence[PruneLowMagnitude]):
  """weight <- weight * mask for every wrapper, in any context (eager or traced).

  tfmot's own weight_mask_op uses the replica context, which fails outside the strategy
  that built the variables; a plain assign works in both.
  """
  for wrapper in wrappers:
    for weight, mask, _ in wrapper.pruning_vars:
      weight.assign(weight * mask)


@gin.configurable(denylist=["model"])
def wrap(model: keras.Model,
         layer_types: Sequence[str] = DEFAULT_LAYER_TYPES,
         include: Optional[str] = None,
         exclude: Optional[str] = None,
         check_only: bool = False):
  """Returns a copy of `model` whose selected layers are wrapped for pruning; masks all ones.

  Args:
    model: a built tf-keras functional or sequential model (nested models are followed).
    layer_types: class names of the layers to prune (exact: Conv2DTranspose is not Conv2D).
    include: regular expression; only layers whose name matches it (re.search) are pruned.
    exclude: regular expression; layers whose name matches it are left dense.
    check_only: only select, and return the selected layers' names (a cheap early check).
  Raises:
    PurlError: when no layer is selected, or a selected type cannot be pruned.
  """
  include_re = re.compile(include) if include else None
  exclude_re = re.compile(exclude) if exclude else None

  def selected(layer):
    return (type(layer).__name__ in layer_types
            and (include_re is None or include_re.search(layer.name))
            and not (exclude_re and exclude_re.search(layer.name)))

  chosen = [layer.name for layer in leaf_layers(model) if selected(layer)]
  if not chosen:
    raise PurlError(f"model {model.name} has no layer of types {list(layer_types)} "
                    f"(include={include!r}, exclude={exclude!r}): nothing to prune; bind "
                    "wrap.layer_types / wrap.include to select its layers.")
  if check_only:
    return chosen

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    copy = layer.__class__.from_config(layer.get_config())
    if not selected(layer):
      return copy
    try:
      return tfmot.sparsity.keras.prune_low_magnitude(_make_prunable(copy),
                                                      pruning_schedule=FixedMasks())
    except ValueError as error:
      raise PurlError(f"layer {layer.name} ({type(layer).__name__}) cannot be pruned by "
                      "tfmot: remove its type from wrap.layer_types or exclude it.") from error

  wrapped = keras.models.clone_model(model, clone_function=clone)
  for source, target in zip(leaf_layers(model), leaf_layers(wrapped)):
    inner = target.layer if isinstance(target, PruneLowMagnitude) else target
    inner.set_weights(source.get_weights())
  for wrapper in prunable_layers(wrapped):
    # The wrapper asserts the step counter of tfmot's callback is positive in training.
    wrapper.pruning_step.assign(1)
  return wrapped
