"""Keep-sets: which channels of each group stay, and the positions they leave in each layer.

A keep-set is an int array of the group channels kept (indices into 0..channels-1); a model's
keep is one keep-set per group, in the order of `ChannelGroups.groups`.
"""
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels.layers import IN


def check_keep(groups: Sequence, keep: Sequence) -> List[np.ndarray]:
  """`keep` as sorted unique int arrays; PurlError unless one per group, each keeping >= 1."""
  if len(keep) != len(groups):
    raise PurlError(f"{len(keep)} keep-sets for {len(groups)} channel groups: give one per "
                    "group, in the order of channel_groups(model).groups.")
  out = []
  for group, kept in zip(groups, keep):
    kept = np.unique(np.asarray(kept, np.int64))
    if not kept.size or kept[0] < 0 or kept[-1] >= group.channels:
      raise PurlError(f"channel group {group.name} keeps channels {kept.tolist()[:8]}: keep "
                      f"between 1 and {group.channels} of the channels 0..{group.channels - 1}.")
    out.append(kept)
  return out


def least_important_removed(groups: Sequence, removed: Sequence[float]) -> List[np.ndarray]:
  """Keep-sets removing round(removed[i] * channels) of group i's least important channels
  (ties: the lower index goes first), always keeping at least one."""
  if len(removed) != len(groups):
    raise PurlError(f"{len(removed)} removed fractions for {len(groups)} channel groups: "
                    "give one per group.")
  keep = []
  for group, fraction in zip(groups, removed):
    if not 0.0 <= fraction <= 1.0:
      raise PurlError(f"channel group {group.name}: removed fraction {fraction} is not in "
                      "[0, 1].")
    count = min(int(round(fraction * group.channels)), group.channels - 1)
    order = np.argsort(group.importance, kind="stable")
    keep.append(np.sort(order[count:]))
  return keep


def removed_positions(groups: Sequence, keep: Sequence) -> Dict[Tuple[str, str], np.ndarray]:
  """(layer name, role) -> sorted positions of that layer axis whose channels are removed."""
  parts = defaultdict(list)
  for group, kept in zip(groups, check_keep(groups, keep)):
    gone = ~np.isin(np.arange(group.channels), kept)
    for member in group.members:
      parts[(member.layer, member.role)].append(member.positions[gone[member.channels]])
  return {key: np.unique(np.concatenate(values)) for key, values in parts.items()}


def axis_size(layer: keras.layers.Layer, role: str) -> int:
  """Length of the layer's `role` axis: its input channels for IN, else its output channels."""
  shape = layer.get_input_shape_at(0) if role == IN else layer.get_output_shape_at(0)
  return int(shape[-1])


def kept_positions(model: keras.Model, groups: Sequence,
                   keep: Sequence) -> Dict[Tuple[str, str], np.ndarray]:
  """(layer name, role) -> sorted positions kept on that axis, for every axis a group touches."""
  return {key: np.setdiff1d(np.arange(axis_size(model.get_layer(key[0]), key[1])), gone)
          for key, gone in removed_positions(groups, keep).items()}
