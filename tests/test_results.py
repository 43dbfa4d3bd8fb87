"""results.doubts: the warnings a run's results.json carries."""
import dataclasses

from purl_tf.runtime.results import RunResult, doubts


def result_with(**values) -> RunResult:
  """A RunResult of a searched run that reached its target, with `values` set."""
  fields = {field.name: 0 for field in dataclasses.fields(RunResult)
            if field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING}
  fields.update(method="purl", model="cifar_resnet20", dataset="mnist_full", allocation={},
                search_seconds_by_part={}, comparison={}, tflite={}, pruned_model="",
                reached_target=True, best_reward_accuracy_in_search=None, num_classes=10,
                dense_test_accuracy=0.9919, dense_reward_accuracy=0.992,
                target_sparsity=0.9, global_sparsity=0.9)
  fields.update(values)
  return RunResult(**fields)


def test_a_model_that_lost_a_third_of_its_accuracy_says_so():
  # A benchmark cell (episodic reward, target 0.9) that fine-tuned to 68.6 % of a 99.2 %
  # dense ResNet-20 and went without a warning.
  lost = doubts(result_with(pruned_test_accuracy=0.686, pruned_reward_accuracy=0.676,
                            rescored_reward_accuracy=0.55))
  assert len(lost) == 1 and lost[0].startswith("the pruned model keeps 66 % of the dense")
  assert doubts(result_with(pruned_test_accuracy=0.9623, pruned_reward_accuracy=0.96,
                            rescored_reward_accuracy=0.922)) == []


def test_a_model_near_chance_and_a_fine_tune_below_the_search_say_so():
  near = doubts(result_with(pruned_test_accuracy=0.12, pruned_reward_accuracy=0.11,
                            rescored_reward_accuracy=0.6))
  assert near[0].startswith("the pruned model is near chance")
  assert near[1].startswith("after fine-tuning, the reward-split accuracy is 0.1100")
  missed = doubts(result_with(pruned_test_accuracy=0.97, pruned_reward_accuracy=0.97,
                              global_sparsity=0.85, reached_target=False))
  assert missed == ["the model reaches 0.8500 sparsity, below the target 0.9: search longer "
                    "or widen PruningEnv.levels."]
