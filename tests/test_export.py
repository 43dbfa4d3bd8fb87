"""TFLite export: every variant runs in LiteRT and agrees with Keras; sizes are the files'."""
import gzip
import os

import numpy as np
import pytest

import purl_tf  # noqa: F401
import tensorflow as tf

from purl_tf import export, pruning


@pytest.fixture(scope="module")
def exported(pretrained_lenet, tmp_path_factory):
  """export_tflite of LeNet-5 pruned to 90 % by global magnitude, on the whole test split."""
  splits = pretrained_lenet.splits
  controller = pruning.PruningController(pruning.wrap(pretrained_lenet()))
  dense = pruning.strip(controller.model)
  dense_copy = tf.keras.models.clone_model(dense)
  dense_copy.set_weights(dense.get_weights())
  pruning.global_magnitude(controller, 0.9)
  pruned = pruning.strip(controller.model)
  out_dir = str(tmp_path_factory.mktemp("tflite"))
  results = export.export_tflite(pruned, dense_copy, splits.test,
                                 export.calibration_images(splits.reward), out_dir,
                                 max_test_examples=1000, latency_repeats=5)
  return results, out_dir


def test_every_variant_and_the_dense_yardstick_is_written(exported):
  results, out_dir = exported
  assert set(results) == {export.DENSE, *export.VARIANTS}
  for name, row in results.items():
    assert row["path"] == os.path.join(out_dir, f"{name}.tflite")
    data = open(row["path"], "rb").read()
    assert row["bytes"] == len(data) == os.path.getsize(row["path"])
    assert row["gzip_bytes"] == len(gzip.compress(data, compresslevel=9))
    assert row["test_examples"] == 1000
    assert set(row["latency_ms"]) == {"1", "2"}
    assert all(ms > 0 for ms in row["latency_ms"].values())


def test_float_variants_predict_what_keras_predicts(exported):
  results, _ = exported
  for name in (export.DENSE, "float32", "float32_sparse"):
    assert results[name]["argmax_agreement"] == 1.0, name
    assert results[name]["litert_accuracy"] == results[name]["keras_accuracy"], name


def test_int8_variants_stay_within_one_point_of_keras(exported):
  results, _ = exported
  for name in ("dynamic_int8", "full_int8"):
    row = results[name]
    assert abs(row["litert_accuracy"] - row["keras_accuracy"]) <= 0.01, (name, row)


def test_sparse_encoding_shrinks_the_pruned_model(exported):
  results, _ = exported
  assert results["float32_sparse"]["bytes"] < results["float32"]["bytes"] / 2.5
  assert results["float32_sparse"]["gzip_bytes"] < results[export.DENSE]["gzip_bytes"] / 2.5
  assert results["full_int8"]["bytes"] < results["float32"]["bytes"] / 3


def test_full_int8_takes_int8_input(exported):
  results, _ = exported
  lite = export.LiteModel(results["full_int8"]["path"])
  assert lite.interpreter.get_input_details()[0]["dtype"] == np.int8
  assert lite.interpreter.get_output_details()[0]["dtype"] == np.int8


def test_unknown_variant_is_a_clear_error(pretrained_lenet):
  with pytest.raises(purl_tf.errors.PurlError, match="unknown"):
    export.convert(pretrained_lenet(), "float8")
