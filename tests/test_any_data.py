"""Any data: a user's folder of class-per-subfolder images (with or without split folders)
and a user's own data set written by tfds, each chosen by gin bindings alone, held out into
train / reward / test as built-in data is (seeded, disjoint, complete); bad folders refused
in one line."""
import collections
import hashlib
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from purl_tf import data
from purl_tf.errors import PurlError

COLOURS = {"cat": (200, 0, 0), "dog": (0, 200, 0), "emu": (0, 0, 200)}  # sorted: labels 0, 1, 2


def _image(colour, index, size=(6, 6)):
  """A uint8 (H, W, 3) image of one colour whose first pixel encodes `index` (unique)."""
  image = np.broadcast_to(np.array(colour, np.uint8), size + (3,)).copy()
  image[0, 0] = (index % 256, index // 256, 7)
  return image


def _write_png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_png(image))


def _write_classes(root, per_class, start=0, size=(6, 6)):
  """root/<class>/<i>.png, `per_class` unique images of each class's colour."""
  for label, (name, colour) in enumerate(sorted(COLOURS.items())):
    for i in range(per_class):
      index = start + label * per_class + i
      _write_png(os.path.join(root, name, f"{i}.png"), _image(colour, index, size))


def _examples(dataset):
  """[(digest of the 0..255 image, label)] of a dataset of 'scale' images, in order."""
  out = []
  for images, labels in dataset:
    for image, label in zip(np.rint(images.numpy() * 255).astype(np.uint8), labels.numpy()):
      out.append((hashlib.sha1(image.tobytes()).hexdigest(), int(label)))
  return out


def _check_labels_follow_colours(examples, dataset):
  """Every image's label is its class folder's position in sorted order."""
  colour_of = {label: colour for label, (_, colour) in enumerate(sorted(COLOURS.items()))}
  for images, labels in dataset:
    for image, label in zip(images.numpy(), labels.numpy()):
      np.testing.assert_allclose(image[1:, 1:], np.broadcast_to(
          np.array(colour_of[int(label)], np.float32) / 255.0, image[1:, 1:].shape), atol=1e-6)
  assert examples


def test_class_folder_is_held_out_like_built_in_data(tmp_path):
  """folder/<class>/<image>: one 'train' split; reward and test carved from it by seed."""
  _write_classes(str(tmp_path), per_class=20)
  splits = data.load_splits("image_folder", folder=str(tmp_path), reward_size=10, test_size=8,
                            batch_size=6)
  assert (splits.num_classes, splits.image_shape) == (3, (6, 6, 3))  # read from the files
  assert splits.num_examples == {"train": 42, "reward": 10, "test": 8}
  parts = {name: _examples(getattr(splits, name)) for name in ("train", "reward", "test")}
  assert {name: len(part) for name, part in parts.items()} == splits.num_examples
  digests = {name: {d for d, _ in part} for name, part in parts.items()}
  assert all(len(digests[name]) == len(parts[name]) for name in parts)
  assert not digests["train"] & digests["reward"] and not digests["train"] & digests["test"]
  assert not digests["reward"] & digests["test"]
  assert len(digests["train"] | digests["reward"] | digests["test"]) == 60
  for name in parts:
    _check_labels_follow_colours(parts[name], getattr(splits, name))

  def reward_of(seed):
    return _examples(data.load_splits("image_folder", folder=str(tmp_path), reward_size=10,
                                      test_size=8, batch_size=6, reward_seed=seed).reward)

  assert reward_of(0) == parts["reward"]  # same seed: same examples, same order
  assert {d for d, _ in reward_of(1)} != digests["reward"]
  assert _examples(splits.train) != parts["train"]  # reshuffled each pass, like built-in data


def test_split_folders_use_val_as_the_test_split(tmp_path):
  _write_classes(str(tmp_path / "train"), per_class=10)
  _write_classes(str(tmp_path / "val"), per_class=3, start=1000)
  splits = data.load_splits("image_folder", folder=str(tmp_path), reward_size=6, batch_size=4)
  assert splits.num_examples == {"train": 24, "reward": 6, "test": 9}
  test = _examples(splits.test)
  assert collections.Counter(label for _, label in test) == {0: 3, 1: 3, 2: 3}
  _check_labels_follow_colours(test, splits.test)


def test_grey_images_read_as_one_channel_unless_channels_is_bound(tmp_path):
  for name in ("a", "b"):
    for i in range(8):
      grey = np.full((5, 7, 1), 30 * i + (name == "b"), np.uint8)
      _write_png(str(tmp_path / name / f"{i}.png"), grey)
  kwargs = dict(folder=str(tmp_path), reward_size=4, test_size=4, batch_size=2)
  splits = data.load_splits("image_folder", **kwargs)
  assert splits.image_shape == (5, 7, 1)
  colour = data.load_splits("image_folder", channels=3, image_size=5, **kwargs)
  assert colour.image_shape == (5, 5, 3)
  for (grey_images, _), (colour_images, _) in zip(splits.reward, colour.reward):
    np.testing.assert_allclose(colour_images.numpy()[..., 0], grey_images.numpy()[:, :, 1:6, 0])
    np.testing.assert_array_equal(colour_images.numpy()[..., 0], colour_images.numpy()[..., 2])
  _write_png(str(tmp_path / "a" / "red.png"), _image((255, 0, 0), 0, (5, 7)))
  assert data.load_splits("image_folder", **kwargs).image_shape == (5, 7, 3)  # one colour image


def test_images_of_mixed_sizes_need_image_size(tmp_path):
  _write_classes(str(tmp_path), per_class=6)
  _write_png(str(tmp_path / "cat" / "big.png"), _image(COLOURS["cat"], 999, (9, 12)))
  kwargs = dict(folder=str(tmp_path), reward_size=3, test_size=3, batch_size=4)
  with pytest.raises(PurlError) as excinfo:
    data.load_splits("image_folder", **kwargs)
  assert "varying size" in str(excinfo.value) and "load_splits.image_size" in str(excinfo.value)
  splits = data.load_splits("image_folder", image_size=8, **kwargs)
  assert splits.image_shape == (8, 8, 3) and splits.num_examples["train"] == 13


def _bad_folders(root):
  """{case: (folder, words its error must contain)}, each folder written under root."""
  cases = {}
  empty = os.path.join(root, "empty")
  os.makedirs(empty)
  cases["empty"] = (empty, "is empty")
  flat = os.path.join(root, "flat")
  _write_png(os.path.join(flat, "0.png"), _image((1, 2, 3), 0))
  cases["no class folders"] = (flat, "has no class subfolders")
  hollow = os.path.join(root, "hollow")
  _write_classes(hollow, per_class=2)
  os.makedirs(os.path.join(hollow, "yak"))
  cases["class without images"] = (hollow, "yak holds no .png/.jpg/.jpeg images")
  single = os.path.join(root, "single")
  _write_png(os.path.join(single, "cat", "0.png"), _image((1, 2, 3), 0))
  cases["one class"] = (single, "has one class (cat)")
  broken = os.path.join(root, "broken")
  _write_classes(broken, per_class=2)
  with open(os.path.join(broken, "dog", "notes.png"), "w", encoding="utf-8") as handle:
    handle.write("not an image")
  cases["not an image"] = (broken, "notes.png as an image")
  return cases


def test_bad_image_folders_are_refused_in_one_line(tmp_path):
  for case, (folder, expected) in _bad_folders(str(tmp_path)).items():
    with pytest.raises(PurlError) as excinfo:
      data.load_splits.__wrapped__("image_folder", folder=folder)  # gin's wrapper bypassed
    message = str(excinfo.value)
    assert expected in message and "\n" not in message, (case, message)


def test_image_folder_by_gin_bindings_alone(tmp_path):
  _write_classes(str(tmp_path), per_class=8)
  gin.parse_config([
      "load_splits.dataset = 'image_folder'",
      f"load_splits.folder = '{tmp_path}'",
      "load_splits.reward_size = 4",
      "load_splits.test_size = 5",
      "load_splits.batch_size = 5",
  ])
  splits = data.load_splits()
  assert splits.num_examples == {"train": 15, "reward": 4, "test": 5}
  assert (splits.num_classes, splits.image_shape) == (3, (6, 6, 3))


def _write_tfds_dataset(data_dir):
  """Writes 'my_shapes' with tfds (no supervised_keys declared): train 30, validation 9."""
  def split(count, start):
    images = np.stack([_image(COLOURS[name], start + i, (8, 8))
                       for i in range(count) for name in [sorted(COLOURS)[i % 3]]])
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(count, dtype=np.int64) % 3})

  builder = tfds.dataset_builders.TfDataBuilder(
      name="my_shapes", version="1.0.0", data_dir=data_dir,
      split_datasets={"train": split(30, 0), "validation": split(9, 500)},
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 3)),
          "label": tfds.features.ClassLabel(names=sorted(COLOURS))}))
  builder.download_and_prepare()
  return os.path.join(data_dir, "my_shapes", "1.0.0")


def test_a_users_tfds_dataset_by_gin_bindings_alone(tmp_path):
  folder = _write_tfds_dataset(str(tmp_path / "tfds"))
  gin.parse_config([
      "load_splits.dataset = 'tfds_dir'",
      f"load_splits.folder = '{folder}'",
      "load_splits.reward_size = 6",
      "load_splits.batch_size = 4",
  ])
  splits = data.load_splits()
  assert splits.num_examples == {"train": 24, "reward": 6, "test": 9}  # validation is test
  assert (splits.num_classes, splits.image_shape) == (3, (8, 8, 3))
  parts = {name: _examples(getattr(splits, name)) for name in ("reward", "test")}
  for name, part in parts.items():
    _check_labels_follow_colours(part, getattr(splits, name))
  gin.clear_config()
  with pytest.raises(PurlError) as excinfo:  # the data set's folder, not its version folder
    data.load_splits.__wrapped__("tfds_dir", folder=os.path.dirname(folder))
  assert f"bind load_splits.folder to {folder}" in str(excinfo.value)
