"""What both controllers keep of a wrapped model's variables: in-memory copies to return to
(the snapshot of `reset()`, the copy of `undo_step()`), and the .npz file of `save_state` /
`load_state`, which brings a network back exactly, in any process."""
import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from purl_tf.errors import PurlError


@tf.function(autograph=False)
def _copy(sources, targets):
  for source, target in zip(sources, targets):
    target.assign(source)


class VariableCopy:
  """Non-trainable copies of `variables`, taken at construction and by `take()`;
  `restore()` writes them back. Build it where the variables live (strategy scope)."""

  def __init__(self, variables: Sequence[tf.Variable], name: str):
    self.variables = list(variables)
    self.copies = [tf.Variable(v, trainable=False, name=name) for v in self.variables]
    self._by_id = {id(v): copy for v, copy in zip(self.variables, self.copies)}

  def of(self, variable: tf.Variable) -> tf.Variable:
    """The copy of one of the variables."""
    return self._by_id[id(variable)]

  def take(self):
    _copy(self.variables, self.copies)

  def restore(self):
    _copy(self.copies, self.variables)


def save_state(path: str, variables: Sequence[tf.Variable], **arrays: np.ndarray) -> str:
  """Writes the variables' values and the named `arrays` to `path` (.npz), atomically."""
  values = {f"v{i}": v.numpy() for i, v in enumerate(variables)}
  partial = path + ".partial.npz"
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
  np.savez(partial, **arrays, **values)
  tf.io.gfile.rename(partial, path, overwrite=True)
  return path


def load_state(path: str, variables: Sequence[tf.Variable], keys: Sequence[str],
               **expected: np.ndarray) -> Dict[str, np.ndarray]:
  """Assigns the variables `save_state` wrote to `path` and returns its arrays named in
  `keys`. PurlError, with nothing assigned, when the file cannot be read or holds another
  model's variables (other shapes, or an `expected` array that differs)."""
  try:
    with np.load(path) as state:
      values = [state[f"v{i}"] for i in range(len(variables))]
      arrays = {key: state[key] for key in (*keys, *expected)}
  except (OSError, KeyError, ValueError) as error:
    raise PurlError(f"cannot read the saved network {path} ({type(error).__name__}): "
                    "delete it and rerun to recompute it.") from error
  if ([v.shape for v in values] != [tuple(v.shape) for v in variables]
      or any(arrays[key].tolist() != np.asarray(value).tolist()
             for key, value in expected.items())):
    raise PurlError(f"the saved network {path} belongs to another model: delete it.")
  for variable, value in zip(variables, values):
    variable.assign(value)
  return {key: arrays[key] for key in keys}
