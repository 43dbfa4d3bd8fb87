"""The dense and episodic rewards: same return, different timing, each step credited."""
import numpy as np
import pytest

import purl_tf  # noqa: F401
from purl_tf import rewards


def _episode(sparsities, accuracies, dense=0.95, target=0.9):
  """Outcomes of an episode whose step t ends at sparsities[t], accuracies[t]."""
  out, previous_s, previous_a = [], 0.0, dense
  for t, (s, a) in enumerate(zip(sparsities, accuracies)):
    out.append(rewards.Outcome(step=t, num_steps=len(sparsities), accuracy=a,
                               previous_accuracy=previous_a, dense_accuracy=dense,
                               sparsity=s, previous_sparsity=previous_s, target=target))
    previous_s, previous_a = s, a
  return out


@pytest.mark.parametrize("seed", range(20))
def test_dense_and_episodic_pay_the_same_return(seed):
  rng = np.random.default_rng(seed)
  steps = int(rng.integers(1, 12))
  sparsities = np.cumsum(rng.uniform(0, 1.0 / steps, steps))
  accuracies = rng.uniform(0.1, 1.0, steps)
  outcomes = _episode(sparsities, accuracies, target=float(rng.uniform(0.3, 0.95)))
  dense = [rewards.DenseReward()(o) for o in outcomes]
  episodic = [rewards.EpisodicReward()(o) for o in outcomes]
  assert sum(dense) == pytest.approx(sum(episodic), abs=1e-9)
  assert all(r == 0.0 for r in episodic[:-1])


def test_each_dense_reward_reflects_its_own_step():
  reward = rewards.DenseReward()
  base = _episode([0.3, 0.6], [0.94, 0.93])
  more_sparsity = _episode([0.3, 0.7], [0.94, 0.93])
  less_accuracy = _episode([0.3, 0.6], [0.94, 0.90])
  # The first step is identical, so its reward is too; only the second step differs.
  assert reward(base[0]) == reward(more_sparsity[0]) == reward(less_accuracy[0])
  assert reward(more_sparsity[1]) > reward(base[1]) > reward(less_accuracy[1])


def test_reward_stops_paying_for_sparsity_beyond_the_target():
  reward = rewards.DenseReward()
  at_target = sum(map(reward, _episode([0.5, 0.9], [0.95, 0.95])))
  beyond = sum(map(reward, _episode([0.5, 0.97], [0.95, 0.95])))
  assert at_target == pytest.approx(beyond)
  assert at_target == pytest.approx(1.0)


def test_missing_the_target_costs_more_than_its_share_of_progress():
  reward = rewards.DenseReward()
  short = _episode([0.5, 0.8], [0.95, 0.95])
  assert sum(map(reward, short)) == pytest.approx(0.8 / 0.9 - 5.0 * 0.1 / 0.9)
  # An accuracy point is worth less than reaching the target: pruning to the target
  # with a 1-point drop beats stopping 10 % short without a drop.
  reached_with_drop = _episode([0.5, 0.9], [0.95, 0.94])
  assert sum(map(reward, reached_with_drop)) > sum(map(reward, short))
