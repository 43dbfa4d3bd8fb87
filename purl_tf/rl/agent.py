"""The DQN agent (tf-agents) that picks each layer's pruning level, its replay buffer,
and the policies a search runs.

Every random draw of a search outside the pruned network's own training comes from NumPy
generators seeded per episode (epsilon-greedy exploration, random search, replay
sampling): reseeding them is free, whereas resetting TensorFlow's global seed clears its
function caches, and a resumed search draws exactly what the uninterrupted one drew.
"""
from typing import Callable

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_agents.agents.dqn import dqn_agent
from tf_agents.networks import q_network
from tf_agents.policies import py_policy, random_py_policy
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.specs import tensor_spec
from tf_agents.utils import common

from purl_tf.errors import PurlError


class EpsilonSchedule:
  """Linear decay of the exploration rate over episodes, read by the collect policy.

  epsilon(e) = end + (start - end) * max(0, 1 - e / decay_episodes), e = episodes done.
  """

  def __init__(self, start: float, end: float, decay_episodes: int):
    self.start, self.end, self.decay_episodes = start, end, max(int(decay_episodes), 1)
    self.episodes = tf.Variable(0, dtype=tf.int64, trainable=False, name="episodes")

  def __call__(self):
    done = tf.cast(self.episodes, tf.float32) / float(self.decay_episodes)
    return self.end + (self.start - self.end) * tf.maximum(0.0, 1.0 - done)

  def value(self) -> float:
    return float(self())


@gin.configurable(denylist=["time_step_spec", "action_spec", "num_episodes",
                            "shaped_reward"])
def make_agent(time_step_spec, action_spec, num_episodes: int, shaped_reward: bool = False,
               fc_layer_params=(128, 128),
               learning_rate: float = 1e-3,
               double_dqn: bool = True,
               n_step_update: int = 1,
               gamma: float = 1.0,
               target_update_period: int = 20,
               target_update_tau: float = 1.0,
               epsilon_start: float = 1.0,
               epsilon_end: float = 0.05,
               epsilon_decay_fraction: float = 0.6,
               gradient_clipping: float = 10.0):
  """A (double) DQN agent over the environment's specs, with an int64 step counter.

  Args:
    time_step_spec, action_spec: the environment's, as array or tensor specs.
    num_episodes: length of the search, for the epsilon schedule.
    shaped_reward: the environment pays the dense reward, potential differences
      P(s_t) - P(s_{t-1}) that add up to the episodic return only undiscounted: gamma
      must then be 1.
    fc_layer_params: hidden layer widths of the Q-network.
    learning_rate: Adam learning rate.
    double_dqn: use double Q-learning targets (tf-agents DdqnAgent).
    n_step_update: steps of the n-step TD target.
    gamma: discount; 1.0 suits the short, fixed-length episodes (and the dense reward
      needs it).
    target_update_period, target_update_tau: target network updates (in train steps).
    epsilon_start, epsilon_end: exploration at the first and after the decay.
    epsilon_decay_fraction: share of num_episodes over which epsilon decays.
    gradient_clipping: global norm clip of the Q-network's gradients.
  Returns:
    (agent, EpsilonSchedule), the agent initialized.
  """
  if shaped_reward and gamma != 1.0:
    raise PurlError(f"make_agent.gamma={gamma} with the dense reward: its per-step rewards "
                    "sum to the episodic return only for gamma = 1 (a discount would change "
                    "what the agent optimises); bind make_agent.gamma = 1.0, or use "
                    "PruningEnv.reward_fn = @EpisodicReward() to discount.")
  time_step_spec = tensor_spec.from_spec(time_step_spec)
  action_spec = tensor_spec.from_spec(action_spec)
  network = q_network.QNetwork(time_step_spec.observation, action_spec,
                               fc_layer_params=tuple(fc_layer_params))
  epsilon = EpsilonSchedule(epsilon_start, epsilon_end, epsilon_decay_fraction * num_episodes)
  agent_class = dqn_agent.DdqnAgent if double_dqn else dqn_agent.DqnAgent
  optimizer = keras.optimizers.Adam(learning_rate)
  agent = agent_class(
      time_step_spec, action_spec, q_network=network, optimizer=optimizer,
      epsilon_greedy=epsilon, n_step_update=n_step_update, gamma=gamma,
      target_update_period=target_update_period, target_update_tau=target_update_tau,
      td_errors_loss_fn=common.element_wise_huber_loss,
      gradient_clipping=gradient_clipping,
      train_step_counter=tf.Variable(0, dtype=tf.int64, trainable=False, name="train_step"))
  agent.initialize()
  # Create Adam's slots now, so that a checkpoint restores them instead of dropping them.
  optimizer.build(network.trainable_variables)
  return agent, epsilon


@gin.configurable(denylist=["agent"])
def make_replay_buffer(agent, capacity: int = 20_000):
  """A TFUniformReplayBuffer of single-environment trajectories (capacity in steps)."""
  return tf_uniform_replay_buffer.TFUniformReplayBuffer(
      data_spec=agent.collect_data_spec, batch_size=1, max_length=capacity)


def random_policy(time_step_spec, action_spec, seed) -> random_py_policy.RandomPyPolicy:
  """tf-agents' uniform random policy over the action grid; `seed` a NumPy seed sequence."""
  state = int(np.random.default_rng(seed).integers(2**32))
  return random_py_policy.RandomPyPolicy(time_step_spec, action_spec, seed=state)


class EpsilonGreedyPyPolicy(py_policy.PyPolicy):
  """With probability epsilon a uniform random level, else the (compiled) greedy policy's.

  The same exploration as the DQN agent's collect policy; its draws come from NumPy, and
  `reseed` starts an episode's draws (and fixes its epsilon).
  """

  def __init__(self, greedy: py_policy.PyPolicy, epsilon: Callable[[], float]):
    super().__init__(greedy.time_step_spec, greedy.action_spec, greedy.policy_state_spec,
                     greedy.info_spec)
    self._greedy, self._epsilon = greedy, epsilon
    self.reseed(0)

  def reseed(self, seed):
    """Starts an episode: its draws from `seed` (a NumPy seed sequence), epsilon as now."""
    coin, levels = np.random.SeedSequence(seed).spawn(2)
    self._coin = np.random.default_rng(coin)
    self._random = random_policy(self.time_step_spec, self.action_spec, levels)
    self.epsilon = float(self._epsilon())

  def _action(self, time_step, policy_state):
    policy = self._random if self._coin.random() < self.epsilon else self._greedy
    return policy.action(time_step, policy_state)


class AgreedPyPolicy(py_policy.PyPolicy):
  """The wrapped policy, its actions replaced by `agree(action)`: the chief's, on every
  worker of a multi-worker search (distribute.Lockstep.agree)."""

  def __init__(self, policy: py_policy.PyPolicy, agree: Callable[[np.ndarray], np.ndarray]):
    super().__init__(policy.time_step_spec, policy.action_spec, policy.policy_state_spec,
                     policy.info_spec)
    self._policy, self._agree = policy, agree

  def _get_initial_state(self, batch_size):
    return self._policy.get_initial_state(batch_size)

  def _action(self, time_step, policy_state):
    step = self._policy.action(time_step, policy_state)
    action = np.asarray(step.action)
    return step._replace(action=self._agree(action).astype(action.dtype))


class ReplaySampler:
  """Uniform (batch_size, num_steps) samples of a replay buffer's trajectories, drawn with a
  NumPy generator (tf-agents' sampler draws from TensorFlow's global seed).

  As tf-agents' uniform sampler: every window of `num_steps` consecutive frames is equally
  likely, windows across an episode boundary included (DQN masks those out).
  """

  def __init__(self, replay: tf_uniform_replay_buffer.TFUniformReplayBuffer,
               batch_size: int, num_steps: int):
    self.replay, self.batch_size, self.num_steps = replay, batch_size, num_steps

  def sample(self, seed, count: int):
    """`count` batches of trajectories in one nest of arrays shaped (count, batch_size,
    num_steps, ...); None while the buffer holds fewer than num_steps frames."""
    frames = tf.nest.map_structure(lambda t: t.numpy()[0], self.replay.gather_all())
    length = tf.nest.flatten(frames)[0].shape[0]
    if length < self.num_steps:
      return None
    starts = np.random.default_rng(seed).integers(0, length - self.num_steps + 1,
                                                  (count, self.batch_size))
    rows = starts[..., None] + np.arange(self.num_steps)
    return tf.nest.map_structure(lambda frame: frame[rows], frames)
