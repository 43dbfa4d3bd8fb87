"""The console of `python -m purl_tf.train`: third-party noise off it, everything in run.log."""
import os
import re
import signal
import subprocess
import sys

import pytest

from purl_tf import console, train

from conftest import REPO

# Lines seen on stderr in runs on a 2-core machine without a GPU (TensorFlow 2.21).
NOISE = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796214442.944012     467 port.cc:153] oneDNN custom operations are on. You may \
see slightly different numerical results due to floating-point round-off errors from \
different computation orders. To turn them off, set the environment variable \
`TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796214442.944460     467 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
Gym has been unmaintained since 2022 and does not support NumPy 2.0 amongst other critical \
functionality.
Please upgrade to Gymnasium, the maintained drop-in replacement of Gym, or contact the \
authors of your software and request that they upgrade.
See the migration guide at https://gymnasium.farama.org/introduction/migration_guide/ for \
additional information.
E0000 00:00:1796214456.829025     467 cuda_platform.cc:52] failed call to cuInit: INTERNAL: \
CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796214971.753272   14871 node_def_util.cc:682] NodeDef mentions attribute \
use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; \
signature=input_dataset:variant, other_arguments: -> handle:variant; attr=f:func> This may \
be expected if your graph generating binary is newer  than this binary. Unknown attributes \
will be ignored. NodeDef: {{node ParallelMapDatasetV2/_16}}
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8
"""

# What must get through: purl_tf's lines, errors, a traceback, and C++ or log lines that
# only resemble the noise.
REAL = """\
Search over 4 prunable layers, 13 levels (sparsity), target sparsity 0.9.
WARNING: the chosen allocation reaches 0.850, below the target 0.9; fine-tuning it.
purl_tf: error: gin: No configurable matching 'SearchRuner'.
Traceback (most recent call last):
  File "/work/main/purl_tf/train.py", line 80, in main
RuntimeError: INFO: Created TensorFlow Lite XNNPACK delegate for CPU. Then it failed.
E0000 00:00:1796214456.829025     467 cuda_platform.cc:52] failed call to cuInit: \
CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected
E0000 00:00:1796214971.753272   14871 node_def_util.cc:682] NodeDef mentions attribute \
use_bounded_pool which is not in the op definition: Op<name=MapDataset>
W0000 00:00:1796214442.944460     467 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.

"""

# Markers of third-party noise that no line of a run's console may hold.
NOISE_MARKER = re.compile(r"\bGym\b|cuInit|cuda|absl::InitializeLog|oneDNN|AutoGraph|"
                          r"not a valid tf\.function parameter name|StructuredValue|XNNPACK",
                          re.IGNORECASE)


def interleaved():
  """NOISE and REAL lines in turns, as one byte stream."""
  noise, real = NOISE.splitlines(keepends=True), REAL.splitlines(keepends=True)
  lines = [line for pair in zip(noise, real) for line in pair]
  return "".join(lines + noise[len(real):] + real[len(noise):]).encode()


def test_the_filter_drops_each_noise_line_and_passes_every_other_line():
  stream, noise_filter = interleaved(), console.NoiseFilter()
  shown = b"".join(noise_filter.feed(stream[start:start + 7])
                   for start in range(0, len(stream), 7))
  assert shown + noise_filter.flush() == REAL.encode()


def test_an_unfinished_line_is_shown_on_flush_unless_it_is_noise():
  noise_filter = console.NoiseFilter()
  assert noise_filter.feed(b"\rGenerating splits: 1/2") == b"\r"
  assert noise_filter.holding and noise_filter.flush() == b"Generating splits: 1/2"
  assert noise_filter.feed(b"\rGenerating splits: 2/2\r") == b"\rGenerating splits: 2/2\r"
  gym = NOISE.splitlines()[3].encode()
  assert noise_filter.feed(gym) == b"" and noise_filter.flush() == b""
  assert noise_filter.feed(b"\n") == b"" and not noise_filter.holding


TRACEBACK = (r'Traceback \(most recent call last\):\n  File "<string>", line \d+, in <module>\n'
             r"RuntimeError: boom\n$")


def run_installed(body: str, log: str) -> subprocess.Popen:
  """A Python process that installs the console, logs to `log` after its first lines, then
  runs `body` (with os, sys, time, interrupt, NOISE and REAL in scope). Its output is
  bytes: text mode would turn a progress bar's \\r into \\n."""
  script = "\n".join([
      "import os, sys, time",
      "from purl_tf import console",
      "from purl_tf.runtime import interrupt",
      "console.install()",
      "console.show_logs()  # as purl_tf.train.main does",
      f"NOISE, REAL = {NOISE!r}, {REAL!r}",
      "os.write(2, NOISE.encode())",
      "print('before the log', flush=True)",
      f"console.log_to({log!r})",
      body])
  return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=REPO)


def test_a_crash_shows_its_traceback_keeps_its_exit_code_and_everything_is_logged(tmp_path):
  log = str(tmp_path / "run.log")
  process = run_installed(
      "print(REAL, end='', file=sys.stderr, flush=True)\n"
      "sys.stderr.write('\\rprogress 1/2'); sys.stderr.flush(); time.sleep(0.5)\n"
      "print(NOISE, end='', file=sys.stderr)\n"
      "raise RuntimeError('boom')", log)
  out, err = process.communicate(timeout=60)
  assert process.returncode == 1
  assert out == b"before the log\n"
  assert re.fullmatch(re.escape(REAL + "\rprogress 1/2") + TRACEBACK, err.decode()), err
  logged = open(log, newline="").read()
  assert logged.count(NOISE) == 2 and REAL in logged and "before the log\n" in logged
  assert "\rprogress 1/2" in logged and re.search(TRACEBACK, logged)


def test_the_log_keeps_each_line_whole_when_stdout_and_stderr_interleave(tmp_path):
  """As unbuffered Python prints (PYTHONUNBUFFERED): a line's text and its end are two
  writes, and stderr can write between them."""
  log = str(tmp_path / "run.log")
  process = run_installed(
      "os.write(1, b'first half'); time.sleep(0.05)\n"
      "os.write(2, b'a warning\\n'); time.sleep(0.05)\n"
      "os.write(1, b', second half\\n'); time.sleep(0.05)", log)
  out, err = process.communicate(timeout=60)
  assert process.returncode == 0 and out.endswith(b"first half, second half\n"), (out, err)
  logged = open(log).read()
  assert "first half, second half\n" in logged and "\na warning\n" in logged, logged


def test_a_line_left_open_by_one_descriptor_is_ended_before_the_other_writes(tmp_path):
  """A progress bar waits between updates with its line open; a line of the other
  descriptor then starts a line of its own in the log, as on a terminal."""
  log, path = console.Log(), str(tmp_path / "run.log")
  log.attach(path)
  log.write(b"\rGenerating: 1 examples", 2)
  log.write(b"prepared.\n", 1)
  log.write(b"\rGenerating: 2 examples", 2)
  log.write(b", done\n", 2)  # the same descriptor continues its own line
  assert open(path, "rb").read() == (b"\rGenerating: 1 examples\nprepared.\n"
                                     b"\rGenerating: 2 examples, done\n")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_keeps_its_message_and_exit_code(tmp_path, number):
  """As purl_tf.train.main answers Ctrl-C and SIGTERM: a line on stderr, 128 + signal."""
  log = str(tmp_path / "run.log")
  process = run_installed(
      "interrupt.install()\n"
      "print('ready', flush=True)\n"
      "try:\n"
      "  while True:\n"
      "    interrupt.check(); time.sleep(0.01)\n"
      "except interrupt.Interrupted as stop:\n"
      "  print(f'purl_tf: {stop}', file=sys.stderr)\n"
      "  sys.exit(128 + stop.signal_number)", log)
  assert process.stdout.readline() == b"before the log\n"
  assert process.stdout.readline() == b"ready\n"
  process.send_signal(number)
  out, err = process.communicate(timeout=60)
  name = signal.Signals(number).name
  assert process.returncode == 128 + number
  assert err.decode() == f"purl_tf: stopped by {name}\n" and f"{name} received" in out.decode()
  # Both lines reach the log whole; their order there is the pumps' (stdout and stderr are
  # two pipes), not the order they were written in.
  lines = open(log).read().splitlines()
  assert f"purl_tf: stopped by {name}" in lines, lines[-3:]
  assert any(line.startswith(f"{name} received") for line in lines), lines[-3:]


def test_a_bad_binding_prints_its_error_line_and_nothing_else(tmp_path):
  run = subprocess.run([sys.executable, "-m", "purl_tf.train", f"--root_dir={tmp_path}",
                        "--gin_bindings=SearchRunner.num_episode = 3"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert run.returncode == 1, run.stderr
  assert len(run.stderr.splitlines()) == 1, run.stderr
  assert run.stderr.startswith("purl_tf: error: gin: ") and "'num_episode'" in run.stderr


def test_a_run_shows_no_third_party_noise_and_logs_everything(finished_process):
  root, run = finished_process
  shown = run.stdout.splitlines() + run.stderr.splitlines()
  assert [line for line in shown if NOISE_MARKER.search(line)] == []
  assert "Done in" in run.stdout
  with open(os.path.join(root, train.LOG)) as handle:
    logged = handle.read()
  assert set(shown) <= set(logged.splitlines())
  # The noise is kept in the log: the lines every run without a GPU prints first (oneDNN's
  # line is left out: TensorFlow prints it only when oneDNN is on, which depends on the
  # processor and on TF_ENABLE_ONEDNN_OPTS).
  for line in NOISE.splitlines()[:4]:
    if "oneDNN" not in line:
      assert line.split("] ")[-1] in logged
