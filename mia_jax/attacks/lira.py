"""LiRA: the likelihood-ratio attack of Carlini et al. (IEEE S&P 2022).

"Membership Inference Attacks From First Principles". For every example, the
logit-scaled confidence :func:`mia_jax.signals.scaled_logit` of reference models
trained WITH the example (IN) and WITHOUT it (OUT) is modelled as a Gaussian; the
target model's value is scored by a likelihood-ratio test.

Shapes used throughout:

* ``ref``: float[M, N, A] scaled logits of M reference models on N examples under A
  query augmentations (float[M, N] means A = 1).
* ``keep``: bool[M, N]; ``keep[m, i]`` = example i was in reference model m's
  training set (IN). The number of IN/OUT references may differ between examples.
* ``target``: float[N, A] (or float[N] when A = 1) the target model's scaled logits.

Scores are float[N]; **higher = more likely a member**.

* Online (:func:`lira_online`): per example and augmentation, ``mu_in, s_in`` and
  ``mu_out, s_out`` are the mean and standard deviation (ddof = 0, like ``np.std``)
  of the IN and OUT reference values; the score is the mean over augmentations of
  ``log N(t; mu_in, s_in + eps) - log N(t; mu_out, s_out + eps)``, exactly the
  quantity the authors' reference code (``research/mia_2022/score.py``,
  ``generate_ours``) ranks by, with its sign flipped to our orientation.
* Offline (:func:`lira_offline`): OUT references only; the paper's one-sided test
  ``log Pr[Z < t]``, ``Z ~ N(mu_out, s_out + eps)``, i.e. the mean over augmentations
  of ``log Phi((t - mu_out) / (s_out + eps))``. The reference code instead ranks by
  the two-sided ``-mean_a log N(t; mu_out, s_out)``, which also flags examples far
  BELOW the OUT mean as members; for targets above ``mu_out`` both rank the same.
* ``fix_variance=True``: one global standard deviation for IN and one for OUT, the
  standard deviation of all IN (resp. OUT) values over models, examples and
  augmentations pooled together (the reference code's ``np.std(dat_in)``; note the
  reference online code also uses ``np.std(dat_in)`` for the OUT scale, a slip not
  reproduced here).

Differences from the reference code, on purpose: the centre is the mean (the paper's
estimator) unless ``center="median"`` (the reference code's ``np.median``), and no
example's reference set is truncated to the smallest count over examples (the reference
code keeps only the first ``min_n n_in`` IN values of every example).

Numerics: the arithmetic runs in JAX's default float type (float32 unless
``jax_enable_x64``). The scale of every Gaussian is ``max(s + eps, floor)`` with

  ``floor = finfo(dtype).eps * max(1, |t|, |mu|)``

(about ``1.2e-7 * max(1, |t|, |mu|)`` in float32): the resolution of the float type at
the numbers compared, below which a spread is rounding noise. It only matters when the
references have (almost) no spread, e.g. every reference model gives the same value for an
example, or a single IN reference: with the reference code's ``eps = 1e-30`` alone,
``((t - mu) / (s + eps))**2`` overflows and the score is infinite or NaN (``inf - inf``).
With the floor, ``|t - mu| / scale <= 2 / finfo.eps``, so the scores stay finite and keep
their meaning: a target at the IN value scores higher than one at the OUT value. A spread
that is not rounding noise (any practical reference set) is above the floor, so the scores
are the reference code's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from mia_jax import metrics as _metrics
from mia_jax._validation import (check_keep_shape, MiaInputError, as_array, check_finite, check_in_range,
                                 check_ndim, check_positive_int)

__all__ = [
    "LiraState", "lira_fit", "lira_score", "lira_online", "lira_offline",
    "leave_one_out", "aggregate_metrics", "augmentations", "SHIFTS_3X3",
    "LOO_ATTACKS", "CENTERS",
]

CENTERS = ("mean", "median")
LOO_ATTACKS = ("online", "offline", "global")
# The reference code's 18 augmentations are flip x these 9 one-pixel shifts.
SHIFTS_3X3: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


class LiraState(NamedTuple):
  """Gaussian fits of the reference signals, per example and augmentation.

  Attributes:
    mean_in: float[N, A] centre of the IN values (None for an offline fit).
    std_in: float[N, A] spread of the IN values (None for an offline fit).
    mean_out: float[N, A] centre of the OUT values.
    std_out: float[N, A] spread of the OUT values.
  """
  mean_in: jax.Array | None
  std_in: jax.Array | None
  mean_out: jax.Array
  std_out: jax.Array


# ---------------------------------------------------------------------------
# Validation (host, before any compute).
# ---------------------------------------------------------------------------


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_real(value: Any, name: str, ndim) -> np.ndarray:
  arr = as_array(value, name)
  check_ndim(arr, name, ndim)
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                               or np.issubdtype(arr.dtype, np.integer)):
    raise MiaInputError(f"{name}: expected real numbers, got dtype={arr.dtype}")
  arr = arr.astype(np.float64)
  check_finite(arr, name)
  return arr


def _check_ref(ref: Any, name: str = "ref") -> np.ndarray:
  """float[M, N, A] (float[M, N] becomes A = 1)."""
  arr = _check_real(ref, name, (2, 3))
  if arr.ndim == 2:
    arr = arr[:, :, None]
  if 0 in arr.shape:
    raise MiaInputError(f"{name}: expected a non-empty float[M, N, A], got shape {arr.shape}")
  return arr


def _check_target(target: Any, n: int, a: int) -> np.ndarray:
  arr = _check_real(target, "target", (1, 2))
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.shape != (n, a):
    raise MiaInputError(
        f"target: expected float[{n}, {a}] (N examples, A augmentations, as in ref)"
        f"{' or float[' + str(n) + ']' if a == 1 else ''}, got shape {np.shape(target)}")
  return arr


def _check_keep(keep: Any, m: int, n: int, ref_name: str = "ref") -> np.ndarray:
  return check_keep_shape(keep, m, n, f"models x examples, matching {ref_name}")


def _check_counts(counts: np.ndarray, side: str, what: str, note: str = "") -> None:
  """Every entry of ``counts`` (int[N] or int[T, N], references per example) >= 1."""
  bad = np.flatnonzero(np.min(counts.reshape(-1, counts.shape[-1]), axis=0) < 1)
  if bad.size:
    raise MiaInputError(
        f"keep: {what} needs at least one {side} reference model per example{note}; "
        f"{bad.size} example(s) have none (first: {bad[:5].tolist()})")


def _check_center(center: Any) -> str:
  if center not in CENTERS:
    raise MiaInputError(f"center: expected one of {CENTERS}, got {center!r}")
  return center


def _check_eps(eps: Any) -> float:
  return check_in_range(eps, "eps", 0.0, np.inf, high_open=True)


def _check_flag(value: Any, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise MiaInputError(f"{name}: expected True or False, got {value!r}")
  return bool(value)


# ---------------------------------------------------------------------------
# Core (jnp; one example, vmapped over examples).
# ---------------------------------------------------------------------------


def _stats_one(values: jax.Array, mask: jax.Array, center: str):
  """Centre and std (ddof=0) of the masked rows of values float[M, A]; mask bool[M]."""
  w = mask.astype(values.dtype)[:, None]
  count = jnp.sum(w)
  mean = jnp.sum(w * values, axis=0) / count
  std = jnp.sqrt(jnp.sum(w * jnp.square(values - mean), axis=0) / count)
  if center == "median":
    srt = jnp.sort(jnp.where(mask[:, None], values, jnp.inf), axis=0)
    c = jnp.sum(mask.astype(jnp.int32))
    mid = 0.5 * (srt[(c - 1) // 2] + srt[c // 2])
    return mid, std
  return mean, std


def _global_std(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Std of every masked value of float[M, N, A] pooled (np.std of the lot)."""
  w = jnp.broadcast_to(mask.astype(values.dtype)[:, :, None], values.shape)
  count = jnp.sum(w)
  mean = jnp.sum(w * values) / count
  return jnp.sqrt(jnp.sum(w * jnp.square(values - mean)) / count)


def _fit(ref, in_mask, out_mask, *, online: bool, fix_variance: bool,
         center: str) -> LiraState:
  stats = jax.vmap(functools.partial(_stats_one, center=center), in_axes=(1, 1))

  def side(mask):
    mu, sd = stats(ref, mask)
    if fix_variance:
      sd = jnp.broadcast_to(_global_std(ref, mask), sd.shape)
    return mu, sd

  mean_out, std_out = side(out_mask)
  if not online:
    return LiraState(None, None, mean_out, std_out)
  mean_in, std_in = side(in_mask)
  return LiraState(mean_in, std_in, mean_out, std_out)


def _scale(t, mu, s, eps):
  """``max(s + eps, finfo.eps * max(1, |t|, |mu|))``: the std floored at the float
  resolution of the compared values (see the module docstring), so that
  ``(t - mu) / scale`` stays below ``2 / finfo.eps`` and its square finite."""
  res = jnp.finfo(t.dtype).eps * jnp.maximum(1.0, jnp.maximum(jnp.abs(t), jnp.abs(mu)))
  return jnp.maximum(s + eps, res)


def _online_one(t, mu_in, s_in, mu_out, s_out, eps):
  """Score of one example: all arguments float[A]."""
  return jnp.mean(norm.logpdf(t, mu_in, _scale(t, mu_in, s_in, eps))
                  - norm.logpdf(t, mu_out, _scale(t, mu_out, s_out, eps)))


def _offline_one(t, mu_out, s_out, eps):
  return jnp.mean(norm.logcdf((t - mu_out) / _scale(t, mu_out, s_out, eps)))


def _score(state: LiraState, target, eps, *, online: bool):
  if online:
    return jax.vmap(_online_one, in_axes=(0, 0, 0, 0, 0, None))(
        target, state.mean_in, state.std_in, state.mean_out, state.std_out, eps)
  return jax.vmap(_offline_one, in_axes=(0, 0, 0, None))(
      target, state.mean_out, state.std_out, eps)


_fit_jit = jax.jit(_fit, static_argnames=("online", "fix_variance", "center"))
_score_jit = jax.jit(_score, static_argnames=("online",))


@functools.partial(jax.jit, static_argnames=("attack", "fix_variance", "center",
                                             "microbatch_size"))
def _leave_one_out_jit(signals, keep, eps, *, attack, fix_variance, center, microbatch_size):
  m_count = signals.shape[0]
  if attack == "global":
    return jnp.mean(signals, axis=-1)
  online = attack == "online"

  def one_target(m):
    others = (jnp.arange(m_count) != m)[:, None]
    state = _fit(signals, keep & others, ~keep & others, online=online,
                 fix_variance=fix_variance, center=center)
    return _score(state, signals[m], eps, online=online)

  return jax.lax.map(one_target, jnp.arange(m_count), batch_size=microbatch_size)


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def lira_fit(ref: Any, keep: Any, *, online: bool = True, fix_variance: bool = False,
             center: str = "mean") -> LiraState:
  """Fits the IN (online only) and OUT Gaussians of every example.

  Args:
    ref: float[M, N, A] (or float[M, N]) reference models' scaled logits.
    keep: bool[M, N] membership of the examples in the reference models.
    online: also fit the IN Gaussians (needs M >= 2 and one IN and one OUT
      reference per example); else OUT only (one OUT reference per example).
    fix_variance: one global std per side instead of one per example.
    center: "mean" (the paper) or "median" (the reference code).

  Returns:
    LiraState with float[N, A] fields (IN fields None when ``online=False``).

  Raises:
    MiaInputError: on invalid inputs, before any compute.
  """
  ref_np = _check_ref(ref)
  m, n, _ = ref_np.shape
  keep_np = _check_keep(keep, m, n)
  online = _check_flag(online, "online")
  fix_variance = _check_flag(fix_variance, "fix_variance")
  center = _check_center(center)
  what = "online LiRA" if online else "offline LiRA"
  if online:
    if m < 2:
      raise MiaInputError(
          f"ref: online LiRA needs at least 2 reference models (an IN and an OUT one "
          f"per example), got M={m}")
    _check_counts(keep_np.sum(0), "IN", what)
  _check_counts((~keep_np).sum(0), "OUT", what)
  dtype = _float_dtype()
  return _fit_jit(jnp.asarray(ref_np, dtype), jnp.asarray(keep_np),
                  jnp.asarray(~keep_np), online=online, fix_variance=fix_variance,
                  center=center)


def lira_score(state: LiraState, target: Any, *, online: bool = True,
               eps: float = 1e-30) -> np.ndarray:
  """Scores the target model's signals against a fitted :class:`LiraState`.

  Args:
    state: from :func:`lira_fit` (``online=True`` needs the IN fields).
    target: float[N, A] (or float[N] when A = 1) target model's scaled logits.
    online: likelihood ratio IN vs OUT; else the one-sided OUT test.
    eps: added to every std (the reference code's 1e-30); the result is floored at
      the float resolution of the compared values (module docstring), so zero-spread
      references give finite scores.

  Returns:
    float[N] scores (NumPy), higher = more likely a member.

  Raises:
    MiaInputError: on invalid inputs, before any compute.
  """
  if not isinstance(state, LiraState):
    raise MiaInputError(f"state: expected a LiraState from lira_fit, got {type(state).__name__}")
  online = _check_flag(online, "online")
  if online and state.mean_in is None:
    raise MiaInputError("state: online scoring needs IN statistics; fit with online=True")
  n, a = np.shape(state.mean_out)
  tgt = _check_target(target, n, a)
  eps = _check_eps(eps)
  dtype = _float_dtype()
  out = _score_jit(state, jnp.asarray(tgt, dtype), jnp.asarray(eps, dtype), online=online)
  return np.asarray(out)


def lira_online(target: Any, ref: Any, keep: Any, *, fix_variance: bool = False,
                center: str = "mean", eps: float = 1e-30) -> np.ndarray:
  """Online LiRA: Gaussian likelihood ratio of IN vs OUT reference signals.

  Score of example i: mean over augmentations a of
  ``log N(t[i,a]; mu_in[i,a], s_in[i,a] + eps) - log N(t[i,a]; mu_out[i,a], s_out[i,a] + eps)``.

  Args:
    target: float[N, A] (or float[N]) target model's scaled logits.
    ref: float[M, N, A] (or float[M, N]) reference models' scaled logits.
    keep: bool[M, N]; ``keep[m, i]`` = example i in reference model m's training set.
    fix_variance: one global IN std and one global OUT std (pooled over all
      examples), as the reference code's ``fix_variance``; helps with few models.
    center: "mean" (the paper) or "median" (the reference code).
    eps: added to every std (then floored as in :func:`lira_score`).

  Returns:
    float[N] scores (NumPy), higher = more likely a member.

  Raises:
    MiaInputError: bad shapes/dtypes, NaN/inf, M < 2, or an example with no IN or
      no OUT reference.
  """
  # Validate everything before fitting.
  ref_np = _check_ref(ref)
  _check_target(target, ref_np.shape[1], ref_np.shape[2])
  _check_eps(eps)
  state = lira_fit(ref_np, keep, online=True, fix_variance=fix_variance, center=center)
  return lira_score(state, target, online=True, eps=eps)


def lira_offline(target: Any, ref: Any, keep: Any, *, fix_variance: bool = False,
                 center: str = "mean", eps: float = 1e-30) -> np.ndarray:
  """Offline LiRA: the paper's one-sided test against OUT references only.

  Score of example i: mean over augmentations of
  ``log Phi((t[i,a] - mu_out[i,a]) / (s_out[i,a] + eps))`` = ``log Pr[Z < t]`` for
  ``Z ~ N(mu_out, s_out)``. (The reference code ranks by the two-sided
  ``-log N(t; mu_out, s_out)``; see the module docstring.)

  Args:
    target: float[N, A] (or float[N]) target model's scaled logits.
    ref: float[M, N, A] (or float[M, N]) reference models' scaled logits.
    keep: bool[M, N]; only the OUT entries (False) are used.
    fix_variance: one global OUT std pooled over all examples.
    center: "mean" or "median".
    eps: added to every std (then floored as in :func:`lira_score`).

  Returns:
    float[N] scores (NumPy, all <= 0), higher = more likely a member.

  Raises:
    MiaInputError: bad shapes/dtypes, NaN/inf, or an example with no OUT reference.
  """
  ref_np = _check_ref(ref)
  _check_target(target, ref_np.shape[1], ref_np.shape[2])
  _check_eps(eps)
  state = lira_fit(ref_np, keep, online=False, fix_variance=fix_variance, center=center)
  return lira_score(state, target, online=False, eps=eps)


def leave_one_out(signals: Any, keep: Any, *, attack: str = "online",
                  fix_variance: bool = False, center: str = "mean", eps: float = 1e-30,
                  fprs: Sequence[float] = _metrics.DEFAULT_FPRS,
                  microbatch_size: int = 1) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """Attacks each of M models in turn, the other M - 1 serving as references.

  This is the LiRA paper's evaluation protocol: M models trained on random halves of
  the N examples; target m is scored with references ``{0..M-1} \\ {m}`` and its
  attack is evaluated against ``keep[m]``.

  Args:
    signals: float[M, N, A] (or float[M, N]) scaled logits of all M models.
    keep: bool[M, N] membership.
    attack: "online", "offline", or "global" (the reference-free global-threshold
      baseline: score = the target's own signal averaged over augmentations).
    fix_variance, center, eps: as in :func:`lira_online` (ignored for "global").
    fprs: FPRs at which :func:`mia_jax.metrics.summarize` reports the TPR.
    microbatch_size: target models scored at once (memory ~ microbatch_size * M * N * A).

  Returns:
    scores: float[M, N] (NumPy); row m scores the examples against model m.
    per_model: M dicts, ``{"model": m, **metrics.summarize(scores[m], keep[m])}``.

  Raises:
    MiaInputError: on invalid inputs, e.g. a model whose training set is empty or
      full, or an example left with no IN (online) or no OUT reference once a
      target model is removed (each example needs >= 2 IN and >= 2 OUT models).
  """
  if attack not in LOO_ATTACKS:
    raise MiaInputError(f"attack: expected one of {LOO_ATTACKS}, got {attack!r}")
  sig = _check_ref(signals, "signals")
  m, n, _ = sig.shape
  keep_np = _check_keep(keep, m, n, ref_name="signals")
  fix_variance = _check_flag(fix_variance, "fix_variance")
  center = _check_center(center)
  eps = _check_eps(eps)
  microbatch_size = check_positive_int(microbatch_size, "microbatch_size")
  _metrics.check_fprs(fprs, "fprs")  # the same validation as summarize
  if m < 2:
    raise MiaInputError(f"signals: leave-one-out needs at least 2 models, got M={m}")
  n_in = keep_np.sum(1)
  bad = np.flatnonzero((n_in == 0) | (n_in == n))
  if bad.size:
    raise MiaInputError(
        f"keep: every model needs both members and non-members to be evaluated; "
        f"model(s) {bad[:5].tolist()} have {n_in[bad[:5]].tolist()} of {n}")
  if attack != "global":
    what = f"leave-one-out {attack} LiRA"
    # References of target t for example i: the other models; counts[t, i].
    in_others = keep_np.sum(0)[None, :] - keep_np
    out_others = (~keep_np).sum(0)[None, :] - ~keep_np
    note = " once the target model is removed (so >= 2 in keep)"
    if attack == "online":
      _check_counts(in_others, "IN", what, note)
    _check_counts(out_others, "OUT", what, note)
  dtype = _float_dtype()
  scores = _leave_one_out_jit(
      jnp.asarray(sig, dtype), jnp.asarray(keep_np), jnp.asarray(eps, dtype),
      attack=attack, fix_variance=fix_variance, center=center,
      microbatch_size=min(microbatch_size, m))
  scores = np.asarray(scores)
  per_model = [{"model": i, **_metrics.summarize(scores[i], keep_np[i], fprs)}
               for i in range(m)]
  return scores, per_model


def aggregate_metrics(per_model: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean and std over target models of :func:`mia_jax.metrics.summarize` dicts.

  Args:
    per_model: dicts as returned by :func:`leave_one_out` (or ``summarize``).

  Returns:
    ``{"num_models": K, "auc": {"mean", "std"}, "balanced_accuracy": {...},
    "advantage": {...}, "tpr_at_fpr": {fpr: {"mean", "std"}}}``; the std is the sample
    std (ddof = 1), 0.0 for a single model. Python floats only (JSON-ready).

  Raises:
    MiaInputError: if ``per_model`` is empty or the dicts disagree on their keys.
  """
  rows = list(per_model)
  if not rows:
    raise MiaInputError("per_model: expected at least one metrics dict, got none")

  def mean_std(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0}

  out: dict[str, Any] = {"num_models": len(rows)}
  for key in ("auc", "balanced_accuracy", "advantage"):
    try:
      out[key] = mean_std([r[key] for r in rows])
    except (KeyError, TypeError) as e:
      raise MiaInputError(f"per_model: every entry needs a numeric {key!r} ({e})") from e
  if all("tpr_at_fpr" in r for r in rows):
    fpr_keys = list(rows[0]["tpr_at_fpr"])
    if any(list(r["tpr_at_fpr"]) != fpr_keys for r in rows):
      raise MiaInputError("per_model: entries report TPRs at different FPRs")
    out["tpr_at_fpr"] = {k: mean_std([r["tpr_at_fpr"][k] for r in rows]) for k in fpr_keys}
  return out


def augmentations(x: Any, *, flip: bool = True,
                  shifts: Sequence[tuple[int, int]] = ((0, 0),),
                  pad_mode: str = "reflect") -> jax.Array:
  """Query augmentations of a batch of images, for LiRA's A axis.

  Order: for each flip in (no, yes) [only "no" if ``flip=False``], for each shift
  ``(dy, dx)`` in ``shifts``: ``out[i, j] = padded[i + dy, j + dx]``. Augmentation 0 is
  the identity when ``shifts[0] == (0, 0)``. The reference code's 18 augmentations
  are ``flip=True, shifts=SHIFTS_3X3`` (it uses reflect padding).

  Args:
    x: float[N, H, W, C] images.
    flip: also use the horizontal mirror image (W axis reversed).
    shifts: (dy, dx) integer pixel offsets, |dy| < H and |dx| < W.
    pad_mode: "reflect" (mirror without repeating the edge, as TF's REFLECT) or
      "zero".

  Returns:
    float[A, N, H, W, C] (jnp), A = (2 if flip else 1) * len(shifts). Memory is A
    times the input; compute signals per augmentation (``out[a]``) to stay bounded.

  Raises:
    MiaInputError: on invalid inputs.
  """
  arr = _check_real(x, "x", 4)
  flip = _check_flag(flip, "flip")
  if pad_mode not in ("reflect", "zero"):
    raise MiaInputError(f"pad_mode: expected 'reflect' or 'zero', got {pad_mode!r}")
  try:
    offs = [(int(dy), int(dx)) for dy, dx in shifts]
    ok = all(float(dy) == int(dy) and float(dx) == int(dx) for dy, dx in shifts)
  except (TypeError, ValueError) as e:
    raise MiaInputError(f"shifts: expected a sequence of (dy, dx) integer pairs ({e})") from e
  if not offs or not ok:
    raise MiaInputError(f"shifts: expected a non-empty sequence of (dy, dx) integer pairs, "
                        f"got {shifts!r}")
  _, h, w, _ = arr.shape
  p = max(max(abs(dy), abs(dx)) for dy, dx in offs)
  if any(abs(dy) >= h or abs(dx) >= w for dy, dx in offs):
    raise MiaInputError(f"shifts: each |dy| must be < H={h} and |dx| < W={w}, got {offs}")
  xj = jnp.asarray(arr, _float_dtype())
  views = [xj, xj[:, :, ::-1, :]] if flip else [xj]
  out = []
  for v in views:
    padded = jnp.pad(v, ((0, 0), (p, p), (p, p), (0, 0)),
                     mode="reflect" if pad_mode == "reflect" else "constant")
    for dy, dx in offs:
      out.append(padded[:, p + dy:p + dy + h, p + dx:p + dx + w, :])
  return jnp.stack(out)


# ---------------------------------------------------------------------------
# The registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score.
# ---------------------------------------------------------------------------

import dataclasses  # noqa: E402

from mia_jax.attacks.base import Attack, option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LiraConfig:
  """LiRA's variant.

  Attributes:
    online: IN vs OUT likelihood ratio; else the one-sided test against OUT only.
    fix_variance: one global std per side (pooled over examples).
    center: "mean" (the paper) or "median" (the reference code).
    eps: added to every std; None: the reference code's 1e-30, or 1e-3 when the
      references' outputs are discretized (a defended API) or there are only 2 of them
      (one IN and one OUT value per example: zero spread).
    augmentations: the query views the signals were computed with (recorded only).
  """
  online: bool = True
  fix_variance: bool = False
  center: str = "mean"
  eps: float | None = None
  augmentations: str = "none"


def fit_attack(config: LiraConfig, side) -> dict:
  """Fits the per-example Gaussians on ``side["reference"]`` (validated here)."""
  ref = side["reference"]
  signals = ref["scaled_logit"]
  stats = lira_fit(signals, ref["keep"], online=config.online,
                   fix_variance=config.fix_variance, center=config.center)
  eps = config.eps
  if eps is None:
    # A defended API discretizes outputs, so reference signals often tie exactly; with
    # 2 references each example has one IN and one OUT value: zero spread. There a std
    # floor keeps the Gaussians proper (float32 cannot square the reference code's 1e-30).
    eps = 1e-3 if ref.get("discrete") or np.shape(signals)[0] == 2 else 1e-30
  return {"stats": stats, "eps": jnp.asarray(_check_eps(eps), _float_dtype())}


def score_attack(state: dict, signals) -> jax.Array:
  """Pure: the target's ``scaled_logit`` ([N] or [N, A]) against the fitted Gaussians."""
  stats = state["stats"]
  t = jnp.asarray(signals["scaled_logit"], stats.mean_out.dtype)
  t = t.reshape(stats.mean_out.shape)
  return _score(stats, t, state["eps"], online=stats.mean_in is not None)


def _lira(name: str, online: bool, fix_variance: bool, summary: str) -> Attack:
  return Attack(
      name=name, family="reference", summary=summary,
      paper="Carlini et al., S&P 2022", needs=("scaled_logit",), attacker=("reference",),
      configure=lambda o: LiraConfig(online=online, fix_variance=fix_variance,
                                     augmentations=option(o, "lira_augmentations", "none")),
      fit=fit_attack, score=score_attack,
      details=lambda config, state, signals: ({}, {"augmentations": config.augmentations}))


ATTACKS = (
    _lira("lira", True, False, "likelihood ratio of the IN and OUT reference Gaussians"),
    _lira("lira-offline", False, False, "one-sided test against the OUT reference Gaussian"),
    _lira("lira-fixed-variance", True, True, "online LiRA with one pooled std per side"),
    _lira("lira-offline-fixed-variance", False, True,
          "offline LiRA with one pooled OUT std"),
)
