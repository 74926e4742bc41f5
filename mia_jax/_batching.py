"""Explicit microbatching: bounded memory for any per-batch function.

The examples are cut into chunks of ``microbatch_size`` on the host and one compiled
function is called per chunk (the last chunk is padded, so there is one compilation).
Calls are dispatched asynchronously; outputs stay on the device until the end.

Why a host loop and not ``lax.map`` inside one jit: on XLA:CPU a convolution's backward
pass inside a while-loop body runs several times slower than the same computation as a
top-level jitted call (measured in bench/RESULTS.md), and on accelerators the per-chunk
dispatch cost is negligible for chunks of hundreds of examples.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import check_positive_int


_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("mia_jax_progress", default=None)


@contextlib.contextmanager
def progress_scope(progress, description: str = "signals"):
  """Shows a progress bar (a ``rich.progress.Progress``) for every microbatched pass run
  inside the ``with`` block (signal extraction, Jacobian rows, white-box scores)."""
  token = _PROGRESS.set((progress, description))
  try:
    yield
  finally:
    _PROGRESS.reset(token)


def on_cpu() -> bool:
  """Whether the default backend is the CPU (loops are unrolled or run from the host)."""
  return jax.default_backend() == "cpu"


def run_microbatched(fn: Callable, arrays: Sequence[np.ndarray], microbatch_size: int, *,
                     out_axis: int = 0):
  """Applies ``fn(*chunks)`` to consecutive chunks of ``arrays`` (leading axis N).

  Args:
    fn: a (jitted) function of chunks ``[b, ...]`` returning a pytree whose leaves have the
      example axis at ``out_axis`` (1 when ``fn`` is vmapped over stacked models).
    arrays: host or device arrays with the same leading size N.
    microbatch_size: examples per call; peak memory is that of ``fn`` on this many.
    out_axis: the example axis of the outputs.
  Returns:
    The outputs for all N examples, concatenated along ``out_axis`` (device arrays).
  """
  check_positive_int(microbatch_size, "microbatch_size")
  n = int(arrays[0].shape[0])
  mb = max(1, min(microbatch_size, n))
  outs = []
  active = _PROGRESS.get()
  task = None
  if active is not None and active[0] is not None and n > mb:
    task = active[0].add_task(f"{active[1]} ({n} examples)", total=-(-n // mb))
  for start in range(0, n, mb):
    chunk = [a[start:start + mb] for a in arrays]
    real = int(chunk[0].shape[0])
    if real < mb:
      chunk = [np.concatenate([np.asarray(c), np.repeat(np.asarray(c)[-1:], mb - real, axis=0)])
               for c in chunk]
    out = fn(*chunk)
    if real < mb:
      out = jax.tree.map(lambda o: jax.lax.slice_in_dim(o, 0, real, axis=out_axis), out)
    outs.append(out)
    if task is not None:
      active[0].advance(task)
  if task is not None:
    active[0].remove_task(task)
  return jax.tree.map(lambda *o: jnp.concatenate(o, axis=out_axis), *outs)
