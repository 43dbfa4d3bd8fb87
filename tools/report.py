r"""Writes ROOT_DIR/report/report.md with PNG plots of a purl_tf run.

  python tools/report.py runs/quickstart

Works on a finished run (everything) and on a search still going (the episode curves).
"""
import os
import sys

from purl_tf import console  # first: importing purl_tf selects tf-keras before TensorFlow

if __name__ == "__main__":
  console.install()  # before TensorFlow loads: its libraries print while they load

# pylint: disable=wrong-import-position
from absl import app

from purl_tf.rl import search
from purl_tf.run import export
from purl_tf.runtime import files, plots
from purl_tf.errors import PurlError


def _curves(episodes):
  series = {}
  for policy in (search.COLLECT, search.GREEDY):
    chosen = [e for e in episodes if e["policy"] == policy]
    if chosen:
      series[policy] = {"x": [e["episode"] + (policy == search.COLLECT) for e in chosen],
                        "return": [e["episode_return"] for e in chosen],
                        "accuracy": [e["accuracy"] for e in chosen],
                        "sparsity": [e["sparsity"] for e in chosen]}
  return series


def _write(path, png):
  with open(path, "wb") as handle:
    handle.write(png)
  return os.path.basename(path)


def write_report(root_dir: str) -> str:
  """Writes the report and its PNGs; returns the report's path."""
  root_dir = os.path.abspath(root_dir)
  episodes = files.read_json(os.path.join(root_dir, files.EPISODES))
  results = files.read_json(os.path.join(root_dir, files.RESULTS))
  best = files.read_json(os.path.join(root_dir, files.BEST_ALLOCATION))
  if not episodes:
    raise PurlError(f"{root_dir} holds no purl_tf search (no {files.EPISODES}): give "
                    "the root_dir of a run.")
  out = os.path.join(root_dir, files.REPORT_DIR)
  os.makedirs(out, exist_ok=True)
  target = (results or best or {}).get("target_sparsity", 0.0)
  lines = [f"# purl_tf run: {root_dir}", ""]
  if results:
    lines += [
        f"{results['model']} on {results['dataset']}, target sparsity {target}.", "",
        "| | dense | pruned (PuRL, fine-tuned) |", "| --- | --- | --- |",
        f"| test accuracy | {results['dense_test_accuracy']:.4f} | "
        f"{results['pruned_test_accuracy']:.4f} |",
        f"| parameters | {results['params_total']:,} | {results['params_remaining']:,} |",
        f"| FLOPs (prunable layers) | {results['flops_total']:,} | "
        f"{results['flops_remaining']:,} |", "",
        f"Global sparsity {results['global_sparsity']:.4f}; search "
        f"{results['search_seconds']:.0f} s over {results['search_episodes']} episodes, "
        f"fine-tune {results['finetune_seconds']:.0f} s.", ""]
    lines += [f"**Warning:** {line}" for line in results.get("warnings", [])]
    lines += [""] if results.get("warnings") else []
  else:
    lines += ["The run has not finished: only the search so far is shown.", ""]

  curves = _write(os.path.join(out, "episodes.png"),
                  plots.episode_curves(_curves(episodes), target))
  lines += ["## Search", "", f"![episodes]({curves})", "",
            "Collect episodes explore (epsilon-greedy); greedy episodes run the learned policy.",
            ""]
  comparison = (results or {}).get("comparison")
  if comparison:
    chart = _write(os.path.join(out, "allocations.png"), plots.allocations(
        {name: row["allocation"] for name, row in comparison.items()},
        "per-layer sparsity at the same global sparsity"))
    lines += ["## Allocations", "", f"![allocations]({chart})", "",
              "| method | global sparsity | test accuracy, one-shot (no retraining) |",
              "| --- | --- | --- |"]
    lines += [f"| {name} | {row['global_sparsity']:.4f} | {row['one_shot_test_accuracy']:.4f} |"
              for name, row in comparison.items()]
    lines += ["", f"After fine-tuning, PuRL's allocation reaches "
              f"{results['pruned_test_accuracy']:.4f} on test.", ""]
  elif best:
    chart = _write(os.path.join(out, "allocations.png"),
                   plots.allocations({"best": best["allocation"]}, "best allocation so far"))
    lines += ["## Best allocation so far", "", f"![allocation]({chart})", ""]
  if results and results.get("tflite"):
    lines += ["## TFLite (LiteRT, XNNPACK)", "", export.table(results["tflite"]), "",
              f"Accuracies on the first {next(iter(results['tflite'].values()))['test_examples']}"
              " test examples; latency is the median of one image.", ""]
  path = os.path.join(out, "report.md")
  with open(path, "w") as handle:
    handle.write("\n".join(lines))
  return path


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: report.py ROOT_DIR")
  try:
    print(f"Report: {write_report(argv[1])}")
  except PurlError as error:
    print(f"report: error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
