"""docs/tutorial.md runs: every ```python block of a section, in order, in one namespace in
a fresh working directory; every `mia-jax ...` line of its ```bash blocks parses, and the
`mia-jax attack --model` / `mia-jax score` lines run (after the blocks above them created
their files); every run directory the section writes (`out="..."`, `--out ...`) ends up
holding report.html.

Size knob: SMALL shrinks the few size constants the snippets define (members, epochs) so
the whole file runs in CI time; nothing else in the snippets is changed. What a snippet
says it prints (`print(...)  # (...)`) is checked against what it printed.
"""

import os
import re
import shlex
import sys

import pytest
from threadpoolctl import threadpool_limits

from mia_jax import cli

TUTORIAL = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "tutorial.md")

SMALL = [  # (pattern, replacement): each must occur in the tutorial
    (r"(?m)^N = 400\b", "N = 120"),
    (r"(?m)^EPOCHS = 50\b", "EPOCHS = 1"),
]
SECTIONS = ("1. My own Flax linen model", "2. My own NNX model", "3. Only my model's outputs",
            "4. Built-in models")
RUN_COMMANDS = ("score", "attack")  # executed; `attack` only with --model (own checkpoints)


def _read(small: bool = True) -> str:
  with open(TUTORIAL) as f:
    text = f.read()
  if small:
    for pattern, repl in SMALL:
      text, n = re.subn(pattern, repl, text)
      assert n, f"size knob {pattern!r} is not in docs/tutorial.md"
  return text


def _blocks(text: str) -> dict[str, list[tuple[str, int, str]]]:
  """{section heading: [(language, first line number, source)]} in document order."""
  sections: dict[str, list] = {}
  heading, lang, start, buf = None, None, 0, []
  for i, line in enumerate(text.splitlines(), 1):
    if lang is None:
      if line.startswith("## "):
        heading = line[3:].strip()
      m = re.match(r"^```(\w+)\s*$", line)
      if m:
        lang, start, buf = m.group(1), i + 1, []
    elif line.startswith("```"):
      sections.setdefault(heading, []).append((lang, start, "\n".join(buf) + "\n"))
      lang = None
    else:
      buf.append(line)
  assert lang is None, "docs/tutorial.md: an unclosed code block"
  return sections


def _commands(src: str) -> list[list[str]]:
  """The `mia-jax` command lines of a bash block (continuations joined), without
  `mia-jax`."""
  out = []
  for line in src.replace("\\\n", " ").splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    argv = shlex.split(line, comments=True)
    assert argv[0] == "mia-jax", f"a shell line that is not mia-jax: {line!r}"
    out.append(argv[1:])
  return out


def _out_dirs(blocks) -> list[str]:
  dirs = []
  for lang, _, src in blocks:
    if lang == "python":
      dirs += re.findall(r"""\bout=["']([^"']+)["']""", src)
    elif lang == "bash":
      for argv in _commands(src):
        if argv[0] in RUN_COMMANDS and (argv[0] == "score" or "--model" in argv):
          dirs.append(argv[argv.index("--out") + 1])
  return dirs


def _printed(blocks) -> list[str]:
  """What the snippets say they print: the tuple in the comment of `print(...)  # (...)`."""
  return [m.group(1) for lang, _, src in blocks if lang == "python"
          for m in re.finditer(r"(?m)^print\(.*\)\s*#\s*(\([^)]*\))", src)]


def test_tutorial_has_its_sections_and_only_python_and_bash_blocks():
  sections = _blocks(_read(small=False))
  assert tuple(sections) == SECTIONS
  for blocks in sections.values():
    assert {lang for lang, _, _ in blocks} <= {"python", "bash"}
    assert any(lang == "python" for lang, _, _ in blocks)
  for blocks in sections.values():
    for lang, _, src in blocks:
      if lang == "bash":
        for argv in _commands(src):
          cli.build_parser().parse_args(argv)  # SystemExit on a bad option


@pytest.mark.slow
@pytest.mark.parametrize("section", SECTIONS)
def test_tutorial_section_runs_and_writes_its_reports(section, tmp_path, monkeypatch, capsys):
  blocks = _blocks(_read())[section]
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)  # restored afterwards
  files = []
  ns: dict = {"__name__": "__tutorial__"}
  # One BLAS thread: scikit-learn's solvers crawl when their threads contend on a loaded
  # machine (seconds instead of milliseconds per fit).
  limits = threadpool_limits(limits=1)
  try:
    for lang, line, src in blocks:
      where = f"docs/tutorial.md:{line}"
      if lang == "python":
        m = re.match(r"# (\w+\.py)\s*\n", src)
        if m:  # the user's module: a file beside the scripts that import it
          (tmp_path / m.group(1)).write_text(src)
          files.append(m.group(1)[:-3])
          continue
        exec(compile(src, where, "exec"), ns)  # noqa: S102 - the tutorial's own code
      else:
        for argv in _commands(src):
          cli.build_parser().parse_args(argv)
          if argv[0] in RUN_COMMANDS and (argv[0] == "score" or "--model" in argv):
            assert cli.main(argv + ["--quiet"]) == 0, f"{where}: mia-jax {shlex.join(argv)}"
  finally:
    limits.restore_original_limits()
    for name in files:
      sys.modules.pop(name, None)
  printed = capsys.readouterr().out
  for want in _printed(blocks):
    assert want in printed, f"{section}: the tutorial says a print shows {want}; it did not"
  outs = _out_dirs(blocks)
  assert outs, f"section {section!r} writes no run directory"
  for out in outs:
    assert (tmp_path / out / "report.html").is_file(), f"{section}: no {out}/report.html"
    assert (tmp_path / out / "report.md").is_file()
