"""Tests for the Shokri et al. shadow-model attack and its attack-model classifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.attacks import _classifier
from mia_jax.attacks.shokri import (ShokriConfig, ShokriState, attack_features, attack_training_set,
                                    fit_shokri, predict_probs, score_shokri, shadow_data)
from mia_jax.metrics import roc_auc
from mia_jax.models import mlp
from mia_jax.train import TrainConfig, train_models


# -- classifiers ----------------------------------------------------------------------------

def test_grouped_fit_equals_separate_fits():
  rng = np.random.default_rng(0)
  sizes = (30, 50)
  feats, labels = [], []
  for g, m in enumerate(sizes):
    x = rng.normal(size=(m, 2)).astype(np.float32)
    feats.append(x)
    labels.append((x[:, g] + 0.5 * rng.normal(size=m)) > 0)
  fx = np.zeros((2, 50, 2), np.float32)
  fy = np.zeros((2, 50), bool)
  mask = np.zeros((2, 50), bool)
  for g, m in enumerate(sizes):
    fx[g, :m], fy[g, :m], mask[g, :m] = feats[g], labels[g], True
  fx[0, 30:] = 1e3  # padding values must not matter
  grouped = _classifier.fit_binary_groups(fx, fy, mask, steps=300, seed=3)
  pred = np.asarray(_classifier.predict_binary_groups("logistic", grouped, fx))
  for g, m in enumerate(sizes):
    # Logistic regression starts from zeros (no key dependence): group g fitted in the
    # padded batch equals group g fitted alone.
    alone = _classifier.fit_binary(feats[g], labels[g], steps=300, seed=3)
    want = np.asarray(_classifier.predict_binary("logistic", alone, feats[g]))
    np.testing.assert_allclose(pred[g, :m], want, rtol=1e-3, atol=1e-3)
    one = jax.tree.map(lambda a, g=g: a[g], grouped)
    np.testing.assert_allclose(_classifier.predict_binary("logistic", one, feats[g]), want,
                               rtol=1e-3, atol=1e-3)
    assert np.mean((want > 0) == labels[g]) > 0.75


def test_classifier_errors():
  x = np.zeros((4, 2), np.float32)
  y = np.array([True, False, True, False])
  with pytest.raises(MiaInputError, match="kind"):
    _classifier.fit_binary(x, y, kind="svm")
  with pytest.raises(MiaInputError, match="labels"):
    _classifier.fit_binary(x, np.ones(4, bool))
  with pytest.raises(MiaInputError, match="features"):
    _classifier.fit_binary(np.zeros(4), y)
  with pytest.raises(MiaInputError, match="steps"):
    _classifier.fit_binary(x, y, steps=0)
  with pytest.raises(MiaInputError, match="labels"):
    _classifier.fit_binary_groups(x[None], np.ones((1, 4), bool), np.ones((1, 4), bool))
  params = {"mean": np.zeros(2), "scale": np.ones(2), "w": np.zeros(2), "b": np.zeros(())}
  with pytest.raises(MiaInputError, match="features"):
    _classifier.predict_binary("logistic", params, np.zeros((3, 5)))


# -- per-class routing ------------------------------------------------------------------------

def _opposite_classes(n=120, s=1, seed=0):
  """K=2 shadow predictions where membership shows in opposite directions per class.

  Class 0: members have p_0 in (0.8, 1), non-members p_0 in (0.5, 0.8).
  Class 1: members have p_0 in (0.5, 0.8), non-members p_0 in (0.8, 1).
  Over both classes, members and non-members have the same distribution of the vector,
  so one class-agnostic model cannot separate them; per-class models can.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  keep = rng.random((s, n)) < 0.5
  hi = rng.uniform(0.8, 1.0, (s, n))
  lo = rng.uniform(0.5, 0.8, (s, n))
  p0 = np.where(keep == (labels == 0), hi, lo)
  probs = np.stack([p0, 1 - p0], -1).astype(np.float32)
  return probs, labels, keep


def test_per_class_models_route_by_label():
  probs, labels, keep = _opposite_classes()
  opts = dict(kind="logistic", steps=300, learning_rate=0.05, seed=0)  # as the test above
  state = fit_shokri(probs, labels, keep, per_class=True, **opts)
  assert isinstance(state, ShokriState)
  assert jax.tree.leaves(state.params)[0].shape[0] == 2  # one model per class
  # Fresh target-like records: reuse shadow 0's vectors as the "target".
  target, member = probs[0], keep[0]
  scores = score_shokri(state, target, labels)
  # Each class's records are scored by a model fitted on that class's records alone.
  data = attack_training_set(probs, labels, keep, seed=0)
  for c in (0, 1):
    rows = data.labels == c
    alone = _classifier.fit_binary(data.probs[rows], data.is_member[rows], **opts)
    want = np.asarray(_classifier.predict_binary("logistic", alone, target[labels == c]))
    np.testing.assert_allclose(scores[labels == c], want, rtol=1e-3, atol=1e-3)
  # The two class models point in opposite directions, so routing matters.
  assert roc_auc(scores, member) > 0.95
  swapped = score_shokri(state, target, 1 - labels)
  assert roc_auc(swapped, member) < 0.2
  single = fit_shokri(probs, labels, keep, per_class=False, **opts)
  assert roc_auc(score_shokri(single, target, labels), member) < 0.75


def test_attack_training_set_is_balanced_per_shadow():
  probs, labels, keep = _opposite_classes(n=101, s=3)
  data = attack_training_set(probs, labels, keep, seed=1)
  for s in range(3):
    rows = data.shadow == s
    m = min(keep[s].sum(), (~keep[s]).sum())
    assert data.is_member[rows].sum() == m and (~data.is_member[rows]).sum() == m
    np.testing.assert_array_equal(data.is_member[rows], keep[s, data.index[rows]])
    np.testing.assert_array_equal(data.probs[rows], probs[s, data.index[rows]])
  unbalanced = attack_training_set(probs, labels, keep, balance=False)
  assert unbalanced.is_member.size == keep.size


def test_attack_features():
  p = jnp.array([[0.2, 0.7, 0.1]])
  np.testing.assert_allclose(attack_features(p, "raw"), p)
  np.testing.assert_allclose(attack_features(p, "sorted"), [[0.7, 0.2, 0.1]])
  np.testing.assert_allclose(attack_features(jnp.array([[0.0, 1.0]]), "raw", log_probs=True),
                             [[np.log(1e-12), 0.0]], rtol=1e-6)


def test_shokri_errors():
  probs, labels, keep = _opposite_classes(n=20)
  with pytest.raises(MiaInputError, match="keep"):
    fit_shokri(probs, labels, keep[:, :-1])
  with pytest.raises(MiaInputError, match="shadow_probs"):
    fit_shokri(probs * 5, labels, keep)
  with pytest.raises(MiaInputError, match="labels"):
    fit_shokri(probs, labels + 5, keep)
  with pytest.raises(MiaInputError, match="feature"):
    fit_shokri(probs, labels, keep, feature="top")
  only_class0_in = keep & (labels == 0)
  with pytest.raises(MiaInputError, match=r"class\(es\) \[1\]"):
    fit_shokri(probs, labels, only_class0_in, balance=False)
  params = {"mean": np.zeros((2, 2)), "scale": np.ones((2, 2)), "w": np.zeros((2, 2)),
            "b": np.zeros(2)}
  state = ShokriState(params, ShokriConfig("logistic", 0, "raw", False, True, 2))
  np.testing.assert_array_equal(score_shokri(state, probs[0], labels), 0.0)
  with pytest.raises(MiaInputError, match="probs"):
    score_shokri(state, np.ones((3, 4)) / 4, np.zeros(3, int))
  with pytest.raises(MiaInputError, match="labels"):
    score_shokri(state, probs[0], labels[:5])
  with pytest.raises(MiaInputError, match="state"):
    score_shokri(state.params, probs[0], labels)


# -- end to end -------------------------------------------------------------------------------

def test_end_to_end_overfit_purchase_like():
  """4 shadow MLPs and a separately trained target (disjoint data) on purchase-like
  binary data (random prototypes + heavy bit resampling, so the models overfit)."""
  rng = np.random.default_rng(0)
  k, d, n = 4, 50, 100
  proto = rng.random((k, d)) < 0.5
  y = rng.integers(0, k, 4 * n).astype(np.int32)
  resample = rng.random((4 * n, d)) < 0.7
  x = np.where(resample, rng.random((4 * n, d)) < 0.5, proto[y]).astype(np.float32)
  # Rows [0, 2n): the target's pool (first n are its members); [2n, 4n): attacker's data.
  keep = np.zeros((5, 4 * n), bool)
  keep[0, :n] = True
  for s in range(1, 5):
    keep[s, 2 * n + rng.permutation(2 * n)[:n]] = True
  model = mlp(input_shape=(d,), num_classes=k, widths=(128,))
  cfg = TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=15, batch_size=25)
  # One stacked call trains the target (model 0) and the shadows (1..4); each model sees
  # only its own rows, so the target is trained separately from the shadows.
  res = train_models(model, x, y, keep, config=cfg, seed=0)
  probs = predict_probs(model, res.variables, x, stacked=True)
  target_probs, shadow_probs = probs[0, :2 * n], probs[1:, 2 * n:]
  member = keep[0, :2 * n]
  assert np.mean(target_probs[:n].argmax(1) == y[:n]) > 0.95  # overfit: train acc ~1
  state = fit_shokri(shadow_probs, y[2 * n:], keep[1:, 2 * n:], per_class=True, kind="mlp")
  scores = score_shokri(state, target_probs, y[:2 * n])
  assert roc_auc(scores, member) > 0.6
  # predict_probs through a defended API (the attacker queries shadows the same way).
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  lab = predict_probs(model, res.variables, x, stacked=True, defenses=["label-only"])
  np.testing.assert_array_equal(lab.argmax(-1), probs.argmax(-1))
  np.testing.assert_array_equal(lab.sum(-1), 1.0)
  with pytest.raises(MiaInputError, match="top-k"):
    predict_probs(model, res.variables, x, stacked=True, defenses=["top-k=5"])


# -- shadow data ------------------------------------------------------------------------------

def _binary_data(n=300, d=40, k=3, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n).astype(np.int32)
  proto = rng.random((k, d)) < 0.3
  x = np.where(rng.random((n, d)) < 0.1, 1 - proto[y], proto[y]).astype(np.float32)
  return x, y


def test_shadow_data_real_and_noisy():
  x, y = _binary_data()
  real = shadow_data("real", num_records=100, x=x, y=y, seed=1)
  assert real.x.shape == (100, 40)
  rows = [np.flatnonzero((x == r).all(1) & (y == c)) for r, c in zip(real.x, real.y)]
  assert all(r.size for r in rows)  # every record is a real (record, label) pair
  # Uniform random bits: records are ~20 bits apart, so each noisy record's source is
  # its nearest real record, with exactly 8 = 0.2 * 40 bits flipped.
  x = (np.random.default_rng(1).random((300, 40)) < 0.5).astype(np.float32)
  noisy = shadow_data("noisy", num_records=50, x=x, y=y, noise=0.2, seed=2)
  dist = np.abs(noisy.x[:, None, :] - x[None]).sum(-1)  # [50, 300]
  nearest = dist.argmin(1)
  np.testing.assert_array_equal(dist.min(1), 8)
  np.testing.assert_array_equal(noisy.y, y[nearest])
  # Real-valued features: Gaussian noise with std noise * std_j (here 0.02 * 2).
  xc = (2.0 * np.random.default_rng(0).normal(size=(100, 3))).astype(np.float32)
  cont = shadow_data("noisy", num_records=100, x=xc, y=np.zeros(100, int), noise=0.02, seed=0)
  dist = np.linalg.norm(cont.x[:, None, :] - xc[None], axis=-1)
  diff = cont.x - xc[dist.argmin(1)]
  assert np.all(dist.min(1) > 0)
  np.testing.assert_allclose(diff.std(0), 0.02 * xc.std(0), rtol=0.3)


def test_shadow_data_marginals():
  x, y = _binary_data(n=600)
  m = shadow_data("marginals", num_records=6000, x=x, y=y, seed=3)
  assert set(np.unique(m.x)) <= {0.0, 1.0}
  np.testing.assert_allclose(np.bincount(m.y) / 6000, np.bincount(y) / 600, atol=0.03)
  for c in range(3):  # class-conditional feature marginals match
    np.testing.assert_allclose(m.x[m.y == c].mean(0), x[y == c].mean(0), atol=0.06)
  u = shadow_data("marginals", num_records=6000, x=x, y=y, seed=3, class_conditional=False)
  np.testing.assert_allclose(u.x.mean(0), x.mean(0), atol=0.04)


def test_shadow_data_synthetic():
  w = np.full((3, 30), -0.5, np.float32)
  for c in range(3):
    w[c, 10 * c:10 * (c + 1)] = 1.0
  wj = jnp.asarray(w)

  def target(xb):
    return jax.nn.softmax(xb @ wj.T, axis=-1)

  out = shadow_data("synthetic", num_records=12, num_features=30, query_fn=target, seed=0,
                    synthesis_options=dict(k_max=10, conf_min=0.7, rej_max=5, max_iters=200))
  assert 0 < out.x.shape[0] <= 12 and out.x.shape[1] == 30
  p = np.asarray(target(jnp.asarray(out.x)))
  np.testing.assert_array_equal(p.argmax(1), out.y)
  with pytest.raises(MiaInputError, match="synthesis_options"):
    shadow_data("synthetic", num_records=3, num_features=30, query_fn=target,
                synthesis_options=dict(key=0))


def test_shadow_data_errors():
  x, y = _binary_data(n=20)
  with pytest.raises(MiaInputError, match="source"):
    shadow_data("stolen", num_records=5, x=x, y=y)
  with pytest.raises(MiaInputError, match="x"):
    shadow_data("real", num_records=5)
  with pytest.raises(MiaInputError, match="num_records"):
    shadow_data("real", num_records=21, x=x, y=y)
  with pytest.raises(MiaInputError, match="noise"):
    shadow_data("noisy", num_records=5, x=x, y=y, noise=1.5)
  with pytest.raises(MiaInputError, match="y"):
    shadow_data("noisy", num_records=5, x=x, y=y[:3])
  with pytest.raises(MiaInputError, match="query_fn"):
    shadow_data("synthetic", num_records=5, num_features=4)
