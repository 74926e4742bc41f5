"""Empirical lower bounds on epsilon from attack scores on canaries.

A training algorithm that is (eps, delta)-DP bounds every membership test on an example
whose inclusion was decided at random: ``TPR <= e^eps FPR + delta``. Given the scores an
attack gave to canaries that were each included with probability 1/2 (independently),
the estimators below turn the observed true- and false-positive counts into a lower bound
on the eps the training can have, holding with the stated confidence. They are Google's
``jax_privacy.auditing.CanaryScoreAuditor`` (used as a library, not re-derived):

==================  ==========================================================================
``clopper-pearson``  Clopper-Pearson intervals of TPR and FPR at every threshold, Bonferroni
                     over the thresholds (Jagielski et al. 2020; Nasr et al. 2021). Treats the
                     canaries as independent trials: exact with one canary per training run,
                     a heuristic when many canaries share one run.
``one-run``          Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1)
                     Training Run": valid for many canaries in one run (and for canaries
                     pooled over several runs), looser than the several-run bound.
``one-run-fdp``      Mahloujifar et al. (2024), "Auditing f-Differential Privacy in One
                     Run": the same setting, tighter (Gaussian trade-off curves).
==================  ==========================================================================

Not offered: the auditor's ``epsilon_from_gdp`` (jax-privacy 2.0). It takes the absolute
value of the Gaussian-DP mu it fits to *upper* confidence bounds on FPR and FNR, so where
those bounds sum past 1 (any weak attack) it reports a large mu: on in- and out-scores
drawn from one distribution (no leakage at all) it returns eps between 4 and 13 at
delta 1e-5. A lower bound that is large without leakage would be a silent wrong result.
The same flaw is described in google-deepmind/jax_privacy pull request #270 ("Fix
epsilon_from_gdp to return a valid high-confidence lower bound"); offer it once the
installed jax-privacy carries a fix (the no-leakage test in tests/test_privacy_audit.py
is the check to extend).

Higher score = member, as everywhere in mia-jax (and as the auditor expects).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from mia_jax._validation import MiaInputError, check_in_range

ESTIMATORS = ("clopper-pearson", "one-run", "one-run-fdp")
"""The estimators an audit can report (all by default)."""

ESTIMATOR_NOTES = {
    "clopper-pearson": "independent trials (exact with one canary per run)",
    "one-run": "valid for many canaries in one run (Steinke et al. 2023)",
    "one-run-fdp": "valid for many canaries in one run (Mahloujifar et al. 2024)",
}


def require_auditing():
  """jax-privacy's auditing module, or a MiaInputError that says how to install it."""
  try:
    from jax_privacy import auditing
  except ImportError as e:
    raise MiaInputError(
        "epsilon lower bounds need jax-privacy (Google's JAX DP library; its auditing "
        "module holds the estimators): pip install 'mia-jax[dp]'") from e
  return auditing


def check_estimators(names: Sequence[str] | str) -> tuple[str, ...]:
  """The estimator names, each known, no repeats."""
  if isinstance(names, str):
    names = [t.strip() for t in names.split(",") if t.strip()]
  names = tuple(names)
  if not names:
    raise MiaInputError(f"estimators: expected at least one of {ESTIMATORS}")
  unknown = [n for n in names if n not in ESTIMATORS]
  if unknown:
    raise MiaInputError(f"estimators: unknown {unknown}; expected names from {ESTIMATORS}")
  if len(set(names)) != len(names):
    raise MiaInputError(f"estimators: {list(names)} names one twice")
  return names


def check_confidence(confidence: float) -> float:
  """A confidence the estimators accept: in (0.5, 1) (Clopper-Pearson's two one-sided
  intervals each get half of the failure probability)."""
  return check_in_range(confidence, "confidence", 0.5, 1.0, low_open=True, high_open=True)


def _threshold(auditor, method: str, significance: float, delta: float) -> float | None:
  """The threshold the Bonferroni-corrected estimate used (the score above which a
  canary is guessed IN). jax-privacy's public estimators return only epsilon; the
  per-threshold search they run returns the threshold too. A library change that
  breaks this is caught by the tests (the epsilon found here must equal the public
  one); here it only loses the threshold."""
  try:
    n = len(auditor._fn_counts)  # the number of thresholds Bonferroni divides by
    _, thr = getattr(auditor, method)(significance / n, delta, True, None)
    return float(thr) if np.isfinite(thr) else None
  except Exception:  # noqa: BLE001 - the private search is best effort
    return None


def epsilon_lower_bounds(in_scores, out_scores, *, estimators: Sequence[str] = ESTIMATORS,
                         confidence: float = 0.95, delta: float = 1e-5) -> dict[str, Any]:
  """Empirical epsilon lower bounds from canary scores.

  Args:
    in_scores: float[n_in] scores of the canaries that were included (higher = member).
    out_scores: float[n_out] scores of the canaries that were left out.
    estimators: names from :data:`ESTIMATORS`.
    confidence: the probability the bound holds, in (0.5, 1).
    delta: the DP delta the bound is stated at, in (0, 1).

  Returns:
    ``{estimator: {"epsilon": float, "threshold": float | None}}``: the threshold is the
    score at and above which canaries were guessed IN (None when the bound is 0, or where
    the library does not expose it: ``one-run-fdp``).

  Raises:
    MiaInputError: no canary on one side, NaN scores, a bad estimator, confidence or delta.
  """
  estimators = check_estimators(estimators)
  confidence = check_confidence(confidence)
  delta = check_in_range(delta, "delta", 0.0, 1.0, low_open=True, high_open=True)
  ins = np.asarray(in_scores, np.float64).ravel()
  outs = np.asarray(out_scores, np.float64).ravel()
  if ins.size == 0 or outs.size == 0:
    raise MiaInputError(f"canaries: epsilon bounds need included and excluded canaries; got "
                        f"{ins.size} included and {outs.size} excluded")
  if np.isnan(ins).any() or np.isnan(outs).any():
    raise MiaInputError("scores: NaN among the canary scores; an attack that cannot score a "
                        "canary cannot audit with it")
  auditing = require_auditing()
  auditor = auditing.CanaryScoreAuditor(ins, outs)
  alpha = 1.0 - confidence
  out: dict[str, Any] = {}
  for name in estimators:
    if name == "clopper-pearson":
      eps = auditor.epsilon_clopper_pearson(alpha, delta)
      thr = _threshold(auditor, "_epsilon_clopper_pearson_all_thresholds", alpha, delta)
    elif name == "one-run":
      eps = auditor.epsilon_one_run(alpha, delta)
      thr = _threshold(auditor, "_epsilon_one_run_all_thresholds", alpha, delta)
    else:
      eps = auditor.epsilon_one_run_fdp(alpha, delta)
      thr = None  # its search is the one-run one with another test; not exposed
    out[name] = {"epsilon": float(eps), "threshold": thr if eps > 0 else None}
  return out


def audit_entry(canary_scores: np.ndarray, included: np.ndarray, *, estimators, confidence,
                delta) -> dict[str, Any]:
  """One attack's entry in ``results["privacy_audit"]["attacks"]``: the bounds of
  :func:`epsilon_lower_bounds` on canary scores ``float[R, N]`` pooled over R runs
  (``included`` bool[R, N]), and the attack's AUC on them."""
  from mia_jax.metrics import roc_auc
  s = np.asarray(canary_scores, np.float64)
  inc = np.asarray(included, bool)
  if s.shape != inc.shape:
    raise MiaInputError(f"canary scores: shape {s.shape} does not match the inclusion "
                        f"matrix's {inc.shape}")
  flat_s, flat_in = s.ravel(), inc.ravel()
  return {"epsilon": epsilon_lower_bounds(flat_s[flat_in], flat_s[~flat_in],
                                          estimators=estimators, confidence=confidence,
                                          delta=delta),
          "auc": float(roc_auc(flat_s, flat_in)),
          "guesses": int(flat_s.size)}


def best_epsilon(entry: Mapping[str, Any]) -> tuple[str | None, float]:
  """(estimator, epsilon) of the largest bound in an attack's entry."""
  best: tuple[str | None, float] = (None, 0.0)
  for name, v in entry.get("epsilon", {}).items():
    if v["epsilon"] > best[1]:
      best = (name, float(v["epsilon"]))
  return best


def theoretical(eps: Any) -> float:
  """A theoretical epsilon from results (a number, ``"inf"`` or None) as a float."""
  if eps is None:
    return math.inf
  return math.inf if eps == "inf" else float(eps)
