"""Input pipelines: the train, reward and test splits of an image classification data set.

  train   the source's training examples minus the held-out ones: retraining, fine-tuning.
  reward  `reward_size` examples chosen with `reward_seed`, never trained on: every accuracy
          the search sees. Held out of the training split, or, with `reward_split`, drawn
          from another split (e.g. 'validation'), leaving the training split whole. With
          `reward_split` naming the test split (as for weights pretrained on all of the
          training split), the reward is drawn from it and test is the rest of it.
  test    the source's test split ('validation' for imagenet2012), or, for a source
          without one, `test_size` more held-out training examples: final reporting only.

Sources (purl_tf.data.sources: tfds, or image folders read file by file) give images still
encoded, so that holding examples out (which needs only their position) decodes nothing;
purl_tf.data.preprocessing fits, augments and normalises them once decoded. The train
split's files are read in a seeded order, reshuffled every pass, when no example is held
out of it (held-out examples are named by position, which needs the files in order). The
reward and test splits are cached decoded while together they fit `cache_eval_bytes`, and
streamed from the files otherwise. Images come out as float32 (batch, height, width,
channels), normalised for the model; labels as int64 (batch,).
"""
import dataclasses
from typing import Callable, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from purl_tf.data import sources
from purl_tf.errors import PurlError
from purl_tf.data.preprocessing import AUGMENTATIONS, IMAGENET_STYLE, NORMALISERS, Geometry

AUTOTUNE = tf.data.AUTOTUNE
_TRAIN, _REWARD, _TEST = 0, 1, 2  # an example's role, by position in its split (_roles)


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
  if preprocessing not in NORMALISERS:
    raise PurlError(f"load_splits.preprocessing={preprocessing!r} is unknown: use one of "
                    f"{sorted(NORMALISERS)}.")
  if augment is None:
    augment = "inception" if preprocessing in IMAGENET_STYLE else "none"
  if augment not in AUGMENTATIONS:
    raise PurlError(f"load_splits.augment={augment!r} is unknown: use one of {AUGMENTATIONS}.")
  if resize not in ("resize", "pad"):
    raise PurlError(f"load_splits.resize={resize!r} is unknown: use 'resize' or 'pad'.")
  if reward_size < 1:
    raise PurlError(f"load_splits.reward_size={reward_size} must be at least 1.")

  source = sources.open_source(dataset, folder, data_dir, manual_dir, download, image_size,
                               channels)
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
  geometry = Geometry(shape, preprocessing, resize, augment)

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
