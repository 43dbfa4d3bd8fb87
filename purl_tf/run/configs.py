"""The gin configs shipped with purl_tf, found by name from any folder.

The repository's gin/ folder is installed as the package data `purl_tf/configs/` (setup.py),
so `--gin_file=resnet50` (or `resnet50.gin`, or `variants/cheap_search_fit_lamp`) works
wherever purl_tf is installed; a path to a file that exists is used as it is.
"""
import importlib.resources
import os
from typing import List

from purl_tf.errors import PurlError

SUFFIX = ".gin"


def _shipped():
  """The folder of shipped configs (an importlib.resources Traversable)."""
  return importlib.resources.files("purl_tf") / "configs"


def folder() -> str:
  """The folder of shipped configs, as a path (for gin's include search path)."""
  return str(_shipped())


def names() -> List[str]:
  """Names of the shipped configs, e.g. ['cifar10', ..., 'variants/cheap_search_fit_lamp']."""
  found = []

  def walk(folder, prefix):
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
      if entry.is_dir():
        walk(entry, f"{prefix}{entry.name}/")
      elif entry.name.endswith(SUFFIX):
        found.append(prefix + entry.name[:-len(SUFFIX)])

  root = _shipped()
  if root.is_dir():
    walk(root, "")
  return found


def find(name: str) -> str:
  """The path of gin config `name`: an existing file, or a shipped config's name."""
  if os.path.isfile(name):
    return name
  stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
  stem = stem[len("gin/"):] if stem.startswith("gin/") else stem
  entry = _shipped().joinpath(*(stem + SUFFIX).split("/"))
  if entry.is_file():
    return str(entry)
  raise PurlError(f"gin file {name} does not exist, nor is it a shipped config: give a path "
                  f"or one of {', '.join(names())}.")
