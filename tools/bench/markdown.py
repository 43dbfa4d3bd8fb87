"""Sections of a results page (markdown): a Section, the machine line, the command line and
the writer that replaces one section of a file."""
import dataclasses
import os
import platform
import re
import shlex
import sys
from typing import Optional, Sequence

import tensorflow as tf

_DOC_TITLE = "# Benchmarks"
_DOC_INTRO = ("Measured with `tools/benchmark.py` on the machine named in each section. Each "
              "section is rewritten when its benchmark is run again.")


@dataclasses.dataclass
class Section:
  heading: str  # without the leading '## '
  body: str  # markdown, without the heading


def machine() -> str:
  """One line naming the machine: logical CPUs, CPU model and its widest vector
  instructions, OS, Python and TF versions, and TF_ENABLE_ONEDNN_OPTS when it is set."""
  model, flags = platform.processor() or "unknown CPU", set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = f.read().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split()}
    if names:
      model = names[0]
  except OSError:
    pass
  vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
  onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  gpus = len(tf.config.list_physical_devices("GPU"))
  return (f"{cpus} CPU cores (nproc) of {model}{f' ({vector})' if vector else ''}, {gpus} "
          f"GPU; {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}, TensorFlow {tf.__version__}"
          + (f", TF_ENABLE_ONEDNN_OPTS={onednn}" if onednn is not None else ""))


def command_line(arguments: Optional[Sequence[str]] = None) -> str:
  """The command that reproduces this run, relative to the current folder, quoted for a
  shell; `arguments` replace the process's own (sys.argv[1:])."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]))
  arguments = sys.argv[1:] if arguments is None else arguments
  return " ".join(_quoted(word) for word in [".venv/bin/python", script, *arguments])


def _quoted(word: str) -> str:
  """`word` for a POSIX shell: as is when safe, in double quotes when it holds single
  quotes only (a gin string binding reads as typed), else shlex's quoting."""
  if shlex.quote(word) == word:
    return word
  if not any(char in word for char in '"$`\\!'):
    return f'"{word}"'
  return shlex.quote(word)


def write_section(path: str, section: Section):
  """Replaces `## heading` and its body up to the next level-2 heading, or appends it."""
  text = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
  if not text.strip():
    text = f"{_DOC_TITLE}\n\n{_DOC_INTRO}\n"
  block = f"## {section.heading}\n\n{section.body.rstrip()}\n"
  pattern = re.compile(rf"^## {re.escape(section.heading)}[ \t]*\n.*?(?=^## |\Z)",
                       re.MULTILINE | re.DOTALL)
  if pattern.search(text):
    text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
  else:
    text = text.rstrip() + "\n\n" + block
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = path + ".partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(partial, path)
