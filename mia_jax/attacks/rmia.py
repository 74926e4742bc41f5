"""RMIA: the relative membership-inference attack of Zarifzadeh et al. (ICML 2024).

"Low-Cost High-Power Membership Inference Attacks". The signal is the target model's
probability of the true label, ``p(x) = Pr(y_x | x, theta)``, compared with its
average ``Pr(x)`` over reference models, and the resulting ratio is compared with
the same ratio on population samples z (never in the target's training set):

* ``ratio(x) = p_target(x) / Pr(x)``, ``ratio(z) = p_target(z) / Pr(z)``;
* ``LR(x, z) = ratio(x) / ratio(z)``;
* ``score(x) = (1/Z) * #{z : LR(x, z) >= gamma}`` in [0, 1]; **higher = more likely a
  member**.

``Pr`` is the mean over reference models:

* online (``offline_a=None``): all M references, whether they trained on x or not
  (the paper's online setting, where half the references are IN for each x);
* offline (``offline_a=a``): only the references that did NOT train on x
  (``keep[m, i]`` False; ``keep=None`` means no reference trained on any x), with the
  paper's linear approximation of the missing IN models
  ``Pr(x) = 0.5 * ((1 + a) * Pr_OUT(x) + (1 - a))``. The population samples are OUT
  for every reference, so the same approximation gives ``Pr(z)`` from all M references,
  as in the authors' implementation (privacy_meter). ``a`` is tuned on reference
  models in the paper (``a = 1`` means no correction: ``Pr = Pr_OUT``).

The comparison is ``>= gamma`` as in the paper's definition; the authors' code uses a
strict ``>``. The two differ only on exact ties.

How ``Pr(z)`` is computed, and ML Privacy Meter's current code. Here ``Pr(z)`` is the
mean of the true-label probability of z over **all** M reference models (every z is OUT
for every one of them), through the offline mix in the offline attack; ``Pr(x)`` (offline)
the mean over the references that are OUT for x. ML Privacy Meter's current
``get_rmia_out_signals`` (privacy_meter, ``modules/attacks``: ``run_rmia``) instead zeroes
the IN entries, sorts each example's M reference values in decreasing order and keeps the
largest M/2: for an x with exactly M/2 OUT references that is their mean, as here, but for
z (all OUT) it is the mean of the **largest half** of the OUT values, which is at least the
mean of all of them -- a larger ``Pr(z)``, so smaller ratios ``p(z) / Pr(z)`` on the
population and, for the same target, higher scores. ``pr_rule="privacy_meter"`` in
:func:`rmia_fit` (offline only) reproduces that rule, tested against an independent
implementation of it; the default ``"mean"`` is the paper's average.

``Pr`` is floored at the smallest positive normal float so a ratio never divides by
zero. The N x Z comparison is never materialised: ``ratio(z)`` is sorted once and each
x is answered by a binary search that applies the exact predicate
``ratio(x) / ratio(z) >= gamma`` (monotone in ``ratio(z)``), so the counts equal the
brute-force comparison bit for bit in O((N + Z) log Z), chunked over x.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import (check_keep_shape, MiaInputError, as_array, check_finite, check_in_range,
                                 check_ndim, check_positive_int)

__all__ = ["PR_RULES", "RmiaState", "rmia_fit", "rmia_score", "rmia_scores"]

PR_RULES = ("mean", "privacy_meter")


class RmiaState(NamedTuple):
  """Reference averages of the true-label probability.

  Attributes:
    pr_x: float[N] ``Pr(x)`` for the candidate examples.
    pr_z: float[Z] ``Pr(z)`` for the population samples.
  """
  pr_x: jax.Array
  pr_z: jax.Array


# ---------------------------------------------------------------------------
# Validation (host, before any compute).
# ---------------------------------------------------------------------------


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_probs(value: Any, name: str, ndim: int, shape=None, what: str = "") -> np.ndarray:
  arr = as_array(value, name)
  check_ndim(arr, name, ndim)
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                               or np.issubdtype(arr.dtype, np.integer)):
    raise MiaInputError(f"{name}: expected probabilities, got dtype={arr.dtype}")
  arr = arr.astype(np.float64)
  if shape is not None and arr.shape != tuple(shape):
    raise MiaInputError(f"{name}: expected shape {list(shape)}{what}, got {list(arr.shape)}")
  if 0 in arr.shape:
    raise MiaInputError(f"{name}: expected a non-empty array, got shape {list(arr.shape)}")
  check_finite(arr, name)
  if arr.min() < 0 or arr.max() > 1:
    raise MiaInputError(
        f"{name}: expected probabilities in [0, 1], got range [{arr.min()}, {arr.max()}]")
  return arr


def _check_keep(keep: Any, m: int, n: int) -> np.ndarray:
  return check_keep_shape(keep, m, n, "reference models x examples, matching p_ref_x")


# ---------------------------------------------------------------------------
# Core (jnp).
# ---------------------------------------------------------------------------


def _count_one(rx: jax.Array, rz_sorted: jax.Array, gamma: jax.Array) -> jax.Array:
  """#{j : rx / rz_sorted[j] >= gamma} for one x, by binary search.

  The predicate is non-increasing along the ascending ``rz_sorted`` (rounded division
  is monotone; rz = 0 gives inf, or NaN = False when rx = 0), so the matches are a
  prefix whose length is found in ceil(log2(Z + 1)) exact predicate evaluations.
  """
  z = rz_sorted.shape[0]

  def body(_, lohi):
    lo, hi = lohi
    mid = (lo + hi) // 2
    ok = (rx / rz_sorted[jnp.minimum(mid, z - 1)]) >= gamma
    active = lo < hi
    return (jnp.where(active & ok, mid + 1, lo), jnp.where(active & ~ok, mid, hi))

  lo, _ = jax.lax.fori_loop(0, z.bit_length(), body,
                            (jnp.zeros((), jnp.int32), jnp.full((), z, jnp.int32)))
  return lo


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _count_at_least(ratio_x: jax.Array, ratio_z: jax.Array, gamma: jax.Array, *,
                    chunk_size: int) -> jax.Array:
  """int32[N]: number of z with ratio_x / ratio_z >= gamma, chunk_size x at a time."""
  rz_sorted = jnp.sort(ratio_z)
  return jax.lax.map(lambda rx: _count_one(rx, rz_sorted, gamma), ratio_x,
                     batch_size=min(chunk_size, ratio_x.shape[0]))


def _fraction_at_least(ratio_x, ratio_z, gamma, *, chunk_size: int) -> np.ndarray:
  """float[N] (NumPy, dtype of ratio_x): the counts over Z, divided on the host so the
  result is the correctly rounded count / Z (XLA may multiply by 1/Z instead)."""
  counts = np.asarray(_count_at_least(ratio_x, ratio_z, gamma, chunk_size=chunk_size))
  return (counts / np.shape(ratio_z)[0]).astype(np.asarray(ratio_x).dtype)


def _offline_mix(pr_out: jax.Array, a: jax.Array) -> jax.Array:
  return 0.5 * ((1.0 + a) * pr_out + (1.0 - a))


@functools.partial(jax.jit, static_argnames=("offline",))
def _fit_jit(p_ref_x, p_ref_z, out_mask, a, *, offline: bool) -> RmiaState:
  if offline:
    w = out_mask.astype(p_ref_x.dtype)
    pr_x = _offline_mix(jnp.sum(w * p_ref_x, 0) / jnp.sum(w, 0), a)
    pr_z = _offline_mix(jnp.mean(p_ref_z, 0), a)
  else:
    pr_x, pr_z = jnp.mean(p_ref_x, 0), jnp.mean(p_ref_z, 0)
  return RmiaState(pr_x, pr_z)


@jax.jit
def _ratios(state: RmiaState, p_target_x, p_target_z):
  tiny = jnp.finfo(p_target_x.dtype).tiny
  return (p_target_x / jnp.maximum(state.pr_x, tiny),
          p_target_z / jnp.maximum(state.pr_z, tiny))


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def rmia_fit(p_ref_x: Any, p_ref_z: Any, *, keep: Any = None,
             offline_a: float | None = None, pr_rule: str = "mean") -> RmiaState:
  """Averages the reference models' probabilities: ``Pr(x)`` and ``Pr(z)``.

  Args:
    p_ref_x: float[M, N] reference models' true-label probabilities on the candidates.
    p_ref_z: float[M, Z] the same on the population samples.
    keep: optional bool[M, N], ``keep[m, i]`` = x_i in reference model m's training
      set. Only the offline mode uses it (to select the OUT references); ``None``
      there means every reference is OUT for every x. The online mode averages all
      references and only checks its shape.
    offline_a: ``None`` for the online attack, else the offline coefficient
      ``a`` in [0, 1]: ``Pr(x) = 0.5 * ((1 + a) * Pr_OUT(x) + (1 - a))``.
    pr_rule: ``"mean"`` (the paper: ``Pr_OUT`` is the mean over the OUT references) or,
      offline only, ``"privacy_meter"`` (ML Privacy Meter's current code: the mean of the
      largest M/2 of the reference values with the IN ones zeroed; see the module
      docstring).

  Returns:
    RmiaState(pr_x float[N], pr_z float[Z]).

  Raises:
    MiaInputError: on invalid inputs, e.g. (offline) an x with no OUT reference.
  """
  px = _check_probs(p_ref_x, "p_ref_x", 2)
  m, n = px.shape
  pz = _check_probs(p_ref_z, "p_ref_z", 2)
  if pz.shape[0] != m:
    raise MiaInputError(
        f"p_ref_z: expected {m} rows (one per reference model, as p_ref_x), got "
        f"shape {list(pz.shape)}")
  keep_np = None if keep is None else _check_keep(keep, m, n)
  offline = offline_a is not None
  a = check_in_range(offline_a, "offline_a", 0.0, 1.0) if offline else 0.0
  out_mask = np.ones((m, n), bool) if keep_np is None else ~keep_np
  if pr_rule not in PR_RULES:
    raise MiaInputError(f"pr_rule: expected one of {PR_RULES}, got {pr_rule!r}")
  if pr_rule == "privacy_meter":
    if not offline:
      raise MiaInputError("pr_rule: 'privacy_meter' is ML Privacy Meter's offline rule; "
                          "give offline_a")
    half = max(1, m // 2)
    top = lambda v: np.mean(-np.sort(-v, axis=0)[:half], axis=0)  # noqa: E731
    dtype = _float_dtype()
    mix = lambda pr: jnp.asarray(0.5 * ((1.0 + a) * pr + (1.0 - a)), dtype)  # noqa: E731
    return RmiaState(mix(top(np.where(out_mask, px, 0.0))), mix(top(pz)))
  if offline:
    bad = np.flatnonzero(out_mask.sum(0) == 0)
    if bad.size:
      raise MiaInputError(
          f"keep: offline RMIA needs at least one OUT reference model per example; "
          f"{bad.size} example(s) have none (first: {bad[:5].tolist()})")
  dtype = _float_dtype()
  return _fit_jit(jnp.asarray(px, dtype), jnp.asarray(pz, dtype), jnp.asarray(out_mask),
                  jnp.asarray(a, dtype), offline=offline)


def rmia_score(state: RmiaState, p_target_x: Any, p_target_z: Any, *, gamma: float = 1.0,
               chunk_size: int = 4096) -> np.ndarray:
  """Scores the target model against a fitted :class:`RmiaState`.

  Args:
    state: from :func:`rmia_fit`.
    p_target_x: float[N] target model's true-label probabilities on the candidates.
    p_target_z: float[Z] the same on the population samples.
    gamma: likelihood-ratio threshold, > 0 (the paper uses 1 or 2).
    chunk_size: candidates searched at once (memory ~ chunk_size, not N x Z).

  Returns:
    float[N] scores in [0, 1] (NumPy), higher = more likely a member.

  Raises:
    MiaInputError: on invalid inputs, before any compute.
  """
  if not isinstance(state, RmiaState):
    raise MiaInputError(f"state: expected an RmiaState from rmia_fit, got {type(state).__name__}")
  n, z = int(np.shape(state.pr_x)[0]), int(np.shape(state.pr_z)[0])
  tx = _check_probs(p_target_x, "p_target_x", 1, (n,), " (one per candidate, as p_ref_x)")
  tz = _check_probs(p_target_z, "p_target_z", 1, (z,), " (one per population sample, as p_ref_z)")
  gamma = check_in_range(gamma, "gamma", 0.0, np.inf, low_open=True, high_open=True)
  chunk_size = check_positive_int(chunk_size, "chunk_size")
  dtype = _float_dtype()
  rx, rz = _ratios(state, jnp.asarray(tx, dtype), jnp.asarray(tz, dtype))
  return _fraction_at_least(rx, rz, jnp.asarray(gamma, dtype), chunk_size=chunk_size)


def rmia_scores(p_target_x: Any, p_target_z: Any, p_ref_x: Any, p_ref_z: Any, *,
                gamma: float = 1.0, keep: Any = None, offline_a: float | None = None,
                chunk_size: int = 4096) -> np.ndarray:
  """RMIA scores of N candidates against a target model (fit + score in one call).

  ``score(x) = (1/Z) #{z : (p_target(x) / Pr(x)) / (p_target(z) / Pr(z)) >= gamma}``.

  Args:
    p_target_x: float[N] target model's true-label probabilities on the candidates.
    p_target_z: float[Z] target model's true-label probabilities on population samples
      (examples not in the target's training set).
    p_ref_x: float[M, N] reference models' probabilities on the candidates.
    p_ref_z: float[M, Z] reference models' probabilities on the population samples.
    gamma: likelihood-ratio threshold, > 0.
    keep: optional bool[M, N] reference membership (see :func:`rmia_fit`).
    offline_a: ``None`` = online (average over all references); else the offline
      coefficient a in [0, 1].
    chunk_size: candidates searched at once.

  Returns:
    float[N] scores in [0, 1] (NumPy), higher = more likely a member.

  Raises:
    MiaInputError: bad shapes, probabilities outside [0, 1] or NaN, gamma <= 0,
      a outside [0, 1], chunk_size < 1, or (offline) an x with no OUT reference.
  """
  # Validate the target-side arguments too before fitting anything.
  px = _check_probs(p_ref_x, "p_ref_x", 2)
  pz = _check_probs(p_ref_z, "p_ref_z", 2)
  _check_probs(p_target_x, "p_target_x", 1, (px.shape[1],), " (one per candidate, as p_ref_x)")
  _check_probs(p_target_z, "p_target_z", 1, (pz.shape[1],),
               " (one per population sample, as p_ref_z)")
  check_in_range(gamma, "gamma", 0.0, np.inf, low_open=True, high_open=True)
  check_positive_int(chunk_size, "chunk_size")
  state = rmia_fit(px, pz, keep=keep, offline_a=offline_a)
  return rmia_score(state, p_target_x, p_target_z, gamma=gamma, chunk_size=chunk_size)


# ---------------------------------------------------------------------------
# The registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score.
# ---------------------------------------------------------------------------

import dataclasses  # noqa: E402

from mia_jax.attacks.base import Attack, option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class RmiaConfig:
  """RMIA's settings: ``offline_a`` None for the online attack, else the offline ``a``;
  ``gamma`` the likelihood-ratio threshold."""
  offline_a: float | None = None
  gamma: float = 1.0


def fit_attack(config: RmiaConfig, side) -> dict:
  """``Pr(x)`` and ``Pr(z)`` from ``side["reference"]`` (validated here)."""
  ref = side["reference"]
  state = rmia_fit(ref["confidence"], ref["confidence_z"], keep=ref["keep"],
                   offline_a=config.offline_a)
  gamma = check_in_range(config.gamma, "gamma", 0.0, np.inf, low_open=True, high_open=True)
  return {"rmia": state, "gamma": jnp.asarray(gamma, _float_dtype())}


def score_attack(state: dict, signals, chunk_size: int = 4096) -> jax.Array:
  """Pure: the fraction of population samples z with LR(x, z) >= gamma (the counts are
  exact; the division by Z is XLA's, so a score may differ from :func:`rmia_score`'s
  correctly rounded one in the last bit, never in its rank)."""
  st = state["rmia"]
  dtype = st.pr_x.dtype
  tx = jnp.asarray(signals["confidence"], dtype)
  tz = jnp.asarray(signals["confidence_z"], dtype)
  tiny = jnp.finfo(dtype).tiny
  rx, rz = tx / jnp.maximum(st.pr_x, tiny), tz / jnp.maximum(st.pr_z, tiny)
  rz_sorted = jnp.sort(rz)
  counts = jax.lax.map(lambda r: _count_one(r, rz_sorted, state["gamma"]), rx,
                       batch_size=max(1, min(chunk_size, rx.shape[0])))
  return counts.astype(dtype) / rz.shape[0]


def _rmia(name: str, offline: bool, summary: str) -> Attack:
  return Attack(
      name=name, family="reference", summary=summary,
      paper="Zarifzadeh et al., ICML 2024", needs=("confidence", "confidence_z"),
      attacker=("reference",),
      configure=lambda o: RmiaConfig(
          offline_a=float(option(o, "rmia_offline_a", 0.3)) if offline else None),
      fit=fit_attack, score=score_attack)


ATTACKS = (
    _rmia("rmia", False, "p(x)/Pr(x) against the same ratio on population samples z"),
    _rmia("rmia-offline", True, "RMIA with OUT references only, Pr(x) from the a-rule"),
)
