"""One process of the multi-worker search test: a small PuRL search of LeNet-5.

Arguments: strategy name ('multi_worker' with TF_CONFIG set by the test, or 'default' for
the one-process reference), the tfds data_dir, the dense weights, the run folder.

Worker k explores with seed k (the reference with seed 0): a stand-in for whatever can make
workers decide differently (a replay sampler's draws, a nondeterministic op), so that the
workers stay in lockstep only if every worker takes the chief's decisions. Retraining is
off, so that the reference, which sees the same global batches on one device, measures
exactly the same accuracies. It prints what this process holds locally: the digest of its
own masks after every episode (distribute.Lockstep does not see these).
"""
import functools
import json
import sys

import purl_tf  # noqa: F401
from purl_tf.runtime import distribute

strategy = distribute.make_strategy(sys.argv[1])  # first: multi-worker starts before ops

import tensorflow as tf  # noqa: E402

from multiworker_lenet import pretrained_lenet  # noqa: E402
from purl_tf.rl import search  # noqa: E402
from purl_tf.rl.env import PruningEnv  # noqa: E402
from purl_tf.pruning.training import MaskedTrainer  # noqa: E402


class RecordingEnv(PruningEnv):
  """Keeps this process's mask digest after the last step of every episode."""

  digests = []

  def _step(self, action):
    step = super()._step(action)
    if step.is_last():
      self.digests.append(self.controller.mask_digest().tolist())
    return step


data_dir, weights, root = sys.argv[2:5]
resolver = getattr(strategy, "cluster_resolver", None)
worker = resolver.task_id if resolver and resolver.task_type else 0
splits, controller = pretrained_lenet(strategy, data_dir, weights)
with strategy.scope():
  trainer = MaskedTrainer(controller.model, strategy)
env = RecordingEnv(controller, trainer, functools.partial(splits.train_stream, seed=0),
                   splits.reward, target_sparsity=0.9, retrain_steps=0)
tf.keras.utils.set_random_seed(0)  # the agent's initial Q-network, as in the reference
# Two collect episodes (the first all exploration), the agent trained on each worker's own
# replay draws after the second, then the greedy episode of those diverged Q-networks.
runner = search.SearchRunner(env, distribute.run_dir(root, strategy), num_episodes=2,
                             eval_interval=2, batch_size=8, rescore_steps=0,
                             checkpoint_seconds=0, seed=worker,
                             lockstep=distribute.Lockstep(strategy))
result = runner.run()
print("RESULT " + json.dumps({
    "digests": env.digests, "levels": [e.levels for e in result.episodes],
    "accuracies": [e.accuracy for e in result.episodes], "best": result.best.allocation,
    "chosen": result.chosen.allocation}))
