"""Evaluation metrics for membership-inference attacks (host-side NumPy).

Conventions used by every function in this module:

* ``scores``: float[N] (or int[N]), one attack score per example. **A HIGHER score means the
  example is MORE likely a member** (of the target model's training set). Attacks
  whose natural statistic points the other way (e.g. a loss) must negate it before
  calling these functions.
* ``is_member``: bool[N] ground truth (0/1 integers are accepted); ``True`` means
  member. Both members and non-members must be present.
* Prediction rule at a threshold ``t``: ``score >= t`` => predicted member. The
  threshold ``+inf`` therefore predicts nothing as a member.
* Curves are exact: one point per distinct score value (ties are never split), in
  order of decreasing threshold, starting at threshold ``+inf`` (the point with
  TPR = FPR = 0).
* The precision of an empty set of predicted members is defined as ``1.0`` (as in
  ``sklearn.metrics.precision_recall_curve``'s end point): an attacker that
  predicts nothing makes no false claims.

* Scores are ranked exactly in their own dtype: integer scores are never converted to
  float64 before ranking (int64 values above 2**53 would tie), so distinct integers
  always count as distinct thresholds. Returned thresholds are float64.

All inputs are validated before any compute; bad input raises
:class:`mia_jax._validation.MiaInputError` whose message names the argument.
Everything is vectorized (one sort plus cumulative sums); no Python loop runs over
examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mia_jax._validation import (
    MiaInputError,
    as_array,
    check_in_range,
    check_membership,
    check_ndim,
    check_positive_int,
    check_scores,
)

__all__ = [
    "roc_curve",
    "roc_auc",
    "tpr_at_fpr",
    "balanced_accuracy",
    "advantage",
    "precision_recall_at",
    "precision_recall_curve",
    "prior_precision",
    "calibrate_threshold",
    "bootstrap_ci",
    "summarize",
]

DEFAULT_FPRS: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001, 0.0)


# ---------------------------------------------------------------------------
# Internal helpers.
# ---------------------------------------------------------------------------


def _rank_keys(raw: np.ndarray) -> np.ndarray:
  """float64[N] keys that order exactly as the validated scores ``raw`` do.

  float16/32/64 scores are their own keys (float64 holds them exactly). Other dtypes
  (integers, whose float64 values can tie: float(2**62 + 1) == float(2**62); long
  doubles) are ranked in their own dtype: the keys are their dense ranks.
  """
  if raw.dtype in (np.float64, np.float32, np.float16):
    return raw.astype(np.float64)
  _, inverse = np.unique(raw, return_inverse=True)
  return inverse.reshape(-1).astype(np.float64)


def _prepare(scores: ArrayLike, is_member: ArrayLike
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates ``(scores, is_member)``.

  Returns:
    (keys float64[N] ranking exactly as the scores, is_member bool[N], the validated
    scores in their own dtype, for thresholds).
  """
  raw = check_scores(scores, "scores")
  m = check_membership(is_member, n=raw.shape[0], name="is_member")
  return _rank_keys(raw), m, raw


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
  """A real number that is not NaN (+-inf allowed)."""
  if isinstance(threshold, (bool, np.bool_)):
    raise MiaInputError(f"{name}: expected a real number, got {threshold!r}")
  try:
    t = float(threshold)
  except (TypeError, ValueError) as e:
    raise MiaInputError(f"{name}: expected a real number, got {threshold!r}") from e
  if np.isnan(t):
    raise MiaInputError(f"{name}: expected a real number, got NaN")
  return t


def check_fprs(fpr: Any, name: str = "fpr") -> tuple[np.ndarray, bool]:
  """Validates a float or 1-D sequence of FPRs in [0, 1]; returns (array, is_scalar)."""
  arr = as_array(fpr, name)
  check_ndim(arr, name, (0, 1))
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                               or np.issubdtype(arr.dtype, np.integer)):
    raise MiaInputError(f"{name}: expected a number or a sequence of numbers, got {fpr!r}")
  scalar = arr.ndim == 0
  flat = arr.reshape(-1).astype(np.float64)
  if flat.size == 0:
    raise MiaInputError(f"{name}: expected at least one value, got an empty sequence")
  for v in flat:  # Loop over requested FPRs (not examples): error names the bad value.
    check_in_range(v, name, 0.0, 1.0)
  return flat, scalar


def _roc_counts(s: np.ndarray, m: np.ndarray, raw: np.ndarray | None = None):
  """Cumulative counts at every distinct threshold, decreasing.

  ``s`` are the rank keys; ``raw`` (default ``s``) the scores the thresholds are read from.

  Returns:
    thresholds: float64[T+1], ``+inf`` then the distinct scores in decreasing order.
    tps: float64[T+1] number of members with ``score >= threshold``.
    fps: float64[T+1] number of non-members with ``score >= threshold``.
    n_pos, n_neg: number of members / non-members.
  """
  order = np.argsort(-s, kind="stable")
  s_sorted = s[order]
  m_sorted = m[order]
  # Last index of each group of tied scores.
  last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]
  cum_tp = np.cumsum(m_sorted, dtype=np.int64)
  tps = cum_tp[last]
  fps = (last + 1) - tps
  thresholds = np.r_[np.inf, np.asarray((s if raw is None else raw)[order][last], np.float64)]
  tps = np.r_[0, tps].astype(np.float64)
  fps = np.r_[0, fps].astype(np.float64)
  n_pos = float(cum_tp[-1])
  n_neg = float(s.size) - n_pos
  return thresholds, tps, fps, n_pos, n_neg


def _roc(s: np.ndarray, m: np.ndarray, raw: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  thresholds, tps, fps, n_pos, n_neg = _roc_counts(s, m, raw)
  return fps / n_neg, tps / n_pos, thresholds


def _precision(tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
  """tp / (tp + fp), with 1.0 where nothing is predicted member."""
  pred = tps + fps
  with np.errstate(divide="ignore", invalid="ignore"):
    prec = np.where(pred > 0, tps / np.where(pred > 0, pred, 1.0), 1.0)
  return prec


def _auc(s: np.ndarray, m: np.ndarray) -> float:
  _, tps, fps, n_pos, n_neg = _roc_counts(s, m)
  # Trapezoid rule on integer counts: exact and equal to the Mann-Whitney U
  # statistic with ties counted 1/2.
  area2 = np.sum(np.diff(fps) * (tps[1:] + tps[:-1]))
  return float(area2 / (2.0 * n_pos * n_neg))


def _tpr_at_fpr(s: np.ndarray, m: np.ndarray, fprs: np.ndarray) -> np.ndarray:
  fpr, tpr, _ = _roc(s, m)
  # fpr is non-decreasing and tpr non-decreasing along the curve, so the best TPR
  # with FPR <= target is at the last curve point with FPR <= target.
  idx = np.searchsorted(fpr, fprs, side="right") - 1
  return tpr[idx]


def _advantage(s: np.ndarray, m: np.ndarray) -> float:
  fpr, tpr, _ = _roc(s, m)
  return float(np.max(tpr - fpr))


def _balanced_accuracy(s: np.ndarray, m: np.ndarray, threshold: float | None,
                       raw: np.ndarray) -> float:
  if threshold is None:
    fpr, tpr, _ = _roc(s, m)
    return float(np.max(0.5 * (tpr + (1.0 - fpr))))
  pred = raw >= threshold
  tpr = np.mean(pred[m])
  tnr = np.mean(~pred[~m])
  return float(0.5 * (tpr + tnr))


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def roc_curve(scores: ArrayLike, is_member: ArrayLike
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact ROC curve of a membership-inference attack.

  One point per distinct threshold (ties are never split), ordered by decreasing
  threshold, starting at ``(fpr, tpr) = (0, 0)`` with threshold ``+inf`` and ending
  at ``(1, 1)`` with threshold ``min(scores)``. The prediction rule is
  ``score >= threshold`` => member. Equivalent to
  ``sklearn.metrics.roc_curve(is_member, scores, drop_intermediate=False)``.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership (0/1 accepted), both classes present.

  Returns:
    fpr: float64[T+1] false-positive rates, non-decreasing.
    tpr: float64[T+1] true-positive rates, non-decreasing.
    thresholds: float64[T+1] ``+inf`` then the T distinct scores, decreasing.

  Raises:
    MiaInputError: on invalid inputs.
  """
  s, m, raw = _prepare(scores, is_member)
  return _roc(s, m, raw)


def roc_auc(scores: ArrayLike, is_member: ArrayLike) -> float:
  """Area under the ROC curve; equal to ``sklearn.metrics.roc_auc_score``.

  It is the probability that a random member scores higher than a random
  non-member, ties counting 1/2. 1.0 = perfect attack, 0.5 = chance.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.

  Returns:
    The AUC as a Python float in [0, 1].

  Raises:
    MiaInputError: on invalid inputs.
  """
  s, m, _ = _prepare(scores, is_member)
  return _auc(s, m)


def tpr_at_fpr(scores: ArrayLike, is_member: ArrayLike,
               fpr: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
  """Highest TPR achievable at a threshold whose empirical FPR is <= ``fpr``.

  This is the "TPR at low FPR" metric of Carlini et al. (2022), "Membership
  Inference Attacks From First Principles". With ``fpr=0`` it is the TPR at zero
  false positives (the fraction of members scoring strictly above every
  non-member). No interpolation is done between curve points.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.
    fpr: a target FPR in [0, 1], or a 1-D sequence float[K] of them.

  Returns:
    A Python float if ``fpr`` is a scalar, else float64[K] (one TPR per target).

  Raises:
    MiaInputError: on invalid inputs, including ``fpr`` outside [0, 1].
  """
  s, m, _ = _prepare(scores, is_member)
  fprs, scalar = check_fprs(fpr, "fpr")
  out = _tpr_at_fpr(s, m, fprs)
  return float(out[0]) if scalar else out


def advantage(scores: ArrayLike, is_member: ArrayLike) -> float:
  """Membership advantage: max over thresholds of ``TPR - FPR``.

  (Yeom et al., 2018.) Always in [0, 1] because the threshold ``+inf`` (TPR =
  FPR = 0) is included.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.

  Returns:
    The advantage as a Python float.

  Raises:
    MiaInputError: on invalid inputs.
  """
  s, m, _ = _prepare(scores, is_member)
  return _advantage(s, m)


def balanced_accuracy(scores: ArrayLike, is_member: ArrayLike,
                      threshold: float | None = None) -> float:
  """Balanced accuracy ``(TPR + TNR) / 2`` of the attack.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.
    threshold: predict member iff ``score >= threshold``. If ``None`` the best
      balanced accuracy over all thresholds is returned, which equals
      ``(1 + advantage(scores, is_member)) / 2``.

  Returns:
    The balanced accuracy as a Python float in [0, 1].

  Raises:
    MiaInputError: on invalid inputs (``threshold`` must be a non-NaN number).
  """
  s, m, raw = _prepare(scores, is_member)
  t = None if threshold is None else _check_threshold(threshold, "threshold")
  return _balanced_accuracy(s, m, t, raw)


def precision_recall_at(scores: ArrayLike, is_member: ArrayLike,
                        threshold: float) -> tuple[float, float]:
  """Precision and recall when ``score >= threshold`` => member.

  If no example is predicted member the precision is defined as ``1.0``.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.
    threshold: decision threshold (``+inf`` predicts nothing as member).

  Returns:
    ``(precision, recall)`` as Python floats.

  Raises:
    MiaInputError: on invalid inputs (``threshold`` must be a non-NaN number).
  """
  _, m, raw = _prepare(scores, is_member)
  t = _check_threshold(threshold, "threshold")
  pred = raw >= t
  tp = float(np.sum(pred & m))
  fp = float(np.sum(pred & ~m))
  precision = float(_precision(np.array([tp]), np.array([fp]))[0])
  recall = tp / float(np.sum(m))
  return precision, recall


def precision_recall_curve(scores: ArrayLike, is_member: ArrayLike
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact precision/recall at every distinct threshold.

  Same point set and ordering as :func:`roc_curve`: decreasing thresholds,
  starting at ``+inf`` where nothing is predicted member (precision defined as
  ``1.0``, recall 0) and ending at ``min(scores)`` (recall 1). Note this order is
  the reverse of ``sklearn.metrics.precision_recall_curve``.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.

  Returns:
    precision: float64[T+1].
    recall: float64[T+1], non-decreasing.
    thresholds: float64[T+1] ``+inf`` then the T distinct scores, decreasing.

  Raises:
    MiaInputError: on invalid inputs.
  """
  s, m, raw = _prepare(scores, is_member)
  thresholds, tps, fps, n_pos, _ = _roc_counts(s, m, raw)
  return _precision(tps, fps), tps / n_pos, thresholds


def prior_precision(tpr: float, fpr: float, prior: float) -> float:
  """Precision of an attack in a pool where a fraction ``prior`` are members.

  ``prior * tpr / (prior * tpr + (1 - prior) * fpr)``. When the denominator is 0
  (nothing is predicted member) the precision is defined as ``1.0``, matching the
  convention of :func:`precision_recall_at`.

  Args:
    tpr: true-positive rate in [0, 1].
    fpr: false-positive rate in [0, 1].
    prior: fraction of members in the pool, in [0, 1].

  Returns:
    The precision as a Python float.

  Raises:
    MiaInputError: if any argument is outside [0, 1] or not a number.
  """
  tpr = check_in_range(tpr, "tpr", 0.0, 1.0)
  fpr = check_in_range(fpr, "fpr", 0.0, 1.0)
  prior = check_in_range(prior, "prior", 0.0, 1.0)
  num = prior * tpr
  den = num + (1.0 - prior) * fpr
  return 1.0 if den == 0.0 else float(num / den)


def calibrate_threshold(scores: ArrayLike, is_member: ArrayLike, *,
                        target_precision: float | None = None,
                        target_fpr: float | None = None) -> float:
  """Chooses a decision threshold on an attacker's calibration set.

  Exactly one of ``target_precision`` / ``target_fpr`` must be given. The
  returned threshold is meant to be applied elsewhere with the rule
  ``score >= threshold`` => member.

  * ``target_fpr``: the smallest threshold whose empirical FPR on the calibration
    set is <= ``target_fpr`` (the most members flagged within the FPR budget).
    Returns ``+inf`` if even the top score is a non-member and the target is 0.
  * ``target_precision``: the smallest threshold (i.e. the largest recall) whose
    empirical precision is >= ``target_precision``. If no threshold that flags at
    least one example reaches the target, returns ``+inf`` (nothing is predicted
    member).

  Candidate thresholds are the distinct calibration scores (plus ``+inf``).

  Args:
    scores: float[N] calibration scores; higher means more likely a member.
    is_member: bool[N] calibration membership, both classes present.
    target_precision: desired precision in [0, 1].
    target_fpr: desired maximum false-positive rate in [0, 1].

  Returns:
    The threshold as a Python float (possibly ``+inf``).

  Raises:
    MiaInputError: on invalid inputs, or unless exactly one target is given.
  """
  s, m, raw = _prepare(scores, is_member)
  if (target_precision is None) == (target_fpr is None):
    raise MiaInputError(
        "target_precision/target_fpr: expected exactly one of them, got "
        f"target_precision={target_precision!r}, target_fpr={target_fpr!r}")
  thresholds, tps, fps, n_pos, n_neg = _roc_counts(s, m, raw)
  if target_fpr is not None:
    target = check_in_range(target_fpr, "target_fpr", 0.0, 1.0)
    idx = int(np.searchsorted(fps / n_neg, target, side="right")) - 1
    return float(thresholds[idx])
  target = check_in_range(target_precision, "target_precision", 0.0, 1.0)
  ok = np.flatnonzero(_precision(tps, fps) >= target)
  # Index 0 (+inf, empty prediction, precision 1.0) always qualifies.
  return float(thresholds[ok[-1]])


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], Any],
                 scores: ArrayLike, is_member: ArrayLike, *,
                 num_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[Any, Any, Any]:
  """Percentile bootstrap confidence interval of a metric.

  Each resample draws the members with replacement from the members and the
  non-members with replacement from the non-members (stratified), so every
  resample keeps both classes with their original counts. The random generator
  is ``np.random.default_rng(seed)``: results are deterministic given ``seed``.

  Args:
    metric_fn: ``metric_fn(scores, is_member)`` -> a float (or a fixed-shape
      array), e.g. :func:`roc_auc` or ``lambda s, m: tpr_at_fpr(s, m, 0.01)``.
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.
    num_resamples: number of bootstrap resamples B >= 1.
    confidence: coverage of the interval, in (0, 1).
    seed: seed for ``np.random.default_rng``.

  Returns:
    ``(point, low, high)``: the metric on the full data and the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of its
    bootstrap distribution. Python floats for a scalar metric, else arrays of the
    metric's shape. (As with any percentile bootstrap, the interval usually but
    not necessarily contains ``point``.)

  Raises:
    MiaInputError: on invalid inputs.
  """
  if not callable(metric_fn):
    raise MiaInputError(f"metric_fn: expected a callable, got {metric_fn!r}")
  _, m, s = _prepare(scores, is_member)  # metric_fn gets the scores in their own dtype
  num_resamples = check_positive_int(num_resamples, "num_resamples")
  confidence = check_in_range(confidence, "confidence", 0.0, 1.0,
                              low_open=True, high_open=True)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise MiaInputError(f"seed: expected an integer, got {seed!r}")

  point = np.asarray(metric_fn(s, m), dtype=np.float64)
  rng = np.random.default_rng(seed)
  pos = np.flatnonzero(m)
  neg = np.flatnonzero(~m)
  labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
  stats = np.empty((num_resamples,) + point.shape, dtype=np.float64)
  for b in range(num_resamples):  # Loop over resamples; each is vectorized.
    idx = np.r_[rng.choice(pos, size=pos.size, replace=True),
                rng.choice(neg, size=neg.size, replace=True)]
    stats[b] = np.asarray(metric_fn(s[idx], labels), dtype=np.float64)
  alpha = 1.0 - confidence
  low, high = np.percentile(stats, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)], axis=0)
  if point.ndim == 0:
    return float(point), float(low), float(high)
  return point, low, high


def summarize(scores: ArrayLike, is_member: ArrayLike,
              fprs: Sequence[float] = DEFAULT_FPRS) -> dict[str, Any]:
  """The standard metric summary of an attack, as a JSON-ready dict.

  Args:
    scores: float[N] attack scores; higher means more likely a member.
    is_member: bool[N] ground-truth membership, both classes present.
    fprs: target FPRs for :func:`tpr_at_fpr`, each in [0, 1].

  Returns:
    ``{"auc": float, "balanced_accuracy": float, "advantage": float,
    "tpr_at_fpr": {repr(float(fpr)): float}}`` with Python floats only, e.g.
    ``"tpr_at_fpr": {"0.1": ..., "0.01": ..., "0.001": ..., "0.0001": ...,
    "0.0": ...}``. ``balanced_accuracy`` is the best over thresholds.

  Raises:
    MiaInputError: on invalid inputs.
  """
  s, m, _ = _prepare(scores, is_member)
  fpr_arr, _ = check_fprs(fprs, "fprs")
  fpr, tpr, _ = _roc(s, m)
  adv = float(np.max(tpr - fpr))
  tprs = _tpr_at_fpr(s, m, fpr_arr)
  return {
      "auc": _auc(s, m),
      "balanced_accuracy": float((1.0 + adv) / 2.0),
      "advantage": adv,
      "tpr_at_fpr": {repr(float(f)): float(t) for f, t in zip(fpr_arr, tprs)},
  }
