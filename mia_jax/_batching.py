"""Explicit microbatching: bounded memory for any per-batch function."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mia_jax._validation import check_positive_int


def microbatched(fn: Callable, microbatch_size: int) -> Callable:
  """Wraps ``fn(*arrays[b, ...]) -> pytree of [b, ...]`` to run in chunks of
  ``microbatch_size`` examples with ``lax.map`` (one compiled body, sequential chunks),
  padding the last chunk and dropping the padding from the outputs.

  Peak memory is that of ``fn`` on ``microbatch_size`` examples, whatever N is.
  """
  check_positive_int(microbatch_size, "microbatch_size")

  def wrapped(*arrays):
    n = arrays[0].shape[0]
    mb = min(microbatch_size, n)
    pad = (-n) % mb
    chunks = tuple(
        jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((-1, mb) + a.shape[1:])
        for a in arrays)
    out = jax.lax.map(lambda c: fn(*c), chunks)
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], out)

  return wrapped
