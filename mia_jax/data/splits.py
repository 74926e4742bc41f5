"""Membership splits: which examples each (target or shadow) model trains on.

* :func:`membership_split` -- disjoint index sets for one target model: its members
  (``target_in``), its held-out non-members (``target_out``), a pool the attacker
  may sample shadow training sets from, and auxiliary (population / reference) data.
* :func:`keep_matrix` -- LiRA's construction for ``M`` models over ``N`` examples
  where every example is IN for exactly ``M/2`` models (balanced columns), so every
  example has exactly ``M/2`` IN and ``M/2`` OUT models.
* :func:`check_keep` -- validation of such a matrix.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mia_jax._validation import MiaInputError, as_array, as_bool, check_positive_int


class MembershipSplit(NamedTuple):
  """Disjoint int64 index arrays into a pool of ``num_examples`` examples.

  Attributes:
    target_in: int64[target_in] members of the target model's training set.
    target_out: int64[target_out] non-members (never trained on by the target).
    shadow_pool: int64[shadow_pool] data the attacker draws shadow training sets from.
    auxiliary: int64[auxiliary] extra attacker data (e.g. RMIA's population set).
  """

  target_in: np.ndarray
  target_out: np.ndarray
  shadow_pool: np.ndarray
  auxiliary: np.ndarray


def membership_split(num_examples: int, *, target_in: int, target_out: int,
                     shadow_pool: int = 0, auxiliary: int = 0, seed: int = 0) -> MembershipSplit:
  """Draws disjoint random index sets from ``range(num_examples)``.

  One ``np.random.default_rng(seed)`` permutation of ``range(num_examples)`` is cut
  into consecutive blocks of the requested sizes (in the order target_in,
  target_out, shadow_pool, auxiliary); each block keeps the permutation's (random)
  order. Examples beyond the sum of the sizes are unused.

  Args:
    num_examples: N >= 1, the size of the pool indexed.
    target_in: number of target members, >= 0.
    target_out: number of target non-members, >= 0.
    shadow_pool: number of shadow-pool examples, >= 0.
    auxiliary: number of auxiliary examples, >= 0.
    seed: seed of the NumPy generator.

  Returns:
    A :class:`MembershipSplit` of int64 index arrays with the requested lengths.

  Raises:
    MiaInputError: a negative size, or sizes summing past ``num_examples``.
  """
  num_examples = check_positive_int(num_examples, "num_examples")
  sizes = {
      "target_in": check_positive_int(target_in, "target_in", minimum=0),
      "target_out": check_positive_int(target_out, "target_out", minimum=0),
      "shadow_pool": check_positive_int(shadow_pool, "shadow_pool", minimum=0),
      "auxiliary": check_positive_int(auxiliary, "auxiliary", minimum=0),
  }
  total = sum(sizes.values())
  if total > num_examples:
    detail = " + ".join(f"{k}={v}" for k, v in sizes.items())
    raise MiaInputError(
        f"target_in/target_out/shadow_pool/auxiliary: {detail} = {total} exceeds "
        f"num_examples={num_examples}")
  seed = check_positive_int(seed, "seed", minimum=0)
  perm = np.random.default_rng(seed).permutation(num_examples).astype(np.int64)
  bounds = np.cumsum([0, *sizes.values()])
  parts = [perm[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]
  return MembershipSplit(*parts)


def keep_matrix(num_models: int, num_examples: int, *, seed: int = 0) -> np.ndarray:
  """LiRA's IN/OUT assignment with balanced columns.

  ``keep[m, i]`` is True when model ``m`` trains on example ``i``. Every column has
  exactly ``M/2`` True entries: for each example the ``M`` models are ranked by
  i.i.d. uniform keys (``argsort`` along axis 0 of a ``[M, N]`` draw from
  ``np.random.default_rng(seed)``) and the models whose rank is below ``M/2`` are IN.
  Each column is thus a uniformly random balanced assignment, independent across
  examples, and each model trains on ``N/2`` examples in expectation.

  Args:
    num_models: M, even and >= 2.
    num_examples: N >= 1.
    seed: seed of the NumPy generator (an int, or a tuple of ints for a sub-stream).

  Returns:
    bool[M, N].

  Raises:
    MiaInputError: ``num_models`` odd or < 2, ``num_examples`` < 1.
  """
  num_models = check_positive_int(num_models, "num_models", minimum=2)
  if num_models % 2:
    raise MiaInputError(
        f"num_models: expected an even number so every example is IN for exactly half "
        f"of the models, got {num_models}")
  num_examples = check_positive_int(num_examples, "num_examples")
  if isinstance(seed, tuple):  # a named sub-stream, e.g. (seed, first model of a block)
    seed = tuple(check_positive_int(s, "seed", minimum=0) for s in seed)
  else:
    seed = check_positive_int(seed, "seed", minimum=0)
  keys = np.random.default_rng(seed).random((num_models, num_examples))
  ranks = np.argsort(np.argsort(keys, axis=0, kind="stable"), axis=0, kind="stable")
  return ranks < num_models // 2


def check_keep(keep: Any, num_examples: int | None = None, *, require_in_and_out: bool = True,
               name: str = "keep") -> np.ndarray:
  """Validates an IN/OUT matrix.

  Args:
    keep: bool[M, N] (0/1 integers are accepted); ``keep[m, i]`` is True when model
      ``m`` trained on example ``i``.
    num_examples: expected N, or ``None`` to accept any.
    require_in_and_out: require every example to be IN for at least one model and
      OUT for at least one (needed to fit per-example IN and OUT distributions).
    name: the argument name used in error messages.

  Returns:
    The matrix as a bool[M, N] array.

  Raises:
    MiaInputError: not 2-D, not boolean, wrong N, or (with ``require_in_and_out``)
      an example that is always IN or always OUT.
  """
  arr = as_array(keep, name)
  if arr.ndim != 2:
    raise MiaInputError(f"{name}: expected a 2-D [num_models, num_examples] array, got shape "
                        f"{arr.shape}")
  arr = as_bool(arr, name)
  if arr.shape[0] < 1:
    raise MiaInputError(f"{name}: expected at least one model (row), got shape {arr.shape}")
  if num_examples is not None and arr.shape[1] != num_examples:
    raise MiaInputError(
        f"{name}: expected {num_examples} columns (one per example), got {arr.shape[1]}")
  if require_in_and_out:
    n_in = arr.sum(axis=0)
    never_in = np.flatnonzero(n_in == 0)
    never_out = np.flatnonzero(n_in == arr.shape[0])
    for bad, what in ((never_in, "never IN (no model trained on it)"),
                      (never_out, "never OUT (every model trained on it)")):
      if bad.size:
        raise MiaInputError(
            f"{name}: {bad.size} example(s) are {what}, e.g. index {bad[:5].tolist()}; "
            f"every example needs at least one IN and one OUT model")
  return arr
