"""The console of a run: purl_tf's lines and real warnings, with every byte also in a log.

The library logs through the `purl_tf` logger and prints nothing; `show_logs()` puts its
records on the console (INFO as the bare line, WARNING and above after their level).

`install()`, the first thing `python -m purl_tf.train` does (before TensorFlow loads),
silences known third-party noise in two places:

* at its source: Python warnings and TensorFlow log records that only tell the user
  about library internals are ignored (`purl_tf.runtime.noise`);
* on the file descriptors, for what no setting reaches: TensorFlow's shared libraries
  print through Abseil while they load, before `absl::InitializeLog()`, so
  TF_CPP_MIN_LOG_LEVEL does not apply to those lines; its CUDA probe logs an error, which
  only a level that hides every C++ error would stop; gym prints its notice on import;
  the TFLite converter and LiteRT print from C++. fd 1 and fd 2 become pipes; a thread
  per pipe forwards what arrives to the terminal, less the `NOISE` lines on fd 2, and
  appends all of it to the log file that `log_to` names (held in memory till then), a
  whole line at a time, so that lines of fd 1 and fd 2 never mix within one line.
"""
import atexit
import logging
import os
import re
import select
import sys
import threading

from purl_tf.runtime import noise

# A partial line (a progress bar, a prompt) is shown once nothing followed it for this long.
IDLE_SECONDS = 0.2
# Time to forward what is still in the pipes at exit; a child process that outlives the
# run and holds a copy of fd 1 or 2 would otherwise keep the pipe open forever.
DRAIN_SECONDS = 5.0


def _absl(level: str, source: str, message: str) -> str:
  """A C++ log line of TensorFlow: level, date, time, thread, file:line] message."""
  return rf"{level}\d{{4}} [\d:.]+ +\d+ {source}\.cc:\d+\] {message}"


# Whole lines (without their end) that stderr does not show; each is one known message.
NOISE = tuple(re.compile(pattern.encode()) for pattern in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _absl("I", "port", r"oneDNN custom operations are on\. You may see slightly different "
          r"numerical results .*TF_ENABLE_ONEDNN_OPTS=0`\."),
    _absl("I", "cudart_stub",
          r"Could not find cuda drivers on your machine, GPU will not be used\."),
    _absl("E", "cuda_platform", r"failed call to cuInit: INTERNAL: CUDA error: Failed call "
          r"to cuInit: UNKNOWN ERROR \(303\)"),  # 303: no CUDA driver library at all
    _absl("E", "node_def_util", r"NodeDef mentions attribute use_unbounded_threadpool which "
          r"is not in the op definition: .* Unknown attributes will be ignored\. .*"),
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, "
    r"output_inference_type: INT8",
    r"Gym has been unmaintained since 2022 and does not support NumPy 2\.0 amongst other "
    r"critical functionality\.",
    r"Please upgrade to Gymnasium, the maintained drop-in replacement of Gym, or contact the "
    r"authors of your software and request that they upgrade\.",
    r"See the migration guide at https://gymnasium\.farama\.org/introduction/"
    r"migration_guide/ for additional information\.",
))

class NoiseFilter:
  """Passes a byte stream on line by line (a line ends at \\n or \\r), less noise lines.

  A line is held back until it ends; `flush` lets an unfinished one through.
  """

  def __init__(self, noise=NOISE):
    self._noise = noise
    self._partial = b""

  def feed(self, data: bytes) -> bytes:
    """The lines that `data` completes, less the noise ones."""
    lines = (self._partial + data).splitlines(keepends=True)
    self._partial = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
    return b"".join(line for line in lines if not self.is_noise(line))

  def flush(self) -> bytes:
    """The unfinished line, unless it is noise waiting for its end."""
    if self.is_noise(self._partial):
      return b""
    partial, self._partial = self._partial, b""
    return partial

  @property
  def holding(self) -> bool:
    """Whether an unfinished line is held back."""
    return bool(self._partial)

  def is_noise(self, line: bytes) -> bool:
    text = line.rstrip(b"\r\n")
    return any(pattern.fullmatch(text) for pattern in self._noise)


class WholeLines:
  """Passes a byte stream on up to its last \\n; `flush` lets the rest through.

  What the log gets: one line of fd 1 or fd 2 (a progress bar's \\r updates included)
  stays whole even when the other descriptor writes while it is being printed.
  """

  def __init__(self):
    self._partial = b""

  def feed(self, data: bytes) -> bytes:
    data = self._partial + data
    end = data.rfind(b"\n") + 1
    self._partial = data[end:]
    return data[:end]

  def flush(self) -> bytes:
    partial, self._partial = self._partial, b""
    return partial

  @property
  def holding(self) -> bool:
    """Whether an unfinished line is held back."""
    return bool(self._partial)


class Log:
  """Appends to a file once `attach` names it; keeps what comes before in memory.

  The file is opened for each write, and what cannot be written while its folder does
  not exist (a run folder not made yet, or being remade by --overwrite) is kept.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._held = []
    self._path = None
    self._unfinished = None  # the source whose last write left its line open

  def write(self, data: bytes, source: int = 0):
    """Appends `data` of descriptor `source`. A line another source left open (a progress
    bar between updates) is ended first, so the two never share a line."""
    if not data:
      return
    with self._lock:
      if self._unfinished not in (None, source):
        self._held.append(b"\n")
      self._unfinished = None if data.endswith((b"\n", b"\r")) else source
      self._held.append(data)
      self._write_held()

  def attach(self, path: str):
    with self._lock:
      self._path = path
      self._write_held()

  def _write_held(self):
    if not self._path or not self._held:
      return
    try:
      with open(self._path, "ab") as handle:
        handle.write(b"".join(self._held))
      self._held.clear()
    except FileNotFoundError:
      pass


class Pump:
  """Puts a pipe on file descriptor `fd`; a thread moves what is written there to the
  terminal fd had (through `NoiseFilter(noise)`) and all of it to `log`."""

  def __init__(self, fd: int, log: Log, noise=()):
    self._fd, self._log, self._filter = fd, log, NoiseFilter(noise)
    self._log_lines = WholeLines()
    self._terminal = os.fdopen(os.dup(fd), "wb")
    self._read, write = os.pipe()
    os.dup2(write, fd)
    os.close(write)
    self._thread = threading.Thread(target=self._run, name=f"console-fd{fd}", daemon=True)
    self._thread.start()

  def _run(self):
    while True:
      holding = self._filter.holding or self._log_lines.holding
      if not select.select([self._read], [], [], IDLE_SECONDS if holding else None)[0]:
        self._flush()
        continue
      data = os.read(self._read, 1 << 16)
      if not data:  # every writer closed fd: `stop` ran
        break
      self._log.write(self._log_lines.feed(data), self._fd)
      self._show(self._filter.feed(data))
    self._flush()
    os.close(self._read)

  def _flush(self):
    """Lets an unfinished line through, to the log and (unless noise) to the terminal."""
    self._log.write(self._log_lines.flush(), self._fd)
    self._show(self._filter.flush())

  def _show(self, data: bytes):
    if data:
      try:
        self._terminal.write(data)
        self._terminal.flush()
      except OSError:  # the terminal went away (a closed pipe): the log still gets all
        pass

  def stop(self):
    """Gives fd its terminal back and forwards what the pipe still holds."""
    os.dup2(self._terminal.fileno(), self._fd)
    self._thread.join(DRAIN_SECONDS)


_LOG = Log()


def install():
  """Silences the known noise at its source and routes fd 1 and 2 through pumps."""
  noise.quiet_sources()
  pumps = [Pump(1, _LOG), Pump(2, _LOG, NOISE)]

  def stop():
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    for pump in pumps:
      pump.stop()

  atexit.register(stop)


def log_to(path: str):
  """Appends everything printed so far, and from now on, to `path`."""
  _LOG.attach(path)


class _Lines(logging.Formatter):
  """A record as the console shows it: the message, after its level from WARNING up."""

  def format(self, record: logging.LogRecord) -> str:
    message = super().format(record)
    return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def show_logs(stream=None, level: int = logging.INFO):
  """Shows the `purl_tf` logger's records from `level` up on `stream` (sys.stdout)."""
  handler = logging.StreamHandler(stream or sys.stdout)
  handler.setFormatter(_Lines())
  logger = logging.getLogger("purl_tf")
  logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # absl's handler on the root logger would show each line twice
