"""The found allocation beside uniform and global magnitude pruning at the same sparsity.

Each allocation is applied to the dense weights and measured on the test split one-shot
(no retraining), after the search has ended; the search itself never sees the test split.
"""
from purl_tf import pruning
from purl_tf.pruning.training import MaskedTrainer


def one_shot(controller: pruning.PruningController, trainer: MaskedTrainer, test,
             allocation: dict) -> dict:
  """{method: {allocation, global_sparsity, one_shot_test_accuracy}} for purl, uniform and
  global_magnitude, the last two at the global sparsity `allocation` reaches.

  Leaves the controller reset to the dense state.
  """
  test = trainer.distribute(test)
  controller.reset()
  pruning.explicit(controller, allocation)
  sparsity = controller.global_sparsity()
  methods = {
      "purl": lambda: pruning.explicit(controller, allocation),
      "uniform": lambda: pruning.uniform(controller, sparsity),
      "global_magnitude": lambda: pruning.global_magnitude(controller, sparsity),
  }
  out = {}
  for name, apply in methods.items():
    controller.reset()
    apply()
    out[name] = {"allocation": controller.allocation(),
                 "global_sparsity": controller.global_sparsity(),
                 "one_shot_test_accuracy": trainer.evaluate(test)}
  controller.reset()
  return out
