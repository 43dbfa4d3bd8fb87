"""The PuRL search: collect episodes, train the DQN, evaluate its greedy policy, keep the best.

After every episode the agent, its replay buffer, the counters and the search record
(every episode's allocation and scores, the best so far) are checkpointed together in
root_dir/search/checkpoints; a rerun with the same root_dir resumes after the last
finished episode, and a finished search is not redone.
"""
import dataclasses
import json
import os
import time
from typing import List, Optional

import gin
import numpy as np
import tensorflow as tf
from tf_agents.drivers import py_driver
from tf_agents.policies import policy_saver, py_tf_eager_policy
from tf_agents.utils import common, nest_utils

from purl_tf import agent as agent_lib
from purl_tf import files, interrupt, plots
from purl_tf.env import PruningEnv
from purl_tf.errors import PurlError

COLLECT, GREEDY = "collect", "greedy"
CRITERIA = ("accuracy_at_target", "return")
_TARGET_TOLERANCE = 1e-6


@dataclasses.dataclass
class Episode:
  """One evaluated allocation. Accuracies and sparsities are fractions."""
  episode: int  # collect episodes finished before it (greedy runs share the number)
  policy: str  # COLLECT or GREEDY
  episode_return: float
  accuracy: float  # reward split, after the last step's retrain
  sparsity: float  # global, over prunable weights
  epsilon: float
  seconds: float
  allocation: dict  # layer name -> sparsity
  levels: list  # level chosen per layer
  rewards: list  # reward per step
  retrain_seconds: float  # of the episode's steps, summed
  measure_seconds: float


def is_better(candidate: Episode, best: Optional[Episode], target: float,
              criterion: str) -> bool:
  """Whether `candidate` should replace `best` under `criterion`.

  'accuracy_at_target': among episodes at or above the target sparsity, the highest
  reward-split accuracy (ties: higher sparsity); an episode at the target always beats
  one below it, and below the target the higher sparsity wins. 'return': the highest
  episode return.
  """
  if best is None:
    return True
  if criterion == "return":
    return candidate.episode_return > best.episode_return
  reached = candidate.sparsity >= target - _TARGET_TOLERANCE
  best_reached = best.sparsity >= target - _TARGET_TOLERANCE
  if reached != best_reached:
    return reached
  if not reached:
    return candidate.sparsity > best.sparsity
  return (candidate.accuracy, candidate.sparsity) > (best.accuracy, best.sparsity)


class _Record:
  """The search's progress, checkpointed with the agent as a JSON string variable."""

  def __init__(self):
    self.variable = tf.Variable("", dtype=tf.string, trainable=False, name="search_record")
    self.episodes: List[Episode] = []
    self.best: Optional[Episode] = None
    self.collected = 0
    self.seconds = 0.0
    self.failed_steps = 0

  def store(self):
    self.variable.assign(json.dumps({
        "episodes": [dataclasses.asdict(e) for e in self.episodes],
        "best": dataclasses.asdict(self.best) if self.best else None,
        "collected": self.collected, "seconds": self.seconds,
        "failed_steps": self.failed_steps}))

  def load(self):
    text = self.variable.numpy().decode()
    if not text:
      return
    state = json.loads(text)
    self.episodes = [Episode(**e) for e in state["episodes"]]
    self.best = Episode(**state["best"]) if state["best"] else None
    self.collected = state["collected"]
    self.seconds = state["seconds"]
    self.failed_steps = state["failed_steps"]


@dataclasses.dataclass
class SearchResult:
  best: Episode
  episodes: List[Episode]
  seconds: float  # wall time of the search, summed over resumed runs
  reached_target: bool
  failed_steps: int  # steps undone after a non-finite retrain loss

  @property
  def overhead_share(self) -> float:
    """Share of the search's wall time spent outside retraining and measuring accuracy
    (mask setting, observations, the agent, logging, checkpoints)."""
    inside = sum(e.retrain_seconds + e.measure_seconds for e in self.episodes)
    return max(0.0, 1.0 - inside / self.seconds) if self.seconds else 0.0


def evaluated_episodes(num_episodes: int, eval_interval: int) -> int:
  """Episodes a search runs: its collect episodes plus a greedy one every `eval_interval`
  collect episodes and after the last."""
  return num_episodes + -(-num_episodes // eval_interval)


@gin.configurable(denylist=["env", "root_dir", "seed"])
def search(env: PruningEnv, root_dir: str, num_episodes: int = 100, eval_interval: int = 10,
           agent_updates_per_episode: Optional[int] = None, batch_size: int = 64,
           best_criterion: str = "accuracy_at_target", log_every: int = 1,
           initial_policy: Optional[str] = None, seed: int = 0) -> SearchResult:
  """Runs (or resumes) the search and returns the best allocation found.

  Args:
    env: the PruningEnv.
    root_dir: run folder; the search writes root_dir/search and root_dir/train|eval.
    num_episodes: collect episodes (greedy evaluations come on top).
    eval_interval: run the greedy policy every this many collect episodes (and last).
    agent_updates_per_episode: DQN gradient steps after each collect episode
      (default: 4 per layer).
    batch_size: transitions per DQN gradient step.
    best_criterion: 'accuracy_at_target' or 'return' (see is_better).
    log_every: print a progress line every this many episodes.
    initial_policy: a policy saved by an earlier search (its root_dir/policy) whose
      Q-network starts this one; it may come from another network, but needs the same
      action grid size and Q-network layers. Its greedy policy runs once first.
    seed: every episode reseeds Python, NumPy and TensorFlow from (seed, episode), so a
      resumed search repeats what an uninterrupted one would have done.
  """
  if best_criterion not in CRITERIA:
    raise PurlError(f"search.best_criterion={best_criterion!r} is unknown: use one of "
                    f"{CRITERIA}.")
  if num_episodes < 1 or eval_interval < 1:
    raise PurlError("search.num_episodes and search.eval_interval must be at least 1.")
  loop = _Search(env, root_dir, num_episodes, eval_interval,
                 agent_updates_per_episode or 4 * env.num_layers, batch_size, best_criterion,
                 log_every, seed)
  record = loop.record
  if not loop.restore() and initial_policy:
    _load_policy(loop.agent, initial_policy)
  if initial_policy and not record.episodes:
    loop.evaluate_greedy()
  while record.collected < num_episodes:
    started = time.time()
    result, q_max = loop.run_episode(COLLECT)
    record.collected += 1
    loop.epsilon.episodes.assign(record.collected)
    loss = loop.train_agent()
    loop.keep(result, q_max, loss)
    greedy = None
    if record.collected % eval_interval == 0 or record.collected == num_episodes:
      greedy = loop.evaluate_greedy(report=False)
    record.seconds += time.time() - started
    loop.save()
    loop.progress(result)
    if greedy:
      loop.progress(greedy)
  return loop.finish()


class _Search:
  """The agent, its replay buffer and checkpoint, and the episode bookkeeping of a search."""

  def __init__(self, env, root_dir, num_episodes, eval_interval, updates, batch_size,
               criterion, log_every, seed):
    self.env, self.root_dir, self.num_episodes = env, root_dir, num_episodes
    self.eval_interval, self.updates, self.batch_size = eval_interval, updates, batch_size
    self.criterion, self.log_every, self.seed = criterion, log_every, seed
    self.agent, self.epsilon = agent_lib.make_agent(env.time_step_spec(), env.action_spec(),
                                                    num_episodes=num_episodes)
    self.replay = agent_lib.make_replay_buffer(self.agent)
    self.record = _Record()
    self.checkpoint = tf.train.Checkpoint(agent=self.agent, replay_buffer=self.replay,
                                          episodes=self.epsilon.episodes,
                                          record=self.record.variable)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(root_dir, files.SEARCH_CHECKPOINTS), max_to_keep=2)
    self.train_fn = common.function(self.agent.train)
    self.writers = {kind: tf.summary.create_file_writer(os.path.join(root_dir, kind))
                    for kind in files.TENSORBOARD_DIRS}
    self.policies = {
        # Eager, so that reseeding TensorFlow restarts its epsilon-greedy draws.
        COLLECT: py_tf_eager_policy.PyTFEagerPolicy(self.agent.collect_policy,
                                                    use_tf_function=False),
        GREEDY: py_tf_eager_policy.PyTFEagerPolicy(self.agent.policy, use_tf_function=True),
    }
    network = self.agent._q_network  # pylint: disable=protected-access
    self.q_values = tf.function(lambda observation: network(observation)[0])

  def restore(self) -> bool:
    """Continues from the newest readable checkpoint; False when there is none."""
    restored = files.restore_latest(self.checkpoint, self.manager, validate=self.record.load)
    self.env.failed_steps = self.record.failed_steps
    if self.record.collected:
      print(f"Resuming the search after episode {self.record.collected}/{self.num_episodes} "
            f"from {self.root_dir}.", flush=True)
    return bool(restored)

  def _add_to_replay(self, trajectory):
    self.replay.add_batch(nest_utils.batch_nested_array(trajectory))

  def run_episode(self, kind: str):
    """One episode of the COLLECT or GREEDY policy: (Episode, max Q of its first state)."""
    start = time.time()
    interrupt.check()
    tf.keras.utils.set_random_seed((self.seed * 1_000_003 + 2 * self.record.collected
                                    + (kind == GREEDY)) % 2**31)
    first = self.env.reset()
    observers = [self._add_to_replay] if kind == COLLECT else []
    py_driver.PyDriver(self.env, self.policies[kind], observers, max_episodes=1,
                       end_episode_on_boundary=False).run(first)
    steps = self.env.episode
    result = Episode(
        episode=self.record.collected, policy=kind,
        episode_return=float(sum(s.reward for s in steps)), accuracy=steps[-1].accuracy,
        sparsity=steps[-1].sparsity,
        epsilon=self.epsilon.value() if kind == COLLECT else 0.0,
        seconds=time.time() - start, allocation={s.layer: s.layer_sparsity for s in steps},
        levels=[s.level for s in steps], rewards=[s.reward for s in steps],
        retrain_seconds=sum(s.retrain_seconds for s in steps),
        measure_seconds=sum(s.measure_seconds for s in steps))
    return result, float(tf.reduce_max(self.q_values(first.observation[None])[0]))

  def train_agent(self) -> Optional[float]:
    """DQN updates on the replay buffer; their mean loss (None: too few transitions yet)."""
    if self.replay.num_frames() < self.batch_size:
      return None
    # A new sampler every episode, made under the episode's seed: repeatable on resume.
    experience = iter(self.replay.as_dataset(
        sample_batch_size=self.batch_size, num_steps=self.agent.train_sequence_length,
        num_parallel_calls=2).prefetch(2))
    return float(np.mean([float(self.train_fn(next(experience)[0]).loss)
                          for _ in range(self.updates)]))

  def evaluate_greedy(self, report: bool = True) -> Episode:
    result, q_max = self.run_episode(GREEDY)
    self.keep(result, q_max, None)
    if report:
      self.progress(result)
    return result

  def keep(self, result: Episode, q_max: float, loss: Optional[float]):
    """Records an episode, updates the best, and writes its TensorBoard summaries."""
    record = self.record
    record.episodes.append(result)
    if is_better(result, record.best, self.env.target, self.criterion):
      record.best = result
    writer = self.writers["train" if result.policy == COLLECT else "eval"]
    with writer.as_default(step=result.episode):
      tf.summary.scalar("episode/return", result.episode_return)
      tf.summary.scalar("episode/accuracy", result.accuracy)
      tf.summary.scalar("episode/sparsity", result.sparsity)
      tf.summary.scalar("agent/q_max_first_state", q_max)
      if result.policy == COLLECT:
        tf.summary.scalar("agent/epsilon", result.epsilon)
        if loss is not None:
          tf.summary.scalar("agent/loss", loss)
      tf.summary.histogram("episode/layer_sparsity", list(result.allocation.values()))
      tf.summary.scalar("best/accuracy", record.best.accuracy)
      tf.summary.scalar("best/sparsity", record.best.sparsity)
      for name, value in record.best.allocation.items():
        tf.summary.scalar(f"best_allocation/{name}", value)
      if record.best is result:
        chart = plots.allocations({"best": result.allocation},
                                  f"best allocation (episode {result.episode}, "
                                  f"{result.policy})")
        tf.summary.image("best/allocation", tf.image.decode_png(chart)[None])
    writer.flush()

  def save(self):
    """Checkpoints everything after an episode, then rewrites episodes.json."""
    record = self.record
    record.failed_steps = self.env.failed_steps
    record.store()
    saving = time.time()
    self.manager.save(checkpoint_number=record.collected)
    files.write_json(os.path.join(self.root_dir, files.EPISODES),
                     [dataclasses.asdict(e) for e in record.episodes])
    record.seconds += time.time() - saving  # stored with the next episode

  def progress(self, result: Episode):
    """The progress line of an episode."""
    if result.episode % self.log_every and result.policy == COLLECT:
      return
    record = self.record
    done = record.collected
    per_episode = record.seconds / max(done, 1)
    remaining = per_episode * (self.num_episodes - done) * (1 + 1 / self.eval_interval)
    best = record.best
    best_text = (f"best acc {best.accuracy:.4f} @ {best.sparsity:.3f}" if best else "best -")
    print(f"[{result.policy:7s}] episode {done:4d}/{self.num_episodes}"
          f"  return {result.episode_return:+.3f}"
          f"  acc {result.accuracy:.4f}  sparsity {result.sparsity:.3f}"
          f"  eps {result.epsilon:.2f}  {best_text}  {result.seconds:5.1f}s/ep"
          f"  ETA {_duration(remaining)}", flush=True)

  def finish(self) -> SearchResult:
    """Saves the greedy policy and best_allocation.json; the search's result."""
    policy_saver.PolicySaver(self.agent.policy, batch_size=None).save(
        os.path.join(self.root_dir, files.POLICY_DIR))
    record, env = self.record, self.env
    best = record.best
    reached = bool(best.sparsity >= env.target - _TARGET_TOLERANCE)
    files.write_json(os.path.join(self.root_dir, files.BEST_ALLOCATION), {
        "allocation": best.allocation, "accuracy_reward_split": best.accuracy,
        "global_sparsity": best.sparsity, "episode": best.episode, "policy": best.policy,
        "target_sparsity": env.target, "reached_target": reached,
        "criterion": self.criterion, "mode": env.mode})
    return SearchResult(best=best, episodes=record.episodes, seconds=record.seconds,
                        reached_target=reached, failed_steps=record.failed_steps)


def _load_policy(agent, path: str):
  """Starts the agent's Q-network (and its target) from a saved policy's weights."""
  try:
    saved = tf.saved_model.load(os.path.expanduser(path)).model_variables
  except Exception as error:
    raise PurlError(f"search.initial_policy={path!r} is not a policy saved by purl_tf "
                    f"(its root_dir/{files.POLICY_DIR}): {type(error).__name__}.") from error
  variables = agent.policy.variables()
  shapes = [tuple(v.shape) for v in saved], [tuple(v.shape) for v in variables]
  if shapes[0] != shapes[1]:
    raise PurlError(f"the policy at {path} has Q-network weights {shapes[0]} but this search "
                    f"needs {shapes[1]}: use the same make_agent.fc_layer_params and number "
                    "of PruningEnv.levels.")
  for source, target in zip(saved, variables):
    target.assign(source)
  agent.initialize()  # copies the Q-network into the target network
  print(f"Q-network initialised from the policy at {path}.", flush=True)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
