"""An evaluated episode of the search, and how two episodes rank."""
import dataclasses
from typing import Optional

from purl_tf.runtime.results import reached_target

COLLECT, GREEDY, RANDOM, PRIOR = "collect", "greedy", "random", "prior"  # episode policies
CRITERIA = ("accuracy_at_target", "return")


@dataclasses.dataclass
class Episode:
  """One evaluated allocation. Accuracies and sparsities are fractions."""
  episode: int  # collect (or random) episodes finished before it; greedy runs share it
  policy: str  # COLLECT, GREEDY, RANDOM or PRIOR
  episode_return: float
  accuracy: float  # reward split, after the last step's retrain
  sparsity: float  # global, over prunable weights
  epsilon: float
  seconds: float
  allocation: dict  # layer name -> sparsity
  levels: list  # level in force per layer (0.0 where a failed step was undone)
  rewards: list  # reward per step
  retrain_seconds: float  # of the episode's steps, summed
  measure_seconds: float
  mask_seconds: float


def rank(episode: Episode, target: float, criterion: str,
         accuracy: Optional[float] = None) -> tuple:
  """The sort key of `criterion` (higher is better), scoring `accuracy` (default: the
  episode's own).

  'accuracy_at_target': among episodes that reach the target sparsity (results.
  reached_target), the highest reward-split accuracy (ties: higher sparsity); an episode
  at the target always beats one below it, and below the target the higher sparsity
  wins. 'return': the highest episode return.
  """
  if criterion == "return":
    return (episode.episode_return,)
  accuracy = episode.accuracy if accuracy is None else accuracy
  if reached_target(episode.sparsity, target):
    return (1, accuracy, episode.sparsity)
  return (0, episode.sparsity, 0.0)


def is_better(candidate: Episode, best: Optional[Episode], target: float,
              criterion: str) -> bool:
  """Whether `candidate` should replace `best` under `criterion` (see rank)."""
  return best is None or rank(candidate, target, criterion) > rank(best, target, criterion)
