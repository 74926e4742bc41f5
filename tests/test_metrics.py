"""Tests for mia_jax.metrics (host-side NumPy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from mia_jax import metrics
from mia_jax._validation import MiaInputError


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _random_data(rng, n, ties=False, shift=0.5):
  m = rng.random(n) < 0.5
  m[0], m[1] = True, False  # both classes present
  s = rng.normal(size=n) + shift * m
  if ties:
    s = np.round(s * 2) / 2  # few distinct values, many ties
  return s, m


def _gaussian(rng, n):
  """Members ~ N(1, 1), non-members ~ N(0, 1), half of each."""
  m = np.zeros(n, bool)
  m[: n // 2] = True
  s = rng.normal(size=n) + m.astype(float)
  return s, m


def _naive_rates(s, m):
  """(threshold, tpr, fpr) at every candidate threshold via an explicit loop."""
  out = []
  for t in np.r_[np.inf, np.unique(s)]:
    pred = s >= t
    out.append((t, pred[m].mean(), pred[~m].mean()))
  return out


@st.composite
def score_label_data(draw):
  n = draw(st.integers(2, 60))
  labels = draw(st.lists(st.booleans(), min_size=n, max_size=n))
  labels[0], labels[1] = True, False
  n_distinct = draw(st.integers(1, 8))
  tie_mode = draw(st.booleans())
  if tie_mode:
    vals = st.integers(0, n_distinct).map(float)
  else:
    vals = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
  scores = draw(st.lists(vals, min_size=n, max_size=n))
  return np.array(scores, dtype=np.float64), np.array(labels, dtype=bool)


# ---------------------------------------------------------------------------
# ROC / AUC.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn(ties, seed):
  s, m = _random_data(np.random.default_rng(seed), 500, ties=ties)
  fpr, tpr, thr = metrics.roc_curve(s, m)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(m, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  assert thr[0] == np.inf
  np.testing.assert_array_equal(thr[1:], sk_thr[1:])
  assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
  assert len(thr) == len(np.unique(s)) + 1
  assert np.all(np.diff(thr) < 0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(ties, seed):
  s, m = _random_data(np.random.default_rng(seed), 1000, ties=ties)
  assert metrics.roc_auc(s, m) == pytest.approx(skm.roc_auc_score(m, s), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(score_label_data())
def test_roc_and_auc_property(data):
  s, m = data
  assert metrics.roc_auc(s, m) == pytest.approx(skm.roc_auc_score(m, s), abs=1e-12)
  fpr, tpr, _ = metrics.roc_curve(s, m)
  sk_fpr, sk_tpr, _ = skm.roc_curve(m, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)


def test_roc_curve_points_match_naive_rule():
  s, m = _random_data(np.random.default_rng(3), 200, ties=True)
  fpr, tpr, thr = metrics.roc_curve(s, m)
  naive = {t: (tp, fp) for t, tp, fp in _naive_rates(s, m)}
  for f, t, th in zip(fpr, tpr, thr):
    assert naive[th] == pytest.approx((t, f))


def test_all_tied_scores():
  s = np.zeros(10)
  m = np.arange(10) < 4
  fpr, tpr, thr = metrics.roc_curve(s, m)
  np.testing.assert_array_equal(fpr, [0.0, 1.0])
  np.testing.assert_array_equal(tpr, [0.0, 1.0])
  np.testing.assert_array_equal(thr, [np.inf, 0.0])
  assert metrics.roc_auc(s, m) == 0.5
  assert metrics.tpr_at_fpr(s, m, 0.5) == 0.0
  assert metrics.advantage(s, m) == 0.0


# ---------------------------------------------------------------------------
# Orientation: higher score = more likely member.
# ---------------------------------------------------------------------------


def test_orientation():
  m = np.r_[np.ones(50, bool), np.zeros(50, bool)]
  perfect = m.astype(float) + np.linspace(0, 0.5, 100)
  assert metrics.roc_auc(perfect, m) == 1.0
  assert metrics.roc_auc(-perfect, m) == 0.0
  assert metrics.tpr_at_fpr(perfect, m, 0.0) == 1.0
  assert metrics.tpr_at_fpr(-perfect, m, 0.0) == 0.0
  assert metrics.advantage(perfect, m) == 1.0
  assert metrics.balanced_accuracy(perfect, m) == 1.0
  s, m2 = _gaussian(np.random.default_rng(0), 4000)
  s = s * 3  # members score clearly higher
  assert metrics.roc_auc(s, m2) > 0.7
  assert metrics.tpr_at_fpr(s, m2, 0.1) > 0.2
  assert metrics.tpr_at_fpr(-s, m2, 0.1) < 0.1


def test_int_labels_accepted():
  s, m = _random_data(np.random.default_rng(0), 100)
  assert metrics.roc_auc(s, m.astype(int)) == metrics.roc_auc(s, m)
  assert metrics.roc_auc(list(s), list(m)) == metrics.roc_auc(s, m)


# ---------------------------------------------------------------------------
# TPR at FPR, advantage, balanced accuracy.
# ---------------------------------------------------------------------------


def _naive_tpr_at_fpr(s, m, target):
  return max(tp for _, tp, fp in _naive_rates(s, m) if fp <= target)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_tpr_at_fpr_matches_naive(ties, seed):
  s, m = _random_data(np.random.default_rng(seed), 300, ties=ties)
  targets = [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.99, 1.0]
  got = metrics.tpr_at_fpr(s, m, targets)
  assert isinstance(got, np.ndarray) and got.shape == (len(targets),)
  for t, g in zip(targets, got):
    assert g == _naive_tpr_at_fpr(s, m, t)
    assert metrics.tpr_at_fpr(s, m, t) == g
    assert isinstance(metrics.tpr_at_fpr(s, m, t), float)
  # Exact FPR grid points: FPR == target is allowed.
  n_neg = int((~m).sum())
  for k in (1, 3, 7):
    assert metrics.tpr_at_fpr(s, m, k / n_neg) == _naive_tpr_at_fpr(s, m, k / n_neg)


@settings(max_examples=40, deadline=None)
@given(score_label_data(), st.floats(0.0, 1.0))
def test_tpr_at_fpr_property(data, target):
  s, m = data
  assert metrics.tpr_at_fpr(s, m, target) == _naive_tpr_at_fpr(s, m, target)


def test_tpr_at_zero_fpr():
  s = np.array([5.0, 4.0, 3.0, 3.0, 2.0, 1.0])
  m = np.array([1, 1, 1, 0, 0, 1], bool)
  # Members strictly above every non-member: 5, 4 (3 is tied with a non-member).
  assert metrics.tpr_at_fpr(s, m, 0.0) == 0.5


@pytest.mark.parametrize("ties", [False, True])
def test_advantage_and_balanced_accuracy(ties):
  s, m = _random_data(np.random.default_rng(5), 400, ties=ties)
  rates = _naive_rates(s, m)
  naive_adv = max(tp - fp for _, tp, fp in rates)
  naive_bacc = max((tp + 1 - fp) / 2 for _, tp, fp in rates)
  adv = metrics.advantage(s, m)
  bacc = metrics.balanced_accuracy(s, m)
  assert adv == pytest.approx(naive_adv, abs=1e-12)
  assert bacc == pytest.approx(naive_bacc, abs=1e-12)
  assert bacc == pytest.approx((1 + adv) / 2, abs=1e-12)
  # At fixed thresholds.
  for t, tp, fp in rates[::17]:
    assert metrics.balanced_accuracy(s, m, threshold=t) == pytest.approx((tp + 1 - fp) / 2)
  t = 0.3
  pred = s >= t
  want = 0.5 * (pred[m].mean() + (~pred[~m]).mean())
  assert metrics.balanced_accuracy(s, m, t) == pytest.approx(want)
  assert metrics.balanced_accuracy(s, m, np.inf) == 0.5


# ---------------------------------------------------------------------------
# Precision / recall.
# ---------------------------------------------------------------------------


def test_precision_recall_at():
  s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
  m = np.array([1, 0, 1, 1, 0, 0], bool)
  p, r = metrics.precision_recall_at(s, m, 0.7)
  assert p == pytest.approx(2 / 3) and r == pytest.approx(2 / 3)
  p, r = metrics.precision_recall_at(s, m, 0.55)
  assert p == pytest.approx(3 / 4) and r == 1.0
  # Empty positive set: precision defined as 1.0, recall 0.
  assert metrics.precision_recall_at(s, m, 1.0) == (1.0, 0.0)
  assert metrics.precision_recall_at(s, m, np.inf) == (1.0, 0.0)


@pytest.mark.parametrize("ties", [False, True])
def test_precision_recall_curve(ties):
  s, m = _random_data(np.random.default_rng(7), 300, ties=ties)
  prec, rec, thr = metrics.precision_recall_curve(s, m)
  assert thr[0] == np.inf and prec[0] == 1.0 and rec[0] == 0.0
  assert rec[-1] == 1.0
  assert np.all(np.diff(rec) >= 0) and np.all(np.diff(thr) < 0)
  for p, r, t in list(zip(prec, rec, thr))[::11]:
    assert (p, r) == pytest.approx(metrics.precision_recall_at(s, m, t))
  # Same points as sklearn (which orders by increasing threshold).
  sk_p, sk_r, sk_t = skm.precision_recall_curve(m, s)
  ours = {t: (p, r) for p, r, t in zip(prec, rec, thr)}
  for p, r, t in zip(sk_p[:-1], sk_r[:-1], sk_t):
    assert ours[t] == pytest.approx((p, r))


def test_prior_precision():
  assert metrics.prior_precision(0.5, 0.1, 0.5) == pytest.approx(0.5 / 0.6)
  assert metrics.prior_precision(0.5, 0.01, 0.01) == pytest.approx(
      0.01 * 0.5 / (0.01 * 0.5 + 0.99 * 0.01))
  assert metrics.prior_precision(0.3, 0.0, 0.2) == 1.0
  assert metrics.prior_precision(0.0, 0.0, 0.5) == 1.0  # nothing predicted
  assert metrics.prior_precision(0.0, 0.2, 0.5) == 0.0
  # prior = 1/2 equals precision on a balanced pool.
  s, m = _gaussian(np.random.default_rng(1), 2000)
  p, tpr = metrics.precision_recall_at(s, m, 1.0)
  fpr = float(np.mean(s[~m] >= 1.0))
  assert metrics.prior_precision(tpr, fpr, 0.5) == pytest.approx(p)


# ---------------------------------------------------------------------------
# Threshold calibration.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 1.0])
def test_calibrate_threshold_fpr(target):
  s, m = _random_data(np.random.default_rng(11), 500, ties=True)
  t = metrics.calibrate_threshold(s, m, target_fpr=target)
  assert np.mean(s[~m] >= t) <= target
  # It is the smallest such threshold among candidates.
  smaller = s[s < t]
  if smaller.size:
    assert np.mean(s[~m] >= smaller.max()) > target
  # Consistent with tpr_at_fpr.
  assert np.mean(s[m] >= t) == metrics.tpr_at_fpr(s, m, target)


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_calibrate_threshold_precision(target):
  s, m = _random_data(np.random.default_rng(12), 500, ties=True, shift=1.0)
  t = metrics.calibrate_threshold(s, m, target_precision=target)
  assert np.isfinite(t)
  p, _ = metrics.precision_recall_at(s, m, t)
  assert p >= target
  for t2 in np.unique(s[s < t]):
    assert metrics.precision_recall_at(s, m, t2)[0] < target


def test_calibrate_threshold_unreachable_precision_is_inf():
  s = np.array([3.0, 2.0, 1.0, 0.0])
  m = np.array([0, 1, 1, 0], bool)  # top score is a non-member
  assert metrics.calibrate_threshold(s, m, target_precision=1.0) == np.inf
  assert metrics.calibrate_threshold(s, m, target_fpr=0.0) == np.inf
  assert metrics.precision_recall_at(s, m, np.inf) == (1.0, 0.0)


def test_calibrate_threshold_generalizes():
  n = 20000
  cal_s, cal_m = _gaussian(np.random.default_rng(100), n)
  test_s, test_m = _gaussian(np.random.default_rng(200), n)
  for target in (0.7, 0.75, 0.8):  # max |dev| over 40 seeds ~0.02 at 0.8
    t = metrics.calibrate_threshold(cal_s, cal_m, target_precision=target)
    assert metrics.precision_recall_at(cal_s, cal_m, t)[0] >= target
    p, _ = metrics.precision_recall_at(test_s, test_m, t)
    assert abs(p - target) < 0.03, (target, p)
  for target in (0.01, 0.05, 0.1):
    t = metrics.calibrate_threshold(cal_s, cal_m, target_fpr=target)
    assert np.mean(cal_s[~cal_m] >= t) <= target
    fpr = np.mean(test_s[~test_m] >= t)
    assert abs(fpr - target) < 0.01, (target, fpr)


# ---------------------------------------------------------------------------
# Bootstrap.
# ---------------------------------------------------------------------------


def test_bootstrap_ci():
  s, m = _gaussian(np.random.default_rng(0), 400)
  point, low, high = metrics.bootstrap_ci(metrics.roc_auc, s, m, num_resamples=300)
  assert point == metrics.roc_auc(s, m)
  assert low <= point <= high and low < high
  assert all(isinstance(v, float) for v in (point, low, high))
  # Deterministic with the seed; different with another seed.
  again = metrics.bootstrap_ci(metrics.roc_auc, s, m, num_resamples=300)
  assert again == (point, low, high)
  other = metrics.bootstrap_ci(metrics.roc_auc, s, m, num_resamples=300, seed=1)
  assert other != (point, low, high)
  # Narrower with more data.
  s_big, m_big = _gaussian(np.random.default_rng(0), 6400)
  _, lo_b, hi_b = metrics.bootstrap_ci(metrics.roc_auc, s_big, m_big, num_resamples=300)
  assert hi_b - lo_b < 0.5 * (high - low)
  # Higher confidence -> wider interval.
  _, lo99, hi99 = metrics.bootstrap_ci(metrics.roc_auc, s, m, num_resamples=300,
                                       confidence=0.99)
  assert lo99 <= low and hi99 >= high


def test_bootstrap_ci_stratified_and_array_metric():
  # 2 members only: unstratified resampling would often lose a class.
  s = np.r_[np.array([2.0, 1.5]), np.random.default_rng(0).normal(size=50)]
  m = np.r_[np.ones(2, bool), np.zeros(50, bool)]
  seen = []

  def fn(ss, mm):
    seen.append(int(mm.sum()))
    return metrics.tpr_at_fpr(ss, mm, [0.0, 0.1])

  point, low, high = metrics.bootstrap_ci(fn, s, m, num_resamples=50)
  assert set(seen) == {2}
  assert point.shape == low.shape == high.shape == (2,)
  assert np.all(low <= high)


# ---------------------------------------------------------------------------
# Summary.
# ---------------------------------------------------------------------------


def test_summarize():
  s, m = _gaussian(np.random.default_rng(0), 3000)
  out = metrics.summarize(s, m)
  assert set(out) == {"auc", "balanced_accuracy", "advantage", "tpr_at_fpr"}
  assert list(out["tpr_at_fpr"]) == ["0.1", "0.01", "0.001", "0.0001", "0.0"]
  assert out["auc"] == metrics.roc_auc(s, m)
  assert out["advantage"] == metrics.advantage(s, m)
  assert out["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy(s, m))
  for k, v in out["tpr_at_fpr"].items():
    assert v == metrics.tpr_at_fpr(s, m, float(k))
  for v in [out["auc"], out["advantage"], out["balanced_accuracy"],
            *out["tpr_at_fpr"].values()]:
    assert type(v) is float
  json.loads(json.dumps(out))
  assert list(metrics.summarize(s, m, fprs=[0.5])["tpr_at_fpr"]) == ["0.5"]


# ---------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------

_S = np.array([0.1, 0.4, 0.35, 0.8])
_M = np.array([0, 0, 1, 1], bool)

_SCORE_FNS = [
    lambda s, m: metrics.roc_curve(s, m),
    lambda s, m: metrics.roc_auc(s, m),
    lambda s, m: metrics.tpr_at_fpr(s, m, 0.1),
    lambda s, m: metrics.balanced_accuracy(s, m),
    lambda s, m: metrics.balanced_accuracy(s, m, 0.5),
    lambda s, m: metrics.advantage(s, m),
    lambda s, m: metrics.precision_recall_at(s, m, 0.5),
    lambda s, m: metrics.precision_recall_curve(s, m),
    lambda s, m: metrics.calibrate_threshold(s, m, target_fpr=0.1),
    lambda s, m: metrics.calibrate_threshold(s, m, target_precision=0.5),
    lambda s, m: metrics.bootstrap_ci(metrics.roc_auc, s, m, num_resamples=5),
    lambda s, m: metrics.summarize(s, m),
]


@pytest.mark.parametrize("fn", _SCORE_FNS)
@pytest.mark.parametrize("bad_s, bad_m, arg", [
    (_S.reshape(2, 2), _M, "scores"),
    (np.array([0.1, np.nan, 0.3, 0.4]), _M, "scores"),
    (np.array([0.1, np.inf, 0.3, 0.4]), _M, "scores"),
    (_S[:3], _M, "is_member"),
    (_S, np.ones(4, bool), "is_member"),
    (_S, np.zeros(4, int), "is_member"),
    (_S, np.array([0, 1, 2, 1]), "is_member"),
    (_S, _M.reshape(2, 2), "is_member"),
    (np.array([]), np.array([], bool), "is_member"),
])
def test_bad_inputs(fn, bad_s, bad_m, arg):
  with pytest.raises(MiaInputError, match=arg):
    fn(bad_s, bad_m)


@pytest.mark.parametrize("bad", [-0.1, 1.5, np.nan, [0.1, 2.0], [[0.1]], "x", []])
def test_bad_fpr(bad):
  with pytest.raises(MiaInputError, match="fpr"):
    metrics.tpr_at_fpr(_S, _M, bad)


def test_bad_summarize_fprs():
  with pytest.raises(MiaInputError, match="fprs"):
    metrics.summarize(_S, _M, fprs=(0.1, -1.0))


def test_bad_calibration_targets():
  with pytest.raises(MiaInputError, match="target_precision"):
    metrics.calibrate_threshold(_S, _M)
  with pytest.raises(MiaInputError, match="target_fpr"):
    metrics.calibrate_threshold(_S, _M, target_fpr=0.1, target_precision=0.9)
  with pytest.raises(MiaInputError, match="target_fpr"):
    metrics.calibrate_threshold(_S, _M, target_fpr=1.1)
  with pytest.raises(MiaInputError, match="target_precision"):
    metrics.calibrate_threshold(_S, _M, target_precision=-0.5)


def test_bad_thresholds_and_scalars():
  with pytest.raises(MiaInputError, match="threshold"):
    metrics.balanced_accuracy(_S, _M, threshold=np.nan)
  with pytest.raises(MiaInputError, match="threshold"):
    metrics.precision_recall_at(_S, _M, "high")
  with pytest.raises(MiaInputError, match="prior"):
    metrics.prior_precision(0.5, 0.1, 1.5)
  with pytest.raises(MiaInputError, match="tpr"):
    metrics.prior_precision(-0.1, 0.1, 0.5)
  with pytest.raises(MiaInputError, match="fpr"):
    metrics.prior_precision(0.5, 2.0, 0.5)


def test_bad_bootstrap_args():
  with pytest.raises(MiaInputError, match="metric_fn"):
    metrics.bootstrap_ci("auc", _S, _M)
  with pytest.raises(MiaInputError, match="num_resamples"):
    metrics.bootstrap_ci(metrics.roc_auc, _S, _M, num_resamples=0)
  with pytest.raises(MiaInputError, match="confidence"):
    metrics.bootstrap_ci(metrics.roc_auc, _S, _M, confidence=1.0)
  with pytest.raises(MiaInputError, match="seed"):
    metrics.bootstrap_ci(metrics.roc_auc, _S, _M, seed=1.5)
