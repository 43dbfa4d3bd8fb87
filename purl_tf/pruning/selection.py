"""Choosing which weights a mask keeps, on the device that holds them (no host round-trip).

Each function is one compiled graph over a flat float32 vector of weights, so a mask is
chosen and written where the weights live (GPU or CPU), whatever the layer's shape.
"""
import tensorflow as tf

_SAMPLE = 16384  # weights in the sorted sample that brackets the k-th smallest
_BRACKET_ABOVE = 1 << 17  # vectors longer than this are bracketed instead of fully sorted
_VECTOR = tf.TensorSpec([None], tf.float32)
_COUNT = tf.TensorSpec([], tf.int64)


def _count(condition):
  """Number of true elements (an int32 sum: several times faster than count_nonzero on
  CPUs), as int64."""
  return tf.cast(tf.reduce_sum(tf.cast(condition, tf.int32)), tf.int64)


@tf.function(input_signature=[_VECTOR, _COUNT], autograph=False)
def kth_smallest(values, k):
  """The k-th smallest (0-based) of `values`, exactly, in a few linear passes.

  A sorted strided sample brackets the answer (by 4 standard deviations of the sample
  rank); only the values strictly inside the bracket are sorted, so the many equal zeros of
  an already pruned layer cost one count. Falls back to a full sort when the bracket misses.
  """
  size = tf.size(values, out_type=tf.int64)

  def full_sort():
    return tf.sort(values)[k]

  def bracketed():
    sample = tf.sort(values[::size // _SAMPLE])
    count = tf.cast(tf.size(sample), tf.float64)
    quantile = tf.cast(k, tf.float64) / tf.cast(size, tf.float64)
    position = quantile * count
    margin = 4.0 * tf.sqrt(count * quantile * (1.0 - quantile)) + 16.0
    low_at, high_at = position - margin, position + margin
    low = tf.where(low_at >= 0, tf.gather(sample, tf.cast(tf.maximum(low_at, 0), tf.int64)),
                   float("-inf"))
    high = tf.where(high_at < count, tf.gather(
        sample, tf.cast(tf.minimum(high_at, count - 1), tf.int64)), float("inf"))
    up_to_low = _count(values <= low)

    def at_or_below_low():
      return tf.cond(_count(values < low) <= k, lambda: low, full_sort)

    def above_low():
      inside = tf.boolean_mask(values, tf.ensure_shape((values > low) & (values < high),
                                                       [None]))
      return tf.cond(k < up_to_low + tf.size(inside, out_type=tf.int64),
                     lambda: tf.sort(inside)[k - up_to_low], full_sort)

    return tf.cond(k < up_to_low, at_or_below_low, above_low)

  return tf.cond(size > _BRACKET_ABOVE, bracketed, full_sort)


@tf.function(input_signature=[_VECTOR, _COUNT], autograph=False)
def keep_largest(values, keep):
  """(float32 mask of values' shape, threshold): the `keep` largest |values| kept.

  Ties at the threshold go to lower positions, so exactly min(keep, size) values remain.
  """
  magnitude = tf.abs(values)
  size = tf.size(values, out_type=tf.int64)

  def select():
    threshold = kth_smallest(magnitude, size - keep)
    above = magnitude > threshold
    missing = keep - _count(above)
    tied = magnitude == threshold

    def first_ties():  # more ties than places: the lower positions win
      return above | (tied & (tf.cumsum(tf.cast(tied, tf.int32)) <= tf.cast(missing,
                                                                               tf.int32)))

    kept = tf.cond(_count(tied) <= missing, lambda: above | tied, first_ties)
    return tf.cast(kept, tf.float32), threshold

  return tf.cond(keep >= size, lambda: (tf.ones_like(values), tf.constant(0.0)), select)


@tf.function(input_signature=[_VECTOR, tf.TensorSpec([], tf.float32)], autograph=False)
def above_threshold(values, alpha):
  """(float32 mask, threshold): |values| > alpha * std(values); the largest always kept."""
  magnitude = tf.abs(tf.cast(values, tf.float64))
  threshold = tf.cast(alpha, tf.float64) * tf.math.reduce_std(tf.cast(values, tf.float64))
  above = magnitude > threshold
  largest = tf.one_hot(tf.argmax(magnitude), tf.size(values), on_value=True, off_value=False)
  keep = tf.cond(tf.reduce_any(above), lambda: above, lambda: largest)
  return tf.cast(keep, tf.float32), tf.cast(threshold, tf.float32)
