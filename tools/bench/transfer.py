"""allocation_transfer: is a searched allocation worth anything without the search's network?

A searched method fine-tunes the network its search trained (train_eval.finetune_from =
'search'), a one-shot method the dense weights. For each finished run folder in
`--transfer_runs`, its chosen allocation (best_allocation.json) is put on its dense
weights and given the same fine-tune (its own config.gin and seed), as
`finetune_from = 'dense'` would do, and the test accuracy is set beside the run's own.
`--variant` and `--gin_bindings` change that fine-tune for every run (e.g. `finetune.epochs =
18.984`: a one-shot allocation given the train steps of a search, 7,404 on mnist_resnet20);
their bindings name the section, so each setting keeps its own.
"""
import json
import os
import shutil
import tempfile

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import gin
import tensorflow as tf

from purl_tf.run import finetune, pipeline
from purl_tf.runtime import files
from purl_tf.errors import PurlError

from .common import command_line, extra_bindings, machine, model_builder, Section

FLAGS = flags.FLAGS

flags.DEFINE_list("transfer_runs", [], "allocation_transfer: finished run folders (each "
                  "with config.gin, dense weights, best_allocation.json and results.json).")

NEEDED = (files.RESULTS, files.BEST_ALLOCATION, files.CONFIG, files.DENSE_WEIGHTS)


def _from_dense(run: str) -> dict:
  """The run's allocation fine-tuned from its dense weights: RunResult-like fields."""
  missing = [name for name in NEEDED if not os.path.exists(os.path.join(run, name))]
  if missing:
    raise PurlError(f"--transfer_runs: {run} lacks {', '.join(missing)}: pass finished run "
                    "folders of `python -m purl_tf.train` or the benchmark.")
  root = tempfile.mkdtemp(prefix="transfer")
  try:
    os.makedirs(os.path.join(root, "dense"))
    shutil.copyfile(os.path.join(run, files.DENSE_WEIGHTS),
                    os.path.join(root, files.DENSE_WEIGHTS))
    gin.clear_config()
    pipeline.parse_gin([os.path.join(run, files.CONFIG)], extra_bindings())
    seed = pipeline.bound(pipeline.train_eval, "seed")
    target = pipeline.bound(pipeline.train_eval, "target_sparsity")
    tf.keras.utils.set_random_seed(seed)
    parts = pipeline.build(root, model_builder(), target, seed=seed)
    with open(os.path.join(run, files.BEST_ALLOCATION)) as handle:
      allocation = json.load(handle)["allocation"]
    return finetune.finetune(parts.controller, parts.strategy, parts.splits, allocation,
                             root, seed=seed)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def allocation_transfer() -> Section:
  if not FLAGS.transfer_runs:
    raise PurlError("allocation_transfer needs --transfer_runs: finished run folders, e.g. "
                    "a benchmark's runs/benchmarks/mnist_resnet20/target0.95/seed0/purl.")
  rows = ["| run | method | target | sparsity | test accuracy, as run | fine-tuned from the "
          "dense weights | its fine-tune steps |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for run in FLAGS.transfer_runs:
    tuned = _from_dense(run)
    with open(os.path.join(run, files.RESULTS)) as handle:
      own = json.load(handle)
    rows.append(f"| {run} | {own['method']} ({own.get('finetune_from', 'dense')}) | "
                f"{own['target_sparsity']} | {tuned['global_sparsity']:.4f} | "
                f"{100 * own['pruned_test_accuracy']:.2f} % | "
                f"{100 * tuned['pruned_test_accuracy']:.2f} % | {tuned['finetune_steps']:,} |")
    print(rows[-1], flush=True)
  body = "\n".join([
      "Each run's chosen allocation put on its dense weights and given its own fine-tune "
      "(config and seed), beside the run's result (a searched method fine-tunes the network "
      "its search trained; a one-shot method starts from the dense weights, so its two "
      "columns agree unless bindings change the fine-tune: they are in the heading).",
      "", *rows, "", f"- Command: `{command_line()}`",
      f"- Machine: {machine()}"])
  heading = "Allocation transfer: searched allocations from the dense weights"
  if extra_bindings():
    heading += f" ({', '.join(extra_bindings())})"
  return Section(heading=heading, body=body)
