"""How far a search's measurement can be trusted: allocation_recovery and measurement_noise.

allocation_recovery: how the reward-split accuracy of pruned allocations recovers with
retraining. Does a search's measurement (PruningEnv.retrain_steps batches after a step,
then the reward split) tell allocations apart? For the one-shot allocations and for allocations
drawn as random search draws them (uniform actions; later levels raised so that the
target stays reachable), each put on the dense weights, the reward-split accuracy after
each of `--recovery_batches` retrain batches (batch-norm statistics recalibrated as in the
search). A config whose good allocations still sit near chance after the search's retrain
steps gives its agent rewards that are mostly noise.

measurement_noise: one allocation (the prior's own, every action of factor 1.0) replayed
as whole episodes: the spread of the final reward-split accuracy an episode measures
(PruningEnv.final_retrain_steps included), and of the same after `--noise_batches` more
retrain batches. Two episodes of one allocation differ only by the train batches they
draw; that spread is the noise in every return the agent learns from.

Both measure the dense network of --recovery_gin_file at --seed: --recovery_dense when
given, else the one pre-trained from the seed as a benchmark cell of that config and seed
pre-trains it (its seed bindings), cached in <out_dir>/<config>_dense/seed<seed>.h5 (where
the method-against-method benchmark of the same config caches it too).
"""
import contextlib
import os
import shutil
import tempfile

import purl_tf  # noqa: F401  (must come before tensorflow: selects tf-keras)

from absl import flags
import gin
import numpy as np
import tensorflow as tf

from purl_tf.run import configs, methods, pipeline
from purl_tf.errors import PurlError

from .common import command_line, extra_bindings, machine, model_builder, out_dir, Section
from .methods import keep_dense, restore_dense, seed_bindings

FLAGS = flags.FLAGS

flags.DEFINE_string("recovery_gin_file", "mnist_resnet20", "allocation_recovery, "
                    "measurement_noise: the config (a shipped name or a path) whose network "
                    "and MDP are measured.")
flags.DEFINE_string("recovery_dense", "", "allocation_recovery, measurement_noise: dense "
                    "weights (.h5) of that config's network; default: pre-trained from --seed "
                    "and cached in <out_dir>/<config>_dense/seed<seed>.h5 (--gin_bindings that "
                    "change pre-training then need another --out_dir).")
flags.DEFINE_float("recovery_target", 0.9, "allocation_recovery: target sparsity.")
flags.DEFINE_list("recovery_batches", ["2", "5", "10", "20", "50"],
                  "allocation_recovery: retrain batches after which accuracy is measured.")
flags.DEFINE_integer("recovery_random", 6, "allocation_recovery: random-search allocations.")
flags.DEFINE_integer("noise_episodes", 6, "measurement_noise: episodes replayed.")
flags.DEFINE_integer("noise_batches", 24, "measurement_noise: further retrain batches after "
                     "each episode before measuring again.")

ONE_SHOT = ("erk", "lamp", "global_magnitude")  # of methods.ONE_SHOT


def _recovery(env, sparsities, checkpoints):
  """Reward-split accuracies after each number of retrain batches in `checkpoints`, for
  `sparsities` put on the dense weights."""
  env.controller.reset()
  env.controller.apply(sparsities)
  env.trainer.reset_optimizer()
  accuracies, done = [], 0
  for batches in checkpoints:
    env.retrain(batches - done)
    done = batches
    accuracies.append(env.measure())
  return accuracies


def _random_allocation(env, rng):
  """A random-search episode's allocation (and what that episode measured)."""
  env.reset()
  for _ in range(env.num_layers):
    env.step(np.int64(rng.integers(0, env.action_spec().maximum + 1)))
  return env.controller.sparsities(), env.episode[-1].accuracy


def _config_name() -> str:
  """The file name of --recovery_gin_file (e.g. mnist_resnet20.gin)."""
  return os.path.basename(configs.find(FLAGS.recovery_gin_file))


def _dense() -> str:
  """The dense weights measured: --recovery_dense, else the cache of the seed's."""
  if FLAGS.recovery_dense:
    return FLAGS.recovery_dense
  return out_dir(f"{os.path.splitext(_config_name())[0]}_dense", f"seed{FLAGS.seed}.h5")


@contextlib.contextmanager
def _built_env():
  """The PruningEnv of --recovery_gin_file (with --seed's, --variant's and --gin_bindings'
  bindings) at --recovery_target on the dense weights _dense() (pre-trained from the seed
  and cached there when missing), in a temporary run folder removed afterwards."""
  dense = _dense()
  if FLAGS.recovery_dense and not os.path.exists(dense):
    raise PurlError(f"--recovery_dense={dense} does not exist: name a dense network's .h5, "
                    "or leave the flag out to pre-train one from --seed.")
  root = tempfile.mkdtemp(prefix="recovery")
  try:
    restore_dense(dense, root)
    gin.clear_config()
    pipeline.parse_gin([FLAGS.recovery_gin_file], [*seed_bindings(FLAGS.seed),
                                                   *extra_bindings()])
    tf.keras.utils.set_random_seed(FLAGS.seed)  # as a run does before pre-training
    env = pipeline.build(root, model_builder(), FLAGS.recovery_target, seed=FLAGS.seed).env
    keep_dense(root, dense)
    yield env
  finally:
    shutil.rmtree(root, ignore_errors=True)


def allocation_recovery() -> Section:
  checkpoints = sorted(int(b) for b in FLAGS.recovery_batches)
  with _built_env() as env:
    rng = np.random.default_rng(FLAGS.seed)
    rows = []
    for name in ONE_SHOT:
      env.controller.reset()
      methods.ONE_SHOT[name](env.controller, env.target)
      rows.append((name, None, _recovery(env, env.controller.sparsities(), checkpoints)))
    for index in range(FLAGS.recovery_random):
      sparsities, measured = _random_allocation(env, rng)
      rows.append((f"random search draw {index + 1}", measured,
                   _recovery(env, sparsities, checkpoints)))
  header = ("| allocation | measured in its episode | "
            + " | ".join(f"after {b} batches" for b in checkpoints) + " |")
  lines = [header, "| --- " * (len(checkpoints) + 2) + "|"]
  for name, measured, accuracies in rows:
    lines.append(f"| {name} | {'—' if measured is None else f'{measured:.3f}'} | "
                 + " | ".join(f"{a:.3f}" for a in accuracies) + " |")
  body = "\n".join([
      f"Reward-split accuracy of allocations at {FLAGS.recovery_target} put on the dense "
      f"weights ({_dense()}) of `{FLAGS.recovery_gin_file}` and retrained "
      f"(its MaskedTrainer, batch-norm statistics recalibrated before each measurement); "
      f"the random-search draws also show what their own episode measured (layer by layer, "
      f"{env.retrain_steps} batches after each step). Chance is {1 / env.num_classes:.2f}.",
      "", *lines, "", f"- Command: `{command_line()}`", f"- Machine: {machine()}"])
  return Section(heading=f"Allocation recovery ({_config_name()}, target "
                 f"{FLAGS.recovery_target})", body=body)


def measurement_noise() -> Section:
  with _built_env() as env:
    if env.prior_action is None:
      raise PurlError("measurement_noise replays the prior's allocation: bind "
                      "PruningEnv.prior (e.g. --variant=prior_erk) with 1.0 among "
                      "PruningEnv.prior_factors.")
    keep = np.int64(env.prior_action)
    finals, longer = [], []
    for _ in range(FLAGS.noise_episodes):
      env.reset()
      for _ in range(env.num_layers):
        env.step(keep)
      finals.append(env.episode[-1].accuracy)
      env.retrain(FLAGS.noise_batches)
      longer.append(env.measure())
      print(f"measurement_noise: episode {len(finals)}: {finals[-1]:.3f}, after "
            f"{FLAGS.noise_batches} more batches {longer[-1]:.3f}", flush=True)
  rows = ["| measured | mean ± std | range | per episode |", "| --- | --- | --- | --- |"]
  for label, values in ((f"at the episode's end ({env.retrain_steps} batches a step, "
                         f"{env.final_retrain_steps} more at the last)", finals),
                        (f"after {FLAGS.noise_batches} more batches", longer)):
    rows.append(f"| {label} | {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} | "
                f"{min(values):.3f}–{max(values):.3f} | "
                + ", ".join(f"{v:.3f}" for v in values) + " |")
  body = "\n".join([
      f"The prior's allocation ({env.prior} at {FLAGS.recovery_target}, every action "
      f"keeping its level) replayed as {FLAGS.noise_episodes} whole episodes of "
      f"`{FLAGS.recovery_gin_file}` on the dense weights {_dense()}: the "
      "episodes differ only by the train batches they draw, so the spread of what they "
      "measure is the noise in the returns the agent learns from.", "", *rows, "",
      f"- Command: `{command_line()}`", f"- Machine: {machine()}"])
  return Section(heading=f"Measurement noise ({_config_name()}, {env.prior} at "
                 f"{FLAGS.recovery_target})", body=body)
