"""tf.distribute: multi-worker fine-tuning and search on loopback equal the single-device
results, and the workers stay in lockstep."""
import json
import os
import subprocess
import sys
import types

import pytest

import purl_tf  # noqa: F401
import tensorflow as tf

from purl_tf import pruning
from purl_tf.run import finetune
from purl_tf.runtime import distribute

from conftest import start_workers

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "multiworker_job.py")
SEARCH_JOB = os.path.join(HERE, "multiworker_search_job.py")
ALLOCATION = {"conv1": 0.5, "conv2": 0.8, "fc1": 0.95, "predictions": 0.6}
# Fine-tuning of the loopback test: 14 steps of the global batch of 64 move every weight
# (lockstep is checked on the digests of all variables), as a whole epoch's 54 did.
EPOCHS = 0.25


def _result(process):
  output = process.communicate(timeout=600)[0]
  assert process.returncode == 0, output[-3000:]
  line = next(l for l in output.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_a_two_worker_search_keeps_the_workers_masks_equal_and_matches_one_process(
    pretrained_lenet, data_dir, tmp_path):
  arguments = [data_dir, pretrained_lenet.weights_path]
  workers = start_workers([sys.executable, SEARCH_JOB, "multi_worker", *arguments,
                           str(tmp_path / "multi")])
  reference = subprocess.Popen(
      [sys.executable, SEARCH_JOB, "default", *arguments, str(tmp_path / "single")],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  chief, other = [_result(worker) for worker in workers]
  single = _result(reference)
  # Worker 1 explores with another seed and samples its replay with it, yet both workers
  # held the same masks (each read its own) after every episode: 2 collect, 1 greedy.
  assert len(chief["digests"]) == 3
  assert chief["digests"] == other["digests"]
  assert chief["levels"] == other["levels"]
  # ... and decided as one process with the chief's seed.
  assert chief["levels"] == single["levels"]
  assert chief["accuracies"] == single["accuracies"]
  assert chief["digests"] == single["digests"]
  assert chief["best"] == other["best"] == single["best"]
  assert chief["chosen"] == other["chosen"] == single["chosen"]


def test_two_workers_on_loopback_match_one_device(pretrained_lenet, data_dir, tmp_path):
  root = str(tmp_path / "multi")
  workers = start_workers([sys.executable, JOB, data_dir, pretrained_lenet.weights_path, root,
                           json.dumps(ALLOCATION), str(EPOCHS)])
  results = [_result(worker) for worker in workers]

  # The same global batch of 64 on one device (32 per worker above).
  strategy = tf.distribute.get_strategy()
  controller = pruning.PruningController(pruning.wrap(pretrained_lenet()))
  single = finetune.finetune(controller, strategy, pretrained_lenet.splits, ALLOCATION,
                             str(tmp_path / "single"), epochs=EPOCHS, seed=0)

  chief, other = results
  assert chief["pruned_model"] == os.path.join(root, "pruned_model.keras")
  assert other["pruned_model"] == os.path.join(root, "workers", "worker_1",
                                               "pruned_model.keras")
  # In lockstep: each worker hashed its own copy of every model variable (kernels, biases,
  # masks, thresholds) and counted the zeros of its own masks and kernels. These are local
  # values, not all-reduced ones: they agree bit for bit only if both workers applied the
  # same masks and the same all-reduced updates. Both started from the same weights, and
  # fine-tuning moved them.
  assert chief["start_digest"] == other["start_digest"]
  assert chief["final_digest"] != chief["start_digest"]
  assert chief["final_digest"] == other["final_digest"]
  assert chief["local_sparsities"] == other["local_sparsities"]
  assert set(chief["local_sparsities"]) == set(ALLOCATION)
  for worker in results:
    for name, (mask_zeros, kernel_zeros) in worker["local_sparsities"].items():
      assert mask_zeros == pytest.approx(ALLOCATION[name], abs=1e-3), name
      assert kernel_zeros >= mask_zeros, name  # masked weights stay exactly zero
  # The masks the one-device run set, in this process, are the workers' masks.
  assert [chief["local_sparsities"][name][0] for name in controller.names] == pytest.approx(
      controller.sparsities().tolist(), abs=1e-9)
  assert chief["dense_test_accuracy"] == pytest.approx(single["dense_test_accuracy"])
  assert chief["global_sparsity"] == pytest.approx(single["global_sparsity"])
  assert chief["pruned_test_accuracy"] == pytest.approx(single["pruned_test_accuracy"],
                                                        abs=0.02)


def _strategy_of(task_type, task_id, cluster):
  spec = tf.train.ClusterSpec(cluster)
  resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                   cluster_spec=lambda: spec)
  return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes_the_run_folder():
  workers = {"worker": ["a:1", "b:2"]}
  assert distribute.is_chief(tf.distribute.get_strategy())
  assert distribute.is_chief(_strategy_of("worker", 0, workers))
  assert not distribute.is_chief(_strategy_of("worker", 1, workers))
  with_chief = {"chief": ["c:0"], **workers}
  assert distribute.is_chief(_strategy_of("chief", 0, with_chief))
  assert not distribute.is_chief(_strategy_of("worker", 0, with_chief))
  assert distribute.run_dir("/r", _strategy_of("worker", 1, workers)) == "/r/workers/worker_1"
  assert distribute.run_dir("/r", _strategy_of("worker", 0, workers)) == "/r"
