"""The single trainer (mia_jax.train.train_objective) beyond classifier models.

* A user's objective on dict inputs with per-example weights (the shape of Nasr et al.'s
  attack network) equals a hand-written optax loop over the same batches and keys.
* Full-batch training (all epochs in one compiled loop) equals the same batch fed to the
  host loop epoch by epoch.
* Shokri's / the meta-attack's classifiers (full batch) minimize their objective: the
  result matches an independent float64 SciPy minimization of the same penalized,
  balanced logistic loss.
* Every attack classifier and network trains through train_objective.
* A plain flax.linen user model through train_objective(ModelObjective) is train_model.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mia_jax import train as trainer
from mia_jax._validation import MiaInputError
from mia_jax.train import (FullBatch, ModelObjective, ShuffledBatches, TrainConfig,
                           jax_key, train_objective)

# float32 programs of different structure (a fused compiled loop vs one step per call,
# a vmapped step vs a hand-written one): agreement to float32 rounding over tens of steps.
TOL = dict(rtol=2e-5, atol=2e-6)


class WeightedDictLogistic(NamedTuple):
  """A user's objective: a logistic model over two named inputs, dropout on one of them,
  the per-example weight ``w`` inside the batch; mean over the batch's real examples."""
  rate: float = 0.25

  def loss(self, params, other, batch, weight, key):
    feats, y, w = batch
    keep = jax.random.bernoulli(key, 1.0 - self.rate, feats["a"].shape)
    a = jnp.where(keep, feats["a"] / (1.0 - self.rate), 0.0)
    logit = a @ params["wa"] + feats["b"] @ params["wb"] + params["c"]
    per = w * optax.sigmoid_binary_cross_entropy(logit, y)
    return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0), other

  def describe(self):
    return "weighted dict logistic"


def _dict_problem(n=45, seed=0):
  rng = np.random.default_rng(seed)
  feats = {"a": rng.normal(size=(n, 3)).astype(np.float32),
           "b": rng.normal(size=(n, 2)).astype(np.float32)}
  y = (feats["a"][:, 0] + feats["b"][:, 1] > 0).astype(np.float32)
  w = rng.uniform(0.5, 2.0, n).astype(np.float32)
  params = {"wa": np.zeros(3, np.float32), "wb": np.zeros(2, np.float32),
            "c": np.zeros((), np.float32)}
  return feats, y, w, params


def test_user_objective_on_dict_inputs_equals_a_hand_written_loop():
  feats, y, w, params = _dict_problem()
  n, bs, epochs, seed = 45, 8, 3, 11
  rows = np.setdiff1d(np.arange(n), [3, 17, 30])  # three rows held out
  keep = np.zeros((1, n), bool)
  keep[0, rows] = True
  objective = WeightedDictLogistic()
  config = TrainConfig(optimizer="adam", learning_rate=0.05, epochs=epochs, batch_size=bs)
  got = train_objective(objective, (feats, y, w),
                        ShuffledBatches(keep, bs, [np.random.default_rng(5)], stacked=False,
                                        drop_last=True),
                        config=config, seeds=[seed], stacked=False,
                        init_variables={"params": params})

  # The reference: the documented schedule written out -- a fresh shuffle of the rows
  # per epoch (dropping the last incomplete batch), epoch key fold(e + 1), step key fold(t).
  rng = np.random.default_rng(5)
  tx = optax.adam(0.05)
  p = jax.tree.map(jnp.asarray, params)
  opt = tx.init(p)
  key = jax_key(seed)
  losses = []
  for e in range(epochs):
    order = rng.permutation(rows)
    ekey = jax.random.fold_in(key, e + 1)
    step_losses = []
    for t in range(len(rows) // bs):
      b = order[t * bs:(t + 1) * bs]
      batch = ({k: v[b] for k, v in feats.items()}, y[b], w[b])
      (value, _), g = jax.value_and_grad(objective.loss, has_aux=True)(
          p, {}, batch, jnp.ones(bs), jax.random.fold_in(ekey, t))
      updates, opt = tx.update(g, opt, p)
      p = optax.apply_updates(p, updates)
      step_losses.append(float(value))
    losses.append(np.mean(step_losses))
  for k in p:
    np.testing.assert_allclose(got.variables["params"][k], p[k], **TOL)
  np.testing.assert_allclose(got.losses, losses, **TOL)


class _Rows:
  """A schedule object of the host loop that serves FullBatch's arrays every epoch."""

  def __init__(self, full):
    self.full = full

  def epoch(self, e):
    return self.full.epoch(e)

  def fingerprint(self):
    return "rows"


def test_full_batch_compiled_loop_equals_the_host_loop():
  feats, y, w, params = _dict_problem(n=30, seed=1)
  keep = np.zeros((2, 30), bool)
  keep[0, :20], keep[1, 10:] = True, True
  full = FullBatch.from_keep(keep)
  assert full.idx.shape == (2, 20) and full.weight.sum() == 40
  stacked = jax.tree.map(lambda a: np.stack([a, a + 0.1]), params)
  config = TrainConfig(optimizer="momentum", learning_rate=0.1, epochs=37, batch_size=20)
  kw = dict(config=config, seeds=[(3, 0), (3, 1)], stacked=True,
            init_variables={"params": stacked})
  compiled = train_objective(WeightedDictLogistic(), (feats, y, w), full, **kw)
  host = train_objective(WeightedDictLogistic(), (feats, y, w), _Rows(full), **kw)
  assert compiled.losses.shape == host.losses.shape == (2, 37)
  for k in params:
    np.testing.assert_allclose(compiled.variables["params"][k], host.variables["params"][k],
                               **TOL)
  np.testing.assert_allclose(compiled.losses, host.losses, **TOL)
  # Without recording the losses (the gradient alone until the last step): the same fit,
  # the last epoch's loss only.
  quiet = train_objective(WeightedDictLogistic(), (feats, y, w),
                          FullBatch(full.idx, full.weight, record_losses=False), **kw)
  for k in params:
    np.testing.assert_allclose(quiet.variables["params"][k], compiled.variables["params"][k],
                               **TOL)
  assert np.all(np.isnan(quiet.losses[:, :-1]))
  np.testing.assert_allclose(quiet.losses[:, -1], compiled.losses[:, -1], **TOL)
  # Changing only the number of epochs (within the loss buffer) reuses the compiled loop.
  misses = trainer._compiled_full_batch.cache_info().misses
  train_objective(WeightedDictLogistic(), (feats, y, w), full,
                  **{**kw, "config": TrainConfig(optimizer="momentum", learning_rate=0.1,
                                                 epochs=50, batch_size=20)})
  assert trainer._compiled_full_batch.cache_info().misses == misses


def test_full_batch_refuses_what_it_cannot_do():
  feats, y, w, params = _dict_problem(n=10)
  config = TrainConfig(epochs=2, batch_size=10)
  with pytest.raises(MiaInputError, match="model\\(s\\) \\[1\\] have no training examples"):
    train_objective(WeightedDictLogistic(), (feats, y, w),
                    FullBatch(np.zeros((2, 4)), np.r_[[np.ones(4)], [np.zeros(4)]]),
                    config=config, seeds=[0, 1], stacked=True,
                    init_variables={"params": jax.tree.map(lambda a: np.stack([a, a]), params)})
  with pytest.raises(MiaInputError, match="without checkpoint_dir, on_epoch"):
    train_objective(WeightedDictLogistic(), (feats, y, w),
                    FullBatch(np.arange(10), np.ones(10)), config=config, seeds=[0],
                    stacked=False, init_variables={"params": params},
                    on_epoch=lambda e, v: None)
  bad = {**feats, "b": np.where(np.arange(10)[:, None] == 4, np.nan, feats["b"])}
  with pytest.raises(trainer.TrainingDivergedError, match="NaN/inf in epoch 1 of 2"):
    train_objective(WeightedDictLogistic(), (bad, y, w), FullBatch(np.arange(10), np.ones(10)),
                    config=config, seeds=[0], stacked=False, init_variables={"params": params})
  with pytest.raises(trainer.TrainingDivergedError, match="NaN/inf in epoch 2 of 2"):
    train_objective(WeightedDictLogistic(), (bad, y, w),
                    FullBatch(np.arange(10), np.ones(10), record_losses=False),
                    config=config, seeds=[0], stacked=False, init_variables={"params": params})
  with pytest.raises(MiaInputError, match="data: expected a pytree of arrays sharing"):
    train_objective(WeightedDictLogistic(), (feats, y[:5], w),
                    FullBatch(np.arange(10), np.ones(10)), config=config, seeds=[0],
                    stacked=False, init_variables={"params": params})
  with pytest.raises(MiaInputError, match="batches: expected a model axis"):
    train_objective(WeightedDictLogistic(), (feats, y, w),
                    FullBatch(np.arange(10), np.ones(10)), config=config, seeds=[0],
                    stacked=True, init_variables={"params": params})
  with pytest.raises(MiaInputError, match="seeds: expected one seed per model \\(2\\)"):
    train_objective(WeightedDictLogistic(), (feats, y, w),
                    ShuffledBatches(np.ones((2, 10), bool), 4, [np.random.default_rng(0)] * 2),
                    config=config, seeds=[0], stacked=True,
                    init_variables={"params": jax.tree.map(lambda a: np.stack([a, a]), params)})
  with pytest.raises(MiaInputError, match="seeds: expected one seed per model"):
    train_objective(WeightedDictLogistic(), (feats, y, w),
                    FullBatch(np.arange(10), np.ones(10)), config=config, seeds=[0, 1],
                    stacked=False, init_variables={"params": params})


def _scipy_logistic(x, y, l2, balance):
  """Minimizer (float64, SciPy) of the balanced logistic loss on standardized features
  plus l2/2 ||w||^2: an independent implementation of the classifiers' objective."""
  from scipy.optimize import minimize
  mean, std = x.mean(0), x.std(0)
  h = (x - mean) / std
  if balance:
    wt = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
  else:
    wt = np.full(y.size, 1.0 / y.size)

  def f(theta):
    z = h @ theta[:-1] + theta[-1]
    loss = np.sum(wt * (np.logaddexp(0, z) - y * z)) + 0.5 * l2 * theta[:-1] @ theta[:-1]
    s = 1 / (1 + np.exp(-z)) - y
    grad = np.r_[h.T @ (wt * s) + l2 * theta[:-1], np.sum(wt * s)]
    return loss, grad

  res = minimize(f, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                 options=dict(gtol=1e-12, ftol=1e-15, maxiter=10_000))
  return res.x


@pytest.mark.parametrize("balance", [True, False])
def test_attack_classifier_reaches_the_scipy_minimizer(balance):
  from mia_jax.attacks import _classifier
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 1.0, -2.0, 0.0]
  y = rng.random(300) < 1 / (1 + np.exp(-(x[:, 0] - 0.5 * x[:, 1] + 0.3)))
  want = _scipy_logistic(x, y, l2=0.05, balance=balance)
  got = _classifier.fit_binary(x.astype(np.float32), y, steps=3000, learning_rate=0.02,
                               l2=0.05, balance=balance)
  # Adam's iterate after 3000 steps of a strongly convex problem, in float32.
  np.testing.assert_allclose(got["w"], want[:-1], atol=2e-4)
  np.testing.assert_allclose(got["b"], want[-1], atol=2e-4)
  # The grouped fit (G classifiers, one vmapped full-batch loop) reaches it per group.
  grouped = _classifier.fit_binary_groups(np.stack([x, x[::-1]]).astype(np.float32),
                                          np.stack([y, y[::-1]]), np.ones((2, 300), bool),
                                          steps=3000, learning_rate=0.02, l2=0.05,
                                          balance=balance)
  for g in range(2):
    np.testing.assert_allclose(grouped["w"][g], want[:-1], atol=2e-4)


def test_every_attack_classifier_trains_with_the_single_trainer(monkeypatch):
  """Shokri et al.'s per-class models, the meta-attack and Nasr et al.'s network all go
  through mia_jax.train.train_objective (no training loop of their own)."""
  from mia_jax.attacks import _classifier, meta, nasr
  seen = []
  real = trainer.train_objective

  def spy(objective, *a, **kw):
    seen.append(type(objective).__name__)
    return real(objective, *a, **kw)

  monkeypatch.setattr(_classifier, "train_objective", spy)
  monkeypatch.setattr(nasr, "train_objective", spy)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 3)).astype(np.float32)
  y = rng.random(40) < 0.5
  _classifier.fit_binary(x, y, steps=5)
  _classifier.fit_binary_groups(x[None], y[None], np.ones((1, 40), bool), steps=5)
  meta.fit_meta({"a": x[:, 0], "b": x[:, 1]}, y, steps=5)
  feats = {"probs": rng.random((40, 3)).astype(np.float32),
           "loss": rng.random(40).astype(np.float32),
           "label": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)],
           "grad:logits": rng.normal(size=(40, 3, 5)).astype(np.float32)}
  state, _ = nasr.fit_attack_model(feats, y, config=nasr.NasrConfig(epochs=2, batch_size=8))
  assert seen == ["ClassifierObjective"] * 3 + ["NetworkObjective"]
  assert len(state.history["train_loss"]) == 2
  assert state.best_epoch == int(np.argmin(state.history["val_loss"]))


class UserMLP(nn.Module):
  """A plain flax.linen model, written as Flax's examples write them."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x)
    x = nn.relu(x)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Dense(3)(x)


def test_user_linen_model_through_train_objective_is_train_model():
  from mia_jax.models import from_linen
  model = from_linen(UserMLP(), input_shape=(6,), num_classes=3)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(50, 6)).astype(np.float32)
  y = rng.integers(0, 3, 50)
  config = TrainConfig(epochs=2, batch_size=16)
  want = trainer.train_model(model, x, y, config=config, seed=(7, 1), indices=np.arange(40))
  keep = np.zeros((1, 50), bool)
  keep[0, :40] = True
  got = train_objective(ModelObjective(model), (x, y),
                        ShuffledBatches(keep, 16, [np.random.default_rng((7, 1))],
                                        stacked=False),
                        config=config, seeds=[(7, 1)], stacked=False)
  # The same program on the same inputs: identical.
  for a, b in zip(jax.tree.leaves(want.variables), jax.tree.leaves(got.variables)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(want.losses, got.losses)
