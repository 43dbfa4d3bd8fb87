"""A run stopped at random moments (SIGKILL, SIGTERM) and rerun ends exactly as an
uninterrupted one: the same episodes, best allocation, model and exports."""
import glob
import json
import os
import random
import signal
import subprocess
import time

import purl_tf  # noqa: F401

from purl_tf.rl import search
from purl_tf.runtime import files

from conftest import REPO, start_from, train_command


def outcome(root):
  """What a run decided: every episode's choices and scores, the best, the final model."""
  results = json.load(open(os.path.join(root, files.RESULTS)))
  episodes = json.load(open(os.path.join(root, files.EPISODES)))
  return {
      "episodes": [(e["episode"], e["policy"], e["levels"], e["rewards"], e["accuracy"])
                   for e in episodes],
      "best": json.load(open(os.path.join(root, files.BEST_ALLOCATION))),
      "results": {k: results[k] for k in ("pruned_test_accuracy", "dense_test_accuracy",
                                          "global_sparsity", "allocation", "comparison")},
      "tflite": {k: v["bytes"] for k, v in results["tflite"].items()},
  }


# Where the run is stopped: a random moment after each marker line, by SIGTERM, then
# SIGKILL. After "[collect] episode 1" the second episode runs or is being saved (SIGTERM:
# the search checkpoints the finished episodes and stops at the next step); after
# "[finetune]" fine-tuning or the export runs (SIGKILL: nothing is saved on the way out).
# (A SIGKILL in the search before its first checkpoint, SearchRunner.checkpoint_seconds,
# leaves no search state: its rerun starts the search over. The two stops here check the
# resumes from what a stopped run saved.)
STOPS = (("[collect] episode    1", signal.SIGTERM), ("[finetune]", signal.SIGKILL))


def test_runs_stopped_at_random_moments_end_as_an_uninterrupted_run(finished_run, data_dir,
                                                                     tmp_path):
  reference, _ = finished_run  # the same command, never interrupted
  root = str(tmp_path / "stopped")
  start_from(root, os.path.join(reference, files.DENSE_WEIGHTS))  # its pre-trained network
  rng = random.Random(7)
  resumed_after = []
  previous_stop = None
  for marker, stop in STOPS + ((None, None),):
    saved = files.read_json(os.path.join(root, files.EPISODES), [])
    collected = sum(e["policy"] == search.COLLECT for e in saved)
    process = subprocess.Popen(train_command(root, data_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []
    for line in process.stdout:
      lines.append(line)
      if line.startswith("Resuming the search after episode"):
        resumed_after.append((collected, int(line.split("episode ")[1].split("/")[0])))
      if marker and line.startswith(marker):
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(stop)
        break
    output = "".join(lines) + process.communicate(timeout=600)[0]
    if previous_stop == signal.SIGTERM:  # it checkpointed the episodes it had finished
      assert "Resuming the search after episode" in output, output[-3000:]
    previous_stop = stop
    if stop == signal.SIGTERM:  # stops at the next step boundary and says how to go on
      assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
      assert "rerun the same command to resume" in output
    elif stop == signal.SIGKILL:
      assert process.returncode == -signal.SIGKILL, output[-3000:]
    else:
      assert process.returncode == 0, output[-3000:]
  # Each restart went on after the last episode saved before the stop (or the one after
  # it, when a kill fell between the checkpoint and episodes.json).
  assert resumed_after and all(n in (saved, saved + 1) for saved, n in resumed_after)
  assert outcome(root) == outcome(reference)
  assert not glob.glob(os.path.join(root, "**", "*.partial*"), recursive=True)
