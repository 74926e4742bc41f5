"""Tests for mia_jax.attacks.rmia, plus one end-to-end LiRA + RMIA run on trained MLPs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mia_jax import metrics
from mia_jax._validation import MiaInputError
from mia_jax.attacks import lira, rmia


# ---------------------------------------------------------------------------
# Brute-force reference: a double loop over candidates x and population samples z.
# ---------------------------------------------------------------------------


def brute_force(ptx, ptz, prx, prz, gamma, keep=None, a=None):
  m, n = prx.shape
  z = ptz.shape[0]
  scores = np.zeros(n)
  for i in range(n):
    if a is None:
      pr_x = np.mean(prx[:, i])
    else:
      out = prx[:, i] if keep is None else prx[~keep[:, i], i]
      pr_x = 0.5 * ((1 + a) * np.mean(out) + (1 - a))
    ratio_x = ptx[i] / pr_x
    count = 0
    for j in range(z):
      pr_z = np.mean(prz[:, j])
      if a is not None:
        pr_z = 0.5 * ((1 + a) * pr_z + (1 - a))
      ratio_z = ptz[j] / pr_z
      count += (ratio_x / ratio_z) >= gamma
    scores[i] = count / z
  return scores


def random_probs(seed, m=6, n=50, z=70):
  rng = np.random.default_rng(seed)
  keep = np.zeros((m, n), bool)
  for j in range(n):
    keep[rng.permutation(m)[: m // 2], j] = True
  prx = rng.beta(2, 2, size=(m, n)) ** np.where(keep, 0.3, 1.0)  # IN models more confident
  prz = rng.beta(2, 2, size=(m, z))
  ptx = rng.beta(2, 2, size=n)
  ptz = rng.beta(2, 2, size=z)
  return ptx, ptz, prx, prz, keep


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("offline_a", [None, 0.3])
def test_matches_brute_force_float64(gamma, offline_a):
  ptx, ptz, prx, prz, keep = random_probs(0)
  want = brute_force(ptx, ptz, prx, prz, gamma, keep, offline_a)
  with jax.enable_x64(True):
    got = rmia.rmia_scores(ptx, ptz, prx, prz, gamma=gamma, keep=keep, offline_a=offline_a,
                           chunk_size=16)
  assert got.dtype == np.float64 and got.shape == (50,)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("offline_a", [None, 0.3])
def test_default_float32_close_to_brute_force(gamma, offline_a):
  ptx, ptz, prx, prz, keep = random_probs(1)
  want = brute_force(ptx, ptz, prx, prz, gamma, keep, offline_a)
  got = rmia.rmia_scores(ptx, ptz, prx, prz, gamma=gamma, keep=keep, offline_a=offline_a)
  assert got.dtype == np.float32
  # float32 rounding can only flip near-exact ties.
  assert np.max(np.abs(got - want)) <= 1.0 / ptz.shape[0] + 1e-6


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_search_equals_full_comparison_exactly(chunk_size):
  rng = np.random.default_rng(2)
  # Integer-valued ratios: many exact ties (ratio_x / ratio_z == gamma) and zeros.
  rx = rng.integers(0, 6, size=64).astype(np.float32)
  rz = rng.integers(0, 6, size=40).astype(np.float32)
  for gamma in (0.5, 1.0, 2.0, 3.0):
    with np.errstate(divide="ignore", invalid="ignore"):
      want = np.mean((rx[:, None] / rz[None, :]) >= np.float32(gamma), axis=1)
    got = rmia._fraction_at_least(rx, rz, np.float32(gamma), chunk_size=chunk_size)  # noqa: SLF001
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))
  # Continuous values spanning many orders of magnitude.
  rx = np.exp(rng.normal(scale=5, size=300)).astype(np.float32)
  rz = np.exp(rng.normal(scale=5, size=257)).astype(np.float32)
  want = np.mean((rx[:, None] / rz[None, :]) >= np.float32(1.7), axis=1)
  got = rmia._fraction_at_least(rx, rz, np.float32(1.7), chunk_size=chunk_size)  # noqa: SLF001
  np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))


def test_fit_score_and_modes():
  ptx, ptz, prx, prz, keep = random_probs(3)
  state = rmia.rmia_fit(prx, prz)
  assert isinstance(state, rmia.RmiaState)
  np.testing.assert_allclose(state.pr_x, prx.mean(0), rtol=1e-6)
  np.testing.assert_array_equal(rmia.rmia_score(state, ptx, ptz),
                                rmia.rmia_scores(ptx, ptz, prx, prz))
  # Online averages every reference: keep changes nothing.
  np.testing.assert_array_equal(rmia.rmia_scores(ptx, ptz, prx, prz, keep=keep),
                                rmia.rmia_scores(ptx, ptz, prx, prz))
  # Offline with keep=None means every reference is OUT.
  np.testing.assert_array_equal(
      rmia.rmia_scores(ptx, ptz, prx, prz, offline_a=0.5),
      rmia.rmia_scores(ptx, ptz, prx, prz, offline_a=0.5, keep=np.zeros_like(keep)))
  # a = 1: Pr(x) is the plain OUT mean.
  off = rmia.rmia_fit(prx, prz, keep=keep, offline_a=1.0)
  want = np.array([prx[~keep[:, i], i].mean() for i in range(keep.shape[1])])
  np.testing.assert_allclose(off.pr_x, want, rtol=1e-6)
  # Probabilities of exactly 0 stay finite (Pr floored at the smallest normal float).
  scores = rmia.rmia_scores(np.zeros(50), np.zeros(70), np.zeros_like(prx), np.zeros_like(prz))
  assert np.all(np.isfinite(scores))


def test_orientation():
  rng = np.random.default_rng(0)
  prx = np.full((4, 2), 0.5)
  prz = rng.uniform(0.2, 0.8, size=(4, 100))
  ptz = prz.mean(0) * rng.uniform(0.5, 1.5, size=100)  # ratio(z) in [0.5, 1.5]
  scores = rmia.rmia_scores(np.array([0.99, 0.1]), ptz, prx, prz)  # ratio(x) 1.98, 0.2
  assert scores[0] > scores[1]
  assert scores[0] == 1.0 and scores[1] == 0.0


def test_errors():
  ptx, ptz, prx, prz, keep = random_probs(0)
  bad = prx.copy()
  bad[0, 0] = 1.5
  with pytest.raises(MiaInputError, match=r"p_ref_x: .*\[0, 1\]"):
    rmia.rmia_scores(ptx, ptz, bad, prz)
  bad = ptz.copy()
  bad[3] = np.nan
  with pytest.raises(MiaInputError, match="p_target_z: .*NaN"):
    rmia.rmia_scores(ptx, bad, prx, prz)
  with pytest.raises(MiaInputError, match="p_target_x"):
    rmia.rmia_scores(ptx[:-1], ptz, prx, prz)
  with pytest.raises(MiaInputError, match="p_target_z"):
    rmia.rmia_scores(ptx, ptz[:-1], prx, prz)
  with pytest.raises(MiaInputError, match="p_ref_z"):
    rmia.rmia_scores(ptx, ptz, prx, prz[:-1])
  with pytest.raises(MiaInputError, match="p_ref_x"):
    rmia.rmia_scores(ptx, ptz, prx[0], prz)
  with pytest.raises(MiaInputError, match="keep"):
    rmia.rmia_scores(ptx, ptz, prx, prz, keep=keep[:, :-1])
  for gamma in (0.0, -1.0, np.inf, "a"):
    with pytest.raises(MiaInputError, match="gamma"):
      rmia.rmia_scores(ptx, ptz, prx, prz, gamma=gamma)
  with pytest.raises(MiaInputError, match="offline_a"):
    rmia.rmia_scores(ptx, ptz, prx, prz, offline_a=1.5)
  with pytest.raises(MiaInputError, match="chunk_size"):
    rmia.rmia_scores(ptx, ptz, prx, prz, chunk_size=0)
  all_in = keep.copy()
  all_in[:, [1, 4]] = True
  with pytest.raises(MiaInputError, match=r"keep: .*OUT.*2 example\(s\)"):
    rmia.rmia_scores(ptx, ptz, prx, prz, keep=all_in, offline_a=0.3)
  with pytest.raises(MiaInputError, match="state"):
    rmia.rmia_score((prx.mean(0), prz.mean(0)), ptx, ptz)


# ---------------------------------------------------------------------------
# End to end: train reference models, attack each in turn.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_lira_and_rmia_on_trained_mlps():
  """8 MLPs memorise random labels of 100 of 200 Gaussian points each; 100 more
  points are never trained on (RMIA's population). Every model is attacked with the
  other 7 as references; members must be found well above chance."""
  from mia_jax.models import mlp
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import TrainConfig, train_models

  rng = np.random.default_rng(0)
  m, n, z, d, k = 8, 200, 100, 16, 10
  x = rng.normal(size=(n + z, d)).astype(np.float32)
  y = rng.integers(0, k, size=n + z)
  keep = np.zeros((m, n), bool)
  for j in range(n):
    keep[rng.permutation(m)[: m // 2], j] = True
  keep_all = np.concatenate([keep, np.zeros((m, z), bool)], axis=1)

  model = mlp(input_shape=(d,), num_classes=k, widths=(128,))
  config = TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=40, batch_size=50)
  result = train_models(model, x, y, keep_all, config=config, seed=0)
  sig = blackbox_signals(model, result.variables, x, y, stacked=True)
  assert sig["scaled_logit"].shape == (m, n + z)

  _, per_model = lira.leave_one_out(sig["scaled_logit"][:, :n], keep, attack="online")
  lira_auc = lira.aggregate_metrics(per_model)["auc"]["mean"]

  conf = sig["confidence"]
  aucs_on, aucs_off = [], []
  for t in range(m):
    refs = np.arange(m) != t
    args = (conf[t, :n], conf[t, n:], conf[refs, :n], conf[refs, n:])
    aucs_on.append(metrics.roc_auc(rmia.rmia_scores(*args), keep[t]))
    aucs_off.append(metrics.roc_auc(
        rmia.rmia_scores(*args, keep=keep[refs], offline_a=0.3), keep[t]))
  assert lira_auc > 0.75, lira_auc
  assert np.mean(aucs_on) > 0.75, aucs_on
  assert np.mean(aucs_off) > 0.75, aucs_off


def _privacy_meter_rmia(all_signals, population_signals, all_memberships, target_idx,
                        num_reference_models, offline_a):
  """ML Privacy Meter's current offline RMIA (modules/attacks: get_rmia_out_signals +
  run_rmia), written out independently: models are columns; the target and its paired
  model are excluded; IN values are zeroed and the largest num_reference_models values of
  each row are averaged; the ratio comparison is strict."""
  paired = target_idx + 1 if target_idx % 2 == 0 else target_idx - 1
  cols = [i for i in range(all_signals.shape[1]) if i not in (target_idx, paired)]
  cols = cols[:2 * num_reference_models]

  def out_mean(signals, memberships):
    out = signals[:, cols] * ~memberships[:, cols]
    return np.mean(-np.sort(-out, axis=1)[:, :num_reference_models], axis=1)

  mean_x = (1 + offline_a) / 2 * out_mean(all_signals, all_memberships) + (1 - offline_a) / 2
  mean_z = ((1 + offline_a) / 2 * out_mean(population_signals,
                                            np.zeros_like(population_signals, bool))
            + (1 - offline_a) / 2)
  ratio_x = all_signals[:, target_idx] / mean_x
  ratio_z = population_signals[:, target_idx] / mean_z
  return np.mean(ratio_x[:, None] / ratio_z[None, :] > 1.0, axis=1), mean_x, mean_z


def test_privacy_meter_rule_matches_an_independent_implementation_and_differs_on_z():
  rng = np.random.default_rng(5)
  n, z, m = 60, 80, 8  # 8 reference models, plus the target (0) and its pair (1)
  keep = np.zeros((m, n), bool)
  for i in range(n):
    keep[rng.permutation(m)[: m // 2], i] = True
  signals = rng.uniform(0.01, 0.99, size=(n, m + 2))
  population = rng.uniform(0.01, 0.99, size=(z, m + 2))
  memberships = np.zeros((n, m + 2), bool)
  memberships[:, 2:] = keep.T
  memberships[:, 0] = rng.random(n) < 0.5
  memberships[:, 1] = ~memberships[:, 0]
  a = 0.3
  want, mean_x, mean_z = _privacy_meter_rmia(signals, population, memberships, 0, m // 2, a)
  refs_x, refs_z = signals[:, 2:].T, population[:, 2:].T
  state = rmia.rmia_fit(refs_x, refs_z, keep=keep, offline_a=a, pr_rule="privacy_meter")
  np.testing.assert_allclose(state.pr_x, mean_x, rtol=1e-6)
  np.testing.assert_allclose(state.pr_z, mean_z, rtol=1e-6)
  # Continuous draws: no exact ties, so the paper's >= and the code's > agree.
  got = rmia.rmia_score(state, signals[:, 0], population[:, 0])
  np.testing.assert_allclose(got, want, atol=1e-6)
  # The paper's average: the same Pr(x) (each x has exactly M/2 OUT references), and a
  # Pr(z) that is the mean of all M values, below the largest half's mean.
  ours = rmia.rmia_fit(refs_x, refs_z, keep=keep, offline_a=a)
  np.testing.assert_allclose(ours.pr_x, state.pr_x, rtol=1e-6)
  np.testing.assert_allclose(ours.pr_z, 0.5 * ((1 + a) * refs_z.mean(0) + (1 - a)), rtol=1e-6)
  assert np.all(ours.pr_z < state.pr_z)
  with pytest.raises(MiaInputError, match="pr_rule"):
    rmia.rmia_fit(refs_x, refs_z, keep=keep, pr_rule="privacy_meter")  # online
  with pytest.raises(MiaInputError, match="pr_rule"):
    rmia.rmia_fit(refs_x, refs_z, keep=keep, offline_a=a, pr_rule="median")
