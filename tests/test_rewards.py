"""The dense and episodic rewards: same return, different timing, each step credited."""
import numpy as np
import pytest

import purl_tf  # noqa: F401
from purl_tf.rl import rewards


def _episode(sparsities, accuracies, dense=0.95, target=0.9):
  """Outcomes of an episode whose step t ends at sparsities[t], accuracies[t]."""
  out, previous_s, previous_a = [], 0.0, dense
  for t, (s, a) in enumerate(zip(sparsities, accuracies)):
    out.append(rewards.Outcome(step=t, num_steps=len(sparsities), accuracy=a,
                               previous_accuracy=previous_a, dense_accuracy=dense,
                               sparsity=s, previous_sparsity=previous_s, target=target))
    previous_s, previous_a = s, a
  return out


# The default constants and the failure penalty, written out here (not read from
# purl_tf.rl.rewards) so that the expected returns are computed independently:
# w_s = 1, w_a = 5, w_miss = 5; worst() = -(w_s + w_a + w_miss), below anything a step earns.
W_SPARSITY, W_ACCURACY, W_MISS = 1.0, 5.0, 5.0
WORST = -(W_SPARSITY + W_ACCURACY + W_MISS)


def _episode_return(final_sparsity, final_accuracy, dense, target):
  """R = w_s P(s_L) + w_a (a_L - a_dense) / a_dense - w_miss max(0, T - s_L) / T."""
  progress = min(final_sparsity, target) / target
  return (W_SPARSITY * progress + W_ACCURACY * (final_accuracy - dense) / dense
          - W_MISS * max(0.0, target - final_sparsity) / target)


def _run(rng, steps, target, dense, failures, attempted_in_failed):
  """(dense rewards, episodic rewards, surviving (sparsity, accuracy)) of an episode whose
  step t fails when failures[t]: a failed step is undone (sparsity and accuracy stay as
  before it, as PruningEnv leaves them) and both rewards pay `.failed(outcome)` for it.

  attempted_in_failed: the failed step's outcome carries what the step attempted (its
  sparsity and accuracy before the undo) instead of the unchanged values; failed() must
  ignore them, since it pays what an outcome that changed nothing earns.
  """
  dense_fn, episodic_fn = rewards.DenseReward(), rewards.EpisodicReward()
  dense_rewards, episodic_rewards = [], []
  sparsity, accuracy = 0.0, dense
  for t in range(steps):
    tried_s = sparsity + float(rng.uniform(0, 1.0 / steps))
    tried_a = float(rng.uniform(0.1, 1.0))
    if failures[t]:
      s, a = (tried_s, tried_a) if attempted_in_failed else (sparsity, accuracy)
    else:
      s, a = tried_s, tried_a
    outcome = rewards.Outcome(step=t, num_steps=steps, accuracy=a, previous_accuracy=accuracy,
                              dense_accuracy=dense, sparsity=s, previous_sparsity=sparsity,
                              target=target)
    if failures[t]:
      dense_rewards.append(dense_fn.failed(outcome))
      episodic_rewards.append(episodic_fn.failed(outcome))
    else:
      dense_rewards.append(dense_fn(outcome))
      episodic_rewards.append(episodic_fn(outcome))
      sparsity, accuracy = tried_s, tried_a
  return dense_rewards, episodic_rewards, (sparsity, accuracy)


SEEDS = range(30)


def _case(seed):
  """(rng, steps, target, dense accuracy, failures) of one randomized episode: seeds 0, 3,
  6, ... fail the last step; each step fails with probability 0, 0.3 or 0.6 (seed 0: 1)."""
  rng = np.random.default_rng(seed)
  steps = int(rng.integers(1, 12))
  target = float(rng.uniform(0.3, 0.95))
  dense = float(rng.uniform(0.5, 1.0))
  rate = 1.0 if seed == 0 else float(rng.choice([0.0, 0.3, 0.6]))
  failures = rng.uniform(size=steps) < rate
  if seed % 3 == 0:
    failures[-1] = True
  return rng, steps, target, dense, failures


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_and_episodic_pay_the_same_return(seed):
  rng, steps, target, dense, failures = _case(seed)
  dense_rewards, episodic, (s_final, a_final) = _run(
      rng, steps, target, dense, failures, attempted_in_failed=bool(seed % 2))
  # The surviving trajectory's return as if nothing had failed, and worst() per failure.
  expected = (_episode_return(s_final, a_final, dense, target)
              + WORST * int(np.sum(failures)))
  assert sum(dense_rewards) == pytest.approx(sum(episodic), abs=1e-9)
  assert sum(dense_rewards) == pytest.approx(expected, abs=1e-9)
  assert sum(episodic) == pytest.approx(expected, abs=1e-9)
  # Before the last step the episodic reward is 0, or worst() alone for a failed step.
  assert episodic[:-1] == pytest.approx([WORST if f else 0.0 for f in failures[:-1]])


def test_the_randomized_episodes_cover_failed_steps():
  """The seeds above hold episodes with no failure, with failures before the last step
  only, with a failed last step after surviving steps, and with every step failed."""
  kinds = set()
  for seed in SEEDS:
    failures = _case(seed)[-1]
    if not failures.any():
      kinds.add("none")
    elif failures.all():
      kinds.add("all")
    elif failures[-1]:
      kinds.add("last after survivors")
    else:
      kinds.add("some, not last")
  assert kinds == {"none", "all", "last after survivors", "some, not last"}


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


def test_an_overshoot_weight_charges_sparsity_past_the_target_at_the_step_that_adds_it():
  reward = rewards.DenseReward(overshoot_weight=1.0)
  episodic = rewards.EpisodicReward(overshoot_weight=1.0)
  at_target = _episode([0.5, 0.9, 0.9], [0.95, 0.95, 0.95])
  beyond = _episode([0.5, 0.92, 0.92], [0.95, 0.95, 0.95])
  # 0.02 past 0.9 is a fifth of the density 0.9 leaves: it costs 0.2 * w_over.
  assert sum(map(reward, beyond)) == pytest.approx(sum(map(reward, at_target)) - 0.2)
  assert sum(map(episodic, beyond)) == pytest.approx(sum(map(reward, beyond)))
  # The step that went past the target pays it; the step after changed nothing.
  assert reward(beyond[1]) == pytest.approx(reward(at_target[1]) - 0.2)
  assert reward(beyond[2]) == pytest.approx(0.0)
  # Sparsity up to the target is paid as before.
  assert sum(map(reward, at_target)) == pytest.approx(1.0)


def test_missing_the_target_costs_more_than_its_share_of_progress():
  reward = rewards.DenseReward()
  short = _episode([0.5, 0.8], [0.95, 0.95])
  assert sum(map(reward, short)) == pytest.approx(0.8 / 0.9 - 5.0 * 0.1 / 0.9)
  # An accuracy point is worth less than reaching the target: pruning to the target
  # with a 1-point drop beats stopping 10 % short without a drop.
  reached_with_drop = _episode([0.5, 0.9], [0.95, 0.94])
  assert sum(map(reward, reached_with_drop)) > sum(map(reward, short))


def test_a_discount_breaks_the_equivalence_so_the_dense_reward_refuses_one():
  from tf_agents.specs import array_spec  # pylint: disable=import-outside-toplevel
  from purl_tf.rl import agent  # pylint: disable=import-outside-toplevel
  from purl_tf.errors import PurlError  # pylint: disable=import-outside-toplevel
  from tf_agents.trajectories import time_step as ts  # pylint: disable=import-outside-toplevel
  outcomes = _episode([0.3, 0.6, 0.9], [0.94, 0.9, 0.85])
  dense = [rewards.DenseReward()(o) for o in outcomes]
  episodic = [rewards.EpisodicReward()(o) for o in outcomes]
  discounted = lambda rs, g: sum(r * g**t for t, r in enumerate(rs))
  assert discounted(dense, 1.0) == pytest.approx(discounted(episodic, 1.0), abs=1e-9)
  assert abs(discounted(dense, 0.9) - discounted(episodic, 0.9)) > 1e-3
  specs = (ts.time_step_spec(array_spec.ArraySpec((17,), np.float32)),
           array_spec.BoundedArraySpec((), np.int64, minimum=0, maximum=3))
  with pytest.raises(PurlError, match="gamma = 1"):
    agent.make_agent(*specs, num_episodes=10, shaped_reward=True, gamma=0.9)
  agent.make_agent(*specs, num_episodes=10, shaped_reward=False, gamma=0.9)  # episodic: fine
  agent.make_agent(*specs, num_episodes=10, shaped_reward=True, gamma=1.0)
