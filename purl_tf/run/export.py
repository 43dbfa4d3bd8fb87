"""TFLite export of a pruned model, checked in LiteRT: size, accuracy and latency.

Four flatbuffers of the pruned model (and a float32 one of the dense model, the yardstick):

  float32          plain conversion: zeros are stored like any other weight
  float32_sparse   Optimize.EXPERIMENTAL_SPARSITY: pruned weights stored in a sparse format
  dynamic_int8     dynamic-range quantisation: int8 weights, float activations
  full_int8        int8 weights, activations, input and output; calibrated on the reward split

Each is measured with the LiteRT interpreter (ai-edge-litert, XNNPACK on CPU): bytes on disk
and gzipped, top-1 accuracy on (up to `max_test_examples` of) the test split next to the
Keras model's on the same examples, and the median latency of one image at 1 and 2 threads.
"""
import gzip
import os
import time
from typing import Dict, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from purl_tf.runtime import files
from purl_tf.errors import PurlError

VARIANTS = ("float32", "float32_sparse", "dynamic_int8", "full_int8")
DENSE = "dense_float32"


def convert(model: keras.Model, variant: str, calibration=None) -> bytes:
  """The flatbuffer of `model` for one variant; `calibration`: float32 images (N, H, W, C)."""
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  if variant == "float32_sparse":
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  elif variant == "dynamic_int8":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  elif variant == "full_int8":
    if calibration is None:
      raise PurlError("full_int8 export needs calibration images from the reward split.")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  elif variant != "float32":
    raise PurlError(f"TFLite variant {variant!r} is unknown: use one of {VARIANTS}.")
  return converter.convert()


class LiteModel:
  """A flatbuffer in the LiteRT interpreter; takes and returns float32, quantising as needed."""

  def __init__(self, path: str, num_threads: int = 1):
    self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
    self.interpreter.allocate_tensors()
    self._input = self.interpreter.get_input_details()[0]
    self._output = self.interpreter.get_output_details()[0]

  def _quantise(self, images):
    scale, zero = self._input["quantization"]
    if self._input["dtype"] == np.float32 or not scale:
      return images.astype(self._input["dtype"])
    info = np.iinfo(self._input["dtype"])
    return np.clip(np.round(images / scale + zero), info.min, info.max).astype(
        self._input["dtype"])

  def _dequantise(self, outputs):
    scale, zero = self._output["quantization"]
    if self._output["dtype"] == np.float32 or not scale:
      return outputs.astype(np.float32)
    return (outputs.astype(np.float32) - zero) * scale

  def invoke(self):
    self.interpreter.invoke()

  def set_input(self, image: np.ndarray):
    """Feeds one image, float32 (H, W, C)."""
    self.interpreter.set_tensor(self._input["index"], self._quantise(image[None]))

  def predict(self, image: np.ndarray) -> np.ndarray:
    """Class scores, float32 (num_classes,), of one image (H, W, C)."""
    self.set_input(image)
    self.invoke()
    return self._dequantise(self.interpreter.get_tensor(self._output["index"]))[0]


def latency_ms(path: str, image: np.ndarray, num_threads: int, repeats: int) -> float:
  """Median wall time of one invocation on one image, in milliseconds."""
  lite = LiteModel(path, num_threads)
  lite.set_input(image)
  for _ in range(3):
    lite.invoke()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    lite.invoke()
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


def test_examples(dataset: tf.data.Dataset, limit: int):
  """(images float32 (N, H, W, C), labels int64 (N,)): the first `limit` of a batched split."""
  images, labels = [], []
  for batch_images, batch_labels in dataset:
    images.append(batch_images.numpy())
    labels.append(batch_labels.numpy())
    if sum(len(x) for x in labels) >= limit:
      break
  if not images:
    raise PurlError("the test split is empty: nothing to measure the export on.")
  return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def _keras_predictions(model: keras.Model, images: np.ndarray) -> np.ndarray:
  return np.argmax(model.predict(images, batch_size=256, verbose=0), axis=-1)


def measure(path: str, images: np.ndarray, labels: np.ndarray, threads: Sequence[int],
            repeats: int) -> dict:
  """Size, LiteRT predictions and accuracy, and latency of one flatbuffer."""
  data = open(path, "rb").read()
  lite = LiteModel(path)
  predictions = np.array([np.argmax(lite.predict(image)) for image in images])
  return {
      "path": path,
      "bytes": os.path.getsize(path),
      "gzip_bytes": len(gzip.compress(data, compresslevel=9)),
      "litert_accuracy": float(np.mean(predictions == labels)),
      "latency_ms": {str(n): latency_ms(path, images[0], n, repeats) for n in threads},
      "_predictions": predictions,
  }


def calibration_images(dataset: tf.data.Dataset, count: int = 200) -> np.ndarray:
  """float32 (N, H, W, C): the first `count` images of a batched split."""
  return test_examples(dataset, count)[0]


def export_run(root_dir: str, splits, pruned_model: str) -> Dict[str, dict]:
  """export_tflite for a run: its saved pruned model, its dense weights, its data."""
  pruned = keras.models.load_model(pruned_model)
  dense = None
  dense_weights = os.path.join(root_dir, files.DENSE_WEIGHTS)
  if os.path.exists(dense_weights):
    dense = keras.models.load_model(pruned_model)
    dense.load_weights(dense_weights)
  return export_tflite(pruned, dense, splits.test, calibration_images(splits.reward),
                       os.path.join(root_dir, files.TFLITE_DIR))


@gin.configurable(denylist=["model", "dense_model", "test", "calibration", "out_dir"])
def export_tflite(model: keras.Model, dense_model: keras.Model, test: tf.data.Dataset,
                  calibration: np.ndarray, out_dir: str, variants: Sequence[str] = VARIANTS,
                  max_test_examples: int = 2000, latency_repeats: int = 50,
                  threads: Sequence[int] = (1, 2)) -> Dict[str, dict]:
  """Writes and measures the TFLite variants of `model` and the dense float32 yardstick.

  Args:
    model: the pruned model, stripped (plain tf-keras).
    dense_model: the same network with its dense weights, stripped (None: skip it).
    test: the batched test split.
    calibration: float32 images (N, H, W, C) from the reward split for full_int8.
    out_dir: folder of the .tflite files.
    variants: which of VARIANTS to write.
    max_test_examples: test examples the accuracies are measured on.
    latency_repeats: timed invocations per latency (median reported).
    threads: interpreter thread counts to time.
  Returns:
    {variant: {path, bytes, gzip_bytes, litert_accuracy, keras_accuracy,
    argmax_agreement, latency_ms: {threads: ms}}} with DENSE among the keys.
  """
  tf.io.gfile.makedirs(out_dir)
  images, labels = test_examples(test, max_test_examples)
  results = {}
  jobs = [(DENSE, dense_model, "float32")] if dense_model is not None else []
  for name, source, variant in jobs + [(v, model, v) for v in variants]:
    path = os.path.join(out_dir, f"{name}.tflite")
    partial = path + ".partial"
    with open(partial, "wb") as handle:
      handle.write(convert(source, variant, calibration))
    os.replace(partial, path)
    keras_predictions = _keras_predictions(source, images)
    row = measure(path, images, labels, threads, latency_repeats)
    row["keras_accuracy"] = float(np.mean(keras_predictions == labels))
    row["argmax_agreement"] = float(np.mean(row.pop("_predictions") == keras_predictions))
    row["test_examples"] = int(len(labels))
    results[name] = row
  return results


def table(results: Dict[str, dict]) -> str:
  """A markdown table of export_tflite's results."""
  threads = sorted({t for row in results.values() for t in row["latency_ms"]}, key=int)
  header = ("| variant | bytes | gzip bytes | LiteRT acc | Keras acc | "
            + " | ".join(f"ms ({t} thr)" for t in threads) + " |")
  lines = [header, "|" + " --- |" * (5 + len(threads))]
  order = [DENSE, *VARIANTS]
  for name, row in sorted(results.items(), key=lambda item: order.index(item[0])):
    latency = " | ".join(f"{row['latency_ms'][t]:.3f}" for t in threads)
    lines.append(f"| {name} | {row['bytes']:,} | {row['gzip_bytes']:,} | "
                 f"{row['litert_accuracy']:.4f} | {row['keras_accuracy']:.4f} | {latency} |")
  return "\n".join(lines)
