"""What a run writes to results.json, whatever the method that chose its allocation."""
import dataclasses
from typing import Optional

# A global sparsity within this of the target reaches it: one-shot allocations land within
# a weight per layer of their target, which on a small network is ~1e-4.
TARGET_TOLERANCE = 1e-3


def reached_target(sparsity: float, target: float) -> bool:
  """Whether a global sparsity (fraction) reaches the target, the one definition."""
  return bool(sparsity >= target - TARGET_TOLERANCE)


@dataclasses.dataclass
class RunResult:
  """results.json of one run. Accuracies and sparsities are fractions, seconds wall time."""
  method: str  # how the allocation was chosen (methods.METHODS)
  model: str
  dataset: str
  target_sparsity: float
  reached_target: bool  # reached_target(global_sparsity, target_sparsity)
  global_sparsity: float  # of the prunable weights, in the final model
  allocation: dict  # layer name -> sparsity, in the final model
  dense_test_accuracy: float
  pruned_test_accuracy: float
  pruned_reward_accuracy: float
  dense_reward_accuracy: float
  params_total: int
  params_remaining: int
  prunable_params: int
  flops_total: int  # of the prunable layers
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

  def to_json(self) -> dict:
    return dataclasses.asdict(self)
