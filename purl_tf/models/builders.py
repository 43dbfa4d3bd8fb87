"""The networks PuRL prunes: builders, a user's saved model, and dense pre-training.

Every builder takes `input_shape` (H, W, C) and `num_classes` from the data and returns a
tf-keras functional model whose output is class probabilities (B, num_classes). Builders
are gin-configurable, so a gin file picks one with `train_eval.model_builder = @resnet50`.
"""
import json
import logging
import os
import zipfile
from typing import Optional, Sequence

import gin
import h5py
import tensorflow as tf
import tf_keras as keras
from google.protobuf import message
from tf_keras.protobuf import saved_metadata_pb2

from purl_tf.models import keras3
from purl_tf.runtime import files
from purl_tf.errors import PurlError

_log = logging.getLogger(__name__)


def _application(constructor, name, input_shape, num_classes, weights, **kwargs):
  """A keras.applications network with a `num_classes` softmax head.

  `weights`: None (random init), 'imagenet' (downloaded by Keras), or a local .h5 file
  (with its top when num_classes is 1000, without it otherwise).
  """
  if weights not in (None, "imagenet") and not os.path.exists(os.path.expanduser(weights)):
    raise PurlError(f"{name}.weights={weights!r} is not a file: give a local weights file, "
                    "'imagenet' (needs network access) or None.")
  weights = os.path.expanduser(weights) if weights not in (None, "imagenet") else weights
  top = num_classes == 1000 and (weights is None or tuple(input_shape[:2]) == (224, 224))
  try:
    if top:
      return constructor(input_shape=tuple(input_shape), weights=weights, classes=num_classes,
                         **kwargs)
    base = constructor(input_shape=tuple(input_shape), weights=weights, include_top=False,
                       pooling="avg", **kwargs)
  except (ValueError, OSError) as error:
    raise PurlError(f"cannot build {name} with weights={weights!r}: "
                    f"{str(error).splitlines()[0][:300]}") from error
  except Exception as error:  # Keras' download raises URL/HTTP errors of many types.
    raise PurlError(f"could not fetch {name} ImageNet weights ({type(error).__name__}): "
                    f"bind {name}.weights to a local .h5 file, or None.") from error
  outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
      base.output)
  return keras.Model(base.input, outputs, name=name)


@gin.configurable
def resnet50(input_shape: Sequence[int], num_classes: int, weights: Optional[str] = None):
  """Keras ResNet-50 (25.6 M parameters at 1000 classes); input >= 32x32x3."""
  return _application(keras.applications.ResNet50, "resnet50", input_shape, num_classes,
                      weights)


@gin.configurable
def mobilenet_v2(input_shape: Sequence[int], num_classes: int, weights: Optional[str] = None,
                 alpha: float = 1.0):
  """Keras MobileNet-V2 (3.5 M parameters at alpha 1.0, 1000 classes); input >= 32x32x3."""
  return _application(keras.applications.MobileNetV2, "mobilenet_v2", input_shape,
                      num_classes, weights, alpha=alpha)


@gin.configurable
def cifar_resnet(input_shape: Sequence[int], num_classes: int, depth: int = 20,
                 width: int = 16):
  """He et al.'s CIFAR ResNet: depth 6n+2 (20, 32, 56, 110), stages of width, 2x, 4x.

  Down-sampling shortcuts are 1x1 strided convolutions. ResNet-20: 0.27 M parameters.
  """
  if (depth - 2) % 6:
    raise PurlError(f"cifar_resnet.depth={depth} is not 6n+2 (20, 32, 44, 56, 110).")
  blocks = (depth - 2) // 6

  def conv_bn(x, filters, kernel, strides, name, relu=True):
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                            kernel_initializer="he_normal",
                            kernel_regularizer=keras.regularizers.L2(1e-4), name=name)(x)
    x = keras.layers.BatchNormalization(name=name + "_bn")(x)
    return keras.layers.ReLU(name=name + "_relu")(x) if relu else x

  inputs = keras.Input(tuple(input_shape))
  x = conv_bn(inputs, width, 3, 1, "conv1")
  for stage in range(3):
    filters = width * 2**stage
    for block in range(blocks):
      strides = 2 if stage > 0 and block == 0 else 1
      name = f"stage{stage + 1}_block{block + 1}"
      y = conv_bn(x, filters, 3, strides, name + "_conv1")
      y = conv_bn(y, filters, 3, 1, name + "_conv2", relu=False)
      if strides != 1 or x.shape[-1] != filters:
        x = conv_bn(x, filters, 1, strides, name + "_shortcut", relu=False)
      x = keras.layers.ReLU(name=name + "_out")(keras.layers.Add(name=name + "_add")([x, y]))
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name=f"cifar_resnet{depth}")


@gin.configurable
def lenet5(input_shape: Sequence[int], num_classes: int):
  """LeNet-5 (Caffe variant, ReLU): conv 5x5x20, pool, conv 5x5x50, pool, fc 500, fc.

  The classic magnitude-pruning benchmark; 431 k parameters at 28x28x1 and 10 classes.
  """
  inputs = keras.Input(tuple(input_shape))
  x = keras.layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(name="pool1")(x)
  x = keras.layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
  x = keras.layers.MaxPooling2D(name="pool2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(500, activation="relu", name="fc1")(x)
  outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name="lenet5")


@gin.configurable
def saved_model(input_shape: Sequence[int], num_classes: int, path: str = gin.REQUIRED,
                safe_mode: bool = True):
  """A user's model from a .keras / .h5 file or a SavedModel folder saved by tf-keras, or
  from a .keras / .h5 file saved by Keras 3 (translated to tf-keras by keras3.load).

  Its input and output must match the data; `check_compatible` says so otherwise. A model
  saved with inputs of unknown size, e.g. (None, None, 3), is given the data's size
  `input_shape` (H, W, C) by calling it on a keras.Input of that size (it becomes nested).

  Args:
    input_shape: (H, W, C) of the data's images.
    num_classes: of the data (checked by check_compatible, not here).
    path: the .keras / .h5 file or SavedModel folder.
    safe_mode: refuse a file holding Python code (a Lambda layer's function), which
      loading would run: Keras 3's rule, checked here in the file's model config before
      anything is deserialized, for every format (tf-keras checks only .keras files and
      runs an .h5 file's or a SavedModel's Lambda code as it loads). Set False only for
      a file you trust.
  """
  del num_classes  # Checked against the data by check_compatible.
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise PurlError(f"saved_model.path={path!r} does not exist: point it at a .keras/.h5 "
                    "file or a SavedModel folder.")
  if safe_mode:  # Before any loader: loading a file deserializes and runs its Lambdas.
    _refuse_python_code(path)
  if keras3.is_keras3_file(path):
    return _fix_input_size(keras3.load(path, safe_mode), input_shape)
  try:
    model = keras.models.load_model(path, compile=False, safe_mode=safe_mode)
  except Exception as error:
    message = (str(error).strip().splitlines() or [""])[0]
    if "safe_mode" in str(error):
      raise PurlError(f"{path} holds a Lambda layer with Python code, which tf-keras loads "
                      "only from a trusted file: bind saved_model.safe_mode=False if you "
                      "trust it.") from error
    raise PurlError(f"cannot load {path} as a tf-keras model ({type(error).__name__}: "
                    f"{message[:200]}): save it with tf_keras model.save(...), using "
                    "built-in layers or registered custom ones.") from error
  return _fix_input_size(model, input_shape)


# Keys of a tf-keras Lambda layer's config that say how a function is saved; "lambda"
# means as Python bytecode, which loading turns back into a function and runs.
_FUNCTION_TYPES = ("function_type", "output_shape_type", "mask_type")


def _refuse_python_code(path: str):
  """Raises PurlError, naming the layer, when the model file or SavedModel folder `path`
  holds Python code in its model config (a Lambda's bytecode, a Keras 3 `__lambda__`).

  Reads the config only (an .h5 file's model_config attribute, a .keras zip's config.json,
  a SavedModel's keras_metadata.pb), deserializing nothing; a config it cannot read is
  left to the loader, which fails on it.
  """
  for config in _model_configs(path):
    where = _python_code(config)
    if where is None:
      continue
    name, kind = where[-1] if where else ("?", "layer")
    outer = [model for model, _ in where[1:-1]]
    inside = f" (in model {'/'.join(outer)!r})" if outer else ""
    raise PurlError(f"model file {path}: layer {name!r}{inside} is a {kind} holding Python "
                    "code, which loading would run: rebuild it without Lambda, or bind "
                    "saved_model.safe_mode=False if you trust the file.")


def _model_configs(path: str) -> list:
  """The model configs (parsed JSON) saved in `path`, by its content, not its name."""
  try:
    if os.path.isdir(path):
      metadata_path = os.path.join(path, "keras_metadata.pb")
      if not os.path.isfile(metadata_path):
        return []
      metadata = saved_metadata_pb2.SavedMetadata()
      with open(metadata_path, "rb") as handle:
        metadata.ParseFromString(handle.read())
      return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
          return []
        return [json.loads(archive.read("config.json"))]
    if h5py.is_hdf5(path):
      with h5py.File(path, "r") as handle:
        config = handle.attrs.get("model_config")
      if config is None:
        return []
      return [json.loads(config.decode("utf-8") if isinstance(config, bytes) else config)]
  except (OSError, ValueError, zipfile.BadZipFile, message.DecodeError):
    return []  # Unreadable: the loader says why.
  return []


def _python_code(node, where=()):
  """The layers, as (name, class name) from the outermost model in, enclosing the first
  serialized Python code in the config `node`; None when it holds none."""
  if isinstance(node, dict):
    config = node.get("config")
    if "class_name" in node and isinstance(config, dict) and isinstance(config.get("name"),
                                                                        str):
      where = where + ((config["name"], str(node["class_name"])),)
    if node.get("class_name") == "__lambda__" or any(
        node.get(key) == "lambda" for key in _FUNCTION_TYPES):
      return where
    children = list(node.values())
  elif isinstance(node, list):
    children = node
  else:
    return None
  for child in children:
    found = _python_code(child, where)
    if found is not None:
      return found
  return None


def _fix_input_size(model: keras.Model, input_shape: Sequence[int]) -> keras.Model:
  """`model` called on a keras.Input of `input_shape` (H, W, C) when its own input size is
  unknown and otherwise agrees; else `model` unchanged (check_compatible judges it)."""
  if not model.inputs or len(model.inputs) != 1:
    return model
  own = tuple(model.inputs[0].shape[1:])
  fits = len(own) == len(input_shape) and all(
      o is None or o == i for o, i in zip(own, input_shape))
  if not fits or None not in own:
    return model
  inputs = keras.Input(tuple(input_shape), dtype=model.inputs[0].dtype)
  return keras.Model(inputs, model(inputs), name=model.name)


def _output_layer(model: keras.Model) -> keras.layers.Layer:
  """The layer making the model's first output, looked for inside wrappers and nested models."""
  names = getattr(model, "output_names", None)
  layer = model.get_layer(names[0]) if names else model.layers[-1]
  if isinstance(layer, keras.layers.Wrapper):
    layer = layer.layer
  return _output_layer(layer) if isinstance(layer, keras.Model) else layer


def outputs_probabilities(model: keras.Model) -> bool:
  """Whether the model ends in a softmax (else its outputs are logits); sees through wrappers
  and nested models."""
  last = _output_layer(model)
  if isinstance(last, keras.layers.Softmax):
    return True
  activation = getattr(last, "activation", None)
  return activation is keras.activations.softmax or getattr(
      activation, "__name__", "") == "softmax"


def check_compatible(model: keras.Model, image_shape: Sequence[int], num_classes: int):
  """Raises PurlError unless the model takes `image_shape` images and predicts `num_classes`."""
  if not model.inputs:
    raise PurlError(f"model {model.name} has no symbolic inputs (a subclassed keras.Model): "
                    "build it with the functional API (keras.Model(inputs, outputs)).")
  if len(model.inputs) != 1 or len(model.outputs) != 1:
    raise PurlError(f"model {model.name} has {len(model.inputs)} inputs and "
                    f"{len(model.outputs)} outputs: purl_tf prunes single-input, single-output "
                    "classifiers.")
  expected = tuple(model.inputs[0].shape[1:])
  if len(expected) != 3 or any(e is not None and e != g for e, g in zip(expected, image_shape)):
    raise PurlError(f"model {model.name} takes inputs of shape {expected} but the data gives "
                    f"{tuple(image_shape)}: bind load_splits.image_size / channels to match.")
  classes = model.outputs[0].shape[-1]
  if classes != num_classes:
    raise PurlError(f"model {model.name} predicts {classes} classes but the data has "
                    f"{num_classes}: build the model with num_classes={num_classes} or use "
                    "matching data.")


def classification_loss(model: keras.Model):
  """Sparse categorical cross-entropy on the model's outputs, per example (no reduction)."""
  return keras.losses.SparseCategoricalCrossentropy(
      from_logits=not outputs_probabilities(model), reduction=keras.losses.Reduction.NONE)


@gin.configurable(denylist=["model", "splits", "root_dir"])
def pretrain(model: keras.Model, splits, root_dir: str, epochs: int = 3,
             learning_rate: float = 1e-3, optimizer: str = "adam", cosine_decay: bool = False,
             verbose: int = 2) -> float:
  """Trains the dense baseline, or loads it from root_dir/dense when trained before.

  Call inside the strategy scope the model was built in. Only the train split is used for
  training and the reward split for the accuracy returned; test stays untouched.

  Args:
    model: the dense model (its weights are changed in place).
    splits: data.Splits.
    root_dir: run folder; the dense weights (trained or as given) are kept in
      root_dir/dense/weights.h5 and loaded from there on a rerun, and a model translated
      from Keras 3 keeps its original there (keras3.keep_original) to be written back as
      Keras 3 when pruned.
    epochs: passes over the train split; 0 keeps the weights the model came with.
    learning_rate: of the optimizer (initial, with cosine_decay).
    optimizer: 'adam' or 'sgd' (momentum 0.9).
    cosine_decay: decay the learning rate to 0 along a cosine over the epochs.
    verbose: Keras fit verbosity.
  Returns:
    accuracy on the reward split, a fraction.
  """
  keras3.keep_original(model, root_dir)
  path = os.path.join(root_dir, files.DENSE_WEIGHTS)
  if cosine_decay:
    steps = max(epochs * (splits.num_examples["train"] // splits.batch_size), 1)
    learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  optimizers = {"adam": lambda: keras.optimizers.Adam(learning_rate),
                "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=0.9)}
  if optimizer not in optimizers:
    raise PurlError(f"pretrain.optimizer={optimizer!r} is unknown: use 'adam' or 'sgd'.")
  model.compile(optimizer=optimizers[optimizer](), loss=keras.losses.SparseCategoricalCrossentropy(
      from_logits=not outputs_probabilities(model)), metrics=["accuracy"])
  if tf.io.gfile.exists(path):
    model.load_weights(path)
  else:
    if epochs > 0:
      model.fit(splits.train, epochs=epochs, validation_data=splits.reward, verbose=verbose)
    elif splits.reward_source == "train":
      _log.warning("pretrain.epochs = 0 and the reward is held out of the train split: if "
                   "the model was trained on that split, bind load_splits.reward_split to a split "
                   "it never saw (e.g. its test split).")
    tf.io.gfile.makedirs(os.path.dirname(path))
    partial = path + ".partial.h5"
    model.save_weights(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)
  return float(model.evaluate(splits.reward, verbose=0)[1])
