"""Pruning on tfmot: wrapping, per-layer mask control, accounting, allocations, strip/save."""
from purl_tf.pruning.accounting import LayerInfo, costs, describe
from purl_tf.pruning.allocations import (ALLOCATIONS, allocate, erk, explicit, fit, fitted,
                                        global_magnitude, lamp, uniform, uniform_keep_ends)
from purl_tf.pruning.controller import MODES, SPARSITY, THRESHOLD, PruningController
from purl_tf.pruning.strip import save, strip
from purl_tf.pruning.wrap import (FixedMasks, apply_masks, copy_weights, leaf_layers,
                                  prunable_layers, wrap)

__all__ = [
    "ALLOCATIONS", "allocate", "LayerInfo", "costs", "describe", "erk", "explicit", "fit",
    "fitted", "global_magnitude", "lamp", "uniform", "uniform_keep_ends", "MODES",
    "SPARSITY", "THRESHOLD", "PruningController", "save", "strip", "FixedMasks", "apply_masks",
    "copy_weights", "leaf_layers", "prunable_layers", "wrap",
]
