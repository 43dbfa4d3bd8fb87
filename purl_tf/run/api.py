"""`purl_tf.prune`: prune a trained Keras model on your data, from Python, with no gin.

  import purl_tf  # first: it selects tf-keras before TensorFlow loads
  result = purl_tf.prune(model, train=(x_train, y_train), reward=(x_held, y_held),
                         target_sparsity=0.8, num_episodes=10)
  result.model, result.allocation, result.results, result.root_dir

It is the command line's run (pipeline.run, the core train_eval calls too) on the caller's
model and data: the same search, fine-tune and files in root_dir. Every gin parameter of
a run is a keyword argument (`knobs`), applied as gin bindings only while prune() runs.
"""
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import logging
import os
import sys
import tempfile
from typing import Any, Dict, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf import data, models
from purl_tf.errors import PurlError
from purl_tf.run import pipeline
from purl_tf.runtime import noise

_log = logging.getLogger(__name__)

# pipeline.run's arguments that prune() takes directly (also as 'train_eval.<name>'), with
# prune()'s defaults. export_tflite is off: converting and timing four flatbuffers in
# LiteRT takes longer than the search of a small model, and prints from C++; pass
# export_tflite=True for the command line's TFLite table.
RUN_ARGUMENTS = {"seed": 0, "deterministic": False, "export_tflite": False,
                 "finetune_from": "search", "match_search_steps": False,
                 "fit_to_target": True, "overwrite": False, "granularity": "weight",
                 "target_flops": None, "channel_importance": None}
# Channel pruning's arguments: named in a run's description only when set, so that a weight
# run's config reads as before they existed.
CHANNEL_ARGUMENTS = ("granularity", "target_flops", "channel_importance")
# Gin configurables whose parameters prune() does not take: the model and the data are the
# caller's and the model is not trained again (pretrain.epochs = 0).
NOT_APPLICABLE = {
    "lenet5": "the model is prune()'s `model` argument",
    "cifar_resnet": "the model is prune()'s `model` argument",
    "resnet50": "the model is prune()'s `model` argument",
    "mobilenet_v2": "the model is prune()'s `model` argument",
    "saved_model": "the model is prune()'s `model` argument",
    "pretrain": "prune() keeps the model's weights as given: train it before calling",
}
# The load_splits parameters that shape prune()'s batches and caches; the others choose and
# read a data set, which prune() takes as its `train`, `reward` and `test` arguments.
SPLITS_KNOBS = ("batch_size", "eval_batch_size", "shuffle_buffer", "shuffle_seed",
                "cache_train", "cache_eval_bytes")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class PruneResult:
  """What purl_tf.prune returns."""
  model: keras.Model  # the pruned tf-keras model (uncompiled), loaded from root_dir
  allocation: Dict[str, float]  # layer name -> sparsity of the pruned model
  results: dict  # the same dict as root_dir/results.json (runtime.results.RunResult)
  root_dir: str  # the run folder: results, allocation, models, logs; pass it to resume


def prune(model, train, reward, *, method: str = "purl", target_sparsity: float = 0.9,
          test=None, root_dir: Optional[str] = None, **knobs) -> PruneResult:
  """Prunes a trained Keras classifier to `target_sparsity` by `method` (or, with
  granularity='channel', removes whole channels until `target_flops` of its FLOPs go).

  The dense weights are used as given (no pre-training); the search (or one-shot rule)
  chooses each prunable layer's sparsity, measuring accuracy on `reward`, and the chosen
  allocation is fine-tuned on `train`. Progress is logged to the `purl_tf` logger (INFO;
  Python's default shows WARNING and above only), never printed.

  Args:
    model: a trained single-input classifier (outputs logits or probabilities): a tf-keras
      functional or Sequential model, or a Keras 3 one (translated to its tf-keras twin;
      results['pruned_model_keras3'] is then the pruned model as a Keras 3 file). Not
      changed: the run prunes a copy.
    train: the training data: a tf.data.Dataset of (images, labels), batched or not, or
      (x, y) NumPy arrays; images float (N, H, W, C) as the model takes them, labels
      integer class indices (N,). Batches: a batched dataset's own batch size; else
      load_splits.batch_size (64) per replica. Read in its order, reshuffled per pass
      with load_splits.shuffle_seed: give it unshuffled, so a resumed run repeats an
      uninterrupted one.
    reward: held-out data the search measures every allocation on (same forms); never
      trained on. A few hundred to a few thousand images.
    method: 'purl' or another of methods.METHODS ('episodic', 'random',
      'global_magnitude', 'lamp', 'erk', 'uniform', 'uniform_keep_ends', 'gradual'); with
      granularity='channel' one of methods.CHANNEL_METHODS ('purl', 'episodic', 'random',
      'uniform', 'uniform_keep_ends', 'global_filter', 'bn_scale').
    target_sparsity: global sparsity of the prunable weights to reach, in (0, 1)
      (granularity 'weight').
    test: data for the final report only (same forms). None reports on `reward`, which
      the search chose on (optimistic): results['warnings'] says so.
    root_dir: the run folder; None makes a fresh temporary one (kept: see
      result.root_dir). Rerunning with the same root_dir and arguments resumes an
      interrupted run and returns a finished one; other arguments, another model or other
      data (arrays by their content, datasets by their sizes) are refused there
      (overwrite=True deletes that run).
    **knobs: any gin parameter of a run (docs/configuration.md), by its name when it is
      unique (num_episodes=10 is SearchRunner.num_episodes) or qualified
      (**{'finetune.epochs': 2}); and train_eval's arguments seed (0), deterministic
      (False), export_tflite (False here: the command line's True writes and times the
      TFLite flatbuffers, and with granularity 'channel' measures the pruned model's
      speed against the dense one's), finetune_from ('search'), match_search_steps
      (False), fit_to_target (True), overwrite (False), and channel pruning's
      granularity ('weight'; 'channel' removes whole channels: the returned model is
      physically thinner), target_flops (with 'channel': the fraction of the dense FLOPs
      to remove, e.g. 0.7) and channel_importance ('l1' or 'bn_gamma'). The caller's gin config applies beneath
      them and is left as it was. As the command line does, `seed` seeds Python's,
      NumPy's and TensorFlow's global generators.
  Returns:
    PruneResult(model, allocation, results, root_dir).
  Raises:
    PurlError: bad arguments or an unusable model, with one line saying what to change.
  """
  run_arguments, bindings = resolve_knobs(knobs)
  noise.quiet_sources()
  try:
    with gin_bindings(bindings), tempfile.TemporaryDirectory(prefix="purl_tf_model_") as tmp:
      gin.bind_parameter("pretrain.epochs", 0)  # the weights as given, cached in root_dir
      builder, model_note = model_builder(model, tmp)
      input_shape, num_classes = model_signature(model)
      splits, data_note, warnings = splits_maker(train, reward, test, num_classes,
                                                 input_shape)
      root_dir = os.path.abspath(os.path.expanduser(
          root_dir or tempfile.mkdtemp(prefix="purl_tf_prune_")))
      description = (f"# purl_tf.prune(method={method!r}, target_sparsity={target_sparsity!r}"
                     + "".join(f", {k}={v!r}" for k, v in run_arguments.items()
                               if k != "overwrite" and not (
                                   k in CHANNEL_ARGUMENTS and v == RUN_ARGUMENTS[k]))
                     + f")\n# model: {model_note}\n# data: {data_note}\n")
      _log.info(f"prune(): run folder {root_dir}")
      result = pipeline.run(root_dir, builder, splits, method=method,
                            target_sparsity=target_sparsity, description=description,
                            warnings=warnings, **run_arguments)
  except PurlError as error:
    # Raised through gin-wrapped calls, its message carries gin's "In call to
    # configurable ..." lines: the user gets the first line, the one that names the fix.
    raise PurlError(str(error).strip().splitlines()[0]).with_traceback(
        error.__traceback__) from None
  results = result.to_json()
  pruned = keras.models.load_model(results["pruned_model"], compile=False)
  return PruneResult(model=pruned, allocation=dict(results["allocation"]), results=results,
                     root_dir=root_dir)


# --- knobs -----------------------------------------------------------------------------


def knob_table() -> Dict[str, Dict[str, str]]:
  """configurable name -> {parameter: why not applicable ('' when it is)} for every gin
  configurable of purl_tf, over the parameters gin may bind (with a default, not
  denylisted)."""
  table = {}
  for _, configurable in sorted(gin.config._REGISTRY.items()):  # pylint: disable=protected-access
    if not (configurable.module or "").startswith("purl_tf"):
      continue
    name = configurable.name
    denied = set(configurable.denylist or ())
    allowed = configurable.allowlist
    parameters = {}
    for parameter in inspect.signature(configurable.wrapped).parameters.values():
      if (parameter.default is inspect.Parameter.empty or parameter.name in denied
          or (allowed and parameter.name not in allowed)
          or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)):
        continue
      why = NOT_APPLICABLE.get(name, "")
      if name == "load_splits" and parameter.name not in SPLITS_KNOBS:
        why = "prune() takes the data as its train, reward and test arguments"
      if name == "train_eval" and parameter.name == "model_builder":
        why = "the model is prune()'s `model` argument"
      parameters[parameter.name] = why
    table[name] = parameters
  return table


def resolve_knobs(knobs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(pipeline.run arguments, gin bindings {'configurable.parameter': value}) of prune()'s
  keyword arguments; a PurlError, listing the candidates, for a name that is unknown,
  ambiguous or not applicable to prune()."""
  table = knob_table()
  run_arguments, bindings = dict(RUN_ARGUMENTS), {}
  for key, value in knobs.items():
    name = key[len("train_eval."):] if key.startswith("train_eval.") else key
    if name in RUN_ARGUMENTS:
      run_arguments[name] = value
      continue
    if name in ("method", "target_sparsity"):
      raise PurlError(f"{key}: pass it as prune()'s {name} argument.")
    qualified = _qualify(key, table)
    configurable, parameter = qualified.rsplit(".", 1)
    why = table[configurable][parameter]
    if why:
      raise PurlError(f"{qualified} does not apply to prune(): {why}.")
    bindings[qualified] = value
  return run_arguments, bindings


def _qualify(key: str, table: Dict[str, Dict[str, str]]) -> str:
  """'configurable.parameter' for a knob's name, bare or qualified."""
  every = sorted(f"{c}.{p}" for c, parameters in table.items() for p in parameters)
  if "." in key:
    configurable, parameter = key.rsplit(".", 1)
    configurable = configurable.rsplit(".", 1)[-1]  # a module path before it is optional
    if parameter in table.get(configurable, {}):
      return f"{configurable}.{parameter}"
    close = difflib.get_close_matches(key, every, n=5, cutoff=0.6)
    raise PurlError(f"{key} is not a parameter of a purl_tf run: "
                    + (f"did you mean {', '.join(close)}?" if close else
                       "see docs/configuration.md for them."))
  found = [f"{c}.{key}" for c, parameters in table.items() if key in parameters]
  applicable = [name for name in found if not _why(name, table)]
  if len(applicable) == 1 or (len(found) == 1 and not applicable):
    return (applicable or found)[0]
  if found and not applicable:
    raise PurlError(f"{key} ({', '.join(found)}) does not apply to prune(): "
                    f"{_why(found[0], table)}.")
  if len(applicable) > 1:
    raise PurlError(f"{key} is ambiguous: pass one of {', '.join(sorted(applicable))} "
                    "(e.g. **{'" + sorted(applicable)[0] + "': ...}).")
  names = sorted({p for parameters in table.values() for p in parameters}
                 | set(RUN_ARGUMENTS))
  close = difflib.get_close_matches(key, names + every, n=5, cutoff=0.6)
  raise PurlError(f"{key} is not a parameter of a purl_tf run: "
                  + (f"did you mean {', '.join(close)}?" if close else
                     "see docs/configuration.md for them."))


def _why(qualified: str, table: Dict[str, Dict[str, str]]) -> str:
  configurable, parameter = qualified.rsplit(".", 1)
  return table[configurable][parameter]


# gin's global state, as its module holds it: bindings, the operative config, imports,
# singletons and the lock. gin has no public save and restore.
_GIN_DICTS = ("_CONFIG", "_OPERATIVE_CONFIG", "_SINGLETONS")


@contextlib.contextmanager
def gin_bindings(bindings: Dict[str, Any]):
  """Binds `bindings` ({'configurable.parameter': value}) over the caller's gin config
  while the block runs, then puts gin's config back as it was (bindings, operative config,
  imports, singletons, lock): nothing of one prune() call reaches the next, or the
  caller."""
  config = gin.config
  saved = {name: {key: dict(value) if isinstance(value, dict) else value
                  for key, value in getattr(config, name).items()} for name in _GIN_DICTS}
  imports = set(config._IMPORTS)  # pylint: disable=protected-access
  locked = gin.config_is_locked()
  try:
    with gin.unlock_config():
      for key, value in bindings.items():
        gin.bind_parameter(key, value)
      yield
  finally:
    for name, values in saved.items():
      getattr(config, name).clear()
      getattr(config, name).update(values)
    config._IMPORTS.clear()  # pylint: disable=protected-access
    config._IMPORTS.update(imports)  # pylint: disable=protected-access
    config._set_config_is_locked(locked)  # pylint: disable=protected-access


# --- the model ---------------------------------------------------------------------------


def _is_keras3(model) -> bool:
  keras3 = sys.modules.get("keras")
  return bool(keras3 and getattr(keras3, "__version__", "").startswith("3")
              and isinstance(model, keras3.Model))


def model_builder(model, folder: str):
  """(builder, note): builder(input_shape, num_classes) makes a copy of `model` holding its
  weights (in the caller's strategy scope); note names it and fingerprints its weights.

  A tf-keras model is cloned; a Keras 3 model is saved in `folder` and translated to its
  tf-keras twin by models.saved_model, which keeps the original for the Keras 3 output.
  """
  if isinstance(model, keras.Model):
    kind = "tf-keras"
    if not model.inputs:
      raise PurlError(f"model {model.name} has no symbolic inputs (a subclassed keras.Model):"
                      " build it with the functional API or keras.Sequential.")

    def build(input_shape, num_classes):
      del input_shape, num_classes  # checked against the data by check_compatible
      copy = keras.models.clone_model(model)
      copy.set_weights(model.get_weights())
      return copy
  elif _is_keras3(model):
    kind = "Keras 3"
    path = os.path.join(folder, "model.keras")
    model.save(path)
    build = functools.partial(models.saved_model, path=path, safe_mode=False)
  else:
    raise PurlError(f"model is a {type(model).__module__}.{type(model).__name__}: pass a "
                    "tf-keras or Keras 3 keras.Model.")
  weights = model.get_weights()
  digest = hashlib.sha1()
  for array in weights:
    digest.update(np.ascontiguousarray(array).tobytes())
  count = sum(int(np.prod(array.shape)) for array in weights)
  return build, f"{model.name} ({kind}), {count:,} weights, sha1 {digest.hexdigest()}"


def model_signature(model) -> Tuple[Tuple, int]:
  """((H, W, C) the model takes, None where any size; the classes it predicts)."""
  inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
  if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
    raise PurlError(f"model {model.name} must have one input and one output: purl_tf prunes "
                    "single-input classifiers built with the functional API or Sequential.")
  shape = tuple(inputs[0].shape[1:])
  if len(shape) != 3:
    raise PurlError(f"model {model.name} takes inputs of shape {shape}: purl_tf prunes image "
                    "classifiers taking (H, W, C) images.")
  return shape, int(outputs[0].shape[-1])


# --- the data ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Split:
  """One split of the caller's data, unbatched: (image float32 (H, W, C), label int64 ())."""
  examples: tf.data.Dataset
  kind: str  # 'numpy arrays' or 'tf.data'
  count: int
  batch: Optional[int]  # the caller's batch size, for a batched dataset
  fingerprint: str


def _split(value, role: str, num_classes: int) -> _Split:
  """The caller's `value` for `role` as a _Split."""
  if isinstance(value, tf.data.Dataset):
    return _dataset_split(value, role)
  if isinstance(value, (tuple, list)) and len(value) == 2:
    return _array_split(value, role, num_classes)
  raise PurlError(f"{role} is a {type(value).__name__}: pass a tf.data.Dataset of (images, "
                  "labels) or a tuple (x, y) of NumPy arrays.")


def _array_split(value, role: str, num_classes: int) -> _Split:
  x, y = (np.asarray(part) for part in value)
  if x.ndim != 4:
    raise PurlError(f"{role}: x has shape {x.shape}: give images as (N, H, W, C), e.g. "
                    "x.reshape(-1, 28, 28, 1) for grey MNIST digits.")
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
    raise PurlError(f"{role}: y has shape {y.shape} and dtype {y.dtype} for {len(x)} images: "
                    "give integer class indices, one per image (not one-hot).")
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise PurlError(f"{role}: labels run from {y.min()} to {y.max()}, but the model predicts "
                    f"{num_classes} classes (0 to {num_classes - 1}).")
  x, y = x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)
  digest = hashlib.sha1(np.ascontiguousarray(x).tobytes())
  digest.update(np.ascontiguousarray(y).tobytes())
  return _Split(tf.data.Dataset.from_tensor_slices((x, y)), "numpy arrays", len(x), None,
                f"{role} {len(x)} arrays sha1 {digest.hexdigest()}")


def _dataset_split(value: tf.data.Dataset, role: str) -> _Split:
  spec = value.element_spec
  if not isinstance(spec, tuple) or len(spec) != 2:
    raise PurlError(f"{role}: the dataset's elements are {spec}: give (images, labels) "
                    "pairs.")
  images, labels = spec
  if value.cardinality() == tf.data.INFINITE_CARDINALITY:
    raise PurlError(f"{role}: the dataset is endless (repeat()): give one pass over the data.")
  batched = images.shape.rank == 4
  if images.shape.rank not in (3, 4):
    raise PurlError(f"{role}: the dataset's images have shape {images.shape}: give (H, W, C) "
                    "images, or batches of them (B, H, W, C).")
  batch = None
  if batched:
    batch = images.shape[0] or int(tf.shape(next(iter(value))[0])[0])
    value = value.unbatch()
  label_rank = labels.shape.rank - (1 if batched else 0)
  if label_rank not in (0, 1) or (label_rank == 1 and labels.shape[-1] != 1):
    raise PurlError(f"{role}: the dataset's labels have shape {labels.shape}: give integer "
                    "class indices, one per image (not one-hot).")
  examples = value.map(lambda x, y: (tf.cast(x, tf.float32), tf.reshape(tf.cast(y, tf.int64),
                                                                         [])),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
  if not batched and value.cardinality() >= 0:
    count = int(value.cardinality())
  elif batched and images.shape[0] and value.cardinality() >= 0:  # full batches only
    count = int(value.cardinality()) * batch
  else:  # unknown: counted in one pass
    count = int(examples.reduce(np.int64(0), lambda n, _: n + 1))
  return _Split(examples, "tf.data", count, batch, f"{role} {count} from tf.data")


def splits_maker(train, reward, test, num_classes: int, input_shape: Tuple):
  """(maker, note, warnings): maker(num_replicas=...) -> data.Splits of the caller's data,
  batched for the replicas as the bound load_splits parameters (SPLITS_KNOBS) say; note
  fingerprints the data; warnings say what the results should be read with."""
  train, reward = _split(train, "train", num_classes), _split(reward, "reward", num_classes)
  warnings = []
  if test is None:
    test = dataclasses.replace(reward, fingerprint="test = reward")
    warnings.append("no test data was given: the test accuracies are measured on the reward "
                    "split, which the search chose on, so they are optimistic; pass prune()'s "
                    "test for an unbiased report.")
    _log.warning(warnings[-1])
  else:
    test = _split(test, "test", num_classes)
  shapes = {role: tuple(split.examples.element_spec[0].shape)
            for role, split in (("train", train), ("reward", reward), ("test", test))}
  for role, shape in shapes.items():
    if len(shape) != 3 or None in shape:
      raise PurlError(f"{role}: images of shape {shape}: give images of one size (H, W, C), "
                      "resized as the model takes them.")
    if any(m is not None and m != s for m, s in zip(input_shape, shape)):
      raise PurlError(f"the model takes images of shape {input_shape} but {role} holds "
                      f"{shape}: resize or reshape the data to the model's input.")
  if len(set(shapes.values())) > 1:
    raise PurlError(f"the splits hold images of different shapes {shapes}: give them all one.")
  for role, split in (("train", train), ("reward", reward), ("test", test)):
    if split.count < 1:
      raise PurlError(f"{role} holds no examples.")
  image_shape = shapes["train"]
  name = " + ".join(sorted({split.kind for split in (train, reward, test)}))
  note = f"{', '.join(s.fingerprint for s in (train, reward, test))}; images {image_shape}"

  def make(num_replicas: int = 1) -> data.Splits:
    knobs = {knob: pipeline.bound(data.load_splits, knob) for knob in SPLITS_KNOBS}
    per_replica = knobs["batch_size"]
    global_batch = train.batch or per_replica * num_replicas
    eval_batch = (knobs["eval_batch_size"] or 2 * per_replica) * num_replicas
    if train.count < global_batch:
      raise PurlError(f"train holds {train.count} examples, fewer than one batch of "
                      f"{global_batch}: give more, or smaller batches.")
    image_bytes = 4 * int(np.prod(image_shape))  # float32, as cached
    cache_reward = reward.count * image_bytes <= knobs["cache_eval_bytes"]
    cache_test = (reward.count * cache_reward + test.count) * image_bytes <= knobs[
        "cache_eval_bytes"]
    examples = train.examples.cache() if knobs["cache_train"] else train.examples
    seed0, buffer = knobs["shuffle_seed"], knobs["shuffle_buffer"]

    def shuffled(seed):
      return examples.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)

    def train_stream(start: int = 0, seed: Optional[int] = None) -> tf.data.Dataset:
      """Endless train batches from batch `start` of the sequence `seed` (default
      load_splits.shuffle_seed) fixes: a stream started anywhere gives the batches an
      earlier stream gave there (as load_splits' train_stream)."""
      seed = seed0 if seed is None else int(seed)
      ds = shuffled(seed).repeat().skip(int(start) * global_batch)
      return ds.batch(global_batch, drop_remainder=True).prefetch(AUTOTUNE)

    def evaluation(split: _Split, cache: bool) -> tf.data.Dataset:
      ds = split.examples.cache() if cache else split.examples
      return ds.batch(eval_batch).prefetch(AUTOTUNE)

    reward_ds = evaluation(reward, cache_reward)
    test_ds = reward_ds if test.examples is reward.examples else evaluation(test, cache_test)
    return data.Splits(
        train=shuffled(seed0).batch(global_batch, drop_remainder=True).prefetch(AUTOTUNE),
        train_stream=train_stream, reward=reward_ds, test=test_ds, num_classes=num_classes,
        image_shape=image_shape,
        num_examples={"train": train.count, "reward": reward.count, "test": test.count},
        batch_size=global_batch, name=name, reward_source="reward")

  return make, note, warnings
