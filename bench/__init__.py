"""Benchmark suite for mia_jax: ``python -m bench --suite all|whitebox|training|checkpoints``.

Modules:
  timing   -- warm-up + repeated timing with ``block_until_ready``; median and IQR; the
              environment record (device, jax version, date, command line); recompile guard.
  cost     -- FLOPs and bytes from XLA's cost analysis; the device's measured peaks.
  report   -- markdown tables and the bench/RESULTS.md updater.
  cases/   -- one module per benchmark case (whitebox, training, checkpoints).
  torch_ref -- the same white-box computation in PyTorch (optional; skipped without torch).

See bench/RESULTS.md for how to run it and for measured numbers.
"""

import os

# On a GPU, JAX would otherwise reserve 75% of the memory at start-up, leaving the PyTorch
# comparison too little; allocate on demand instead (set before JAX is first imported; an
# explicit setting in the environment wins).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from bench.timing import Timing, env_info, summarize, time_fn  # noqa: E402

__all__ = ["Timing", "env_info", "summarize", "time_fn"]
