"""Data: where examples come from (sources), how images are fitted (preprocessing), and the
train, reward and test splits a run uses (splits)."""
from purl_tf.data.splits import Splits, load_splits

__all__ = ["Splits", "load_splits"]
