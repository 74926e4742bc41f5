"""Tests for mia_jax.attacks.lira against a loop-over-examples NumPy/SciPy reference."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

from mia_jax._validation import MiaInputError
from mia_jax.attacks import lira


# ---------------------------------------------------------------------------
# Reference implementation: plain NumPy + SciPy, one example at a time (the shape
# of the authors' score.py, without its truncation to the smallest IN/OUT count).
# ---------------------------------------------------------------------------


def _ref_stats(ref, keep, fix_variance, center):
  m, n, a = ref.shape
  mu_in, sd_in, mu_out, sd_out = (np.zeros((n, a)) for _ in range(4))
  for j in range(n):
    dat_in = ref[keep[:, j], j, :]
    dat_out = ref[~keep[:, j], j, :]
    cfn = np.median if center == "median" else np.mean
    if dat_in.shape[0]:
      mu_in[j], sd_in[j] = cfn(dat_in, 0), np.std(dat_in, 0)
    mu_out[j], sd_out[j] = cfn(dat_out, 0), np.std(dat_out, 0)
  if fix_variance:
    all_in = np.concatenate([ref[keep[:, j], j, :].ravel() for j in range(n)])
    all_out = np.concatenate([ref[~keep[:, j], j, :].ravel() for j in range(n)])
    sd_in[:] = np.std(all_in) if all_in.size else 0.0
    sd_out[:] = np.std(all_out)
  return mu_in, sd_in, mu_out, sd_out


def ref_online(target, ref, keep, fix_variance=False, center="mean", eps=1e-30):
  mu_in, sd_in, mu_out, sd_out = _ref_stats(ref, keep, fix_variance, center)
  out = []
  for j in range(ref.shape[1]):
    pr_in = -scipy.stats.norm.logpdf(target[j], mu_in[j], sd_in[j] + eps)
    pr_out = -scipy.stats.norm.logpdf(target[j], mu_out[j], sd_out[j] + eps)
    out.append(-(pr_in - pr_out).mean())  # score.py's prediction, negated: higher = member
  return np.array(out)


def ref_offline(target, ref, keep, fix_variance=False, center="mean", eps=1e-30):
  _, _, mu_out, sd_out = _ref_stats(ref, keep, fix_variance, center)
  out = []
  for j in range(ref.shape[1]):
    out.append(scipy.stats.norm.logcdf(target[j], mu_out[j], sd_out[j] + eps).mean())
  return np.array(out)


def balanced_keep(rng, m, n):
  keep = np.zeros((m, n), bool)
  for j in range(n):
    keep[rng.permutation(m)[: m // 2], j] = True
  return keep


def random_data(seed, m=8, n=40, a=3, balanced=True):
  rng = np.random.default_rng(seed)
  if balanced:
    keep = balanced_keep(rng, m, n)
  else:  # Variable IN/OUT counts per example, at least 2 of each.
    keep = rng.random((m, n)) < rng.uniform(0.25, 0.75, size=n)
    for j in range(n):
      perm = rng.permutation(m)
      keep[perm[:2], j] = True
      keep[perm[2:4], j] = False
  ref = rng.normal(size=(m, n, a)) + 2.0 * keep[:, :, None] + rng.normal(size=(1, n, 1))
  target = rng.normal(size=(n, a)) + rng.normal(size=(1, a))
  return target, ref, keep


# ---------------------------------------------------------------------------
# Equality with the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("fix_variance", [False, True])
@pytest.mark.parametrize("center", ["mean", "median"])
def test_online_matches_reference_float64(balanced, fix_variance, center):
  target, ref, keep = random_data(1, balanced=balanced)
  want = ref_online(target, ref, keep, fix_variance, center)
  with jax.enable_x64(True):
    got = lira.lira_online(target, ref, keep, fix_variance=fix_variance, center=center)
  assert got.dtype == np.float64 and got.shape == (ref.shape[1],)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("fix_variance", [False, True])
@pytest.mark.parametrize("center", ["mean", "median"])
def test_offline_matches_reference_float64(balanced, fix_variance, center):
  target, ref, keep = random_data(2, balanced=balanced)
  want = ref_offline(target, ref, keep, fix_variance, center)
  with jax.enable_x64(True):
    got = lira.lira_offline(target, ref, keep, fix_variance=fix_variance, center=center)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fix_variance", [False, True])
def test_default_float32_matches_reference(fix_variance):
  target, ref, keep = random_data(3, m=16, n=64, a=2)
  got_on = lira.lira_online(target, ref, keep, fix_variance=fix_variance)
  got_off = lira.lira_offline(target, ref, keep, fix_variance=fix_variance)
  assert got_on.dtype == np.float32
  np.testing.assert_allclose(got_on, ref_online(target, ref, keep, fix_variance),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_off, ref_offline(target, ref, keep, fix_variance),
                             rtol=1e-4, atol=1e-4)


def test_two_dim_inputs_mean_one_augmentation():
  target, ref, keep = random_data(4, a=1)
  want = lira.lira_online(target, ref, keep)
  # [N] vs [N, 1]: the same float32 arithmetic on other shapes (another vectorization)
  close = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lira.lira_online(target[:, 0], ref[:, :, 0], keep), want, **close)
  np.testing.assert_allclose(lira.lira_offline(target[:, 0], ref[:, :, 0], keep),
                             lira.lira_offline(target, ref, keep), **close)


def test_fit_score_split_equals_one_call():
  target, ref, keep = random_data(5)
  state = lira.lira_fit(ref, keep)
  assert isinstance(state, lira.LiraState) and state.mean_in.shape == (40, 3)
  np.testing.assert_allclose(lira.lira_score(state, target), lira.lira_online(target, ref, keep))
  # An online fit also scores offline; an offline fit has no IN statistics.
  np.testing.assert_allclose(lira.lira_score(state, target, online=False),
                             lira.lira_offline(target, ref, keep))
  off = lira.lira_fit(ref, keep, online=False)
  assert off.mean_in is None
  with pytest.raises(MiaInputError, match="state"):
    lira.lira_score(off, target, online=True)


# ---------------------------------------------------------------------------
# Orientation: higher = member.
# ---------------------------------------------------------------------------


def test_orientation_in_cluster_scores_higher():
  rng = np.random.default_rng(0)
  m, n = 16, 2
  keep = balanced_keep(rng, m, n)
  ref = np.where(keep, 3.0, 0.0) + 0.5 * rng.normal(size=(m, n))
  target = np.array([3.0, 0.0])  # example 0 looks IN, example 1 looks OUT
  on = lira.lira_online(target, ref, keep)
  off = lira.lira_offline(target, ref, keep)
  assert on[0] > 0 > on[1]
  assert off[0] > off[1]


def test_leave_one_out_separates_members():
  rng = np.random.default_rng(0)
  m, n = 8, 200
  keep = balanced_keep(rng, m, n)
  # Each example has its own OUT level; training on it raises the signal by 2.
  signals = rng.normal(size=(1, n, 2)) * 3 + 2.0 * keep[:, :, None] + rng.normal(size=(m, n, 2))
  for attack in lira.LOO_ATTACKS:
    scores, per_model = lira.leave_one_out(signals, keep, attack=attack)
    assert scores.shape == (m, n)
    assert [p["model"] for p in per_model] == list(range(m))
    summary = lira.aggregate_metrics(per_model)
    assert summary["num_models"] == m
    assert set(summary["tpr_at_fpr"]) == {"0.1", "0.01", "0.001", "0.0001", "0.0"}
    if attack != "global":  # Per-example calibration beats the global threshold here.
      assert summary["auc"]["mean"] > 0.75, (attack, summary["auc"])
  # Row m equals attacking model m with the other models as references.
  scores, _ = lira.leave_one_out(signals, keep, attack="online", microbatch_size=3)
  others = np.arange(m) != 5
  np.testing.assert_allclose(
      scores[5], lira.lira_online(signals[5], signals[others], keep[others]), rtol=1e-5)
  scores, _ = lira.leave_one_out(signals, keep, attack="offline", fix_variance=True)
  np.testing.assert_allclose(
      scores[2], lira.lira_offline(signals[2], signals[np.arange(m) != 2],
                                   keep[np.arange(m) != 2], fix_variance=True), rtol=1e-5)


# ---------------------------------------------------------------------------
# Augmentations.
# ---------------------------------------------------------------------------


def test_augmentations():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
  aug = np.asarray(lira.augmentations(x, shifts=lira.SHIFTS_3X3))
  assert aug.shape == (18, 3, 6, 5, 2)
  np.testing.assert_array_equal(aug[4], x)  # shift (0, 0), no flip
  np.testing.assert_array_equal(aug[9 + 4], x[:, :, ::-1])  # flipped
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  for k, (dy, dx) in enumerate(lira.SHIFTS_3X3):
    np.testing.assert_array_equal(aug[k], pad[:, 1 + dy:7 + dy, 1 + dx:6 + dx])
  zero = np.asarray(lira.augmentations(x, flip=False, shifts=[(0, 0), (2, -1)], pad_mode="zero"))
  assert zero.shape == (2, 3, 6, 5, 2)
  np.testing.assert_array_equal(zero[1, :, :4, 1:], x[:, 2:, :4])
  assert np.all(zero[1, :, 4:] == 0) and np.all(zero[1, :, :, 0] == 0)
  np.testing.assert_array_equal(np.asarray(lira.augmentations(x)), np.stack([x, x[:, :, ::-1]]))
  with pytest.raises(MiaInputError, match="x"):
    lira.augmentations(x[0])
  with pytest.raises(MiaInputError, match="shifts"):
    lira.augmentations(x, shifts=[(6, 0)])
  with pytest.raises(MiaInputError, match="pad_mode"):
    lira.augmentations(x, pad_mode="wrap")


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_online_needs_two_models():
  target, ref, keep = random_data(0)
  with pytest.raises(MiaInputError, match=r"ref: .*M=1"):
    lira.lira_online(target, ref[:1], keep[:1])


def test_example_never_in_or_never_out():
  target, ref, keep = random_data(0)
  never_in = keep.copy()
  never_in[:, [3, 7]] = False
  with pytest.raises(MiaInputError, match=r"keep: .*IN.*2 example\(s\)"):
    lira.lira_online(target, ref, never_in)
  lira.lira_offline(target, ref, never_in)  # offline needs OUT references only
  never_out = keep.copy()
  never_out[:, 5] = True
  with pytest.raises(MiaInputError, match=r"keep: .*OUT.*1 example\(s\)"):
    lira.lira_online(target, ref, never_out)
  with pytest.raises(MiaInputError, match=r"keep: .*OUT.*1 example\(s\)"):
    lira.lira_offline(target, ref, never_out)


def test_shape_dtype_and_nan_errors():
  target, ref, keep = random_data(0)
  with pytest.raises(MiaInputError, match="keep"):
    lira.lira_online(target, ref, keep[:, :-1])
  with pytest.raises(MiaInputError, match="keep"):
    lira.lira_online(target, ref, keep.astype(np.float32) * 0.5)
  with pytest.raises(MiaInputError, match="target"):
    lira.lira_online(target[:-1], ref, keep)
  with pytest.raises(MiaInputError, match="target"):
    lira.lira_online(target[:, :2], ref, keep)
  with pytest.raises(MiaInputError, match="ref"):
    lira.lira_online(target, ref[0, 0], keep)
  bad = ref.copy()
  bad[2, 3, 1] = np.nan
  with pytest.raises(MiaInputError, match="ref: .*NaN"):
    lira.lira_online(target, bad, keep)
  bad_t = target.copy()
  bad_t[0, 0] = np.inf
  with pytest.raises(MiaInputError, match="target: .*NaN/inf"):
    lira.lira_offline(bad_t, ref, keep)
  with pytest.raises(MiaInputError, match="center"):
    lira.lira_online(target, ref, keep, center="mode")
  with pytest.raises(MiaInputError, match="eps"):
    lira.lira_online(target, ref, keep, eps=-1.0)
  with pytest.raises(MiaInputError, match="fix_variance"):
    lira.lira_online(target, ref, keep, fix_variance="yes")


def test_leave_one_out_errors():
  _, ref, keep = random_data(0)
  with pytest.raises(MiaInputError, match="attack"):
    lira.leave_one_out(ref, keep, attack="shadow")
  one_in = keep.copy()
  one_in[:, 0] = False
  one_in[0, 0] = True  # a single IN model: none left when model 0 is the target
  with pytest.raises(MiaInputError, match=r"keep: .*IN.*target model is removed"):
    lira.leave_one_out(ref, one_in)
  lira.leave_one_out(ref, one_in, attack="offline")
  full = keep.copy()
  full[2] = True  # model 2 trained on everything: nothing to evaluate
  with pytest.raises(MiaInputError, match=r"keep: .*model\(s\) \[2\]"):
    lira.leave_one_out(ref, full, attack="global")
  with pytest.raises(MiaInputError, match="signals"):
    lira.leave_one_out(ref[:1], keep[:1])
  with pytest.raises(MiaInputError, match="microbatch_size"):
    lira.leave_one_out(ref, keep, microbatch_size=0)
  with pytest.raises(MiaInputError, match="per_model"):
    lira.aggregate_metrics([])
