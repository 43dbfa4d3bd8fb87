"""One worker of the multi-worker fine-tune test (TF_CONFIG set by the test).

Besides the results (all-reduced, hence equal on every worker by construction), it prints
what this worker holds locally after fine-tuning: a SHA-256 of every model variable as read
on this worker, and per prunable layer the share of zeros in its mask and in its kernel.
The workers agree on these only if they applied the same masks and the same updates in
lockstep.
"""
import hashlib
import json
import sys

import purl_tf  # noqa: F401
from purl_tf.runtime import distribute

strategy = distribute.make_strategy("multi_worker")

import numpy as np  # noqa: E402

from multiworker_lenet import pretrained_lenet  # noqa: E402
from purl_tf import pruning  # noqa: E402
from purl_tf.run import finetune  # noqa: E402


def variables_digest(model):
  """SHA-256 of the names, shapes, dtypes and bytes of every variable read on this worker."""
  digest = hashlib.sha256()
  for variable in sorted(model.variables, key=lambda v: v.name):
    value = np.ascontiguousarray(variable.numpy())
    digest.update(f"{variable.name}|{value.shape}|{value.dtype}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def local_sparsities(model):
  """{layer: (share of zeros in its mask, share of zeros in its kernel)}, read locally."""
  out = {}
  for wrapper in pruning.prunable_layers(model):
    weight, mask, _ = wrapper.pruning_vars[0]
    out[wrapper.layer.name] = (float(np.mean(mask.numpy() == 0)),
                               float(np.mean(weight.numpy() == 0)))
  return out


data_dir, weights, root = sys.argv[1:4]
allocation, epochs = json.loads(sys.argv[4]), float(sys.argv[5])
splits, controller = pretrained_lenet(strategy, data_dir, weights)
start_digest = variables_digest(controller.model)
results = finetune.finetune(controller, strategy, splits, allocation,
                            distribute.run_dir(root, strategy), epochs=epochs, seed=0)
report = {key: results[key] for key in (
    "dense_test_accuracy", "pruned_test_accuracy", "global_sparsity", "pruned_model")}
report.update(start_digest=start_digest, final_digest=variables_digest(controller.model),
              local_sparsities=local_sparsities(controller.model))
print("RESULT " + json.dumps(report))
