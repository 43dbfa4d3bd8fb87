"""The verdicts of a channel-pruning suite (verdicts.CHANNEL): PuRL against the heuristics
and random search at one FLOPs budget, at the shared fine-tune and at the equal budget; the
goals; the latency and FLOPs of every method's network; the per-group allocation of PuRL
beside the best heuristic.

A cell is the dict a results file holds (methods.cell_record): test accuracies and FLOPs
removed are fractions; speedups are the dense network's LiteRT latency over the pruned one's
(batch 1, XNNPACK), measured in the cell's own process.
"""
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from purl_tf.run.speed import speedup_key

from . import verdicts
from .verdicts import CHANNEL, CHANNEL_MATCHED, CHANNEL_ONE_SHOT, percent

NAMES = CHANNEL.names
# PuRL's rivals at the shared fine-tune (a one-shot allocation gets only the fine-tune) and
# at the equal budget (the one-shot allocations trained as long as a search): random search
# spends the search's budget, so it is a rival at both.
SHARED_RIVALS = ("random", *CHANNEL_ONE_SHOT)
EQUAL_RIVALS = ("random", *CHANNEL_MATCHED)
MARGIN = 0.005  # PuRL's required lead on every seed at the equal budget, as a fraction
# A budget separates allocations when uniform width ends at least this far (a fraction)
# below the best other heuristic after the shared fine-tune (means over seeds, on the reward
# split); a budget where it does not leaves an allocation search nothing to find.
SEPARATION = 0.02
THREADS = (1, 2)  # the LiteRT thread counts of the speedups (results' speedup_<n>_thread(s))


def _at(cells: Sequence[dict], method: str, target: float) -> List[dict]:
  return sorted((c for c in cells if c["method"] == method and c["target"] == target),
                key=lambda c: c["seed"])


def _by_seed(cells, method, target, key="test_accuracy") -> Dict[int, float]:
  return {c["seed"]: c[key] for c in _at(cells, method, target)}


def _mean(values) -> float:
  return statistics.fmean(values)


def best_heuristic(cells: Sequence[dict], target: float,
                   among: Sequence[str] = CHANNEL_ONE_SHOT) -> Optional[str]:
  """The one-shot allocation (at the shared fine-tune) of the highest mean test accuracy
  over the seeds every one of `among` has finished; None when none has."""
  finished = {m: _by_seed(cells, m, target) for m in among}
  finished = {m: v for m, v in finished.items() if v}
  if not finished:
    return None
  common = set.intersection(*(set(v) for v in finished.values()))
  return max(finished, key=lambda m: _mean(finished[m][s] for s in (common or finished[m])))


def paired(cells: Sequence[dict], target: float, rivals: Sequence[str]
           ) -> Tuple[List[int], Dict[int, float], Dict[int, str]]:
  """Seeds PuRL and every finished rival share; per seed, PuRL's test accuracy minus the
  best rival's of that seed, and that rival's method."""
  purl = _by_seed(cells, "purl", target)
  found = {m: _by_seed(cells, m, target) for m in rivals}
  found = {m: v for m, v in found.items() if v}
  if not purl or not found:
    return [], {}, {}
  seeds = sorted(set(purl).intersection(*found.values()))
  leads, best = {}, {}
  for seed in seeds:
    best[seed] = max(found, key=lambda m: found[m][seed])
    leads[seed] = purl[seed] - found[best[seed]][seed]
  return seeds, leads, best


def _pairs(seeds, leads, best) -> str:
  return ", ".join(f"seed {s}: {100 * leads[s]:+.2f} ({NAMES[best[s]]})" for s in seeds)


def _partial(cells, target, seeds, methods) -> str:
  finished = set().union(*(_by_seed(cells, m, target) for m in methods))
  if set(seeds) == finished:
    return ""
  return (f"; over seeds {', '.join(str(s) for s in seeds)} only, the ones every compared "
          "method has finished")


def comparisons(cells: Sequence[dict], target: float) -> List[str]:
  """PuRL minus the best of the heuristics and random search per seed, at the shared
  fine-tune and at the equal budget."""
  lines = []
  for label, rivals in (("at the shared fine-tune (a one-shot allocation gets only the "
                         "fine-tune)", SHARED_RIVALS),
                        ("at the equal budget (the one-shot allocations fine-tuned as long "
                         "as a search trains)", EQUAL_RIVALS)):
    seeds, leads, best = paired(cells, target, rivals)
    if not seeds:
      lines.append(f"- PuRL minus the best of the heuristics and random search {label}: "
                   "not evaluated yet (PuRL or every rival missing).")
      continue
    lines.append(f"- PuRL minus the best of the heuristics and random search {label}, per "
                 f"seed: {_pairs(seeds, leads, best)} pt"
                 f"{_partial(cells, target, seeds, ('purl', *rivals))}.")
  return lines


def separation(cells: Sequence[dict], target: float) -> List[str]:
  """Whether the budget tells allocations apart: uniform width against the best other
  heuristic after the shared fine-tune, judged on the reward split (validation digits, so
  that a budget is never chosen on the test split), means over the seeds both have; the
  test split's gap beside it."""
  others = [m for m in CHANNEL_ONE_SHOT if m != "uniform"]
  uniform = _by_seed(cells, "uniform", target, "reward_accuracy")
  found = {m: _by_seed(cells, m, target, "reward_accuracy") for m in others}
  found = {m: v for m, v in found.items() if v}
  seeds = sorted(set(uniform).intersection(*found.values())) if found else []
  if not seeds:
    return ["- Separation: not evaluated yet (no seed has uniform width and every other "
            "heuristic)."]
  other = max(found, key=lambda m: _mean(found[m][s] for s in seeds))
  gap = _mean(found[other][s] for s in seeds) - _mean(uniform[s] for s in seeds)
  test_gap = (_mean(_by_seed(cells, other, target)[s] for s in seeds)
              - _mean(_by_seed(cells, "uniform", target)[s] for s in seeds))
  verdict = "yes" if gap >= SEPARATION else "no"
  return [f"- The budget separates allocations (uniform width at least "
          f"{100 * SEPARATION:.0f} pt below the best other heuristic after the shared "
          f"fine-tune, on the reward split: validation digits, never the test split): "
          f"{verdict} ({NAMES[other]} {percent(_mean(found[other][s] for s in seeds))} vs "
          f"uniform width {percent(_mean(uniform[s] for s in seeds))} %, {100 * gap:+.2f} pt; "
          f"on test {100 * test_gap:+.2f} pt)."]


def goals(cells: Sequence[dict], target: float) -> List[str]:
  """The goals at one budget, each MET / NOT MET: PuRL at least MARGIN ahead of the best of
  EQUAL_RIVALS on every seed; the dense reward within 0.5 pt of its final best in at most
  half the episodes of the episodic reward (means over seeds). Then the cells below the
  budget, named."""
  seeds, leads, best = paired(cells, target, EQUAL_RIVALS)
  if not seeds:
    out = ["- Goals: not evaluated (PuRL or its rivals at the equal budget missing at this "
           "budget)."]
  else:
    verdict = "MET" if all(leads[s] >= MARGIN for s in seeds) else "NOT MET"
    out = [f"- PuRL at least {100 * MARGIN:.1f} pt ahead of the best of the heuristics and "
           f"random search on every seed at the equal budget: {verdict} (per seed: "
           f"{_pairs(seeds, leads, best)} pt"
           f"{_partial(cells, target, seeds, ('purl', *EQUAL_RIVALS))})."]
    out += verdicts._speed_goal(cells, target)  # pylint: disable=protected-access
  missed = [f"{NAMES[c['method']]} seed {c['seed']} ("
            + ("?" if c["flops_removed"] is None else f"{c['flops_removed']:.3f}") + ")"
            for c in cells if c["target"] == target and not c["reached_target"]]
  if missed:
    out.append(f"- Below the FLOPs budget: {', '.join(missed)}.")
  return out


def _spread(values: Sequence[Optional[float]], digits: int = 2) -> str:
  """Mean (min–max) of the values given; — when none was measured."""
  values = [v for v in values if v is not None]
  if not values:
    return "—"
  mean = f"{_mean(values):.{digits}f}"
  if len(values) == 1:
    return mean
  return f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _millions(value: float) -> str:
  return f"{value / 1e6:.2f} M"


def speed_table(cells: Sequence[dict], target: float) -> str:
  """Every method's network: FLOPs and parameters (share of the dense network's), LiteRT
  latency at 1 thread and the speedups at 1 and 2 threads and of Keras' batch throughput
  (means over seeds, min–max beside them), the dense network first."""
  lines = ["| network | FLOPs (of dense) | parameters (of dense) | LiteRT ms, 1 thread | "
           "speedup, 1 thread | speedup, 2 threads | Keras throughput speedup |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  chosen = [c for c in cells if c["target"] == target]
  dense = [c for c in chosen if c.get("dense_flops")]
  if dense:
    lines.append(f"| dense | {_millions(_mean(c['dense_flops'] for c in dense))} (100 %) | "
                 f"{_mean(c['dense_params'] for c in dense):,.0f} (100 %) | "
                 f"{_spread([_latency(c, 'dense', 1) for c in dense], 3)} | 1 | 1 | 1 |")
  for method in CHANNEL.methods:
    rows = _at(cells, method, target)
    if not rows:
      continue
    flops = [c for c in rows if c.get("pruned_flops") and c.get("dense_flops")]
    params = [c for c in rows if c.get("pruned_params") and c.get("dense_params")]
    flops_cell = (f"{_millions(_mean(c['pruned_flops'] for c in flops))} "
                  f"({100 * _mean(c['pruned_flops'] / c['dense_flops'] for c in flops):.1f} %)"
                  if flops else "—")
    params_cell = (f"{_mean(c['pruned_params'] for c in params):,.0f} "
                   f"({100 * _mean(c['pruned_params'] / c['dense_params'] for c in params):.1f}"
                   " %)" if params else "—")
    lines.append(
        f"| {NAMES[method]} | {flops_cell} | {params_cell} | "
        f"{_spread([_latency(c, 'pruned', 1) for c in rows], 3)} | "
        + " | ".join(_spread([c.get(speedup_key(n)) for c in rows]) for n in THREADS)
        + f" | {_spread([c.get('throughput_speedup') for c in rows])} |")
  return "\n".join(lines)


def _latency(cell: dict, network: str, threads: int) -> Optional[float]:
  return ((cell.get("latency_ms") or {}).get(network) or {}).get(str(threads))


def allocation_table(cells: Sequence[dict], target: float) -> str:
  """Per channel group, the fraction of its channels removed by PuRL and by the best
  heuristic at the shared fine-tune (best_heuristic): each seed's, then their mean."""
  purl = [c for c in _at(cells, "purl", target) if c.get("allocation")]
  other = best_heuristic(cells, target)
  theirs = [c for c in _at(cells, other, target) if c.get("allocation")] if other else []
  if not purl and not theirs:
    return "No allocation at this budget yet."
  columns = [(NAMES["purl"], purl)] + ([(NAMES[other], theirs)] if theirs else [])
  groups = []
  for _, rows in columns:
    for row in rows:
      groups += [g for g in row["allocation"] if g not in groups]
  seeds = "seeds " + ", ".join(str(c["seed"]) for c in (purl or theirs))
  heading = " | ".join(f"{name} ({seeds}{'; mean' if len(rows) > 1 else ''})"
                       for name, rows in columns)
  lines = [f"| group | {heading} |", "| --- |" + " --- |" * len(columns)]
  for group in groups:
    row = []
    for _, rows in columns:
      values = [c["allocation"].get(group) for c in rows]
      shown = ", ".join("—" if v is None else f"{v:.2f}" for v in values)
      measured = [v for v in values if v is not None]
      if len(values) > 1 and measured:
        shown += f"; {_mean(measured):.2f}"
      row.append(shown)
    lines.append(f"| {group} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def section(cells: Sequence[dict], target: float, mock: bool = False) -> List[str]:
  """The markdown of one budget after its table: comparisons, goals (not on mock data),
  separation, then the latency and allocation tables."""
  return [*comparisons(cells, target),
          *(["- Goals are not evaluated on mock data."] if mock else goals(cells, target)),
          *separation(cells, target), "",
          "Latency and FLOPs of every method's network (LiteRT, batch 1, XNNPACK; measured in "
          "each cell beside its dense network, in alternating rounds):", "",
          speed_table(cells, target), "",
          "Fraction of each channel group's channels removed:", "",
          allocation_table(cells, target)]
