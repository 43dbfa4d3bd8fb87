"""Speed measured, not assumed: a dense and a channel-pruned (shrunk) model side by side.

`measure_speed` converts both to float32 TFLite (export.py's conversion), times them in the
LiteRT interpreter (XNNPACK on CPU, batch 1) at each thread count, and times their Keras
batch throughput; it also writes the pruned model's float32 and full-integer int8 flatbuffers
with their sizes and LiteRT accuracies (export.export_tflite). The returned dict is plain
JSON for results.json.

Timing method: dense and pruned are timed in alternating rounds (dense, pruned, pruned,
dense, ...), so that a burst of load from other processes falls on both alike, and each
reported figure is the median over its rounds. A LiteRT round is export.latency_ms: a fresh
interpreter, warm-up invocations, then the median of timed ones. Only one interpreter lives
at a time: an idle XNNPACK thread pool of the other model spins for a while after each
invocation and would take a core from the model being timed. A Keras round is one batch
through a tf.function of `model(x, training=False)` after a warm-up (the trace).

Speed on a CPU follows FLOPs only roughly (see /work/shared/STACK.md), so report both.
"""
import logging
import math
import time
from typing import Callable, Dict, List, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from purl_tf.errors import PurlError
from purl_tf.pruning.channels import count
from purl_tf.run import export

_log = logging.getLogger(__name__)

NAMES = ("dense", "pruned")
VARIANTS = ("float32", "full_int8")  # flatbuffers of the pruned model written beside the dense


def speedup_key(threads: int) -> str:
  """'speedup_1_thread', 'speedup_2_threads', ...: the result key of one thread count."""
  return f"speedup_{threads}_thread" + ("" if threads == 1 else "s")


def _order(round_index: int) -> Sequence[int]:
  """Which of two models goes first in a round: 0, 1 then 1, 0, and so on (ABBA)."""
  return (0, 1) if round_index % 2 == 0 else (1, 0)


def interleaved_latency_ms(paths: Sequence[str], image: np.ndarray, threads: int, rounds: int,
                           repeats: int) -> List[List[float]]:
  """Per-round median latencies (ms) of two flatbuffers, timed in alternating rounds.

  Returns one list of `rounds` medians per path; each is export.latency_ms (its own
  interpreter, warm-up, `repeats` timed invocations of `image`).
  """
  medians = [[], []]
  for round_index in range(rounds):
    for which in _order(round_index):
      medians[which].append(export.latency_ms(paths[which], image, threads, repeats))
  return medians


def _batch_seconds(function: Callable, batch: tf.Tensor) -> float:
  start = time.perf_counter()
  function(batch).numpy()  # the copy to numpy waits for the result
  return time.perf_counter() - start


def interleaved_throughput(models: Sequence[keras.Model], batch: np.ndarray, repeats: int,
                           warmup: int = 2) -> List[List[float]]:
  """Images per second of two Keras models on `batch`, one call each per alternating round.

  Each model runs as a tf.function of `model(x, training=False)`, called `warmup` times first
  (the first call traces it). Returns one list of `repeats` rates per model.
  """
  batch = tf.constant(batch)
  functions = [tf.function(lambda x, model=model: model(x, training=False))
               for model in models]
  for function in functions:
    for _ in range(warmup):
      function(batch).numpy()
  rates = [[], []]
  for round_index in range(repeats):
    for which in _order(round_index):
      rates[which].append(len(batch) / _batch_seconds(functions[which], batch))
  return rates


def _check_pair(dense: keras.Model, pruned: keras.Model, images: np.ndarray):
  """PurlError unless both models take `images` and give outputs of one shape."""
  for name, model in zip(NAMES, (dense, pruned)):
    if tuple(model.input_shape[1:]) != images.shape[1:]:
      raise PurlError(f"the {name} model takes inputs of shape {model.input_shape[1:]}, the "
                      f"test images are {images.shape[1:]}: give both models the test "
                      "images' shape.")
  if tuple(dense.output_shape[1:]) != tuple(pruned.output_shape[1:]):
    raise PurlError(f"the dense model outputs {dense.output_shape[1:]} and the pruned one "
                    f"{pruned.output_shape[1:]}: compare a network with its own pruned copy.")


def _batch_of(images: np.ndarray, size: int) -> np.ndarray:
  """`size` images: the test images repeated as needed."""
  return images[np.arange(size) % len(images)].astype(np.float32)


@gin.configurable(denylist=["dense", "pruned", "test", "calibration", "out_dir"])
def measure_speed(dense: keras.Model, pruned: keras.Model, test: tf.data.Dataset,
                  calibration: np.ndarray, out_dir: str, threads: Sequence[int] = (1, 2),
                  latency_rounds: int = 7, latency_repeats: int = 20,
                  batch_size: int = 64, throughput_repeats: int = 9,
                  max_test_examples: int = 1000) -> Dict:
  """Parameters, FLOPs, LiteRT latency and Keras throughput of `dense` and `pruned`.

  Args:
    dense: the network before channel pruning (plain tf-keras, fixed input size).
    pruned: its shrunk copy (channels.shrink).
    test: a batched split of (images, labels); the first `max_test_examples` are used for
      the LiteRT accuracies, the first one as the image timed in LiteRT, and repeated to
      `batch_size` for the throughput.
    calibration: float32 images (N, H, W, C) calibrating the full-integer int8 flatbuffer
      (e.g. export.calibration_images of the reward split, not of the test split).
    out_dir: folder of dense_float32.tflite, float32.tflite and full_int8.tflite (the last
      two of the pruned model); files of the same names there are replaced.
    threads: LiteRT interpreter thread counts timed.
    latency_rounds: alternating rounds per model and thread count; an odd count gives a
      median that is one round's.
    latency_repeats: timed invocations per round (after export.latency_ms's warm-up).
    batch_size: images per Keras call for the throughput.
    throughput_repeats: timed Keras calls per model (alternating).
    max_test_examples: test examples the LiteRT accuracies are measured on.
  Returns:
    {"dense" / "pruned": {params, flops, latency_ms: {threads: median ms},
    latency_ms_rounds: {threads: [ms per round]}, throughput_images_per_s},
    speedup_<n>_thread(s) (dense latency / pruned latency), throughput_speedup,
    flops_reduction and params_reduction (dense / pruned),
    tflite: {dense_float32 / float32 / full_int8: export_tflite's row without latency},
    settings: {the repeat counts, threads, batch_size, test_examples}}.
  """
  if latency_rounds < 1 or latency_repeats < 1 or throughput_repeats < 1 or batch_size < 1:
    raise PurlError("measure_speed: latency_rounds, latency_repeats, batch_size and "
                    "throughput_repeats must each be at least 1.")
  images, _ = export.test_examples(test, max_test_examples)
  _check_pair(dense, pruned, images)
  threads = [int(n) for n in threads]

  tflite = export.export_tflite(pruned, dense, test, calibration, out_dir,
                                variants=VARIANTS, max_test_examples=max_test_examples,
                                latency_repeats=1, threads=())
  for row in tflite.values():
    row.pop("latency_ms")  # timed below, interleaved; export_tflite timed nothing
  paths = [tflite[export.DENSE]["path"], tflite["float32"]["path"]]

  result = {name: {"params": cost.params, "flops": cost.flops, "latency_ms": {},
                   "latency_ms_rounds": {}}
            for name, cost in zip(NAMES, (count(dense), count(pruned)))}
  for n in threads:
    rounds = interleaved_latency_ms(paths, images[0], n, latency_rounds, latency_repeats)
    for name, medians in zip(NAMES, rounds):
      result[name]["latency_ms_rounds"][str(n)] = medians
      result[name]["latency_ms"][str(n)] = float(np.median(medians))
    result[speedup_key(n)] = (result["dense"]["latency_ms"][str(n)]
                              / result["pruned"]["latency_ms"][str(n)])

  rates = interleaved_throughput((dense, pruned), _batch_of(images, batch_size),
                                 throughput_repeats)
  for name, values in zip(NAMES, rates):
    result[name]["throughput_images_per_s"] = float(np.median(values))
  result["throughput_speedup"] = (result["pruned"]["throughput_images_per_s"]
                                  / result["dense"]["throughput_images_per_s"])
  result["flops_reduction"] = result["dense"]["flops"] / result["pruned"]["flops"]
  result["params_reduction"] = result["dense"]["params"] / result["pruned"]["params"]
  result["tflite"] = tflite
  result["settings"] = {"threads": threads, "latency_rounds": latency_rounds,
                        "latency_repeats": latency_repeats, "batch_size": batch_size,
                        "throughput_repeats": throughput_repeats,
                        "test_examples": int(len(images))}
  _log.info("%s", summary(result))
  return result


def summary(result: Dict) -> str:
  """One line of measure_speed's result: FLOPs and params reduction, speedups."""
  speedups = ", ".join(f"{key[len('speedup_'):].replace('_', ' ')} {value:.2f}x"
                       for key, value in result.items()
                       if key.startswith("speedup_") and math.isfinite(value))
  return (f"pruned: {result['flops_reduction']:.2f}x fewer FLOPs, "
          f"{result['params_reduction']:.2f}x fewer parameters; LiteRT speedup {speedups}; "
          f"Keras batch-{result['settings']['batch_size']} throughput "
          f"{result['throughput_speedup']:.2f}x")
