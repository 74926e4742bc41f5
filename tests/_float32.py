"""Tolerances for float32 results of computations that differ only in how they are
batched, chunked, stacked, sharded or threaded.

Such computations do the same arithmetic in another order: XLA picks the vectorization
and the reduction tree from the shapes it sees (and XLA:CPU splits work over threads by
the machine's core count and load), so the results agree only to float32 rounding, never
bit for bit. Comparisons of the same program on the same inputs may stay exact; every
other comparison uses the bounds below.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one unit of float32 relative rounding


def reduction_rtol(num_terms: int, *, safety: float = 4.0) -> float:
  """Relative tolerance for a float32 sum (or norm, mean) of ``num_terms`` terms of one
  sign, computed in two different orders.

  Higham's bound for recursive summation, |fl(sum) - sum| <= (n - 1) eps sum |x_i|, holds
  for every summation order (pairwise and blocked orders are tighter), so two orders
  differ by at most 2 (n - 1) eps relative to sum |x_i|; ``safety`` covers the rounding
  of the terms themselves (each a product or a small dot product).
  """
  return safety * max(int(num_terms), 1) * EPS32


def auc_slack(scores, is_member, *, rtol: float, atol: float) -> float:
  """The largest change of the ROC AUC that perturbing every score by at most
  ``atol + rtol * |score|`` can cause.

  AUC is the fraction of (member, non-member) pairs ranked correctly (ties count 1/2);
  a perturbation can reorder only the pairs whose scores are within the sum of their two
  tolerances, and each reordered pair moves the AUC by at most 1 / (P * N). So two
  float32 computations of the same scores may differ in AUC by this much, and no more.
  """
  s = np.asarray(scores, np.float64)
  m = np.asarray(is_member, bool)
  tol = atol + rtol * np.abs(s)
  sp, sn, tp, tn = s[m], s[~m], tol[m], tol[~m]
  close = np.abs(sp[:, None] - sn[None, :]) <= tp[:, None] + tn[None, :]
  return float(close.sum()) / (sp.size * sn.size) + 1e-12


def assert_auc_close(got_auc: float, want_scores, is_member, *, rtol: float, atol: float):
  """``got_auc`` equals the AUC of ``want_scores`` up to :func:`auc_slack`."""
  from mia_jax.metrics import roc_auc
  want = roc_auc(np.asarray(want_scores, np.float64), np.asarray(is_member, bool))
  slack = auc_slack(want_scores, is_member, rtol=rtol, atol=atol)
  assert abs(got_auc - want) <= slack, (got_auc, want, slack)
