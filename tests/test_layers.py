"""The package's layering, read from its source (parsed with ast, nothing imported).

Data flows top to bottom, and each layer imports only from itself and the layers above it:

  1. purl_tf (the package __init__) and purl_tf.errors, importable by all
  2. purl_tf.runtime
  3. purl_tf.data
  4. purl_tf.models
  5. purl_tf.pruning
  6. purl_tf.rl
  7. purl_tf.run
  8. purl_tf.train and purl_tf.console (the command line)

purl_tf/ itself holds only __init__.py, errors.py, train.py and console.py, the
subpackages above, and `configs`, a link to the repository's gin/ folder. The checkers
are tried on small synthetic packages too, so these tests show they can fail.
"""
import ast
import os

import pytest

from conftest import REPO

PACKAGE = "purl_tf"
# Second component of a module's dotted name (None: the package __init__) -> its layer.
LAYERS = {None: 1, "errors": 1, "runtime": 2, "data": 3, "models": 4, "pruning": 5,
          "rl": 6, "run": 7, "train": 8, "console": 8}
LAYER_NAMES = {1: "purl_tf/errors", 2: "runtime", 3: "data", 4: "models", 5: "pruning",
               6: "rl", 7: "run", 8: "train/console"}
TOP_LEVEL_FILES = {"__init__.py", "errors.py", "train.py", "console.py"}
SUBPACKAGES = {name for name in LAYERS if name not in (None, "errors", "train", "console")}
CONFIGS_LINK = "configs"  # -> ../gin


def module_name(package_dir: str, path: str) -> str:
  """Dotted name of the module in `path` (a .py file under `package_dir`)."""
  parts = os.path.relpath(path, package_dir)[:-len(".py")].split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join([PACKAGE, *parts])


def layer_of(module: str):
  """Layer of the purl_tf module `module` (dotted), or None when it lies in none."""
  parts = module.split(".")
  return LAYERS.get(parts[1] if len(parts) > 1 else None)


def imported_modules(tree: ast.AST, module: str, is_package: bool, top_modules: set):
  """(line, dotted name) of every purl_tf module the parsed source of `module` imports,
  in functions too. `from purl_tf import x` imports purl_tf.x when x is one of
  `top_modules` (the package's modules and subpackages), else a name of the package
  itself (e.g. __version__)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: from the module's package, `level - 1` packages up.
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      if base == PACKAGE:
        for alias in node.names:
          yield node.lineno, (f"{PACKAGE}.{alias.name}" if alias.name in top_modules
                              else PACKAGE)
      else:
        yield node.lineno, base


def layer_violations(package_dir: str) -> list:
  """'file:line: imports X (layer) from layer Y' for every import of a purl_tf module in a
  lower layer than the importing file's, or in no layer, by every .py file under
  `package_dir` in a layer (files in none are top_level_violations)."""
  found = []
  top_modules = {entry[:-len(".py")] if entry.endswith(".py") else entry
                 for entry in os.listdir(package_dir)} | set(LAYERS) - {None}
  for folder, dirs, names in os.walk(package_dir):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__" and
                     not os.path.islink(os.path.join(folder, d)))
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(folder, name)
      module = module_name(package_dir, path)
      own = layer_of(module)
      if own is None:
        continue
      with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
      where = os.path.relpath(path, os.path.dirname(package_dir))
      for line, target in imported_modules(tree, module, name == "__init__.py",
                                           top_modules):
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
          continue
        layer = layer_of(target)
        if layer is None:
          found.append(f"{where}:{line}: imports {target} (in no layer) from layer {own} "
                       f"({LAYER_NAMES[own]})")
        elif layer > own:
          found.append(f"{where}:{line}: imports {target} (layer {layer}, "
                       f"{LAYER_NAMES[layer]}) from layer {own} ({LAYER_NAMES[own]})")
  return found


def top_level_violations(package_dir: str, gin_dir: str) -> list:
  """What purl_tf/ holds besides TOP_LEVEL_FILES, SUBPACKAGES and the configs link to
  `gin_dir`, and what of these it lacks."""
  found = []
  entries = {e for e in os.listdir(package_dir) if e != "__pycache__"}
  for entry in sorted(entries):
    path = os.path.join(package_dir, entry)
    if entry == CONFIGS_LINK:
      if not (os.path.islink(path) and
              os.path.realpath(path) == os.path.realpath(gin_dir)):
        found.append(f"{PACKAGE}/{entry} is not a link to gin/")
    elif os.path.isdir(path):
      if entry not in SUBPACKAGES:
        found.append(f"{PACKAGE}/{entry}/ is a folder in no layer: move it into a layer's "
                     "subpackage, or add it to the layers")
    elif entry not in TOP_LEVEL_FILES:
      found.append(f"{PACKAGE}/{entry} is at the package's top level, which holds only "
                   f"{', '.join(sorted(TOP_LEVEL_FILES))}: move it into a layer or out of "
                   "the package")
  for missing in sorted((TOP_LEVEL_FILES | SUBPACKAGES | {CONFIGS_LINK}) - entries):
    found.append(f"{PACKAGE}/{missing} is missing")
  return found


def report(violations) -> str:
  return "\n" + "\n".join(violations)


def test_each_layer_imports_only_from_itself_and_the_layers_above():
  violations = layer_violations(os.path.join(REPO, PACKAGE))
  assert not violations, report(violations)


def test_the_package_top_level_holds_only_its_entry_points_and_layers():
  violations = top_level_violations(os.path.join(REPO, PACKAGE), os.path.join(REPO, "gin"))
  assert not violations, report(violations)


def write_tree(root, files: dict) -> str:
  """A synthetic purl_tf package under `root`: {relative path: source}; returns its path."""
  package = os.path.join(str(root), PACKAGE)
  for relative, source in files.items():
    path = os.path.join(package, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
      handle.write(source)
  return package


def layered_tree(root, extra: dict = None) -> str:
  """A synthetic purl_tf obeying the layering (each subpackage imports the layer above,
  the package, errors and itself), plus `extra` files; with gin/ and the configs link."""
  files = {name: "" for name in TOP_LEVEL_FILES}
  files["train.py"] = "from purl_tf import console\nfrom purl_tf.run import pipeline\n"
  files["console.py"] = "import purl_tf\nfrom purl_tf import __version__\n"
  above = "runtime"
  for name in ("runtime", "data", "models", "pruning", "rl", "run"):
    files[f"{name}/__init__.py"] = f"from purl_tf.{name}.core import thing\n"
    files[f"{name}/core.py"] = (f"from purl_tf.errors import PurlError\nfrom . import other\n"
                                f"import purl_tf.{above}\n"
                                f"def late():\n  from purl_tf import {above}\n")
    above = name
  files["run/pipeline.py"] = "from purl_tf import data, models, pruning, rl\n"
  files.update(extra or {})
  package = write_tree(root, files)
  os.makedirs(os.path.join(str(root), "gin"), exist_ok=True)
  os.symlink("../gin", os.path.join(package, CONFIGS_LINK))
  return package


def test_the_checkers_pass_a_layered_package(tmp_path):
  package = layered_tree(tmp_path)
  assert layer_violations(package) == []
  assert top_level_violations(package, str(tmp_path / "gin")) == []


@pytest.mark.parametrize("file, source, violation", [
    ("pruning/wrap.py", "import os\n\nfrom purl_tf.run import pipeline\n",
     "purl_tf/pruning/wrap.py:3: imports purl_tf.run (layer 7, run) from layer 5 (pruning)"),
    ("data/splits.py", "def f():\n  import purl_tf.models.keras3\n",
     "purl_tf/data/splits.py:2: imports purl_tf.models.keras3 (layer 4, models) from layer "
     "3 (data)"),
    ("runtime/files.py", "from purl_tf import data\n",
     "purl_tf/runtime/files.py:1: imports purl_tf.data (layer 3, data) from layer 2 "
     "(runtime)"),
    ("models/keras3.py", "from ..rl import agent\n",
     "purl_tf/models/keras3.py:1: imports purl_tf.rl (layer 6, rl) from layer 4 (models)"),
    ("rl/__init__.py", "from .. import train\n",
     "purl_tf/rl/__init__.py:1: imports purl_tf.train (layer 8, train/console) from layer 6 "
     "(rl)"),
    ("errors.py", "from purl_tf.runtime import files\n",
     "purl_tf/errors.py:1: imports purl_tf.runtime (layer 2, runtime) from layer 1 "
     "(purl_tf/errors)"),
    ("run/report.py", "from purl_tf import verdicts\n",
     "purl_tf/run/report.py:1: imports purl_tf.verdicts (in no layer) from layer 7 (run)"),
])
def test_an_import_from_a_lower_layer_is_reported(tmp_path, file, source, violation):
  # verdicts.py: a top-level module in no layer (reported by top_level_violations).
  package = layered_tree(tmp_path, {file: source, "verdicts.py": "from purl_tf import rl\n"})
  assert layer_violations(package) == [violation]


def test_a_stray_top_level_module_or_folder_is_reported(tmp_path):
  package = layered_tree(tmp_path, {"verdicts.py": "from purl_tf.rl import search\n",
                                    "tools/__init__.py": ""})
  os.remove(os.path.join(package, "errors.py"))
  assert top_level_violations(package, str(tmp_path / "gin")) == [
      "purl_tf/tools/ is a folder in no layer: move it into a layer's subpackage, or add it "
      "to the layers",
      "purl_tf/verdicts.py is at the package's top level, which holds only __init__.py, "
      "console.py, errors.py, train.py: move it into a layer or out of the package",
      "purl_tf/errors.py is missing"]
  assert layer_violations(package) == []  # verdicts.py lies in no layer: reported above
