"""The search's progress lines (with an ETA) and its warning when every episode ends near
chance, logged through this module's logger."""
import logging

from purl_tf.rl.episode import GREEDY
from purl_tf.runtime.results import NEAR_CHANCE_SHARE, retained_share

_log = logging.getLogger(__name__)

CHANCE_EPISODES = 3  # this many episodes, all near chance, and the search warns


class Progress:
  """Logs a progress line every `log_every` collect (or random) episodes and after every
  greedy one; called with the search record after each finished episode.

  Args:
    planned: collect (or random) episodes of the search.
    planned_evaluated: all the episodes it evaluates (the ETA counts these).
    log_every: log every this many episodes.
    num_classes: classes of the network's output (chance accuracy is 1 / num_classes).
    dense_accuracy: the dense network's reward-split accuracy, a fraction.
  """

  def __init__(self, planned: int, planned_evaluated: int, log_every: int,
               num_classes: int, dense_accuracy: float):
    self.planned, self.planned_evaluated = planned, planned_evaluated
    self.log_every = log_every
    self.num_classes, self.dense_accuracy = num_classes, dense_accuracy
    self._warned_chance = False

  def __call__(self, record):
    """The progress line of the record's last episode (and the near-chance warning)."""
    self._warn_if_all_near_chance(record.episodes)
    result = record.episodes[-1]
    if result.episode % self.log_every and result.policy != GREEDY:
      return
    done = len(record.episodes)
    per_episode = record.seconds / max(done, 1)
    remaining = per_episode * (self.planned_evaluated - done)
    best = record.best
    _log.info(f"[{result.policy:7s}] episode {record.collected:4d}/{self.planned}"
              f"  return {result.episode_return:+.3f}"
              f"  acc {result.accuracy:.4f}  sparsity {result.sparsity:.3f}"
              f"  eps {result.epsilon:.2f}  best acc {best.accuracy:.4f} @ {best.sparsity:.3f}"
              f"  {result.seconds:5.1f}s/ep  ETA {_duration(remaining)}")

  def _warn_if_all_near_chance(self, episodes: list):
    """Says once, while the search runs, when every episode so far ended near chance."""
    if self._warned_chance or len(episodes) < CHANCE_EPISODES:
      return
    classes = self.num_classes
    if all(retained_share(e.accuracy, self.dense_accuracy, classes) < NEAR_CHANCE_SHARE
           for e in episodes):
      self._warned_chance = True
      _log.warning(f"all {len(episodes)} episodes so far end near chance (best reward-split "
                   f"accuracy {max(e.accuracy for e in episodes):.4f}, chance "
                   f"{1 / classes:.4f}): the search cannot tell allocations apart. Lower "
                   "train_eval.target_sparsity, raise PruningEnv.retrain_steps, or keep the "
                   "first and last layers dense (wrap.exclude).")


def _duration(seconds: float) -> str:
  """h:mm:ss of a number of seconds."""
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
