"""Rewards of the pruning MDP: dense (one per step, the default) and episodic (AMC-style).

Both pay the same episode return

    R = P(s_L) + w_a * (a_L - a_dense) / a_dense - w_miss * max(0, T - s_L) / T,
    P(s) = w_s * min(s, T) / T - w_over * max(0, s - T) / (1 - T),

where s_t is the global sparsity of the prunable weights after step t, a_t the
reward-split accuracy after step t's short retrain, T the target sparsity and L the
number of steps (prunable layers). The dense reward pays it as potential differences,
so every step is credited with what its own action did:

    r_t = P(s_t) - P(s_{t-1}) + w_a * (a_t - a_{t-1}) / a_dense
          [- w_miss * max(0, T - s_L) / T at t = L]

with s_{-1} = 0 and a_{-1} = a_dense. The episodic reward pays R at the last step and 0
before. A step whose retrain fails (non-finite loss) is undone and both pay worst() on top
of what an unchanged step earns, so their returns stay equal. The paper does not publish
its constants; these defaults are purl_tf's choice:
reaching the target is worth 1, a 1 % relative accuracy loss costs 0.05, missing
the target by 10 % of it costs an extra 0.5, and going past it is free (w_over = 0): then
only its accuracy cost holds a policy back from overshooting the target. With w_over > 0
every point of sparsity past T costs in proportion to the density T leaves (going from
0.95 to 0.96 costs 0.2 w_over), at the step that causes it.
"""
import dataclasses

import gin


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What one pruning step did. Accuracies and sparsities are fractions."""
  step: int  # position of the layer pruned, 0-based
  num_steps: int  # prunable layers, the episode length
  accuracy: float  # after this step's retrain
  previous_accuracy: float  # before this step (dense accuracy at step 0)
  dense_accuracy: float
  sparsity: float  # global sparsity after this step
  previous_sparsity: float
  target: float  # target global sparsity

  @property
  def is_last(self) -> bool:
    return self.step == self.num_steps - 1


@gin.configurable
class DenseReward:
  """A reward at every step: the step's change of sparsity progress and accuracy."""

  def __init__(self, sparsity_weight: float = 1.0, accuracy_weight: float = 5.0,
               shortfall_weight: float = 5.0, overshoot_weight: float = 0.0):
    self.sparsity_weight = sparsity_weight
    self.accuracy_weight = accuracy_weight
    self.shortfall_weight = shortfall_weight
    self.overshoot_weight = overshoot_weight

  def _potential(self, sparsity, target):
    """P(s): the weighted progress to the target, less the cost of going past it."""
    past = max(0.0, sparsity - target) / (1.0 - target)
    return (self.sparsity_weight * min(sparsity, target) / target
            - self.overshoot_weight * past)

  def _shortfall(self, outcome: Outcome) -> float:
    return max(0.0, outcome.target - outcome.sparsity) / outcome.target

  def worst(self) -> float:
    """The penalty of a step that failed (a non-finite loss): below any a step can earn."""
    return -float(self.sparsity_weight + self.accuracy_weight + self.shortfall_weight
                  + self.overshoot_weight)

  def failed(self, outcome: Outcome) -> float:
    """The reward of a failed, undone step: what an outcome that changed nothing earns,
    plus `worst()`. So the dense and episodic returns stay equal with failed steps
    (each failure costs both `worst()`), a failed last step included."""
    unchanged = dataclasses.replace(outcome, accuracy=outcome.previous_accuracy,
                                    sparsity=outcome.previous_sparsity)
    return self(unchanged) + self.worst()

  def __call__(self, outcome: Outcome) -> float:
    progress = (self._potential(outcome.sparsity, outcome.target)
                - self._potential(outcome.previous_sparsity, outcome.target))
    accuracy = (outcome.accuracy - outcome.previous_accuracy) / outcome.dense_accuracy
    reward = progress + self.accuracy_weight * accuracy
    if outcome.is_last:
      reward -= self.shortfall_weight * self._shortfall(outcome)
    return float(reward)


@gin.configurable
class EpisodicReward(DenseReward):
  """The same episode return as DenseReward, paid only at the last step (AMC-style)."""

  def __call__(self, outcome: Outcome) -> float:
    if not outcome.is_last:
      return 0.0
    accuracy = (outcome.accuracy - outcome.dense_accuracy) / outcome.dense_accuracy
    return float(self._potential(outcome.sparsity, outcome.target)
                 + self.accuracy_weight * accuracy
                 - self.shortfall_weight * self._shortfall(outcome))
