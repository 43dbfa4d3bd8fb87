"""The DQN agent (tf-agents) that picks each layer's pruning level, and its replay buffer."""
import gin
import tensorflow as tf
import tf_keras as keras
from tf_agents.agents.dqn import dqn_agent
from tf_agents.networks import q_network
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.specs import tensor_spec
from tf_agents.utils import common


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


@gin.configurable(denylist=["time_step_spec", "action_spec", "num_episodes"])
def make_agent(time_step_spec, action_spec, num_episodes: int,
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
    fc_layer_params: hidden layer widths of the Q-network.
    learning_rate: Adam learning rate.
    double_dqn: use double Q-learning targets (tf-agents DdqnAgent).
    n_step_update: steps of the n-step TD target.
    gamma: discount; 1.0 suits the short, fixed-length episodes.
    target_update_period, target_update_tau: target network updates (in train steps).
    epsilon_start, epsilon_end: exploration at the first and after the decay.
    epsilon_decay_fraction: share of num_episodes over which epsilon decays.
    gradient_clipping: global norm clip of the Q-network's gradients.
  Returns:
    (agent, EpsilonSchedule), the agent initialized.
  """
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
