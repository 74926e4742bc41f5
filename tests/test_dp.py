"""Tests for mia_jax.dp: clipping vs a naive loop, DP-SGD training, accounting, bounds."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax import dp
from mia_jax._validation import MiaInputError
from mia_jax.models import mlp, resnet
from mia_jax.train import TrainConfig, train_model

from _float32 import reduction_rtol

D, K = 12, 3


def _data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, D)).astype(np.float32)
  y = (np.argmax(x[:, :K], 1)).astype(np.int32)
  return x, y


MODEL = mlp(input_shape=(D,), num_classes=K, widths=(8,))  # shared: compiled once


def _model():
  return MODEL


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])


# -- clipping --------------------------------------------------------------------------------

def test_clipped_sum_matches_naive_loop():
  model = _model()
  params = model.init(jax.random.key(0))["params"]
  x, y = _data(10)
  x[3] *= 50.0  # a large-gradient example that will be clipped
  weights = np.ones(10, np.float32)
  weights[7] = 0.0  # a padding slot

  def loss(p, xi, yi):
    logits = model.apply({"params": p}, xi[None])
    return -jax.nn.log_softmax(logits)[0, yi]

  # Naive reference: a Python loop of jax.grad, manual clipping in NumPy.
  grad_one = jax.jit(jax.grad(loss))
  grads = [_flat(grad_one(params, jnp.asarray(x[i]), y[i])) for i in range(10)]
  norms = [np.linalg.norm(g) for g in grads]
  clip = float(np.median(norms))  # about half of the examples are clipped
  want = np.zeros_like(grads[0])
  for i in range(10):
    want += weights[i] * grads[i] * min(1.0, clip / norms[i])
  assert max(norms) > clip > min(norms)  # both clipped and unclipped examples

  batch = (jnp.asarray(x), jnp.asarray(y))
  w = jnp.asarray(weights)

  @jax.jit
  def all_variants(p):
    per_ex = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, *batch)
    return (dp.clip_and_sum(per_ex, clip, w), dp.clipped_grad_sum(loss, p, batch, w, clip),
            dp.clipped_grad_sum(loss, p, batch, w, clip, microbatch_size=5))

  (got, got_norms), (summed, loss_sum), (summed_mb, loss_mb) = all_variants(params)
  np.testing.assert_allclose(_flat(got), want, rtol=1e-4, atol=1e-6)
  # vmapped per-example gradients vs one jax.grad per example: float32 norms of the same
  # gradients summed in another order, and the loss a sum over 10 examples in 2 microbatches
  np.testing.assert_allclose(got_norms, norms, rtol=reduction_rtol(grads[0].size))
  np.testing.assert_allclose(_flat(summed), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_flat(summed_mb), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss_mb, loss_sum, rtol=reduction_rtol(10))
  # Every clipped gradient has norm <= clip, so the sum has norm <= clip * #examples.
  assert np.linalg.norm(_flat(got)) <= clip * weights.sum() + 1e-5


# -- training --------------------------------------------------------------------------------

def test_no_noise_huge_clip_shuffle_equals_plain_training():
  model = _model()
  x, y = _data(64)
  cfg = TrainConfig(optimizer="sgd", learning_rate=0.1, epochs=2, batch_size=16,
                    weight_decay=1e-3)
  plain = train_model(model, x, y, config=cfg, seed=5)
  private = dp.train_model_dp(model, x, y, config=cfg, noise_multiplier=0.0, clip_norm=1e6,
                              seed=5, sampling="shuffle")
  np.testing.assert_allclose(_flat(private.variables), _flat(plain.variables), atol=1e-6)


def test_poisson_training_is_seeded_and_noisy():
  model = _model()
  x, y = _data(64)
  cfg = TrainConfig(optimizer="sgd", learning_rate=0.1, epochs=2, batch_size=16)
  kw = dict(config=cfg, clip_norm=1.0)
  a = dp.train_model_dp(model, x, y, noise_multiplier=1.0, seed=1, **kw)
  b = dp.train_model_dp(model, x, y, noise_multiplier=1.0, seed=1, **kw)
  c = dp.train_model_dp(model, x, y, noise_multiplier=0.0, seed=1, **kw)
  np.testing.assert_array_equal(_flat(a.variables), _flat(b.variables))
  assert not np.allclose(_flat(a.variables), _flat(c.variables))
  assert a.losses.shape == (2,) and np.all(np.isfinite(a.losses))
  init = _flat(model.init(jax.random.fold_in(jax.random.key(1), 0)))
  assert not np.allclose(_flat(c.variables), init)  # it trained


def test_poisson_batches_are_distinct_members():
  """jax-privacy's Poisson sampling of the members: each batch distinct members, each
  member in each batch with probability q (mean batch size q * n)."""
  rng = np.random.default_rng(0)
  members = np.arange(100, 200)
  batches = dp.poisson_batches(members, 0.1, 400, rng)
  assert len(batches) == 400
  for b in batches:
    assert np.unique(b).size == b.size and np.all((b >= 100) & (b < 200))
  sizes = np.array([b.size for b in batches])
  # Binomial(100, 0.1): mean 10, std 3; the mean of 400 draws is within 4.5 standard
  # errors (0.15 each) of 10.
  assert abs(sizes.mean() - 10.0) < 0.7 and sizes.std() > 1.5
  counts = np.bincount(np.concatenate(batches) - 100, minlength=100)
  assert counts.min() > 10 and counts.max() < 80  # every member sampled, about 40 times


def test_training_errors():
  model = _model()
  x, y = _data(16)
  with pytest.raises(MiaInputError, match="clip_norm"):
    dp.train_model_dp(model, x, y, noise_multiplier=1.0, clip_norm=0.0)
  with pytest.raises(MiaInputError, match="noise_multiplier"):
    dp.train_model_dp(model, x, y, noise_multiplier=-0.1, clip_norm=1.0)
  with pytest.raises(MiaInputError, match="sampling"):
    dp.train_model_dp(model, x, y, noise_multiplier=1.0, clip_norm=1.0, sampling="uniform")
  with pytest.raises(MiaInputError, match="indices"):
    dp.train_model_dp(model, x, y, noise_multiplier=1.0, clip_norm=1.0, indices=[99])
  bn = resnet(input_shape=(8, 8, 3), num_classes=K, widths=(4,))
  with pytest.raises(MiaInputError, match="model"):
    dp.train_model_dp(bn, np.zeros((4, 8, 8, 3)), np.zeros(4, int), noise_multiplier=1.0,
                      clip_norm=1.0)


# -- accounting ------------------------------------------------------------------------------

# TF-Privacy's compute_dp_sgd_privacy example: N=60000, batch 256, noise 1.12, 60 epochs,
# delta 1e-5 "satisfies (2.92, 1e-5)-DP" (classic RDP conversion). dp_accounting's tighter
# conversion of the same RDP curve gives 2.5187 (dp-accounting 0.6.0).
Q_MNIST = 256 / 60000
STEPS_MNIST = math.ceil(60 * 60000 / 256)  # 14063


def test_epsilon_matches_tf_privacy_reference():
  acc = dp._rdp_accountant(1.12, Q_MNIST, STEPS_MNIST)
  orders, rdp = np.asarray(acc._orders), np.asarray(acc._rdp)  # noqa: SLF001
  classic = np.min(rdp - math.log(1e-5) / (orders - 1))
  assert classic == pytest.approx(2.92, abs=0.01)
  eps = dp.epsilon_for(1.12, Q_MNIST, STEPS_MNIST, 1e-5)
  assert eps == pytest.approx(2.5187, abs=0.005)
  assert eps <= classic
  # The lead's setting (noise 1.1): slightly larger epsilon.
  assert dp.epsilon_for(1.1, Q_MNIST, STEPS_MNIST, 1e-5) == pytest.approx(2.597, abs=0.005)
  cfg = TrainConfig(epochs=60, batch_size=256)
  # train_model_dp runs epochs * ceil(n / B) = 60 * 235 steps.
  assert dp.training_epsilon(60000, config=cfg, noise_multiplier=1.12, delta=1e-5) == \
      dp.epsilon_for(1.12, Q_MNIST, 60 * 235, 1e-5)


def test_epsilon_monotone_and_edge_cases():
  e = lambda s, steps=1000: dp.epsilon_for(s, 0.01, steps, 1e-5)  # noqa: E731
  assert e(0.8) > e(1.0) > e(2.0)
  assert e(1.0, 2000) > e(1.0, 1000)
  assert dp.epsilon_for(0.0, 0.01, 10, 1e-5) == math.inf


def test_noise_for_epsilon_inverts_epsilon_for():
  for target in (1.0,):
    sigma = dp.noise_for_epsilon(target, Q_MNIST, STEPS_MNIST, 1e-5, tol=1e-2)
    assert dp.epsilon_for(sigma, Q_MNIST, STEPS_MNIST, 1e-5) <= target
    assert dp.epsilon_for(sigma - 2e-2, Q_MNIST, STEPS_MNIST, 1e-5) > target
  eps = dp.epsilon_for(1.3, 0.02, 500, 1e-6)
  assert dp.noise_for_epsilon(eps, 0.02, 500, 1e-6, tol=1e-3) == pytest.approx(1.3, abs=2e-3)


@pytest.mark.parametrize("args, name", [
    ((-1.0, 0.01, 10, 1e-5), "noise_multiplier"), ((1.0, 0.0, 10, 1e-5), "sampling_rate"),
    ((1.0, 1.5, 10, 1e-5), "sampling_rate"), ((1.0, 0.01, 0, 1e-5), "steps"),
    ((1.0, 0.01, 10, 0.0), "delta"), ((1.0, 0.01, 10, 1.0), "delta"),
])
def test_accounting_errors(args, name):
  with pytest.raises(MiaInputError, match=name):
    dp.epsilon_for(*args)


def test_noise_for_epsilon_errors():
  with pytest.raises(MiaInputError, match="target_epsilon"):
    dp.noise_for_epsilon(0.0, 0.01, 10, 1e-5)
  with pytest.raises(MiaInputError, match="target_epsilon"):
    dp.noise_for_epsilon(-1.0, 0.01, 10, 1e-5)
  with pytest.raises(MiaInputError, match="delta"):
    dp.noise_for_epsilon(1.0, 0.01, 10, 2.0)


# -- bounds ----------------------------------------------------------------------------------

def test_bounds_at_known_points():
  ln3, ln2 = math.log(3), math.log(2)
  b = dp.membership_advantage_bounds(ln3)
  assert b["tight_advantage"] == pytest.approx(0.5)  # tanh(ln 3 / 2) = (3 - 1) / (3 + 1)
  assert b["tight_accuracy"] == pytest.approx(0.75)  # 3 / (1 + 3)
  assert b["yeom_advantage"] == pytest.approx(2.0)  # e^eps - 1
  assert b["yeom_accuracy"] == pytest.approx(1.5)  # e^eps / 2: vacuous
  assert dp.yeom_accuracy_bound(ln2) == pytest.approx(1.0)  # vacuous from ln 2 on
  assert dp.yeom_advantage_bound(ln2) == pytest.approx(1.0)
  assert dp.tight_advantage_bound(0.0) == 0.0 and dp.tight_accuracy_bound(0.0) == 0.5
  for eps in (0.1, 0.5, 1.0, 4.0):
    assert dp.tight_advantage_bound(eps) == pytest.approx(math.tanh(eps / 2))
    assert dp.tight_accuracy_bound(eps) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)))
    assert dp.tight_advantage_bound(eps) <= dp.yeom_advantage_bound(eps)


def test_tpr_bound_and_delta_versions_agree():
  ln3 = math.log(3)
  assert dp.tpr_bound(0.01, ln3, 1e-5) == pytest.approx(0.03 + 1e-5)
  assert dp.tpr_bound(0.0, ln3, 1e-3) == pytest.approx(1e-3)
  assert dp.tpr_bound(1.0, ln3) == 1.0
  assert dp.tpr_bound(0.5, ln3) == pytest.approx(1 - (1 - 0.5) / 3)  # complementary test
  fpr = np.linspace(0, 1, 200001)
  for eps, delta in ((ln3, 0.0), (0.7, 0.05), (2.0, 1e-3)):
    t = dp.tpr_bound(fpr, eps, delta)
    assert t.shape == fpr.shape and np.all(t >= fpr - 1e-12)
    # The tight advantage is the largest TPR - FPR over the region.
    assert np.max(t - fpr) == pytest.approx(dp.tight_advantage_bound(eps, delta), abs=1e-5)
    assert dp.tight_accuracy_bound(eps, delta) == pytest.approx(
        (math.exp(eps) + delta) / (1 + math.exp(eps)))


@pytest.mark.parametrize("fn", [dp.yeom_advantage_bound, dp.yeom_accuracy_bound,
                                dp.tight_advantage_bound, dp.tight_accuracy_bound,
                                dp.membership_advantage_bounds])
def test_bound_errors(fn):
  with pytest.raises(MiaInputError, match="epsilon"):
    fn(-0.1)
  with pytest.raises(MiaInputError, match="delta"):
    fn(1.0, 1.0)
  with pytest.raises(MiaInputError, match="delta"):
    fn(1.0, -0.1)


def test_tpr_bound_errors():
  with pytest.raises(MiaInputError, match="fpr"):
    dp.tpr_bound(1.5, 1.0)
  with pytest.raises(MiaInputError, match="fpr"):
    dp.tpr_bound([0.1, np.nan], 1.0)
  with pytest.raises(MiaInputError, match="epsilon"):
    dp.tpr_bound(0.1, float("nan"))


@pytest.mark.parametrize("sampling,microbatch", [("poisson", None), ("poisson", 4),
                                                 ("shuffle", None)])
def test_stacked_dp_training_equals_one_model_at_a_time(sampling, microbatch):
  """M models with different member sets (so different steps per epoch and batch
  capacities) trained in one vmapped DP-SGD program equal each model trained alone with
  the same keys: same batches, noise and initialization, float32 rounding aside."""
  model = _model()
  x, y = _data(90)
  rng = np.random.default_rng(3)
  keep = np.zeros((3, 90), bool)
  for m, size in enumerate((20, 45, 70)):
    keep[m, rng.choice(90, size, replace=False)] = True
  cfg = TrainConfig(optimizer="adam", learning_rate=0.01, epochs=2, batch_size=16,
                    weight_decay=1e-3)
  kw = dict(config=cfg, noise_multiplier=1.0, clip_norm=0.5, sampling=sampling,
            microbatch_size=microbatch)
  stacked = dp.train_models_dp(model, x, y, keep, seed=7, first_model=2, **kw)
  assert stacked.losses.shape == (3, 2)
  for m in range(3):
    alone = dp.train_model_dp(model, x, y, indices=np.flatnonzero(keep[m]), seed=(7, 2 + m),
                              **kw)
    got = _flat(jax.tree.map(lambda a, m=m: a[m], stacked.variables))
    want = _flat(alone.variables)
    # Same float32 program per model, vmapped: 2 epochs of Adam steps on sums of at most
    # 16 clipped gradients; rounding differences stay at the level of a few ulps per step.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked.losses[m], alone.losses, rtol=1e-5)


def test_missing_jax_privacy_is_a_named_error(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "jax_privacy", None)  # import raises ImportError
  model = _model()
  x, y = _data(20)
  with pytest.raises(dp.MissingDependencyError, match="jax-privacy"):
    dp.train_model_dp(model, x, y, config=TrainConfig(epochs=1, batch_size=8),
                      noise_multiplier=1.0, clip_norm=1.0)


def test_audit_without_jax_privacy_fails_before_writing(tmp_path, monkeypatch):
  import sys
  from mia_jax import cli
  monkeypatch.setitem(sys.modules, "jax_privacy", None)
  out = tmp_path / "run"
  assert cli.main(["audit", "--epochs", "1", "--attacks", "loss", "--noise-multiplier", "1",
                   "--out", str(out), "--quiet"]) == 2
  assert not out.exists()


def test_interrupted_stacked_dp_training_resumes_with_the_same_result(tmp_path, monkeypatch):
  """DP models resume like the others: stop after epoch 2 of 3 (an exception out of the
  epoch loop, as Ctrl-C), rerun with the same checkpoint directory: bit-identical to an
  uninterrupted run (same program, same inputs: the batches of the epochs done are
  replayed on the host)."""
  model = _model()
  x, y = _data(60)
  keep = np.zeros((2, 60), bool)
  keep[0, :30], keep[1, 20:] = True, True
  cfg = TrainConfig(optimizer="adam", learning_rate=0.01, epochs=3, batch_size=8)
  for sampling in ("poisson", "shuffle"):
    kw = dict(config=cfg, noise_multiplier=1.0, clip_norm=1.0, seed=4, sampling=sampling)
    want = dp.train_models_dp(model, x, y, keep, **kw)
    from mia_jax import train as trainer  # the epoch loop every trainer shares
    real = trainer.check_converging
    calls = []

    def stop_after_two(losses, *a):
      calls.append(1)
      if len(calls) == 2:
        raise KeyboardInterrupt
      return real(losses, *a)

    monkeypatch.setattr(trainer, "check_converging", stop_after_two)
    ckpt = tmp_path / sampling
    with pytest.raises(KeyboardInterrupt):
      dp.train_models_dp(model, x, y, keep, checkpoint_dir=str(ckpt), **kw)
    assert sorted(os.listdir(ckpt)) == ["epoch-000001"]
    rerun = []
    monkeypatch.setattr(trainer, "check_converging", lambda *a: rerun.append(a[2]) or real(*a))
    got = dp.train_models_dp(model, x, y, keep, checkpoint_dir=str(ckpt), **kw)
    monkeypatch.setattr(trainer, "check_converging", real)
    assert rerun == [2, 3]  # only the epochs not done were trained
    np.testing.assert_array_equal(_flat(got.variables), _flat(want.variables))
    np.testing.assert_array_equal(got.losses, want.losses)


def test_dp_training_shows_a_progress_bar():
  class Recorder:
    def __init__(self):
      self.calls = []

    def add_task(self, description, total):
      self.calls.append(("add", description, total))
      return 7

    def advance(self, task):
      self.calls.append(("advance", task))

    def remove_task(self, task):
      self.calls.append(("remove", task))

  rec = Recorder()
  model = _model()
  x, y = _data(30)
  keep = np.ones((2, 30), bool)
  dp.train_models_dp(model, x, y, keep, config=TrainConfig(epochs=3, batch_size=8),
                     noise_multiplier=1.0, clip_norm=1.0, progress=rec, description="refs")
  assert rec.calls == [("add", "refs", 3), ("advance", 7), ("advance", 7), ("advance", 7),
                       ("remove", 7)]


def test_tpr_bound_at_zero_fpr_with_an_overflowing_epsilon_is_delta_not_nan():
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "invalid value" from inf * 0
    got = dp.tpr_bound(np.array([0.0, 1e-3]), 800.0, 1e-5)  # e^800 overflows
  np.testing.assert_allclose(got, [1e-5, 1.0])
  assert dp.tpr_bound(0.0, 1.0, 1e-5) == pytest.approx(1e-5)


def test_stacked_dp_training_of_a_users_linen_model_equals_one_at_a_time():
  """The same on a model written as a user writes it (plain flax.linen, from_linen)."""
  import flax.linen as nn
  from mia_jax.models import from_linen

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(features=8)(x.reshape((x.shape[0], -1))))
      return nn.Dense(features=K)(x)

  model = from_linen(MLP(), input_shape=(D,), num_classes=K)
  x, y = _data(40)
  keep = np.zeros((2, 40), bool)
  keep[0, :15], keep[1, 10:] = True, True
  kw = dict(config=TrainConfig(optimizer="adam", learning_rate=0.01, epochs=2, batch_size=8),
            noise_multiplier=1.0, clip_norm=0.5)
  stacked = dp.train_models_dp(model, x, y, keep, seed=3, **kw)
  for m in range(2):
    alone = dp.train_model_dp(model, x, y, indices=np.flatnonzero(keep[m]), seed=(3, m), **kw)
    # as test_stacked_dp_training_equals_one_model_at_a_time: float32 rounding of the
    # vmapped program only
    np.testing.assert_allclose(_flat(jax.tree.map(lambda a, m=m: a[m], stacked.variables)),
                               _flat(alone.variables), rtol=1e-5, atol=1e-6)


def test_dp_sgd_is_an_option_of_the_trainer():
  """train_model / train_models with dp=DPSGD(...) are the DP trainers with those
  arguments: the same program on the same inputs, so bit-identical; what DP-SGD training
  does not take is refused by name before any compute."""
  from mia_jax.dp import DPSGD
  from mia_jax.train import train_model, train_models
  model = _model()
  x, y = _data(40)
  keep = np.zeros((2, 40), bool)
  keep[0, :25], keep[1, 10:] = True, True
  cfg = TrainConfig(optimizer="adam", learning_rate=0.01, epochs=2, batch_size=8)
  option = DPSGD(noise_multiplier=0.7, clip_norm=0.5, gradient_canaries=(
      np.array([0, 5]), np.array([[True, False], [False, True]])))
  want = dp.train_models_dp(model, x, y, keep, config=cfg, seed=3, noise_multiplier=0.7,
                            clip_norm=0.5, gradient_canaries=option.gradient_canaries)
  got = train_models(model, x, y, keep, config=cfg, seed=3, dp=option)
  np.testing.assert_array_equal(_flat(got.variables), _flat(want.variables))
  np.testing.assert_array_equal(got.losses, want.losses)
  one = DPSGD(noise_multiplier=1.0, clip_norm=1.0, sampling="shuffle", microbatch_size=4)
  want = dp.train_model_dp(model, x, y, config=cfg, seed=(3, 1), indices=np.arange(30),
                           noise_multiplier=1.0, clip_norm=1.0, sampling="shuffle",
                           microbatch_size=4)
  got = train_model(model, x, y, config=cfg, seed=(3, 1), indices=np.arange(30), dp=one)
  np.testing.assert_array_equal(_flat(got.variables), _flat(want.variables))
  with pytest.raises(MiaInputError, match=r"dp: DP-SGD training does not take \['on_epoch'\]"):
    train_model(model, x, y, config=cfg, dp=one, on_epoch=lambda e, v: None)
  with pytest.raises(MiaInputError, match=r"does not take \['init_variables', 'checkpoint_every'\]"):
    train_models(model, x, y, keep, config=cfg, dp=one, init_variables={},
                 checkpoint_every=2)
  with pytest.raises(MiaInputError, match="dp: expected a mia_jax.dp.DPSGD, got dict"):
    train_models(model, x, y, keep, config=cfg, dp={"noise_multiplier": 1.0})
  with pytest.raises(MiaInputError, match="sampling: expected one of"):
    DPSGD(noise_multiplier=1.0, clip_norm=1.0, sampling="uniform")
  with pytest.raises(MiaInputError, match="clip_norm"):
    DPSGD(noise_multiplier=1.0, clip_norm=0.0)


def test_dp_option_on_a_users_linen_model():
  """The dp= option on a model written as users write them (plain flax.linen, wrapped by
  from_linen): stacked DP-SGD through train_models equals each model trained alone with
  train_model(dp=...) and its seed (float32 of a vmapped vs a single program: the DP
  stacking test's tolerance)."""
  import flax.linen as nn
  from mia_jax.dp import DPSGD
  from mia_jax.models import from_linen
  from mia_jax.train import train_model, train_models

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

  model = from_linen(MLP(), input_shape=(D,), num_classes=3)
  x, y = _data(40)
  keep = np.zeros((2, 40), bool)
  keep[0, :25], keep[1, 12:] = True, True
  cfg = TrainConfig(optimizer="adam", learning_rate=0.01, epochs=2, batch_size=8)
  option = DPSGD(noise_multiplier=0.8, clip_norm=0.5)
  stacked = train_models(model, x, y, keep, config=cfg, seed=5, dp=option)
  for m in range(2):
    alone = train_model(model, x, y, config=cfg, seed=(5, m), indices=np.flatnonzero(keep[m]),
                        dp=option)
    np.testing.assert_allclose(_flat(jax.tree.map(lambda a: a[m], stacked.variables)),
                               _flat(alone.variables), rtol=1e-5, atol=1e-6)
