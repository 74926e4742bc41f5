"""Stolen Memories: known answers on Gaussian naive-Bayes data, closed form, calibration."""

import dataclasses

import jax
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.attacks import stolen_memories as sm
from mia_jax.data import gaussian_nb
from mia_jax.metrics import precision_recall_at, roc_auc
from mia_jax.models import make_model, stack_variables
from mia_jax.signals import blackbox_signals
from mia_jax.train import TrainConfig, train_model, train_models

# A strongly L2-regularized linear softmax model is the naive-Bayes-like estimator for which
# the linear attack is Bayes-optimal (weights are close to linear in the class means).
RECIPE = TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=100, batch_size=64,
                     weight_decay=1.0)


def _gnb_case(*, d, n, separation, seed=0, aux=2000, fresh=1600):
  ds, mu = gaussian_nb(num_classes=2, num_features=d, num_train=2 * n + aux + fresh, num_test=2,
                       separation=separation, seed=seed)
  x, y = ds.x_train, ds.y_train
  idx = np.arange(x.shape[0])
  t_in, t_out = idx[:n], idx[n:2 * n]
  a, f = idx[2 * n:2 * n + aux], idx[2 * n + aux:]
  model = make_model("logistic", input_shape=(d,), num_classes=2)
  target = train_model(model, x, y, config=RECIPE, seed=1, indices=t_in).variables
  ev = np.concatenate([t_in, t_out])
  member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  loss_auc = roc_auc(-blackbox_signals(model, target, x[ev], y[ev])["loss"], member)
  cfg = sm.StolenMemoriesConfig(layers=("input",), num_proxies=min(16, aux // n), proxy_size=n)
  proxies = sm.fit_proxies(model, target, x[a], y[a], config=cfg, train_config=RECIPE, seed=2)
  attack_auc = roc_auc(sm.score(model, target, proxies, x[ev], y[ev], config=cfg)["input"], member)
  # Oracle: knows the true class means and the population-trained weights (8 proxies on
  # fresh population samples of the target's size, averaged).
  keep = np.zeros((8, f.size), bool)
  rng = np.random.default_rng(3)
  for p in range(8):
    keep[p, rng.choice(f.size, n, replace=False)] = True
  pop = train_models(model, x[f], y[f], keep, config=RECIPE, seed=4).variables
  w_t = np.asarray(target["params"]["logits"]["Dense_0"]["kernel"])
  w_p = np.asarray(pop["params"]["logits"]["Dense_0"]["kernel"]).mean(0)
  oracle_auc = roc_auc(sm.linear_scores_closed_form(x[ev], y[ev], w_t, w_p, mu, centered=True),
                       member)
  return loss_auc, attack_auc, oracle_auc


@pytest.mark.slow
def test_gaussian_nb_overfit_beats_loss_and_nears_oracle():
  # d large relative to n: the target fits its training set perfectly.
  loss_auc, attack_auc, oracle_auc = _gnb_case(d=200, n=100, separation=3.0)
  assert attack_auc > loss_auc + 0.06, (attack_auc, loss_auc)  # seen: +0.08 to +0.12
  assert attack_auc > oracle_auc - 0.03, (attack_auc, oracle_auc)


@pytest.mark.slow
def test_gaussian_nb_well_generalized_not_below_loss():
  loss_auc, attack_auc, oracle_auc = _gnb_case(d=20, n=400, separation=3.0, aux=4000)
  assert attack_auc >= loss_auc - 0.01, (attack_auc, loss_auc)
  assert attack_auc > oracle_auc - 0.03, (attack_auc, oracle_auc)


def test_closed_form_equals_input_layer_scores():
  """The layer-wise attack at "input" of a logistic model IS the linear attack."""
  rng = np.random.default_rng(0)
  model = make_model("logistic", input_shape=(5,), num_classes=3)
  target = model.init(jax.random.key(0))
  proxies = stack_variables([model.init(jax.random.key(p)) for p in (1, 2)])
  x = rng.normal(size=(20, 5)).astype(np.float32)
  y = rng.integers(0, 3, 20)
  means = rng.normal(size=(3, 5)).astype(np.float32)
  p = sm.Proxies({"input": proxies}, {"input": means})
  for centered in (False, True):
    cfg = sm.StolenMemoriesConfig(layers=("input",), centered=centered)
    got = sm.score(model, target, p, x, y, config=cfg)["input"]
    w_t = np.asarray(target["params"]["logits"]["Dense_0"]["kernel"])
    w_p = np.asarray(proxies["params"]["logits"]["Dense_0"]["kernel"]).mean(0)
    ref = sm.linear_scores_closed_form(x, y, w_t, w_p, means, centered=centered)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_exact_closed_form():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 4))
  y = np.array([0, 1, 0, 1, 1, 0])
  wt, wp, m = rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), rng.normal(size=(2, 4))
  counts, sigma = np.array([10, 20]), 1.5
  got = sm.linear_scores_closed_form(x, y, wt, wp, m, class_counts=counts, sigma=sigma)
  for i in range(6):
    n = counts[y[i]]
    s = sum((x[i, j] - m[y[i], j]) * (wt[j, y[i]] - wp[j, y[i]]) for j in range(4))
    ref = n / (n - 1) * s - np.sum((x[i] - m[y[i]]) ** 2) / (2 * (n - 1) * sigma ** 2)
    assert got[i] == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow
def test_calibrated_threshold_reaches_precision_on_held_out_data():
  """Shadow-calibrated threshold for precision 0.8 achieves it on a separate target."""
  ds, _ = gaussian_nb(num_classes=2, num_features=200, num_train=3000, num_test=2,
                      separation=3.0, seed=5)
  x, y = ds.x_train, ds.y_train
  n = 150
  t_in, t_out, aux = np.arange(n), np.arange(n, 2 * n), np.arange(2 * n, 3000)
  model = make_model("logistic", input_shape=(200,), num_classes=2)
  target = train_model(model, x, y, config=RECIPE, seed=1, indices=t_in).variables
  ev = np.concatenate([t_in, t_out])
  member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  cfg = sm.StolenMemoriesConfig(layers=("input",), num_proxies=8)
  res = sm.run_attack(model, target, x[aux], y[aux], x[ev], y[ev], target_train_size=n,
                      config=cfg, train_config=RECIPE, setting="shadow", use_loss=False,
                      target_precision=0.8, seed=0)
  precision, recall = precision_recall_at(res.meta_scores, member, res.threshold)
  predicted = int(np.sum(res.meta_scores >= res.threshold))
  assert predicted >= 20, predicted  # enough positives for the precision to mean something
  stderr = np.sqrt(0.8 * 0.2 / predicted)
  assert precision >= 0.8 - 3 * stderr, (precision, predicted)
  assert res.calibration["num_proxies"] == 8


@pytest.mark.slow
def test_nonmember_setting_threshold_controls_fpr():
  ds, _ = gaussian_nb(num_classes=2, num_features=100, num_train=1800, num_test=2,
                      separation=3.0, seed=6)
  x, y = ds.x_train, ds.y_train
  n = 150
  t_in, t_out, aux = np.arange(n), np.arange(n, 2 * n), np.arange(2 * n, 1800)
  model = make_model("mlp", input_shape=(100,), num_classes=2, widths=(16,))
  cfg_train = dataclasses.replace(RECIPE, weight_decay=1e-2, epochs=30)
  target = train_model(model, x, y, config=cfg_train, seed=1, indices=t_in).variables
  ev = np.concatenate([t_in, t_out])
  member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  res = sm.run_attack(model, target, x[aux], y[aux], x[ev], y[ev], target_train_size=n,
                      train_config=cfg_train, setting="nonmember", target_fpr=0.1, seed=0)
  assert set(res.layer_scores) == {"input", "dense_0"}
  assert roc_auc(res.meta_scores, member) > 0.6
  fpr = np.mean(res.meta_scores[~member] >= res.threshold)
  assert fpr <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / n), fpr


def test_bad_inputs():
  model = make_model("mlp", input_shape=(4,), num_classes=2, widths=(3,))
  target = model.init(jax.random.key(0))
  x = np.zeros((20, 4), np.float32)
  y = np.arange(20) % 2
  with pytest.raises(MiaInputError, match="layer"):
    sm.fit_proxies(model, target, x, y, config=sm.StolenMemoriesConfig(layers=("conv9",)))
  with pytest.raises(MiaInputError, match="num_proxies"):
    sm.fit_proxies(model, target, x, y, config=sm.StolenMemoriesConfig(num_proxies=11))
  with pytest.raises(MiaInputError, match="aux_indices"):
    sm.check_disjoint(np.array([1, 2, 3]), np.array([3, 4]))
  sm.check_disjoint(np.array([1, 2]), np.array([3, 4]))  # disjoint: no error
  with pytest.raises(MiaInputError, match="w_proxy"):
    sm.linear_scores_closed_form(x, y, np.zeros((4, 2)), np.zeros((5, 2)), np.zeros((2, 4)))
  with pytest.raises(MiaInputError, match="proxy_sampling"):
    sm.StolenMemoriesConfig(proxy_sampling="bootstrapped")
  with pytest.raises(MiaInputError, match="setting"):
    sm.partition_attacker_data(100, target_train_size=10, setting="oracle")


def test_checkpoints_score_in_one_stacked_pass_equal_to_one_at_a_time(monkeypatch):
  """The registry's Stolen Memories on C stacked checkpoints: fit per checkpoint (its
  proxies share that checkpoint's frozen layers), scored in one stacked pass; equal to
  fitting and scoring each checkpoint alone."""
  from mia_jax import pipeline
  from mia_jax.attacks import registry
  from mia_jax.attacks.base import AttackerSide, Lazy
  ds, _ = gaussian_nb(num_classes=3, num_features=8, num_train=900, num_test=2, separation=2.0,
                      seed=3)
  x, y = ds.x_train, ds.y_train
  model = make_model("mlp", input_shape=(8,), num_classes=3, widths=[12])
  cfg = TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=8, batch_size=64)
  members, nonmembers, aux = np.arange(100), np.arange(100, 200), np.arange(200, 900)
  keep = np.zeros((2, x.shape[0]), bool)
  keep[:, members] = True
  keep[1, members[:50]] = False  # two different targets
  stacked = train_models(model, x, y, keep, config=cfg, seed=5).variables
  ev = np.r_[members, nonmembers]
  is_member = np.r_[np.ones(100, bool), np.zeros(100, bool)]

  def side_of(c):
    target = jax.tree.map(lambda a: a[c], stacked)
    return AttackerSide({"whitebox": lambda: pipeline.whitebox_inputs(
        model, target, x, y, aux, target_train_size=100, train_config=cfg, seed=0,
        num_eval=ev.size, log=lambda s: None)})

  attack = registry.get("stolen-memories")
  options = {"seed": 0, "microbatch_size": 64}
  import mia_jax.whitebox as wb
  calls = []
  original = wb.layer_scores

  def counting(*a, **k):
    calls.append(k.get("stacked", False))
    return original(*a, **k)
  monkeypatch.setattr(wb, "layer_scores", counting)
  scores, subs, fields = pipeline.run_stacked(
      attack, options, side_of, Lazy({"models": lambda: (model, stacked, x[ev], y[ev])}, "s"), 2)
  monkeypatch.setattr(wb, "layer_scores", original)
  assert calls == [True]  # the checkpoints' scores: one stacked pass
  assert scores.shape == (2, 200) and set(subs) == {"input", "dense_0"}
  for c in range(2):
    target = jax.tree.map(lambda a: a[c], stacked)
    alone, alone_subs, entry = pipeline.run_one(
        attack, options, side_of(c), Lazy({"model": lambda: (model, target, x[ev], y[ev])}, "s"),
        is_member)
    np.testing.assert_allclose(scores[c], alone, rtol=1e-4, atol=1e-5)
    for k in alone_subs:
      np.testing.assert_allclose(subs[k][c], alone_subs[k], rtol=1e-4, atol=1e-5)
    assert fields[c]["threshold"] == entry["calibrated"]["threshold"]
