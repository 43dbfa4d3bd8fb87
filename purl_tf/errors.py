"""The one error type users see: a one-line message that names the fix."""


class PurlError(ValueError):
  """Bad input or an unusable state, caught before long work starts.

  `purl_tf.train` prints the message as one line and exits non-zero; the message
  must say what to change (a gin binding, a path, a flag).
  """
