"""Whole-network allocations of sparsity, applied through a PruningController.

These are the baselines PuRL is measured against; each returns the per-layer sparsities
reached, float64 (num_layers,).
"""
from typing import Dict, Mapping

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


def _apply_kept(controller: PruningController, keep: np.ndarray) -> np.ndarray:
  """Every layer keeping `keep[i]` of its largest-magnitude weights (at least one)."""
  keep = np.clip(np.asarray(keep, np.int64), 1, controller.sizes)
  return controller.apply((1.0 - keep / controller.sizes).tolist())


def _check_fraction(sparsity: float):
  if not 0.0 <= sparsity < 1.0:
    raise PurlError(f"global sparsity {sparsity} is outside [0, 1).")


def lamp(controller: PruningController, sparsity: float) -> np.ndarray:
  """LAMP (Lee et al., ICLR 2021): one threshold over layer-adaptive magnitude scores.

  A weight's score is w^2 over the sum of the squares of the weights of its layer at least
  as large as it; the lowest scores of the whole network go, so that `sparsity` of the
  prunable weights is pruned. Within a layer the score orders weights as |w| does, so each
  layer keeps its largest magnitudes.
  """
  _check_fraction(sparsity)
  scores = []
  for i in range(controller.num_layers):
    squares = np.sort(np.square(controller.weight(i).numpy().astype(np.float64).ravel()))
    tail = np.cumsum(squares[::-1])[::-1]  # sum of the squares at least as large
    scores.append(squares / np.maximum(tail, np.finfo(np.float64).tiny))
  flat = np.concatenate(scores)
  prune = int(round(sparsity * flat.size))
  if prune == 0:
    return _apply_kept(controller, controller.sizes)
  threshold = np.partition(flat, prune - 1)[prune - 1]
  return _apply_kept(controller, [np.count_nonzero(s > threshold) for s in scores])


def _scaled_densities(raw: np.ndarray, sizes: np.ndarray, sparsity: float) -> np.ndarray:
  """Layer densities proportional to `raw` (float64, one per layer), scaled to keep
  1 - `sparsity` of the `sizes` weights; a layer whose density would pass 1 stays dense
  and the scale is recomputed for the others."""
  sizes = sizes.astype(np.float64)
  budget = (1.0 - sparsity) * sizes.sum()
  dense = np.zeros(len(raw), bool)
  while True:
    scale = (budget - sizes[dense].sum()) / np.sum(raw[~dense] * sizes[~dense])
    density = np.where(dense, 1.0, scale * raw)
    if not np.any(density > 1.0):
      return density
    dense |= density > 1.0


def erk(controller: PruningController, sparsity: float) -> np.ndarray:
  """Erdős–Rényi-Kernel (Evci et al., RigL, ICML 2020): layer densities proportional to
  the sum of the kernel's dimensions over their product, scaled to keep 1 - `sparsity` of
  the prunable weights (a layer that would pass density 1 stays dense).
  """
  _check_fraction(sparsity)
  shapes = [tuple(controller.weight(i).shape) for i in range(controller.num_layers)]
  raw = np.array([sum(shape) / np.prod(shape, dtype=np.float64) for shape in shapes])
  density = _scaled_densities(raw, controller.sizes, sparsity)
  return _apply_kept(controller, np.round(density * controller.sizes))


def fit(controller: PruningController, levels: Mapping[str, float],
        sparsity: float) -> np.ndarray:
  """`levels` ({layer: sparsity fraction}, every prunable layer) moved to exactly
  `sparsity` globally: every layer's density is scaled by one factor (a layer that would
  pass density 1 stays dense; a layer set to prune everything counts as keeping one weight),
  so the layers keep their ratios. A search that overshoots
  its target on a coarse action grid hands over the allocation it chose at the target."""
  _check_fraction(sparsity)
  missing = sorted(set(controller.names) - set(levels))
  if missing:
    raise PurlError(f"the allocation names no level for the prunable layers {missing}.")
  kept = np.array([1.0 - levels[name] for name in controller.names], np.float64)
  density = _scaled_densities(np.maximum(kept, 1.0 / controller.sizes), controller.sizes,
                              sparsity)
  return _apply_kept(controller, np.round(density * controller.sizes))


def uniform_keep_ends(controller: PruningController, sparsity: float) -> np.ndarray:
  """The first and the last prunable layer dense (standard practice: the first conv and
  the classifier), every other layer at the one sparsity that reaches `sparsity`."""
  _check_fraction(sparsity)
  sizes = controller.sizes
  middle = sizes[1:-1].sum()
  needed = sparsity * sizes.sum() / middle if middle else float("inf")
  if needed >= 1.0:
    raise PurlError(f"with the first and last layers dense the others would need sparsity "
                    f"{needed:.3f} to reach {sparsity}: lower the target or use 'uniform'.")
  return controller.apply([0.0] + [needed] * (controller.num_layers - 2) + [0.0])


# The one-shot allocations by the names runs pick them with (train_eval.method,
# gradual.allocation).
ALLOCATIONS = {"global_magnitude": global_magnitude, "lamp": lamp, "erk": erk,
               "uniform": uniform, "uniform_keep_ends": uniform_keep_ends}


def allocate(controller: PruningController, name: str, sparsity: float) -> Dict[str, float]:
  """{layer: sparsity} of the allocation ALLOCATIONS[name] at `sparsity`, applied to the
  dense weights; leaves the controller dense."""
  return _allocation_of(controller, ALLOCATIONS[name], sparsity)


def fitted(controller: PruningController, levels: Mapping[str, float],
           sparsity: float) -> Dict[str, float]:
  """{layer: sparsity} of fit(levels) at `sparsity`; leaves the controller dense."""
  return _allocation_of(controller, lambda c, s: fit(c, levels, s), sparsity)


def _allocation_of(controller: PruningController, allocator, sparsity: float) -> dict:
  """{layer: sparsity} that allocator(controller, sparsity) sets on the dense weights."""
  controller.reset()
  allocator(controller, sparsity)
  chosen = controller.allocation()
  controller.reset()
  return chosen
