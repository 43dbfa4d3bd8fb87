"""Matplotlib figures of a run, as PNG bytes (for TensorBoard images and report.md)."""
import io
from typing import Dict, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


def _png(figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  plt.close(figure)
  return buffer.getvalue()


def allocations(per_method: Dict[str, Dict[str, float]], title: str = "") -> bytes:
  """Grouped bars: per-layer sparsity (fraction) of each method, layers in network order."""
  methods = list(per_method)
  layers = list(next(iter(per_method.values())))
  width = 0.8 / len(methods)
  figure, axis = plt.subplots(figsize=(max(6.0, 0.28 * len(layers) * len(methods) + 2), 3.6))
  for i, method in enumerate(methods):
    axis.bar([x + i * width for x in range(len(layers))],
             [per_method[method][layer] for layer in layers], width, label=method)
  axis.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))])
  axis.set_xticklabels(layers, rotation=90, fontsize=7)
  axis.set_ylim(0, 1)
  axis.set_ylabel("sparsity")
  axis.set_title(title)
  if len(methods) > 1:
    axis.legend(fontsize=8)
  return _png(figure)


def episode_curves(series: Dict[str, Dict[str, Sequence[float]]], target: float) -> bytes:
  """Return, accuracy and sparsity per episode.

  series: {policy: {"x": episodes done, "return": .., "accuracy": .., "sparsity": ..}}.
  """
  figure, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for policy, values in series.items():
    style = "o-" if policy == "greedy" else "."
    for axis, key in zip(axes, ("return", "accuracy", "sparsity")):
      axis.plot(values["x"], values[key], style, label=policy, markersize=3)
  axes[2].axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
  for axis, key in zip(axes, ("episode return", "reward-split accuracy", "global sparsity")):
    axis.set_xlabel("collect episodes done")
    axis.set_title(key)
    axis.legend(fontsize=8)
  return _png(figure)


def lines(series: Dict[str, tuple], x_label: str, y_label: str, title: str = "") -> bytes:
  """One line per name: series {name: (x, y, y spread or None)}, the spread as error bars."""
  figure, axis = plt.subplots(figsize=(7.0, 4.2))
  for name, (x, y, spread) in series.items():
    if spread is None:
      axis.plot(x, y, "-", label=name)
    else:
      axis.errorbar(x, y, yerr=spread, marker="o", capsize=3, label=name)
  axis.set_xlabel(x_label)
  axis.set_ylabel(y_label)
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  return _png(figure)
