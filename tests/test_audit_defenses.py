"""The audit's defenses, DP training, shadow-data sources and LiRA augmentations (issues
#4 and #5): options reach the attacks, and what the attacks see is re-derived here
independently from the saved models."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax import cli
from mia_jax.audit import AuditConfig, prepare, run_audit
from mia_jax.defenses import apply_defenses
from mia_jax.signals import blackbox_signals, signals_from_logits, signals_from_probs
from mia_jax.train import load_variables

SMALL = dict(epochs=2, target_size=60, batch_size=32, model_options={"widths": [32]})


def _target(cfg, out):
  setup = prepare(cfg)
  like = setup.model.init(jax.random.key(0))
  return setup, load_variables(str(out / "target"), like=like)[0]


def _npz(out):
  with np.load(out / "scores.npz") as f:
    return {k: f[k] for k in f.files}


# -- signals of a defended API ------------------------------------------------------------

def test_signals_from_probs_equal_logit_signals_without_defense():
  z = jax.random.normal(jax.random.key(1), (64, 7)) * 3
  y = jax.random.randint(jax.random.key(2), (64,), 0, 7)
  a = signals_from_logits(z, y)
  b = signals_from_probs(jax.nn.softmax(z), y)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_signals_from_probs_naive_loop_with_zeros():
  p = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.5]], np.float32)
  y = np.array([0, 0, 2])
  s = signals_from_probs(jnp.asarray(p), jnp.asarray(y))
  floor = 1e-30
  for i in range(3):
    py = p[i, y[i]]
    assert s["loss"][i] == pytest.approx(-math.log(max(py, floor)), rel=1e-5)
    assert s["entropy"][i] == pytest.approx(-sum(v * math.log(v) for v in p[i] if v > 0), abs=1e-6)
    others = sum(p[i]) - py
    assert s["scaled_logit"][i] == pytest.approx(
        math.log(max(py, floor)) - math.log(max(others, floor)), rel=1e-5)
    ment = -(1 - py) * math.log(max(py, floor)) - sum(
        p[i, k] * math.log(max(1 - p[i, k], floor)) for k in range(3) if k != y[i] and p[i, k] > 0)
    assert s["modified_entropy"][i] == pytest.approx(ment, rel=1e-4, abs=1e-6)
  np.testing.assert_array_equal(s["correctness"], [1.0, 0.0, 0.0])  # a tie goes to the lower index


# -- configuration and command line ---------------------------------------------------------

def test_cli_options_reach_the_config():
  args = cli.build_parser().parse_args(
      ["audit", "--defense", "top-k=3", "--defense", "round=2", "--dp-epsilon", "2",
       "--delta", "1e-6", "--clip-norm", "0.5", "--shadow-source", "noisy", "--shadow-noise",
       "0.2", "--lira-augmentations", "flip+shift"])
  cfg, _ = cli.audit_options(args)
  assert cfg.defenses == ("top-k=3", "round=2")
  assert (cfg.dp_epsilon, cfg.delta, cfg.clip_norm) == (2.0, 1e-6, 0.5)
  assert (cfg.shadow_source, cfg.shadow_noise, cfg.lira_augmentations) == ("noisy", 0.2, "flip+shift")
  assert cfg.uses_dp and cfg.to_dict()["defenses"] == ["top-k=3", "round=2"]


def test_config_file_defenses_as_list_or_string(tmp_path):
  for text in ("defenses: [top-k=3, round=1]\n", "defenses: top-k=3,round=1\n"):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    cfg, _ = cli.audit_options(cli.build_parser().parse_args(["audit", "--config", str(f)]))
    assert cfg.defenses == ("top-k=3", "round=1")


@pytest.mark.parametrize("argv, message", [
    (["--defense", "top-k=0"], "top-k"),
    (["--defense", "round=-1"], "round"),
    (["--defense", "temperature=0"], "temperature"),
    (["--defense", "top-k=11"], "K=10"),            # digits has 10 classes
    (["--defense", "round=2", "--defense", "temperature=5"], "before"),
    (["--dp-epsilon", "0"], "dp_epsilon"),
    (["--dp-epsilon", "-1"], "dp_epsilon"),
    (["--delta", "1"], "delta"),
    (["--delta", "0"], "delta"),
    (["--dp-epsilon", "1", "--noise-multiplier", "1"], "at most one"),
    (["--clip-norm", "0"], "clip_norm"),
    (["--shadow-noise", "1.5"], "shadow_noise"),
    (["--dataset", "breast_cancer", "--lira-augmentations", "flip"], "images"),
    (["--model", "resnet", "--noise-multiplier", "1"], "BatchNorm"),
])
def test_bad_options_fail_before_training(tmp_path, capsys, argv, message):
  out = tmp_path / "r"
  assert cli.main(["audit", "--out", str(out), "--quiet", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert not (out / "target").exists()


# -- defended audit -------------------------------------------------------------------------

@pytest.mark.slow
def test_defended_audit_attacks_see_the_defended_api(tmp_path):
  out = tmp_path / "r"
  cfg = AuditConfig(**SMALL, attacks=("loss", "confidence", "lira", "shokri", "gradient-norm"),
                    num_reference=4, num_shadow=2, defenses=("top-k=2", "round=1"))
  res = run_audit(cfg, str(out))
  assert res["defenses"] == ["top-k=2", "round=1"]
  setup, target = _target(cfg, out)
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  logits = setup.model.apply(target, jnp.asarray(setup.x[ev]))
  p = np.asarray(apply_defenses(logits, ("top-k=2", "round=1")), np.float64)
  # The API returns at most 2 nonzero values, each a multiple of 0.1.
  assert np.all((p > 0).sum(1) <= 2) and np.allclose(p * 10, np.round(p * 10), atol=1e-5)
  py = p[np.arange(ev.size), setup.y[ev]]
  s = _npz(out)
  np.testing.assert_allclose(s["score:confidence"], py, atol=1e-6)
  np.testing.assert_allclose(s["score:loss"], np.log(np.maximum(py, 1e-30)), rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(s["score:lira"]))
  # Accuracy is the model's own (argmax of logits), not the rounded API's.
  correct = np.asarray(jnp.argmax(logits, -1)) == setup.y[ev]
  assert res["target"]["train_accuracy"] == pytest.approx(correct[:60].mean())
  # Shokri's decision metrics follow from its scores at logit 0.
  d = res["attacks"]["shokri"]["decision"]
  pred, m = s["score:shokri"] >= 0, s["is_member"]
  assert d["accuracy"] == pytest.approx(np.mean(pred == m))
  assert d["recall"] == pytest.approx((pred & m).sum() / m.sum())
  if pred.any():
    assert d["precision"] == pytest.approx((pred & m).sum() / pred.sum())
  # The white-box baseline reads the weights: the same as without the defense.
  out2 = tmp_path / "plain"
  run_audit(AuditConfig(**SMALL, attacks=("gradient-norm",)), str(out2))
  np.testing.assert_allclose(_npz(out2)["score:gradient-norm"], s["score:gradient-norm"], rtol=1e-5)


# -- DP training ----------------------------------------------------------------------------

@pytest.mark.slow
def test_dp_audit_trains_with_dp_sgd_and_reports_epsilon_and_bounds(tmp_path):
  pytest.importorskip("dp_accounting")
  from mia_jax.dp import tight_accuracy_bound, train_model_dp, training_epsilon
  out = tmp_path / "r"
  cfg = AuditConfig(**SMALL, attacks=("loss", "shokri"), num_shadow=2, noise_multiplier=1.5,
                    clip_norm=0.7)
  res = run_audit(cfg, str(out))
  setup, target = _target(cfg, out)
  ref = train_model_dp(setup.model, setup.x, setup.y, config=cfg.train_config(),
                       noise_multiplier=1.5, clip_norm=0.7, seed=cfg.stage_seed("target"),
                       indices=setup.split.target_in).variables
  for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dp = res["dp"]
  eps = training_epsilon(60, config=cfg.train_config(), noise_multiplier=1.5, delta=cfg.delta)
  assert dp["epsilon"] == [pytest.approx(eps)]
  assert dp["noise_multiplier"] == 1.5 and dp["clip_norm"] == 0.7
  assert dp["bounds"]["tight_accuracy"] == [pytest.approx(tight_accuracy_bound(eps, cfg.delta))]
  assert set(dp["attack_accuracy"]) == {"loss", "shokri"}
  assert dp["attack_accuracy"]["loss"] == [res["attacks"]["loss"]["balanced_accuracy"]]
  from mia_jax.report import write_report
  html, md = write_report(str(out))
  assert "Differential privacy" in open(md).read()


@pytest.mark.slow
def test_dp_epsilon_calibrates_the_noise(tmp_path):
  pytest.importorskip("dp_accounting")
  cfg = AuditConfig(**SMALL, attacks=("loss",), dp_epsilon=4.0)
  res = run_audit(cfg, str(tmp_path / "r"))
  eps = res["dp"]["epsilon"][0]
  assert 3.9 <= eps <= 4.0  # the bisection's sigma never exceeds the target epsilon
  assert res["dp"]["noise_multiplier"] > 0


# -- shadow data sources ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", ["noisy", "marginals", "synthetic"])
def test_shadow_sources_run_the_shokri_attack(tmp_path, source):
  cfg = AuditConfig(dataset="purchase_like", dataset_options={"num_features": 60,
                    "num_train": 300, "num_test": 300, "num_classes": 4},
                    model_options={"widths": [32]}, epochs=5, target_size=80, batch_size=32,
                    attacks=("shokri",), num_shadow=2, shadow_source=source, shadow_noise=0.2)
  res = run_audit(cfg, str(tmp_path / source))
  sh = res["attacks"]["shokri"]
  assert sh["shadow_source"] == source and 0.0 <= sh["auc"] <= 1.0
  if source == "synthetic":
    syn = sh["synthesis"]
    assert syn["attempted"] == 600 - 160 and 0 < syn["emitted"] <= syn["attempted"]
    assert syn["queries_mean"] >= 1
  else:
    assert "synthesis" not in sh


def test_shadow_records_noisy_flips_the_requested_fraction():
  from mia_jax.audit import _shadow_records
  cfg = AuditConfig(dataset="purchase_like", shadow_source="noisy", shadow_noise=0.25)
  x = (np.random.default_rng(0).random((50, 40)) < 0.3).astype(np.float32)
  y = np.arange(50) % 5
  sx, sy, syn = _shadow_records(cfg, None, None, (), x, y)
  assert syn is None and sx.shape == x.shape
  # Each shadow record is some real record (same label) with exactly 10 bits flipped.
  dist = np.abs(sx[:, None, :] - x[None]).sum(-1)
  same = sy[:, None] == y[None]
  assert np.all(np.any((dist == 10) & same, axis=1))


# -- LiRA augmentations -------------------------------------------------------------------

@pytest.mark.slow
def test_lira_augmentations_equal_a_manual_recomputation(tmp_path):
  from mia_jax.attacks import lira
  from mia_jax.data import keep_matrix
  out = tmp_path / "r"
  cfg = AuditConfig(**SMALL, attacks=("lira", "lira-offline"), num_reference=4,
                    lira_augmentations="flip")
  res = run_audit(cfg, str(out))
  assert res["attacks"]["lira"]["augmentations"] == "flip"
  setup, target = _target(cfg, out)
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  refs = load_variables(str(out / "reference"), like=jax.eval_shape(
      jax.vmap(setup.model.init), jax.random.split(jax.random.key(0), 4)))[0]
  xe, ye = setup.x[ev], setup.y[ev]
  views = [xe, xe[:, :, ::-1, :]]  # the original and its mirror image
  t = np.stack([blackbox_signals(setup.model, target, v, ye)["scaled_logit"] for v in views], -1)
  r = np.stack([blackbox_signals(setup.model, refs, v, ye, stacked=True)["scaled_logit"]
                for v in views], -1)
  keep = keep_matrix(4, ev.size, seed=cfg.stage_seed("reference-keep"))
  np.testing.assert_allclose(_npz(out)["score:lira"], lira.lira_online(t, r, keep),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_npz(out)["score:lira-offline"], lira.lira_offline(t, r, keep),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_two_reference_models_give_finite_lira_scores(tmp_path):
  res = run_audit(AuditConfig(**SMALL, attacks=("lira", "lira-fixed-variance"), num_reference=2),
                  str(tmp_path / "r"))
  assert 0.0 <= res["attacks"]["lira"]["auc"] <= 1.0
  assert json.loads((tmp_path / "r" / "results.json").read_text())["attacks"]["lira"]
