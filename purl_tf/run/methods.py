"""The ways a run chooses its allocation, each picked by name (`train_eval.method`).

  purl              PuRL: the SearchRunner's DQN with the environment's dense reward.
  episodic          the same agent and MDP with the episodic (AMC-style) reward.
  random            random search on the SearchRunner (tf-agents' RandomPyPolicy), as
                    many evaluated allocations as the PuRL search of the same config.
  global_magnitude  one magnitude threshold over all prunable weights at the target.
  lamp              one threshold over LAMP's layer-adaptive magnitude scores (Lee et al.).
  erk               Erdős–Rényi-Kernel layer densities (Evci et al., RigL).
  uniform           every prunable layer at the target.
  uniform_keep_ends the first and last prunable layers dense, the others uniform.
  gradual           tfmot's PolynomialDecay from dense to one of the above allocations
                    (ERK unless gradual.allocation says otherwise) over the retrain steps of
                    the PuRL search, then the fine-tune budget (it prunes while it trains;
                    gradual.py).

Every method but gradual hands its allocation to the same fine-tune from the same dense
weights; every one writes the same results.json (results.RunResult).

Channel granularity (train_eval.granularity = 'channel'): an allocation is the fraction of
each channel group's channels removed, the target a fraction of the dense FLOPs. The
searched methods are the same (the environment enforces the FLOPs target); the one-shot
ones are pruning.channels.allocations': uniform, uniform_keep_ends, global_filter (one
threshold on filter L1 over its group's mean) and bn_scale (one threshold on batch-norm
|gamma|), each taken at the first rung of its ladder that reaches the target, so that every
method removes at least the target's FLOPs.
"""
import dataclasses
import time
from typing import List, Optional

import tf_keras as keras

from purl_tf import pruning
from purl_tf.pruning.channels import ChannelController
from purl_tf.pruning.channels import allocations as channel_allocations
from purl_tf.rl import rewards, search
from purl_tf.runtime import distribute
from purl_tf.rl.env import PruningEnv
from purl_tf.errors import PurlError

SEARCHED = {"purl": search.DQN, "episodic": search.DQN, "random": search.RANDOM}
ONE_SHOT = pruning.ALLOCATIONS
GRADUAL = "gradual"
METHODS = (*SEARCHED, *ONE_SHOT, GRADUAL)
WEIGHT, CHANNEL = "weight", "channel"
GRANULARITIES = (WEIGHT, CHANNEL)
CHANNEL_ONE_SHOT = tuple(channel_allocations.CHANNEL_ALLOCATIONS)
CHANNEL_METHODS = (*SEARCHED, *CHANNEL_ONE_SHOT)


def check(method: str, granularity: str = WEIGHT):
  """Raises a one-line PurlError for a granularity not in GRANULARITIES, or a method name
  that is not one of the granularity's methods (METHODS, CHANNEL_METHODS)."""
  if granularity not in GRANULARITIES:
    raise PurlError(f"train_eval.granularity={granularity!r} is unknown: use one of "
                    f"{list(GRANULARITIES)}.")
  if granularity == CHANNEL:
    if method not in CHANNEL_METHODS:
      kind = "prunes weights, not channels" if method in METHODS else "is unknown"
      raise PurlError(f"train_eval.method={method!r} {kind} (train_eval.granularity="
                      f"'channel'): use one of {list(CHANNEL_METHODS)}.")
  elif method not in METHODS:
    if method in CHANNEL_METHODS:
      raise PurlError(f"train_eval.method={method!r} removes channels: bind "
                      "train_eval.granularity='channel', or use one of "
                      f"{list(METHODS)}.")
    raise PurlError(f"train_eval.method={method!r} is unknown: use one of {list(METHODS)}.")


def granularity_of(controller) -> str:
  """CHANNEL for a ChannelController, else WEIGHT."""
  return CHANNEL if isinstance(controller, ChannelController) else WEIGHT


def is_one_shot(method: str, granularity: str = WEIGHT) -> bool:
  """Whether `method` chooses by a one-shot rule at `granularity` (no search, no ramp)."""
  return method in (CHANNEL_ONE_SHOT if granularity == CHANNEL else ONE_SHOT)


def reward_fn(method: str):
  """The reward the method's environment pays: None for the environment's own (dense
  unless bound otherwise), the episodic reward for 'episodic'."""
  return rewards.EpisodicReward() if method == "episodic" else None


@dataclasses.dataclass
class Choice:
  """How a method chose its allocation: what it cost and what it measured."""
  allocation: Optional[dict]  # layer -> sparsity (None: gradual chooses while it trains)
  seconds: float = 0.0
  episodes: int = 0  # allocations evaluated on the reward split
  retrain_steps: int = 0  # train batches spent choosing (gradual: its ramp)
  overhead_share: float = 0.0  # of `seconds`, outside retraining and measuring
  seconds_by_part: dict = dataclasses.field(default_factory=dict)  # of a search
  failed_steps: int = 0
  best_episode: int = -1
  best_accuracy: Optional[float] = None  # reward split, as the search measured it
  rescored_accuracy: Optional[float] = None  # reward split, when the choice re-scored it
  selection: dict = dataclasses.field(default_factory=dict)  # how a search chose
  start_state: Optional[str] = None  # the network the search measured (.npz), to fine-tune
  warnings: List[str] = dataclasses.field(default_factory=list)  # what the rule could not do


def search_steps(env: PruningEnv, root_dir: str, seed: int) -> int:
  """Train batches a PuRL search of the bound config would spend retraining (random
  search and the episodic reward spend as many): the budget gradual prunes over and
  train_eval.match_search_steps adds to a one-shot method's fine-tune."""
  return search.SearchRunner(env, root_dir, seed=seed).planned_retrain_steps


def channel_allocation(method: str, dense: keras.Model, controller: ChannelController,
                       target: float) -> channel_allocations.ChannelAllocation:
  """The one-shot channel allocation `method` at the first rung of its ladder that removes
  at least `target` of the dense FLOPs.

  channels.allocate gives the rung nearest the target, up to half a step below it: a step
  can be a whole channel of the first conv (4 % of LeNet-5's FLOPs), more than the searches
  (which enforce the target exactly) may leave out. From a rung r below the target it asks
  again at r + 2^k (target - r), k = 1, 2, ...: the first answer past r is the next rung up,
  since the request then first passes the midpoint of r and that rung.
  """
  found = channel_allocations.allocate(method, dense, controller.groups, target)
  below, asked = found.flops_removed, target
  while found.flops_removed < target:
    asked = below + 2.0 * (asked - below)
    if asked >= 1.0:
      raise PurlError(f"{method} cannot remove {target} of the FLOPs: lower "
                      "train_eval.target_flops.")
    found = channel_allocations.allocate(method, dense, controller.groups, asked)
  return found


def choose(method: str, env: PruningEnv, root_dir: str, seed: int,
           lockstep: Optional[distribute.Lockstep] = None,
           dense: Optional[keras.Model] = None) -> Choice:
  """Runs (or resumes) `method`'s choice of an allocation at the environment's target
  (a search in lockstep with the other workers when `lockstep` is given). `dense` is the
  dense plain model, which the one-shot channel rules read (channel granularity only).

  Leaves the controller reset to the dense state.
  """
  controller = env.controller
  granularity = granularity_of(controller)
  check(method, granularity)
  if granularity == CHANNEL and method in CHANNEL_ONE_SHOT:
    started = time.time()
    found = channel_allocation(method, dense, controller, env.target)
    return Choice(dict(zip(controller.names, found)), seconds=time.time() - started,
                  warnings=list(found.warnings))
  if method in ONE_SHOT:
    started = time.time()
    allocation = pruning.allocate(controller, method, env.target)
    return Choice(allocation, seconds=time.time() - started)
  if method == GRADUAL:
    return Choice(None, retrain_steps=search_steps(env, root_dir, seed))
  runner = search.SearchRunner(env, root_dir, learner=SEARCHED[method], seed=seed,
                               lockstep=lockstep)
  found = runner.run()
  controller.reset()
  chosen = found.chosen
  return Choice(chosen.allocation, seconds=found.seconds, episodes=len(found.episodes),
                retrain_steps=found.retrain_steps, overhead_share=found.overhead_share,
                seconds_by_part=found.seconds_by_part,
                failed_steps=found.failed_steps, best_episode=chosen.episode,
                best_accuracy=chosen.accuracy,
                rescored_accuracy=found.selection.get("rescored_accuracy"),
                selection=found.selection, start_state=found.chosen_state)
