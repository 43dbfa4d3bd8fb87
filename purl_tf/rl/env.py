"""The pruning MDP as a tf-agents PyEnvironment.

An episode is one pass over the prunable layers in network order. At step t the action
picks a level from a grid; layer t is pruned to it, the network is retrained for a few
batches with all masks fixed, its batch-norm statistics are re-estimated on a few more
(MaskedTrainer.recalibrate), and its accuracy on the reward split is measured. The
reward (see rewards.py) follows at once. Reset restores the dense weights from memory.

Observation: float32 (NUM_FEATURES,), each feature roughly in [0, 1], independent of
the network's depth so that a learned policy transfers to other networks:
   0 position: t / (L - 1)
   1 is_conv   2 is_depthwise   3 is_dense
   4 kernel side / 7 (clipped)   5 stride / 4 (clipped)
   6 log2(input channels) / 12   7 log2(output channels) / 12
   8 log10(layer weights) / 8
   9 layer's share of prunable weights   10 layer's share of prunable FLOPs
  11 share of prunable weights in layers already pruned
  12 global sparsity so far   13 target sparsity
  14 sparsity the remaining layers must average to reach the target (clipped to 1)
  15 accuracy / dense accuracy (clipped to 1.5)
  16 previous level / largest level of the previous layer

Channel granularity (a pruning.channels.ChannelController): a step is one channel group,
its level the fraction of the group's channels removed (least important first), the global
sparsity the fraction of the dense FLOPs removed (exact), and the target a FLOPs fraction.
What the target needs is reckoned with controller.removed_fraction (groups share kernels,
so per-group shares do not add up): feature 11 is then the FLOPs fraction that removing the
earlier groups' channels (all but one each) would remove. Only mode 'sparsity' applies;
the default grid is CHANNEL_LEVELS.

With `prior` set (e.g. 'lamp'), an action no longer picks a sparsity from scratch: it
scales the layer's density under that one-shot allocation at the target by one of
`prior_factors` (1.0 keeps the prior's level), so every episode explores around a strong
allocation instead of among mostly ruinous ones. At channel granularity the prior is a
channel allocation ('uniform', 'uniform_keep_ends', 'global_filter', 'bn_scale') and the
factors scale each group's kept fraction of channels (its width).
"""
import dataclasses
import logging
import math
import time
from typing import List, Optional, Sequence

import gin
import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from purl_tf import pruning
from purl_tf.rl import rewards
from purl_tf.runtime import interrupt
from purl_tf.errors import PurlError
from purl_tf.pruning import SPARSITY, THRESHOLD, PruningController
from purl_tf.pruning.accounting import KINDS
from purl_tf.pruning.channels import CHANNEL_ALLOCATIONS, ChannelController
from purl_tf.pruning.training import MaskedTrainer

_log = logging.getLogger(__name__)

NUM_FEATURES = 17
SPARSITY_LEVELS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)
# Fractions of a group's channels removed (channel granularity): FLOPs fall roughly with
# the square of a width, so the grid is even and stops short of emptying a group.
CHANNEL_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
THRESHOLD_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0)
# Density multipliers of the prior's level, in the order of rising sparsity.
PRIOR_FACTORS = (4.0, 2.0, 1.4, 1.0, 0.7, 0.5, 0.25)
# Width multipliers of a channel prior's level: a group's FLOPs fall with its width and
# its consumers' (about the square at a uniform ratio), so the steps are narrower.
CHANNEL_PRIOR_FACTORS = (1.5, 1.25, 1.1, 1.0, 0.9, 0.8, 0.67)
PRIORS = {"lamp": pruning.lamp, "erk": pruning.erk, "global_magnitude": pruning.global_magnitude,
          "uniform_keep_ends": pruning.uniform_keep_ends}


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """One step of an episode, as the search logs it."""
  layer: str
  action: int
  level: float
  layer_sparsity: float
  sparsity: float  # global, after the step
  accuracy: float  # reward split, after the step's retrain
  reward: float
  loss: float  # mean retrain loss of the step; nan when the step failed and was undone
  retrain_seconds: float  # wall time of the step's retrain
  measure_seconds: float  # wall time of the step's accuracy measurement
  mask_seconds: float  # wall time of setting the layer's mask (and of an undo)


@gin.configurable(denylist=["controller", "trainer", "train_stream", "reward_data"])
class PruningEnv(py_environment.PyEnvironment):
  """Prunes one layer per step; auto-resets after the last layer.

  Args:
    controller: PruningController of the wrapped model (its snapshot is the dense state),
      or a pruning.channels.ChannelController (channel granularity, see above).
    trainer: MaskedTrainer of the same model.
    train_stream: start batch -> endless train batches (data.Splits.train_stream). One
      stream serves the whole search; `train_position` counts the batches drawn from it,
      and `seek()` starts it again there (a resumed search retrains on what it would have).
    reward_data: batched reward split (every accuracy the agent sees).
    target_sparsity: target global sparsity of the prunable weights, in (0, 1) (for a
      ChannelController: the fraction of the dense FLOPs to remove).
    mode: 'sparsity' (levels are fractions) or 'threshold' (levels are alpha, pruning
      |w| <= alpha * std(w)).
    levels: the action grid, ascending (default SPARSITY_LEVELS, THRESHOLD_LEVELS, or
      CHANNEL_LEVELS for a ChannelController).
    retrain_steps: train batches after each pruning step (0: none).
    final_retrain_steps: further train batches after the last step, before the episode's
      final measurement (0: none). The return rests on that measurement: replaying ERK at
      0.95 on ResNet-20 with 6 batches a step, it spread over 0.82-0.89 from episode to
      episode; 24 batches more narrowed it to 0.93-0.95.
    recalibrate_batches: train batches whose batch-norm statistics replace the moving
      ones before each measurement (forward passes only; 0: keep the moving statistics,
      which lag far behind a freshly pruned network).
    reward_fn: a rewards.DenseReward or rewards.EpisodicReward (default DenseReward()).
    enforce_target: in sparsity mode, raise a chosen level to the lowest one that keeps the
      target reachable when every later layer takes the largest level (AMC's constraint),
      so that every episode ends at the target and the agent learns where to put the
      sparsity. The agent's action is kept in the replay buffer; the level applied is
      recorded in the episode.
    prior: None, or the one-shot allocation ('lamp', 'erk', 'global_magnitude',
      'uniform_keep_ends'; for channels one of CHANNEL_ALLOCATIONS) at the target whose
      per-layer density (per-group width) each action scales (sparsity mode); `levels` is
      then not used.
    prior_factors: the density multipliers of the prior's actions, descending (so that
      sparsity rises with the action index); a layer keeps at least one weight, a group
      one channel. Default PRIOR_FACTORS, or CHANNEL_PRIOR_FACTORS for channels.
  """

  def __init__(self, controller: PruningController, trainer: MaskedTrainer, train_stream,
               reward_data, target_sparsity: float = 0.9, mode: str = SPARSITY,
               levels: Optional[Sequence[float]] = None, retrain_steps: int = 10,
               final_retrain_steps: int = 0, recalibrate_batches: int = 2, reward_fn=None,
               enforce_target: bool = True,
               prior: Optional[str] = None, prior_factors: Optional[Sequence[float]] = None):
    super().__init__(handle_auto_reset=True)
    if not 0.0 < target_sparsity < 1.0:
      raise PurlError(f"target sparsity {target_sparsity} is outside (0, 1): bind "
                      "train_eval.target_sparsity to a fraction such as 0.9.")
    if mode not in (SPARSITY, THRESHOLD):
      raise PurlError(f"PruningEnv.mode={mode!r} is unknown: use '{SPARSITY}' or "
                      f"'{THRESHOLD}'.")
    self.channels = isinstance(controller, ChannelController)
    if self.channels and mode != SPARSITY:
      raise PurlError(f"channel pruning takes PruningEnv.mode='{SPARSITY}' (levels are "
                      "fractions of a group's channels): unbind PruningEnv.mode.")
    default = (CHANNEL_LEVELS if self.channels else
               SPARSITY_LEVELS if mode == SPARSITY else THRESHOLD_LEVELS)
    levels = tuple(float(x) for x in (levels or default))
    if list(levels) != sorted(levels) or len(levels) < 2:
      raise PurlError(f"PruningEnv.levels={levels} must be at least two ascending values.")
    if mode == SPARSITY and not all(0.0 <= x < 1.0 for x in levels):
      raise PurlError(f"PruningEnv.levels={levels}: sparsity levels must lie in [0, 1).")
    self.controller = controller
    self.trainer = trainer
    self.target = float(target_sparsity)
    self.mode = mode
    self.levels = levels
    self.prior = prior
    if prior_factors is None:
      prior_factors = CHANNEL_PRIOR_FACTORS if self.channels else PRIOR_FACTORS
    self.prior_factors = tuple(float(f) for f in prior_factors)
    # choices[layer, action]: the level each action sets on each layer, ascending.
    self._choices = self._action_levels(prior, self.prior_factors)
    self.retrain_steps = int(retrain_steps)
    self.final_retrain_steps = int(final_retrain_steps)
    if min(recalibrate_batches, retrain_steps, final_retrain_steps) < 0:
      raise PurlError(f"PruningEnv.retrain_steps={retrain_steps}, final_retrain_steps="
                      f"{final_retrain_steps} and recalibrate_batches={recalibrate_batches} "
                      "must not be negative.")
    self.recalibrate_batches = int(recalibrate_batches)
    self.reward_fn = reward_fn or rewards.DenseReward()
    self.enforce_target = bool(enforce_target) and mode == SPARSITY
    self.num_layers = controller.num_layers
    self._check_reachable()
    self._train_stream = train_stream
    self._train = None  # the distributed iterator, opened at the first step
    self.train_position = 0
    self.failed_steps = 0  # steps undone because the retrain loss was not finite
    self._reward_data = trainer.distribute(reward_data)
    self.dense_accuracy = trainer.evaluate(self._reward_data)
    if self.dense_accuracy <= 0.0:
      _log.warning("the dense model scores 0 on the reward split, so accuracy cannot guide "
                   "the search: train it first (pretrain.epochs) or check the labels.")
      self.dense_accuracy = 1e-3  # A floor that keeps the relative accuracy finite.
    infos = controller.infos
    self._static = np.array([self._static_features(i, info) for i, info in enumerate(infos)],
                            np.float32)
    self._share_before = self._shares_before()
    self._action_spec = array_spec.BoundedArraySpec(
        (), np.int64, minimum=0, maximum=self._choices.shape[1] - 1, name="level")
    self._observation_spec = array_spec.BoundedArraySpec(
        (NUM_FEATURES,), np.float32, minimum=0.0, maximum=1.5, name="observation")
    self.episode: List[StepRecord] = []
    self._t = 0
    self._accuracy = self.dense_accuracy
    self._previous_level = 0.0

  def _action_levels(self, prior, factors) -> np.ndarray:
    """float64 (layers, actions): the grid on every layer, or the prior's scaled levels."""
    if prior is None:
      return np.tile(np.asarray(self.levels, np.float64), (self.controller.num_layers, 1))
    known = sorted(CHANNEL_ALLOCATIONS if self.channels else PRIORS)
    if prior not in known or self.mode != SPARSITY:
      raise PurlError(f"PruningEnv.prior={prior!r} is not one of {known} in '{SPARSITY}' "
                      "mode: choose one, or unbind it.")
    if list(factors) != sorted(factors, reverse=True) or len(factors) < 2 or min(factors) <= 0:
      raise PurlError(f"PruningEnv.prior_factors={factors} must be at least two positive, "
                      "descending density multipliers.")
    if self.channels:
      densities = 1.0 - self.controller.one_shot(prior, self.target)
    else:
      self.controller.reset()
      PRIORS[prior](self.controller, self.target)
      densities = 1.0 - self.controller.sparsities()
      self.controller.reset()
    most = 1.0 - 1.0 / self.controller.sizes  # a layer keeps one weight, a group one channel
    levels = 1.0 - densities[:, None] * np.asarray(factors)[None, :]
    return np.clip(levels, 0.0, most[:, None])

  @property
  def prior_action(self) -> Optional[int]:
    """The action that keeps the prior's level (factor 1.0); None without such a prior."""
    if self.prior is None or 1.0 not in self.prior_factors:
      return None
    return self.prior_factors.index(1.0)

  @property
  def episode_retrain_steps(self) -> int:
    """Train batches one episode spends retraining (recalibration not counted)."""
    return self.num_layers * self.retrain_steps + self.final_retrain_steps

  def _shares_before(self) -> np.ndarray:
    """float64 (num_layers + 1,): per step t, the share of the pruning's measure held by
    the layers before t: their share of the prunable weights, or (channels) the FLOPs
    fraction that removing all but one channel of each group before t would remove."""
    if not self.channels:
      return np.concatenate([[0.0], np.cumsum([i.param_share for i in self.controller.infos])])
    return np.array([self.controller.removed_fraction([1.0] * t + [0.0] * (self.num_layers - t))
                     for t in range(self.num_layers + 1)])

  def _check_reachable(self):
    """Raises PurlError when even the largest level everywhere misses the target."""
    if self.channels:
      best = self.controller.removed_fraction(self._choices[:, -1])
    elif self.mode == SPARSITY:
      sizes = self.controller.sizes
      best = float(np.sum(self._choices[:, -1] * sizes) / np.sum(sizes))
    else:
      self.controller.reset()
      best = self.controller.apply([self.levels[-1]] * self.num_layers, THRESHOLD)
      best = float(np.sum(best * self.controller.sizes) / np.sum(self.controller.sizes))
      self.controller.reset()
    if best < self.target:
      measure = "of the FLOPs removed" if self.channels else "global sparsity"
      raise PurlError(f"the action grid reaches at most {best:.3f} {measure}, below the "
                      f"target {self.target}: add larger PruningEnv.levels or lower the target.")

  def _lowest_level(self) -> float:
    """The smallest level layer t may take (0.0 when the target is not enforced)."""
    if not self.enforce_target:
      return 0.0
    if self.channels:
      return self._lowest_channel_level()
    sizes = self.controller.sizes
    t = self._t
    pruned = int(round(float(np.sum(sizes[:t] * self.controller.sparsities()[:t]))))
    later = sum(int(round(level * size))
                for level, size in zip(self._choices[t + 1:, -1], sizes[t + 1:]))
    needed = int(np.ceil(self.target * np.sum(sizes) - 1e-9)) - pruned - later
    for level in self._choices[t]:
      if int(round(level * sizes[t])) >= needed:
        return float(level)
    return float(self._choices[t, -1])

  def _lowest_channel_level(self) -> float:
    """The smallest level group t may take so that the FLOPs removed still reach the target
    when every later group takes its largest level (exact: controller.removed_fraction)."""
    t = self._t
    levels = self.controller.sparsities().copy()  # the levels in force before t
    levels[t + 1:] = self._choices[t + 1:, -1]
    for level in self._choices[t]:
      levels[t] = level
      if self.controller.removed_fraction(levels) >= self.target:
        return float(level)
    return float(self._choices[t, -1])

  def _static_features(self, position, info):
    last = max(self.num_layers - 1, 1)
    kind = [float(info.kind == k) for k in KINDS]
    return [position / last, *kind, min(info.kernel / 7.0, 1.0), min(info.stride / 4.0, 1.0),
            math.log2(max(info.in_channels, 1)) / 12.0,
            math.log2(max(info.out_channels, 1)) / 12.0,
            math.log10(max(info.params, 1)) / 8.0, info.param_share, info.flop_share]

  def observation_spec(self):
    return self._observation_spec

  def action_spec(self):
    return self._action_spec

  def _observe(self) -> np.ndarray:
    layer = min(self._t, self.num_layers - 1)
    sparsity = self.controller.global_sparsity()
    left = 1.0 - self._share_before[layer]
    needed = (self.target - sparsity) / left if left > 0 else 0.0
    dynamic = [self._share_before[layer], sparsity, self.target,
               float(np.clip(needed, 0.0, 1.0)),
               min(self._accuracy / self.dense_accuracy, 1.5),
               self._previous_level / self._largest_previous()]
    return np.concatenate([self._static[layer], np.asarray(dynamic, np.float32)]).astype(
        np.float32)

  def _largest_previous(self) -> float:
    """The largest level of the layer pruned last (of the first layer at the start)."""
    return float(self._choices[max(self._t - 1, 0), -1]) or 1.0

  def seek(self, position: int):
    """Continues the train stream at batch `position` (e.g. from a checkpoint)."""
    self._train = None
    self.train_position = int(position)

  def _next_batches(self, count: int):
    """The train stream's iterator, after counting the `count` batches about to be drawn."""
    if self._train is None:
      self._train = self.trainer.stream(self._train_stream(self.train_position))
    self.train_position += count
    return self._train

  def retrain(self, steps: int) -> float:
    """Trains the network as it is (masks fixed) on the stream's next `steps` batches,
    then re-estimates its batch-norm statistics on the next `recalibrate_batches`; the
    mean train loss (0.0 for no steps; nan when training diverged, and then the
    statistics are left alone)."""
    loss = self.trainer.train(self._next_batches(steps), steps) if steps else 0.0
    if np.isfinite(loss) and self.recalibrate_batches and self.trainer.has_batch_norm:
      self.trainer.recalibrate(self._next_batches(self.recalibrate_batches),
                               self.recalibrate_batches)
    return loss

  def measure(self) -> float:
    """The network's accuracy on the reward split, as a fraction."""
    return self.trainer.evaluate(self._reward_data)

  @property
  def num_classes(self) -> int:
    """Classes of the network's output (chance accuracy is 1 / num_classes)."""
    return int(self.controller.model.outputs[0].shape[-1])

  def mask_digest(self) -> np.ndarray:
    """Per layer, the kept weights and a checksum of their positions (controller's)."""
    return self.controller.mask_digest()

  def save_network(self, path: str):
    """Writes the network as it is now (masks and weights) to `path` (.npz)."""
    self.controller.save_state(path)

  def rescore(self, path: str, position: int, steps: int) -> float:
    """The reward-split accuracy of the network saved at `path` after `steps` more train
    batches from stream position `position`, with a fresh optimizer. Leaves the env at
    that retrained network (save_network keeps it)."""
    self.controller.load_state(path)
    self.trainer.reset_optimizer()
    self.seek(position)
    self.retrain(steps)
    return self.measure()

  def _reset(self):
    self.controller.reset()
    self.trainer.reset_optimizer()
    self._t = 0
    self._accuracy = self.dense_accuracy
    self._previous_level = 0.0
    self.episode = []
    return ts.restart(self._observe())

  def _step(self, action):
    interrupt.check()
    action = int(action)
    level = max(float(self._choices[self._t, action]), self._lowest_level())
    previous_sparsity = self.controller.global_sparsity()
    started = time.perf_counter()
    self.controller.save_step(self._t)
    self.controller.set_level(self._t, level, self.mode)
    mask_seconds = time.perf_counter() - started
    started = time.perf_counter()
    last = self._t == self.num_layers - 1
    loss = self.retrain(self.retrain_steps + (self.final_retrain_steps if last else 0))
    retrain_seconds = time.perf_counter() - started
    failed = not np.isfinite(loss)
    if failed:  # Undo the step: weights as before it, the layer unpruned.
      started = time.perf_counter()
      self.controller.undo_step()
      mask_seconds += time.perf_counter() - started
      self.trainer.reset_optimizer()
      self.failed_steps += 1
      _log.warning(f"retrain loss {loss} after pruning {self.controller.names[self._t]} to "
                   f"{level}: step undone (lower MaskedTrainer.learning_rate if this repeats).")
      level = 0.0  # the level in force: what the observation and the episode record show
    started = time.perf_counter()
    accuracy = self._accuracy if failed else self.measure()
    measure_seconds = time.perf_counter() - started
    sparsity = self.controller.global_sparsity()
    layer_sparsity = self.controller.sparsity(self._t)
    outcome = rewards.Outcome(step=self._t, num_steps=self.num_layers, accuracy=accuracy,
                              previous_accuracy=self._accuracy,
                              dense_accuracy=self.dense_accuracy, sparsity=sparsity,
                              previous_sparsity=previous_sparsity, target=self.target)
    reward = self.reward_fn.failed(outcome) if failed else self.reward_fn(outcome)
    self.episode.append(StepRecord(self.controller.names[self._t], action, level,
                                   layer_sparsity, sparsity, accuracy, reward, loss,
                                   retrain_seconds, measure_seconds, mask_seconds))
    self._accuracy = accuracy
    self._previous_level = level
    self._t += 1
    observation = self._observe()
    if self._t == self.num_layers:
      return ts.termination(observation, np.float32(reward))
    return ts.transition(observation, np.float32(reward), discount=np.float32(1.0))
