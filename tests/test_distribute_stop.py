"""tf.distribute: a stop signal to one worker of a multi-worker run stops both, and both
resume from the chief's checkpoint (apart from test_distribute.py, whose other multi-worker
runs it would queue behind on one test worker)."""
import json
import os
import re
import shutil
import signal
import time

import purl_tf  # noqa: F401

from purl_tf.runtime import files

from conftest import start_from, start_workers, train_command

WAIT_SECONDS = 300  # a worker left alone in a collective may wait forever
EPISODES = 2


def _wait_for(path, text, process, seconds=300):
  """Polls the log file `path` until it holds `text`."""
  deadline = time.time() + seconds
  while time.time() < deadline and process.poll() is None:
    with open(path) as handle:
      if text in handle.read():
        return
    time.sleep(0.2)
  raise AssertionError(f"{text!r} never came: {open(path).read()[-3000:]}")


def test_a_signal_to_one_worker_stops_both_and_both_resume_from_the_chiefs_checkpoint(
    pretrained_lenet, data_dir, tmp_path):
  root = str(tmp_path / "run")
  # Every worker loads the session's dense weights from its own folder instead of
  # pre-training: what the test stops is the search.
  for folder in (root, os.path.join(root, "workers", "worker_1")):
    start_from(folder, pretrained_lenet.weights_path)
  # Two collect episodes and the greedy one after them: the stop comes in episode 2, so
  # the resumed workers still play a collect and a greedy episode from the chief's state.
  command = train_command(root, data_dir, "make_strategy.name = 'multi_worker'",
                          "train_eval.export_tflite = False",
                          f"SearchRunner.num_episodes = {EPISODES}",
                          "SearchRunner.candidates = 1", "finetune.epochs = 0.1")

  def run_workers(attempt, stop=False):
    logs = [str(tmp_path / f"worker{index}.{attempt}.log") for index in range(2)]
    workers = start_workers(command, outputs=[open(log, "w") for log in logs])
    try:
      if stop:
        _wait_for(logs[1], "[collect] episode    1", workers[1])
        workers[1].send_signal(signal.SIGTERM)  # the non-chief only
      for worker in workers:
        worker.wait(timeout=WAIT_SECONDS)
    finally:
      for worker in workers:
        worker.kill()
    return [worker.returncode for worker in workers], [open(log).read() for log in logs]

  codes, outputs = run_workers(0, stop=True)
  assert codes == [128 + signal.SIGTERM] * 2, outputs[0][-2000:] + outputs[1][-2000:]
  assert all("rerun the same command to resume" in output for output in outputs)
  # Worker 1's own checkpoints go: it must resume from the chief's.
  shutil.rmtree(os.path.join(root, "workers", "worker_1", files.SEARCH_CHECKPOINTS))
  codes, outputs = run_workers(1)
  assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  resumed = [re.search(rf"Resuming the search after episode (\d+)/{EPISODES}", output)
             for output in outputs]
  assert all(resumed), outputs[1][-2000:]
  assert resumed[0].group(1) == resumed[1].group(1)
  episodes = [json.load(open(os.path.join(folder, files.EPISODES))) for folder in
              (root, os.path.join(root, "workers", "worker_1"))]
  assert [(e["levels"], e["accuracy"]) for e in episodes[0]] == [
      (e["levels"], e["accuracy"]) for e in episodes[1]]
  assert sum(e["policy"] == "collect" for e in episodes[0]) == EPISODES
