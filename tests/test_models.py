"""Model builders, a user's saved model, compatibility checks, dense pre-training, and the
tf-keras selection made by `import purl_tf`."""
import logging
import os
import platform
import subprocess
import sys

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from purl_tf import models
from purl_tf.errors import PurlError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _accuracy(model, dataset):
  hits = count = 0
  for images, labels in dataset:
    predicted = np.argmax(model(images, training=False).numpy(), axis=-1)
    hits += int(np.sum(predicted == labels.numpy()))
    count += int(labels.shape[0])
  return hits / count


# --- Dense pre-training -------------------------------------------------------------------


def test_pretrained_lenet_beats_95_percent_on_test(pretrained_lenet, mnist5k_splits):
  model = pretrained_lenet()
  # The test split was never used by pretrain (train for fitting, reward for validation).
  assert _accuracy(model, mnist5k_splits.test) > 0.95
  assert pretrained_lenet.reward_accuracy > 0.95


def test_pretrain_reuses_the_cached_dense_weights(pretrained_lenet, mnist5k_splits):
  reference = pretrained_lenet()
  model = models.lenet5(mnist5k_splits.image_shape, mnist5k_splits.num_classes)
  assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(),
                                                      reference.get_weights()))
  # Same root_dir: the weights are loaded, not trained again (so epochs has no effect).
  accuracy = models.pretrain(model, mnist5k_splits, root_dir=pretrained_lenet.root_dir,
                             epochs=50, verbose=0)
  for got, want in zip(model.get_weights(), reference.get_weights()):
    np.testing.assert_array_equal(got, want)
  assert accuracy == pytest.approx(pretrained_lenet.reward_accuracy, abs=1e-6)
  assert accuracy == pytest.approx(_accuracy(model, mnist5k_splits.reward), abs=1e-6)


def test_pretrain_rejects_unknown_optimizer(mnist5k_splits, tmp_path):
  model = models.lenet5(mnist5k_splits.image_shape, mnist5k_splits.num_classes)
  with pytest.raises(PurlError, match="optimizer='rmsprop'"):
    models.pretrain(model, mnist5k_splits, root_dir=str(tmp_path), optimizer="rmsprop")
  assert not os.path.exists(os.path.join(str(tmp_path), "dense"))


def test_pretrain_without_epochs_warns_when_the_reward_is_held_out_of_train(
    mnist5k_splits, tmp_path, caplog):
  """Given weights (no pre-training) may have seen the train split the reward comes from."""
  caplog.set_level(logging.INFO, logger="purl_tf")
  assert mnist5k_splits.reward_source == "train"
  model = models.lenet5(mnist5k_splits.image_shape, mnist5k_splits.num_classes)
  models.pretrain(model, mnist5k_splits, root_dir=str(tmp_path / "given"), epochs=0)
  assert "bind load_splits.reward_split" in caplog.text


# --- Builders ------------------------------------------------------------------------------


@pytest.mark.parametrize("builder, shape, classes", [
    (models.lenet5, (28, 28, 1), 10),
    (models.cifar_resnet, (32, 32, 3), 10),
    (models.mobilenet_v2, (32, 32, 3), 10),  # include_top=False + purl_tf's softmax head
])
def test_builders_output_class_probabilities(builder, shape, classes):
  model = builder(shape, classes)
  assert tuple(model.input_shape) == (None,) + shape
  assert tuple(model.output_shape) == (None, classes)
  assert models.outputs_probabilities(model)
  models.check_compatible(model, shape, classes)  # does not raise
  outputs = model(np.random.default_rng(0).uniform(0, 1, (3,) + shape).astype(np.float32))
  outputs = outputs.numpy()
  assert np.all(outputs >= 0)
  np.testing.assert_allclose(outputs.sum(axis=-1), 1.0, rtol=1e-5)


def test_lenet5_parameter_count():
  model = models.lenet5((28, 28, 1), 10)
  # conv 5x5x1x20 (+20), conv 5x5x20x50 (+50), fc 800x500 (+500), fc 500x10 (+10);
  # 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4, so fc1 sees 4*4*50 = 800 inputs.
  expected = (25 * 20 + 20) + (25 * 20 * 50 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
  assert model.count_params() == expected


def _cifar_resnet_expectations(depth, width=16, in_channels=3, classes=10):
  """3x3 conv count, 1x1 projection count and conv kernel weights of He et al.'s net."""
  blocks = (depth - 2) // 6
  convs3 = 1 + 3 * blocks * 2
  projections = 2  # the first block of stages 2 and 3 changes width and stride
  weights = 9 * in_channels * width  # conv1
  for stage in range(3):
    filters = width * 2**stage
    previous = width * 2**max(stage - 1, 0)
    weights += 9 * previous * filters + (2 * blocks - 1) * 9 * filters * filters
    if stage > 0:
      weights += previous * filters  # 1x1 shortcut
  return convs3, projections, weights


@pytest.mark.parametrize("depth", [20, 32])
def test_cifar_resnet_structure(depth):
  model = models.cifar_resnet((32, 32, 3), 10, depth=depth)
  convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
  convs3, projections, weights = _cifar_resnet_expectations(depth)
  assert sum(tuple(c.kernel_size) == (3, 3) for c in convs) == convs3
  ones = [c for c in convs if tuple(c.kernel_size) == (1, 1)]
  assert len(ones) == projections and all(tuple(c.strides) == (2, 2) for c in ones)
  assert len(convs) == convs3 + projections and len(dense) == 1
  assert sum(int(np.prod(c.kernel.shape)) for c in convs) == weights
  if depth == 20:
    # "ResNet-20: 0.27 M parameters" (He et al. report 0.27 M).
    assert 0.265e6 < model.count_params() < 0.28e6
  assert model.output_shape == (None, 10)


@pytest.mark.parametrize("depth", [21, 0, 19])
def test_cifar_resnet_rejects_depth_not_6n_plus_2(depth):
  with pytest.raises(PurlError, match=f"depth={depth}"):
    models.cifar_resnet((32, 32, 3), 10, depth=depth)


def test_outputs_probabilities_detects_softmax_and_logits():
  inputs = keras.Input((4,))
  logits = keras.Model(inputs, keras.layers.Dense(3)(inputs))
  softmax_layer = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(inputs)))
  softmax_string = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
  assert not models.outputs_probabilities(logits)
  assert models.outputs_probabilities(softmax_layer)
  assert models.outputs_probabilities(softmax_string)
  # The loss treats each model's outputs correctly: same value from logits and softmax.
  x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0])
  raw = logits(x).numpy()
  expected = -(raw - np.log(np.exp(raw).sum(-1, keepdims=True)))[np.arange(5), labels]
  np.testing.assert_allclose(models.classification_loss(logits)(labels, raw), expected,
                             rtol=1e-5)
  probabilities = tf.nn.softmax(raw).numpy()
  np.testing.assert_allclose(
      models.classification_loss(softmax_string)(labels, probabilities), expected, rtol=1e-4)


def test_check_compatible_rejects_mismatches():
  model = models.lenet5((28, 28, 1), 10)
  with pytest.raises(PurlError) as excinfo:
    models.check_compatible(model, (28, 28, 1), 100)
  assert "10 classes" in str(excinfo.value) and "100" in str(excinfo.value)
  assert "\n" not in str(excinfo.value)
  for shape in [(32, 32, 1), (28, 28, 3)]:
    with pytest.raises(PurlError) as excinfo:
      models.check_compatible(model, shape, 10)
    assert str(shape) in str(excinfo.value) and "image_size" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
  inputs = keras.Input((28, 28, 1))
  flat = keras.layers.Flatten()(inputs)
  two_heads = keras.Model(inputs, [keras.layers.Dense(10)(flat), keras.layers.Dense(10)(flat)])
  with pytest.raises(PurlError, match="2 outputs"):
    models.check_compatible(two_heads, (28, 28, 1), 10)


def test_check_compatible_accepts_variable_input_size():
  inputs = keras.Input((None, None, 3))
  pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
  model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(pooled))
  models.check_compatible(model, (64, 48, 3), 5)
  with pytest.raises(PurlError):
    models.check_compatible(model, (64, 48, 1), 5)


def test_saved_model_loads_keras_and_h5_files(tmp_path):
  original = models.lenet5((28, 28, 1), 10)
  x = np.random.default_rng(2).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
  expected = original(x).numpy()
  for extension in (".keras", ".h5"):
    path = str(tmp_path / f"user_model{extension}")
    original.save(path)
    loaded = models.saved_model((28, 28, 1), 10, path=path)
    assert isinstance(loaded, keras.Model)
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-6, atol=1e-7)
    models.check_compatible(loaded, (28, 28, 1), 10)


def test_saved_model_errors(tmp_path):
  missing = str(tmp_path / "absent.keras")
  with pytest.raises(PurlError) as excinfo:
    models.saved_model((28, 28, 1), 10, path=missing)
  assert missing in str(excinfo.value).splitlines()[0]
  garbage = tmp_path / "garbage.h5"
  garbage.write_bytes(b"not an hdf5 file")
  with pytest.raises(PurlError) as excinfo:
    models.saved_model((28, 28, 1), 10, path=str(garbage))
  assert "cannot load" in str(excinfo.value).splitlines()[0]


@pytest.mark.parametrize("builder", [models.resnet50, models.mobilenet_v2])
def test_application_weights_must_be_a_local_file(builder, tmp_path):
  missing = str(tmp_path / "weights.h5")
  with pytest.raises(PurlError) as excinfo:
    builder((32, 32, 3), 10, weights=missing)
  assert missing in str(excinfo.value).splitlines()[0]


# --- tf-keras selection ----------------------------------------------------------------------

# What a child process prints: which Keras `tf.keras` resolved to, by the module of its Model.
_REPORT = ("import tf_keras; print('KERAS', tf.keras.Model.__module__.split('.')[0], "
           "tf_keras.__version__)")


def _python(code, **env_updates):
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env.update(env_updates)
  return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _keras_report(stdout):
  lines = [line.split()[1:] for line in stdout.splitlines() if line.startswith("KERAS ")]
  assert len(lines) == 1, stdout
  return lines[0]


@pytest.fixture(scope="module")
def import_order_runs():
  """Import orders, each in a child process with TF_USE_LEGACY_KERAS and
  TF_ENABLE_ONEDNN_OPTS unset (in parallel). 'purl_tf_first' and 'onednn_unset' are one
  process: both import purl_tf first in that environment."""
  onednn = ("from tensorflow.python.util import _pywrap_util_port as port; "
            "print('ONEDNN', port.IsMklEnabled())")
  runs = {
      "keras3_first": _python("import tensorflow as tf; tf.keras.layers; import purl_tf"),
      "onednn_off": _python(f"import purl_tf; import tensorflow as tf; {onednn}",
                            TF_ENABLE_ONEDNN_OPTS="0"),
      "purl_tf_first": _python("import sys; import purl_tf; import tensorflow as tf; "
                               f"{onednn}; import purl_tf.pruning; "
                               "print('KERAS3_LOADED', 'keras' in sys.modules); "
                               f"{_REPORT}; import keras; print('KERAS3', keras.__version__)"),
      # TensorFlow itself accepts TF_USE_LEGACY_KERAS=true/True/1 (tensorflow/python/util/
      # lazy_loader.py): Keras 2 was chosen, so importing purl_tf after it must work.
      "legacy_true_tf_first": _python(f"import tensorflow as tf; tf.keras.layers; "
                                      f"import purl_tf; {_REPORT}",
                                      TF_USE_LEGACY_KERAS="true"),
  }
  results = {}
  for name, process in runs.items():
    stdout, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stdout, stderr)
  results["onednn_unset"] = results["purl_tf_first"]
  return results


def test_import_after_keras3_raises_import_error(import_order_runs):
  returncode, _, stderr = import_order_runs["keras3_first"]
  assert returncode != 0
  assert "ImportError: purl_tf needs tf-keras (Keras 2)" in stderr
  assert "import purl_tf before tensorflow" in stderr


def test_import_first_selects_tf_keras(import_order_runs):
  returncode, stdout, stderr = import_order_runs["purl_tf_first"]
  assert returncode == 0, stderr[-2000:]
  package, version = _keras_report(stdout)
  assert package == "tf_keras" and version.startswith("2.")


def test_tfmot_loads_without_keras3_which_a_user_model_can_still_load(import_order_runs):
  """purl_tf.pruning imports tfmot without its 2 s detour through Keras 3 (tfmot_loader);
  Keras 3 imports afterwards, for a user's Keras 3 model."""
  returncode, stdout, stderr = import_order_runs["purl_tf_first"]
  assert returncode == 0, stderr[-2000:]
  lines = stdout.splitlines()
  assert "KERAS3_LOADED False" in lines, stdout
  assert any(line.startswith("KERAS3 3.") for line in lines), stdout


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="purl_tf turns oneDNN on on x86-64 only")
def test_import_turns_onednn_on_unless_the_environment_says_otherwise(import_order_runs):
  """On an AVX2-only processor TensorFlow leaves oneDNN off by itself, and its default
  kernels train about 3 times slower; TF_ENABLE_ONEDNN_OPTS=0 still turns it off."""
  for name, expected in (("onednn_unset", "True"), ("onednn_off", "False")):
    returncode, stdout, stderr = import_order_runs[name]
    assert returncode == 0, stderr[-2000:]
    assert f"ONEDNN {expected}" in stdout.splitlines(), (name, stdout)


def test_import_after_tf_chose_keras2_by_env_true(import_order_runs):
  """purl_tf/__init__.py reads tf.keras.__version__, which tf-keras' API module lacks."""
  returncode, stdout, stderr = import_order_runs["legacy_true_tf_first"]
  assert returncode == 0, stderr.strip().splitlines()[-1]
  package, version = _keras_report(stdout)
  assert package == "tf_keras" and version.startswith("2.")
