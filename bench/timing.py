"""Timing: warm up, repeat, block until ready, report the median and the IQR.

``time_fn`` calls a zero-argument closure ``warmup`` times (compilation and autotuning
happen there), then ``reps`` times, each ending in ``sync(output)`` (default
``jax.block_until_ready``), and summarizes the wall times. Every XLA compilation during
the timed repetitions is counted (a listener on JAX's backend-compile event), so a
recompile inside a timing loop shows up as ``recompiles > 0`` instead of silently
inflating the numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = [0]
_listening = [False]


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == _BACKEND_COMPILE_EVENT:
    _compiles[0] += 1


def compile_count() -> int:
  """Number of XLA backend compilations seen since the listener was installed."""
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening[0] = True
  return _compiles[0]


class Timing(NamedTuple):
  """Wall-clock summary of repeated calls, in seconds."""
  median: float
  q1: float
  q3: float
  iqr: float
  reps: int
  times: tuple[float, ...]
  recompiles: int = 0

  def as_dict(self) -> dict[str, Any]:
    d = self._asdict()
    d["times"] = list(self.times)
    return d


def summarize(times: Sequence[float], recompiles: int = 0) -> Timing:
  """Median, quartiles and IQR (numpy's linear interpolation) of ``times``."""
  t = np.asarray(times, np.float64)
  if t.ndim != 1 or t.size == 0:
    raise ValueError(f"times: expected a non-empty 1-D sequence, got shape {t.shape}")
  q1, med, q3 = np.percentile(t, [25, 50, 75])
  return Timing(float(med), float(q1), float(q3), float(q3 - q1), int(t.size),
                tuple(float(v) for v in t), int(recompiles))


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, reps: int = 5,
            sync: Callable[[Any], Any] = jax.block_until_ready, return_output: bool = False):
  """Times ``fn()`` (a closure over its inputs).

  Args:
    fn: zero-argument callable; its output is passed to ``sync``.
    warmup: untimed calls first (compilation, autotuning, allocator warm-up).
    reps: timed calls.
    sync: waits for the output to be computed (``jax.block_until_ready``; for torch,
      a function that calls ``torch.cuda.synchronize``).
    return_output: also return the last timed call's output (for a correctness check
      beside the speed, without an extra call).
  Returns:
    Timing with the median and IQR over ``reps`` calls, and the number of XLA
    compilations that happened during the timed calls (should be 0); with
    ``return_output``, ``(timing, last_output)``.
  """
  for _ in range(max(0, warmup)):
    sync(fn())
  before = compile_count()
  times = []
  out = None
  for _ in range(max(1, reps)):
    out = None  # free the previous output before the next call
    t0 = time.perf_counter()
    out = fn()
    sync(out)
    times.append(time.perf_counter() - t0)
  timing = summarize(times, compile_count() - before)
  return (timing, out) if return_output else timing


def _git_revision() -> str | None:
  """The checked-out commit, read from .git without running git (best effort)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  head = os.path.join(root, ".git", "HEAD")
  try:
    with open(head) as f:
      ref = f.read().strip()
    if not ref.startswith("ref: "):
      return ref
    name = ref[5:]
    path = os.path.join(root, ".git", name)
    if os.path.exists(path):
      with open(path) as f:
        return f.read().strip()
    packed = os.path.join(root, ".git", "packed-refs")
    with open(packed) as f:
      for line in f:
        if line.strip().endswith(" " + name):
          return line.split()[0]
  except OSError:
    return None
  return None


def env_info(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Where and how the benchmark ran: device, versions, date, exact command line."""
  dev = jax.devices()[0]
  try:
    import jaxlib
    jaxlib_version = jaxlib.__version__
  except (ImportError, AttributeError):
    jaxlib_version = None
  cmd = list(getattr(sys, "orig_argv", None) or [sys.executable] + list(argv or sys.argv))
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(cmd),
      "device_kind": dev.device_kind,
      "platform": dev.platform,
      "device_count": jax.device_count(),
      "jax": jax.__version__,
      "jaxlib": jaxlib_version,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "host": platform.node(),
      "host_cpus": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
      "git_revision": _git_revision(),
  }
