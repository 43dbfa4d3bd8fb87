"""Channel dependency groups of a tf-keras functional or Sequential model.

Every channel of every tensor is an *element*. A Conv2D, Dense or SeparableConv2D makes fresh
elements for its outputs; batch norm, a depthwise conv and channel-wise layers (activations,
dropout, pooling, padding) pass their input's elements on; Add, Multiply (a squeeze-excite
gate too) and their kin make their inputs' elements the same channels; Concatenate lays its
inputs' elements side by side; Flatten repeats them over positions (flat index pos * C + c).
The elements one producer makes, and the elements tied to them, form a *group*: the unit of
one pruning decision. A group lists its members: each (layer, role, positions) where a
layer's weights hold its channels (see layers.py for the roles). A layer called more than
once (shared) holds one set of weights, so its calls' channels are tied.

What is left whole, with a warning (`ChannelGroups.warnings`, also logged), rather than
refused: channels feeding or made by a grouped Conv2D; depthwise and separable convs of depth
multiplier > 1; a producer whose activation is a softmax; channels broadcast by Add/Multiply;
and every layer without a rule here (Lambda, TFOpLambda, Reshape, Permute, LayerNormalization,
PReLU, custom layers, ...), whose inputs and outputs keep all their channels. The model's inputs
and outputs are never pruned (no warning). Refused with PurlError, as the model cannot be read
at all: subclassed and unbuilt models, nested models, channels_first layers, batch norm off
the last axis, shapes of unknown size where positions must be counted.
"""
import dataclasses
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.importance import channel_importance
from purl_tf.pruning.channels.layers import CHANNEL, IN, OUT, kind

_log = logging.getLogger(__name__)

_INPUT, _OUTPUT = "the model's input", "the model's output"


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
  """Where a group's channels sit in one layer: position positions[i] of the layer's `role`
  axis (layers.py) carries group channel channels[i]. Both int arrays of shape (m,); a
  channel after Flatten sits at H*W positions, so m may exceed the group's channel count."""
  layer: str
  role: str
  positions: np.ndarray
  channels: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
  """Channels removed together, numbered in network order (the first producer's output
  channels first, in its order).

  importance: (channels,) float64, larger = more important (importance.py).
  """
  name: str  # the first producer's name
  channels: int
  members: Tuple[Member, ...]
  importance: Optional[np.ndarray] = None

  @property
  def producers(self) -> List[str]:
    """Names of the layers whose output channels (filters, units) this group is."""
    return [member.layer for member in self.members if member.role == OUT]


@dataclasses.dataclass(frozen=True)
class ChannelGroups:
  """The prunable groups of a model, in network order, and why other channels stay whole."""
  groups: Tuple[Group, ...]
  warnings: Tuple[str, ...]


class _Trace:
  """Elements, their two equivalences (same channel; same group), and the layers' slots."""

  def __init__(self):
    self._same: List[int] = []  # union-find parents: the same channel
    self._group: List[int] = []  # union-find parents: the same decision
    self.fixed: Dict[int, Set[str]] = defaultdict(set)  # element -> why its group stays whole
    self.slots: Dict[Tuple[str, str], np.ndarray] = {}  # (layer, role) -> elements

  @staticmethod
  def _find(parents, element):
    root = element
    while parents[root] != root:
      root = parents[root]
    while parents[element] != root:
      parents[element], element = root, parents[element]
    return root

  def same(self, element: int) -> int:
    return self._find(self._same, element)

  def group(self, element: int) -> int:
    return self._find(self._group, element)

  def fresh(self, count: int, reason: Optional[str] = None) -> np.ndarray:
    """`count` new channels, one group; fixed for `reason` when given."""
    start = len(self._same)
    elements = np.arange(start, start + count)
    self._same.extend(elements.tolist())
    self._group.extend([start] * count)
    if reason:
      self.fix(elements, reason)
    return elements

  def tie(self, first: np.ndarray, second: np.ndarray):
    """first[i] and second[i] become the same channel, for every i."""
    assert len(first) == len(second), (len(first), len(second))
    for a, b in zip(first.tolist(), second.tolist()):
      self._same[self.same(a)] = self.same(b)
      self._group[self.group(a)] = self.group(b)

  def fix(self, elements: np.ndarray, reason: str):
    for element in elements.tolist():
      self.fixed[element].add(reason)

  def slot(self, layer, role: str, elements: np.ndarray) -> np.ndarray:
    """Records that `layer`'s `role` axis holds `elements`; a shared layer's calls are tied."""
    key = (layer.name, role)
    if key in self.slots:
      self.tie(self.slots[key], elements)
      return self.slots[key]
    self.slots[key] = elements
    return elements


# Rules: (trace, layer, input elements, input shapes, output shapes) -> output elements.

def _channels(layer, shape) -> int:
  if not shape or shape[-1] is None:
    raise PurlError(f"layer {layer.name} has outputs {shape} with an unknown channel count: "
                    "give the model a fixed input size, e.g. keras.Input((32, 32, 3)).")
  return int(shape[-1])


def _mixes_channels(activation) -> bool:
  """Whether an activation couples the channels (softmax), so none can be removed alone."""
  return getattr(activation, "__name__", "") in ("softmax", "log_softmax")


def _barrier(trace, layer, inputs, in_shapes, out_shapes, why="has no channel rule"):
  """Inputs and outputs kept whole: the layer is opaque to channel pruning."""
  del in_shapes
  reason = f"layer {layer.name} ({kind(layer)}) {why}"
  for elements in inputs:
    trace.fix(elements, reason)
  return [trace.fresh(_channels(layer, shape), reason) for shape in out_shapes]


def _input(trace, layer, inputs, in_shapes, out_shapes):
  del inputs, in_shapes
  return [trace.fresh(_channels(layer, out_shapes[0]), _INPUT)]


def _producer(trace, layer, inputs, in_shapes, out_shapes):
  """Conv2D, Dense, SeparableConv2D: inputs consumed, fresh output channels made."""
  del in_shapes
  trace.slot(layer, IN, inputs[0])
  made = trace.slot(layer, OUT, trace.fresh(_channels(layer, out_shapes[0])))
  if _mixes_channels(getattr(layer, "activation", None)):
    trace.fix(made, f"layer {layer.name} applies a softmax across its output channels")
  return [made]


def _conv(trace, layer, inputs, in_shapes, out_shapes):
  """A grouped conv's input and output channels are kept whole (listed as its outputs, so
  that the lost decision is reported); its kernel's axis 2 holds c_in / groups channels."""
  if layer.groups == 1:
    return _producer(trace, layer, inputs, in_shapes, out_shapes)
  reason = f"layer {layer.name} is a grouped conv (groups={layer.groups}), kept whole"
  trace.fix(inputs[0], reason)
  return [trace.slot(layer, OUT, trace.fresh(_channels(layer, out_shapes[0]), reason))]


def _channelwise(trace, layer, inputs, in_shapes, out_shapes):
  """Batch norm, depthwise conv: one weight slice per channel, output channel c = input c."""
  del in_shapes, out_shapes
  return [trace.slot(layer, CHANNEL, inputs[0])]


def _multiplier_one(rule):
  """`rule` for a depthwise or separable conv of depth multiplier 1; kept whole otherwise."""
  def checked(trace, layer, inputs, in_shapes, out_shapes):
    if layer.depth_multiplier != 1:
      return _barrier(trace, layer, inputs, in_shapes, out_shapes,
                      f"has depth_multiplier={layer.depth_multiplier} (only 1 is pruned)")
    return rule(trace, layer, inputs, in_shapes, out_shapes)
  return checked


def _batch_norm(trace, layer, inputs, in_shapes, out_shapes):
  rank = len(in_shapes[0])
  if [axis % rank for axis in layer.axis] != [rank - 1]:
    raise PurlError(f"layer {layer.name} normalizes axis {layer.axis}: channel pruning reads "
                    "channels on the last axis; build the model channels_last.")
  return _channelwise(trace, layer, inputs, in_shapes, out_shapes)


def _passthrough(trace, layer, inputs, in_shapes, out_shapes):
  """Element-wise or per-channel layers without weights: the channels pass unchanged."""
  if _mixes_channels(getattr(layer, "activation", None)):
    return _softmax(trace, layer, inputs, in_shapes, out_shapes)
  return [inputs[0]]


def _softmax(trace, layer, inputs, in_shapes, out_shapes):
  return _barrier(trace, layer, inputs, in_shapes, out_shapes,
                  "applies a softmax across the channels")


def _tie(trace, layer, inputs, in_shapes, out_shapes):
  """Add, Multiply, ...: channel c of every input is one channel; a 1-channel input that is
  broadcast over the others' channels is kept whole."""
  del in_shapes
  channels = _channels(layer, out_shapes[0])
  full = [elements for elements in inputs if len(elements) == channels]
  for elements in inputs:
    if len(elements) != channels:
      trace.fix(elements, f"layer {layer.name} broadcasts a {len(elements)}-channel input "
                          f"over {channels} channels")
  for elements in full[1:]:
    trace.tie(full[0], elements)
  return [full[0]]


def _concatenate(trace, layer, inputs, in_shapes, out_shapes):
  """On the channel axis, each input's channels take their range of the output; on another
  axis, the inputs' channels are the same ones (as for Add)."""
  rank = len(out_shapes[0])
  if layer.axis % rank != rank - 1:
    return _tie(trace, layer, inputs, in_shapes, out_shapes)
  return [np.concatenate(inputs)]


def _flatten(trace, layer, inputs, in_shapes, out_shapes):
  """(B, H, W, C) -> (B, H*W*C): channel c sits at flat positions pos * C + c."""
  del trace, out_shapes
  inner = in_shapes[0][1:-1]
  if any(size is None for size in inner):
    raise PurlError(f"layer {layer.name} flattens inputs {in_shapes[0]} of unknown size: "
                    "give the model a fixed input size, e.g. keras.Input((32, 32, 3)).")
  return [np.tile(inputs[0], int(np.prod(inner, dtype=np.int64)))]


_PASSTHROUGH = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Identity",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D")

# Layer class name (exact) -> rule; a class not listed gets _barrier. Tests replace entries to
# show that each rule is needed.
RULES = {
    "InputLayer": _input, "Conv2D": _conv, "Dense": _producer,
    "SeparableConv2D": _multiplier_one(_producer),
    "DepthwiseConv2D": _multiplier_one(_channelwise), "BatchNormalization": _batch_norm,
    "Flatten": _flatten, "Concatenate": _concatenate, "Softmax": _softmax,
    **{name: _passthrough for name in _PASSTHROUGH},
    **{name: _tie for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
}


def _check_readable(model: keras.Model, layer: keras.layers.Layer):
  if isinstance(layer, keras.Model):
    raise PurlError(f"layer {layer.name} of model {model.name} is a nested model: channel "
                    "groups are found in flat models; call its layers on the outer model's "
                    "tensors instead (keras.Model(base.input, head(base.output))).")
  if getattr(layer, "data_format", "channels_last") == "channels_first":
    raise PurlError(f"layer {layer.name} is channels_first: channel pruning reads channels on "
                    "the last axis; build the model channels_last.")


def _trace(model: keras.Model) -> _Trace:
  """Walks the model's calls from inputs to outputs, applying each layer's rule."""
  if not getattr(model, "_is_graph_network", False):
    raise PurlError(f"model {model.name} is not a built functional or Sequential model: give "
                    "its input shape (keras.Input), or rebuild a subclassed model functionally.")
  trace, tensors = _Trace(), {}
  for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
      layer = node.layer
      _check_readable(model, layer)
      inputs = [tensors[id(tensor)] for tensor in node.keras_inputs]
      in_shapes = [tuple(tensor.shape) for tensor in node.keras_inputs]
      outputs = tf.nest.flatten(node.outputs)
      out_shapes = [tuple(tensor.shape) for tensor in outputs]
      made = RULES.get(kind(layer), _barrier)(trace, layer, inputs, in_shapes, out_shapes)
      for tensor, elements in zip(outputs, made):
        assert len(elements) == _channels(layer, tuple(tensor.shape)), layer.name
        tensors[id(tensor)] = elements
  for tensor in model.outputs:
    trace.fix(tensors[id(tensor)], _OUTPUT)
  return trace


def _assemble(trace: _Trace):
  """Per group root: channel classes in first-seen order, members, reasons to keep whole."""
  found = {}
  for (layer, role), elements in trace.slots.items():
    roots = np.array([trace.group(e) for e in elements.tolist()], np.int64)
    classes = [trace.same(e) for e in elements.tolist()]
    for root in dict.fromkeys(roots.tolist()):
      entry = found.setdefault(root, {"classes": {}, "members": [], "reasons": set()})
      positions = np.flatnonzero(roots == root)
      channels = [entry["classes"].setdefault(classes[p], len(entry["classes"]))
                  for p in positions.tolist()]
      entry["members"].append(Member(layer, role, positions, np.array(channels, np.int64)))
  for element, reasons in trace.fixed.items():
    root = trace.group(element)
    if root in found:
      found[root]["reasons"] |= reasons
  return found.values()


def channel_groups(model: keras.Model, importance: str = "l1") -> ChannelGroups:
  """The channel groups of `model` (a flat, built tf-keras functional or Sequential model).

  Args:
    model: the model; its weights give the importance, nothing is changed.
    importance: 'l1' or 'bn_gamma' (importance.py), stored in each group.
  Returns:
    ChannelGroups: the groups one can prune, in network order, and one warning per group
    left whole that reaches neither the model's input nor its output (those are never pruned).
  Raises:
    PurlError: for a model it cannot read (see the module docstring).
  """
  groups, warnings = [], []
  for entry in _assemble(_trace(model)):
    producers = [m.layer for m in entry["members"] if m.role == OUT]
    if not producers:
      continue  # the model's input, or made by layers kept whole: no decision to lose
    notes = sorted(entry["reasons"])
    if notes and not {_INPUT, _OUTPUT} & entry["reasons"]:
      warnings.append(f"channels of {', '.join(producers)} left whole: {'; '.join(notes)}")
      _log.warning("%s", warnings[-1])
    if entry["reasons"]:
      continue
    group = Group(producers[0], len(entry["classes"]), tuple(entry["members"]))
    groups.append(dataclasses.replace(
        group, importance=channel_importance(model, group, importance)))
  return ChannelGroups(tuple(groups), tuple(warnings))

