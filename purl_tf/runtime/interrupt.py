"""SIGINT/SIGTERM as a request to stop at the next safe point, not a crash.

`install()` replaces the default handlers: the first signal only sets a flag, which the
search and the fine-tune check between units of work (`check()` raises Interrupted);
everything finished is already checkpointed, so a rerun resumes from there. A second
signal stops the process at once. In a multi-worker run `share()` makes every check one
decision of all workers: a signal to any of them stops all at the same check.
"""
import logging
import signal
from typing import Callable, Optional

_log = logging.getLogger(__name__)

_received = []
_shared = []  # the function that tells whether any worker was asked to stop
_installed = []  # whether install() ran


class Interrupted(Exception):
  """Raised at a safe point after SIGINT or SIGTERM; `signal_number` says which."""

  def __init__(self, signal_number: int):
    super().__init__(f"stopped by {signal.Signals(signal_number).name}")
    self.signal_number = signal_number


def _handle(signal_number, frame):
  del frame
  if _received:  # A second signal: stop now.
    signal.signal(signal_number, signal.SIG_DFL)
    signal.raise_signal(signal_number)
  _received.append(signal_number)
  _log.info(f"{signal.Signals(signal_number).name} received: stopping after the current step "
            "(signal again to stop at once).")


def install():
  """Routes SIGINT and SIGTERM to the flag (main thread only)."""
  _received.clear()
  _installed[:] = [True]
  _route()


def _route():
  for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, _handle)


def share(any_worker: Optional[Callable[[bool], bool]]):
  """From now on, `check()` stops when `any_worker(this process was asked)` is true (a
  collective: then every worker must reach the same checks); None: this process alone.

  Call it once the strategy exists: a multi-worker strategy's runtime takes SIGTERM over
  (TensorFlow's preemption notifier), so the handlers of `install()` are routed again."""
  _shared[:] = [any_worker] if any_worker else []
  if _installed:
    _route()


def check():
  """Raises Interrupted when a stop was requested (of any worker, after `share`)."""
  asked = bool(_received)
  if _shared:
    asked = _shared[0](asked)
  if asked:
    raise Interrupted(_received[0] if _received else signal.SIGTERM)
