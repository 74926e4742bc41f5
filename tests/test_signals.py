"""Tests for mia_jax.signals against NumPy float64 references written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.models import make_model, stack_variables
from mia_jax.signals import (SIGNAL_NAMES, blackbox_signals, confidence, correctness, entropy, loss,
                             modified_entropy, predict_logits, scaled_logit, signals_from_logits)

# -- NumPy float64 references ---------------------------------------------------------------


def ref_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_signals(logits, y):
  """Textbook formulas, one example at a time (float64)."""
  logits = np.asarray(logits, np.float64)
  out = {k: np.zeros(logits.shape[:-1]) for k in SIGNAL_NAMES}
  for idx in np.ndindex(*logits.shape[:-1]):
    z, t = logits[idx], int(np.asarray(y)[idx])
    p = np.exp(ref_log_softmax(z))
    out["loss"][idx] = -np.log(p[t])
    out["confidence"][idx] = p[t]
    out["scaled_logit"][idx] = np.log(p[t]) - np.log(1.0 - p[t])
    out["entropy"][idx] = -np.sum(p * np.log(p))
    # Song & Mittal (2021), Mentr(F(x), y):
    #   -(1 - p_y) log p_y - sum_{y' != y} p_y' log(1 - p_y')
    mentr = -(1.0 - p[t]) * np.log(p[t])
    for j in range(len(z)):
      if j != t:
        mentr -= p[j] * np.log(1.0 - p[j])
    out["modified_entropy"][idx] = mentr
    out["correctness"][idx] = float(np.argmax(z) == t)
  return out


def moderate_logits(seed=0, shape=(37, 5), scale=3.0):
  rng = np.random.default_rng(seed)
  z = (scale * rng.standard_normal(shape)).astype(np.float32)
  y = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
  return z, y


FUNCS = {
    "loss": loss, "confidence": confidence, "scaled_logit": scaled_logit,
    "entropy": lambda z, y: entropy(z), "modified_entropy": modified_entropy,
    "correctness": correctness,
}

RTOL = dict(rtol=2e-5, atol=2e-6)

# Every public signal function, jitted together (one compile per shape; eager dispatch of
# many small ops is what makes CPU tests slow).
all_signals = jax.jit(lambda z, y: {k: f(z, y) for k, f in FUNCS.items()})
jit_signals_from_logits = jax.jit(signals_from_logits)


def test_signal_functions_match_reference():
  z, y = moderate_logits()
  ref = ref_signals(z, y)
  got = all_signals(z, y)
  for name in SIGNAL_NAMES:
    assert got[name].shape == y.shape
    np.testing.assert_allclose(got[name], ref[name], **RTOL, err_msg=name)


def test_signals_from_logits_broadcasts_over_models():
  z, _ = moderate_logits(seed=1, shape=(3, 11, 4))
  y = np.random.default_rng(2).integers(0, 4, (3, 11)).astype(np.int32)
  got = jit_signals_from_logits(z, y)
  assert set(got) == set(SIGNAL_NAMES)
  ref = ref_signals(z, y)
  for k in SIGNAL_NAMES:
    assert got[k].shape == (3, 11)
    np.testing.assert_allclose(got[k], ref[k], **RTOL, err_msg=k)


def test_signal_identities():
  """Relations that hold exactly: loss = -log(confidence); scaled_logit = logit(p_y)."""
  z, y = moderate_logits(seed=3)
  s = {k: np.asarray(v, np.float64) for k, v in all_signals(z, y).items()}
  np.testing.assert_allclose(s["loss"], -np.log(s["confidence"]), rtol=1e-5, atol=1e-6)
  p = s["confidence"]
  np.testing.assert_allclose(s["scaled_logit"], np.log(p) - np.log1p(-p), rtol=1e-4, atol=1e-4)
  assert np.all(s["entropy"] >= -1e-6) and np.all(s["entropy"] <= np.log(5) + 1e-5)
  assert np.all(s["modified_entropy"] >= -1e-6)


def test_scaled_logit_extreme_logits():
  """z_y 100 above the rest: p_y rounds to 1 in float32 and the naive formula overflows,
  but the exact answer is z_y - logsumexp(others) = 100 - log(K - 1)."""
  k = 4
  z = np.zeros((3, k), np.float32)
  z[0, 0] = 100.0            # confidently right
  z[1, 2] = 100.0            # confidently wrong (y = 0)
  z[2] = [30.0, -50.0, 0.0, 1.0]
  y = np.array([0, 0, 0], np.int32)
  expected = np.array([
      100.0 - np.log(k - 1),
      0.0 - np.logaddexp.reduce([0.0, 100.0, 0.0]),
      30.0 - np.logaddexp.reduce([-50.0, 0.0, 1.0]),
  ])
  # The naive float32 formula really does break here.
  with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
    e = np.exp(z - z.max(-1, keepdims=True))
    p32 = e / e.sum(-1, keepdims=True)
    naive = np.log(p32[np.arange(3), y]) - np.log(np.float32(1) - p32[np.arange(3), y])
  assert not np.isfinite(naive[0])
  out = all_signals(z, y)
  got = np.asarray(out["scaled_logit"], np.float64)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # And the other signals stay finite on these logits.
  for name, v in out.items():
    assert np.all(np.isfinite(v)), name
  ref_loss = [np.logaddexp.reduce(z[i].astype(np.float64)) - z[i, y[i]] for i in range(3)]
  np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["correctness"], [1.0, 0.0, 1.0])


def test_modified_entropy_confidently_wrong():
  """A confidently WRONG prediction: p_y' rounds to 1 in float32, so log(1 - p_y') must
  come from the other classes' log-probabilities (a clamped log1p(-p) saturates at
  log(1e-7) and gave 35.9 instead of 39.3 for [0, 20, 0], 55.9 instead of 80.0 for
  [0, 40, -5])."""
  z = np.array([[0.0, 20.0, 0.0], [0.0, 40.0, -5.0]], np.float32)
  y = np.array([0, 0], np.int32)
  ref = ref_signals(z[:1].astype(np.float64), y[:1])["modified_entropy"]
  # ref via the exact identity log(1 - p_k) = logsumexp_{j != k} log p_j (float64)
  logp = ref_log_softmax(z)
  exact = []
  for i in range(2):
    m = -(1 - np.exp(logp[i, 0])) * logp[i, 0]
    for j in (1, 2):
      m -= np.exp(logp[i, j]) * np.logaddexp.reduce(np.delete(logp[i], j))
    exact.append(m)
  np.testing.assert_allclose(ref[:1], exact[:1], rtol=1e-6)
  got = np.asarray(all_signals(z, y)["modified_entropy"])
  np.testing.assert_allclose(got, exact, rtol=1e-3)


# -- blackbox_signals / predict_logits -------------------------------------------------------

N, D, K, M = 37, 12, 4, 3


def np_variables(model, seed):
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if "kernel" in jax.tree_util.keystr(path):
      return (2.0 * rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(s.dtype)
    return (0.5 * rng.standard_normal(s.shape)).astype(s.dtype)

  abstract = jax.eval_shape(model.init, jax.random.key(0))  # shapes only, no compile
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def setup():
  model = make_model("mlp", input_shape=(D,), num_classes=K, widths=(8,))
  trees = [np_variables(model, s) for s in range(M)]
  rng = np.random.default_rng(9)
  x = rng.standard_normal((N, D)).astype(np.float32)
  y = rng.integers(0, K, N).astype(np.int32)
  return model, trees, stack_variables(trees), x, y


def test_blackbox_signals_match_reference(setup):
  model, trees, _, x, y = setup
  out = blackbox_signals(model, trees[0], x, y, microbatch_size=8)
  assert set(out) == {"logits", *SIGNAL_NAMES}
  assert out["logits"].shape == (N, K)
  logits = np.asarray(model.apply(trees[0], x))
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-6)
  ref = ref_signals(logits, y)
  for k in SIGNAL_NAMES:
    assert out[k].shape == (N,)
    np.testing.assert_allclose(out[k], ref[k], **RTOL, err_msg=k)


def test_blackbox_signals_stacked_equals_loop(setup):
  model, trees, stacked, x, y = setup
  out = blackbox_signals(model, stacked, x, y, microbatch_size=8, stacked=True)
  for k, v in out.items():
    assert v.shape[:2] == (M, N), k
  for m in range(M):
    one = blackbox_signals(model, trees[m], x, y, microbatch_size=8)
    for k in one:
      np.testing.assert_allclose(out[k][m], one[k], rtol=1e-5, atol=1e-6, err_msg=f"{k}[{m}]")


def test_microbatch_size_does_not_change_results(setup):
  """N = 37 is not a multiple of 8: the padded last chunk is dropped."""
  model, trees, stacked, x, y = setup
  full = blackbox_signals(model, stacked, x, y, microbatch_size=N, stacked=True)
  got = blackbox_signals(model, stacked, x, y, microbatch_size=8, stacked=True)
  for k in full:
    assert got[k].shape == full[k].shape
    np.testing.assert_allclose(got[k], full[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_predict_logits_shapes(setup):
  model, trees, stacked, x, _ = setup
  one = predict_logits(model, trees[1], x, microbatch_size=8)
  assert one.shape == (N, K) and isinstance(one, np.ndarray)
  np.testing.assert_allclose(one, model.apply(trees[1], x), rtol=1e-5, atol=1e-6)
  many = predict_logits(model, stacked, x, microbatch_size=8, stacked=True)
  assert many.shape == (M, N, K)
  np.testing.assert_allclose(many[1], one, rtol=1e-5, atol=1e-6)
  # A single example (N < microbatch_size) in float64 is accepted.
  one_ex = predict_logits(model, trees[1], x[:1].astype(np.float64), microbatch_size=8)
  np.testing.assert_allclose(one_ex, one[:1], rtol=1e-5, atol=1e-6)


def test_signal_input_errors(setup):
  model, trees, stacked, x, y = setup
  with pytest.raises(MiaInputError, match="x: expected shape"):
    blackbox_signals(model, trees[0], x[:, :5], y)
  with pytest.raises(MiaInputError, match="x: expected shape"):
    predict_logits(model, trees[0], x[0])
  with pytest.raises(MiaInputError, match="y: labels"):
    blackbox_signals(model, trees[0], x, np.where(y == 0, K, y))
  with pytest.raises(MiaInputError, match="y: labels"):
    blackbox_signals(model, trees[0], x, y - 1 - y.max())
  with pytest.raises(MiaInputError, match="y: expected"):
    blackbox_signals(model, trees[0], x, y[:-1])
  bad = x.copy()
  bad[5, 3] = np.nan
  with pytest.raises(MiaInputError, match="x:.*NaN"):
    blackbox_signals(model, trees[0], bad, y)
  with pytest.raises(MiaInputError, match="x:.*NaN"):
    predict_logits(model, trees[0], bad)
  with pytest.raises(MiaInputError, match="variables"):
    blackbox_signals(model, trees[0], x, y, stacked=True)
  with pytest.raises(MiaInputError, match="microbatch_size"):
    predict_logits(model, trees[0], x, microbatch_size=0)


def test_loss_keeps_precision_for_confident_predictions():
  """-log_softmax rounds to 0 in float32 for margins above ~17; the loss must not, or the
  loss attack cannot rank confidently classified examples."""
  from mia_jax.signals import loss
  margins = np.array([20.0, 25.0, 30.0, 40.0], np.float32)
  logits = np.stack([margins, np.zeros(4, np.float32), np.zeros(4, np.float32)], 1)
  got = np.asarray(loss(jnp.asarray(logits), jnp.zeros(4, jnp.int32)))
  want = np.log1p(2 * np.exp(-margins.astype(np.float64)))  # K - 1 = 2 wrong classes
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert np.all(np.diff(got) < 0)  # strictly ordered: no ties at 0
