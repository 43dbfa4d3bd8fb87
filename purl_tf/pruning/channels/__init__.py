"""Channel pruning: dependency groups, importance, masks, the shrunk model and its cost, the
ChannelController of a channel search, and the one-shot allocations at a FLOPs budget."""
from purl_tf.pruning.channels.allocations import (CHANNEL_ALLOCATIONS, ChannelAllocation,
                                                  allocate, flops_removed, random_allocation)
from purl_tf.pruning.channels.controller import ChannelController
from purl_tf.pruning.channels.flops import Cost, cost, count
from purl_tf.pruning.channels.graph import ChannelGroups, Group, Member, channel_groups
from purl_tf.pruning.channels.importance import CRITERIA, channel_importance
from purl_tf.pruning.channels.keep import (check_keep, kept_positions,
                                           least_important_removed)
from purl_tf.pruning.channels.layers import CHANNEL, IN, OUT
from purl_tf.pruning.channels.mask import mask_channels
from purl_tf.pruning.channels.shrink import shrink
from purl_tf.pruning.channels.wrap import channel_wrappers, wrap_channels

__all__ = ["CHANNEL", "IN", "OUT", "ChannelController", "ChannelGroups", "Cost", "CRITERIA",
           "Group", "Member", "channel_groups", "channel_importance", "check_keep", "cost", "count",
           "kept_positions", "least_important_removed", "mask_channels", "shrink",
           "channel_wrappers", "wrap_channels", "CHANNEL_ALLOCATIONS", "ChannelAllocation",
           "allocate", "flops_removed", "random_allocation"]
