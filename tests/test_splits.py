"""Splits for pretrained weights (purl_tf.data): the reward drawn from the test split, the
train stream reading shuffled files through the whole split, the bounded evaluation cache.

Every image is 4x4 and carries its own id in its first pixel, so each example can be told
apart after decoding and normalisation."""
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from purl_tf import data
from purl_tf.errors import PurlError

NUM_TRAIN, NUM_VALIDATION, SHARDS = 96, 40, 4
REWARD_SIZE = 10


def _image(index):
  """uint8 (4, 4, 3): id `index` in the first pixel, the class (index % 2) in the rest."""
  image = np.full((4, 4, 3), 60 + 100 * (index % 2), np.uint8)
  image[0, 0] = (index % 256, index // 256, 0)
  return image


def _ids(dataset):
  """Ids of the examples of a dataset of 'scale' images (0..1), in order."""
  ids = []
  for images, labels in dataset:
    pixels = np.rint(images.numpy()[:, 0, 0, :2] * 255).astype(int)
    ids.extend((pixels[:, 0] + 256 * pixels[:, 1]).tolist())
    assert (np.array(ids[-len(labels):]) % 2 == labels.numpy()).all()  # labels travel along
  return ids


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A tfds data set folder: train ids 0..95 in 4 files, validation ids 1000..1039."""
  def split(start, count):
    ids = np.arange(start, start + count)
    return tf.data.Dataset.from_tensor_slices(
        {"image": np.stack([_image(i) for i in ids]), "label": ids % 2})

  builder = tfds.dataset_builders.TfDataBuilder(
      name="sharded_ids", version="1.0.0", data_dir=str(tmp_path_factory.mktemp("tfds")),
      split_datasets={"train": split(0, NUM_TRAIN), "validation": split(1000, NUM_VALIDATION)},
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(4, 4, 3)),
          "label": tfds.features.ClassLabel(num_classes=2)}))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=SHARDS))
  assert builder.info.splits["train"].num_shards == SHARDS
  return builder.data_dir


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory):
  """An image folder: train/<class>/ ids 0..95, val/<class>/ ids 1000..1039."""
  root = str(tmp_path_factory.mktemp("images"))
  for split, start, count in (("train", 0, NUM_TRAIN), ("val", 1000, NUM_VALIDATION)):
    for index in range(start, start + count):
      path = os.path.join(root, split, f"class{index % 2}", f"{index}.png")
      tf.io.write_file(path, tf.io.encode_png(_image(index)))
  return root


def _load(source, **bindings):
  dataset = "image_folder" if "images" in os.path.basename(source) else "tfds_dir"
  options = dict(batch_size=8, reward_size=REWARD_SIZE, cache_train=False)
  return data.load_splits(dataset, folder=source, **{**options, **bindings})


@pytest.mark.parametrize("source, test_split", [("sharded", "validation"),
                                                ("split_folders", "val")])
def test_a_reward_from_the_test_split_leaves_train_whole_and_test_the_rest(
    source, test_split, request):
  source = request.getfixturevalue(source)
  splits = _load(source, reward_split=test_split)
  reward, test = _ids(splits.reward), _ids(splits.test)
  assert splits.num_examples == {"train": NUM_TRAIN, "reward": REWARD_SIZE,
                                 "test": NUM_VALIDATION - REWARD_SIZE}
  assert splits.reward_source == test_split
  assert len(reward) == REWARD_SIZE and len(test) == NUM_VALIDATION - REWARD_SIZE
  assert not set(reward) & set(test)
  assert set(reward) | set(test) == set(range(1000, 1000 + NUM_VALIDATION))
  train = _ids(splits.train_stream(0).take(NUM_TRAIN // 8))  # one pass
  assert sorted(train) == list(range(NUM_TRAIN))  # all of train, nothing else
  # Seeded: the same seed draws the same reward, another seed another one.
  assert _ids(_load(source, reward_split=test_split).reward) == reward
  other = _ids(_load(source, reward_split=test_split, reward_seed=1).reward)
  assert set(other) != set(reward) and set(other) <= set(reward) | set(test)


def test_too_large_a_reward_from_the_test_split_leaves_no_test(sharded):
  with pytest.raises(PurlError, match="too few for load_splits.reward_size=40"):
    _load(sharded, reward_split="validation", reward_size=NUM_VALIDATION)


def test_the_train_stream_reads_shuffled_files_through_the_whole_split(sharded):
  """Without a shuffle buffer, the order a stream reads is the order of its files: it
  changes with the seed and with every pass, and every pass is all of train; a stream
  reopened at a batch repeats the one that ran through it."""
  splits = _load(sharded, reward_split="validation", shuffle_buffer=1)
  per_pass = NUM_TRAIN // 8
  whole = _ids(splits.train_stream(0, seed=5).take(2 * per_pass))
  first, second = whole[:NUM_TRAIN], whole[NUM_TRAIN:]
  assert sorted(first) == sorted(second) == list(range(NUM_TRAIN))
  assert first != second
  assert _ids(splits.train_stream(0, seed=6).take(per_pass)) != first
  resumed = _ids(splits.train_stream(per_pass - 3, seed=5).take(6))
  assert resumed == whole[(per_pass - 3) * 8:(per_pass + 3) * 8]


@pytest.mark.parametrize("bound, cached", [
    (0, ()), ((NUM_VALIDATION - REWARD_SIZE) * 48, ("reward",)),  # test alone would fit
    (NUM_VALIDATION * 48, ("reward", "test"))])
def test_evaluation_splits_are_cached_within_the_bound(split_folders, tmp_path, bound, cached):
  """Cached splits read again with their files gone; streamed ones cannot (48 bytes an
  image)."""
  folder = str(tmp_path / "copy")
  tf.io.gfile.makedirs(folder)
  for split in ("train", "val"):
    for name in ("class0", "class1"):
      tf.io.gfile.makedirs(os.path.join(folder, split, name))
      for path in tf.io.gfile.glob(os.path.join(split_folders, split, name, "*.png")):
        tf.io.gfile.copy(path, os.path.join(folder, split, name, os.path.basename(path)))
  splits = data.load_splits("image_folder", folder=folder, batch_size=8, cache_train=False,
                            reward_size=REWARD_SIZE, reward_split="val",
                            cache_eval_bytes=bound)
  first = {name: _ids(getattr(splits, name)) for name in ("reward", "test")}
  tf.io.gfile.rmtree(os.path.join(folder, "val"))
  for name in ("reward", "test"):
    if name in cached:
      assert _ids(getattr(splits, name)) == first[name]
    else:
      with pytest.raises(tf.errors.NotFoundError):
        _ids(getattr(splits, name))
