"""Shared fixtures: the offline mnist5k data, a pre-trained LeNet-5, two logical CPUs.

`import purl_tf` selects tf-keras and must run before TensorFlow is imported; the CPU is
split into two logical devices before any TensorFlow op runs, so that MirroredStrategy
tests get two replicas on a one-CPU machine.
"""
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import purl_tf  # noqa: F401  (must come first: selects tf-keras before TensorFlow loads)
from purl_tf.runtime import distribute

distribute.split_cpu(2)

import gin  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402

from purl_tf import data, models  # noqa: E402
from purl_tf.runtime import files  # noqa: E402

# Epochs of dense pre-training of the shared LeNet-5. Measured on mnist5k (3,500 train
# examples, batch 64, Adam 1e-3): 4 epochs reach ~96 % test accuracy, 6 epochs 96-97 %
# over several seeds (~8 s on 2 cores), which leaves a margin over the 95 % the tests ask.
PRETRAIN_EPOCHS = 6
PRETRAIN_SEED = 0


def load_tool(name):
  """The module tools/<name>.py, imported once per session as `tools.<name>` (pytest.ini puts
  the checkout on the path; the tools define their absl flags only when run as scripts)."""
  return importlib.import_module(f"tools.{name}")


@pytest.fixture(autouse=True)
def _clear_gin_config():
  """Every test starts and ends with no gin bindings."""
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def mirrored_strategy():
  """distribute.make_strategy('mirrored') over the two logical CPUs.

  make_strategy hands out one MirroredStrategy per process (two would share collective
  instance keys and abort each other's all-reduces); this fixture names that one.
  """
  strategy = distribute.make_strategy("mirrored")
  assert strategy.num_replicas_in_sync == 2
  return strategy


@contextlib.contextmanager
def shared_folder(tmp_path_factory, name):
  """The folder `name` of the test session, the same for every pytest-xdist worker, held
  under an exclusive lock while the caller fills or reads it: the first worker builds what
  the session shares (data, the pre-trained LeNet-5, a finished run), the others wait and
  find it built, instead of each building its own on the same two cores."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the session's folder; each worker's basetemp lies in it
  folder = base / name
  with open(f"{folder}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    folder.mkdir(exist_ok=True)
    yield str(folder)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """tfds data_dir of the session, with mnist5k prepared in it (~6 s, once a session)."""
  with shared_folder(tmp_path_factory, "tensorflow_datasets") as folder:
    data.load_splits("mnist5k", data_dir=folder, batch_size=64, reward_size=500)
  return folder


@pytest.fixture(scope="session")
def mnist5k_splits(data_dir):
  """mnist5k splits: train 3,500 (batches of 64), reward 500, test 1,000."""
  return data.load_splits("mnist5k", data_dir=data_dir, batch_size=64, reward_size=500)


@pytest.fixture(scope="session")
def pretrained_lenet(mnist5k_splits, tmp_path_factory):
  """A factory of fresh LeNet-5 models holding the session's pre-trained dense weights.

  LeNet-5 is trained once per session with models.pretrain (weights cached in
  root_dir/dense/weights.h5). Call the returned function, inside a strategy scope when
  needed, to get a new uncompiled model with those weights:

    model = pretrained_lenet()

  Attributes of the factory: weights_path, root_dir, reward_accuracy (what pretrain
  returned), splits (the mnist5k splits it was trained on).
  """
  splits = mnist5k_splits
  with shared_folder(tmp_path_factory, "pretrained_lenet") as root_dir:
    keras.utils.set_random_seed(PRETRAIN_SEED)
    model = models.lenet5(splits.image_shape, splits.num_classes)
    # Trains once a session; a later call loads the weights cached in root_dir.
    reward_accuracy = models.pretrain(model, splits, root_dir=root_dir,
                                      epochs=PRETRAIN_EPOCHS, verbose=0)
  weights_path = os.path.join(root_dir, "dense", "weights.h5")
  assert os.path.isfile(weights_path), "models.pretrain did not cache the dense weights"

  def make_pretrained_lenet():
    fresh = models.lenet5(splits.image_shape, splits.num_classes)
    fresh.load_weights(weights_path)
    return fresh

  make_pretrained_lenet.weights_path = weights_path
  make_pretrained_lenet.root_dir = root_dir
  make_pretrained_lenet.reward_accuracy = reward_accuracy
  make_pretrained_lenet.splits = splits
  return make_pretrained_lenet


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "gin", "quickstart.gin")


def quick_bindings(data_dir):
  """The quickstart shrunk to seconds, deterministic: 1 pre-training epoch, 3 episodes of
  2-batch retrains, candidates re-scored after 5 batches, a third of an epoch of
  fine-tuning, a small export."""
  return [f"load_splits.data_dir = '{data_dir}'", "pretrain.epochs = 1",
          "SearchRunner.num_episodes = 3", "SearchRunner.eval_interval = 2",
          "PruningEnv.retrain_steps = 2", "SearchRunner.rescore_steps = 5",
          "finetune.epochs = 0.3",
          "export_tflite.variants = ('float32_sparse',)",
          "export_tflite.max_test_examples = 50", "export_tflite.latency_repeats = 2",
          "make_strategy.name = 'default'", "train_eval.deterministic = True"]


def weight_env(model, splits, reward=None, **options):
  """A PruningEnv of `model` at weight granularity: wrapped, with its controller and a
  MaskedTrainer on the default strategy, retraining on splits.train_stream and measured on
  `reward` (default splits.reward); `options` go to PruningEnv."""
  import tensorflow as tf
  from purl_tf import pruning
  from purl_tf.pruning.training import MaskedTrainer
  from purl_tf.rl.env import PruningEnv
  controller = pruning.PruningController(pruning.wrap(model))
  trainer = MaskedTrainer(controller.model, tf.distribute.get_strategy())
  return PruningEnv(controller, trainer, splits.train_stream,
                    splits.reward if reward is None else reward, **options)


def start_from(root, weights_path):
  """Puts the dense weights `weights_path` where a run in `root` looks for them, so that it
  loads them instead of pre-training."""
  dense = os.path.join(root, files.DENSE_WEIGHTS)
  if not os.path.exists(dense):
    os.makedirs(os.path.dirname(dense), exist_ok=True)
    shutil.copyfile(weights_path, dense)


def train_command(root, data_dir, *extra_bindings):
  """`python -m purl_tf.train` of the quick quickstart (quick_bindings) into root."""
  bindings = quick_bindings(data_dir) + list(extra_bindings)
  return ([sys.executable, "-m", "purl_tf.train", f"--gin_file={QUICKSTART}",
           f"--root_dir={root}"] + [f"--gin_bindings={b}" for b in bindings])


@pytest.fixture(scope="session")
def finished_process(data_dir, tmp_path_factory):
  """(root_dir, run) of one uninterrupted train_command run in a fresh process, once a
  session: run.returncode, run.stdout and run.stderr are the process's."""
  with shared_folder(tmp_path_factory, "finished") as folder:
    root, console = os.path.join(folder, "run"), os.path.join(folder, "console.json")
    if not os.path.exists(console):
      done = subprocess.run(train_command(root, data_dir), capture_output=True, text=True,
                            cwd=REPO, timeout=600)
      assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
      with open(console, "w") as handle:
        json.dump({k: getattr(done, k) for k in ("returncode", "stdout", "stderr")}, handle)
    with open(console) as handle:
      return root, types.SimpleNamespace(**json.load(handle))


@pytest.fixture(scope="session")
def finished_run(finished_process):
  """(root_dir, results) of finished_process."""
  root, _ = finished_process
  with open(os.path.join(root, "results.json")) as handle:
    return root, json.load(handle)


def free_port():
  """A TCP port free on localhost now."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def start_workers(command, count=2, outputs=None):
  """Processes running `command` as the workers of a loopback cluster (TF_CONFIG), their
  output piped (or written to the files `outputs`)."""
  cluster = {"worker": [f"localhost:{free_port()}" for _ in range(count)]}
  return [subprocess.Popen(command, stdout=outputs[index] if outputs else subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=REPO,
                           env=dict(os.environ, TF_CONFIG=json.dumps(
                               {"cluster": cluster, "task": {"type": "worker", "index": index}})))
          for index in range(count)]


def randomized(model, seed=0):
  """`model` with non-trivial batch-norm scales, shifts and statistics and non-zero biases,
  as a trained model has (a fresh one's zero shifts would hide an unmasked batch norm)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      size = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, size), rng.normal(0, 0.2, size),
                         rng.normal(0, 0.2, size), rng.uniform(0.5, 1.5, size)])
    elif getattr(layer, "bias", None) is not None:
      layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
  return model


def gated_residual_head(h):
  """The tail of the mixed test models, on a (batch, rows, cols, 16) tensor `h`: a
  squeeze-excite gate (Multiply ties h's channels to the gate's), a residual Add over a 1x1
  conv with batch norm, max pooling and Flatten; (batch, features)."""
  layers = keras.layers
  gate = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(h)
  gate = layers.Conv2D(4, 1, activation="relu", name="se_reduce")(gate)
  gate = layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(gate)
  x = layers.Multiply(name="se_gate")([h, gate])
  x = layers.Add(name="add")([x, layers.BatchNormalization(name="k_bn")(
      layers.Conv2D(16, 1, name="k")(x))])
  return layers.Flatten(name="flatten")(layers.MaxPooling2D(name="pool")(x))
