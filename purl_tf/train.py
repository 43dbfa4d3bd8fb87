r"""Command line of one run: dense model -> a method's allocation -> fine-tune -> export.

  python -m purl_tf.train --gin_file=gin/quickstart.gin --root_dir=runs/quickstart
  python -m purl_tf.train --gin_file=gin/resnet50.gin --root_dir=runs/resnet50 \
      --gin_bindings="load_splits.manual_dir='/data/imagenet'"
  python -m purl_tf.train --gin_file=gin/quickstart.gin --root_dir=runs/lamp \
      --gin_bindings="train_eval.method='global_magnitude'"

Every knob is a gin parameter (see purl_tf.run.pipeline.train_eval). Rerunning with the same
root_dir resumes an interrupted run; a finished stage is not redone. This is a thin layer:
train_eval and the Python API (purl_tf.prune) both run pipeline.run, the one core.
"""
import os
import sys
import time

from purl_tf import console  # first: importing purl_tf selects tf-keras before TensorFlow

if __name__ == "__main__":
  console.install()  # before TensorFlow loads: its libraries print while they load

# pylint: disable=wrong-import-position
from absl import app, flags, logging
import tensorflow_datasets as tfds

from purl_tf.run import export, pipeline, speed
from purl_tf.runtime import distribute, files, interrupt
from purl_tf.errors import PurlError
from purl_tf.runtime.results import RunResult

FLAGS = flags.FLAGS
flags.DEFINE_string("root_dir", None, "Run folder: results, checkpoints, TensorBoard logs.")
flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. "
                          "\"SearchRunner.num_episodes=50\".")
flags.DEFINE_integer("mock_examples", 0, "Check a config end to end without its data: run on "
                     "tfds.testing.mock_data with this many random examples per split.")
flags.DEFINE_bool("overwrite", False, "Start over in a root_dir that holds a run with another "
                  "config (its files are deleted).")

LOG = "run.log"  # everything a run printed, noise included, appended run after run


def summary(root_dir: str, result: RunResult) -> str:
  """The lines printed at the end of a run: its numbers and where its files are."""
  root_dir = os.path.abspath(root_dir)
  return "\n".join([
      "",
      f"Method                {result.method}",
      f"Dense test accuracy   {result.dense_test_accuracy:.4f}",
      f"Pruned test accuracy  {result.pruned_test_accuracy:.4f}",
      (f"FLOPs removed         " if result.granularity == "channel" else
       f"Global sparsity       ") + f"{result.global_sparsity:.4f} (target {result.target_sparsity})",
      f"Parameters left       {result.params_remaining:,} of {result.params_total:,}",
      f"FLOPs left            {result.flops_remaining:,} of {result.flops_total:,}"
      + (f" ({100 * result.flops_remaining / max(result.flops_total, 1):.1f} %, target "
         f"{100 * (1 - result.target_sparsity):.0f} %)" if result.granularity == "channel"
         else ""),
      *(_speed_lines(result) if result.speed else []),
      f"Results               {os.path.join(root_dir, files.RESULTS)}",
      f"Best allocation       {os.path.join(root_dir, files.BEST_ALLOCATION)}",
      f"Pruned model          {result.pruned_model}",
      *([f"Pruned model, Keras 3 {result.pruned_model_keras3}"]
        if result.pruned_model_keras3 else []),
      *([f"TFLite                {os.path.join(root_dir, files.TFLITE_DIR)}/*.tflite",
         "", export.table(result.tflite)] if result.tflite else []),
      f"TensorBoard           tensorboard --logdir {root_dir}",
      *[f"WARNING               {line}" for line in result.warnings],
  ])


def _speed_lines(result: RunResult) -> list:
  """The measured speed of a channel-pruned model against the dense one (results.speed)."""
  latency = {name: result.speed[name]["latency_ms"] for name in speed.NAMES}
  return [f"Speed (measured)      {speed.summary(result.speed)}",
          *[f"LiteRT latency        {threads} thread(s): {latency['dense'][threads]:.3f} ms "
            f"dense, {latency['pruned'][threads]:.3f} ms pruned" for threads in latency["dense"]],
          f"TFLite                "
          f"{os.path.dirname(result.speed['tflite']['float32']['path'])}/*.tflite"]


def log_path(root_dir: str) -> str:
  """Where this process's log goes: in the folder it writes (distribute.run_dir)."""
  root_dir = os.path.abspath(os.path.expanduser(root_dir))
  return os.path.join(distribute.run_dir(root_dir, distribute.make_strategy()), LOG)


def main(argv):
  del argv
  if not FLAGS.root_dir:
    raise app.UsageError("--root_dir is required.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tf-agents and tfds log every checkpoint/read.
  started = time.time()
  console.show_logs()
  interrupt.install()
  try:
    pipeline.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    console.log_to(log_path(FLAGS.root_dir))
    if FLAGS.mock_examples:
      with tfds.testing.mock_data(num_examples=FLAGS.mock_examples):
        result = pipeline.train_eval(FLAGS.root_dir, overwrite=FLAGS.overwrite)
    else:
      result = pipeline.train_eval(FLAGS.root_dir, overwrite=FLAGS.overwrite)
  except PurlError as error:
    # gin appends "In call to configurable ..." lines; the first line is the message.
    print(f"purl_tf: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
  except interrupt.Interrupted as stop:
    print(f"purl_tf: {str(stop).splitlines()[0]}; finished work is saved in {os.path.abspath(FLAGS.root_dir)}: "
          "rerun the same command to resume.", file=sys.stderr)
    sys.exit(128 + stop.signal_number)
  print(summary(FLAGS.root_dir, result))
  print(f"Done in {time.time() - started:.0f} s.", flush=True)


if __name__ == "__main__":
  app.run(main)
