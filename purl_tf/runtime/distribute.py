"""The tf.distribute strategy that retraining, evaluation and fine-tuning run under, the
run folder of each worker, and the decisions workers take in lockstep."""
import os

import gin
import numpy as np
import tensorflow as tf

from purl_tf.errors import PurlError

STRATEGIES = ("mirrored", "default", "multi_worker")
_MADE = {}  # name -> strategy: one per process, since two MirroredStrategies in one
            # process share collective keys and abort each other's all-reduces.


@gin.configurable
def make_strategy(name: str = "mirrored", logical_cpus: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy (the same object on every call with the same name).

  Call it before any other TensorFlow work in the process.

  Args:
    name: 'mirrored' (MirroredStrategy over the visible GPUs, else the CPU), 'default'
      (no distribution) or 'multi_worker' (MultiWorkerMirroredStrategy from TF_CONFIG).
    logical_cpus: when > 1 and no GPU is visible, split the CPU into this many logical
      devices and mirror over them (to exercise multi-replica code on a CPU machine).
  """
  if name not in STRATEGIES:
    raise PurlError(f"make_strategy.name={name!r} is unknown: use one of {STRATEGIES}.")
  if logical_cpus > 1 and not tf.config.list_physical_devices("GPU"):
    split_cpu(logical_cpus)
  if name == "default":
    return tf.distribute.get_strategy()
  if name not in _MADE:
    if name == "multi_worker":
      _MADE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    else:
      cpus = tf.config.list_logical_devices("CPU")
      if not tf.config.list_physical_devices("GPU") and len(cpus) > 1:
        _MADE[name] = tf.distribute.MirroredStrategy([device.name for device in cpus])
      else:
        _MADE[name] = tf.distribute.MirroredStrategy()
  return _MADE[name]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files: always, except the non-chief workers of
  a multi-worker strategy."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def run_dir(root_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Where this process writes: root_dir for the chief; for another worker, its own folder
  root_dir/workers/<type>_<index> (every worker runs the same program in lockstep and
  must save its own checkpoints; only the chief's are the run's)."""
  if is_chief(strategy):
    return root_dir
  resolver = strategy.cluster_resolver
  return os.path.join(root_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")


def chief_dir(run_dir_of_worker: str, strategy: tf.distribute.Strategy) -> str:
  """The chief's run folder, seen from this worker's `run_dir` (the inverse of run_dir)."""
  if is_chief(strategy):
    return run_dir_of_worker
  return os.path.dirname(os.path.dirname(run_dir_of_worker))


class Lockstep:
  """Decisions every worker of a multi-worker strategy must take alike, taken once.

  Each worker runs the same program; whatever could differ between them (an exploration
  draw, a Q-network trained with nondeterministic ops, a timer, a signal received by one
  process) is passed through `agree` or `any`, collectives over all workers' replicas.
  Call them at the same points on every worker. With one worker both return their input.
  """

  def __init__(self, strategy: tf.distribute.Strategy):
    self.strategy = strategy
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver and resolver.task_type else {}
    self.workers = sum(len(spec.get(kind, ())) for kind in ("chief", "worker")) or 1
    self._sums = {}  # chief_only -> compiled all-reduce

  @property
  def active(self) -> bool:
    return self.workers > 1

  def _sum(self, values: np.ndarray, chief_only: bool) -> np.ndarray:
    """float64 sum over every replica of `values` (only global replica 0's: the chief's,
    when chief_only)."""
    if chief_only not in self._sums:
      def contribution(local):
        if not chief_only:
          return tf.identity(local)
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return local * tf.cast(tf.equal(replica, 0), tf.float64)

      self._sums[chief_only] = tf.function(lambda local: self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, self.strategy.run(contribution, args=(local,)),
          axis=None), autograph=False)
    return self._sums[chief_only](tf.constant(values, tf.float64)).numpy()

  def agree(self, values) -> np.ndarray:
    """The chief's `values` (numbers of any shape, exact up to 2**53), on every worker."""
    values = np.asarray(values, np.float64)
    return self._sum(values, chief_only=True) if self.active else values

  def any(self, flag: bool) -> bool:
    """Whether `flag` is true on any worker."""
    return bool(self._sum(np.float64(flag), chief_only=False) > 0) if self.active else flag


def split_cpu(count: int):
  """Splits the physical CPU into `count` logical devices (once, before TF starts)."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError as error:  # TensorFlow has started: fine if already split so.
    if len(tf.config.list_logical_devices("CPU")) != count:
      raise PurlError("make_strategy.logical_cpus must be set before TensorFlow starts: "
                      "choose the strategy first in the process.") from error
