"""What the multi-worker job scripts share: the test session's pre-trained LeNet-5, wrapped
for pruning in the job's strategy, and the mnist5k splits (global batches of 32)."""
from purl_tf import data, models, pruning


def pretrained_lenet(strategy, data_dir: str, weights: str):
  """(data.Splits, PruningController of the wrapped LeNet-5 holding `weights`)."""
  splits = data.load_splits("mnist5k", data_dir=data_dir, batch_size=32, reward_size=500,
                            num_replicas=strategy.num_replicas_in_sync)
  with strategy.scope():
    model = models.lenet5(splits.image_shape, splits.num_classes)
    model.load_weights(weights)
    controller = pruning.PruningController(pruning.wrap(model))
  return splits, controller
