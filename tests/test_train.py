"""Tests for mia_jax.train.

* Stacked training (vmap over models, padded schedules) equals a loop of single-model
  trainings with ``seed=(seed, m)`` and ``indices=flatnonzero(keep[m])``.
* Full-batch SGD on logistic regression equals a hand-written NumPy float64 loop.
* Checkpoints round-trip through orbax.
* Bad inputs raise MiaInputError naming the argument.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.models import make_model, stack_variables, unstack_variables
from mia_jax.train import (TrainConfig, accuracy, jax_key, load_variables, save_variables,
                           train_model, train_models)

TOL = dict(rtol=2e-4, atol=2e-5)


def np_variables(model, seed=0):
  """Random variables built in NumPy from the abstract init (no jax.random compiles)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
    if "batch_stats" in name:  # running statistics as a fresh init has them
      return (np.ones if "var" in name else np.zeros)(s.shape, s.dtype)
    if "scale" in name:
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)

  abstract = jax.eval_shape(model.init, jax.random.key(0))  # shapes only, no compile
  return jax.tree_util.tree_map_with_path(fill, abstract)


def assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, la), lb in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), err_msg=jax.tree_util.keystr(path),
                               **(tol or TOL))


def tiny_data(n=24, d=6, k=3, seed=0):
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % k).astype(np.int32)
  means = 2.0 * rng.standard_normal((k, d))
  x = (means[y] + rng.standard_normal((n, d))).astype(np.float32)
  return x, y


def keep_with_sizes(sizes, n, seed=0):
  rng = np.random.default_rng(seed)
  keep = np.zeros((len(sizes), n), bool)
  for m, s in enumerate(sizes):
    keep[m, rng.choice(n, s, replace=False)] = True
  return keep


# -- stacked training == a loop of single-model trainings ----------------------------------

@pytest.mark.parametrize("config,dropout,sizes,compare,np_init", [
    # SGD-momentum + weight decay, rows of keep of different sizes (13 and 11 examples in
    # 3 steps of 5: both last batches padded, 2 and 4 padding rows). Inits come from the
    # seeds (3, m).
    (TrainConfig(optimizer="momentum", learning_rate=0.05, momentum=0.9, weight_decay=1e-2,
                 epochs=2, batch_size=5), 0.0, (13, 11), (0, 1), False),
    # Adam + weight decay + dropout, 10 vs 3 examples in batches of 4: model 1 has one
    # padded step then 2 whole no-op steps per epoch, during which neither weight decay
    # nor Adam's step count may act; dropout masks depend on the model's own seed only.
    # (Only the padded model is retrained alone: dropout compiles are slow on CPU.)
    (TrainConfig(optimizer="adam", learning_rate=1e-2, weight_decay=1e-2, epochs=2,
                 batch_size=4), 0.3, (10, 3), (1,), True),
], ids=["momentum_wd", "adam_wd_dropout"])
def test_stacked_equals_loop_mlp(config, dropout, sizes, compare, np_init):
  x, y = tiny_data()
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,), dropout=dropout)
  keep = keep_with_sizes(sizes, x.shape[0])
  inits = [np_variables(model, seed=m) for m in range(len(sizes))] if np_init else None
  res = train_models(model, x, y, keep, config=config, seed=3,
                     init_variables=stack_variables(inits) if np_init else None)
  assert res.losses.shape == (len(sizes), config.epochs)
  singles = unstack_variables(res.variables)
  for m in compare:
    alone = train_model(model, x, y, config=config, seed=(3, m),
                        indices=np.flatnonzero(keep[m]),
                        init_variables=inits[m] if np_init else None)
    assert alone.losses.shape == (config.epochs,)
    assert_trees_close(singles[m], alone.variables)
    np.testing.assert_allclose(res.losses[m], alone.losses, **TOL)
  # The models differ from each other (own seeds / inits, own examples).
  k = res.variables["params"]["dense_0"]["Dense_0"]["kernel"]
  assert not np.allclose(k[0], k[1])
  if np_init:
    # Training moved every model away from its init (the padded model's no-op steps
    # did not freeze it).
    for m in range(len(sizes)):
      assert not np.allclose(k[m], inits[m]["params"]["dense_0"]["Dense_0"]["kernel"])


RESNET_N = 9
RESNET_BATCH = 4


@pytest.fixture(scope="module")
def resnet_run():
  """One epoch of a tiny BatchNorm resnet: model 0 has 7 examples (2 steps, the second
  padded), model 1 has 3 examples (1 padded step, then a no-op step)."""
  model = make_model("resnet", input_shape=(32, 32, 3), num_classes=3, widths=(2,))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((RESNET_N, 32, 32, 3)).astype(np.float32)
  x[0] += 3.0  # a distinctive example 0 (it is what padded batches are filled with)
  y = (np.arange(RESNET_N) % 3).astype(np.int32)
  keep = np.zeros((2, RESNET_N), bool)
  keep[0, [0, 1, 2, 3, 4, 5, 6]] = True
  keep[1, [4, 7, 8]] = True
  inits = [np_variables(model, seed=s) for s in (1, 2)]
  config = TrainConfig(optimizer="momentum", learning_rate=0.05, weight_decay=1e-3, epochs=1,
                       batch_size=RESNET_BATCH)
  res = train_models(model, x, y, keep, config=config, seed=5,
                     init_variables=stack_variables(inits))
  return model, x, y, keep, inits, config, res


def test_stacked_equals_loop_resnet_batchnorm(resnet_run):
  model, x, y, keep, inits, config, res = resnet_run
  singles = unstack_variables(res.variables)
  assert set(res.variables) == {"params", "batch_stats"}
  # batch_stats were updated by training (running mean moved away from its init of 0).
  for m in range(2):
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), singles[m]["batch_stats"],
                         inits[m]["batch_stats"])
    assert all(jax.tree.leaves(moved))
  # Model 1 has fewer examples, so in the stack it has padded batches and a no-op step.
  alone = train_model(model, x, y, config=config, seed=(5, 1), indices=np.flatnonzero(keep[1]),
                      init_variables=inits[1])
  assert_trees_close(singles[1], alone.variables, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(res.losses[1], alone.losses, rtol=1e-4)


def test_batchnorm_stats_ignore_padding(resnet_run):
  """Model 1's only real step is one batch of its 3 members (padded to 4 rows with
  copies of x[0], which is NOT one of its members): its running statistics must be those
  of exactly those 3 examples, or example 0 would leak into a model it is out of."""
  model, x, _, keep, inits, _, res = resnet_run
  members = np.flatnonzero(keep[1])
  assert 0 not in members
  _, ref = jax.jit(model.apply_train)(inits[1], x[members], jax.random.key(0))
  got = unstack_variables(res.variables)[1]["batch_stats"]
  assert_trees_close(got, ref["batch_stats"], rtol=1e-4, atol=1e-5)


# -- seeds ---------------------------------------------------------------------------------

def test_seed_reproducibility():
  """Same seed: bit-identical. Different seeds: different init, order and result --
  checked within one stack, whose models have identical rows of keep and differ only in
  their seeds (s, 0), (s, 1), (s, 2)."""
  x, y = tiny_data()
  model = make_model("logistic", input_shape=(6,), num_classes=3)
  keep = np.repeat(keep_with_sizes((12,), x.shape[0]), 3, axis=0)
  config = TrainConfig(optimizer="sgd", learning_rate=0.1, epochs=2, batch_size=4)
  a = train_models(model, x, y, keep, config=config, seed=0)
  b = train_models(model, x, y, keep, config=config, seed=0)
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  np.testing.assert_array_equal(a.losses, b.losses)
  for leaf in jax.tree.leaves(a.variables):
    for i, j in ((0, 1), (0, 2), (1, 2)):
      assert not np.allclose(leaf[i], leaf[j])
  assert not np.allclose(a.losses[0], a.losses[1])


def test_jax_key_tuple_folds_in():
  a = jax.random.key_data(jax_key((4, 2)))
  b = jax.random.key_data(jax.random.fold_in(jax.random.key(4), 2))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(jax.random.key_data(jax_key(4)),
                                jax.random.key_data(jax.random.key(4)))


# -- training works ------------------------------------------------------------------------

def test_fits_separable_problem():
  rng = np.random.default_rng(1)
  n = 32
  y = (np.arange(n) % 2).astype(np.int32)
  x = rng.standard_normal((n, 6)).astype(np.float32)
  x[:, 0] += np.where(y == 1, 4.0, -4.0)  # linearly separable along feature 0
  model = make_model("logistic", input_shape=(6,), num_classes=2)
  res = train_model(model, x, y, config=TrainConfig(optimizer="adam", learning_rate=0.05,
                                                    epochs=15, batch_size=8), seed=0,
                    init_variables=np_variables(model, seed=3))
  assert np.all(np.isfinite(res.losses))
  assert res.losses[-1] < 0.2 * res.losses[0]
  assert np.all(np.diff(res.losses[:5]) < 0)
  assert accuracy(model, res.variables, x, y) == 1.0


def test_full_batch_sgd_matches_numpy_reference():
  """batch_size = N: each epoch is one gradient step of the full-batch mean loss."""
  x, y = tiny_data(n=20, d=6, k=3, seed=2)
  n, k = x.shape[0], 3
  model = make_model("logistic", input_shape=(6,), num_classes=k)
  init = np_variables(model, seed=4)
  init["params"]["logits"]["Dense_0"]["bias"] = np.array([0.1, -0.2, 0.05], np.float32)
  lr, wd, epochs = 0.3, 0.05, 6
  res = train_model(model, x, y, seed=0, init_variables=init,
                    config=TrainConfig(optimizer="sgd", learning_rate=lr, weight_decay=wd,
                                       epochs=epochs, batch_size=n))
  w = np.asarray(init["params"]["logits"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["logits"]["Dense_0"]["bias"], np.float64)
  xd, onehot = x.astype(np.float64), np.eye(k)[y]
  ref_losses = []
  for _ in range(epochs):
    z = xd @ w + b
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ref_losses.append(-np.mean(np.sum(onehot * logp, 1))
                      + 0.5 * wd * (np.sum(w ** 2) + np.sum(b ** 2)))
    g = (np.exp(logp) - onehot) / n
    gw, gb = xd.T @ g + wd * w, g.sum(0) + wd * b
    w, b = w - lr * gw, b - lr * gb
  got = res.variables["params"]["logits"]["Dense_0"]
  np.testing.assert_allclose(got["kernel"], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["bias"], b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-5)
  assert ref_losses[-1] < ref_losses[0]


# -- checkpoints ---------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
  model = make_model("resnet", input_shape=(32, 32, 3), num_classes=3, widths=(2,))
  single = np_variables(model, seed=1)
  single["batch_stats"]["stem"]["BatchNorm_0"]["mean"] = np.arange(2, dtype=np.float32)
  stacked = stack_variables([single, np_variables(model, seed=2)])
  meta = {"model": dict(model.spec), "epochs": 3, "note": "x"}
  for name, v in (("single", single), ("stacked", stacked)):
    path = tmp_path / name
    save_variables(path, v, metadata=meta)
    loaded, got_meta = load_variables(path)
    assert got_meta == meta
    assert_trees_close(loaded, v, rtol=0, atol=0)
    loaded_like, _ = load_variables(str(path), like=v)
    assert_trees_close(loaded_like, v, rtol=0, atol=0)
  # No stray temporary directories are left beside the checkpoints.
  assert sorted(os.listdir(tmp_path)) == ["single", "stacked"]


def test_checkpoint_overwrite(tmp_path):
  model = make_model("logistic", input_shape=(6,), num_classes=3)
  a, b = np_variables(model, seed=1), np_variables(model, seed=2)
  path = tmp_path / "ckpt"
  save_variables(path, a)
  with pytest.raises(MiaInputError, match="path.*overwrite"):
    save_variables(path, b)
  loaded, meta = load_variables(path)
  assert meta == {}
  assert_trees_close(loaded, a, rtol=0, atol=0)
  save_variables(path, b, metadata={"v": 2}, overwrite=True)
  loaded, meta = load_variables(path)
  assert meta == {"v": 2}
  assert_trees_close(loaded, b, rtol=0, atol=0)


def test_checkpoint_like_structure_mismatch(tmp_path):
  v = np_variables(make_model("mlp", input_shape=(6,), num_classes=3, widths=(4,)))
  path = tmp_path / "ckpt"
  save_variables(path, v)
  deeper = np_variables(make_model("mlp", input_shape=(6,), num_classes=3, widths=(4, 4)))
  with pytest.raises(MiaInputError, match="path"):
    load_variables(path, like=deeper)
  with pytest.raises(MiaInputError, match="path"):
    load_variables(path, like={"params": v["params"], "batch_stats": {"x": np.zeros(2)}})


def test_checkpoint_like_shape_mismatch(tmp_path):
  """Same structure, different leaf shapes (orbax alone restores the on-disk shapes)."""
  v = np_variables(make_model("mlp", input_shape=(6,), num_classes=3, widths=(4,)))
  path = tmp_path / "ckpt"
  save_variables(path, v)
  wider = np_variables(make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,)))
  with pytest.raises(MiaInputError, match="path"):
    load_variables(path, like=wider)


def test_load_not_a_checkpoint(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(MiaInputError, match="path.*not a mia-jax checkpoint"):
    load_variables(tmp_path / "empty")
  with pytest.raises(MiaInputError, match="path.*not a mia-jax checkpoint"):
    load_variables(tmp_path / "missing")


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,arg", [
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=2.5), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_train_config_errors(kwargs, arg):
  with pytest.raises(MiaInputError, match=arg):
    TrainConfig(**kwargs)


@pytest.fixture(scope="module")
def err_setup():
  x, y = tiny_data(n=10)
  model = make_model("logistic", input_shape=(6,), num_classes=3)
  keep = np.ones((2, 10), bool)
  return model, x, y, keep


def test_train_models_keep_errors(err_setup):
  model, x, y, keep = err_setup
  with pytest.raises(MiaInputError, match="keep: expected bool"):
    train_models(model, x, y, keep[0])
  with pytest.raises(MiaInputError, match="keep: expected bool"):
    train_models(model, x, y, keep[:, :9])
  with pytest.raises(MiaInputError, match="keep: expected a boolean"):
    train_models(model, x, y, keep.astype(np.int32))
  bad = keep.copy()
  bad[1] = False
  with pytest.raises(MiaInputError, match=r"keep: model\(s\) \[1\]"):
    train_models(model, x, y, bad)


def test_train_models_data_errors(err_setup):
  model, x, y, keep = err_setup
  with pytest.raises(MiaInputError, match="y: labels"):
    train_models(model, x, np.where(y == 2, 3, y), keep)
  with pytest.raises(MiaInputError, match="y: labels"):
    train_models(model, x, y - 1, keep)
  with pytest.raises(MiaInputError, match="y: expected 10 labels"):
    train_models(model, x, y[:9], keep)
  with pytest.raises(MiaInputError, match="x: expected shape"):
    train_models(model, x[:, :5], y, keep)
  with pytest.raises(MiaInputError, match="x: expected shape"):
    train_models(model, x.reshape(10, 2, 3), y, keep)
  bad = x.copy()
  bad[3, 1] = np.nan
  with pytest.raises(MiaInputError, match="x:.*NaN"):
    train_models(model, bad, y, keep)
  bad[3, 1] = np.inf
  with pytest.raises(MiaInputError, match="x:.*NaN/inf"):
    train_model(model, bad, y)


def test_train_model_indices_errors(err_setup):
  model, x, y, _ = err_setup
  for idx in ([], [0, 10], [-1, 2], [[0, 1]]):
    with pytest.raises(MiaInputError, match="indices"):
      train_model(model, x, y, indices=idx)


def test_changing_only_epochs_reuses_the_compiled_step():
  """The compiled epoch is cached on what changes the program (the recipe without
  ``epochs``): a longer run of the same recipe does not build a new one (nor does DP)."""
  from mia_jax import dp, train as tr
  model = make_model("mlp", input_shape=(5,), num_classes=3, widths=(7,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  y = rng.integers(0, 3, 40)
  for fn, cached in ((lambda c: tr.train_model(model, x, y, config=c), tr._compiled_epoch),
                     (lambda c: dp.train_model_dp(model, x, y, config=c, noise_multiplier=1.0,
                                                  clip_norm=1.0), dp._compiled_dp_epoch)):
    fn(TrainConfig(epochs=1, batch_size=8, learning_rate=0.0123))
    misses = cached.cache_info().misses
    fn(TrainConfig(epochs=3, batch_size=8, learning_rate=0.0123))
    assert cached.cache_info().misses == misses
    fn(TrainConfig(epochs=1, batch_size=8, learning_rate=0.0456))  # another program
    assert cached.cache_info().misses == misses + 1
