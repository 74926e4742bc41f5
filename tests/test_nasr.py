"""Nasr et al. learned white-box attack: per-example gradient features against a naive loop
and a closed form, the attack network on data with a known answer, the whole attack."""

import jax
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.attacks import nasr
from mia_jax.data import gaussian_nb
from mia_jax.metrics import precision_recall_at, roc_auc
from mia_jax.models import make_model
from mia_jax.signals import blackbox_signals
from mia_jax.train import TrainConfig, train_model

SMALL = nasr.NasrConfig(filters=8, gradient_hidden=(32,), component_hidden=(16,),
                        encoder_hidden=(32, 16), epochs=30, batch_size=32)


def _naive(model, variables, x, y, layers):
  """One example at a time: jax.grad of -log softmax with respect to ALL parameters."""
  out = {k: [] for k in ("probs", "loss", "label", *[f"grad:{l}" for l in layers])}
  for xi, yi in zip(x, y):
    def loss(params):
      z = model.apply({**variables, "params": params}, xi[None])[0]
      return -jax.nn.log_softmax(z)[yi]
    g = jax.grad(loss)(variables["params"])
    z = model.apply(variables, xi[None])[0]
    out["probs"].append(np.asarray(jax.nn.softmax(z)))
    out["loss"].append(float(loss(variables["params"])))
    out["label"].append(np.eye(model.num_classes)[yi])
    for l in layers:
      (mod,) = g[l].values()
      k, b = np.asarray(mod["kernel"]), np.asarray(mod["bias"])
      # Row j = the gradient of output unit j's incoming weights (all inputs), then its bias.
      rows = [np.r_[k[..., j].ravel(), b[j]] for j in range(k.shape[-1])]
      out[f"grad:{l}"].append(np.stack(rows))
  return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("name,opts,shape,layers", [
    ("mlp", {"widths": [12, 8]}, (10,), ("dense_0", "dense_1", "logits")),
    ("small_cnn", {"channels": [3, 4], "hidden": 6}, (6, 6, 1), ("conv_0", "conv_1", "fc", "logits")),
])
def test_features_match_naive_loop(name, opts, shape, layers):
  model = make_model(name, input_shape=shape, num_classes=3, **opts)
  variables = model.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7,) + shape).astype(np.float32)
  y = rng.integers(0, 3, 7)
  got = nasr.attack_features(model, variables, x, y, layers=layers, microbatch_size=4)
  want = _naive(model, variables, x, y, layers)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-6, err_msg=k)
  assert {k: v.shape[1:] for k, v in got.items()} == nasr.feature_shapes(model, layers)
  # With activations: the same arrays plus each stage's output, flattened.
  got = nasr.attack_features(model, variables, x, y, layers=layers, microbatch_size=4,
                             activations=True)
  feats = model.features(variables, x)
  for l in layers:
    want[f"act:{l}"] = np.asarray(feats[l]).reshape(7, -1)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-6, err_msg=k)
  assert ({k: v.shape[1:] for k, v in got.items()}
          == nasr.feature_shapes(model, layers, activations=True))


def test_logits_layer_gradient_closed_form():
  # For the softmax layer z = W^T h + b: dL/dW[:, j] = (p_j - 1[j = y]) h, dL/db_j = p_j - 1[j = y].
  model = make_model("logistic", input_shape=(5,), num_classes=4)
  variables = model.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 5)).astype(np.float32)
  y = rng.integers(0, 4, 9)
  f = nasr.attack_features(model, variables, x, y)  # default layer: the last stage
  p = np.asarray(jax.nn.softmax(model.apply(variables, x)))
  coef = p - np.eye(4)[y]
  want = coef[:, :, None] * np.concatenate([x, np.ones((9, 1), np.float32)], 1)[:, None, :]
  np.testing.assert_allclose(f["grad:logits"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f["loss"], -np.log(p[np.arange(9), y]), rtol=1e-5)


def _synthetic_features(n, rng, signal):
  """Gradient rows whose scale is (1 - signal) for members: a known, learnable answer."""
  member = rng.random(n) < 0.5
  g = rng.normal(size=(n, 3, 6)).astype(np.float32)
  g[member] *= 1.0 - signal
  probs = rng.dirichlet(np.ones(3), n).astype(np.float32)
  label = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
  loss = rng.exponential(size=n).astype(np.float32)
  return {"probs": probs, "loss": loss, "label": label, "grad:logits": g}, member


def test_attack_model_learns_a_known_signal_and_not_noise():
  rng = np.random.default_rng(0)
  feats, member = _synthetic_features(800, rng, signal=0.6)
  state, val = nasr.fit_attack_model(feats, member, config=SMALL, seed=0)
  test, test_member = _synthetic_features(2000, rng, signal=0.6)
  assert roc_auc(nasr.predict(state, test), test_member) > 0.95
  assert val.size == pytest.approx(0.2 * 800, abs=2)
  assert 0 <= state.best_epoch < SMALL.epochs
  # No signal: held-out AUC stays at chance (2000 examples: sd of AUC ~ 0.013).
  feats, member = _synthetic_features(800, rng, signal=0.0)
  state, _ = nasr.fit_attack_model(feats, member, config=SMALL, seed=0)
  test, test_member = _synthetic_features(2000, rng, signal=0.0)
  assert abs(roc_auc(nasr.predict(state, test), test_member) - 0.5) < 0.05


def test_activation_component_carries_a_signal_found_only_there():
  rng = np.random.default_rng(5)

  def make(n):
    feats, member = _synthetic_features(n, rng, signal=0.0)  # gradients: pure noise
    act = rng.normal(size=(n, 8)).astype(np.float32)
    act[member, 0] += 2.0  # the membership signal, in one activation unit
    return {**feats, "act:logits": act}, member

  feats, member = make(800)
  state, _ = nasr.fit_attack_model(feats, member, config=SMALL, seed=0)
  test, test_member = make(2000)
  assert roc_auc(nasr.predict(state, test), test_member) > 0.85  # Bayes AUC: 0.92
  no_act = {k: v for k, v in test.items() if k != "act:logits"}
  with pytest.raises(MiaInputError, match="activations"):
    nasr.predict(state, no_act)


def test_same_seed_same_model_different_seed_differs():
  rng = np.random.default_rng(3)
  feats, member = _synthetic_features(300, rng, signal=0.5)
  cfg = nasr.NasrConfig(**{**SMALL.__dict__, "epochs": 3})
  a = nasr.predict(nasr.fit_attack_model(feats, member, config=cfg, seed=1)[0], feats)
  b = nasr.predict(nasr.fit_attack_model(feats, member, config=cfg, seed=1)[0], feats)
  c = nasr.predict(nasr.fit_attack_model(feats, member, config=cfg, seed=2)[0], feats)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.slow
def test_whole_attack_on_overfit_target_beats_chance_and_is_calibrated():
  # Gaussian naive-Bayes data, d >> n: the target memorizes; its gradients on members are
  # small. The attacker's shadow-trained network must find that on the real target.
  ds, _ = gaussian_nb(num_classes=2, num_features=100, num_train=1400, num_test=2,
                      separation=2.0, seed=0)
  x, y = ds.x_train, ds.y_train
  n = 100
  t_in, t_out, aux = np.arange(n), np.arange(n, 2 * n), np.arange(2 * n, 1400)
  model = make_model("mlp", input_shape=(100,), num_classes=2, widths=[32])
  recipe = TrainConfig(epochs=40, batch_size=32, learning_rate=1e-3)
  target = train_model(model, x, y, config=recipe, seed=0, indices=t_in).variables
  ev = np.r_[t_in, t_out]
  member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  cfg = nasr.NasrConfig(**{**SMALL.__dict__, "layers": ("dense_0", "logits")})
  res = nasr.run_attack(model, target, x[aux], y[aux], x[ev], y[ev], target_train_size=n,
                        config=cfg, train_config=recipe, target_precision=0.8, seed=0)
  auc = roc_auc(res.scores, member)
  loss_auc = roc_auc(-blackbox_signals(model, target, x[ev], y[ev])["loss"], member)
  assert auc > 0.75, (auc, loss_auc)  # seen: ~0.9
  assert auc > loss_auc - 0.05, (auc, loss_auc)
  assert res.calibration["layers"] == ["dense_0", "logits"]
  # The threshold reaches the requested precision on the attacker's held-out examples...
  s, m = res.attacker_scores["scores"], res.attacker_scores["is_member"]
  if np.isfinite(res.threshold):
    assert precision_recall_at(s, m, res.threshold)[0] >= 0.8
    # ... and, on the target, precision within sampling error of it.
    prec, rec = precision_recall_at(res.scores, member, res.threshold)
    assert rec > 0 and prec > 0.6, (prec, rec)
  again = nasr.run_attack(model, target, x[aux], y[aux], x[ev], y[ev], target_train_size=n,
                          config=cfg, train_config=recipe, target_precision=0.8, seed=0)
  np.testing.assert_array_equal(res.scores, again.scores)


def test_bad_input_is_an_error_before_compute():
  mlp = make_model("mlp", input_shape=(4,), num_classes=2, widths=[3])
  with pytest.raises(MiaInputError, match="no parameter stage"):
    nasr.check_layers(mlp, ["dense_7"])
  with pytest.raises(MiaInputError, match="duplicate"):
    nasr.check_layers(mlp, ["logits", "logits"])
  res = make_model("resnet", input_shape=(8, 8, 1), num_classes=2, widths=[4])
  with pytest.raises(MiaInputError, match="exactly one"):
    nasr.check_layers(res, ["block_0"])
  assert nasr.check_layers(res, None) == ("logits",)
  variables = mlp.init(jax.random.key(0))
  x = np.zeros((10, 4), np.float32)
  y = np.zeros(10, int)
  with pytest.raises(MiaInputError, match="GiB"):
    nasr.attack_features(mlp, variables, x, y, max_feature_bytes=100)
  feats = nasr.attack_features(mlp, variables, x, y)
  with pytest.raises(MiaInputError, match="both|at least 2"):
    nasr.fit_attack_model(feats, np.zeros(10, bool), config=SMALL)
  state, _ = nasr.fit_attack_model(feats, np.arange(10) % 2 == 0,
                                   config=nasr.NasrConfig(**{**SMALL.__dict__, "epochs": 1}))
  other = nasr.attack_features(mlp, variables, x, y, layers=["dense_0"])
  with pytest.raises(MiaInputError, match="reads gradients"):
    nasr.predict(state, other)
  with pytest.raises(MiaInputError, match="validation_fraction"):
    nasr.NasrConfig(validation_fraction=0.9)
  with pytest.raises(MiaInputError, match="filters"):
    nasr.NasrConfig(filters=0)


# -- in the audit ------------------------------------------------------------------------------

def test_audit_runs_nasr_beside_stolen_memories_on_one_shadow_and_resumes(tmp_path):
  from mia_jax.audit import AuditConfig, prepare, run_audit
  from mia_jax.train import load_variables
  cfg = AuditConfig(epochs=3, target_size=60, batch_size=32, model_options={"widths": [16]},
                    attacks=("loss", "stolen-memories", "nasr"), layers=("dense_0",),
                    gradient_layers=("dense_0", "logits"))
  out = tmp_path / "r"
  lines = []
  res = run_audit(cfg, str(out), log=lines.append)
  entry = res["attacks"]["nasr"]
  assert {"auc", "tpr_at_fpr", "calibrated"} <= set(entry)
  cal = entry["calibrated"]
  assert cal["layers"] == ["dense_0", "logits"] and cal["setting"] == "shadow"
  assert 1 <= cal["best_epoch"] <= cal["epochs"]
  # One white-box shadow target, saved for resuming, serves both white-box attacks.
  assert (out / "whitebox_shadow").is_dir()
  assert not any("reusing the white-box shadow" in l for l in lines)
  # The audit's scores are the attack run by hand on the saved target.
  setup = prepare(cfg)
  target = load_variables(str(out / "target"), like=setup.model.init(jax.random.key(0)))[0]
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  aux = setup.split.auxiliary
  direct = nasr.run_attack(setup.model, target, setup.x[aux], setup.y[aux], setup.x[ev],
                           setup.y[ev], target_train_size=60,
                           config=nasr.NasrConfig(layers=("dense_0", "logits")),
                           train_config=cfg.train_config(), target_precision=0.9, seed=0)
  with np.load(out / "scores.npz") as f:
    np.testing.assert_allclose(f["score:nasr"], direct.scores, rtol=1e-5, atol=1e-5)
    first = f["score:nasr"]
  # Interrupted after the shadow was saved: the rerun reuses it, with the same result.
  (out / "results.json").unlink()
  lines.clear()
  again = run_audit(cfg, str(out), log=lines.append)
  assert any("reusing the white-box shadow" in l for l in lines)
  with np.load(out / "scores.npz") as f:
    np.testing.assert_array_equal(f["score:nasr"], first)
  assert again["attacks"]["nasr"]["auc"] == entry["auc"]


def test_audit_rejects_bad_gradient_layers_before_training(tmp_path):
  from mia_jax.audit import AuditConfig, run_audit
  cfg = AuditConfig(epochs=1, target_size=60, attacks=("nasr",), gradient_layers=("conv_9",))
  with pytest.raises(MiaInputError, match="conv_9"):
    run_audit(cfg, str(tmp_path / "r"))
  assert not (tmp_path / "r" / "target").exists()


def test_checkpoints_score_in_one_pass_equal_to_each_alone():
  """score_checkpoints (features and network fused, vmapped over C checkpoints) equals
  attack_features + predict on each checkpoint alone."""
  from mia_jax.attacks import nasr
  from mia_jax.models import make_model, stack_variables
  from mia_jax.train import TrainConfig
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 6)).astype(np.float32)
  y = rng.integers(0, 3, 120)
  state = nasr.fit_attacker(model, x[:80], y[:80], target_train_size=20,
                            config=nasr.NasrConfig(epochs=2),
                            train_config=TrainConfig(epochs=2, batch_size=16), seed=0)
  ckpts = [model.init(jax.random.key(i)) for i in range(3)]
  got = nasr.score_checkpoints(model, state, stack_variables(ckpts), x[80:], y[80:],
                               microbatch_size=16)
  assert got.shape == (3, 40)
  for c, v in enumerate(ckpts):
    want = nasr.score_target(model, state, v, x[80:], y[80:])
    np.testing.assert_allclose(got[c], want, rtol=1e-4, atol=1e-5)
