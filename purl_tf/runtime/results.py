"""What a run writes to results.json, whatever the method that chose its allocation.

Granularity 'weight' (the paper's) prunes weights: global_sparsity is the share of the
prunable weights removed. Granularity 'channel' removes whole channels: global_sparsity and
target_sparsity are then fractions of the dense FLOPs removed (target_sparsity equals
target_flops), the allocation holds each channel group's fraction of channels removed, the
pruned model is the physically thinner one, and `speed` holds its measured speed beside the
dense network's (run/speed.measure_speed).
"""
import dataclasses
from typing import List, Optional

# A global sparsity within this of the target reaches it: one-shot allocations land within
# a weight per layer of their target, which on a small network is ~1e-4.
TARGET_TOLERANCE = 1e-3
# A pruned model that keeps less than this share of the dense model's accuracy above
# chance (1 / classes) is near chance; less than FAR_BELOW_SHARE, far below dense (on
# 10 classes at 99 % dense: below 0.81, a fifth of what the dense model knows lost).
NEAR_CHANCE_SHARE = 0.1
FAR_BELOW_SHARE = 0.8
# The fine-tuned model's reward-split accuracy this far (fraction) below what the choice
# measured for its allocation means the fine-tune lost what the search found.
FINETUNE_LOSS = 0.02


def reached_target(sparsity: float, target: float) -> bool:
  """Whether a global sparsity (fraction) reaches the target, the one definition."""
  return bool(sparsity >= target - TARGET_TOLERANCE)


@dataclasses.dataclass
class RunResult:
  """results.json of one run. Accuracies and sparsities are fractions, seconds wall time."""
  method: str  # how the allocation was chosen (methods.METHODS)
  model: str
  dataset: str
  target_sparsity: float  # (channel granularity: target_flops)
  reached_target: bool  # reached_target(global_sparsity, target_sparsity)
  global_sparsity: float  # of the prunable weights (channel: of the FLOPs), final model
  allocation: dict  # layer name -> sparsity (channel: group -> channels removed), final
  dense_test_accuracy: float
  pruned_test_accuracy: float
  pruned_reward_accuracy: float
  dense_reward_accuracy: float
  params_total: int
  params_remaining: int
  prunable_params: int
  flops_total: int  # of the prunable layers (channel granularity: of the whole model)
  flops_remaining: int
  search_seconds: float  # choosing the allocation (a search, or a one-shot rule)
  search_episodes: int  # allocations evaluated on the reward split (0: one-shot)
  search_retrain_steps: int  # train batches spent while choosing
  search_overhead_share: float  # share of search_seconds outside retraining and measuring
  search_seconds_by_part: dict  # search.SearchResult.seconds_by_part ({} unless searched)
  failed_steps: int  # search steps undone after a non-finite retrain loss
  best_episode: int  # the chosen allocation's episode (-1: one-shot)
  best_reward_accuracy_in_search: Optional[float]  # what the search measured for it
  finetune_steps: int
  finetune_restarts: int
  finetune_seconds: float
  pruned_model: str  # path of the stripped tf-keras model
  comparison: dict  # compare.one_shot of the allocation beside uniform and global magnitude
  tflite: dict  # export.export_run's table ({} when not exported)
  replicas: int  # replicas in sync of the run's tf.distribute strategy
  num_classes: int = 0
  finetune_from: str = "dense"  # 'search': the network the search measured; 'dense'
  rescored_reward_accuracy: Optional[float] = None  # the chosen candidate's re-score
  selection: dict = dataclasses.field(default_factory=dict)  # how a search chose
  warnings: List[str] = dataclasses.field(default_factory=list)  # what makes it doubtful
  pruned_model_keras3: Optional[str] = None  # the pruned model as Keras 3, for a Keras 3 input
  granularity: str = "weight"  # 'weight' or 'channel' (train_eval.granularity)
  target_flops: Optional[float] = None  # fraction of the dense FLOPs to remove (channel)
  speed: dict = dataclasses.field(default_factory=dict)  # speed.measure_speed (channel)
  speedup_1_thread: Optional[float] = None  # LiteRT dense / pruned latency, from `speed`
  speedup_2_threads: Optional[float] = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def retained_share(accuracy: float, dense: float, num_classes: int) -> float:
  """Share of the dense model's accuracy above chance that `accuracy` keeps (1: all)."""
  chance = 1.0 / max(num_classes, 1)
  return (accuracy - chance) / max(dense - chance, 1e-9)


def doubts(result: RunResult) -> List[str]:
  """One line per reason to distrust `result`, each with what to change."""
  lines = []
  target = ("train_eval.target_flops" if result.granularity == "channel"
            else "train_eval.target_sparsity")
  share = retained_share(result.pruned_test_accuracy, result.dense_test_accuracy,
                         result.num_classes)
  if share < NEAR_CHANCE_SHARE:
    lines.append(
        f"the pruned model is near chance ({result.pruned_test_accuracy:.4f} test accuracy, "
        f"chance {1 / max(result.num_classes, 1):.4f}, dense "
        f"{result.dense_test_accuracy:.4f}): lower {target}, raise "
        "PruningEnv.retrain_steps or finetune.epochs"
        + ("." if result.granularity == "channel" else
           ", or keep the first and last layers dense (wrap.exclude)."))
  elif share < FAR_BELOW_SHARE:
    lines.append(
        f"the pruned model keeps {100 * share:.0f} % of the dense accuracy above chance "
        f"({result.pruned_test_accuracy:.4f} vs {result.dense_test_accuracy:.4f}): lower "
        f"{target} or raise finetune.epochs.")
  measured = (result.rescored_reward_accuracy if result.rescored_reward_accuracy is not None
              else result.best_reward_accuracy_in_search)
  if measured is not None and result.pruned_reward_accuracy < measured - FINETUNE_LOSS:
    lines.append(
        f"after fine-tuning, the reward-split accuracy is {result.pruned_reward_accuracy:.4f},"
        f" below the {measured:.4f} the search measured for this allocation: lower "
        "finetune.learning_rate or raise finetune.epochs.")
  if not result.reached_target and result.granularity == "channel":
    lines.append(f"the model removes {result.global_sparsity:.4f} of the FLOPs, below the "
                 f"target {result.target_sparsity}: search longer or widen PruningEnv.levels.")
  elif not result.reached_target:
    lines.append(f"the model reaches {result.global_sparsity:.4f} sparsity, below the target "
                 f"{result.target_sparsity}: search longer or widen PruningEnv.levels.")
  return lines
