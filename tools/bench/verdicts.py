"""The benchmark's verdicts: its methods, what a cell's search measured, the table of a
target over seeds and the goals a table is judged by, each MET or NOT MET (the margins and
rivals below are the benchmark's, not the library's).

A cell is the dict a results file holds (benchmark.cell_record): accuracies and
sparsities are fractions, seeds ints; the tables print percentages. A suite prunes weights
or channels (its Granularity: WEIGHT or CHANNEL): that names its methods, the binding its
targets go to and what its tables call the target; the goals of channel suites are in
channels.py.
"""
import dataclasses
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from purl_tf.rl import search
from purl_tf.runtime.results import reached_target

# In the order a seed runs them: the first pre-trains the dense model the others share.
METHOD_ORDER = ("purl", "episodic", "random", "global_magnitude", "lamp", "erk", "uniform",
                "uniform_keep_ends", "gradual", "lamp_matched", "erk_matched")
METHOD_NAMES = {
    "purl": "PuRL (dense reward)",
    "episodic": "PuRL agent, episodic reward",
    "random": "random search",
    "global_magnitude": "global magnitude",
    "lamp": "LAMP",
    "erk": "ERK",
    "uniform": "uniform",
    "uniform_keep_ends": "uniform, first and last dense",
    "gradual": "gradual (tfmot PolynomialDecay to ERK)",
    "lamp_matched": "LAMP, fine-tuned as long as a search trains",
    "erk_matched": "ERK, fine-tuned as long as a search trains",
}
# Rows of a one-shot allocator whose fine-tune also gets the train steps of a search
# (train_eval.match_search_steps): the searches' and gradual's budget, one shot.
MATCHED = {"lamp_matched": "lamp", "erk_matched": "erk"}
SEARCHES = ("purl", "episodic", "random")  # methods that leave search/episodes.json
RIVALS = ("global_magnitude", "lamp", "erk", "random", *MATCHED)  # what PuRL must beat
WITHIN = 0.005  # "within 0.5 points": reward-split accuracy, as a fraction
MARGIN = 0.005  # PuRL's required lead at the highest target, as a fraction

# Channel pruning (train_eval.granularity = 'channel'): the one-shot allocations at a FLOPs
# budget, each also fine-tuned as long as a search trains (its _matched row).
CHANNEL_ONE_SHOT = ("uniform", "uniform_keep_ends", "global_filter", "bn_scale")
CHANNEL_MATCHED = {f"{method}_matched": method for method in CHANNEL_ONE_SHOT}
CHANNEL_METHOD_ORDER = (*SEARCHES, *CHANNEL_ONE_SHOT, *CHANNEL_MATCHED)
_CHANNEL_ONE_SHOT_NAMES = {
    "uniform": "uniform width",
    "uniform_keep_ends": "uniform width, first and last whole",
    "global_filter": "global filter ranking (L1 over the group mean)",
    "bn_scale": "batch-norm scale (network slimming's ranking)",
}
CHANNEL_METHOD_NAMES = {
    **{method: METHOD_NAMES[method] for method in SEARCHES}, **_CHANNEL_ONE_SHOT_NAMES,
    **{matched: f"{_CHANNEL_ONE_SHOT_NAMES[method]}, fine-tuned as long as a search trains"
       for matched, method in CHANNEL_MATCHED.items()},
}


@dataclasses.dataclass(frozen=True)
class Granularity:
  """What a suite prunes, and so its methods and how its tables name the target."""
  name: str  # train_eval.granularity
  methods: Tuple[str, ...]  # in the order a seed runs them (the first pre-trains)
  names: Dict[str, str]  # method -> its name in the tables
  matched: Dict[str, str]  # a row fine-tuned as long as a search trains -> its one-shot method
  target_binding: str  # the gin parameter a cell's target goes to
  target_title: str  # a target's subsection, formatted with target and kept (% of FLOPs)
  achieved: str  # the cell record's key of what the pruned network reached (a fraction)
  achieved_column: str  # the tables' heading of it
  layer_methods: Tuple[str, ...]  # the methods whose allocation the layers figure shows
  layer_label: str  # what an allocation's value is, per layer or group

  def heading(self, target: float) -> str:
    """The subsection heading of a target."""
    return self.target_title.format(target=target, kept=100 * (1 - target))


WEIGHT = Granularity(
    "weight", METHOD_ORDER, METHOD_NAMES, MATCHED, "train_eval.target_sparsity",
    "Target sparsity {target}", "sparsity", "global sparsity", ("purl", "lamp", "global_magnitude"),
    "per-layer sparsity")
CHANNEL = Granularity(
    "channel", CHANNEL_METHOD_ORDER, CHANNEL_METHOD_NAMES, CHANNEL_MATCHED,
    "train_eval.target_flops", "FLOPs budget {target} ({kept:.0f} % of the dense FLOPs kept)",
    "flops_removed", "FLOPs removed",
    ("purl", "global_filter", "bn_scale", "uniform"), "per-group fraction of channels removed")
GRANULARITIES = {kind.name: kind for kind in (WEIGHT, CHANNEL)}


def best_so_far(episodes: Sequence[dict], target: float) -> List[Optional[float]]:
  """Reward-split accuracy of the best episode so far (search.is_better's
  accuracy_at_target rule) after each evaluated episode; None until one reaches the
  target."""
  best, curve = None, []
  for record in episodes:
    episode = record if isinstance(record, search.Episode) else search.Episode(**record)
    if search.is_better(episode, best, target, "accuracy_at_target"):
      best = episode
    curve.append(best.accuracy if reached_target(best.sparsity, target) else None)
  return curve


def episodes_to_within(episodes: Sequence[dict], target: float,
                       margin: float = WITHIN) -> Optional[int]:
  """Evaluated episodes (collect and greedy, in the order run) until the best so far first
  reached the target and came within `margin` (a fraction: 0.005 is 0.5 points) of the
  search's final best reward-split accuracy. None when no episode reached the target."""
  curve = best_so_far(episodes, target)
  if not curve or curve[-1] is None:
    return None
  return next(count for count, value in enumerate(curve, 1)
              if value is not None and value >= curve[-1] - margin)


@dataclasses.dataclass(frozen=True)
class Stats:
  """Mean, sample standard deviation (0 for one value), minimum and maximum."""
  mean: float
  std: float
  low: float
  high: float
  count: int


def stats(values: Sequence[float]) -> Stats:
  values = [float(v) for v in values]
  if not values:
    raise ValueError("stats of no values")
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return Stats(statistics.fmean(values), std, min(values), max(values), len(values))


def percent(value: float) -> str:
  """A fraction as a percentage with two decimals: 0.98764 -> "98.76"."""
  return f"{100 * value:.2f}"


def summary(cells: Sequence[dict], kind: Granularity = WEIGHT) -> dict:
  """Aggregates one method's cells at one target over seeds ("sparsity": what the cells
  reached, kind.achieved: a global sparsity or the FLOPs removed)."""
  cells = sorted(cells, key=lambda c: c["seed"])
  to_within = [c["episodes_to_within"] for c in cells]
  return {
      "seeds": [c["seed"] for c in cells],
      "accuracy": stats([c["test_accuracy"] for c in cells]),
      "sparsity": stats([c[kind.achieved] for c in cells]),
      "seconds": stats([c["method_seconds"] for c in cells]),
      "steps": stats([c["train_steps"] for c in cells]),
      "episodes": [c["episodes"] for c in cells],
      "to_within": to_within if cells[0]["method"] in SEARCHES else None,
  }


def _to_within_cell(values: Optional[List[Optional[int]]], episodes: List[int]) -> str:
  if values is None:
    return "—"
  shown = ", ".join("not reached" if v is None else str(v) for v in values)
  reached = [v for v in values if v is not None]
  mean = f"{statistics.fmean(reached):.1f}" if reached else "n/a"
  return f"{mean} ({shown}) of {max(episodes)}"


def table(cells: Sequence[dict], target: float, kind: Granularity = WEIGHT) -> str:
  """The markdown table of every method at one target (mean and spread over seeds)."""
  lines = [f"| method | {kind.achieved_column} | test accuracy % (mean ± sd, min–max) | wall "
           "time | train steps | episodes to within 0.5 pt of final best (mean (per seed) of "
           "evaluated) |", "| --- | --- | --- | --- | --- | --- |"]
  for method in kind.methods:
    chosen = [c for c in cells if c["method"] == method and c["target"] == target]
    if not chosen:
      continue
    s = summary(chosen, kind)
    acc = s["accuracy"]
    lines.append(
        f"| {kind.names[method]} | {s['sparsity'].mean:.4f} | {percent(acc.mean)} ± "
        f"{percent(acc.std)} ({percent(acc.low)}–{percent(acc.high)}) | "
        f"{s['seconds'].mean:,.0f} s | {s['steps'].mean:,.0f} | "
        f"{_to_within_cell(s['to_within'], s['episodes'])} |")
  return "\n".join(lines)


def _by_seed(cells, method, target, key="test_accuracy") -> Dict[int, float]:
  return {c["seed"]: c[key] for c in cells
          if c["method"] == method and c["target"] == target}


def goals(cells: Sequence[dict], target: float, highest: bool) -> List[str]:
  """The benchmark's goals at one target, each MET / NOT MET with its numbers.

  Highest target: PuRL's mean test accuracy at least MARGIN above the best of RIVALS, and
  above every rival on every seed; the dense reward within 0.5 pt of its final best in
  at most half the episodes of the episodic reward (means over seeds). Other targets:
  PuRL's mean not below the best rival's mean by more than that rival's std.
  """
  purl = _by_seed(cells, "purl", target)
  rivals = {m: _by_seed(cells, m, target) for m in RIVALS}
  rivals = {m: v for m, v in rivals.items() if v}
  seeds = sorted(set(purl).intersection(*rivals.values())) if rivals else []
  if not seeds:
    return ["- Goals: not evaluated (PuRL or its rivals missing at this target)."]
  best = max(rivals, key=lambda m: statistics.fmean(rivals[m][s] for s in seeds))
  ours = statistics.fmean(purl[s] for s in seeds)
  theirs = statistics.fmean(rivals[best][s] for s in seeds)
  paired = [purl[s] - max(v[s] for v in rivals.values()) for s in seeds]
  pairs = ", ".join(f"seed {s}: {100 * d:+.2f}" for s, d in zip(seeds, paired))
  partial = _partial(seeds, [purl, *rivals.values()])
  out = []
  if highest:
    lead = ours - theirs
    verdict = "MET" if lead >= MARGIN and all(d > 0 for d in paired) else "NOT MET"
    out.append(f"- PuRL at least {100 * MARGIN:.1f} pt above the best rival "
               f"({METHOD_NAMES[best]}) and ahead of every rival on every seed: {verdict} "
               f"({percent(ours)} vs {percent(theirs)} %, lead {100 * lead:+.2f} pt; PuRL minus "
               f"the best rival of each seed: {pairs} pt{partial}).")
    out += _speed_goal(cells, target)
    out += _headroom(cells, target, rivals, seeds)
  else:
    spread = stats([rivals[best][s] for s in seeds]).std
    verdict = "MET" if ours >= theirs - spread else "NOT MET"
    out.append(f"- PuRL not below the best rival ({METHOD_NAMES[best]}) by more than its "
               f"std: {verdict} ({percent(ours)} vs {percent(theirs)} ± {percent(spread)} %; PuRL "
               f"minus the best rival of each seed: {pairs} pt{partial}).")
  missed = [f"{METHOD_NAMES[c['method']]} seed {c['seed']} ({c['sparsity']:.3f})"
            for c in cells if c["target"] == target and not c["reached_target"]]
  if missed:
    out.append(f"- Below the target sparsity: {', '.join(missed)}.")
  return out


def _partial(seeds, by_seed: Sequence[Dict[int, float]]) -> str:
  """Says when a goal is judged on fewer seeds than some of its methods have finished:
  means are taken over the seeds every compared method has, so that they pair."""
  finished = set().union(*by_seed)
  if set(seeds) == finished:
    return ""
  return (f"; over seeds {', '.join(str(s) for s in seeds)} only, the ones every compared "
          "method has finished")


def _headroom(cells, target, rivals, seeds) -> List[str]:
  """A line when the lead the goal asks for would take a pruned network at or above the
  dense one it was pruned from (dense test accuracy per seed): that goal cannot be met
  at this target, and a higher target is where an allocation can show its worth."""
  dense = _by_seed(cells, "purl", target, "dense_test_accuracy")
  bars = [max(v[s] for v in rivals.values()) + MARGIN for s in seeds]
  above = [s for s, bar in zip(seeds, bars) if bar >= dense[s]]
  if not above:
    return []
  return [f"- Headroom: the bar (the best rival of each seed + {100 * MARGIN:.1f} pt: "
          f"{', '.join(percent(b) for b in bars)} %) is at or above the dense network's test "
          f"accuracy ({', '.join(percent(dense[s]) for s in seeds)} %) on {len(above)} of "
          f"{len(seeds)} seeds: the goal asks a network pruned to {target} to match the "
          "unpruned one; a higher target leaves an allocation room to show."]


def _speed_goal(cells, target) -> List[str]:
  """Dense against episodic reward: episodes to within 0.5 pt of the final best."""
  by_seed = {m: _by_seed(cells, m, target, "episodes_to_within") for m in ("purl", "episodic")}
  for method, values in by_seed.items():
    if not values:
      return [f"- Episodes to the best: not evaluated yet ({METHOD_NAMES[method]} has no "
              "finished cell at this target)."]
  seeds = sorted(set(by_seed["purl"]) & set(by_seed["episodic"]))
  if not seeds:
    return ["- Episodes to the best: not evaluated yet (no seed has both rewards' cells)."]
  means = {}
  for method, values in by_seed.items():
    reached = [values[s] for s in seeds if values[s] is not None]
    if not reached:
      return ["- Episodes to the best: not comparable (a search never reached the target)."]
    means[method] = statistics.fmean(reached)
  verdict = "MET" if means["purl"] <= means["episodic"] / 2 else "NOT MET"
  return [f"- Dense reward within 0.5 pt of its best in at most half the episodes of the "
          f"episodic reward: {verdict} ({means['purl']:.1f} vs {means['episodic']:.1f} "
          f"evaluated episodes, means over seeds{_partial(seeds, by_seed.values())})."]
