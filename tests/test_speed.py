"""measure_speed on the pre-trained LeNet-5 against its copy shrunk to half of every channel
group: the dict is complete, finite and JSON-ready; the pruned model costs less; the speedups
are the ratios of the latencies reported beside them; the written float32 and int8
flatbuffers run in LiteRT and agree with Keras on real digits. No timing is asserted (the
machine is shared): speed targets belong in benchmarks."""
import purl_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

import gin  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from purl_tf import models  # noqa: E402
from purl_tf.errors import PurlError  # noqa: E402
from purl_tf.pruning.channels import (channel_groups, count, least_important_removed,  # noqa: E402
                                      shrink)
from purl_tf.run import export, speed  # noqa: E402

# Small repeat counts, bound through gin as a user would: the tests check results, not speed.
BINDINGS = {"latency_rounds": 3, "latency_repeats": 4, "throughput_repeats": 3,
            "batch_size": 16}


@pytest.fixture(scope="module")
def pair(pretrained_lenet):
  """(dense, pruned): the pre-trained LeNet-5 and its copy keeping half of each group's
  channels (the least important by L1 removed): conv1 20 -> 10, conv2 50 -> 25, fc1 500 -> 250."""
  dense = pretrained_lenet()
  groups = channel_groups(dense).groups
  keep = least_important_removed(groups, [0.5] * len(groups))
  return dense, shrink(dense, groups, keep)


@pytest.fixture(scope="module")
def measured(pair, pretrained_lenet, tmp_path_factory):
  """(result, out_dir): measure_speed on the whole test split (1,000 real digits)."""
  splits = pretrained_lenet.splits
  out_dir = str(tmp_path_factory.mktemp("speed"))
  gin.parse_config([f"measure_speed.{name} = {value}" for name, value in BINDINGS.items()])
  try:
    result = speed.measure_speed(*pair, splits.test, export.calibration_images(splits.reward),
                                 out_dir)
  finally:
    gin.clear_config()
  return result, out_dir


def _leaves(tree, path=""):
  """(path, value) of every number in nested dicts and lists."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, f"{path}/{key}")
  elif isinstance(tree, list):
    for index, value in enumerate(tree):
      yield from _leaves(value, f"{path}[{index}]")
  elif not isinstance(tree, str):
    yield path, tree


def test_every_number_is_there_positive_finite_and_json_ready(measured):
  result, _ = measured
  assert {"dense", "pruned", "speedup_1_thread", "speedup_2_threads", "throughput_speedup",
          "flops_reduction", "params_reduction", "tflite", "settings"} <= set(result)
  for name in speed.NAMES:
    row = result[name]
    assert set(row) == {"params", "flops", "latency_ms", "latency_ms_rounds",
                        "throughput_images_per_s"}
    assert set(row["latency_ms"]) == set(row["latency_ms_rounds"]) == {"1", "2"}
    assert all(len(rounds) == BINDINGS["latency_rounds"]
               for rounds in row["latency_ms_rounds"].values())
    assert row["latency_ms"] == {n: float(np.median(rounds))
                                 for n, rounds in row["latency_ms_rounds"].items()}
  assert set(result["tflite"]) == {export.DENSE, "float32", "full_int8"}
  assert result["settings"] == {**BINDINGS, "threads": [1, 2], "test_examples": 1000}
  leaves = list(_leaves(result))
  assert len(leaves) > 40
  for path, value in leaves:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), path
    assert math.isfinite(value) and value > 0, (path, value)
  assert json.loads(json.dumps(result)) == result


def test_pruned_model_costs_less(measured, pair):
  result, _ = measured
  dense, pruned = pair
  for name, model in zip(speed.NAMES, pair):
    cost = count(model)
    assert (result[name]["params"], result[name]["flops"]) == (cost.params, cost.flops)
  assert result["pruned"]["params"] < result["dense"]["params"]
  assert result["pruned"]["flops"] < result["dense"]["flops"]
  assert result["flops_reduction"] == result["dense"]["flops"] / result["pruned"]["flops"]
  assert result["flops_reduction"] > 3  # half of every conv's inputs and outputs: ~4x
  assert result["tflite"]["float32"]["bytes"] < result["tflite"][export.DENSE]["bytes"]


def test_speedups_are_the_ratios_of_the_reported_latencies(measured):
  """A consistency check of the dict, not a timing assertion."""
  result, _ = measured
  for n in ("1", "2"):
    key = speed.speedup_key(int(n))
    assert result[key] == pytest.approx(
        result["dense"]["latency_ms"][n] / result["pruned"]["latency_ms"][n], rel=1e-12)
  assert result["throughput_speedup"] == pytest.approx(
      result["pruned"]["throughput_images_per_s"] / result["dense"]["throughput_images_per_s"],
      rel=1e-12)
  assert speed.speedup_key(4) == "speedup_4_threads"


def test_written_flatbuffers_run_in_litert_and_agree_with_keras(measured, pair,
                                                               pretrained_lenet):
  """On the 1,000 real test digits: the float32 files give Keras's scores (to float
  rounding); the int8 file of the pruned model picks Keras's class for >= 97 % of them."""
  result, out_dir = measured
  dense, pruned = pair
  images, labels = export.test_examples(pretrained_lenet.splits.test, 1000)
  for name, model in ((export.DENSE, dense), ("float32", pruned), ("full_int8", pruned)):
    row = result["tflite"][name]
    assert row["path"] == os.path.join(out_dir, f"{name}.tflite")
    assert row["bytes"] == os.path.getsize(row["path"])
    lite = export.LiteModel(row["path"])
    scores = np.stack([lite.predict(image) for image in images])
    expected = model(images, training=False).numpy()
    agreement = float(np.mean(scores.argmax(-1) == expected.argmax(-1)))
    assert agreement == row["argmax_agreement"], name
    assert row["litert_accuracy"] == float(np.mean(scores.argmax(-1) == labels)), name
    if name == "full_int8":
      assert agreement >= 0.97, agreement
      assert row["bytes"] < result["tflite"]["float32"]["bytes"] / 3
    else:
      np.testing.assert_allclose(scores, expected, atol=1e-5, err_msg=name)
  assert result["tflite"]["float32"]["keras_accuracy"] >= 0.5  # real digits, still a classifier


def test_latency_rounds_alternate_between_the_models(monkeypatch):
  """Rounds go dense, pruned, pruned, dense, ... so that load falls on both alike."""
  calls = []

  def fake_latency_ms(path, image, num_threads, repeats):
    calls.append((path, num_threads, repeats))
    return float(len(calls))

  monkeypatch.setattr(export, "latency_ms", fake_latency_ms)
  rounds = speed.interleaved_latency_ms(["d", "p"], np.zeros((2, 2, 1)), 2, 4, 5)
  assert [path for path, _, _ in calls] == ["d", "p", "p", "d", "d", "p", "p", "d"]
  assert {(threads, repeats) for _, threads, repeats in calls} == {(2, 5)}
  assert rounds == [[1.0, 4.0, 5.0, 8.0], [2.0, 3.0, 6.0, 7.0]]


def test_models_of_different_networks_are_refused(pair, pretrained_lenet, tmp_path):
  dense, _ = pair
  splits = pretrained_lenet.splits
  other = models.cifar_resnet((32, 32, 1), 10, width=4)
  with pytest.raises(PurlError, match="the pruned model takes inputs of shape"):
    speed.measure_speed(dense, other, splits.test, None, str(tmp_path))
  with pytest.raises(PurlError, match="at least 1"):
    speed.measure_speed(dense, dense, splits.test, None, str(tmp_path), latency_rounds=0)
