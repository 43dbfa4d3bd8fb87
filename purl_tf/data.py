"""Input pipelines: the train, reward and test splits of an image classification data set.

  train   the source's training examples minus the held-out ones: retraining, fine-tuning.
  reward  `reward_size` examples chosen with `reward_seed`, never trained on: every accuracy
          the search sees. Held out of the training split, or, with `reward_split`, drawn
          from another split (e.g. 'validation'), leaving the training split whole. With
          `reward_split` naming the test split (as for weights pretrained on all of the
          training split), the reward is drawn from it and test is the rest of it.
  test    the source's test split ('validation' for imagenet2012), or, for a source
          without one, `test_size` more held-out training examples: final reporting only.

Sources are read through tfds (image folders: file by file) with images still encoded, so
that holding examples out (which needs only their position) decodes nothing. The train
split's files are read in a seeded order, reshuffled every pass, when no example is held
out of it (held-out examples are named by position, which needs the files in order). The
reward and test splits are cached decoded while together they fit `cache_eval_bytes`, and
streamed from the files otherwise. Images come out as float32 (batch, height, width,
channels), normalised for the model; labels as int64 (batch,).
"""
import dataclasses
import difflib
import glob
import os
from typing import Callable, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from purl_tf import mnist5k  # pylint: disable=unused-import  (registers the builder)
from purl_tf import mnist_full  # pylint: disable=unused-import  (registers the builder)
from purl_tf.errors import PurlError

AUTOTUNE = tf.data.AUTOTUNE
# Names that are not tfds data sets but local sources, read from `folder`.
IMAGE_FOLDER = "image_folder"  # folder/<class>/<image>, or folder/<split>/<class>/<image>
TFDS_DIR = "tfds_dir"  # a data set folder written by tfds (dataset_info.json + TFRecords)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what image_folder reads, any letter case
_FOLDER_TEST_SPLITS = ("test", "validation", "val")  # image_folder split names used as test
_FOLDER_ORDER_SEED = 0  # fixes the order of an image folder's examples (not class by class)

# Per-model normalisation of 0..255 pixels, and the augmentation each expects.
_NORMALISERS = {
    "scale": lambda x: x / 255.0,
    "none": lambda x: x,  # 0..255, for models that rescale their own inputs
    "resnet50": lambda x: tf.keras.applications.resnet50.preprocess_input(x),
    "mobilenet_v2": lambda x: x / 127.5 - 1.0,
}
_IMAGENET_STYLE = ("resnet50", "mobilenet_v2")
_AUGMENTATIONS = ("none", "flip_crop", "inception")
_CENTRAL_FRACTION = 0.875  # ImageNet evaluation: resize to size / 0.875, crop the centre.

_TRAIN, _REWARD, _TEST = 0, 1, 2


@dataclasses.dataclass
class Splits:
  """Batched datasets of (image float32 (B, H, W, C), label int64 (B,))."""
  train: tf.data.Dataset  # one shuffled epoch, full batches only; reshuffled each pass
  train_stream: Callable[..., tf.data.Dataset]  # (start batch, seed) -> endless batches
  reward: tf.data.Dataset  # fixed order; cached within cache_eval_bytes
  test: tf.data.Dataset  # fixed order; cached with reward within cache_eval_bytes
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_examples: dict  # split name -> number of examples
  batch_size: int  # global train batch (per-replica batch * replicas)
  name: str
  reward_source: str  # the split the reward examples come from ('train': held out of it)


@gin.configurable(denylist=["num_replicas"])
def load_splits(dataset: str = "mnist5k",
                folder: Optional[str] = None,
                data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None,
                download: bool = True,
                preprocessing: str = "scale",
                image_size: Optional[int] = None,
                channels: Optional[int] = None,
                resize: str = "resize",
                augment: Optional[str] = None,
                batch_size: int = 64,
                eval_batch_size: Optional[int] = None,
                reward_size: int = 500,
                reward_seed: int = 0,
                reward_split: Optional[str] = None,
                test_size: int = 1000,
                shuffle_buffer: int = 10_000,
                shuffle_seed: int = 0,
                cache_train: bool = True,
                cache_eval_bytes: int = 2 * 2**30,
                num_replicas: int = 1) -> Splits:
  """Builds the three splits.

  Args:
    dataset: a tfds name ('mnist5k', 'mnist_full', 'mnist', 'cifar10', 'cifar100',
      'imagenet2012', ...), 'image_folder' (folder/<class>/<image>, all training examples; or
      folder/<split>/<class>/<image> with a 'train' split) or 'tfds_dir' (a data set folder
      prepared by tfds, holding dataset_info.json); the last two read `folder`.
    folder: path for 'image_folder' and 'tfds_dir'.
    data_dir: tfds data dir (default: tfds' own, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: folder holding manually downloaded archives (imagenet2012, mnist_full).
    download: let tfds download and prepare the data set when it is not prepared yet.
    preprocessing: normalisation: 'scale' (0..1), 'none' (0..255, for a model that rescales
      its own inputs, e.g. with a Rescaling layer), 'resnet50' (caffe BGR mean),
      'mobilenet_v2' (-1..1). The last two also select ImageNet-style resize and crop.
    image_size: side of the square model input in pixels; None keeps the source's size.
    channels: 1 or 3 to convert grey/colour; None keeps the source's channels.
    resize: for 'scale' and 'none' preprocessing, how images reach image_size: 'resize' or
      'pad' (pad or crop around the centre).
    augment: 'none', 'flip_crop' (pad 4, random crop, flip) or 'inception' (random
      resized crop, flip); None picks 'inception' for ImageNet models, else 'none'.
    batch_size: train batch per replica (images).
    eval_batch_size: reward/test batch per replica; None = 2 * batch_size.
    reward_size: examples in the reward split.
    reward_seed: seed choosing them.
    reward_split: None holds the reward examples out of the training split; a split name
      (e.g. 'validation') draws them from that split instead, leaving train whole. The
      test split's name draws them from it and leaves its other examples as test: the
      choice for weights pretrained on the whole training split (ImageNet weights).
    test_size: examples held out for `test` when the source has no test split.
    shuffle_buffer: train shuffle buffer (examples).
    shuffle_seed: seed of the train shuffle and augmentation.
    cache_train: keep decoded training images in memory (small data sets).
    cache_eval_bytes: bound on the decoded reward and test images kept in memory (bytes,
      height * width * channels each): the reward split is cached if it fits, the test
      split too if both fit; a split that does not is decoded from its files every pass.
    num_replicas: replicas in sync; batches are per-replica sizes times this.
  """
  if preprocessing not in _NORMALISERS:
    raise PurlError(f"load_splits.preprocessing={preprocessing!r} is unknown: use one of "
                    f"{sorted(_NORMALISERS)}.")
  if augment is None:
    augment = "inception" if preprocessing in _IMAGENET_STYLE else "none"
  if augment not in _AUGMENTATIONS:
    raise PurlError(f"load_splits.augment={augment!r} is unknown: use one of {_AUGMENTATIONS}.")
  if resize not in ("resize", "pad"):
    raise PurlError(f"load_splits.resize={resize!r} is unknown: use 'resize' or 'pad'.")
  if reward_size < 1:
    raise PurlError(f"load_splits.reward_size={reward_size} must be at least 1.")

  if dataset == IMAGE_FOLDER:
    source = _FolderSource(_existing_folder(dataset, folder), image_size, channels)
  else:
    source = _Source(dataset, folder, data_dir, manual_dir, download)
  shape = _output_shape(source.native_shape, image_size, channels, dataset)
  num_train = source.count(source.train_split)
  carve_test = source.test_split is None
  if reward_split is None:
    reward_split, train_reward = source.train_split, reward_size
  else:
    _check_reward_split(source, reward_split, reward_size)
    train_reward = 0
  held_out = train_reward + (test_size if carve_test else 0)
  if held_out >= num_train:
    raise PurlError(f"{dataset} has {num_train} training examples, too few to hold out "
                    f"{held_out}: lower load_splits.reward_size (or test_size).")
  roles = _roles(num_train, train_reward, test_size if carve_test else 0, reward_seed)
  reward_roles = (roles if reward_split == source.train_split
                  else _roles(source.count(reward_split), reward_size, 0, reward_seed))

  global_batch = batch_size * num_replicas
  global_eval_batch = (eval_batch_size or 2 * batch_size) * num_replicas
  geometry = _Geometry(shape, preprocessing, resize, augment)

  def read_train(seed):
    """Train examples; with none held out, their files in an order `seed` fixes."""
    if held_out:
      return source.examples(source.train_split, roles, _TRAIN)
    return source.examples(source.train_split, None, None, files_seed=seed)

  if cache_train:
    cached = read_train(shuffle_seed).map(source.decode, num_parallel_calls=AUTOTUNE).cache()
    train_examples = lambda seed: cached
  else:
    train_examples = read_train

  def augmented(ds):
    """((example, (2,) int64 seed) -> augmented, normalised (image, label)."""
    if not cache_train:  # Shuffled while encoded: decoded images would fill memory.
      ds = ds.map(lambda x, s: (source.decode(*x), s), num_parallel_calls=AUTOTUNE)
    return ds.map(lambda x, s: geometry.train(*x, seed=s), num_parallel_calls=AUTOTUNE)

  def shuffled(seed):
    return train_examples(seed).shuffle(shuffle_buffer, seed=seed,
                                        reshuffle_each_iteration=True)

  def train_stream(start: int = 0, seed: Optional[int] = None) -> tf.data.Dataset:
    """Endless train batches from batch `start` of the sequence that `seed` (default
    shuffle_seed) fixes: files and examples reshuffled every pass, the i-th image of the
    sequence augmented by the seed (seed, i), so a stream started at any position gives
    the batches an earlier stream gave there (a resumed search retrains on what it would
    have), and a stream moves on through the whole split pass after pass."""
    seed = shuffle_seed if seed is None else int(seed)
    first = int(start) * global_batch
    ds = shuffled(seed).repeat()
    ds = ds.skip(first).enumerate(first)  # skipped before decoding: positions are cheap
    ds = ds.map(lambda i, x: (x, tf.stack([tf.constant(seed, tf.int64), i])))
    return augmented(ds).batch(global_batch, drop_remainder=True).prefetch(AUTOTUNE)

  def train_epochs() -> tf.data.Dataset:
    """One shuffled pass, reshuffled and augmented anew on every iteration (Keras fit)."""
    ds = tf.data.Dataset.zip((
        shuffled(shuffle_seed),
        tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)))
    return augmented(ds).batch(global_batch, drop_remainder=True).prefetch(AUTOTUNE)

  def evaluation(split, roles, role, cache):
    ds = source.examples(split, roles, role).map(source.decode, num_parallel_calls=AUTOTUNE)
    ds = ds.map(geometry.evaluation, num_parallel_calls=AUTOTUNE)
    ds = ds.cache() if cache else ds
    # Normalised a batch at a time: per image it cost as much as the model's forward pass.
    return ds.batch(global_eval_batch).map(geometry.normalise).prefetch(AUTOTUNE)

  if carve_test:
    test_from, test_roles, test_role, num_test = source.train_split, roles, _TEST, test_size
  elif reward_split == source.test_split:  # test is the rest of the split
    test_from, test_roles, test_role = source.test_split, reward_roles, _TRAIN
    num_test = source.count(source.test_split) - reward_size
  else:
    test_from, test_roles, test_role = source.test_split, None, None
    num_test = source.count(source.test_split)
  image_bytes = int(np.prod(shape))  # decoded uint8, as cached
  cache_reward = reward_size * image_bytes <= cache_eval_bytes
  cache_test = (reward_size * cache_reward + num_test) * image_bytes <= cache_eval_bytes
  reward = evaluation(reward_split, reward_roles, _REWARD, cache_reward)
  test = evaluation(test_from, test_roles, test_role, cache_test)
  counts = {"train": num_train - held_out, "reward": reward_size, "test": num_test}
  if counts["train"] < global_batch:
    raise PurlError(f"{dataset} leaves {counts['train']} training examples, fewer than one "
                    f"batch of {global_batch}: lower load_splits.batch_size.")
  return Splits(train=train_epochs(), train_stream=train_stream,
                reward=reward, test=test, num_classes=source.num_classes,
                image_shape=shape, num_examples=counts, batch_size=global_batch,
                name=dataset, reward_source=reward_split)


def _check_reward_split(source, reward_split, reward_size):
  """PurlError unless `reward_split` is a split of `source` other than its train split,
  holding at least `reward_size` examples (more, for the test split: test is the rest)."""
  if reward_split not in source.split_names:
    raise PurlError(f"load_splits.reward_split={reward_split!r} is not a split of "
                    f"{source.name}: use one of {sorted(source.split_names)}, or None.")
  if reward_split == source.train_split:
    raise PurlError(f"load_splits.reward_split={reward_split!r} is {source.name}'s train "
                    "split: use another split, or None to hold the reward out of train.")
  available = source.count(reward_split)
  if reward_split == source.test_split and reward_size >= available:
    raise PurlError(f"{source.name}'s {reward_split} split has {available} examples, too few "
                    f"for load_splits.reward_size={reward_size} and a test split: lower "
                    "reward_size.")
  if reward_size > available:
    raise PurlError(f"{source.name}'s {reward_split} split has {available} examples, fewer "
                    f"than load_splits.reward_size={reward_size}: lower reward_size.")


def _roles(num_examples, reward_size, test_size, seed):
  """Role of each example of a split by position: 0 the rest (train, or test when the
  reward comes from the test split), 1 reward, 2 test. int8 (N,)."""
  roles = np.full(num_examples, _TRAIN, np.int8)
  chosen = np.random.default_rng(seed).permutation(num_examples)
  roles[chosen[:reward_size]] = _REWARD
  roles[chosen[reward_size:reward_size + test_size]] = _TEST
  return roles


def _output_shape(native, image_size, channels, dataset):
  height, width, native_channels = native
  if image_size is None and (height is None or width is None):
    raise PurlError(f"{dataset} has images of varying size: bind load_splits.image_size.")
  side = (height, width) if image_size is None else (image_size, image_size)
  depth = channels or native_channels or 3
  if depth not in (1, 3):
    raise PurlError(f"load_splits.channels={depth} is not supported: use 1 or 3.")
  return (int(side[0]), int(side[1]), int(depth))


def _with_role(ds, roles, role):
  """The elements of `ds` whose position has `role` in `roles` (int8 (N,)); None keeps all."""
  if role is None:
    return ds
  table = tf.constant(roles)
  ds = ds.enumerate().filter(lambda i, _: tf.equal(tf.gather(table, i), role))
  return ds.map(lambda _, example: example)


class _Source:
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
    ds = _with_role(self._read(split, files_seed), roles, role)
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


class _FolderSource:
  """Image files in class subfolders, read by path; the same interface as _Source.

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
    return _with_role(tf.data.Dataset.from_tensor_slices(self._splits[split]), roles, role)

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


class _Geometry:
  """Resizing, cropping, augmentation and normalisation of decoded uint8 images."""

  def __init__(self, shape, preprocessing, resize, augment):
    self.height, self.width, self.channels = shape
    self.preprocessing = preprocessing
    self.imagenet_style = preprocessing in _IMAGENET_STYLE
    self.resize = resize
    self.augment = augment

  def _channels(self, image):
    depth = image.shape[-1]
    if depth == self.channels or depth is None:
      return image
    if self.channels == 3:
      return tf.image.grayscale_to_rgb(image)
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)

  def _fit(self, image):
    """uint8 image of any size -> float32 (height, width, C) for the model's input."""
    image = tf.cast(image, tf.float32)
    if self.imagenet_style:
      # Resize the shorter side to size / 0.875, then crop the centre.
      shape = tf.cast(tf.shape(image)[:2], tf.float32)
      scale = tf.reduce_max(
          tf.constant([self.height, self.width], tf.float32) / _CENTRAL_FRACTION / shape)
      image = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32))
      return tf.image.resize_with_crop_or_pad(image, self.height, self.width)
    if self.resize == "pad":
      return tf.image.resize_with_crop_or_pad(image, self.height, self.width)
    return tf.image.resize(image, (self.height, self.width))

  def evaluation(self, image, label):
    """Deterministic geometry; uint8 out so that the cache stays small."""
    image = self._fit(self._channels(image))
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (self.height, self.width, self.channels)), label

  def normalise(self, image, label):
    return _NORMALISERS[self.preprocessing](tf.cast(image, tf.float32)), label

  def train(self, image, label, seed):
    """Augmented geometry, stateless: the (2,) int64 `seed` fixes every random choice."""
    image = self._channels(image)
    box_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    if self.augment == "inception":
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=box_seed,
          min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, size)
      image = tf.image.resize(tf.cast(image, tf.float32), (self.height, self.width))
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    else:
      image = self._fit(image)
      if self.augment == "flip_crop":
        image = tf.image.resize_with_crop_or_pad(image, self.height + 8, self.width + 8)
        image = tf.image.stateless_random_crop(image, (self.height, self.width, self.channels),
                                               crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.ensure_shape(image, (self.height, self.width, self.channels))
    return self.normalise(image, label)
