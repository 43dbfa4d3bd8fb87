r"""The methods PuRL is measured against, each writing the results.json fields of a PuRL run.

  .venv/bin/python tools/baselines.py --method=global_magnitude --root_dir=runs/b/global \
      --gin_file=gin/quickstart.gin --gin_bindings="train_eval.target_sparsity=0.95" \
      --reference=runs/b/purl

Every method reads the same gin config as `purl_tf.train` (data, model, target sparsity,
seed, fine-tune budget), so one config drives them all:

  purl              PuRL itself: train.train_eval (dense reward at every step).
  episodic          the same DQN and MDP, reward only at the end of each episode
                    (`PruningEnv.reward_fn = @EpisodicReward()` is added to the config).
  random            random search: as many per-layer allocations (each layer's level
                    uniform over the action grid) as the reference PuRL run evaluated
                    (collect and greedy episodes), each through the same PruningEnv (same
                    retrain per step, same reward split); the best by search.is_better
                    is fine-tuned as PuRL's is.
  global_magnitude  one magnitude threshold over all prunable weights at the target, then
                    the same fine-tune as PuRL.
  uniform           tfmot ConstantSparsity: every prunable layer at the target (masks from
                    magnitudes at the first step, recomputed every --tfmot_frequency
                    steps), trained for PuRL's fine-tune budget.
  gradual           tfmot PolynomialDecay (Zhu & Gupta): sparsity rises from 0 to the
                    target over as many steps as the reference search retrained, then
                    training continues at the target for the fine-tune budget.
  dense             only pre-trains the dense model into root_dir/dense/weights.h5; pass
                    that root_dir as --dense_from to every method of the same seed, so that
                    all start from the same dense weights.

Budgets come from --reference (a finished PuRL run of the same config) when given,
otherwise from the gin config (search.num_episodes, eval_interval, PruningEnv.retrain_steps).
uniform and gradual train with finetune()'s optimizer: SGD with finetune.momentum,
finetune.learning_rate decayed to 0 along a cosine over all their steps. Training uses
the train split, choices the reward split; the test split only gives the final top-1
accuracy, measured by the same MaskedTrainer.evaluate for every method. tfmot cannot prune
DepthwiseConv2D (MobileNet-V2): uniform and gradual leave those layers dense and list them
in results.json's tfmot_skipped_layers.

A root_dir holding results.json is a finished run and is not redone; purl/episodic resume
as purl_tf.train does, random search after its last finished episode, global_magnitude's
fine-tune from its last epoch; uniform and gradual start over.
"""
import dataclasses
import inspect
import math
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
from absl import app, flags, logging
import gin
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from purl_tf import compare, finetune, files, interrupt, models, pruning, search, train
from purl_tf.errors import PurlError
from purl_tf.pruning import accounting
from purl_tf.training import MaskedTrainer

FLAGS = flags.FLAGS

RL_METHODS = ("purl", "episodic")  # run by train.train_eval
RANDOM = "random"  # also the policy name of random-search episodes in episodes.json
TFMOT_SKIPS = ("DepthwiseConv2D",)  # layer types tfmot's registry cannot prune
EPISODIC_BINDING = "PruningEnv.reward_fn = @EpisodicReward()"
CRITERION = "accuracy_at_target"
_TOLERANCE = 1e-6  # as search.py: sparsities within this of the target reach it


# --- settings shared with a PuRL run ------------------------------------------------------------

def _bound(name: str, function: Callable, parameter: str):
  """The gin binding `name` (e.g. 'finetune.epochs'), else `function`'s default for it."""
  try:
    value = gin.query_parameter(name)
  except ValueError:
    return inspect.signature(function).parameters[parameter].default
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn
  return value


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every method of one config shares (train_eval's and finetune's bindings)."""
  model_builder: Callable
  target: float  # target global sparsity of the prunable weights, fraction
  seed: int
  finetune_epochs: float  # passes over the train split
  finetune_learning_rate: float
  finetune_momentum: float


def settings() -> Settings:
  """Reads the Settings from the parsed gin config (defaults where nothing is bound)."""
  target = float(_bound("train_eval.target_sparsity", train.train_eval, "target_sparsity"))
  if not 0.0 < target < 1.0:
    raise PurlError(f"train_eval.target_sparsity={target} is outside (0, 1): bind it to a "
                    "fraction such as 0.9.")
  return Settings(
      model_builder=_bound("train_eval.model_builder", train.train_eval, "model_builder"),
      target=target, seed=int(_bound("train_eval.seed", train.train_eval, "seed")),
      finetune_epochs=float(_bound("finetune.epochs", finetune.finetune, "epochs")),
      finetune_learning_rate=float(_bound("finetune.learning_rate", finetune.finetune,
                                          "learning_rate")),
      finetune_momentum=float(_bound("finetune.momentum", finetune.finetune, "momentum")))


@dataclasses.dataclass(frozen=True)
class Options:
  """Per-invocation options of a method (not part of the gin config)."""
  reference: Optional[str] = None  # a finished PuRL run whose search budget to spend
  tfmot_frequency: int = 100  # steps between tfmot's mask updates


@dataclasses.dataclass(frozen=True)
class SearchBudget:
  """What a search spends: evaluated episodes (collect + greedy) and retrain steps."""
  episodes: int
  retrain_steps: int  # train batches over all steps of all evaluated episodes


NO_SEARCH = SearchBudget(0, 0)


def planned_budget(num_layers: int, retrain_steps: int) -> SearchBudget:
  """The budget the gin config's PuRL search spends: collect episodes, plus a greedy one
  every search.eval_interval and after the last."""
  episodes = int(_bound("search.num_episodes", search.search, "num_episodes"))
  interval = int(_bound("search.eval_interval", search.search, "eval_interval"))
  evaluated = search.evaluated_episodes(episodes, interval)
  return SearchBudget(evaluated, evaluated * num_layers * retrain_steps)


def reference_budget(reference: str) -> SearchBudget:
  """The budget a finished PuRL run (its root_dir) spent."""
  results = files.read_json(os.path.join(reference, files.RESULTS))
  episodes = files.read_json(os.path.join(reference, files.EPISODES))
  if results is None or episodes is None:
    raise PurlError(f"--reference={reference} holds no finished PuRL run (no {files.RESULTS} "
                    f"or {files.EPISODES}): run --method=purl there first.")
  return SearchBudget(len(episodes), int(results["search_retrain_steps"]))


def finetune_steps(splits, epochs: float) -> int:
  """Train steps of `epochs` passes over the train split, counted as finetune() counts."""
  per_epoch = max(splits.num_examples["train"] // splits.batch_size, 1)
  return int(math.ceil(epochs * per_epoch))


# --- the run folder ---------------------------------------------------------------------------

def claim(root_dir: str, method: str, config: str):
  """Records the method and config as root_dir's; refuses a root_dir of another run."""
  path = os.path.join(root_dir, files.CONFIG)
  text = f"# tools/baselines.py --method={method}\n{config}"
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as handle:
      if handle.read() != text:
        raise PurlError(f"{root_dir} holds a run of another method or config ({path}): use "
                        "another --root_dir.")
    return
  tf.io.gfile.makedirs(root_dir)
  with tf.io.gfile.GFile(path + ".partial", "w") as handle:
    handle.write(text)
  tf.io.gfile.rename(path + ".partial", path, overwrite=True)


def copy_dense(source_root: str, root_dir: str):
  """Copies source_root/dense/weights.h5 into root_dir unless root_dir has dense weights."""
  source = os.path.join(os.path.expanduser(source_root), files.DENSE_WEIGHTS)
  target = os.path.join(os.path.expanduser(root_dir), files.DENSE_WEIGHTS)
  if os.path.exists(target):
    return
  if not os.path.exists(source):
    raise PurlError(f"{source} does not exist: run --method=dense with --root_dir="
                    f"{source_root} first.")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.copyfile(source, target + ".partial.h5")
  os.replace(target + ".partial.h5", target)


def build(root_dir: str, config: Settings) -> train.Parts:
  """train.build under the run's seed: data, dense model (cached in root_dir/dense), MDP."""
  tf.keras.utils.set_random_seed(config.seed)
  return train.build(root_dir, config.model_builder, config.target)


def results_of(parts: train.Parts, config: Settings, tuned: dict, method: str,
               comparison: dict, search_seconds: float, budget: SearchBudget,
               overhead_share: float = 0.0, best_episode: int = -1,
               best_accuracy: Optional[float] = None, failed_steps: int = 0) -> dict:
  """results.json of a baseline: every field train_eval writes, plus `method`.

  `tuned` holds finetune()'s fields (accuracies as fractions, seconds, steps, costs).
  """
  return dict(tuned, method=method, model=parts.model_name, dataset=parts.splits.name,
              comparison=comparison, tflite={}, target_sparsity=config.target,
              reached_target=bool(tuned["global_sparsity"] >= config.target - 1e-3),
              search_seconds=search_seconds, failed_steps=failed_steps,
              search_overhead_share=overhead_share,
              search_retrain_steps=budget.retrain_steps, search_episodes=budget.episodes,
              best_episode=best_episode, best_reward_accuracy_in_search=best_accuracy,
              dense_reward_accuracy=parts.dense_reward_accuracy,
              replicas=parts.strategy.num_replicas_in_sync)


def finetune_allocation(parts: train.Parts, config: Settings, root_dir: str,
                        allocation: dict):
  """(one-shot comparison, finetune() results) of an allocation, treated as PuRL's best."""
  comparison = compare.one_shot(parts.controller, parts.env.trainer, parts.splits.test,
                                allocation)
  tuned = finetune.finetune(parts.controller, parts.strategy, parts.splits, allocation,
                            root_dir, seed=config.seed)
  return comparison, tuned


# --- PuRL, the episodic agent, the dense model -------------------------------------------------

def run_purl(root_dir: str, options: Options) -> dict:
  """PuRL via train.train_eval; the episodic agent too (run() adds EPISODIC_BINDING)."""
  del options
  return train.train_eval(root_dir)


def run_dense(root_dir: str, options: Options) -> dict:
  """Pre-trains (or loads) the dense model; returns its reward-split accuracy."""
  del options
  parts = build(root_dir, settings())
  return {"dense_reward_accuracy": parts.dense_reward_accuracy, "model": parts.model_name,
          "dense_weights": os.path.join(root_dir, files.DENSE_WEIGHTS)}


# --- global magnitude --------------------------------------------------------------------------

def run_global_magnitude(root_dir: str, options: Options) -> dict:
  """One magnitude threshold over all prunable weights at the target, then fine-tune."""
  del options
  config = settings()
  parts = build(root_dir, config)
  started = time.time()
  parts.controller.reset()
  pruning.global_magnitude(parts.controller, config.target)
  allocation = parts.controller.allocation()
  parts.controller.reset()
  seconds = time.time() - started
  comparison, tuned = finetune_allocation(parts, config, root_dir, allocation)
  return results_of(parts, config, tuned, "global_magnitude", comparison, seconds, NO_SEARCH)


# --- random search -----------------------------------------------------------------------------

def random_levels(seed: int, episode: int, num_layers: int, num_levels: int) -> List[int]:
  """Action (level index) per layer, uniform over the grid; fixed by (seed, episode)."""
  return np.random.default_rng([seed, episode]).integers(0, num_levels, num_layers).tolist()


def best_of(episodes: Sequence[search.Episode], target: float) -> Optional[search.Episode]:
  """The best episode under search.is_better's accuracy_at_target rule."""
  best = None
  for episode in episodes:
    if search.is_better(episode, best, target, CRITERION):
      best = episode
  return best


def random_episode(env, seed: int, index: int) -> search.Episode:
  """Runs episode `index` of the random search through `env` and records it."""
  started = time.time()
  interrupt.check()
  # Seeds the episode's train batches as search.search does, so a resumed search repeats.
  tf.keras.utils.set_random_seed((seed * 1_000_003 + 2 * index) % 2**31)
  env.reset()
  for action in random_levels(seed, index, env.num_layers, len(env.levels)):
    env.step(np.int64(action))
  steps = env.episode
  return search.Episode(
      episode=index, policy=RANDOM, episode_return=float(sum(s.reward for s in steps)),
      accuracy=steps[-1].accuracy, sparsity=steps[-1].sparsity, epsilon=1.0,
      seconds=time.time() - started, allocation={s.layer: s.layer_sparsity for s in steps},
      levels=[s.level for s in steps], rewards=[s.reward for s in steps],
      retrain_seconds=sum(s.retrain_seconds for s in steps),
      measure_seconds=sum(s.measure_seconds for s in steps))


def run_random(root_dir: str, options: Options) -> dict:
  """Random search through the PuRL environment, as many episodes as the reference."""
  config = settings()
  parts = build(root_dir, config)
  env = parts.env
  budget = (reference_budget(options.reference) if options.reference
            else planned_budget(env.num_layers, env.retrain_steps))
  path = os.path.join(root_dir, files.EPISODES)
  episodes = [search.Episode(**e) for e in files.read_json(path, [])]
  if episodes:
    print(f"Resuming the random search after episode {len(episodes)}/{budget.episodes}.",
          flush=True)
  while len(episodes) < budget.episodes:
    episodes.append(random_episode(env, config.seed, len(episodes)))
    files.write_json(path, [dataclasses.asdict(e) for e in episodes])
    last, best = episodes[-1], best_of(episodes, env.target)
    print(f"[random ] episode {len(episodes):4d}/{budget.episodes}  acc {last.accuracy:.4f}"
          f"  sparsity {last.sparsity:.3f}  best acc {best.accuracy:.4f} @ "
          f"{best.sparsity:.3f}  {last.seconds:5.1f}s/ep", flush=True)
  best = best_of(episodes, env.target)
  reached = bool(best.sparsity >= env.target - _TOLERANCE)
  if not reached:
    print(f"WARNING: no random allocation reached the target {env.target}; fine-tuning the "
          f"sparsest ({best.sparsity:.3f}).", flush=True)
  files.write_json(os.path.join(root_dir, files.BEST_ALLOCATION), {
      "allocation": best.allocation, "accuracy_reward_split": best.accuracy,
      "global_sparsity": best.sparsity, "episode": best.episode, "policy": RANDOM,
      "target_sparsity": env.target, "reached_target": reached, "criterion": CRITERION,
      "mode": env.mode})
  seconds = sum(e.seconds for e in episodes)
  inside = sum(e.retrain_seconds + e.measure_seconds for e in episodes)
  comparison, tuned = finetune_allocation(parts, config, root_dir, best.allocation)
  spent = SearchBudget(len(episodes), sum(len(e.levels) for e in episodes) * env.retrain_steps)
  return results_of(parts, config, tuned, RANDOM, comparison, seconds, spent,
                    overhead_share=max(0.0, 1.0 - inside / seconds) if seconds else 0.0,
                    best_episode=best.episode, best_accuracy=best.accuracy,
                    failed_steps=env.failed_steps)


# --- tfmot's own pruning: uniform and gradual --------------------------------------------------

def tfmot_prune(dense: keras.Model, names: Sequence[str], schedule) -> keras.Model:
  """A copy of `dense` whose layers named in `names` are wrapped by tfmot under `schedule`.

  Layer types tfmot cannot prune (TFMOT_SKIPS) stay dense; nested models are followed.
  """
  chosen = set(names)

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    copy = layer.__class__.from_config(layer.get_config())
    if layer.name in chosen and type(layer).__name__ not in TFMOT_SKIPS:
      return tfmot.sparsity.keras.prune_low_magnitude(copy, pruning_schedule=schedule)
    return copy

  wrapped = keras.models.clone_model(dense, clone_function=clone)
  pruning.copy_weights(dense, wrapped)
  return wrapped


def mask_sparsities(model: keras.Model, names: Sequence[str]) -> Dict[str, float]:
  """{layer: share of its weights masked out} for the named layers of a tfmot-wrapped
  model; 0 for a named layer tfmot left unwrapped."""
  wrappers = {w.layer.name: w for w in pruning.prunable_layers(model)}
  out = {}
  for name in names:
    if name not in wrappers:
      out[name] = 0.0
      continue
    masks = [mask.numpy() for _, mask, _ in wrappers[name].pruning_vars]
    out[name] = float(1.0 - sum(m.sum() for m in masks) / sum(m.size for m in masks))
  return out


class _LastLoss(keras.callbacks.Callback):
  """Keeps the training loss Keras reports at the end of a fit call."""

  def __init__(self):
    super().__init__()
    self.loss = float("nan")

  def on_epoch_end(self, epoch, logs=None):
    self.loss = float((logs or {}).get("loss", float("nan")))


@dataclasses.dataclass
class _Trainer:
  """Counts a tfmot model's train steps across fit calls and prints progress."""
  model: keras.Model
  splits: object
  seed: int
  label: str
  names: Sequence[str]
  sizes: np.ndarray  # prunable weights per named layer
  total: int  # steps planned over all phases
  done: int = 0
  chunks: int = 0

  def global_sparsity(self) -> float:
    """Share of the named layers' weights masked out now."""
    shares = np.array(list(mask_sparsities(self.model, self.names).values()))
    return float(np.dot(shares, self.sizes) / self.sizes.sum())

  def train(self, steps: int):
    """Trains `steps` batches in chunks of at most one pass over the train split, each with
    its own shuffle seeded by (seed, chunk); tfmot's UpdatePruningStep drives the masks."""
    per_epoch = max(self.splits.num_examples["train"] // self.splits.batch_size, 1)
    while steps > 0:
      interrupt.check()
      chunk = min(per_epoch, steps)
      last = _LastLoss()
      self.model.fit(self.splits.train_stream(self.seed * 7919 + self.chunks),
                     steps_per_epoch=chunk, epochs=1, verbose=0,
                     callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), last])
      if not np.isfinite(last.loss):
        raise PurlError(f"{self.label}: training loss {last.loss} at step {self.done}: lower "
                        "finetune.learning_rate.")
      steps -= chunk
      self.done += chunk
      self.chunks += 1
      print(f"[{self.label}] step {self.done:6d}/{self.total}  loss {last.loss:.4f}  "
            f"sparsity {self.global_sparsity():.3f}", flush=True)


def run_tfmot(root_dir: str, method: str, config: Settings, parts: train.Parts, schedule,
              prune_steps: int, tune_steps: int, budget: SearchBudget) -> dict:
  """Trains a tfmot-wrapped copy of the dense model for prune_steps then tune_steps batches,
  strips it and measures it as finetune() measures PuRL's model.

  The optimizer is finetune()'s: SGD with finetune.momentum and a cosine decay of
  finetune.learning_rate over all steps. Seconds of the first phase are reported as
  search_seconds, of the second (and the measurement) as finetune_seconds.
  """
  names = parts.controller.names
  total = prune_steps + tune_steps
  with parts.strategy.scope():
    dense = config.model_builder(input_shape=parts.splits.image_shape,
                                 num_classes=parts.splits.num_classes)
    dense.load_weights(os.path.join(root_dir, files.DENSE_WEIGHTS))
    model = tfmot_prune(dense, names, schedule)
    decay = keras.optimizers.schedules.CosineDecay(config.finetune_learning_rate,
                                                   max(total, 1))
    model.compile(optimizer=keras.optimizers.SGD(decay, momentum=config.finetune_momentum),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=not models.outputs_probabilities(model)))
  trainer = _Trainer(model, parts.splits, config.seed, method, names,
                     parts.controller.sizes.astype(np.float64), total)
  started = time.time()
  trainer.train(prune_steps)
  search_seconds = time.time() - started
  started = time.time()
  trainer.train(tune_steps)
  allocation = mask_sparsities(model, names)
  path = pruning.save(model, os.path.join(root_dir, files.PRUNED_MODEL))
  with parts.strategy.scope():
    pruned = MaskedTrainer(pruning.strip(model), parts.strategy)
    dense_trainer = MaskedTrainer(dense, parts.strategy)
  test = pruned.distribute(parts.splits.test)
  tuned = {"dense_test_accuracy": dense_trainer.evaluate(test),
           "pruned_test_accuracy": pruned.evaluate(test),
           "pruned_reward_accuracy": pruned.evaluate(pruned.distribute(parts.splits.reward)),
           "finetune_steps": tune_steps, "finetune_restarts": 0,
           "finetune_seconds": time.time() - started, "pruned_model": path,
           "allocation": allocation}
  tuned.update(accounting.costs(parts.controller.infos, [allocation[n] for n in names],
                                parts.controller.total_params))
  comparison = compare.one_shot(parts.controller, parts.env.trainer, parts.splits.test,
                                allocation)
  results = results_of(parts, config, tuned, method, comparison, search_seconds,
                       SearchBudget(budget.episodes, prune_steps))
  results["tfmot_skipped_layers"] = [
      layer.name for layer in pruning.leaf_layers(dense)
      if layer.name in set(names) and type(layer).__name__ in TFMOT_SKIPS]
  return results


def run_uniform(root_dir: str, options: Options) -> dict:
  """tfmot ConstantSparsity at the target on every prunable layer, for the fine-tune budget.

  begin_step=1: masks are first computed in the first train step (tfmot's step counter
  starts at 1), then every options.tfmot_frequency steps, as in tfmot's recipe.
  """
  config = settings()
  parts = build(root_dir, config)
  schedule = tfmot.sparsity.keras.ConstantSparsity(config.target, begin_step=1,
                                                   frequency=options.tfmot_frequency)
  return run_tfmot(root_dir, "uniform", config, parts, schedule, 0,
                   finetune_steps(parts.splits, config.finetune_epochs), NO_SEARCH)


def gradual_schedule(target: float, prune_steps: int, frequency: int = 100):
  """tfmot PolynomialDecay: Zhu & Gupta's cubic ramp from 0 to `target` over `prune_steps`.

  Masks are recomputed every f = min(frequency, prune_steps // 10) steps (at least 1), so
  there are at least 10 updates, the last of them at the end of the ramp (a multiple of f).
  """
  every = max(1, min(frequency, prune_steps // 10))
  end = max(every, every * (prune_steps // every))
  return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target,
                                              begin_step=0, end_step=end, frequency=every)


def run_gradual(root_dir: str, options: Options) -> dict:
  """tfmot PolynomialDecay spending the search's retrain steps, then the fine-tune budget."""
  config = settings()
  parts = build(root_dir, config)
  budget = (reference_budget(options.reference) if options.reference
            else planned_budget(parts.env.num_layers, parts.env.retrain_steps))
  prune_steps = max(budget.retrain_steps, 1)
  schedule = gradual_schedule(config.target, prune_steps, options.tfmot_frequency)
  return run_tfmot(root_dir, "gradual", config, parts, schedule, prune_steps,
                   finetune_steps(parts.splits, config.finetune_epochs), budget)


METHODS: Dict[str, Callable[[str, Options], dict]] = {
    "purl": run_purl,
    "episodic": run_purl,
    RANDOM: run_random,
    "global_magnitude": run_global_magnitude,
    "uniform": run_uniform,
    "gradual": run_gradual,
    "dense": run_dense,
}


def run(method: str, root_dir: str, gin_files: Sequence[str] = (),
        bindings: Sequence[str] = (), options: Options = Options(),
        mock_examples: int = 0) -> dict:
  """Parses the config and runs `method` in root_dir, or returns its finished results.

  Args:
    method: a key of METHODS.
    root_dir: the method's run folder.
    gin_files, bindings: the config, as for purl_tf.train (parsed here).
    options: the reference run and tfmot's mask-update frequency.
    mock_examples: > 0 runs on tfds.testing.mock_data with that many examples per split.
  Returns:
    the results.json dict (for 'dense': the dense accuracy and weights path).
  """
  if method not in METHODS:
    raise PurlError(f"--method={method!r} is unknown: use one of {sorted(METHODS)}.")
  if options.tfmot_frequency < 1:
    raise PurlError(f"--tfmot_frequency={options.tfmot_frequency} must be at least 1.")
  root_dir = os.path.abspath(os.path.expanduser(root_dir))
  if options.reference:
    reference = os.path.abspath(os.path.expanduser(options.reference))
    reference_budget(reference)  # fails now when the reference is not finished
    options = dataclasses.replace(options, reference=reference)
  bindings = list(bindings) + ([EPISODIC_BINDING] if method == "episodic" else [])
  gin.clear_config()  # the run's config is exactly gin_files + bindings
  train._parse_gin(list(gin_files), bindings)  # pylint: disable=protected-access
  results_path = os.path.join(root_dir, files.RESULTS)
  if method not in RL_METHODS:  # train_eval claims root_dir and finds finished runs itself
    claim(root_dir, method, gin.config_str())
    finished = files.read_json(results_path)
    if finished:
      print(f"{root_dir} holds a finished {method} run: results in {results_path}.",
            flush=True)
      return finished
  if mock_examples:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    with tfds.testing.mock_data(num_examples=mock_examples):
      results = METHODS[method](root_dir, options)
  else:
    results = METHODS[method](root_dir, options)
  results = dict(results, method=method)
  files.write_json(results_path, results)
  return results


def define_flags():
  """The command line (defined only when run as a script, so the module imports cleanly)."""
  # --root_dir, --gin_file and --gin_bindings are purl_tf.train's flags.
  flags.DEFINE_enum("method", None, sorted(METHODS), "Method to run.")
  flags.DEFINE_string("reference", None, "A finished PuRL run (its root_dir) whose search "
                      "budget random and gradual spend.")
  flags.DEFINE_string("dense_from", None, "A root_dir whose dense/weights.h5 is copied into "
                      "--root_dir first (all methods of a seed start from the same model).")
  flags.DEFINE_integer("tfmot_frequency", 100, "uniform/gradual: train steps between tfmot's "
                       "mask updates.")
  flags.DEFINE_integer("mock_examples", 0, "Run on tfds.testing.mock_data with this many "
                       "examples per split (0: real data).")


def main(argv):
  del argv
  if not FLAGS.method or not FLAGS.root_dir:
    raise app.UsageError("--method and --root_dir are required.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tf-agents and tfds log every read/checkpoint
  interrupt.install()
  try:
    if FLAGS.dense_from:
      copy_dense(FLAGS.dense_from, FLAGS.root_dir)
    results = run(FLAGS.method, FLAGS.root_dir, FLAGS.gin_file, FLAGS.gin_bindings,
                  Options(FLAGS.reference, FLAGS.tfmot_frequency), FLAGS.mock_examples)
  except PurlError as error:
    print(f"baselines: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  except interrupt.Interrupted as stop:
    print(f"baselines: {stop}; rerun the same command to continue.", file=sys.stderr)
    sys.exit(128 + stop.signal_number)
  if "pruned_test_accuracy" in results:
    print(f"{FLAGS.method}: test accuracy {results['pruned_test_accuracy']:.4f} at global "
          f"sparsity {results['global_sparsity']:.4f} (target {results['target_sparsity']}) "
          f"in {FLAGS.root_dir}.", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
