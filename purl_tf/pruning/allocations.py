"""Whole-network allocations of sparsity, applied through a PruningController.

These are the baselines PuRL is measured against; each returns the per-layer sparsities
reached, float64 (num_layers,).
"""
from typing import Mapping

import numpy as np

from purl_tf.errors import PurlError
from purl_tf.pruning.controller import PruningController


def uniform(controller: PruningController, sparsity: float) -> np.ndarray:
  """Every layer at the same sparsity fraction."""
  return controller.apply([sparsity] * controller.num_layers)


def explicit(controller: PruningController, levels: Mapping[str, float]) -> np.ndarray:
  """Named layers at the given sparsity fractions; layers not named stay as they are."""
  for name, fraction in levels.items():
    controller.set_sparsity(controller.index(name), fraction)
  return controller.sparsities()


def global_magnitude(controller: PruningController, sparsity: float) -> np.ndarray:
  """One magnitude threshold over all prunable weights, reaching `sparsity` globally.

  The smallest |w| of the whole network go, ties by layer order then position; every
  layer keeps at least one weight (so the global target is met to within num_layers).
  """
  if not 0.0 <= sparsity < 1.0:
    raise PurlError(f"global sparsity {sparsity} is outside [0, 1).")
  magnitudes = [np.abs(controller.weight(i).numpy()).ravel()
                for i in range(controller.num_layers)]
  flat = np.concatenate(magnitudes)
  prune = int(round(sparsity * flat.size))
  if prune == 0:
    return controller.apply([0.0] * controller.num_layers)
  threshold = np.partition(flat, prune - 1)[prune - 1]
  below = np.array([np.count_nonzero(m < threshold) for m in magnitudes])
  ties = np.array([np.count_nonzero(m == threshold) for m in magnitudes])
  tied_pruned = np.diff(np.minimum(np.cumsum(ties), prune - below.sum()), prepend=0)
  keep = np.maximum(controller.sizes - below - tied_pruned, 1)
  return controller.apply((1.0 - keep / controller.sizes).tolist())
