"""The search runner: one episode loop for every searched method (after Dopamine's Runner).

A `SearchRunner` owns the loop over episodes of the PruningEnv, the agent's updates, its
checkpoints and resume, and the collect and greedy phases. After each finished episode it
hands the search record to its observers: the candidates.CandidatePool (the best episodes'
networks, re-scored at the end to choose), the summaries.EpisodeSummaries (TensorBoard) and
the progress.Progress (the progress lines). Its `learner` says what chooses the levels:

  'dqn'     PuRL: a DQN agent collects with epsilon-greedy exploration, trains after every
            collect episode, and its greedy policy is evaluated every `eval_interval`
            collect episodes and after the last. The reward (dense or episodic) is the
            environment's.
  'random'  random search: tf-agents' RandomPyPolicy, not trained, for as many evaluated
            episodes as the DQN search would run (collect plus greedy).

With `prior_episode` (and PruningEnv.prior set) the first episode of either learner plays
the prior's own allocation (every action keeps the prior's level, tf-agents'
ScriptedPyPolicy): the DQN learns from it, and it competes as a candidate like any other.

After an episode, every `checkpoint_seconds`, the search record (every episode's
allocation and scores, the best so far, the position in the train stream) is checkpointed
with the agent and its replay buffer in root_dir/search/checkpoints; a rerun with the same
root_dir resumes after the last checkpointed episode and repeats what an uninterrupted
search would have done: every random draw of an episode is seeded by (seed, episode), and
the train stream continues at its checkpointed position. A finished search is not redone.
"""
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import List, Optional

import gin
import numpy as np
import tensorflow as tf
from tf_agents.drivers import py_driver
from tf_agents.policies import policy_saver, py_tf_eager_policy, scripted_py_policy
from tf_agents.utils import common, nest_utils

from purl_tf.errors import PurlError
from purl_tf.rl import agent as agent_lib
from purl_tf.rl import rewards
from purl_tf.rl.candidates import CandidatePool
from purl_tf.rl.env import PruningEnv
from purl_tf.rl.episode import COLLECT, CRITERIA, GREEDY, PRIOR, RANDOM, Episode, is_better
from purl_tf.rl.progress import Progress
from purl_tf.rl.summaries import EpisodeSummaries
from purl_tf.runtime import distribute, files, interrupt

_log = logging.getLogger(__name__)

DQN = "dqn"
LEARNERS = (DQN, RANDOM)


@dataclasses.dataclass
class SearchResult:
  best: Episode  # the best episode as the search measured it
  chosen: Episode  # the candidate with the best re-score: the allocation the run keeps
  chosen_state: Optional[str]  # its network (masks, weights) after the re-score (.npz)
  selection: dict  # how it was chosen: the candidates and their re-scores
  episodes: List[Episode]
  seconds: float  # wall time of the search, summed over resumed runs
  failed_steps: int  # steps undone after a non-finite retrain loss
  retrain_steps: int  # train batches of all steps of all episodes
  phase_seconds: dict  # wall time outside the episodes: agent, checkpoints, summaries

  @property
  def seconds_by_part(self) -> dict:
    """Where the search's wall time went, in seconds: retrain, measure, masks, the rest of
    the episodes (resets, policy inference, observations, the driver), agent training,
    checkpoints, summaries, and what is left (progress lines, bookkeeping)."""
    parts = {name: sum(getattr(e, f"{name}_seconds") for e in self.episodes)
             for name in ("retrain", "measure", "mask")}
    parts["episode_other"] = sum(e.seconds for e in self.episodes) - sum(parts.values())
    parts.update(self.phase_seconds)
    parts["other"] = max(0.0, self.seconds - sum(parts.values()))
    return parts

  @property
  def overhead_share(self) -> float:
    """Share of the search's wall time spent outside retraining and measuring accuracy
    (mask setting, observations, the agent, logging, checkpoints)."""
    inside = sum(e.retrain_seconds + e.measure_seconds for e in self.episodes)
    return max(0.0, 1.0 - inside / self.seconds) if self.seconds else 0.0


class _Record:
  """The search's progress, checkpointed in two string variables: each episode's JSON
  (serialised once, when it is added: a save costs no more as the search grows) and the
  rest of the state as one JSON object."""

  def __init__(self):
    self.variable = tf.Variable("", dtype=tf.string, trainable=False, name="search_record")
    self.episode_texts = tf.Variable(tf.zeros([0], tf.string), shape=tf.TensorShape([None]),
                                     trainable=False, name="search_episodes")
    self.episodes: List[Episode] = []
    self._texts: List[str] = []  # JSON of each episode
    self.best: Optional[Episode] = None
    self.collected = 0  # collect (or random) episodes finished
    self.seconds = 0.0
    self.failed_steps = 0
    self.train_position = 0  # batches drawn from the env's train stream
    self.phase_seconds = {"agent": 0.0, "checkpoint": 0.0, "summaries": 0.0}
    self.candidates: List[int] = []  # indices into episodes, best first (files saved)

  def add(self, episode: Episode):
    self.episodes.append(episode)
    self._texts.append(json.dumps(dataclasses.asdict(episode), sort_keys=True))

  def episodes_json(self) -> str:
    """The episodes as a JSON list, one episode per line."""
    return "[\n" + ",\n".join(self._texts) + "\n]\n"

  def store(self):
    self.episode_texts.assign(tf.constant(self._texts, tf.string, shape=[len(self._texts)]))
    self.variable.assign(json.dumps({
        "best": dataclasses.asdict(self.best) if self.best else None,
        "collected": self.collected, "seconds": self.seconds,
        "failed_steps": self.failed_steps, "train_position": self.train_position,
        "phase_seconds": self.phase_seconds, "candidates": self.candidates}))

  def load(self):
    text = self.variable.numpy().decode()
    if not text:
      return
    state = json.loads(text)
    self._texts = [t.decode() for t in self.episode_texts.numpy()]
    self.episodes = [Episode(**json.loads(t)) for t in self._texts]
    self.best = Episode(**state["best"]) if state["best"] else None
    for name in ("collected", "seconds", "failed_steps", "train_position", "phase_seconds",
                 "candidates"):
      setattr(self, name, state[name])


def evaluated_episodes(num_episodes: int, eval_interval: int) -> int:
  """Episodes a DQN search evaluates: its collect episodes plus a greedy one every
  `eval_interval` collect episodes and after the last."""
  return num_episodes + -(-num_episodes // eval_interval)


@gin.configurable(denylist=["env", "root_dir", "learner", "seed", "lockstep"])
class SearchRunner:
  """Runs (or resumes) the search of one run folder; `run()` returns its SearchResult.

  Args:
    env: the PruningEnv.
    root_dir: run folder; the search writes root_dir/search and root_dir/train|eval.
    learner: 'dqn' (PuRL) or 'random' (random search), see the module docstring.
    num_episodes: collect episodes of the DQN (greedy evaluations come on top); random
      search runs evaluated_episodes(num_episodes, eval_interval) episodes.
    eval_interval: run the greedy policy every this many collect episodes (and last).
    agent_updates_per_episode: DQN gradient steps after each collect episode
      (default: 4 per layer).
    batch_size: transitions per DQN gradient step.
    best_criterion: 'accuracy_at_target' or 'return' (see is_better).
    log_every: log a progress line every this many episodes.
    initial_policy: a policy saved by an earlier search (its root_dir/policy) whose
      Q-network starts this one; it may come from another network, but needs the same
      action grid size and Q-network layers. Its greedy policy runs once first.
    prior_episode: with PruningEnv.prior set, play the prior's own allocation first (one
      more evaluated episode, for either learner); see the module docstring.
    candidates: how many of the best episodes keep their network to be re-scored when
      the search ends (candidates.CandidatePool).
    rescore_steps: train batches each candidate's network gets, from one common stream
      position, before its reward-split accuracy is measured again; the highest re-score
      is the allocation the run keeps, and its network is what the fine-tune starts from.
    checkpoint_seconds: checkpoint after an episode when this many seconds have passed
      since the last checkpoint (and always after the last episode, and before stopping
      on SIGINT/SIGTERM). A kill loses at most this much finished work besides the
      episode it interrupts; 0 checkpoints after every episode.
    seed: seeds every random draw of an episode with (seed, episode).
    lockstep: in a multi-worker run, the distribute.Lockstep of its strategy: every
      worker takes the chief's actions, checkpoints when the chief does and resumes from
      the chief's checkpoint (root_dir is then this worker's run_dir), and the search
      stops with an error when the workers' masks differ after an episode.
  """

  def __init__(self, env: PruningEnv, root_dir: str, learner: str = DQN,
               num_episodes: int = 100, eval_interval: int = 10,
               agent_updates_per_episode: Optional[int] = None, batch_size: int = 64,
               best_criterion: str = "accuracy_at_target", log_every: int = 1,
               initial_policy: Optional[str] = None, prior_episode: bool = False,
               candidates: int = 3,
               rescore_steps: int = 50, checkpoint_seconds: float = 10.0, seed: int = 0,
               lockstep: Optional[distribute.Lockstep] = None):
    if learner not in LEARNERS:
      raise PurlError(f"search learner {learner!r} is unknown: use one of {LEARNERS}.")
    if best_criterion not in CRITERIA:
      raise PurlError(f"SearchRunner.best_criterion={best_criterion!r} is unknown: use one "
                      f"of {CRITERIA}.")
    if num_episodes < 1 or eval_interval < 1:
      raise PurlError("SearchRunner.num_episodes and SearchRunner.eval_interval must be at "
                      "least 1.")
    if candidates < 1 or rescore_steps < 0 or checkpoint_seconds < 0:
      raise PurlError(f"SearchRunner.candidates={candidates} must be at least 1, and "
                      f"SearchRunner.rescore_steps={rescore_steps} and "
                      f"SearchRunner.checkpoint_seconds={checkpoint_seconds} not negative.")
    if initial_policy and learner != DQN:
      raise PurlError("SearchRunner.initial_policy needs the DQN learner (method 'purl' or "
                      "'episodic').")
    self.env, self.root_dir, self.learner, self.seed = env, root_dir, learner, seed
    self.num_episodes, self.eval_interval = num_episodes, eval_interval
    self.updates = agent_updates_per_episode or 4 * env.num_layers
    self.batch_size, self.criterion, self.log_every = batch_size, best_criterion, log_every
    self.initial_policy = initial_policy
    self.prior_episode = bool(prior_episode)
    if self.prior_episode and env.prior_action is None:
      raise PurlError("SearchRunner.prior_episode needs PruningEnv.prior (e.g. 'erk') with "
                      "1.0 among PruningEnv.prior_factors: bind both, or unbind it.")
    self.candidates, self.rescore_steps = candidates, rescore_steps
    self.checkpoint_seconds = float(checkpoint_seconds)
    self.lockstep = lockstep if lockstep and lockstep.active else None
    # Episodes of the collecting (or random) policy, and all episodes evaluated.
    evaluated = evaluated_episodes(num_episodes, eval_interval)
    self.planned = num_episodes if learner == DQN else evaluated
    self.planned_evaluated = evaluated + int(bool(initial_policy)) + int(self.prior_episode)

  @property
  def planned_retrain_steps(self) -> int:
    """Train batches the whole search spends retraining: every step of every episode,
    and the candidates' re-scores."""
    return (self.planned_evaluated * self.env.episode_retrain_steps
            + self.candidates * self.rescore_steps)

  def run(self) -> SearchResult:
    """Runs the search to its end, resuming from root_dir's newest checkpoint."""
    self._setup()
    if not self._restore() and self.initial_policy:
      _load_policy(self.agent, self.initial_policy)
    try:
      kind = self._next_kind()
      while kind:
        self._run_episode(kind)
        kind = self._next_kind()
    except interrupt.Interrupted:
      # An episode changes the agent, the replay buffer and the record only once it has
      # ended, so what is in memory now is the last finished episode's state.
      if self._unsaved:
        self._save()
        self.checkpoint.sync()
      raise
    return self._finish()

  def _next_kind(self) -> Optional[str]:
    """The policy of the next episode (PRIOR, COLLECT, GREEDY, RANDOM); None once the
    search is over. The prior's episode comes first (with prior_episode); the DQN's greedy
    policy runs next (with an initial policy), after every `eval_interval` collect
    episodes and after the last."""
    record = self.record
    last = record.episodes[-1] if record.episodes else None
    if self.prior_episode and last is None:
      return PRIOR
    if self.learner == DQN and record.collected and (
        record.collected % self.eval_interval == 0 or record.collected == self.planned):
      if last.policy != GREEDY:
        return GREEDY
    elif self.initial_policy and (last is None or last.policy == PRIOR):
      return GREEDY
    if record.collected < self.planned:
      return COLLECT if self.learner == DQN else RANDOM
    return None

  def _run_episode(self, kind: str):
    """One episode; then the agent's updates (after a collect episode), the record and its
    observers, and, when due, the checkpoint."""
    record = self.record
    started = time.time()
    result = self._episode(kind)
    loss = None
    if kind in (COLLECT, RANDOM):
      record.collected += 1
      with self._phase("agent"):
        loss = self._train_agent() if self.learner == DQN else None
    with self._phase("summaries"):
      self._keep(result, loss)
      if kind == GREEDY or record.collected == self.planned:
        self.summaries.chart_best(record.best)
    record.seconds += time.time() - started
    record.failed_steps = self.env.failed_steps
    record.train_position = self.env.train_position
    self._unsaved = True
    due = (time.time() - self._saved_at >= self.checkpoint_seconds
           or self._next_kind() is None)
    if self.lockstep:  # the chief's clock decides
      due = bool(self.lockstep.agree(due))
    if due:
      self._save()
    self.progress(record)

  @contextlib.contextmanager
  def _phase(self, name: str):
    """Adds the wall time of the block to the record's seconds of phase `name`."""
    started = time.time()
    yield
    self.record.phase_seconds[name] += time.time() - started

  def _setup(self):
    """The agent (DQN), its replay buffer, policies and checkpoint, and the observers."""
    env = self.env
    self.record = _Record()
    tracked = {"record": self.record.variable,
               "episodes_record": self.record.episode_texts}
    if self.learner == DQN:
      self.agent, self.epsilon = agent_lib.make_agent(
          env.time_step_spec(), env.action_spec(), num_episodes=self.num_episodes,
          shaped_reward=isinstance(env.reward_fn, rewards.DenseReward)
          and not isinstance(env.reward_fn, rewards.EpisodicReward))
      self.replay = agent_lib.make_replay_buffer(self.agent)
      self.sampler = agent_lib.ReplaySampler(self.replay, self.batch_size,
                                             self.agent.train_sequence_length)
      self.train_many = tf.function(self._train_many, autograph=False)  # as tf-agents' own
      def add_episode(trajectories):  # compiled: eager, each write costs several ms
        for step in range(self.env.num_layers):  # (an op: a tf.function cannot return it)
          self.replay.add_batch(tf.nest.map_structure(lambda t, i=step: t[i:i + 1],
                                                      trajectories))

      self.add_episode = common.function(add_episode)
      greedy = py_tf_eager_policy.PyTFEagerPolicy(self.agent.policy, use_tf_function=True)
      self.policies = {GREEDY: greedy,
                       COLLECT: agent_lib.EpsilonGreedyPyPolicy(greedy, self.epsilon.value)}
      network = self.agent._q_network  # pylint: disable=protected-access
      self.q_max = tf.function(lambda observation: tf.reduce_max(network(observation)[0]),
                               autograph=False)
      tracked.update(agent=self.agent, replay_buffer=self.replay,
                     episodes=self.epsilon.episodes)
    self.checkpoint = tf.train.Checkpoint(**tracked)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(self.root_dir, files.SEARCH_CHECKPOINTS), max_to_keep=2)
    self.pool = CandidatePool(env, self.root_dir, self.candidates, self.rescore_steps,
                              self.criterion, self.lockstep)
    self.summaries = EpisodeSummaries(self.root_dir)
    self.progress = Progress(self.planned, self.planned_evaluated, self.log_every,
                             env.num_classes, env.dense_accuracy)
    self._first_observation = None
    self._saved_at, self._unsaved = time.time(), False

  def _restore(self) -> bool:
    """Continues from the newest readable checkpoint; False when there is none."""
    manager = self.manager
    if self.lockstep:  # every worker resumes from the chief's state
      chief = distribute.chief_dir(self.root_dir, self.lockstep.strategy)
      manager = tf.train.CheckpointManager(
          self.checkpoint, os.path.join(chief, files.SEARCH_CHECKPOINTS), max_to_keep=2)
    restored = files.restore_latest(self.checkpoint, manager, validate=self.record.load)
    self.env.failed_steps = self.record.failed_steps
    self.env.seek(self.record.train_position)
    if self.record.collected:
      _log.info(f"Resuming the search after episode {self.record.collected}/{self.planned} "
                f"from {self.root_dir}.")
    return bool(restored)

  def _policy(self, kind: str):
    """The episode's policy, its random draws seeded by (seed, episode, kind)."""
    seed = (self.seed, self.record.collected, LEARNERS.index(self.learner),
            (COLLECT, GREEDY, RANDOM, PRIOR).index(kind))
    if kind == PRIOR:
      return scripted_py_policy.ScriptedPyPolicy(
          self.env.time_step_spec(), self.env.action_spec(),
          [(self.env.num_layers, self.env.prior_action)])
    if kind == RANDOM:
      return agent_lib.random_policy(self.env.time_step_spec(), self.env.action_spec(), seed)
    if kind == COLLECT:
      self.policies[COLLECT].reseed(seed)
    return self.policies[kind]

  def _episode(self, kind: str) -> Episode:
    """One episode of the PRIOR, COLLECT, GREEDY or RANDOM policy."""
    start = time.time()
    interrupt.check()
    first = self.env.reset()
    trajectories = []  # added to the replay buffer once the episode is whole
    policy = self._policy(kind)
    if self.lockstep:
      policy = agent_lib.AgreedPyPolicy(policy, self.lockstep.agree)
    py_driver.PyDriver(self.env, policy, [trajectories.append], max_episodes=1,
                       end_episode_on_boundary=False).run(first, policy.get_initial_state(1))
    self._check_masks()
    if kind == COLLECT or (kind == PRIOR and self.learner == DQN):
      self.add_episode(nest_utils.stack_nested_arrays(trajectories))
    steps = self.env.episode
    self._first_observation = first.observation
    return Episode(
        episode=self.record.collected, policy=kind,
        episode_return=float(sum(s.reward for s in steps)), accuracy=steps[-1].accuracy,
        sparsity=steps[-1].sparsity,
        epsilon=self.policies[COLLECT].epsilon if kind == COLLECT else float(kind == RANDOM),
        seconds=time.time() - start, allocation={s.layer: s.layer_sparsity for s in steps},
        levels=[s.level for s in steps], rewards=[s.reward for s in steps],
        retrain_seconds=sum(s.retrain_seconds for s in steps),
        measure_seconds=sum(s.measure_seconds for s in steps),
        mask_seconds=sum(s.mask_seconds for s in steps))

  def _check_masks(self):
    """Multi-worker: raises PurlError on every worker when any worker's masks differ from
    the chief's."""
    if not self.lockstep:
      return
    local = self.env.mask_digest()
    if self.lockstep.any(not np.array_equal(local, self.lockstep.agree(local))):
      raise PurlError(f"the workers' masks differ after episode {self.record.collected}: "
                      "the workers drifted apart. Check that every worker runs the same "
                      "config and code, and rerun to resume from the chief's checkpoint.")

  def _train_agent(self) -> Optional[float]:
    """DQN updates on the replay buffer; their mean loss (None: too few transitions yet)."""
    self.epsilon.episodes.assign(self.record.collected)
    if self.replay.num_frames() < self.batch_size:
      return None
    experience = self.sampler.sample((self.seed, self.record.collected, 7), self.updates)
    return None if experience is None else float(self.train_many(experience))

  def _train_many(self, experience):
    """DQN updates on each of a stack of batches, in one graph; their mean loss."""
    count = tf.shape(tf.nest.flatten(experience)[0])[0]

    def update(i, total):
      batch = tf.nest.map_structure(lambda t: t[i], experience)
      return i + 1, total + self.agent.train(batch).loss

    _, total = tf.while_loop(lambda i, _: i < count, update, (0, tf.constant(0.0)))
    return total / tf.cast(count, tf.float32)

  def _keep(self, result: Episode, loss: Optional[float] = None):
    """Records an episode, updates the best, and shows the record to the candidate pool
    and the summaries (with the agent's scalars)."""
    record = self.record
    record.add(result)
    if is_better(result, record.best, self.env.target, self.criterion):
      record.best = result
    self.pool(record)
    scalars = {}
    if self.learner == DQN:
      scalars["agent/q_max_first_state"] = self.q_max(self._first_observation[None])
    if result.policy == COLLECT:
      scalars["agent/epsilon"] = result.epsilon
      if loss is not None:
        scalars["agent/loss"] = loss
    self.summaries(record, scalars)

  def _save(self):
    """Checkpoints everything after an episode, then rewrites episodes.json."""
    record = self.record
    record.store()
    saving = time.time()
    self.pool.release(self.checkpoint.sync)
    # Written in the background; a kill mid-write leaves a checkpoint that restore_latest
    # skips for the one before.
    self.manager.save(checkpoint_number=record.collected,
                      options=tf.train.CheckpointOptions(enable_async=True))
    files.write_text(os.path.join(self.root_dir, files.EPISODES), record.episodes_json())
    saved = time.time() - saving  # stored with the next episode's checkpoint
    record.seconds += saved
    record.phase_seconds["checkpoint"] += saved
    self._saved_at, self._unsaved = time.time(), False

  def _finish(self) -> SearchResult:
    """Saves the greedy policy (DQN), re-scores the candidates; the search's result."""
    self.checkpoint.sync()  # the last checkpoint written
    self.pool.release(self.checkpoint.sync)
    if self.learner == DQN:
      policy_saver.PolicySaver(self.agent.policy, batch_size=None).save(
          os.path.join(self.root_dir, files.POLICY_DIR))
    record = self.record
    chosen, state, selection = self.pool.choose(record)
    return SearchResult(best=record.best, chosen=chosen, chosen_state=state,
                        selection=selection, episodes=record.episodes,
                        seconds=record.seconds, failed_steps=record.failed_steps,
                        phase_seconds=dict(record.phase_seconds),
                        retrain_steps=len(record.episodes) * self.env.episode_retrain_steps
                        + len(selection.get("candidates", ())) * self.rescore_steps)


def _load_policy(agent, path: str):
  """Starts the agent's Q-network (and its target) from a saved policy's weights."""
  try:
    saved = tf.saved_model.load(os.path.expanduser(path)).model_variables
  except Exception as error:
    raise PurlError(f"SearchRunner.initial_policy={path!r} is not a policy saved by purl_tf "
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
  _log.info(f"Q-network initialised from the policy at {path}.")
