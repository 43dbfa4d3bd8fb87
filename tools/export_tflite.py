r"""Writes and measures the TFLite flatbuffers of a pruned model (see purl_tf/export.py).

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

from purl_tf import data, export, files
from purl_tf.errors import PurlError

FLAGS = flags.FLAGS
flags.DEFINE_string("root_dir", None, "A finished purl_tf run.")
flags.DEFINE_string("model", None, "A saved pruned tf-keras model (instead of --root_dir).")
flags.DEFINE_string("out_dir", None, "Where the .tflite files go (with --model).")
flags.DEFINE_multi_string("gin_file", [], "Gin files giving the data (with --model).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")


def run() -> dict:
  if bool(FLAGS.root_dir) == bool(FLAGS.model):
    raise PurlError("give exactly one of --root_dir (a run) or --model (a saved model).")
  if FLAGS.root_dir:
    root = os.path.abspath(FLAGS.root_dir)
    config = os.path.join(root, files.CONFIG)
    pruned = os.path.join(root, files.PRUNED_MODEL)
    if not os.path.exists(config) or not os.path.exists(pruned):
      raise PurlError(f"{root} holds no finished purl_tf run (no {files.CONFIG} or "
                      f"{files.PRUNED_MODEL}): run purl_tf.train there first.")
    gin.parse_config_files_and_bindings([config], FLAGS.gin_bindings, skip_unknown=True)
    results = export.export_run(root, data.load_splits(), pruned)
    summary = files.read_json(os.path.join(root, files.RESULTS))
    if summary is not None:
      summary["tflite"] = results
      files.write_json(os.path.join(root, files.RESULTS), summary)
    return results
  if not FLAGS.out_dir:
    raise PurlError("--model needs --out_dir for the .tflite files.")
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  splits = data.load_splits()
  model = keras.models.load_model(FLAGS.model)
  return export.export_tflite(model, None, splits.test,
                              export.calibration_images(splits.reward), FLAGS.out_dir)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    results = run()
  except PurlError as error:
    print(f"export_tflite: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  print(export.table(results))


if __name__ == "__main__":
  app.run(main)
