"""Where a data set's examples come from: a tfds builder or a folder of image files.

Both kinds of source give the same interface: split names, the train and test split, the
number of classes, the images' native (H, W, C), `count(split)`, `examples(split, roles,
role, files_seed)` of still encoded images (holding examples out needs only their
position, so it decodes nothing) and `decode(encoded, label)` to uint8 (H, W, C) and int64.
tfds sources (mnist5k, mnist_full, any registered name, or a prepared data set folder) are
prepared on first use; every failure to open one is a one-line PurlError saying what to do.
"""
import difflib
import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from purl_tf.data import mnist5k  # pylint: disable=unused-import  (registers the builder)
from purl_tf.data import mnist_full  # pylint: disable=unused-import  (registers the builder)
from purl_tf.errors import PurlError

# Names that are not tfds data sets but local sources, read from `folder`.
IMAGE_FOLDER = "image_folder"  # folder/<class>/<image>, or folder/<split>/<class>/<image>
TFDS_DIR = "tfds_dir"  # a data set folder written by tfds (dataset_info.json + TFRecords)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what image_folder reads, any letter case
_FOLDER_TEST_SPLITS = ("test", "validation", "val")  # image_folder split names used as test
_FOLDER_ORDER_SEED = 0  # fixes the order of an image folder's examples (not class by class)


def open_source(dataset, folder, data_dir, manual_dir, download, image_size, channels):
  """The source `dataset` names (see load_splits): a FolderSource for 'image_folder', else
  a TfdsSource."""
  if dataset == IMAGE_FOLDER:
    return FolderSource(_existing_folder(dataset, folder), image_size, channels)
  return TfdsSource(dataset, folder, data_dir, manual_dir, download)


def with_role(ds, roles, role):
  """The elements of `ds` whose position has `role` in `roles` (int8 (N,)); None keeps all."""
  if role is None:
    return ds
  table = tf.constant(roles)
  ds = ds.enumerate().filter(lambda i, _: tf.equal(tf.gather(table, i), role))
  return ds.map(lambda _, example: example)


class TfdsSource:
  """A tfds builder opened for reading, with images left encoded."""

  def __init__(self, dataset, folder, data_dir, manual_dir, download):
    self.name = dataset
    self.builder = _open_builder(dataset, folder, data_dir, manual_dir, download)
    info = self.builder.info
    self.image_key, self.label_key = _supervised_keys(info, dataset)
    image_feature = info.features[self.image_key]
    if not isinstance(image_feature, tfds.features.Image):
      raise PurlError(f"{dataset}'s input '{self.image_key}' is not an image.")
    if not isinstance(info.features[self.label_key], tfds.features.ClassLabel):
      raise PurlError(f"{dataset}'s label '{self.label_key}' is not a tfds ClassLabel: "
                      "declare it as tfds.features.ClassLabel(num_classes=...).")
    self._image_feature = image_feature
    self.native_shape = tuple(image_feature.shape)
    self.num_classes = info.features[self.label_key].num_classes
    names = list(info.splits.keys()) or ["train", "test", "validation"]  # mock data: no info
    if "train" not in names:
      raise PurlError(f"{dataset} has no 'train' split (it has {names}).")
    self.split_names = names
    self.train_split = "train"
    self.test_split = next((s for s in ("test", "validation") if s in names), None)

  def count(self, split):
    """Number of examples in a split (counted by reading when tfds does not record it)."""
    if self.builder.info.splits and split in self.builder.info.splits:
      recorded = self.builder.info.splits[split].num_examples
      if recorded:
        return recorded
    ds = self._read(split)
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
      return cardinality
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))

  def _read(self, split, files_seed=None):
    """The split's examples, images encoded; None reads the files in order, a seed in an
    order it fixes, reshuffled on every pass."""
    config = tfds.ReadConfig(shuffle_seed=files_seed, shuffle_reshuffle_each_iteration=True)
    try:
      return self.builder.as_dataset(
          split=split, shuffle_files=files_seed is not None, read_config=config,
          decoders={self.image_key: tfds.decode.SkipDecoding()})
    except Exception as error:  # tfds raises many types for a data set that is not there.
      raise PurlError(f"cannot read split '{split}' of {self.name}: "
                      f"{_first_line(error)}") from error

  def examples(self, split, roles, role, files_seed=None):
    """(encoded image, label) of a split, keeping only examples of `role` (None: all), its
    files read in order or shuffled by `files_seed`."""
    ds = with_role(self._read(split, files_seed), roles, role)
    return ds.map(lambda ex: (ex[self.image_key], ex[self.label_key]))

  def decode(self, encoded, label):
    """Decodes one image to uint8 (H, W, C)."""
    return self._image_feature.decode_example(encoded), tf.cast(label, tf.int64)


def _supervised_keys(info, dataset):
  """(image key, label key): the declared supervised keys, else the one Image and the one
  ClassLabel feature (data sets written with tfds.dataset_builders declare none)."""
  if info.supervised_keys:
    return tuple(info.supervised_keys[:2])
  features = dict(info.features.items()) if hasattr(info.features, "items") else {}
  images = [key for key, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [key for key, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if len(images) != 1 or len(labels) != 1:
    raise PurlError(f"{dataset} declares no supervised keys and has {len(images)} Image and "
                    f"{len(labels)} ClassLabel features: declare supervised_keys=('image', "
                    "'label') in its DatasetInfo.")
  return images[0], labels[0]


class FolderSource:
  """Image files in class subfolders, read by path; the same interface as TfdsSource.

  Two layouts, told apart by a 'train' subfolder that holds only folders:
    folder/<class>/<image>          one 'train' split; the test split is carved from it
    folder/<split>/<class>/<image>  splits 'train' and, as test, 'test', 'validation' or 'val'
  Classes are numbered in sorted name order. Files are PNG or JPEG; their headers give the
  native size and channels unless load_splits.image_size and channels are both bound.
  """

  def __init__(self, folder, image_size, channels):
    self.name = IMAGE_FOLDER
    by_split = _folder_examples(folder)
    classes = sorted({name for examples in by_split.values() for _, name in examples})
    if len(classes) < 2:
      raise PurlError(f"image folder {folder} has one class ({classes[0]}): a classifier "
                      "needs at least two class subfolders.")
    self.num_classes = len(classes)
    order = {name: label for label, name in enumerate(classes)}
    self._splits = {}
    for split, examples in by_split.items():
      examples = [examples[i] for i in
                  np.random.default_rng(_FOLDER_ORDER_SEED).permutation(len(examples))]
      self._splits[split] = ([path for path, _ in examples],
                             np.array([order[name] for _, name in examples], np.int64))
    self.split_names = list(self._splits)
    self.train_split = "train"
    self.test_split = next((s for s in _FOLDER_TEST_SPLITS if s in self._splits), None)
    if image_size is None or channels is None:
      self.native_shape = _native_shape([p for paths, _ in self._splits.values() for p in paths])
    else:
      self.native_shape = (None, None, channels)
    self._channels = channels or self.native_shape[2]

  def count(self, split):
    return len(self._splits[split][0])

  def examples(self, split, roles, role, files_seed=None):  # pylint: disable=unused-argument
    """(image path, label) of a split, keeping only examples of `role` (None: all); the
    paths are already in a seeded order and are shuffled with the examples."""
    return with_role(tf.data.Dataset.from_tensor_slices(self._splits[split]), roles, role)

  def decode(self, path, label):
    """Reads and decodes one image to uint8 (H, W, C), C the channels asked for or native."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=self._channels,
                               expand_animations=False)
    return tf.ensure_shape(image, (None, None, self._channels)), label


def _existing_folder(dataset, folder):
  """`folder` with ~ expanded; PurlError unless it is a folder."""
  if not folder or not os.path.isdir(os.path.expanduser(folder)):
    raise PurlError(f"dataset '{dataset}' reads load_splits.folder, and {folder!r} is not a "
                    "folder: bind load_splits.folder to it.")
  return os.path.expanduser(folder)


def _visible(folder):
  """Sorted entries of a folder, hidden ones (.ipynb_checkpoints, .DS_Store) left out."""
  return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _subfolders(folder):
  return [name for name in _visible(folder) if os.path.isdir(os.path.join(folder, name))]


def _images(folder):
  """Paths of the image files directly in `folder`, sorted."""
  return [os.path.join(folder, name) for name in _visible(folder)
          if name.lower().endswith(IMAGE_EXTENSIONS)
          and os.path.isfile(os.path.join(folder, name))]


def _folder_examples(folder):
  """{split: [(image path, class name), ...]} of an image folder in either layout."""
  classes = _subfolders(folder)
  if not classes:
    what = "is empty" if not _visible(folder) else "has no class subfolders"
    raise PurlError(f"image folder {folder} {what}: put the images in "
                    f"{folder}/<class>/<image>, one subfolder per class.")
  train = os.path.join(folder, "train")
  if "train" in classes and _subfolders(train) and not _images(train):
    roots = {split: os.path.join(folder, split) for split in classes}
  else:
    roots = {"train": folder}
  by_split = {}
  for split, root in roots.items():
    by_split[split] = []
    for name in _subfolders(root):
      paths = _images(os.path.join(root, name))
      if not paths:
        raise PurlError(f"class folder {os.path.join(root, name)} holds no "
                        f"{'/'.join(IMAGE_EXTENSIONS)} images: add its images or remove it.")
      by_split[split].extend((path, name) for path in paths)
    if not by_split[split]:
      raise PurlError(f"split folder {root} has no class subfolders: put its images in "
                      f"{root}/<class>/<image>, or remove it.")
  return by_split


def _native_shape(paths):
  """(H, W, C) shared by the images at `paths`, read from their headers; H and W are None
  when sizes differ, C is 1 when every image is grey, else 3."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  sizes, grey = set(), True
  for path in paths:
    try:
      with Image.open(path) as image:
        sizes.add(image.size)
        grey = grey and image.mode in ("1", "L", "LA", "I", "I;16", "F")
    except Exception as error:  # PIL raises several types for a file that is no image.
      raise PurlError(f"cannot read {path} as an image ({_first_line(error)}): remove it "
                      "from the folder.") from error
  width, height = sizes.pop() if len(sizes) == 1 else (None, None)
  return (height, width, 1 if grey else 3)


def _open_builder(dataset, folder, data_dir, manual_dir, download):
  """The tfds builder of a source, prepared; every failure becomes a one-line PurlError."""
  if dataset == TFDS_DIR:
    return _builder_from_directory(_existing_folder(dataset, folder))
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    close = difflib.get_close_matches(dataset, tfds.list_builders(), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise PurlError(f"load_splits.dataset={dataset!r} is not a tfds data set, "
                    f"'{IMAGE_FOLDER}' or '{TFDS_DIR}'.{hint}") from error
  needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  if needs_manual and manual_dir and not os.path.isdir(os.path.expanduser(manual_dir)):
    raise PurlError(f"load_splits.manual_dir={manual_dir!r} is not a folder: point it at the "
                    f"folder holding the downloaded {dataset} archives.")
  if not download:
    return builder
  config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  try:
    builder.download_and_prepare(download_config=config)
  except PurlError:  # a builder of ours that already says what to do (mnist_full)
    raise
  except Exception as error:
    again = tfds.builder(dataset, data_dir=data_dir)
    if again.is_prepared():  # another process prepared it first: tfds could not move ours
      return again
    where = data_dir or tfds.core.constants.DATA_DIR
    if needs_manual:
      raise PurlError(f"{dataset} is not prepared in {where} and needs a manual download: put "
                      "its archives in a folder and bind load_splits.manual_dir to it "
                      f"({_first_line(error)}).") from error
    raise PurlError(f"could not download or prepare {dataset} into {where} "
                    f"({_first_line(error)}): prepare it on a machine with network access "
                    "and bind load_splits.data_dir, or use dataset='mnist5k' offline.") from error
  return builder


def _builder_from_directory(folder):
  """The tfds builder of a prepared data set folder (the one holding dataset_info.json)."""
  if not os.path.isfile(os.path.join(folder, "dataset_info.json")):
    found = sorted(glob.glob(os.path.join(folder, "*", "dataset_info.json"))
                   + glob.glob(os.path.join(folder, "*", "*", "dataset_info.json")))
    where = (f"bind load_splits.folder to {' or '.join(os.path.dirname(f) for f in found[:3])}"
             if found else "point load_splits.folder at the version folder tfds wrote, "
             "e.g. ~/tensorflow_datasets/my_dataset/1.0.0")
    raise PurlError(f"{folder} holds no dataset_info.json: {where}.")
  try:
    return tfds.builder_from_directory(folder)
  except Exception as error:
    raise PurlError(f"cannot open {folder} as '{TFDS_DIR}': {_first_line(error)}") from error


def _first_line(error):
  text = str(error).strip().splitlines()
  return text[0][:300] if text else type(error).__name__
