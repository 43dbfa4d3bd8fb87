r"""Writes and measures the TFLite flatbuffers of a pruned model (see purl_tf/run/export.py).

  python tools/export_tflite.py --root_dir=runs/quickstart
  python tools/export_tflite.py --model=pruned.keras --gin_file=gin/quickstart.gin \
      --out_dir=exported

With --root_dir the run's own data config (root_dir/config.gin), pruned model and dense
weights are used and results.json gains the measurements; with --model, the data comes
from --gin_file/--gin_bindings and there is no dense yardstick.
"""
import os
import sys

import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
from absl import app, flags, logging
import gin
import tf_keras as keras

from purl_tf import data
from purl_tf.run import export
from purl_tf.runtime import files
from purl_tf.errors import PurlError

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined only when run as a script, so the module imports cleanly)."""
  flags.DEFINE_string("root_dir", None, "A finished purl_tf run.")
  flags.DEFINE_string("model", None, "A saved pruned tf-keras model (instead of --root_dir).")
  flags.DEFINE_string("out_dir", None, "Where the .tflite files go (with --model).")
  flags.DEFINE_multi_string("gin_file", [], "Gin files giving the data (with --model).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")


def export_root(root_dir: str, bindings=()) -> dict:
  """Exports a finished run's pruned model with its own data config; updates results.json."""
  root = os.path.abspath(root_dir)
  config = os.path.join(root, files.CONFIG)
  pruned = os.path.join(root, files.PRUNED_MODEL)
  if not os.path.exists(config) or not os.path.exists(pruned):
    raise PurlError(f"{root} holds no finished purl_tf run (no {files.CONFIG} or "
                    f"{files.PRUNED_MODEL}): run purl_tf.train there first.")
  gin.parse_config_files_and_bindings([config], list(bindings), skip_unknown=True)
  results = export.export_run(root, data.load_splits(), pruned)
  summary = files.read_json(os.path.join(root, files.RESULTS))
  if summary is not None:
    summary["tflite"] = results
    files.write_json(os.path.join(root, files.RESULTS), summary)
  return results


def export_model(model_path: str, out_dir: str, gin_files=(), bindings=()) -> dict:
  """Exports a saved pruned model; the data (test split, calibration) comes from gin."""
  if not os.path.exists(model_path):
    raise PurlError(f"--model={model_path} does not exist: give a saved tf-keras model.")
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
  splits = data.load_splits()
  model = keras.models.load_model(model_path)
  return export.export_tflite(model, None, splits.test,
                              export.calibration_images(splits.reward), out_dir)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if bool(FLAGS.root_dir) == bool(FLAGS.model):
      raise PurlError("give exactly one of --root_dir (a run) or --model (a saved model).")
    if FLAGS.root_dir:
      results = export_root(FLAGS.root_dir, FLAGS.gin_bindings)
    elif not FLAGS.out_dir:
      raise PurlError("--model needs --out_dir for the .tflite files.")
    else:
      results = export_model(FLAGS.model, FLAGS.out_dir, FLAGS.gin_file, FLAGS.gin_bindings)
  except PurlError as error:
    print(f"export_tflite: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  print(export.table(results))


if __name__ == "__main__":
  define_flags()
  app.run(main)
