"""Keras 3 models in and out: a user's Keras 3 file becomes a tf-keras twin, and a pruned
twin goes back into the Keras 3 model as a Keras 3 file.

purl_tf runs on tf-keras (tfmot and tf-agents need it), but since TensorFlow 2.16
`import keras` is Keras 3, so users' files are Keras 3 files. Keras 3 is imported inside
these functions only: it lives beside tf_keras in one process, and tf.keras stays tf-keras.

In (`load`): the Keras 3 model's functional graph is walked (by Keras 3's own graph runner,
as its clone_model does) and every layer is rebuilt as its tf-keras twin from its config
(dtype policies become their names; the activations tf-keras lacks or defines otherwise,
hard_sigmoid and hard_silu, become layers after the twin), nested functional and
Sequential models become nested tf-keras models, keras.ops arithmetic (+, -, *, /)
becomes TensorFlow op layers, and every twin takes its original's weights. The twin's
outputs are checked against Keras 3's before it is returned.

Out (`keep_original`, `write_pruned`): the Keras 3 model is kept in the run folder, and at
the end the pruned tf-keras model's weights are copied into it, layer by layer by name,
and it is saved as a Keras 3 .keras file that loads without purl_tf. A physically thinner
pruned model (a channel run's shrunk one: fewer filters or units) is copied into a Keras 3
rebuild of the original whose layers take its widths (`with_widths`), checked to compute
what the thinner model does.
"""
import inspect
import json
import os
import types
import zipfile
from typing import Optional

import h5py
import numpy as np
import tensorflow as tf
import tf_keras

from purl_tf.runtime import files
from purl_tf.errors import PurlError

# Attribute of a translated tf-keras model holding its Keras 3 original.
ORIGINAL = "keras3_original"
# keras.ops arithmetic in a Keras 3 graph (operation class name) -> its TensorFlow op.
OPERATIONS = {"Add": tf.math.add, "Subtract": tf.math.subtract,
              "Multiply": tf.math.multiply, "Divide": tf.math.truediv,
              "TrueDivide": tf.math.truediv}
# Keras 3 activations that tf-keras lacks or defines otherwise (its hard_sigmoid is
# 0.2 x + 0.5), rebuilt from layers: hard_sigmoid(x) = clip(x / 6 + 1/2, 0, 1).
LAYERED_ACTIVATIONS = ("hard_sigmoid", "hard_silu")
# Largest difference allowed between the outputs of a model and of its twin, relative to
# the largest output magnitude (float32 round-off over a deep network).
TOLERANCE = 1e-4
# Config keys of a layer's output channel count (Conv*: filters, Dense: units): what channel
# pruning shrinks. Every other width (batch norm, depthwise conv, a consumer's inputs)
# follows from the layer's input when the model is rebuilt.
WIDTHS = ("filters", "units")


def is_keras3_file(path: str) -> bool:
  """Whether `path` is a .keras or .h5 file written by Keras 3 (from its metadata)."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if "metadata.json" not in archive.namelist():
        return False
      version = json.loads(archive.read("metadata.json")).get("keras_version", "")
  elif h5py.is_hdf5(path):
    with h5py.File(path, "r") as handle:
      version = handle.attrs.get("keras_version", "")
  else:
    return False
  return str(version).startswith("3")


def load(path: str, safe_mode: bool = True) -> tf_keras.Model:
  """The tf-keras twin of the Keras 3 model in `path`, with its weights.

  The returned model holds its Keras 3 original in the attribute ORIGINAL. `safe_mode`
  is Keras 3's: it refuses a file holding Python code (a Lambda's lambda).
  """
  import keras  # pylint: disable=import-outside-toplevel
  try:
    original = keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
  except Exception as error:  # Keras 3 raises many types for an unreadable model.
    cause = error
    while cause.__cause__ or cause.__context__:  # Keras 3 wraps the error that says why.
      cause = cause.__cause__ or cause.__context__
    message = (str(cause).strip().splitlines() or [""])[0]
    if safe_mode and "safe_mode" in str(cause):  # Keras 3 refused Python code (a lambda).
      raise PurlError(f"{path} holds Python code (a lambda), which Keras 3 loads only from "
                      "a trusted file: bind saved_model.safe_mode=False if you trust "
                      "it.") from error
    raise PurlError(f"cannot load {path} with Keras 3 ({type(cause).__name__}: "
                    f"{message[:200]}): purl_tf translates models of built-in keras.layers "
                    "to tf-keras.") from error
  _weighted_leaves(original)  # Refuses duplicate names before any work.
  twin = _twin_model(original, {})
  _check_outputs(original, twin)
  # In a plain namespace: tf-keras tracks a Keras 3 model (a tf.Module) set as an
  # attribute, and would count its variables as the twin's.
  setattr(twin, ORIGINAL, types.SimpleNamespace(model=original))
  return twin


def keep_original(model: tf_keras.Model, root_dir: str) -> Optional[str]:
  """Saves the Keras 3 original of a twin made by `load` as root_dir/KERAS3_ORIGINAL, once.

  `model` is the twin, or a model calling it (models.saved_model's fixed input size).
  Returns the path; None when `model` is neither.
  """
  held = [getattr(m, ORIGINAL) for m in [model, *model.layers] if hasattr(m, ORIGINAL)]
  if not held:
    return None
  original = held[0].model
  path = os.path.join(root_dir, files.KERAS3_ORIGINAL)
  if not tf.io.gfile.exists(path):
    _save(original, path)
  return path


def write_pruned(model: tf_keras.Model, root_dir: str) -> Optional[str]:
  """Writes root_dir/PRUNED_MODEL_KERAS3: the Keras 3 original kept by `keep_original`
  holding the weights of `model`, its stripped (pruned) tf-keras twin.

  When `model` is thinner than the original (channel pruning's shrunk twin: layers of fewer
  filters or units), the original is rebuilt with `model`'s widths first (`with_widths`),
  and the written model is checked to compute what `model` does. Raises PurlError, in one
  line, when a layer of the original cannot be matched to one of `model`.

  Returns its path; None when the run's model did not come from Keras 3.
  """
  source = os.path.join(root_dir, files.KERAS3_ORIGINAL)
  if not tf.io.gfile.exists(source):
    return None
  import keras  # pylint: disable=import-outside-toplevel
  target = keras.saving.load_model(source, compile=False)
  pruned = _weighted_leaves(model)
  widths = _widths(target, pruned)
  if widths:
    target = with_widths(target, widths)
  for name, layer in _weighted_leaves(target).items():
    try:
      layer.set_weights(_counterpart(pruned, name, layer).get_weights())
    except ValueError as error:
      message = (str(error).strip().splitlines() or [""])[0]
      raise PurlError(f"layer {name} ({type(layer).__name__}) of the Keras 3 model: the "
                      f"weights of the pruned tf-keras model's {name} do not fit it "
                      f"({message[:200]}).") from error
  if widths:
    gap = _output_gap(target, model)
    if gap is not None:
      raise PurlError(f"the thinner Keras 3 rebuild of {target.name} computes outputs up to "
                      f"{gap:.3g} away from the pruned tf-keras model's: use "
                      f"{files.PRUNED_MODEL}, and report this model to purl_tf.")
  return _save(target, os.path.join(root_dir, files.PRUNED_MODEL_KERAS3))


def with_widths(model, widths: dict):
  """A Keras 3 copy of the Keras 3 functional or Sequential `model` (nested ones included)
  whose layers named in `widths` ({layer name: {config key: value}}, e.g. {'conv1':
  {'filters': 5}}) are rebuilt from their configs with those values; every other width
  follows from the layers' inputs. Weights are fresh: copy them in.
  """
  import keras  # pylint: disable=import-outside-toplevel

  def clone(layer):
    if not isinstance(layer, keras.layers.Layer):  # keras.ops arithmetic: stateless
      return layer
    return layer.__class__.from_config({**layer.get_config(), **widths.get(layer.name, {})})

  try:
    return keras.models.clone_model(model, clone_function=clone, recursive=True)
  except (TypeError, ValueError) as error:
    message = (str(error).strip().splitlines() or [""])[0]
    raise PurlError(f"Keras 3 cannot rebuild {model.name} with the pruned widths "
                    f"({type(error).__name__}: {message[:200]}).") from error


def _widths(model, pruned: dict) -> dict:
  """{layer name: {config key: width}} of the Keras 3 `model`'s layers whose width (WIDTHS)
  differs from that of their counterpart in `pruned` (_weighted_leaves of a tf-keras
  model)."""
  widths = {}
  for name, layer in _weighted_leaves(model).items():
    config = layer.get_config()
    for key in WIDTHS:
      if key not in config:
        continue
      width = _counterpart(pruned, name, layer).get_config().get(key)
      if width is None:
        raise PurlError(f"layer {name} ({type(layer).__name__}) of the Keras 3 model sets "
                        f"{key}, which its counterpart in the pruned tf-keras model "
                        f"({type(pruned[name]).__name__}) does not have.")
      if width != config[key]:
        widths.setdefault(name, {})[key] = width
  return widths


def _counterpart(pruned: dict, name: str, layer):
  """The layer named `name` in `pruned` (_weighted_leaves of the pruned tf-keras model);
  PurlError when it has none."""
  if name not in pruned:
    raise PurlError(f"layer {name} ({type(layer).__name__}) of the Keras 3 model has no "
                    "layer of that name holding weights in the pruned tf-keras model: "
                    "prune the model purl_tf translated from this Keras 3 file.")
  return pruned[name]


def _save(model, path: str) -> str:
  """Saves the Keras 3 `model` to `path` (.keras) beside it first, then renames it."""
  partial = path[:-len(".keras")] + ".partial.keras"
  tf.io.gfile.makedirs(os.path.dirname(path))
  model.save(partial)
  tf.io.gfile.rename(partial, path, overwrite=True)
  return path


def _weighted_leaves(model) -> dict:
  """name -> layer of every layer holding weights, in `model` and its nested models (Keras 3
  or tf-keras); raises PurlError when two have one name."""
  leaves = {}
  for layer in model.layers:
    inner = _weighted_leaves(layer) if hasattr(layer, "layers") else (
        {layer.name: layer} if layer.weights else {})
    for name in inner.keys() & leaves.keys():
      raise PurlError(f"model {model.name} has two layers named {name} (in different "
                      "nested models): rename one.")
    leaves.update(inner)
  return leaves


def _twin_model(model, twins: dict) -> tf_keras.Model:
  """The tf-keras twin of a Keras 3 functional or Sequential model, weights copied.

  `twins` maps id(Keras 3 layer) to its twin, so a shared layer stays shared.
  """
  import keras  # pylint: disable=import-outside-toplevel
  from keras.src.models.functional import Functional  # pylint: disable=import-outside-toplevel
  inputs = [tf_keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=_input_name(x))
            for x in model.inputs]

  def call(operation, *args, **kwargs):
    return _call_twin(operation, args, kwargs, twins)

  if isinstance(model, keras.Sequential):
    outputs = inputs[0]
    for layer in model.layers:
      outputs = call(layer, outputs)
  elif isinstance(model, Functional):
    outputs = model._run_through_graph(inputs, call_fn=call)  # pylint: disable=protected-access
  else:
    raise PurlError(f"model {model.name} is a subclassed keras.Model, which cannot be "
                    "translated to tf-keras layer by layer: build it with the functional API "
                    "(keras.Model(inputs, outputs)) or keras.Sequential.")
  return tf_keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)


def _input_name(tensor) -> str:
  """The name of the Keras 3 input layer that makes `tensor`."""
  return tensor._keras_history.operation.name  # pylint: disable=protected-access


def _call_twin(operation, args, kwargs, twins):
  """Calls the twin of a Keras 3 layer, model or operation on tf-keras tensors."""
  import keras  # pylint: disable=import-outside-toplevel
  if not isinstance(operation, keras.layers.Layer):
    kind = type(operation).__name__
    if kind not in OPERATIONS:
      raise PurlError(f"operation {operation.name} ({kind}) has no tf-keras twin in purl_tf, "
                      f"which translates keras.ops {sorted(OPERATIONS)} only: use a layer "
                      "(keras.layers) instead.")
    return OPERATIONS[kind](*args, **kwargs)
  if id(operation) in twins:
    return _activate(twins[id(operation)](*args, **kwargs), operation)
  if isinstance(operation, keras.Model):
    twin = twins[id(operation)] = _twin_model(operation, twins)
    return twin(*args, **kwargs)
  twin = twins[id(operation)] = _twin_layer(operation)
  outputs = twin(*args, **kwargs)
  try:
    twin.set_weights(operation.get_weights())
  except ValueError as error:
    raise PurlError(f"layer {operation.name} ({type(operation).__name__}): its Keras 3 "
                    "weights do not fit its tf-keras twin: save the model with tf_keras "
                    "instead.") from error
  return _activate(outputs, operation)


def _twin_layer(layer) -> tf_keras.layers.Layer:
  """The tf-keras layer of a built-in Keras 3 layer's class, built from its config."""
  kind = type(layer).__name__
  if not type(layer).__module__.startswith("keras."):
    raise PurlError(f"layer {layer.name} ({kind}) is a custom Keras 3 layer, which has no "
                    "tf-keras twin: build the model from built-in keras.layers, or save it "
                    "with tf_keras.")
  twin_class = getattr(tf_keras.layers, kind, None)
  if twin_class is None or kind == "Lambda":
    raise PurlError(f"layer {layer.name} is a Keras 3 {kind}, which purl_tf cannot "
                    "translate to tf-keras: replace it with built-in keras.layers that "
                    "tf-keras has too.")
  config = _twin_config(layer, twin_class)
  try:
    return twin_class.from_config(config)
  except (TypeError, ValueError) as error:
    raise PurlError(f"layer {layer.name} ({kind}) cannot be rebuilt in tf-keras from its "
                    f"Keras 3 config ({type(error).__name__}: {str(error)[:200]}).") from error


def _twin_config(layer, twin_class) -> dict:
  """`layer`'s Keras 3 config in tf-keras' terms.

  Keys tf-keras does not know are dropped when they hold nothing (None or False);
  otherwise the layer cannot be translated.
  """
  config = {key: _nested_config(value) for key, value in layer.get_config().items()}
  dtype = config.get("dtype")
  if isinstance(dtype, dict):
    config["dtype"] = dtype["config"]["name"]
  if config.get("activation") in LAYERED_ACTIVATIONS:
    config["activation"] = "linear"
  known = {name for base in twin_class.__mro__ if "__init__" in vars(base)
           for name in inspect.signature(base.__init__).parameters}
  for key in set(config) - known:
    if config[key] not in (None, False):
      raise PurlError(f"layer {layer.name} ({type(layer).__name__}) sets {key}={config[key]!r},"
                      " which tf-keras does not have: leave it unset to prune the model.")
    del config[key]
  return config


def _nested_config(value):
  """A serialized Keras 3 object (initializer, regularizer, ...) without its unset (None)
  arguments, which tf-keras may not know (e.g. input_axes); other values unchanged."""
  if isinstance(value, dict) and isinstance(value.get("config"), dict):
    return dict(value, config={key: item for key, item in value["config"].items()
                               if item is not None})
  return value


def _activate(outputs, layer):
  """`outputs` through `layer`'s activation when its twin could not apply it (hard_sigmoid,
  hard_silu), built from tf-keras layers; else `outputs` unchanged."""
  activation = getattr(layer, "activation", None)
  name = getattr(activation, "__name__", "")
  if name not in LAYERED_ACTIVATIONS:
    return outputs
  gate = tf_keras.layers.Rescaling(1 / 6, 0.5, name=f"{layer.name}_hard_sigmoid_scale")(
      outputs)
  gate = tf_keras.layers.ReLU(max_value=1.0, name=f"{layer.name}_hard_sigmoid_clip")(gate)
  if name == "hard_sigmoid":
    return gate
  return tf_keras.layers.Multiply(name=f"{layer.name}_hard_silu")([outputs, gate])


def _check_outputs(original, twin):
  """Raises PurlError unless `twin` computes what the Keras 3 `original` does."""
  gap = _output_gap(original, twin)
  if gap is not None:
    raise PurlError(f"the tf-keras translation of {original.name} computes outputs up to "
                    f"{gap:.3g} away from Keras 3's: save the model with tf_keras "
                    "instead, and report this model to purl_tf.")


def _output_gap(original, twin) -> Optional[float]:
  """None when the tf-keras `twin` computes what the Keras 3 `original` does on a batch of
  two random inputs (unknown sizes taken as 32), to TOLERANCE; else their largest
  difference."""
  rng = np.random.default_rng(0)
  inputs = [rng.uniform(0, 1, [2] + [d or 32 for d in x.shape[1:]]).astype(x.dtype)
            for x in original.inputs]
  inputs = inputs if len(inputs) > 1 else inputs[0]
  expected = [np.asarray(x) for x in tf.nest.flatten(original(inputs, training=False))]
  got = [np.asarray(x) for x in tf.nest.flatten(twin(inputs, training=False))]
  difference = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
  scale = max(float(np.abs(e).max()) for e in expected)
  return None if difference <= TOLERANCE * max(1.0, scale) else difference
