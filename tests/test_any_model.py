"""Pruning any Keras model: keras.applications networks beyond ResNet-50 and MobileNet-V2
(nested as a base under a new head, too), a user's model built, trained and saved here in
every format and loaded through models.saved_model or gin alone, shared layers, grouped,
depthwise and separable convolutions, Lambda layers, and the PurlErrors of what is refused.

Each network goes wrap -> PruningController -> global_magnitude(0.7) -> one MaskedTrainer
step -> pruning.save(.keras) -> plain tf_keras.models.load_model, and must give the same
outputs and the same zeros. The applications are built with their own keras.applications
constructors at reduced depth (same blocks, fewer of them), since a MaskedTrainer step traces
the whole network: DenseNet121, EfficientNetB0 and MobileNetV3Small at full depth (121, 82
and 53 prunable layers) pass the same path in 45, 38 and 24 s on 2 CPUs, too slow here.
"""
import os

import purl_tf  # noqa: F401  (before tensorflow: selects tf-keras)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.applications import densenet, efficientnet, mobilenet_v3

from purl_tf import models, pruning
from purl_tf.run import pipeline
from purl_tf.errors import PurlError
from purl_tf.pruning.wrap import SUPPORTED_LAYER_TYPES
from purl_tf.pruning.training import MaskedTrainer

from conftest import REPO, load_tool

SIZE, CLASSES = 32, 4  # applications: the smallest input they take, few classes
FORMATS = {"keras": "user.keras", "h5": "user.h5", "saved_model": "user_saved_model"}


def _pruned_weight(layer):
  """The weight purl_tf prunes in a plain (stripped or loaded) layer."""
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return layer.depthwise_kernel
  if isinstance(layer, keras.layers.SeparableConv2D):
    return layer.pointwise_kernel
  return layer.kernel


def _zeros(weight):
  return int(np.count_nonzero(weight.numpy() == 0))


def _prune_train_save_load(model, images, labels, path):
  """The whole path of a model through purl_tf's pruning; returns the controller.

  images float32 (B, H, W, C), labels int64 (B,): one MaskedTrainer step on them.
  """
  wrapped = pruning.wrap(model)
  expected = [layer.name for layer in pruning.leaf_layers(model)
              if type(layer).__name__ in SUPPORTED_LAYER_TYPES]
  assert [w.layer.name for w in pruning.prunable_layers(wrapped)] == expected
  np.testing.assert_allclose(wrapped(images, training=False).numpy(),
                             model(images, training=False).numpy(), rtol=1e-5, atol=1e-6)
  controller = pruning.PruningController(wrapped)
  assert all(info.flops >= info.params > 0 for info in controller.infos)
  pruning.global_magnitude(controller, 0.7)
  assert abs(controller.global_sparsity() - 0.7) * controller.sizes.sum() <= len(expected)

  trainer = MaskedTrainer(wrapped, tf.distribute.get_strategy())
  before = [v.numpy().copy() for v in wrapped.trainable_variables]
  loss = trainer.train(trainer.stream(tf.data.Dataset.from_tensors((images, labels))), 1)
  assert np.isfinite(loss)
  moved = sum(not np.array_equal(b, v.numpy())
              for b, v in zip(before, wrapped.trainable_variables))
  assert moved > len(before) // 2, "one SGD step should move most variables"
  np.testing.assert_allclose(controller.measured_sparsities(), controller.sparsities(),
                             atol=1e-9)  # the masks held through the update

  saved = pruning.save(wrapped, path)
  loaded = keras.models.load_model(saved)
  leaves = {layer.name: layer for layer in pruning.leaf_layers(loaded)}
  assert not any("Prune" in type(layer).__name__ for layer in leaves.values())
  np.testing.assert_allclose(loaded(images, training=False).numpy(),
                             wrapped(images, training=False).numpy(), rtol=1e-5, atol=1e-6)
  for wrapper in controller.wrappers:
    assert _zeros(_pruned_weight(leaves[wrapper.layer.name])) == _zeros(
        wrapper.pruning_vars[0][0]), wrapper.layer.name
  return controller


# --- keras.applications networks --------------------------------------------------------------


def _with_head(base, name):
  """A keras.applications base nested as one layer under a new softmax head."""
  inputs = keras.Input((SIZE, SIZE, 3))
  features = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
  outputs = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(features)
  return keras.Model(inputs, outputs, name=name)


def _densenet():
  """DenseNet121's blocks, one conv block each: concatenations, transitions, its own head."""
  return densenet.DenseNet([1, 1, 1, 1], include_top=True, weights=None,
                           input_shape=(SIZE, SIZE, 3), classes=CLASSES)


def _efficientnet():
  """EfficientNet-B0's second stage (two MBConv blocks: expansion, depthwise, squeeze-excite,
  a residual add), with its Rescaling and Normalization input layers; nested."""
  blocks = [dict(efficientnet.DEFAULT_BLOCKS_ARGS[1], filters_in=32)]
  base = efficientnet.EfficientNet(1.0, 1.0, SIZE, blocks_args=blocks, include_top=False,
                                   weights=None, input_shape=(SIZE, SIZE, 3),
                                   model_name="efficientnet_base")
  return _with_head(base, "efficientnet")


def _mobilenet_v3():
  """MobileNetV3Small's first block and a residual hard-swish block (TFOpLambda ops), built
  with input_shape=None, so the nested base has inputs of unknown size."""
  def stack(x, kernel, activation, se_ratio):
    x = mobilenet_v3._inverted_res_block(  # pylint: disable=protected-access
        x, 1, 16, 3, 2, se_ratio, mobilenet_v3.relu, 0)
    return mobilenet_v3._inverted_res_block(  # pylint: disable=protected-access
        x, 3, 16, kernel, 1, se_ratio, activation, 1)

  base = mobilenet_v3.MobileNetV3(stack, 64, input_shape=None, model_type="small",
                                  include_top=False, weights=None)
  assert base.input_shape == (None, None, None, 3)
  return _with_head(base, "mobilenet_v3")


@pytest.mark.parametrize("builder", [_densenet, _efficientnet, _mobilenet_v3],
                         ids=["densenet", "efficientnet", "mobilenet_v3_nested"])
def test_application_prunes_trains_saves_and_loads_in_plain_tf_keras(builder, tmp_path):
  keras.utils.set_random_seed(3)
  model = builder()
  rng = np.random.default_rng(3)
  images = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
  labels = np.arange(4, dtype=np.int64) % CLASSES
  controller = _prune_train_save_load(model, images, labels, str(tmp_path / "pruned.keras"))
  kinds = {info.kind for info in controller.infos}
  assert kinds == ({"conv", "dense"} if builder is _densenet else {"conv", "depthwise", "dense"})


# --- a user's model, trained and saved here ---------------------------------------------------


def _user_model():
  """28x28x1 -> 10: a nested block (grouped conv, batch norm, residual add), a concatenation
  of a 1x1 conv and a depthwise conv, a separable conv and a dense head."""
  block_inputs = keras.Input((14, 14, 16))
  y = keras.layers.Conv2D(16, 3, padding="same", groups=4, use_bias=False,
                          name="grouped")(block_inputs)
  y = keras.layers.BatchNormalization(momentum=0.9, name="block_bn")(y)
  y = keras.layers.ReLU(name="block_relu")(y)
  block = keras.Model(block_inputs, keras.layers.Add(name="residual")([block_inputs, y]),
                      name="block")
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                          name="stem")(inputs)
  x = block(x)
  x = keras.layers.Concatenate(name="concat")([
      keras.layers.Conv2D(8, 1, name="branch_1x1")(x),
      keras.layers.DepthwiseConv2D(3, padding="same", name="branch_depthwise")(x)])
  x = keras.layers.SeparableConv2D(16, 3, strides=2, activation="relu", name="separable")(x)
  x = keras.layers.Dense(32, activation="relu", name="fc")(keras.layers.Flatten()(x))
  outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs, name="user_model")


@pytest.fixture(scope="module")
def user_model(mnist5k_splits, tmp_path_factory):
  """(model, {format: path}, (images, labels)): the user's model trained one epoch on
  mnist5k and saved as .keras, .h5 and a SavedModel folder."""
  keras.utils.set_random_seed(4)
  model = _user_model()
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
  model.fit(mnist5k_splits.train, epochs=1, verbose=0)
  assert model.evaluate(mnist5k_splits.reward, verbose=0)[1] > 0.5
  root = tmp_path_factory.mktemp("user_model")
  paths = {}
  for name, file_name in FORMATS.items():
    paths[name] = str(root / file_name)
    model.save(paths[name])
  return model, paths, next(iter(mnist5k_splits.reward))


@pytest.mark.parametrize("save_format", list(FORMATS))
def test_user_model_from_every_format_prunes_trains_and_saves(user_model, save_format,
                                                               tmp_path):
  original, paths, (images, labels) = user_model
  images, labels = images[:8].numpy(), labels[:8].numpy()
  model = models.saved_model((28, 28, 1), 10, path=paths[save_format])
  models.check_compatible(model, (28, 28, 1), 10)
  assert models.outputs_probabilities(model)
  assert [layer.name for layer in pruning.leaf_layers(model)] == [
      layer.name for layer in pruning.leaf_layers(original)]
  np.testing.assert_allclose(model(images, training=False).numpy(),
                             original(images, training=False).numpy(), rtol=1e-5, atol=1e-6)
  controller = _prune_train_save_load(model, images, labels, str(tmp_path / "pruned.keras"))
  assert controller.names == ["stem", "grouped", "branch_1x1", "branch_depthwise", "separable",
                              "fc", "predictions"]


def test_user_model_through_gin_alone(user_model, data_dir, tmp_path):
  """train_eval.model_builder = @saved_model and saved_model.path: no code."""
  gin.parse_config([
      "train_eval.model_builder = @saved_model",
      f"saved_model.path = '{user_model[1]['keras']}'",
      "load_splits.dataset = 'mnist5k'",
      f"load_splits.data_dir = '{data_dir}'",
      "pretrain.epochs = 0",
      "make_strategy.name = 'default'",
      "PruningEnv.retrain_steps = 1",
  ])
  builder = gin.query_parameter("train_eval.model_builder").scoped_configurable_fn
  parts = pipeline.build(str(tmp_path), builder, 0.7)
  assert parts.model_name == "user_model"
  assert parts.controller.names == ["stem", "grouped", "branch_1x1", "branch_depthwise",
                                    "separable", "fc", "predictions"]
  assert parts.dense_reward_accuracy > 0.5
  assert parts.env.dense_accuracy == pytest.approx(parts.dense_reward_accuracy)


# --- what each layer kind counts --------------------------------------------------------------


def test_grouped_separable_and_shared_layers_are_counted_right(tmp_path):
  inputs = keras.Input((8, 8, 8))
  shared = keras.layers.Conv2D(8, 3, padding="same", name="shared")
  x = shared(shared(inputs))  # called twice: one weight, two calls' FLOPs
  x = keras.layers.Conv2D(8, 3, groups=4, name="grouped")(x)  # 6x6
  x = keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, name="separable")(x)  # 4x4
  outputs = keras.layers.Dense(3, activation="softmax", name="fc")(keras.layers.Flatten()(x))
  model = keras.Model(inputs, outputs)
  wrapped = pruning.wrap(model)
  infos = {info.name: info for info in pruning.describe(wrapped)}
  assert list(infos) == ["shared", "grouped", "separable", "fc"]
  assert (infos["shared"].params, infos["shared"].flops) == (9 * 8 * 8, 9 * 8 * 8 * 64 * 2)
  # Grouped: each output sees c_in / groups = 2 inputs; the kernel is (3, 3, 2, 8).
  assert (infos["grouped"].params, infos["grouped"].flops) == (9 * 2 * 8, 9 * 2 * 8 * 36)
  assert (infos["grouped"].in_channels, infos["grouped"].kernel) == (8, 3)
  # Separable: only the 1x1 pointwise kernel (8 * 2 inputs, 6 outputs) is pruned.
  separable = infos["separable"]
  assert (separable.kind, separable.kernel, separable.params, separable.flops) == (
      "conv", 1, 16 * 6, 16 * 6 * 16)
  controller = pruning.PruningController(wrapped)
  controller.apply([0.5] * 4)
  x = np.random.default_rng(5).normal(size=(2, 8, 8, 8)).astype(np.float32)
  loaded = keras.models.load_model(pruning.save(wrapped, str(tmp_path / "counted.h5")))
  np.testing.assert_allclose(loaded(x).numpy(), wrapped(x).numpy(), rtol=1e-5, atol=1e-6)
  assert _zeros(loaded.get_layer("separable").pointwise_kernel) == 48
  assert _zeros(loaded.get_layer("separable").depthwise_kernel) == 0  # stays dense


def test_lambda_layers_need_safe_mode_off_to_load(tmp_path):
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="shift")(inputs)
  x = keras.layers.Conv2D(4, 3, name="conv")(x)
  outputs = keras.layers.Dense(3, activation="softmax", name="fc")(keras.layers.Flatten()(x))
  path = str(tmp_path / "lambda.keras")
  keras.Model(inputs, outputs).save(path)
  with pytest.raises(PurlError) as excinfo:
    models.saved_model((8, 8, 3), 3, path=path)
  assert "saved_model.safe_mode=False" in str(excinfo.value).splitlines()[0]
  model = models.saved_model((8, 8, 3), 3, path=path, safe_mode=False)
  wrapped = pruning.wrap(model)
  pruning.uniform(pruning.PruningController(wrapped), 0.5)
  x = np.random.default_rng(6).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  loaded = keras.models.load_model(pruning.save(wrapped, str(tmp_path / "pruned.keras")),
                                   safe_mode=False)
  np.testing.assert_allclose(loaded(x).numpy(), wrapped(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_saved_model_of_unknown_input_size_takes_the_datas_size(tmp_path):
  inputs = keras.Input((None, None, 1))
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
  model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="fc")(x))
  with pytest.raises(PurlError) as excinfo:
    pruning.PruningController(pruning.wrap(model))
  assert "unknown size" in str(excinfo.value) and "keras.Input" in str(excinfo.value)
  path = str(tmp_path / "any_size.keras")
  model.save(path)
  fixed = models.saved_model((28, 28, 1), 10, path=path)
  assert fixed.input_shape == (None, 28, 28, 1)
  infos = pruning.describe(pruning.wrap(fixed))
  assert infos[0].flops == 9 * 4 * 26 * 26  # counted at the data's 28x28
  x = np.random.default_rng(7).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(fixed(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_outputs_probabilities_looks_inside_a_nested_head():
  inputs = keras.Input((4,))
  head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                           keras.layers.Softmax()], name="head")
  assert models.outputs_probabilities(keras.Model(inputs, head(inputs)))
  logits = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="logits")
  assert not models.outputs_probabilities(keras.Model(inputs, logits(inputs)))


# --- what is refused, in one line -------------------------------------------------------------


class _Subclassed(keras.Model):

  def __init__(self):
    super().__init__(name="subclassed")
    self.dense = keras.layers.Dense(3, activation="softmax")

  def call(self, inputs):
    return self.dense(inputs)


class _NoConfig(keras.layers.Layer):
  """A custom layer whose constructor argument (an array) get_config() cannot return."""

  def __init__(self, factor, **kwargs):
    super().__init__(**kwargs)
    self.factor = factor

  def call(self, inputs):
    return inputs * self.factor


def _refused_models():
  inputs = keras.Input((8, 8, 3))
  flat = keras.layers.Flatten()
  subclassed = _Subclassed()
  subclassed(np.zeros((1, 4), np.float32))
  nested_subclassed = keras.Model(inputs, _Subclassed()(flat(inputs)))
  transpose = keras.Model(inputs, keras.layers.Conv2DTranspose(2, 3, name="up")(inputs))
  twins = [keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="conv")],
                            name=f"twin{i}") for i in range(2)]
  duplicated = keras.Model(inputs, keras.layers.Add()([twin(inputs) for twin in twins]))
  scaled = _NoConfig(np.array([2.0]), name="scale")(inputs)
  custom = keras.Model(inputs, keras.layers.Conv2D(2, 3)(scaled))
  return [
      (subclassed, {}, "subclassed keras.Model"),
      (nested_subclassed, {}, "subclassed keras.Model"),
      (transpose, dict(layer_types=("Conv2DTranspose",)), "which purl_tf does not prune"),
      (duplicated, {}, "two prunable layers named conv"),
      (custom, {}, "layer scale (_NoConfig) cannot be rebuilt"),
  ]


def test_what_cannot_be_pruned_is_refused_in_one_line():
  for model, kwargs, expected in _refused_models():
    with pytest.raises(PurlError) as excinfo:
      pruning.wrap.__wrapped__(model, **kwargs)  # gin's wrapper bypassed
    message = str(excinfo.value)
    assert expected in message and "\n" not in message, message
  with pytest.raises(PurlError, match="no symbolic inputs"):
    models.check_compatible(_Subclassed(), (8, 8, 3), 3)


# --- the worked example of docs/your_model.md -------------------------------------------------

EXAMPLE_COMMANDS = [  # as docs/your_model.md (and README) show them, run from the repo root
    ".venv/bin/python tools/make_example.py --out=examples",
    ".venv/bin/python -m purl_tf.train --gin_file=gin/my_model_example.gin "
    "--root_dir=runs/my_model",
]


def test_worked_example_runs_as_written(tmp_path, monkeypatch):
  """make_example's folder and model, then gin/my_model_example.gin as written, with tiny
  budgets: the data, the saved model and the pruning MDP are built and take one step."""
  with open(os.path.join(REPO, "docs", "your_model.md"), encoding="utf-8") as handle:
    doc = handle.read()
  assert all(command in doc for command in EXAMPLE_COMMANDS)
  monkeypatch.chdir(tmp_path)
  make_example = load_tool("make_example")
  folder = make_example.write_digits("examples", per_class=30)
  make_example.train_model(folder, os.path.join("examples", make_example.MODEL), epochs=1,
                           reward_size=50, test_size=50)
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "gin", "my_model_example.gin")],
      ["load_splits.reward_size = 50", "load_splits.test_size = 50",
       "make_strategy.name = 'default'", "PruningEnv.retrain_steps = 1"])
  builder = gin.query_parameter("train_eval.model_builder").scoped_configurable_fn
  target = gin.query_parameter("train_eval.target_sparsity")
  parts = pipeline.build("runs/my_model", builder, target)
  assert (parts.splits.name, parts.splits.image_shape, parts.splits.num_classes) == (
      "image_folder", (28, 28, 1), 10)
  assert parts.splits.num_examples == {"train": 200, "reward": 50, "test": 50}
  assert parts.model_name == "my_model"
  assert parts.controller.names == ["stem", "res_conv", "conv2", "fc", "predictions"]
  parts.env.reset()
  step = parts.env.step(np.int64(len(parts.env.levels) - 1))
  assert np.isfinite(step.reward) and parts.controller.sparsity(0) > 0.9
