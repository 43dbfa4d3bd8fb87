"""One worker of the multi-worker fine-tune test (TF_CONFIG set by the test)."""
import json
import sys

import purl_tf  # noqa: F401
from purl_tf import distribute

strategy = distribute.make_strategy("multi_worker")

from purl_tf import data, finetune, models, pruning  # noqa: E402

data_dir, weights, root, allocation = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
splits = data.load_splits("mnist5k", data_dir=data_dir, batch_size=32, reward_size=500,
                          num_replicas=strategy.num_replicas_in_sync)
with strategy.scope():
  model = models.lenet5(splits.image_shape, splits.num_classes)
  model.load_weights(weights)
  controller = pruning.PruningController(pruning.wrap(model))
results = finetune.finetune(controller, strategy, splits, allocation,
                            distribute.run_dir(root, strategy), epochs=1.0, seed=0)
print("RESULT " + json.dumps({key: results[key] for key in (
    "dense_test_accuracy", "pruned_test_accuracy", "global_sparsity", "pruned_model")}))
