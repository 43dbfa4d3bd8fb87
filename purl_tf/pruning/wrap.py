"""Wrapping a model's prunable layers in tfmot pruning wrappers whose masks purl_tf writes.

The wrapper is tfmot's PruneLowMagnitude (its mask, threshold and weight variables, its
strip_pruning) with a schedule that never fires (`FixedMasks`), so a mask changes only
when the controller writes it. tfmot's own call writes weight * mask back into the weight
on every call (under tf.distribute also a merge_call and an all-reduce per pruned kernel,
in evaluation too); `MaskedPruning` calls the layer as it is instead. The weights stay
exactly sparse because whoever changes them re-applies the masks: the controller when it
writes one, the trainer after every optimizer step (`apply_masks`).

What is pruned: the kernel of Conv2D (grouped or not) and Dense, the depthwise kernel of
DepthwiseConv2D and the 1x1 pointwise kernel of SeparableConv2D (its depthwise kernel,
k*k / c_out the size of the pointwise one, stays dense). Functional and Sequential models
are copied layer by layer, nested models included; a nested model called on inputs of a
known size is copied at that size, so that every layer's FLOPs can be counted.
"""
import inspect
import re
from typing import List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.tfmot_loader import pruning_wrapper, tfmot

PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude
SUPPORTED_LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
DEFAULT_LAYER_TYPES = SUPPORTED_LAYER_TYPES


class FixedMasks(tfmot.sparsity.keras.PruningSchedule):
  """A pruning schedule that never recomputes masks."""

  def __call__(self, step):
    del step
    return tf.constant(False), tf.constant(0.0)

  def get_config(self):
    return {"class_name": type(self).__name__, "config": {}}


class MaskedPruning(PruneLowMagnitude):
  """tfmot's pruning wrapper without its per-call writes: weight * mask is not assigned
  on every call (the weights are kept masked by `apply_masks`), and no step counter is
  incremented."""

  def call(self, inputs, training=None, **kwargs):
    if "training" in inspect.getfullargspec(self.layer.call).args:
      kwargs["training"] = training
    return self.layer.call(inputs, **kwargs)


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


def _unwrapped(layer: keras.layers.Layer) -> keras.layers.Layer:
  return layer.layer if isinstance(layer, PruneLowMagnitude) else layer


def _check_copyable(model: keras.Model):
  """Raises PurlError unless `model` and its nested models are functional or Sequential."""
  if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
    raise PurlError(f"model {model.name} is a subclassed keras.Model, which cannot be copied "
                    "layer by layer: build it with the functional API "
                    "(keras.Model(inputs, outputs)) or keras.Sequential.")
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      _check_copyable(layer)


def _check_selection(model: keras.Model, chosen: Sequence[keras.layers.Layer]):
  """Raises PurlError for a selected layer purl_tf cannot prune or cannot name uniquely."""
  names = set()
  for layer in chosen:
    kind = type(layer).__name__
    if kind not in SUPPORTED_LAYER_TYPES:
      raise PurlError(f"layer {layer.name} is a {kind}, which purl_tf does not prune: keep "
                      f"wrap.layer_types within {list(SUPPORTED_LAYER_TYPES)}.")
    if layer.name in names:
      raise PurlError(f"model {model.name} has two prunable layers named {layer.name} (in "
                      "different nested models): rename one, or leave it out with wrap.exclude.")
    names.add(layer.name)


def _static_input(nested: keras.Model):
  """A keras.Input of the one fully known shape (B, H, W, C) `nested` is called on, when its
  own input shape is less known (a keras.applications base built with input_shape=None);
  else None (clone_model then keeps the nested model's own input).
  """
  if len(nested.inputs) != 1:
    return None
  own = tuple(nested.inputs[0].shape)
  calls = {tuple(nested.get_input_shape_at(i)) for i in range(len(nested.inbound_nodes))}
  if len(calls) != 1:
    return None
  shape = calls.pop()
  if shape == own or None in shape[1:]:
    return None
  return keras.Input(batch_shape=shape, dtype=nested.inputs[0].dtype,
                     name=nested.input_names[0])


def rebuilt(layer: keras.layers.Layer) -> keras.layers.Layer:
  """A new, unbuilt layer from `layer`'s config; a one-line PurlError if it can't be."""
  try:
    return layer.__class__.from_config(layer.get_config())
  except Exception as error:  # A custom layer's get_config/from_config can raise anything.
    raise PurlError(f"layer {layer.name} ({type(layer).__name__}) cannot be rebuilt from "
                    f"its get_config() ({type(error).__name__}): give the class a complete "
                    "get_config(), or use built-in Keras layers.") from error


def copy_weights(source: keras.Model, target: keras.Model):
  """Copies every weight of `source` into its copy `target` (layers possibly wrapped for
  pruning, by purl_tf or tfmot), matching layers by name, nested models included."""
  by_name = {_unwrapped(layer).name: layer for layer in target.layers}
  for layer in source.layers:
    if isinstance(layer, keras.Model):
      copy_weights(layer, by_name[layer.name])
    elif layer.weights:
      _unwrapped(by_name[layer.name]).set_weights(layer.get_weights())


@gin.configurable(denylist=["model"])
def wrap(model: keras.Model,
         layer_types: Sequence[str] = DEFAULT_LAYER_TYPES,
         include: Optional[str] = None,
         exclude: Optional[str] = None,
         check_only: bool = False):
  """Returns a copy of `model` whose selected layers are wrapped for pruning; masks all ones.

  Args:
    model: a built tf-keras functional or Sequential model; nested functional or Sequential
      models are followed, and a layer called several times (shared) is pruned once.
    layer_types: class names of the layers to prune, among SUPPORTED_LAYER_TYPES (exact:
      a subclass of Conv2D is not Conv2D).
    include: regular expression; only layers whose name matches it (re.search) are pruned.
    exclude: regular expression; layers whose name matches it are left dense.
    check_only: only select, and return the selected layers' names (a cheap early check).
  Raises:
    PurlError: when no layer is selected, or a selected layer cannot be pruned.
  """
  include_re = re.compile(include) if include else None
  exclude_re = re.compile(exclude) if exclude else None

  def selected(layer):
    return (type(layer).__name__ in layer_types
            and (include_re is None or include_re.search(layer.name))
            and not (exclude_re and exclude_re.search(layer.name)))

  chosen = [layer for layer in leaf_layers(model) if selected(layer)]
  if not chosen:
    raise PurlError(f"model {model.name} has no layer of types {list(layer_types)} "
                    f"(include={include!r}, exclude={exclude!r}): nothing to prune; bind "
                    "wrap.layer_types / wrap.include to select its layers.")
  _check_selection(model, chosen)
  _check_copyable(model)
  if check_only:
    return [layer.name for layer in chosen]

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, input_tensors=_static_input(layer),
                                      clone_function=clone)
    copy = rebuilt(layer)
    if not selected(layer):
      return copy
    return MaskedPruning(_make_prunable(copy), pruning_schedule=FixedMasks())

  wrapped = keras.models.clone_model(model, clone_function=clone)
  copy_weights(model, wrapped)
  return wrapped
