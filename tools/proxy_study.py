"""Does a cheap measurement rank allocations as a longer fine-tune does?

A search learns only what its reward ranks correctly. This study takes many allocations at
one target on one seed's dense network of a benchmark suite (the one the benchmark caches
in --out_dir; pre-trained from the seed as the benchmark's cells do when not cached yet):
ERK, LAMP, global magnitude, uniform with the ends kept dense, and --perturbed random
perturbations of the layer densities of one of them (--around, default ERK; log-normal
factors of spread --sigma, fitted to the target by one density factor), plus any --extra
run's allocation. Each is applied to the dense weights and trained as a run's fine-tune
(purl_tf.run.finetune) trains: the package's MaskedTrainer with the suite's bound
finetune.learning_rate and finetune.momentum, the learning rate decayed along a cosine over
the last of --checkpoints steps, on one train stream every allocation shares. At each of
--checkpoints steps it re-estimates the batch-norm statistics as the search's environment
does (--recalibrate_batches) and measures the accuracy on the search's reward split and on
the whole validation split. The test split is never read.

The output JSON (in --out_dir; with --update_docs also copied into --docs_data) holds one
record per allocation, written as each finishes (a rerun goes on with the allocations not
yet measured), and the Spearman rank correlation of every checkpoint's measurements with
the last checkpoint's validation accuracy.

  python tools/proxy_study.py --benchmark=mnist_resnet20 --seed=0 --target=0.98

--only studies some of the allocations (e.g. the best few of a study, trained longer with
--checkpoints ending at a whole fine-tune's length and a --tag naming that output).
--order=K (K > 0) trains them on another order of the same seed's data, to see how far the
train order alone moves an allocation's end point. --merge=A.json,B.json prints one table
of studies run in parts.
"""
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import app, flags

import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import data, pruning
from purl_tf.run import finetune, pipeline
from purl_tf.runtime import files
from purl_tf.errors import PurlError
from purl_tf.pruning.training import MaskedTrainer

if __package__:  # imported as tools.proxy_study (the tests)
  from .bench import methods as suites
else:  # python tools/proxy_study.py: Python puts tools/ first on the path
  from bench import methods as suites

ONE_SHOT = ("erk", "lamp", "global_magnitude", "uniform_keep_ends")


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rho: the Pearson correlation of the average ranks (ties share a rank);
  nan when either side holds a single value."""
  def ranks(values):
    values = np.asarray(values, np.float64)
    order = values.argsort(kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # ties: their mean rank
      tied = values == value
      ranked[tied] = ranked[tied].mean()
    return ranked
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")  # no ranking to compare: too few values, or all equal
  return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def candidate_allocations(controller: pruning.PruningController, target: float,
                          perturbed: int, sigma: float, seed: int,
                          around: str = "erk") -> Dict[str, dict]:
  """name -> {layer: sparsity}: the ONE_SHOT allocations and `perturbed` random ones around
  the ONE_SHOT allocation `around`, named '<around>_perturbed<i>' (each layer's density
  times exp(sigma * N(0, 1)), then fitted to `target`)."""
  if around not in ONE_SHOT:
    raise PurlError(f"--around={around} is not one of {', '.join(ONE_SHOT)}.")
  allocations = {name: pruning.allocate(controller, name, target) for name in ONE_SHOT}
  centre = allocations[around]
  rng = np.random.default_rng(seed)
  for index in range(perturbed):
    factors = np.exp(sigma * rng.standard_normal(len(centre)))
    levels = {name: float(np.clip(1.0 - (1.0 - level) * factor, 0.0, 1.0))
              for (name, level), factor in zip(centre.items(), factors)}
    allocations[f"{around}_perturbed{index}"] = pruning.fitted(controller, levels, target)
  return allocations


def stream_seed(seed: int, order: int) -> int:
  """The seed of the train order a study trains on: the suite's seed itself for order 0
  (what every study before --order trained on), another order of the same data for each
  order > 0 (1000 apart, clear of the other seeds' orders)."""
  return seed + 1000 * order


def selected(allocations: Dict[str, dict], only: Sequence[str]) -> Dict[str, dict]:
  """The allocations named in `only` (all of them when it is empty), in `only`'s order;
  a PurlError names any it does not hold."""
  unknown = sorted(set(only) - set(allocations))
  if unknown:
    raise PurlError(f"--only={','.join(unknown)} names no allocation: use some of "
                    f"{sorted(allocations)}.")
  return {name: allocations[name] for name in only} if only else allocations


def measure(controller: pruning.PruningController, trainer: MaskedTrainer, train_stream,
            evaluations: Dict[str, tf.data.Dataset], allocation: dict,
            checkpoints: Sequence[int], recalibrate_stream=None,
            recalibrate_batches: int = 0) -> dict:
  """Trains `allocation`, applied to the dense weights, with a fresh optimizer on a fresh
  `train_stream()`; before each measurement the batch-norm statistics are re-estimated on
  the next `recalibrate_batches` batches of a fresh `recalibrate_stream()`, as the search's
  environment does (weights untouched). {"steps": checkpoints, "<split>": [accuracy at each
  checkpoint], "loss": [mean loss of each chunk], "sparsity", "seconds"}."""
  started = time.time()
  controller.reset()
  pruning.explicit(controller, allocation)
  trainer.reset_optimizer()
  stream = trainer.stream(train_stream())
  calibration = trainer.stream(recalibrate_stream()) if recalibrate_batches else None
  record = {"steps": list(checkpoints), "loss": [],
            **{name: [] for name in evaluations}}
  done = 0
  for step in checkpoints:
    if step > done:
      record["loss"].append(trainer.train(stream, step - done))
      done = step
    if calibration is not None:
      trainer.recalibrate(calibration, recalibrate_batches)
    for name, dataset in evaluations.items():
      record[name].append(trainer.evaluate(dataset))
  record.update(sparsity=controller.global_sparsity(), seconds=time.time() - started)
  return record


def correlations(records: Dict[str, dict]) -> Dict[str, List[float]]:
  """"<split>" -> rho of that split's accuracy at each checkpoint with the validation
  accuracy at the last one, over the allocations measured; "train_loss" -> rho of the
  negated mean train loss of each stretch between checkpoints with it (a loss can rank
  allocations while every accuracy still sits at chance)."""
  finished = list(records.values())
  if not finished:
    return {}
  truth = [r["validation"][-1] for r in finished]
  splits = [k for k, v in finished[0].items() if isinstance(v, list)
            and k not in ("steps", "loss")]
  rhos = {split: [rank_correlation([r[split][i] for r in finished], truth)
                  for i in range(len(finished[0]["steps"]))] for split in splits}
  rhos["train_loss"] = [rank_correlation([-r["loss"][i] for r in finished], truth)
                        for i in range(len(finished[0]["loss"]))]
  return rhos


def study(parts: pipeline.Parts, validation: tf.data.Dataset, allocations: Dict[str, dict],
          checkpoints: Sequence[int], learning_rate: float, seed: int, output: str,
          recalibrate_batches: int = 0, momentum: Optional[float] = None) -> dict:
  """Measures every allocation not yet in `output` (JSON), writing it after each (see
  measure; the batch-norm statistics are re-estimated on batches of another train stream,
  the same for every allocation). The optimizer is the fine-tune's (finetune.finetune):
  SGD with `momentum` (default: finetune.momentum as gin binds it) and the learning rate
  decayed from `learning_rate` to 0 along a cosine over the last checkpoint's steps."""
  state = files.read_json(output, {"records": {}})
  records = state["records"]
  if momentum is None:
    momentum = pipeline.bound(finetune.finetune, "momentum")
  with parts.strategy.scope():
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(checkpoints[-1], 1))
    trainer = MaskedTrainer(parts.controller.model, parts.strategy, learning_rate=schedule,
                            momentum=momentum)
  evaluations = {"reward": trainer.distribute(parts.splits.reward),
                 "validation": trainer.distribute(validation)}
  todo = [name for name in allocations if name not in records]
  for count, name in enumerate(todo, 1):
    record = measure(parts.controller, trainer,
                     lambda: parts.splits.train_stream(0, seed=seed), evaluations,
                     allocations[name], checkpoints,
                     lambda: parts.splits.train_stream(0, seed=seed + 1), recalibrate_batches)
    records[name] = {"allocation": allocations[name], **record}
    _save(state, output)
    print(f"[{count}/{len(todo)}] {name}: reward {record['reward'][-1]:.4f}  validation "
          f"{record['validation'][-1]:.4f} after {checkpoints[-1]} steps  "
          f"({record['seconds']:.0f} s)", flush=True)
  if not todo:  # everything measured before: the correlations as this code computes them
    _save(state, output)
  return state


def picks(records: Dict[str, dict]) -> Dict[str, List[str]]:
  """Like correlations, but per column the allocation a search choosing by it would keep:
  the one measuring highest (lowest train loss), the first in `records` on a tie."""
  finished = list(records.items())
  if not finished:
    return {}
  columns = {k: len(v) for k, v in finished[0][1].items()
             if isinstance(v, list) and k not in ("steps", "allocation")}
  sign = {"loss": -1.0}
  return {("train_loss" if column == "loss" else column): [
      max(finished, key=lambda item: sign.get(column, 1.0) * item[1][column][i])[0]
      for i in range(length)] for column, length in columns.items()}


def merged(paths: Sequence[str]) -> dict:
  """One study of the records of several study files (a later file's record of a name
  replaces an earlier one's), with the correlations over all of them."""
  records = {}
  for path in paths:
    if not os.path.isfile(path):
      raise PurlError(f"--merge: {path} is not a study file: name the JSON files a study "
                      "wrote.")
    records.update(files.read_json(path)["records"])
  return {"records": records, "correlations": correlations(records)}


def _save(state: dict, output: str):
  """Writes the study with the correlations of its records."""
  state["correlations"] = correlations(state["records"])
  files.write_json(output, state)


def markdown(state: dict) -> str:
  """The study as a Markdown table (one row per allocation, sorted by the final validation
  accuracy) followed by its rank correlations."""
  records = sorted(state["records"].items(), key=lambda item: -item[1]["validation"][-1])
  if not records:
    return ""
  steps = records[0][1]["steps"]
  stretches = [f"{a}-{b}" for a, b in zip(steps, steps[1:]) if b > a]
  lines = ["| allocation | " + " | ".join(f"reward @{s}" for s in steps) + " | "
           + " | ".join(f"validation @{s}" for s in steps) + " | "
           + " | ".join(f"train loss {s}" for s in stretches) + " |",
           "| --- |" + " ---: |" * (2 * len(steps) + len(stretches))]
  for name, r in records:
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["reward"] + r["validation"]
                                             + r["loss"]) + " |")
  rhos = state["correlations"]
  lines.append("")
  lines.append(f"Spearman's rho with the validation accuracy at step {steps[-1]} "
               f"({len(records)} allocations): " + "; ".join(
                   f"{split} " + ", ".join(f"{r:+.2f}" for r in values)
                   for split, values in rhos.items()) + ".")
  place = {name: rank for rank, (name, _) in enumerate(records, 1)}
  lines.append("")
  lines.append(f"Kept by each column (its place at step {steps[-1]} on validation): " + "; ".join(
      f"{column} " + ", ".join(f"{name} ({place[name]})" for name in names)
      for column, names in picks(dict(records)).items()) + ".")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("benchmark", "mnist_resnet20", "Suite whose config and dense weights "
                      "are studied.")
  flags.DEFINE_integer("seed", 0, "The suite's seed: dense weights, reward split, stream.")
  flags.DEFINE_float("target", 0.98, "Target global sparsity of every allocation.")
  flags.DEFINE_integer("perturbed", 10, "Random allocations around --around.")
  flags.DEFINE_enum("around", "erk", ONE_SHOT, "The allocation the random ones perturb.")
  flags.DEFINE_float("sigma", 0.5, "Spread of their log density factors.")
  flags.DEFINE_list("checkpoints", ["0", "24", "200", "1000"], "Train steps at which both "
                    "splits are measured; the last is the fine-tune's length.")
  flags.DEFINE_integer("recalibrate_batches", None, "Batches whose batch-norm statistics "
                       "replace the moving ones before each measurement (default: "
                       "PruningEnv.recalibrate_batches, what the search's measurement does).")
  flags.DEFINE_multi_string("extra", [], "name=path of a run's results.json whose "
                            "allocation is studied too (fitted to the target).")
  flags.DEFINE_list("only", [], "Study only these allocations (names as in the table); "
                    "default: all of them.")
  flags.DEFINE_integer("order", 0, "Train order (0: the seed's own, as the benchmark's "
                       "cells; 1, 2, ...: others of the same seed), to see how far the order "
                       "alone moves an allocation's end point.")
  flags.DEFINE_list("merge", [], "Print one table of these study files' allocations (e.g. "
                    "parts run side by side with --only) and stop; nothing is trained.")
  flags.DEFINE_string("tag", "", "Appended to the output's name, to keep this study beside "
                      "another of the same seed and target (e.g. a longer one).")
  flags.DEFINE_integer("validation_size", 10_000, "Examples of the reward's split measured "
                       "as the validation accuracy (the reward split is among them).")
  flags.DEFINE_string("out_dir", suites.OUT_DIR, "Where the suite's dense weights are cached "
                      "(as its benchmark caches them: a study there shares them), the JSON "
                      "is written, and the study's scratch runs go (<out_dir>/proxy_study).")
  flags.DEFINE_bool("update_docs", False, "Also copy the JSON into --docs_data.")
  flags.DEFINE_string("docs_data", os.path.join("docs", "benchmarks"), "The docs' folder of "
                      "results files (with --update_docs).")


def main(argv):
  del argv
  if FLAGS.merge:
    print(markdown(merged(FLAGS.merge)))
    return
  try:
    checkpoints = sorted({int(c) for c in FLAGS.checkpoints})
  except ValueError:
    raise PurlError(f"--checkpoints={FLAGS.checkpoints} must be integers.") from None
  out_dir = os.path.abspath(os.path.expanduser(FLAGS.out_dir))
  plan = suites.make_plan(FLAGS.benchmark, os.path.join(out_dir, "proxy_study"),
                          [str(FLAGS.seed)], None, False)
  kept = suites.kept_dense(plan, out_dir, FLAGS.seed)
  root = os.path.join(plan.root_dir, f"target{FLAGS.target}", f"seed{FLAGS.seed}")
  suites.restore_dense(kept, root)
  pipeline.parse_gin([plan.suite.gin_file], plan.bindings(FLAGS.target, FLAGS.seed))
  if pipeline.bound(data.load_splits, "reward_split") is None:
    raise PurlError(f"{plan.suite.gin_file} draws its reward split from train: the study "
                    "needs a suite whose reward comes from a validation split.")
  tf.keras.utils.set_random_seed(FLAGS.seed)  # as a cell does before pre-training
  parts = pipeline.build(root, suites.model_builder(), FLAGS.target, FLAGS.seed)
  suites.keep_dense(root, kept)  # pre-trained here from the seed: the benchmark shares it
  whole = data.load_splits(reward_size=FLAGS.validation_size,
                           num_replicas=parts.strategy.num_replicas_in_sync)
  allocations = candidate_allocations(parts.controller, FLAGS.target, FLAGS.perturbed,
                                      FLAGS.sigma, FLAGS.seed, FLAGS.around)
  for extra in FLAGS.extra:
    name, _, path = extra.partition("=")
    levels = files.read_json(path)["allocation"]
    allocations[name] = pruning.fitted(parts.controller, levels, FLAGS.target)
  allocations = selected(allocations, FLAGS.only)
  recalibrate = (parts.env.recalibrate_batches if FLAGS.recalibrate_batches is None
                 else FLAGS.recalibrate_batches)
  output = os.path.join(out_dir, f"proxy_study_{plan.name}_target{FLAGS.target}"
                        f"_seed{FLAGS.seed}_recal{recalibrate}"
                        f"{f'_order{FLAGS.order}' if FLAGS.order else ''}{FLAGS.tag}.json")
  state = study(parts, whole.reward, allocations, checkpoints,
                pipeline.bound(finetune.finetune, "learning_rate"),
                stream_seed(FLAGS.seed, FLAGS.order), output, recalibrate)
  print(markdown(state))
  print(f"Results: {output}")
  if FLAGS.update_docs:
    os.makedirs(FLAGS.docs_data, exist_ok=True)
    shutil.copy(output, FLAGS.docs_data)
    print(f"Copied to {FLAGS.docs_data}.")


if __name__ == "__main__":
  _define_flags()
  try:
    app.run(main)
  except PurlError as error:
    sys.exit(f"proxy_study: {error}")
