"""The search's TensorBoard summaries: each episode's scalars and layer sparsities, and a
chart of the best allocation."""
import os

import tensorflow as tf

from purl_tf.rl.episode import GREEDY
from purl_tf.runtime import files, plots


class EpisodeSummaries:
  """Writes TensorBoard summaries in root_dir/train (greedy episodes: root_dir/eval);
  called with the search record after each finished episode, at step Episode.episode."""

  def __init__(self, root_dir: str):
    self.writers = {kind: tf.summary.create_file_writer(os.path.join(root_dir, kind))
                    for kind in files.TENSORBOARD_DIRS}
    # One compiled summary writer per writer: a traced summary op keeps its writer.
    self._write = {kind: tf.function(_write_summaries, autograph=False)
                   for kind in files.TENSORBOARD_DIRS}
    self._chart_due = False  # the best changed since its last chart

  def __call__(self, record, agent_scalars: dict):
    """The record's last episode's scalars, the best's so far, and `agent_scalars`
    ({tag: float}, the learner's own)."""
    result, best = record.episodes[-1], record.best
    if best is result:
      self._chart_due = True
    scalars = {"episode/return": result.episode_return, "episode/accuracy": result.accuracy,
               "episode/sparsity": result.sparsity, "best/accuracy": best.accuracy,
               "best/sparsity": best.sparsity, **agent_scalars}
    scalars.update({f"best_allocation/{name}": value
                    for name, value in best.allocation.items()})
    kind = "eval" if result.policy == GREEDY else "train"
    with self.writers[kind].as_default():
      self._write[kind](
          tf.constant(result.episode, tf.int64),
          {name: tf.constant(value, tf.float32) for name, value in scalars.items()},
          tf.constant(list(result.allocation.values()), tf.float32))

  def chart_best(self, best):
    """The best allocation's chart, when the best changed since the last chart (rendering
    takes ~0.1 s: call it at the search's milestones, not after every episode)."""
    if not self._chart_due:
      return
    self._chart_due = False
    chart = plots.allocations({"best": best.allocation},
                              f"best allocation (episode {best.episode}, {best.policy})")
    writer = self.writers["eval" if best.policy == GREEDY else "train"]
    with writer.as_default(step=best.episode):
      tf.summary.image("best/allocation", tf.image.decode_png(chart)[None])


def _write_summaries(step, scalars, layer_sparsities):
  """An episode's scalars ({tag: float32}) and the histogram of its layer sparsities (run
  compiled: eager summary ops cost ~1 ms a scalar, ~20 ms a histogram)."""
  for tag, value in scalars.items():
    tf.summary.scalar(tag, value, step=step)
  tf.summary.histogram("episode/layer_sparsity", layer_sparsities, step=step)
