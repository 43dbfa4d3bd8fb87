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
"""
import dataclasses
import time
from typing import Optional

from purl_tf import pruning
from purl_tf.rl import rewards, search
from purl_tf.runtime import distribute
from purl_tf.rl.env import PruningEnv
from purl_tf.errors import PurlError

SEARCHED = {"purl": search.DQN, "episodic": search.DQN, "random": search.RANDOM}
ONE_SHOT = pruning.ALLOCATIONS
GRADUAL = "gradual"
METHODS = (*SEARCHED, *ONE_SHOT, GRADUAL)


def check(method: str):
  """Raises a one-line PurlError for a method name that is not one of METHODS."""
  if method not in METHODS:
    raise PurlError(f"train_eval.method={method!r} is unknown: use one of {list(METHODS)}.")


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


def search_steps(env: PruningEnv, root_dir: str, seed: int) -> int:
  """Train batches a PuRL search of the bound config would spend retraining (random
  search and the episodic reward spend as many): the budget gradual prunes over and
  train_eval.match_search_steps adds to a one-shot method's fine-tune."""
  return search.SearchRunner(env, root_dir, seed=seed).planned_retrain_steps


def choose(method: str, env: PruningEnv, root_dir: str, seed: int,
           lockstep: Optional[distribute.Lockstep] = None) -> Choice:
  """Runs (or resumes) `method`'s choice of an allocation at the environment's target
  (a search in lockstep with the other workers when `lockstep` is given).

  Leaves the controller reset to the dense state.
  """
  check(method)
  controller = env.controller
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
