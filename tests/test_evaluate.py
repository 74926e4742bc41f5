"""mia_jax.evaluate and `mia-jax score`: attacks on outputs a user already computed."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import mia_jax
from mia_jax import cli
from mia_jax._validation import MiaInputError
from mia_jax.audit import BLACKBOX_ATTACKS
from _float32 import EPS32, auc_slack


def _synthetic(seed=0, n=40, k=5, m=4, z=30):
  """Logits where members get a larger true-class logit (lower loss), and reference
  models that are each IN for half the examples, likewise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n)
  mem = np.arange(n) < n // 2
  logits = rng.normal(size=(n, k)).astype(np.float32)
  logits[np.arange(n), y] += 2.0 * mem
  keep = np.zeros((m, n), bool)
  for i in range(n):
    keep[rng.choice(m, m // 2, replace=False), i] = True
  ref = rng.normal(size=(m, n, k)).astype(np.float32)
  ref[:, np.arange(n), y] += 2.0 * keep
  return dict(logits=logits, labels=y, is_member=mem, ref_logits=ref, keep=keep,
              pop_logits=rng.normal(size=(z, k)).astype(np.float32),
              pop_labels=rng.integers(0, k, z),
              pop_ref_logits=rng.normal(size=(m, z, k)).astype(np.float32))


# -- (a) the same numbers as the audit on the same signals -----------------------------------

@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
  from mia_jax.audit import AuditConfig, run_audit
  out = tmp_path_factory.mktemp("audit") / "run"
  config = AuditConfig(attacks=("loss", "confidence", "lira", "lira-offline", "rmia"),
                       epochs=3, target_size=60, num_reference=4,
                       model_options={"widths": [16]})
  results = run_audit(config, str(out))
  return config, out, results


def test_evaluate_agrees_with_the_audit(audit_run):
  import jax

  from mia_jax.audit import prepare, reference_keep
  from mia_jax.signals import predict_logits
  from mia_jax.train import load_variables
  config, out, results = audit_run
  _, x, y, split, model, _ = prepare(config)
  target, _ = load_variables(out / "target", like=jax.eval_shape(model.init, jax.random.key(0)))
  like = jax.eval_shape(jax.vmap(model.init),
                        jax.random.split(jax.random.key(0), config.num_reference))
  refs, meta = load_variables(out / "reference", like=like)
  # The audit's evaluation set: members, then non-members; RMIA's population: auxiliary.
  ev, aux = np.concatenate([split.target_in, split.target_out]), split.auxiliary
  is_member = np.r_[np.ones(split.target_in.size, bool), np.zeros(split.target_out.size, bool)]
  keep = reference_keep(config, ev.size)
  np.testing.assert_array_equal(np.load(out / "reference_keep.npz")["keep"], keep)

  res = mia_jax.evaluate(
      logits=predict_logits(model, target, x[ev]), labels=y[ev], is_member=is_member,
      ref_logits=predict_logits(model, refs, x[ev], stacked=True), keep=keep,
      pop_logits=predict_logits(model, target, x[aux]), pop_labels=y[aux],
      pop_ref_logits=predict_logits(model, refs, x[aux], stacked=True),
      attacks=config.attacks, rmia_offline_a=config.rmia_offline_a)

  with np.load(out / "scores.npz") as z:
    audit_scores = {k[len("score:"):]: z[k] for k in z.files if k.startswith("score:")}
    np.testing.assert_array_equal(z["is_member"], is_member)
  assert list(res.scores) == list(config.attacks)
  # The logits come from another compiled program than the audit's fused signal pass, so
  # the signals agree to float32 rounding: a few ulps of the logits' magnitude.
  atol = 64 * EPS32 * max(1.0, float(np.abs(res.scores["loss"]).max()))
  for name in config.attacks:
    got, want = res.scores[name], audit_scores[name]
    if name == "rmia":  # a count of population comparisons: a rounding may flip one
      np.testing.assert_allclose(got, want, rtol=0, atol=2.0 / aux.size)
      slack = auc_slack(want, is_member, rtol=0, atol=1.0 / aux.size)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)
      slack = auc_slack(want, is_member, rtol=1e-4, atol=atol)
    want_m = results["attacks"][name]
    row = next(r for r in res.metrics if r["attack"] == name)
    assert abs(row["auc"] - want_m["auc"]) <= slack, (name, row["auc"], want_m["auc"])
    assert res.results["attacks"][name]["auc"] == row["auc"]
  assert res.results["attacks"]["lira"]["num_reference"] == config.num_reference
  for key in ("train_accuracy", "test_accuracy"):
    assert res.results["target"][key] == pytest.approx(results["target"][key], abs=1e-9)


# -- (b) known answer, (f) losses only --------------------------------------------------------

def test_loss_auc_equals_sklearn_on_synthetic_logits():
  d = _synthetic()
  res = mia_jax.evaluate(logits=d["logits"], labels=d["labels"], is_member=d["is_member"])
  z = d["logits"].astype(np.float64)
  loss = np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), d["labels"]]
  want = roc_auc_score(d["is_member"], -loss)
  assert want > 0.8  # members do have lower loss
  row = res.metrics[0]
  assert row["attack"] == "loss" and row["auc"] == pytest.approx(want, abs=1e-12)
  np.testing.assert_allclose(res.scores["loss"], -loss, rtol=1e-5, atol=1e-6)
  assert [r["attack"] for r in res.metrics] == list(BLACKBOX_ATTACKS)
  assert set(res.skipped) == {"lira", "lira-offline", "lira-fixed-variance",
                              "lira-offline-fixed-variance", "rmia", "rmia-offline"}
  assert {"tpr@0.1", "tpr@0.001", "tpr@0.0", "balanced_accuracy"} <= set(row)
  assert "loss" in res.table().splitlines()[1]


def test_every_attack_runs_with_references_and_population():
  res = mia_jax.evaluate(**_synthetic())
  assert not res.skipped and len(res.scores) == 11
  assert all(s.shape == (40,) and np.all(np.isfinite(s)) for s in res.scores.values())
  assert res.results["config"]["num_reference"] == 4


def test_only_losses_runs_only_the_loss_attack():
  rng = np.random.default_rng(1)
  mem = np.arange(30) < 15
  losses = rng.random(30) + 1.0 * ~mem
  res = mia_jax.evaluate(losses=losses, is_member=mem)
  assert list(res.scores) == ["loss"] and res.labels is None
  assert res.metrics[0]["auc"] == pytest.approx(roc_auc_score(mem, -losses), abs=1e-12)
  assert "target" not in res.results
  with pytest.raises(MiaInputError, match="attacks: confidence needs logits"):
    mia_jax.evaluate(losses=losses, is_member=mem, attacks=["confidence"])
  with pytest.raises(MiaInputError, match="^ref_logits"):
    mia_jax.evaluate(losses=losses, is_member=mem, ref_logits=np.zeros((2, 30, 3)),
                     keep=np.zeros((2, 30), bool))


# -- (c) probabilities passed as logits ---------------------------------------------------------

def test_probabilities_as_logits_need_output():
  d = _synthetic()
  z = d["logits"].astype(np.float64)
  probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  kw = dict(labels=d["labels"], is_member=d["is_member"])
  with pytest.raises(MiaInputError, match="^output: .*logits.*look like probabilities"):
    mia_jax.evaluate(logits=probs, **kw)
  with pytest.raises(MiaInputError, match="^output: .*log-probabilities"):
    mia_jax.evaluate(logits=np.log(probs), **kw)
  ref = mia_jax.evaluate(logits=z, **kw).scores
  for output, values in (("probs", probs), ("log_probs", np.log(probs))):
    got = mia_jax.evaluate(logits=values, output=output, **kw).scores
    for name in ("loss", "confidence", "entropy", "modified_entropy"):
      np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)
  with pytest.raises(MiaInputError, match="^output: expected one of"):
    mia_jax.evaluate(logits=z, output="softmax", **kw)


# -- (d) bad shapes and labels ------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    (dict(logits=np.zeros((40,))), r"^logits: expected float\[N, K\]"),
    (dict(labels=np.zeros(39, int)), r"^labels: expected shape \[40\]"),
    (dict(labels=np.full(40, 5)), r"^labels: labels must be in \[0, 5\)"),
    (dict(is_member=np.zeros(40, bool)), "^is_member: needs both"),
    (dict(is_member=np.ones(41, bool)), r"^is_member: expected bool\[40\]"),
    (dict(ref_logits=np.zeros((4, 40, 6))), r"^ref_logits: expected shape \[4, 40, 5\]"),
    (dict(keep=np.zeros((3, 40), bool)), r"^keep: expected bool\[4, 40\]"),
    (dict(keep=None), "^keep: ref_logits"),
    (dict(pop_labels=None), "^pop_labels: the population"),
    (dict(pop_ref_logits=np.zeros((4, 29, 5))), r"^pop_ref_logits: expected shape \[4, 30, 5\]"),
    (dict(pop_labels=np.full(30, -1)), r"^pop_labels: labels must be in \[0, 5\)"),
    (dict(logits=np.full((40, 5), np.nan)), "^logits: contains 200 NaN/inf"),
    (dict(losses=np.zeros(40)), "^logits, losses: give exactly one"),
    (dict(attacks=["shokri"]), r"^attacks: unknown attack\(s\) \['shokri'\]"),
    (dict(rmia_offline_a=2.0), "^rmia_offline_a"),
])
def test_bad_inputs_are_named_errors(change, needle):
  d = {**_synthetic(), **change}
  with pytest.raises(MiaInputError, match=needle):
    mia_jax.evaluate(**d)


def test_missing_coverage_skips_or_refuses():
  d = _synthetic()
  d["keep"][:, 0] = False  # example 0: OUT for every reference model
  res = mia_jax.evaluate(**d)
  assert set(res.skipped) == {"lira", "lira-fixed-variance"}
  assert "1 example(s)" in res.skipped["lira"]
  with pytest.raises(MiaInputError, match="^attacks: lira needs at least one IN"):
    mia_jax.evaluate(**d, attacks=["lira"])


# -- (e) the command line -----------------------------------------------------------------------

def test_score_cli_end_to_end(tmp_path, capsys):
  d = _synthetic()
  path = tmp_path / "signals.npz"
  np.savez(path, **d)
  out = tmp_path / "run"
  assert cli.main(["score", str(path), "--out", str(out), "--quiet", "--dpi", "30"]) == 0
  printed = capsys.readouterr().out
  assert "rmia-offline" in printed and "results written to" in printed
  for name in ("results.json", "scores.npz", "report.html", "report.md", ".mia-jax-run"):
    assert (out / name).exists(), name
  want = mia_jax.evaluate(**d)
  with open(out / "results.json") as f:
    results = json.load(f)
  for name, m in want.results["attacks"].items():
    assert results["attacks"][name] == m, name
  with np.load(out / "scores.npz", allow_pickle=False) as z:
    np.testing.assert_array_equal(z["is_member"], d["is_member"])
    np.testing.assert_array_equal(z["labels"], d["labels"])
    for name, s in want.scores.items():
      np.testing.assert_array_equal(z[f"score:{name}"], s)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["command"] == "score" and manifest["finished"]
  assert {"results.json", "scores.npz", "report.html"} <= set(manifest["entries"])

  # A finished run is refused; --overwrite replaces only what mia-jax wrote.
  (out / "mine.txt").write_text("keep me")
  assert cli.main(["score", str(path), "--out", str(out), "--quiet", "--no-report"]) == 2
  assert "finished run" in capsys.readouterr().err
  assert cli.main(["score", str(path), "--out", str(out), "--quiet", "--no-report",
                   "--overwrite"]) == 0
  assert (out / "mine.txt").read_text() == "keep me" and not (out / "report.html").exists()


def test_score_cli_refuses_unknown_keys_and_pickles(tmp_path, capsys):
  d = _synthetic()
  bad = tmp_path / "bad.npz"
  np.savez(bad, **d, extra_thing=np.zeros(3))
  assert cli.main(["score", str(bad), "--out", str(tmp_path / "a"), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "unknown key(s) ['extra_thing']" in err and "Traceback" not in err
  assert not (tmp_path / "a").exists()  # refused before the run directory is touched
  pickled = tmp_path / "pickled.npz"
  np.savez(pickled, logits=np.array([{"a": 1}], dtype=object), labels=d["labels"],
           is_member=d["is_member"])
  assert cli.main(["score", str(pickled), "--out", str(tmp_path / "b"), "--quiet"]) == 2
  assert "logits: cannot read" in capsys.readouterr().err
  probs = tmp_path / "probs.npz"
  p = np.exp(d["logits"]) / np.exp(d["logits"]).sum(1, keepdims=True)
  np.savez(probs, logits=p, labels=d["labels"], is_member=d["is_member"])
  assert cli.main(["score", str(probs), "--out", str(tmp_path / "c"), "--quiet"]) == 2
  assert "output:" in capsys.readouterr().err
  np.savez(probs, logits=p, labels=d["labels"], is_member=d["is_member"], output="probs")
  assert cli.main(["score", str(probs), "--out", str(tmp_path / "c"), "--quiet",
                   "--no-report"]) == 0
  assert json.loads((tmp_path / "c" / "results.json").read_text())["config"]["output"] == "probs"
  assert cli.main(["score", str(probs), "--out", str(tmp_path / "d"), "--quiet",
                   "--output", "logits"]) == 2
  assert "output: --output logits" in capsys.readouterr().err


def test_evaluate_out_writes_a_report_readable_run(tmp_path):
  d = _synthetic()
  res = mia_jax.evaluate(**d, out=tmp_path / "r", dpi=30)
  assert os.path.isfile(tmp_path / "r" / "report.html")
  assert "Membership-inference audit: outputs" in (tmp_path / "r" / "report.md").read_text()
  assert res.results["source"] == "outputs"
