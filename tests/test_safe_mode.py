"""A model file runs no code of its own unless asked: models.saved_model refuses a file whose
Lambda layer holds Python code (Keras 3's safe_mode rule) before deserializing anything,
for tf-keras .h5, .keras and SavedModel files and Keras 3 .keras and .h5 files, nested
models included; `saved_model.safe_mode = False` lets a trusted file load.

Each Lambda's code writes a marker file when it runs. Loading a functional model rebuilds
its graph by calling every layer, so a Lambda's code runs during deserialization already
(the safe_mode=False cases show it): the refused loads must leave no marker.
"""
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from purl_tf import models
from purl_tf.errors import PurlError

# Keras 3 reads its TensorFlow variables through NumPy 2's deprecated __array__ (copy=False).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FORMATS = ("h5", "keras", "savedmodel")


def writes_marker(marker: str):
  """A Lambda function that creates the file `marker` each time it runs (its path is held
  in the function's closure, which is saved with the bytecode)."""
  return lambda t: (open(marker, "w").close(), t)[1]  # noqa: SIM115


def lambda_model(api, marker: str, nested: bool):
  """A small classifier of 8x8x3 images whose Lambda 'shift' writes `marker` when it runs;
  with `nested`, the Lambda sits in a functional model 'inner' inside the model.

  `api` is tf_keras or Keras 3 (keras)."""
  layers = api.layers
  inputs = api.Input((8, 8, 3))
  shift = layers.Lambda(writes_marker(marker), name="shift")
  if nested:
    inner_inputs = api.Input((8, 8, 3))
    x = api.Model(inner_inputs, shift(inner_inputs), name="inner")(inputs)
  else:
    x = shift(inputs)
  x = layers.Conv2D(4, 3, name="conv")(x)
  outputs = layers.Dense(3, activation="softmax", name="fc")(layers.Flatten()(x))
  return api.Model(inputs, outputs, name="outer")


def save(model, folder, fmt: str, marker: str) -> str:
  """Saves `model` in `folder` as `fmt` ('h5', 'keras' or 'savedmodel'), then deletes the
  marker that building and saving it wrote."""
  path = os.path.join(str(folder), "model" if fmt == "savedmodel" else f"model.{fmt}")
  model.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
  if os.path.exists(marker):
    os.remove(marker)
  assert not os.path.exists(marker)
  return path


def refused(path: str, marker: str) -> str:
  """The first line of the PurlError of models.saved_model(path), after checking that the
  Lambda's code did not run (marker absent) whether it raised or not."""
  try:
    models.saved_model((8, 8, 3), 3, path=path)
  except PurlError as error:
    message = str(error).splitlines()[0]
  else:
    message = None
  assert not os.path.exists(marker), "loading ran the Lambda's code"
  assert message is not None, f"{path} loaded"
  return message


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lambda_with_python_code_is_refused_before_it_runs(tmp_path, fmt, nested):
  marker = str(tmp_path / "lambda_ran")
  path = save(lambda_model(keras, marker, nested), tmp_path, fmt, marker)
  message = refused(path, marker)
  inside = " (in model 'inner')" if nested else ""
  assert f"layer 'shift'{inside} is a Lambda holding Python code" in message
  assert message.startswith(f"model file {path}:")
  assert "saved_model.safe_mode=False" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_safe_mode_off_loads_a_trusted_file(tmp_path, fmt):
  marker = str(tmp_path / "lambda_ran")
  original = lambda_model(keras, marker, nested=True)
  path = save(original, tmp_path, fmt, marker)
  gin.parse_config([f"saved_model.path = '{path}'", "saved_model.safe_mode = False"])
  model = models.saved_model((8, 8, 3), 3)
  assert os.path.exists(marker), "the Lambda's code ran as the model was rebuilt"
  x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(model(x).numpy(), original(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ("h5", "keras"))
def test_operator_layers_are_not_taken_for_python_code(tmp_path, fmt):
  # `x * 2.0 - 1.0` and tf.nn.relu are saved as TFOpLambda layers naming a TensorFlow
  # op, which loading looks up rather than runs from the file.
  inputs = keras.Input((8, 8, 3))
  x = tf.nn.relu(keras.layers.Conv2D(4, 3, name="conv")(inputs * 2.0 - 1.0))
  outputs = keras.layers.Dense(3, activation="softmax", name="fc")(keras.layers.Flatten()(x))
  path = str(tmp_path / f"ops.{fmt}")
  keras.Model(inputs, outputs).save(path)
  model = models.saved_model((8, 8, 3), 3, path=path)
  assert {"TFOpLambda"} <= {type(layer).__name__ for layer in model.layers}


@pytest.mark.parametrize("fmt", ("keras", "h5"))
def test_a_keras3_lambda_with_python_code_is_refused_before_it_runs(tmp_path, fmt):
  import keras as keras3  # pylint: disable=import-outside-toplevel
  assert keras3.__version__.startswith("3")
  marker = str(tmp_path / "lambda_ran")
  path = save(lambda_model(keras3, marker, nested=True), tmp_path, fmt, marker)
  assert "layer 'shift' (in model 'inner') is a Lambda holding Python code" in refused(
      path, marker)
  # Trusted, Keras 3 loads it (running the Lambda); purl_tf cannot translate a Lambda.
  with pytest.raises(PurlError) as untranslatable:
    models.saved_model((8, 8, 3), 3, path=path, safe_mode=False)
  assert os.path.exists(marker)
  assert "layer shift is a Keras 3 Lambda" in str(untranslatable.value).splitlines()[0]
