"""TensorFlow's oneDNN kernels on and off: train and inference steps of the mnist_resnet20
network, each setting in its own process (TF_ENABLE_ONEDNN_OPTS is read when TensorFlow
loads), the two run in turns so that they share the machine's state."""
import datetime
import json
import os
import statistics
import subprocess
import sys

from absl import flags

from .common import Section, command_line, fmt_ms, machine, spread

FLAGS = flags.FLAGS
SETTINGS = ("0", "1")  # TF_ENABLE_ONEDNN_OPTS
BATCH, SHAPE, STEPS = 128, (28, 28, 1), 30  # the mnist_resnet20 train batch and images
CHILD = """
import json, time
import purl_tf
import numpy as np, tensorflow as tf
from tensorflow.python.util import _pywrap_util_port as port
from purl_tf import models
model = models.cifar_resnet({shape}, 10, depth=20, width=8)
model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x = rng.random(({batch},) + {shape}, dtype=np.float32)
y = rng.integers(0, 10, {batch})
data = tf.data.Dataset.from_tensors((x, y)).repeat()
model.fit(data, steps_per_epoch=5, epochs=1, verbose=0)
model.predict_on_batch(x)
start = time.perf_counter()
model.fit(data, steps_per_epoch={steps}, epochs=1, verbose=0)
train = (time.perf_counter() - start) / {steps}
start = time.perf_counter()
for _ in range({steps}):
  model.predict_on_batch(x)
predict = (time.perf_counter() - start) / {steps}
print("RESULT " + json.dumps({{"onednn": bool(port.IsMklEnabled()), "train": train,
                               "predict": predict}}))
""".format(shape=SHAPE, batch=BATCH, steps=STEPS)


def _measure(setting: str) -> dict:
  """One child process's seconds per train step and per inference batch."""
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
  run = subprocess.run([sys.executable, "-c", CHILD], env=env, text=True,
                       capture_output=True, check=True)
  line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def onednn_speed() -> Section:
  """Seconds per train step and inference batch with oneDNN off and on (`--repeats`
  processes of each, alternating)."""
  runs = {setting: [] for setting in SETTINGS}
  for repeat in range(FLAGS.repeats):
    for setting in SETTINGS:
      runs[setting].append(_measure(setting))
      print(f"[{repeat + 1}/{FLAGS.repeats}] TF_ENABLE_ONEDNN_OPTS={setting}: "
            f"train step {fmt_ms(runs[setting][-1]['train'])}", flush=True)
  medians = {s: {k: statistics.median(r[k] for r in runs[s]) for k in ("train", "predict")}
             for s in SETTINGS}
  rows = []
  for key, what in (("train", "train step (SGD, batch 128)"),
                    ("predict", "inference batch of 128")):
    for setting in SETTINGS:
      times = [r[key] for r in runs[setting]]
      enabled = "on" if all(r["onednn"] for r in runs[setting]) else "off"
      rows.append(f"| {what} | {setting} (oneDNN {enabled}) | {fmt_ms(medians[setting][key])} "
                  f"| {spread(times)} |")
    rows.append(f"| {what}: off / on | | {medians['0'][key] / medians['1'][key]:.2f} | |")
  body = "\n".join([
      f"`cifar_resnet(depth=20, width=8)` on {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} inputs (the "
      f"mnist_resnet20 network), random data, {STEPS} steps per process after warm-up; "
      f"medians of {FLAGS.repeats} processes per setting, run in turns. `import purl_tf` "
      "sets TF_ENABLE_ONEDNN_OPTS=1 on x86-64 unless it is set.", "",
      "| measurement | TF_ENABLE_ONEDNN_OPTS | median | range |",
      "| --- | --- | --- | --- |", *rows, "",
      f"- Command: `{command_line()}`",
      f"- Machine: {machine()}",
      f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
  ])
  return Section(heading="oneDNN on an AVX2 processor", body=body)
