"""Keras 3 models in and out: a model saved by a plain Keras 3 process (`import keras`, no
purl_tf, no TF_USE_LEGACY_KERAS) is translated to tf-keras with the same predictions, is
pruned, and its pruned Keras 3 file loads in a fresh plain Keras 3 process with the same
zeros and predictions; a custom Keras 3 layer is refused in one line.

The Keras 3 side runs USER_SCRIPT in subprocesses: `write` builds and saves the models
(a functional model with a residual add, a concatenation, grouped, depthwise and separable
convolutions, batch norm, hard_sigmoid and hard_silu activations, a keras.ops product, a
nested keras.applications MobileNetV3Small (minimalistic) and a dense head; a small CNN
as .h5; a model with a custom layer) and predicts scikit-learn digits tiled to 32x32x3;
`read` loads purl_tf's Keras 3 outputs and reports their zeros and predictions.
"""
import json
import os
import subprocess
import sys

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tf_keras as keras

from purl_tf import models, pruning, train
from purl_tf.models import keras3
from purl_tf.run import pipeline
from purl_tf.runtime import files
from purl_tf.errors import PurlError

from conftest import REPO

# Keras 3 reads its TensorFlow variables through NumPy 2's deprecated __array__ (copy=False).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# The layers pruned in the big model: its own 7 and 2 of the nested base's 34 (a mask
# writer is traced per pruned layer).
PRUNED = ("^(stem|grouped|depthwise|separable|to_rgb|fc|predictions|expanded_conv_project|"
          "conv_1)$")

USER_SCRIPT = r'''
import json, os, sys
import keras
import numpy as np
from sklearn.datasets import load_digits

assert not os.environ.get("TF_USE_LEGACY_KERAS") and "purl_tf" not in sys.modules
assert keras.__version__.startswith("3")
mode, folder = sys.argv[1:3]


def digits(count):
  """scikit-learn's 8x8 digits (0..16) as 32x32x3 images in 0..255, float32."""
  images = load_digits().images[:count] * 255 / 16
  return np.repeat(np.kron(images, np.ones((4, 4)))[..., None], 3, -1).astype("float32")


def randomize(model, seed):
  """Moves every weight off its initial value (batch-norm statistics and scales too)."""
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    shape = tuple(weight.shape)
    if weight.name in ("gamma", "moving_variance"):
      weight.assign(rng.uniform(0.5, 1.5, shape))
    else:
      weight.assign(weight.numpy() + rng.normal(0, 0.05, shape))


def big():
  layers = keras.layers
  inputs = keras.Input((32, 32, 3), name="image")
  x = layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
  x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
  x = layers.Add(name="residual")([x, layers.Conv2D(16, 3, padding="same", groups=4,
                                                    name="grouped")(x)])
  x = layers.Concatenate(name="concat")([
      layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x),
      layers.SeparableConv2D(16, 3, padding="same", name="separable")(x)])
  x = layers.Conv2D(3, 1, activation="hard_sigmoid", name="to_rgb")(x) * 255.0
  base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                             weights=None, minimalistic=True)
  x = layers.GlobalAveragePooling2D(name="pool")(base(x))
  x = layers.Activation("hard_silu", name="hard_silu")(layers.Dense(32, name="fc")(x))
  x = layers.Dropout(0.2, name="drop")(x)
  outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name="user_model")


def small():
  layers = keras.layers
  inputs = keras.Input((28, 28, 1))
  x = layers.Conv2D(8, 3, strides=2, name="conv1")(inputs)
  x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
  x = layers.Add()([x, layers.Conv2D(8, 3, padding="same", name="conv2")(x)])
  outputs = layers.Dense(10, activation="softmax", name="predictions")(layers.Flatten()(x))
  return keras.Model(inputs, outputs, name="small")


def write():
  model = big()
  randomize(model, 0)
  images = digits(32)
  np.savez(os.path.join(folder, "big.npz"), images=images, predictions=model(images))
  model.save(os.path.join(folder, "big.keras"))
  model = small()
  randomize(model, 1)
  model.save(os.path.join(folder, "small.h5"))
  with open(os.path.join(folder, "user_layers.py"), "w") as handle:
    handle.write(
        "import keras\n"
        "@keras.saving.register_keras_serializable(package='user')\n"
        "class Scale(keras.layers.Layer):\n"
        "  def call(self, inputs):\n"
        "    return inputs * 2.0\n")
  sys.path.insert(0, folder)
  import user_layers
  inputs = keras.Input((8, 8, 3))
  x = user_layers.Scale(name="scale")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
  keras.Model(inputs, keras.layers.Dense(2)(x)).save(os.path.join(folder, "custom.keras"))


def zeros(model):
  """name -> zeros of the weight purl_tf prunes, for every prunable layer."""
  counts = {}
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      counts.update(zeros(layer))
    elif type(layer).__name__ in ("Conv2D", "Dense", "DepthwiseConv2D", "SeparableConv2D"):
      weight = layer.pointwise_kernel if type(layer).__name__ == "SeparableConv2D" else (
          layer.kernel)
      counts[layer.name] = int(np.sum(weight.numpy() == 0))
  return counts


def read():
  """Reads a job from stdin ({name: [.keras path, .npy images path]}) once it comes, prints
  {name: {zeros, predictions}}."""
  report = {}
  for name, (path, images) in json.loads(sys.stdin.read()).items():
    model = keras.saving.load_model(path)
    report[name] = {"zeros": zeros(model),
                    "predictions": np.asarray(model(np.load(images))).tolist()}
  print(json.dumps(report))


{"write": write, "read": read}[mode]()
'''


def _plain_keras3(*args) -> subprocess.Popen:
  """Starts USER_SCRIPT with `args` in a plain Keras 3 process (no purl_tf, no tf-keras)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  return subprocess.Popen([sys.executable, "-c", USER_SCRIPT, *args], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=REPO)


def _finish(process: subprocess.Popen, job=None) -> str:
  """Sends `job` (JSON) to a process of _plain_keras3, waits for it; returns its stdout."""
  stdout, stderr = process.communicate(json.dumps(job), timeout=600)
  assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
  return stdout


def _zeros(model):
  """name -> zeros of the pruned weight of every pruning wrapper of a wrapped model."""
  return {wrapper.layer.name: int(np.sum(wrapper.pruning_vars[0][0].numpy() == 0))
          for wrapper in pruning.prunable_layers(model)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """The folder where a plain Keras 3 process wrote big.keras (and big.npz: 32 digit images
  and its predictions), small.h5 and custom.keras (with user_layers.py)."""
  folder = str(tmp_path_factory.mktemp("keras3"))
  _finish(_plain_keras3("write", folder))
  return folder


@pytest.fixture(scope="module")
def reader(written):
  """A fresh plain Keras 3 process, started early (its imports overlap purl_tf's work),
  waiting for the files to read."""
  process = _plain_keras3("read", written)
  yield process
  process.kill()


@pytest.fixture(scope="module")
def pruned(written, reader):
  """The big model through purl_tf: translated, pruned to 0.7 and written back as Keras 3.

  Returns (translated model, wrapped model, path of the Keras 3 pruned model).
  """
  del reader  # Started first, to import Keras 3 while this works.
  model = models.saved_model((32, 32, 3), 10, path=os.path.join(written, "big.keras"))
  wrapped = pruning.wrap(model, include=PRUNED)
  pruning.global_magnitude(pruning.PruningController(wrapped), 0.7)
  root = os.path.join(written, "pruned_run")
  keras3.keep_original(model, root)
  return model, wrapped, keras3.write_pruned(pruning.strip(wrapped), root)


@pytest.fixture(scope="module")
def run(written):
  """A short train_eval of small.h5 on mock MNIST (uniform 0.5): its RunResult."""
  gin.parse_config([
      "train_eval.model_builder = @saved_model",
      f"saved_model.path = '{os.path.join(written, 'small.h5')}'",
      "train_eval.method = 'uniform'", "train_eval.target_sparsity = 0.5",
      "train_eval.export_tflite = False", "load_splits.dataset = 'mnist'",
      "load_splits.batch_size = 8", "load_splits.reward_size = 8",
      "load_splits.test_size = 8", "pretrain.epochs = 0", "finetune.epochs = 0.2",
      "make_strategy.name = 'default'"])
  with tfds.testing.mock_data(num_examples=48):
    result = pipeline.train_eval(os.path.join(written, "run"))
  gin.clear_config()
  return result


@pytest.fixture(scope="module")
def read_back(written, reader, pruned, run):
  """What a fresh plain Keras 3 process reads in both pruned Keras 3 files: {name: {zeros,
  predictions}} for 'big' (on big.npz's images) and 'small' (on 4 of them, cropped)."""
  images = np.load(os.path.join(written, "big.npz"))["images"]
  inputs = {"big": images, "small": images[:4, 2:30, 2:30, :1] / 255}
  job = {"big": pruned[2], "small": run.pruned_model_keras3}
  for name in job:
    np.save(os.path.join(written, name + "_inputs.npy"), inputs[name])
    job[name] = [job[name], os.path.join(written, name + "_inputs.npy")]
  report = json.loads(_finish(reader, job).splitlines()[-1])
  return {name: dict(report[name], inputs=inputs[name]) for name in job}


def test_a_keras3_model_is_translated_with_its_predictions(written, pruned):
  model = pruned[0]
  assert keras3.is_keras3_file(os.path.join(written, "big.keras"))
  expected = np.load(os.path.join(written, "big.npz"))
  np.testing.assert_allclose(model(expected["images"], training=False).numpy(),
                             expected["predictions"], rtol=1e-4, atol=1e-5)
  kinds = {type(layer).__name__ for layer in pruning.leaf_layers(model)}
  assert {"Add", "Concatenate", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization",
          "TFOpLambda"} <= kinds
  assert model.get_layer("grouped").groups == 4
  assert isinstance(model.get_layer("MobileNetV3Small"), keras.Model)


def test_the_pruned_keras3_file_loads_in_plain_keras3_with_its_zeros(pruned, read_back):
  _, wrapped, path = pruned
  assert os.path.basename(path) == files.PRUNED_MODEL_KERAS3
  report = read_back["big"]
  zeros = _zeros(wrapped)
  assert len(zeros) == 9
  assert report["zeros"] == {name: zeros.get(name, 0) for name in report["zeros"]}
  assert sum(zeros.values()) > 0.6 * sum(w.pruning_vars[0][0].shape.num_elements()
                                         for w in pruning.prunable_layers(wrapped))
  np.testing.assert_allclose(report["predictions"],
                             wrapped(report["inputs"], training=False).numpy(),
                             rtol=1e-4, atol=1e-5)


def test_a_run_from_keras3_writes_keras3_too(run, read_back):
  assert run.pruned_model_keras3 == os.path.join(os.path.dirname(run.pruned_model),
                                                 files.PRUNED_MODEL_KERAS3)
  assert f"Pruned model, Keras 3 {run.pruned_model_keras3}" in train.summary(
      os.path.dirname(run.pruned_model), run)
  tf_keras_model = keras.models.load_model(run.pruned_model)
  report = read_back["small"]
  np.testing.assert_allclose(report["predictions"],
                             tf_keras_model(report["inputs"], training=False).numpy(),
                             rtol=1e-4, atol=1e-5)
  assert sum(report["zeros"].values()) == pytest.approx(
      run.global_sparsity * run.prunable_params, abs=len(report["zeros"]))


def test_tf_keras_files_are_not_taken_for_keras3(tmp_path):
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
  for name in ("model.keras", "model.h5"):
    model.save(str(tmp_path / name))
    assert not keras3.is_keras3_file(str(tmp_path / name))


def test_a_custom_keras3_layer_is_refused_in_one_line(written, monkeypatch):
  path = os.path.join(written, "custom.keras")
  with pytest.raises(PurlError) as unknown:  # its class cannot be imported
    models.saved_model((8, 8, 3), 2, path=path)
  monkeypatch.syspath_prepend(written)
  __import__("user_layers")
  with pytest.raises(PurlError) as custom:
    models.saved_model((8, 8, 3), 2, path=path)
  assert "Could not locate class 'Scale'" in str(unknown.value).splitlines()[0]
  assert "layer scale (Scale) is a custom Keras 3 layer" in str(custom.value).splitlines()[0]
