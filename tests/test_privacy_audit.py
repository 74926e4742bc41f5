"""Privacy auditing: canaries, DP-SGD with planted gradient canaries, empirical epsilon
lower bounds (jax-privacy's estimators) and the audit that joins them."""

import json
import os

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import beta

from mia_jax import canaries, cli, dp, privacy_audit
from mia_jax._validation import MiaInputError
from mia_jax.audit import AuditConfig, run_audit
from mia_jax.models import make_model
from mia_jax.train import TrainConfig

pytest.importorskip("jax_privacy")
from jax_privacy import auditing as jp_auditing  # noqa: E402


# -- estimators -----------------------------------------------------------------------------------

def _cp_upper(k, n, s):
  return np.where(k < n, beta.ppf(1 - s, k + 1, n - k), 1.0)


def _cp_epsilon_at(ins, outs, t, significance, delta):
  """Independent Clopper-Pearson bound at one threshold (guess IN when score >= t)."""
  fn = np.sum(ins < t)
  fp = np.sum(outs >= t)
  tpr_lb = 1 - _cp_upper(fn, ins.size, significance / 2)
  fpr_ub = _cp_upper(fp, outs.size, significance / 2)
  if tpr_lb <= delta:
    return 0.0
  return max(0.0, float(np.log(tpr_lb - delta) - np.log(fpr_ub)))


def test_clopper_pearson_bound_and_threshold_match_an_independent_implementation():
  rng = np.random.default_rng(0)
  ins, outs = rng.normal(2.0, 1, 150), rng.normal(0, 1, 150)
  got = privacy_audit.epsilon_lower_bounds(ins, outs, estimators=["clopper-pearson"],
                                           confidence=0.9, delta=1e-5)["clopper-pearson"]
  # Bonferroni over the thresholds the library considers (its Pareto frontier of counts).
  n_thresholds = len(jp_auditing.CanaryScoreAuditor(ins, outs)._fn_counts)
  alpha = 0.1 / n_thresholds
  cands = np.union1d(ins, outs)
  eps = np.array([_cp_epsilon_at(ins, outs, t, alpha, 1e-5) for t in cands])
  assert got["epsilon"] == pytest.approx(eps.max(), rel=1e-9)
  assert got["epsilon"] > 1.0  # a shift of 2 standard deviations leaks
  assert _cp_epsilon_at(ins, outs, got["threshold"], alpha, 1e-5) == pytest.approx(
      got["epsilon"], rel=1e-9)


def test_one_run_threshold_reproduces_the_library_bound():
  rng = np.random.default_rng(1)
  ins, outs = rng.normal(1.5, 1, 200), rng.normal(0, 1, 200)
  got = privacy_audit.epsilon_lower_bounds(ins, outs, estimators=["one-run"], confidence=0.95,
                                           delta=1e-5)["one-run"]
  auditor = jp_auditing.CanaryScoreAuditor(ins, outs)
  assert got["epsilon"] == auditor.epsilon_one_run(0.05, 1e-5)
  n_thresholds = len(auditor._fn_counts)
  at = auditor.epsilon_one_run(0.05 / n_thresholds, 1e-5,
                               threshold_strategy=jp_auditing.Explicit(got["threshold"]))
  assert at == pytest.approx(got["epsilon"], rel=1e-6)


def test_bounds_are_zero_without_leakage():
  """In and out scores from one distribution: a valid 95% bound is 0 in at least 95% of
  trials; 20 trials with more than 3 positive bounds would have probability < 2%."""
  positive = {e: 0 for e in privacy_audit.ESTIMATORS}
  for seed in range(20):
    rng = np.random.default_rng(seed)
    b = privacy_audit.epsilon_lower_bounds(rng.normal(size=150), rng.normal(size=150))
    for e, v in b.items():
      positive[e] += v["epsilon"] > 0
  assert all(v <= 3 for v in positive.values()), positive


def test_bounds_grow_with_separation():
  rng = np.random.default_rng(2)
  base = rng.normal(size=300)
  eps = [privacy_audit.epsilon_lower_bounds(base[:150] + shift, base[150:],
                                            estimators=["one-run"])["one-run"]["epsilon"]
         for shift in (0.5, 2.0, 6.0)]
  assert eps[0] < eps[1] < eps[2]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(estimators=["gdp"]), "estimators"),
    (dict(estimators=["one-run", "one-run"]), "twice"),
    (dict(estimators=[]), "estimators"),
    (dict(confidence=0.5), "confidence"),
    (dict(confidence=1.0), "confidence"),
    (dict(delta=0.0), "delta"),
])
def test_estimator_bad_arguments(kwargs, needle):
  with pytest.raises(MiaInputError, match=needle):
    privacy_audit.epsilon_lower_bounds(np.ones(5), np.zeros(5), **kwargs)


def test_estimator_bad_scores():
  with pytest.raises(MiaInputError, match="included and excluded"):
    privacy_audit.epsilon_lower_bounds(np.ones(5), np.zeros(0))
  with pytest.raises(MiaInputError, match="NaN"):
    privacy_audit.epsilon_lower_bounds(np.r_[1.0, np.nan], np.zeros(3))
  with pytest.raises(MiaInputError, match="shape"):
    privacy_audit.audit_entry(np.zeros((2, 5)), np.zeros((1, 5), bool), estimators=["one-run"],
                              confidence=0.95, delta=1e-5)


# -- canaries --------------------------------------------------------------------------------------

def test_inclusion_is_seeded_fair_and_per_run():
  a = canaries.draw_inclusion(2000, 3, seed=5)
  assert a.shape == (3, 2000) and a.dtype == bool
  assert np.array_equal(a, canaries.draw_inclusion(2000, 3, seed=5))
  assert not np.array_equal(a, canaries.draw_inclusion(2000, 3, seed=6))
  # Fair coins: 6000 flips have mean 0.5 +- 0.02 with overwhelming probability; runs differ.
  assert abs(a.mean() - 0.5) < 0.02
  assert 0.45 < np.mean(a[0] == a[1]) < 0.55


def _data(n=400, d=12, k=4, seed=0, binary=False):
  rng = np.random.default_rng(seed)
  x = (rng.random((n, d)) < 0.3) if binary else rng.normal(size=(n, d))
  return x.astype(np.float32), rng.integers(0, k, n).astype(np.int32)


def test_mislabeled_canaries_are_pool_examples_with_another_label():
  x, y = _data()
  pool = np.arange(100, 400)
  c = canaries.make_canaries("mislabeled", 50, 1, x=x, y=y, pool=pool, num_classes=4, seed=0)
  assert np.unique(c.source).size == 50 and np.isin(c.source, pool).all()
  assert np.array_equal(c.x, x[c.source])
  assert np.all(c.y != y[c.source]) and c.y.min() >= 0 and c.y.max() < 4
  assert c.arrays().keys() == {"included", "x", "y", "source"}


def test_ood_canaries_follow_the_feature_type():
  x, y = _data(binary=True)
  c = canaries.make_canaries("ood", 40, 1, x=x, y=y, pool=np.arange(400), num_classes=4, seed=0)
  assert set(np.unique(c.x)) <= {0.0, 1.0} and abs(c.x.mean() - 0.5) < 0.1  # coin flips
  x, y = _data()
  c = canaries.make_canaries("ood", 40, 1, x=x, y=y, pool=np.arange(400), num_classes=4, seed=0)
  assert c.x.min() >= x.min() and c.x.max() <= x.max() and c.x.dtype == x.dtype


def test_input_space_canaries_lie_along_the_least_varying_directions():
  rng = np.random.default_rng(0)
  # Feature variances 100, ..., 0.01: the last features vary least.
  scales = np.logspace(1, -1, 10)
  x = (rng.normal(size=(1000, 10)) * scales).astype(np.float32)
  y = rng.integers(0, 3, 1000).astype(np.int32)
  c = canaries.make_canaries("input-space", 30, 1, x=x, y=y, pool=np.arange(1000),
                             num_classes=3, seed=0)
  centred = c.x - x.mean(0)
  # k = D // 10 = 1 direction: the last feature; each canary sits far out along it.
  assert np.all(np.abs(centred[:, -1]) > 5 * x[:, -1].std())
  assert np.all(np.abs(centred[:, :5]) < 0.1 * x[:, :5].std(0))


@pytest.mark.parametrize("kw,needle", [
    (dict(kind="bogus"), "canary_kind"),
    (dict(count=5), "canaries"),
    (dict(count=300), "cannot fit"),
    (dict(kind="mislabeled", pool_size=90), "auxiliary"),
    (dict(kind="mislabeled", num_classes=1), "2 classes"),
    (dict(kind="input-space", feature_shape=(1,)), "single feature"),
    (dict(kind="gradient", uses_dp=False), "DP-SGD"),
    (dict(kind="gradient", params_only=False), "BatchNorm"),
    (dict(kind="gradient", num_params=20), "coordinates"),
])
def test_canary_requests_that_cannot_work_are_refused(kw, needle):
  args = dict(kind="mislabeled", count=50, runs=1, target_size=200, pool_size=1000,
              num_classes=3, feature_shape=(8,), uses_dp=True, params_only=True,
              num_params=1000)
  args.update(kw)
  with pytest.raises(MiaInputError, match=needle):
    canaries.check_request(args.pop("kind"), args.pop("count"), args.pop("runs"), **args)


# -- DP-SGD with planted gradient canaries ----------------------------------------------------------

def _dead_feature_problem():
  """Logistic regression whose feature 0 is always 0: no example moves the weights
  W[0, :], so a canary planted there moves alone."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 6)).astype(np.float32)
  x[:, 0] = 0
  y = (x[:, 1] > 0).astype(np.int32)
  model = make_model("logistic", input_shape=(6,), num_classes=3)
  params = model.init(jax.random.key(0))["params"]
  # Mark row 0 of the one 2-D leaf (the kernel W) and flatten as the trainer does.
  marker = jax.tree.map(lambda a: np.zeros(a.shape, np.float32) if a.ndim != 2 else np.r_[
      np.ones((1, a.shape[1]), np.float32), np.zeros((a.shape[0] - 1, a.shape[1]), np.float32)],
      params)
  coords = np.flatnonzero(np.asarray(ravel_pytree(marker)[0]))
  assert coords.size == 3 and ravel_pytree(params)[0].size == 6 * 3 + 3
  return model, x, y, coords


def test_planted_gradient_moves_its_coordinate_by_c_times_its_samples():
  """SGD without noise: an included canary at a coordinate no example touches moves it by
  exactly lr * C * (times sampled) / B; an excluded one leaves it where it started."""
  model, x, y, coords = _dead_feature_problem()
  cfg = TrainConfig(optimizer="sgd", learning_rate=0.3, epochs=3, batch_size=30)
  included = np.array([True, False, True])
  r = dp.train_model_dp(model, x, y, config=cfg, noise_multiplier=0.0, clip_norm=0.7, seed=4,
                        gradient_canaries=(coords, included))
  moved = canaries.gradient_scores(dp.initial_params(model, 4), r.variables["params"], coords)
  # The sampler's draws, replayed: members then the included canaries as rows 300, 301.
  members = np.r_[np.arange(300), 300 + np.flatnonzero(included)]
  sched = dp._Schedule(members, cfg, 4, "poisson")
  times = [sum(int(np.sum(b == 300 + j)) for b in sched.batches) for j in range(3)]
  assert times[1] == 0 and times[0] > 0 and times[2] > 0
  np.testing.assert_allclose(moved, 0.3 * 0.7 * np.array(times) / 30, rtol=1e-5, atol=1e-7)
  assert moved[1] == 0.0


def test_stacked_dp_with_gradient_canaries_equals_one_at_a_time():
  model, x, y, coords = _dead_feature_problem()
  cfg = TrainConfig(optimizer="adam", learning_rate=0.05, epochs=2, batch_size=40)
  inc = np.array([[True, False, True], [False, True, True]])
  keep = np.ones((2, 300), bool)
  keep[1, :50] = False
  stacked = dp.train_models_dp(model, x, y, keep, config=cfg, noise_multiplier=1.0,
                               clip_norm=1.0, seed=3, gradient_canaries=(coords, inc))
  for m in range(2):
    alone = dp.train_model_dp(model, x, y, config=cfg, noise_multiplier=1.0, clip_norm=1.0,
                              seed=(3, m), indices=np.flatnonzero(keep[m]),
                              gradient_canaries=(coords, inc[m]))
    for a, b in zip(jax.tree.leaves(alone.variables),
                    jax.tree.leaves(jax.tree.map(lambda t: t[m], stacked.variables))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,needle", [
    ((np.array([0, 0]), np.array([True, True])), "distinct"),
    ((np.array([10_000]), np.array([True])), "distinct"),
    ((np.array([1, 2]), np.array([True])), "included"),
    ("nonsense", "coords, included"),
])
def test_gradient_canary_arguments_are_checked(bad, needle):
  model, x, y, _ = _dead_feature_problem()
  with pytest.raises(MiaInputError, match=needle):
    dp.train_model_dp(model, x, y, config=TrainConfig(epochs=1), noise_multiplier=1.0,
                      clip_norm=1.0, gradient_canaries=bad)


def _gradient_audit(sigma, seed, epochs=4):
  """The strongest white-box audit here: 200 Dirac canaries on a small MLP's quietest
  coordinates; returns (theoretical epsilon, bounds)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(500, 10)).astype(np.float32)
  x[:, :3] = 0  # coordinates the data never moves: the canaries are only hidden by noise
  y = (x[:, 4] + x[:, 5] > 0).astype(np.int32)
  model = make_model("mlp", input_shape=(10,), num_classes=2, widths=[32])
  n_params = ravel_pytree(model.init(jax.random.key(0))["params"])[0].size
  quiet = canaries.quiet_coordinates(model, dp.initial_params(model, seed), x, y)
  c = canaries.make_canaries("gradient", 200, 1, x=x, y=y, pool=np.arange(500),
                             num_classes=2, seed=seed, num_params=n_params,
                             coordinate_scores=quiet)
  cfg = TrainConfig(optimizer="sgd", learning_rate=0.5, epochs=epochs, batch_size=100)
  r = dp.train_model_dp(model, x, y, config=cfg, noise_multiplier=sigma, clip_norm=1.0,
                        seed=seed, gradient_canaries=(c.coords, c.included[0]))
  s = canaries.gradient_scores(dp.initial_params(model, seed), r.variables["params"], c.coords)
  n = 500 + int(c.included.sum())
  steps = epochs * dp.steps_per_epoch(n, 100)
  eps = (dp.epsilon_for(sigma, dp.sampling_rate(n, 100), steps, 1e-5) if sigma > 0
         else np.inf)
  inc = c.included[0]
  return eps, privacy_audit.epsilon_lower_bounds(s[inc], s[~inc], delta=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_sgd_empirical_epsilon_never_exceeds_the_theoretical(seed):
  for sigma in (0.8, 2.0):
    eps, bounds = _gradient_audit(sigma, seed)
    assert np.isfinite(eps)
    for name, v in bounds.items():
      assert v["epsilon"] <= eps, (sigma, name, v, eps)


def test_the_same_audit_detects_training_without_noise():
  """Without noise the canaries are plain to see: the bound is far above what the noisy
  runs above were held to (so that test could fail)."""
  eps, bounds = _gradient_audit(0.0, 0)
  assert eps == np.inf
  assert bounds["one-run"]["epsilon"] > 1.5
  assert bounds["clopper-pearson"]["epsilon"] > 1.5


# -- the audit ---------------------------------------------------------------------------------------

def _audit(tmp_path, name="run", **kw):
  cfg = AuditConfig(**{**dict(dataset="digits", model="mlp", epochs=25, attacks=("loss",),
                              bootstrap_resamples=0), **kw})
  return run_audit(cfg, str(tmp_path / name), report=True), tmp_path / name


def test_audit_with_canaries_on_a_non_dp_target(tmp_path):
  res, out = _audit(tmp_path, attacks=("loss", "lira"), num_reference=4, canaries=120,
                    canary_kind="mislabeled", seed=1)
  pa = res["privacy_audit"]
  assert pa["canaries"]["kind"] == "mislabeled" and pa["canaries"]["count"] == 120
  assert pa["mode"] == "one-run" and pa["theoretical_epsilon"] == "inf"
  assert set(pa["attacks"]) == {"loss", "lira"}
  # An overfit target leaks its mislabeled canaries: clearly above zero.
  assert pa["attacks"]["loss"]["epsilon"]["one-run"]["epsilon"] > 0.5
  assert pa["attacks"]["loss"]["auc"] > 0.8
  saved = np.load(out / "canaries.npz")
  scores = np.load(out / "scores.npz")
  inc = saved["included"]
  assert inc.shape == (1, 120) and pa["canaries"]["included"] == [int(inc.sum())]
  assert scores["canary:loss"].shape == (1, 120)
  assert np.array_equal(scores["canary_included"], inc)
  # The regular evaluation is untouched by the canaries: members and non-members only.
  assert scores["is_member"].size == res["dataset"]["num_members"] * 2
  assert scores["score:loss"].size == scores["is_member"].size
  # The bound in results is the estimator on the saved canary scores.
  s = scores["canary:loss"][0]
  again = privacy_audit.epsilon_lower_bounds(s[inc[0]], s[~inc[0]])
  assert again == pa["attacks"]["loss"]["epsilon"]
  # Canary sources left the attacker's auxiliary data.
  assert res["dataset"]["num_auxiliary"] == 1797 - 2 * res["dataset"]["num_members"] - 120
  md = (out / "report.md").read_text()
  assert "Privacy audit" in md and (out / "plots" / "privacy_audit.png").exists()
  assert res["schema_version"] == 2


def test_one_command_dp_audit_with_500_canaries(tmp_path, capsys):
  out = tmp_path / "dp"
  code = cli.main(["audit", "--dataset", "purchase_like", "-D", "num_features=60",
                   "--model", "mlp", "-M", "widths=[32]", "--target-size", "800",
                   "--epochs", "4", "--dp-epsilon", "4", "--canaries", "500",
                   "--attacks", "loss,rmia", "--num-reference", "2",
                   "--bootstrap-resamples", "0", "--out", str(out), "--quiet"])
  assert code == 0
  res = json.loads((out / "results.json").read_text())
  pa = res["privacy_audit"]
  assert pa["theoretical_epsilon"] == pytest.approx(4.0, rel=1e-2)
  assert pa["canaries"]["count"] == 500
  for attack, entry in pa["attacks"].items():
    for name, v in entry["epsilon"].items():
      assert 0 <= v["epsilon"] <= pa["theoretical_epsilon"], (attack, name)
  assert "Privacy audit" in (out / "report.md").read_text()


def test_several_run_gradient_audit_pools_every_run(tmp_path):
  res, out = _audit(tmp_path, epochs=3, canaries=40, canary_kind="gradient", canary_runs=3,
                    noise_multiplier=0.0, optimizer="sgd", learning_rate=0.3)
  pa = res["privacy_audit"]
  assert pa["mode"] == "several-run" and pa["canaries"]["runs"] == 3
  entry = pa["attacks"]["gradient-canary"]
  assert entry["guesses"] == 120
  scores = np.load(out / "scores.npz")
  assert scores["canary:gradient-canary"].shape == (3, 40)
  inc = np.load(out / "canaries.npz")["included"]
  assert not np.array_equal(inc[0], inc[1])  # each run flips its own coins
  assert entry["auc"] > 0.9  # no noise: the planted gradients show


@pytest.mark.parametrize("kw,needle", [
    (dict(estimators=("one-run",)), "add --canaries"),
    (dict(canary_runs=2), "add --canaries"),
    (dict(canaries=5), "at least 10"),
    (dict(canaries=50, confidence=0.4), "confidence"),
    (dict(canaries=50, canary_kind="gradient"), "DP-SGD"),
    (dict(canaries=50, estimators=("gdp",)), "estimators"),
    (dict(canaries=50, canary_kind="nope"), "canary_kind"),
])
def test_bad_canary_configs_are_refused(kw, needle):
  with pytest.raises(MiaInputError, match=needle):
    AuditConfig(**kw)


@pytest.mark.parametrize("kw,needle", [
    (dict(canaries=1000), "cannot fit"),
    (dict(canaries=200, target_size=700), "auxiliary"),
])
def test_canaries_the_data_cannot_hold_fail_before_training(tmp_path, kw, needle):
  with pytest.raises(MiaInputError, match=needle):
    _audit(tmp_path, **kw)
  assert not os.path.exists(tmp_path / "run")


def test_white_box_attacks_score_the_canaries_too(tmp_path):
  res, out = _audit(tmp_path, epochs=15, attacks=("stolen-memories", "nasr"), canaries=40,
                    canary_kind="ood", target_size=200)
  pa = res["privacy_audit"]
  assert set(pa["attacks"]) == {"stolen-memories", "nasr"}
  scores = np.load(out / "scores.npz")
  for name in ("stolen-memories", "nasr"):
    s = scores[f"canary:{name}"]
    assert s.shape == (1, 40) and np.isfinite(s).all() and np.ptp(s) > 0
    assert pa["attacks"][name]["guesses"] == 40


def test_report_warns_when_a_bound_exceeds_the_theoretical_epsilon(tmp_path):
  from mia_jax.report import write_report
  est = {"epsilon": 2.5, "threshold": 0.1}
  results = {"schema_version": 2, "attacks": {}, "privacy_audit": {
      "canaries": {"kind": "gradient", "count": 100, "runs": 1, "included": [50]},
      "mode": "one-run", "confidence": 0.95, "delta": 1e-5, "estimators": ["one-run"],
      "theoretical_epsilon": 2.0,
      "attacks": {"gradient-canary": {"epsilon": {"one-run": est}, "auc": 0.9,
                                      "guesses": 100}}}}
  (tmp_path / "results.json").write_text(json.dumps(results))
  _, md = write_report(tmp_path)
  text = open(md).read()
  assert "Empirical epsilon above the theoretical one" in text and "2.500" in text
  results["privacy_audit"]["attacks"]["gradient-canary"]["epsilon"]["one-run"]["epsilon"] = 1.5
  (tmp_path / "results.json").write_text(json.dumps(results))
  _, md = write_report(tmp_path)
  text = open(md).read()
  assert "Empirical epsilon above" not in text and "| gradient-canary | 0.900 | 1.500" in text


def test_gradient_canaries_on_a_users_linen_model():
  """A model written as a user writes it (plain flax.linen, from_linen): the quietest
  coordinates are the ones no example moves (the kernel row of an always-zero feature),
  and DP-SGD without noise moves an included canary there and leaves an excluded one."""
  import flax.linen as nn
  from mia_jax.models import from_linen

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(features=8)(x.reshape((x.shape[0], -1))))
      return nn.Dense(features=3)(x)

  model = from_linen(MLP(), input_shape=(6,), num_classes=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6)).astype(np.float32)
  x[:, 0] = 0
  y = (x[:, 1] > 0).astype(np.int32)
  p0 = dp.initial_params(model, 2)
  quiet = canaries.quiet_coordinates(model, p0, x, y)
  n_params = ravel_pytree(p0)[0].size
  c = canaries.make_canaries("gradient", 8, 1, x=x, y=y, pool=np.arange(200), num_classes=3,
                             seed=2, num_params=n_params, coordinate_scores=quiet)
  assert np.all(quiet[c.coords] == 0.0)  # untouched by the data
  inc = c.included[0]
  assert inc.any() and (~inc).any()
  r = dp.train_model_dp(model, x, y, config=TrainConfig(optimizer="sgd", learning_rate=0.3,
                                                        epochs=3, batch_size=40),
                        noise_multiplier=0.0, clip_norm=1.0, seed=2,
                        gradient_canaries=(c.coords, inc))
  moved = canaries.gradient_scores(p0, r.variables["params"], c.coords)
  assert np.all(moved[~inc] == 0.0) and np.all(moved[inc] > 0.0)


# -- sweeps of several audits ------------------------------------------------------------------------

def _md_rows(text, first_header):
  lines = [l for l in text.splitlines() if l.startswith("|")]
  start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header} |"))
  head = [c.strip() for c in lines[start].strip("|").split("|")]
  rows = []
  for l in lines[start + 2:]:
    cells = [c.strip() for c in l.strip("|").split("|")]
    if len(cells) != len(head):
      break
    rows.append(dict(zip(head, cells)))
  return rows


def test_sweep_report_of_real_dp_audits(tmp_path, capsys):
  """Two real audits of one recipe (DP-SGD at a noise multiplier, and without noise) on one
  page: a row per (run, attack) with every estimator's bound as in results.json, and the
  empirical-vs-theoretical plot."""
  base = dict(dataset="purchase_like", dataset_options={"num_features": 30, "num_train": 400,
                                                        "num_test": 400, "seed": 0},
              model="mlp", model_options={"widths": [32]}, target_size=150, epochs=4,
              batch_size=32, learning_rate=0.01, attacks=("loss",), bootstrap_resamples=0,
              canaries=40, canary_kind="gradient", clip_norm=1.0)
  runs = {}
  for name, sigma in (("sigma1", 1.0), ("nonoise", 0.0)):
    runs[name] = run_audit(AuditConfig(**base, noise_multiplier=sigma), str(tmp_path / name))
  out = tmp_path / "sweep"
  assert cli.main(["report", "--sweep", str(out), str(tmp_path / "nonoise"),
                   str(tmp_path / "sigma1")]) == 0
  assert "sweep of 2 privacy audits" in capsys.readouterr().out
  text = (out / "sweep.md").read_text()
  rows = _md_rows(text, "run")
  assert [r["run"] for r in rows] == ["sigma1", "nonoise"]  # by theoretical epsilon
  for r in rows:
    pa = runs[r["run"]]["privacy_audit"]
    assert r["attack"] == "gradient-canary" and r["guesses"] == "40"
    for est, v in pa["attacks"]["gradient-canary"]["epsilon"].items():
      assert r[f"epsilon, {est}"] == f"{v['epsilon']:.3f}"
  assert rows[1]["theoretical epsilon"] == "none (no DP)"
  assert float(rows[0]["theoretical epsilon"]) == pytest.approx(
      runs["sigma1"]["privacy_audit"]["theoretical_epsilon"], abs=1e-4)
  assert "above the theoretical" not in text
  assert (out / "plots" / "sweep_empirical_epsilon.png").stat().st_size > 5000
  html = (out / "sweep.html").read_text()
  assert html.count("data:image/png;base64,") == 1


def _fake_audit(path, theoretical, bound, kind="gradient", attack="gradient-canary"):
  path.mkdir()
  est = {"epsilon": bound, "threshold": 0.1}
  (path / "results.json").write_text(json.dumps({"schema_version": 2, "attacks": {},
      "privacy_audit": {"canaries": {"kind": kind, "count": 100, "runs": 1, "included": [50]},
                        "mode": "one-run", "confidence": 0.95, "delta": 1e-5,
                        "estimators": ["one-run"], "theoretical_epsilon": theoretical,
                        "attacks": {attack: {"epsilon": {"one-run": est}, "auc": 0.9,
                                             "guesses": 100}}}}))
  return path


def test_sweep_report_warns_labels_and_refuses(tmp_path, capsys):
  from mia_jax.report import write_sweep_report
  a = _fake_audit(tmp_path / "a", 1.0, 0.4)
  b = _fake_audit(tmp_path / "b", 2.0, 2.6, kind="mislabeled", attack="loss")
  _, md = write_sweep_report([a, b], tmp_path / "s")
  text = open(md).read()
  assert "Empirical epsilon above the theoretical one" in text and "b / loss (one-run): 2.600" in text
  assert "a / gradient-canary" not in text.split("## Every run")[0]  # only the bound above
  # runs with different canaries: each series says which
  assert [r["canaries"] for r in _md_rows(text, "run")] == ["100 gradient, 1 run",
                                                          "100 mislabeled, 1 run"]
  plain = tmp_path / "plain"
  plain.mkdir()
  (plain / "results.json").write_text(json.dumps({"schema_version": 2, "attacks": {}}))
  for runs, needle in (([a, plain], "no privacy audit"), ([a, a], "given twice"),
                       ([], "one or more"), ([a, tmp_path / "missing"], "not a directory")):
    with pytest.raises(MiaInputError, match=needle):
      write_sweep_report(runs, tmp_path / "s2")
  assert not (tmp_path / "s2").exists()  # refused before anything is written
  assert cli.main(["report", str(a), str(b)]) == 2
  assert "several need --sweep DIR" in capsys.readouterr().err
