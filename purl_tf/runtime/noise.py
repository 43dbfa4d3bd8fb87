"""Third-party messages about library internals that a run switches off at their source:
Python warnings and TensorFlow log records (through the `absl` and `tensorflow` loggers)
that tell the user nothing about their run. The CLI and `purl_tf.prune` both apply them."""
import logging
import re
import warnings

# Beginnings of the log messages that `quiet_sources` drops: tf-agents' policy saving, the
# replay buffer read of purl_tf.rl.agent and tf-agents' discounted returns.
LOG_NOISE = tuple(re.compile(pattern) for pattern in (
    r"`[^`]+` is not a valid tf\.function parameter name\. Sanitizing to `[^`]+`\.",
    r"From \S+: ReplayBuffer\.gather_all \(from tf_agents\.replay_buffers\.replay_buffer\) "
    r"is deprecated and will be removed in a future version\.",
    r"From \S+: calling foldr_v2 \(from tensorflow\.python\.ops\.functional_ops\) with "
    r"back_prop=False is deprecated and will be removed in a future version\.",
))


def quiet_sources():
  """Ignores the Python warnings and log records known to be noise (idempotent)."""
  warnings.filterwarnings(
      "ignore", message=r"Encoding a StructuredValue with type tfp\.distributions\.",
      category=UserWarning, module=r"tensorflow\.python\.saved_model\.nested_structure_coder")
  warnings.filterwarnings(
      "ignore", message="Statistics for quantized inputs were expected, but not specified",
      category=UserWarning, module=r"tensorflow\.lite\.python\.convert")
  for name in ("absl", "tensorflow"):
    logging.getLogger(name).addFilter(_not_log_noise)  # a filter is added once


def _not_log_noise(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return not any(pattern.match(message) for pattern in LOG_NOISE)
