"""Pruning on tfmot: wrapping, per-layer mask control, accounting, allocations, strip/save."""
from purl_tf.pruning.accounting import LayerInfo, costs, describe
from purl_tf.pruning.allocations import explicit, global_magnitude, uniform
from purl_tf.pruning.controller import MODES, SPARSITY, THRESHOLD, PruningController
from purl_tf.pruning.strip import save, strip
from purl_tf.pruning.wrap import (FixedMasks, apply_masks, copy_weights, leaf_layers,
                                  prunable_layers, wrap)

__all__ = [
    "LayerInfo", "costs", "describe", "explicit", "global_magnitude", "uniform", "MODES",
    "SPARSITY", "THRESHOLD", "PruningController", "save", "strip", "FixedMasks", "apply_masks",
    "copy_weights", "leaf_layers", "prunable_layers", "wrap",
]
