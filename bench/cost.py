"""FLOPs and bytes from XLA's own cost analysis, and the device's measured peaks.

``jax.jit(f).lower(*args).compile().cost_analysis()`` returns a dict in recent JAX and a
list with one dict per computation in older releases; :func:`cost_numbers` accepts both.
The peaks are measured in the same run (a large fp32 matmul for FLOP/s, a large
elementwise device copy for bytes/s), so roofline percentages compare like with like.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from bench.timing import Timing, time_fn

# --precision name -> jax.default_matmul_precision value.
PRECISIONS = {"fp32": "float32", "tf32": "tensorfloat32", "bf16": "bfloat16"}


def precision_context(precision: str):
  """Context in which matmuls and convolutions run at ``precision`` (fp32|tf32|bf16).

  Precision is part of JAX's compilation cache key, so a function must be compiled and
  timed inside the same context.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {precision!r}")
  return jax.default_matmul_precision(PRECISIONS[precision])


class Cost(NamedTuple):
  """XLA's estimate for one call of a compiled function."""
  flops: float | None
  bytes_accessed: float | None
  memory: dict[str, int] | None  # compiled memory analysis (argument/output/temp bytes)
  flops_source: str = "compiled"  # "compiled" or "hlo" (the unoptimized module)
  flops_hlo: float | None = None  # the unoptimized module's count, for reference


def _merge(ca: Any) -> dict[str, float]:
  if ca is None:
    return {}
  if isinstance(ca, Mapping):
    return {str(k): float(v) for k, v in ca.items() if isinstance(v, (int, float))}
  if isinstance(ca, (list, tuple)):
    out: dict[str, float] = {}
    for part in ca:
      for k, v in _merge(part).items():
        out[k] = out.get(k, 0.0) + v
    return out
  return {}


def cost_numbers(ca: Any) -> tuple[float | None, float | None]:
  """(flops, bytes accessed) from a cost_analysis() result (dict, list of dicts, None)."""
  d = _merge(ca)
  flops = d.get("flops")
  nbytes = d.get("bytes accessed")
  return (flops if flops and flops > 0 else None, nbytes if nbytes and nbytes > 0 else None)


def _memory(compiled) -> dict[str, int] | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- not implemented on every backend/version
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def compiled_cost(fn: Callable, *args, **kwargs) -> Cost:
  """XLA's FLOPs, bytes accessed and memory for one call ``fn(*args, **kwargs)``.

  ``fn`` is a ``jax.jit``-wrapped function (wrapped here otherwise). The executable is
  shared with the jit call path (no second compilation in recent JAX); call this outside
  timing all the same. FLOPs come from the compiled module; the unoptimized module's
  count is used instead when the compiled one is missing or under half of it (a backend
  whose analysis skips library calls, e.g. cuDNN convolutions, would undercount).
  Bytes accessed are the compiled (post-fusion) module's.
  """
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  lowered = jitted.lower(*args, **kwargs)
  compiled = lowered.compile()
  flops, nbytes = cost_numbers(compiled.cost_analysis())
  try:
    flops_hlo, bytes_hlo = cost_numbers(lowered.cost_analysis())
  except Exception:  # noqa: BLE001 -- optional API
    flops_hlo, bytes_hlo = None, None
  source = "compiled"
  if flops_hlo and (flops is None or flops < 0.5 * flops_hlo):
    flops, source = flops_hlo, "hlo"
  if nbytes is None:
    nbytes = bytes_hlo
  return Cost(flops, nbytes, _memory(compiled), source, flops_hlo)


class Peaks(NamedTuple):
  """Measured device peaks for one precision setting."""
  precision: str
  flops_per_s: float
  bytes_per_s: float
  matmul_n: int
  copy_bytes: int
  matmul: Timing
  copy: Timing

  def as_dict(self) -> dict[str, Any]:
    d = self._asdict()
    d["matmul"] = self.matmul.as_dict()
    d["copy"] = self.copy.as_dict()
    return d


def measure_peaks(precision: str = "fp32", *, matmul_n: int = 8192,
                  copy_bytes: int = 1 << 30, warmup: int = 2, reps: int = 5) -> Peaks:
  """Achievable FLOP/s (n x n fp32 matmul) and bytes/s (elementwise copy) on device 0.

  The matmul runs under ``precision`` (fp32 inputs, so bf16/tf32 measure the reduced-
  precision matmul unit the case uses). FLOPs are 2 n^3 (XLA's count if available);
  bytes are XLA's "bytes accessed" for ``x * 1.0001`` (read + write), else 2 x size.
  The median time is used.
  """
  key = jax.random.key(0)
  a = jax.random.normal(key, (matmul_n, matmul_n), jnp.float32)
  b = jax.random.normal(jax.random.fold_in(key, 1), (matmul_n, matmul_n), jnp.float32)
  n_el = max(1, copy_bytes // 4)
  x = jnp.ones((n_el,), jnp.float32)
  with precision_context(precision):
    mm = jax.jit(lambda p, q: p @ q)
    mm_cost = compiled_cost(mm, a, b)
    t_mm = time_fn(lambda: mm(a, b), warmup=warmup, reps=reps)
  cp = jax.jit(lambda v: v * jnp.float32(1.0001))
  cp_cost = compiled_cost(cp, x)
  t_cp = time_fn(lambda: cp(x), warmup=warmup, reps=reps)
  flops = mm_cost.flops or 2.0 * matmul_n ** 3
  nbytes = cp_cost.bytes_accessed or 2.0 * 4 * n_el
  return Peaks(precision, flops / t_mm.median, nbytes / t_cp.median, matmul_n, 4 * n_el,
               t_mm, t_cp)


def rates(flops: float | None, nbytes: float | None, seconds: float,
          peaks: Peaks | None) -> dict[str, float | None]:
  """Achieved FLOP/s and bytes/s and their percentages of the measured peaks."""
  out: dict[str, float | None] = {"flops": flops, "bytes_accessed": nbytes,
                                  "flops_per_s": None, "bytes_per_s": None,
                                  "pct_peak_flops": None, "pct_peak_bytes": None}
  if seconds <= 0:
    return out
  if flops:
    out["flops_per_s"] = flops / seconds
    if peaks:
      out["pct_peak_flops"] = 100.0 * out["flops_per_s"] / peaks.flops_per_s
  if nbytes:
    out["bytes_per_s"] = nbytes / seconds
    if peaks:
      out["pct_peak_bytes"] = 100.0 * out["bytes_per_s"] / peaks.bytes_per_s
  return out


def device_memory() -> dict[str, int] | None:
  """``memory_stats()`` of device 0 (bytes in use, peak), or None (e.g. on the CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  if not stats:
    return None
  keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
  return {k: int(stats[k]) for k in keys if k in stats}

