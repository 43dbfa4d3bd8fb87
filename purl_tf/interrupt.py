"""SIGINT/SIGTERM as a request to stop at the next safe point, not a crash.

`install()` replaces the default handlers: the first signal only sets a flag, which the
search and the fine-tune check between units of work (`check()` raises Interrupted);
everything finished is already checkpointed, so a rerun resumes from there. A second
signal stops the process at once.
"""
import signal

_received = []


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
  print(f"\n{signal.Signals(signal_number).name} received: stopping after the current step "
        "(signal again to stop at once).", flush=True)


def install():
  """Routes SIGINT and SIGTERM to the flag (main thread only)."""
  _received.clear()
  for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, _handle)


def check():
  """Raises Interrupted when a stop was requested."""
  if _received:
    raise Interrupted(_received[0])
