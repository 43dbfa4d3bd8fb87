"""tf.distribute: multi-worker fine-tuning on loopback equals the single-device result."""
import json
import os
import socket
import subprocess
import sys
import types

import pytest

import purl_tf  # noqa: F401
import tensorflow as tf

from purl_tf import distribute, finetune, pruning

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiworker_job.py")
ALLOCATION = {"conv1": 0.5, "conv2": 0.8, "fc1": 0.95, "predictions": 0.6}


def _free_port():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_workers_on_loopback_match_one_device(pretrained_lenet, data_dir, tmp_path):
  root = str(tmp_path / "multi")
  cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
  workers = []
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    workers.append(subprocess.Popen(
        [sys.executable, JOB, data_dir, pretrained_lenet.weights_path, root,
         json.dumps(ALLOCATION)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  results = []
  for worker in workers:
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, output[-3000:]
    line = next(l for l in output.splitlines() if l.startswith("RESULT "))
    results.append(json.loads(line[len("RESULT "):]))

  # The same global batch of 64 on one device (32 per worker above).
  strategy = tf.distribute.get_strategy()
  controller = pruning.PruningController(pruning.wrap(pretrained_lenet()))
  single = finetune.finetune(controller, strategy, pretrained_lenet.splits, ALLOCATION,
                             str(tmp_path / "single"), epochs=1.0, seed=0)

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
