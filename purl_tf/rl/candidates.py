"""The candidate pool: the networks of the search's best episodes, re-scored at its end.

The best of many noisy accuracy estimates is biased upwards; a fresh, longer-trained
measurement of a few candidates is not chosen among so many. So the pool keeps the network
(masks and retrained weights, one .npz per episode in root_dir/search/candidates) of the
few best episodes so far, and when the search ends retrains each the same extra batches,
measures it again on the reward split and chooses the highest re-score.
"""
import logging
import os
from typing import Callable, List, Optional

import tensorflow as tf

from purl_tf.rl.env import PruningEnv
from purl_tf.rl.episode import rank
from purl_tf.runtime import distribute, files, interrupt

_log = logging.getLogger(__name__)


class CandidatePool:
  """Keeps the networks of the `size` best episodes; called with the search record after
  each finished episode.

  The members are the record's `candidates` (indices into record.episodes, best first),
  so they are checkpointed and resumed with it. The file of an episode that leaves the
  pool is deleted only once no checkpoint a resume could read names it (see release).

  Args:
    env: the PruningEnv whose network is saved and re-scored.
    root_dir: run folder.
    size: how many of the best episodes keep their network.
    rescore_steps: train batches each candidate's network gets, from one common position
      of the train stream, before it is measured again.
    criterion: how episodes rank (episode.rank).
    lockstep: in a multi-worker run, its active distribute.Lockstep: every worker
      re-scores the same candidates.
  """

  def __init__(self, env: PruningEnv, root_dir: str, size: int, rescore_steps: int,
               criterion: str, lockstep: Optional[distribute.Lockstep] = None):
    self.env, self.root_dir, self.size = env, root_dir, size
    self.rescore_steps, self.criterion, self.lockstep = rescore_steps, criterion, lockstep
    self._dropped: List[str] = []  # files of episodes no longer among the best
    self._forgotten: List[str] = []  # ... and not named by the last checkpoint either

  def __call__(self, record):
    """Keeps the network of the record's last episode (as its last step left it) when it
    ranks among the `size` best so far."""
    index = len(record.episodes) - 1
    ranked = sorted([*record.candidates, index], reverse=True,
                    key=lambda i: rank(record.episodes[i], self.env.target, self.criterion))
    record.candidates = ranked[:self.size]
    if index in record.candidates:
      self.env.save_network(self._file(index))
    self._dropped += [self._file(i) for i in ranked[self.size:] if i != index]

  def release(self, sync: Callable[[], None]):
    """Deletes the files of the episodes that left the pool before the last checkpoint
    (which no longer names them) once `sync` has waited for it to be written; those that
    left since go at the next call. Call before each checkpoint and at the end."""
    if self._forgotten:
      sync()
      _remove(self._forgotten)
    self._forgotten, self._dropped = self._dropped, []

  def choose(self, record) -> tuple:
    """Re-scores the candidates' networks; returns (chosen Episode, its network after the
    re-score (.npz) or None, selection dict). Leaves the env at the last candidate's
    network. With no candidate file left, the choice is the record's best."""
    env = self.env
    scored = []
    for index in record.candidates:
      path = self._file(index)
      missing = not tf.io.gfile.exists(path)
      if self.lockstep:  # all workers re-score the same candidates
        missing = self.lockstep.any(missing)
      if missing:
        _log.warning(f"the network of candidate episode {index} is missing ({path}); "
                     "it is not re-scored.")
        continue
      interrupt.check()
      # Every candidate retrains on the same batches.
      accuracy = env.rescore(path, record.train_position, self.rescore_steps)
      episode = record.episodes[index]
      scored.append({"episode": episode.episode, "policy": episode.policy, "index": index,
                     "search_accuracy": episode.accuracy, "rescored_accuracy": accuracy,
                     "sparsity": episode.sparsity})
      best = max(scored, key=lambda c: rank(record.episodes[c["index"]], env.target,
                                            self.criterion, c["rescored_accuracy"]))
      if best is scored[-1]:
        env.save_network(os.path.join(self.root_dir, files.SEARCH_CHOSEN))
    if not scored:
      return record.best, None, {"rule": "the search's best (no candidate network left)"}
    chosen = record.episodes[best["index"]]
    selection = {
        "rule": f"the {self.size} best episodes by {self.criterion}, each network "
                f"retrained {self.rescore_steps} more batches (the same batches for all) "
                "and measured again on the reward split; the highest re-score is kept",
        "candidates": scored, "chosen_episode": chosen.episode, "chosen_policy": chosen.policy,
        "rescored_accuracy": best["rescored_accuracy"],
        "rescore_steps": self.rescore_steps}
    _log.info(f"Chosen: episode {chosen.episode} ({chosen.policy}), search accuracy "
              f"{chosen.accuracy:.4f}, re-scored {best['rescored_accuracy']:.4f} after "
              f"{self.rescore_steps} batches (of {len(scored)} candidates).")
    return chosen, os.path.join(self.root_dir, files.SEARCH_CHOSEN), selection

  def _file(self, index: int) -> str:
    return os.path.join(self.root_dir, files.SEARCH_CANDIDATES, f"episode{index:05d}.npz")


def _remove(paths: List[str]):
  for path in paths:
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
