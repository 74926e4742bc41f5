"""Named random streams: every seeded stage of a run draws from its own stream.

A run has one seed. Each stage that draws random numbers (the data split, the target's
training, the reference models and their keep matrix, the shadow models, an attack's
proxies, ...) gets the seed of a stream *named* after it::

    stage_seed(seed, "reference")  # -> int in [0, 2**32)

so adding or reordering stages never shifts another's draws, and two runs with different
seeds never share a stage's draws (with offsets, seed 0's shadow models, ``seed + 2``,
were seed 1's ... ``seed + 1`` reference models' twins, and so on).

The named scheme hashes ``(seed, crc32(name))`` with NumPy's ``SeedSequence`` (the host
analogue of ``jax.random.fold_in(key(seed), crc32(name))``) into one 32-bit integer, which
every seeded function of the library accepts (``train_models`` derives model ``m``'s seed
``(s, m)`` from it, JAX keys are ``jax.random.key(s)``).

Runs record their scheme (``seed_streams`` in ``config.json``). ``"offsets"`` is the
scheme of runs made before named streams: each stage's seed was a fixed offset of the
run's seed (``seed + 1`` for reference models, ``(seed, 7919)`` for the white-box
shadow target, ...). It is kept, as one table here, so that such runs resume with the
seeds they started with and published results reproduce exactly; new runs use
``"named"``.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from mia_jax._validation import MiaInputError

SCHEMES = ("named", "offsets")
DEFAULT_SCHEME = "named"
LEGACY_SCHEME = "offsets"
"""The scheme of a run whose ``config.json`` does not record one (made before named
streams existed)."""

_OFFSETS: dict[str, Callable[[int], int | tuple[int, int]]] = {
    # the audit and `mia-jax train`
    "split": lambda s: s,
    "target": lambda s: s,
    "reference": lambda s: s + 1,
    "reference-keep": lambda s: s + 17,
    "shadow": lambda s: s + 2,
    "shadow-keep": lambda s: s + 23,
    "shadow-data": lambda s: s + 29,
    "shokri-attack": lambda s: s,
    "bootstrap": lambda s: s,
    # the white-box attacks (Stolen Memories, Nasr et al.), from the seed they are given
    "whitebox-partition": lambda s: s,
    "whitebox-shadow": lambda s: (s, 7919),
    "target-proxies": lambda s: s + 1,
    "shadow-proxies": lambda s: s + 2,
    "meta-attack": lambda s: s,
    "nasr-network": lambda s: s,
}
STAGES = tuple(_OFFSETS)
"""The stage names the library draws from (each has its offset in the legacy scheme)."""


def stream(seed: int, name: str) -> tuple[int, int]:
  """The seed of a named random stream as a tuple ``(seed, crc32(name))``, which NumPy
  and :func:`mia_jax.train.jax_key` accept (the canary draws use it directly)."""
  return int(seed), zlib.crc32(name.encode())


def check_scheme(scheme: str) -> str:
  if scheme not in SCHEMES:
    raise MiaInputError(f"seed_streams: expected one of {SCHEMES}, got {scheme!r}")
  return scheme


def stage_seed(seed: int, name: str, scheme: str = DEFAULT_SCHEME) -> int | tuple[int, int]:
  """The seed of stage ``name`` of a run with seed ``seed``.

  Args:
    seed: the run's seed, an int in [0, 2**32).
    name: one of :data:`STAGES` (a typo would silently open a fresh stream, so unknown
      names are refused).
    scheme: "named" (default) or "offsets" (runs made before named streams).

  Returns:
    "named": an int in [0, 2**32) hashed from ``(seed, crc32(name))``; "offsets": the
    seed the stage had before (an int or an ``(int, int)`` tuple).
  """
  check_scheme(scheme)
  if name not in _OFFSETS:
    raise MiaInputError(f"stream: unknown stage {name!r}; expected one of {STAGES}")
  if scheme == "named":
    return _hash(stream(seed, name))
  return _OFFSETS[name](int(seed))


def part_seed(seed: int, index: int, scheme: str = DEFAULT_SCHEME) -> int:
  """The seed of the ``index``-th part of a stage whose seed is ``seed`` (e.g. the proxies
  of the index-th attacked layer): "named" hashes ``(seed, index)``; "offsets" is the
  legacy ``seed * 1009 + index``."""
  check_scheme(scheme)
  if scheme == "named":
    return _hash((int(seed), int(index)))
  return int(seed) * 1009 + int(index)


def _hash(entropy: tuple[int, int]) -> int:
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])
