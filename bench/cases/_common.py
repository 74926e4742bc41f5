"""Helpers shared by the cases: device-resident chunks, result rows, error measures."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from bench.cost import Peaks, rates
from bench.timing import Timing


def device_chunks(arrays: Sequence[np.ndarray], microbatch_size: int) -> list[tuple]:
  """Cuts host arrays (leading axis N) into device-resident chunks of ``microbatch_size``;
  the last chunk is padded by repeating its last row (as ``mia_jax._batching`` does), so
  one compiled shape serves all chunks."""
  n = int(arrays[0].shape[0])
  mb = max(1, min(microbatch_size, n))
  chunks = []
  for start in range(0, n, mb):
    chunk = [np.asarray(a[start:start + mb]) for a in arrays]
    real = chunk[0].shape[0]
    if real < mb:
      chunk = [np.concatenate([c, np.repeat(c[-1:], mb - real, axis=0)]) for c in chunk]
    chunks.append(tuple(jax.device_put(c) for c in chunk))
  return chunks


def result_row(case: str, timing: Timing, *, examples: int, flops: float | None = None,
               nbytes: float | None = None, peaks: Peaks | None = None,
               **fields: Any) -> dict[str, Any]:
  """One JSON row: identifying fields, the timing, examples/s and roofline numbers.

  ``examples_per_s`` counts the case's unit of work per second (examples for the
  white-box pass; model-examples for training and for checkpoints).
  """
  row = {"case": case, **fields, "examples": int(examples), "median_s": timing.median,
         "iqr_s": timing.iqr, "examples_per_s": examples / timing.median if timing.median > 0 else None,
         "recompiles": timing.recompiles, "timing": timing.as_dict()}
  row.update(rates(flops, nbytes, timing.median, peaks))
  return row


def max_rel_err(got: dict | np.ndarray, ref: dict | np.ndarray) -> float:
  """max |got - ref| / max |ref| over all leaves (0 if ref is all zeros and equal)."""
  g = [np.asarray(a, np.float64) for a in jax.tree.leaves(got)]
  r = [np.asarray(a, np.float64) for a in jax.tree.leaves(ref)]
  if len(g) != len(r):
    raise ValueError("max_rel_err: trees differ")
  num = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(g, r))
  den = max(float(np.max(np.abs(b))) if b.size else 0.0 for b in r)
  return num / den if den > 0 else num


def random_variables(model, seed: int, stack: int | None = None):
  """Random variables with ``model.init``'s structure, drawn with NumPy (no compilation).

  Kernels ~ N(0, 1/fan_in); biases 0; BatchNorm scale 1, bias 0, running mean 0, var 1.
  With ``stack``, every leaf gets a leading axis of that many independent draws.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  rng = np.random.default_rng(seed)
  lead = () if stack is None else (stack,)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = lead + tuple(leaf.shape)
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)

  return jax.device_put(jax.tree_util.tree_map_with_path(draw, abstract))
