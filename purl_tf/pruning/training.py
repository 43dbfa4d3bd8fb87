"""Compiled retraining and evaluation of a wrapped model under a strategy, masks fixed.

One tf.function runs `steps` train steps (its trip count is a tensor, so changing it does
not retrace) and re-applies every mask after each update, so weights stay exactly
sparse. Evaluation counts correct predictions over a distributed dataset, batch by batch.

Batch normalisation: pruning changes what every later layer sees, and a few retrain
batches move the moving statistics (momentum 0.99) by a few percent only, so an
inference-mode measurement right after a pruning step scores a network the statistics no
longer describe (measured on ResNet-20, mnist_full, LAMP at 0.9 after 50 retrain batches:
0.17 accuracy with the moving statistics, 0.97 with batch statistics). `recalibrate`
re-estimates them from a few forward passes (no weight update) before measuring.
"""
import gin
import tensorflow as tf
import tf_keras as keras

from purl_tf import models
from purl_tf.pruning import apply_masks, prunable_layers

SUM = tf.distribute.ReduceOp.SUM


@gin.configurable(denylist=["model", "strategy"])
class MaskedTrainer:
  """Retrains and evaluates a pruning-wrapped model with its masks held fixed.

  Build it inside `strategy.scope()`, the scope the model was built in.

  Args:
    model: a model wrapped by purl_tf.pruning.wrap.
    strategy: the tf.distribute strategy.
    learning_rate: SGD learning rate (float, or a keras LearningRateSchedule).
    momentum: SGD momentum.
    jit_compile: compile the train and eval steps with XLA.
  """

  def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy,
               learning_rate=0.01, momentum: float = 0.9, jit_compile: bool = False):
    self.model = model
    self.strategy = strategy
    self._loss = models.classification_loss(model)
    self._wrappers = prunable_layers(model)
    self.optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum)
    self.optimizer.build(model.trainable_variables)
    self._train_step = tf.function(self._replica_train_step, jit_compile=jit_compile,
                                   autograph=False)
    self._eval_step = tf.function(self._replica_eval_step, jit_compile=jit_compile,
                                  autograph=False)
    self.train_function = tf.function(self._train_steps)
    self.eval_function = None  # compiled at the first evaluate, for its batches' spec
    self._norms = [layer for layer in model.submodules
                   if isinstance(layer, keras.layers.BatchNormalization)]
    self._momentum = tf.Variable(0.0, trainable=False, name="recalibration_momentum")
    self.recalibrate_function = tf.function(self._recalibrate_steps)

  def distribute(self, dataset: tf.data.Dataset):
    """The dataset split across replicas (global batches in, per-replica batches out).

    Across workers it is sharded by element: the tfds sources may have fewer files than
    workers.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

  def stream(self, dataset: tf.data.Dataset):
    """An endless distributed iterator over `dataset` for `train`."""
    return iter(self.distribute(dataset.repeat()))

  def _replica_train_step(self, images, labels):
    with tf.GradientTape() as tape:
      outputs = self.model(images, training=True)
      loss = tf.nn.compute_average_loss(self._loss(labels, outputs))
      if self.model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
    variables = self.model.trainable_variables
    self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  def _train_steps(self, iterator, steps):
    total = tf.constant(0.0)
    for _ in tf.range(steps):
      images, labels = next(iterator)
      total += self.strategy.reduce(
          SUM, self.strategy.run(self._train_step, args=(images, labels)), axis=None)
      apply_masks(self._wrappers)
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v))
                            for v in self.model.trainable_variables])
    return tf.where(finite, total / tf.cast(steps, tf.float32), float("nan"))

  def train(self, iterator, steps: int) -> float:
    """Runs `steps` updates on batches from `iterator`; returns the mean loss.

    The loss is nan when it or any weight stopped being finite.
    """
    return float(self.train_function(iterator, tf.constant(steps, tf.int32)))

  def _replica_forward(self, images):
    self.model(images, training=True)  # batch statistics fold into the moving ones
    return tf.constant(0)

  def _recalibrate_steps(self, iterator, batches):
    """Traced with every batch-norm layer's momentum read from one variable, set per
    batch for a running mean; the layers get their float momenta back once traced, so no
    other function (nor the saved model) sees the variable."""
    momenta = [layer.momentum for layer in self._norms]
    for layer in self._norms:
      layer.momentum = self._momentum
    try:
      for batch in tf.range(batches):
        # The k-th batch (from 0) weighs 1 / (k + 1): a running mean of the batches.
        self._momentum.assign(tf.cast(batch, tf.float32) / tf.cast(batch + 1, tf.float32))
        images, _ = next(iterator)
        self.strategy.run(self._replica_forward, args=(images,))
    finally:
      for layer, momentum in zip(self._norms, momenta):
        layer.momentum = momentum
    return tf.constant(0)

  @property
  def has_batch_norm(self) -> bool:
    return bool(self._norms)

  def recalibrate(self, iterator, batches: int):
    """Sets every batch-norm layer's moving mean and variance to the mean of its batch
    statistics over the next `batches` batches of `iterator` (forward passes in training
    mode; no weight changes). Nothing happens for a model without batch normalisation."""
    if self._norms and batches > 0:
      self.recalibrate_function(iterator, tf.constant(batches, tf.int32))

  def _replica_eval_step(self, images, labels):
    outputs = self.model(images, training=False)
    hits = tf.equal(tf.argmax(outputs, axis=-1, output_type=tf.int64), labels)
    return tf.reduce_sum(tf.cast(hits, tf.int64)), tf.size(labels, out_type=tf.int64)

  def _count_batch(self, images, labels):
    hits, seen = self.strategy.run(self._eval_step, args=(images, labels))
    return (self.strategy.reduce(SUM, hits, axis=None),
            self.strategy.reduce(SUM, seen, axis=None))

  def evaluate(self, distributed) -> float:
    """Top-1 accuracy (fraction) over a dataset from `distribute`.

    The batches are fed from Python to one compiled step (a loop over the dataset inside
    the graph measured 1.7x slower); the counts stay on the device until the end.
    """
    if self.eval_function is None:  # batches of any size (a last partial one): one trace
      self.eval_function = tf.function(self._count_batch, autograph=False,
                                       input_signature=list(distributed.element_spec))
    correct = count = tf.constant(0, tf.int64)
    for images, labels in distributed:
      hits, seen = self.eval_function(images, labels)
      correct, count = correct + hits, count + seen
    return float(correct) / max(int(count), 1)

  @tf.function(autograph=False)
  def reset_optimizer(self):
    """Zeroes the optimizer's state (momentum, step count) for a fresh retrain."""
    for variable in self.optimizer.variables:
      variable.assign(tf.zeros_like(variable))

  def tracing_counts(self) -> dict:
    """How often the train and eval functions were traced (each should trace once)."""
    return {"train": self.train_function.experimental_get_tracing_count(),
            "eval": (self.eval_function.experimental_get_tracing_count()
                     if self.eval_function else 0)}
