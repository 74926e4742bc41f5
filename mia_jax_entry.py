"""The ``mia-jax`` console script's first module, kept free of imports.

Python imports a console script's module before running any of it, and ``mia_jax``
imports JAX (about a second, longer on a busy machine). A Ctrl-C then would print a
``KeyboardInterrupt`` traceback from inside some import. :func:`entry` installs a SIGINT
handler first (exit 130 with one line: nothing has been written yet, so there is nothing
to lose), then imports the CLI, whose own handler takes over (it also releases a run
directory's lock; :func:`mia_jax.cli.entry`).
"""

import os
import signal


def _interrupted_while_starting(signum, frame) -> None:
  try:
    os.write(2, b"mia-jax: interrupted; rerun the same command to resume\n")
  finally:
    os._exit(130)


def entry() -> None:
  signal.signal(signal.SIGINT, _interrupted_while_starting)
  from mia_jax.cli import entry as cli_entry
  cli_entry()
