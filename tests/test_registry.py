"""The one attack interface and its registry: every attack has the same shape, traceable
scores vmap over checkpoints and equal a per-checkpoint loop and the validated public
functions, and a new attack is one registry entry away from the audit, `mia-jax attack`,
the CLI help, the docs and the report."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax import pipeline
from mia_jax.attacks import lira, registry, rmia, shokri
from mia_jax.attacks.base import Attack, AttackerSide, Lazy
from mia_jax.cli import build_parser, main
from tests._float32 import reduction_rtol

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "attacks.md")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  scale: float = 2.0


def _toy_score(state, signals):
  return state["scale"] * -jnp.asarray(signals["loss"], jnp.float32)


TOY = Attack(name="toy-scaled-loss", family="threshold", summary="twice minus the loss (a test)",
             paper="the test suite", needs=("loss",),
             configure=lambda options: ToyConfig(),
             fit=lambda config, side: {"scale": jnp.float32(config.scale)}, score=_toy_score)


def test_every_attack_has_the_one_shape_and_a_unique_name():
  names = registry.names()
  assert len(names) == len(set(names)) == 15
  for a in registry.all_attacks():
    assert callable(a.configure) and callable(a.fit) and callable(a.score)
    assert a.summary and a.family in ("threshold", "reference", "shadow", "whitebox")
  # the list, each present
  for n in ("loss", "confidence", "entropy", "modified_entropy", "correctness", "lira",
            "lira-offline", "lira-fixed-variance", "lira-offline-fixed-variance", "rmia",
            "rmia-offline", "shokri", "gradient-norm", "stolen-memories", "nasr"):
    assert n in names


def test_docs_table_is_the_registry():
  text = open(DOCS).read()
  table = text.split("<!-- registry:begin -->\n", 1)[1].split("\n<!-- registry:end -->", 1)[0]
  assert table == registry.markdown_table()


def test_register_refuses_duplicates_and_builtins_stay():
  with pytest.raises(Exception, match="already registered"):
    registry.register(registry.get("loss"))
  with pytest.raises(Exception, match="built in"):
    registry.unregister("loss")
  with registry.registered(TOY):
    assert "toy-scaled-loss" in registry.names("threshold")
  assert "toy-scaled-loss" not in registry.names()


def _reference_problem(seed=0, m=8, n=40, z=30, c=3):
  rng = np.random.default_rng(seed)
  keep = np.zeros((m, n), bool)
  for i in range(n):
    keep[rng.permutation(m)[: m // 2], i] = True
  ref_sl = rng.normal(size=(m, n)).astype(np.float32) + keep
  ref_conf = rng.uniform(0.05, 0.95, size=(m, n)).astype(np.float32)
  ref_z = rng.uniform(0.05, 0.95, size=(m, z)).astype(np.float32)
  tgt = {"scaled_logit": rng.normal(size=(c, n)).astype(np.float32),
         "confidence": rng.uniform(0.05, 0.95, size=(c, n)).astype(np.float32),
         "confidence_z": rng.uniform(0.05, 0.95, size=(c, z)).astype(np.float32)}
  side = AttackerSide({"reference": lambda: {
      "scaled_logit": ref_sl, "confidence": ref_conf, "confidence_z": ref_z, "keep": keep,
      "discrete": False}})
  return side, tgt, (ref_sl, ref_conf, ref_z, keep)


@pytest.mark.parametrize("name", ["lira", "lira-offline", "lira-fixed-variance",
                                  "lira-offline-fixed-variance", "rmia", "rmia-offline"])
def test_reference_scores_equal_the_public_functions_and_vmap_over_checkpoints(name):
  side, tgt, (ref_sl, ref_conf, ref_z, keep) = _reference_problem()
  attack = registry.get(name)
  options = {"rmia_offline_a": 0.3}
  stacked, _, _ = pipeline.run_stacked(attack, options, lambda c: side, tgt, 3)
  for c in range(3):
    one = {k: v[c] for k, v in tgt.items()}
    if name.startswith("lira"):
      fn = lira.lira_online if "offline" not in name else lira.lira_offline
      want = fn(one["scaled_logit"], ref_sl, keep, fix_variance="fixed" in name)
    else:
      want = rmia.rmia_scores(one["confidence"], one["confidence_z"], ref_conf, ref_z,
                              keep=keep, offline_a=0.3 if "offline" in name else None)
    # Same float32 formula; the stacked call is one vmapped program (XLA may fuse
    # differently) and RMIA divides its exact counts by Z on the device.
    np.testing.assert_allclose(stacked[c], want, rtol=reduction_rtol(8), atol=1e-6)
    loop, _, _ = pipeline.run_one(attack, options, side, Lazy(
        {k: (lambda k=k: one[k]) for k in one}, "signals"), np.arange(40) < 20)
    np.testing.assert_allclose(stacked[c], loop, rtol=reduction_rtol(8), atol=1e-6)


def test_shokri_traceable_score_equals_score_shokri():
  rng = np.random.default_rng(1)
  s, r, k = 3, 90, 4
  probs = rng.dirichlet(np.ones(k), size=(s, r)).astype(np.float32)
  labels = rng.integers(0, k, r)
  keep = rng.random((s, r)) < 0.5
  side = AttackerSide({"shadow": lambda: {"probs": probs, "labels": labels, "keep": keep}})
  attack = registry.get("shokri")
  cfg = attack.configure({"seed": 0})
  state = attack.fit(cfg, side)
  tp = rng.dirichlet(np.ones(k), size=(2, 50)).astype(np.float32)
  ty = rng.integers(0, k, 50)
  sig = {"probs": tp, "labels": np.broadcast_to(ty, (2, 50))}
  stacked, _ = pipeline.score_stacked(attack, cfg, state, sig)
  for c in range(2):
    want = shokri.score_shokri(state["shokri"], tp[c], ty)
    np.testing.assert_allclose(stacked[c], want, rtol=1e-5, atol=1e-6)


def test_traceable_scores_are_pure():
  """jit(vmap(score)) of every traceable attack runs on abstract inputs (no host work)."""
  side, tgt, _ = _reference_problem(c=2)
  n = 40
  sig = {**tgt, **{k: jnp.zeros((2, n)) for k in ("loss", "entropy", "modified_entropy",
                                                   "correctness")},
         "gradient_norms": {"total": jnp.ones((2, n)), "dense": jnp.ones((2, n))}}
  for a in registry.all_attacks():
    if not a.traceable or a.attacker not in ((), ("reference",)):
      continue
    state = a.fit(a.configure({}), side)
    out = jax.eval_shape(jax.vmap(a.score, in_axes=(None, 0)), state,
                         {k: sig[k] for k in a.needs})
    assert out.shape == (2, n), a.name


def _audit_args(out, attacks):
  return ["audit", "--dataset", "digits", "--epochs", "2", "--target-size", "120",
          "--attacks", attacks, "--out", str(out), "--quiet"]


def test_a_new_attack_reaches_the_audit_attack_cli_help_and_report(tmp_path, capsys):
  with registry.registered(TOY):
    # the CLI help of both commands lists it
    parser = build_parser()
    for cmd in ("audit", "attack"):
      with pytest.raises(SystemExit):
        parser.parse_args([cmd, "--help"])
      assert "toy-scaled-loss" in "".join(capsys.readouterr().out.split())  # argparse wraps
    # the audit runs it
    out = tmp_path / "audit"
    assert main(_audit_args(out, "loss,toy-scaled-loss")) == 0  # with its report
    res = json.loads((out / "results.json").read_text())
    assert res["attacks"]["toy-scaled-loss"]["auc"] == res["attacks"]["loss"]["auc"]
    with np.load(out / "scores.npz") as f:
      np.testing.assert_allclose(f["score:toy-scaled-loss"], 2 * f["score:loss"], rtol=1e-6)
    report = (out / "report.md").read_text()
    assert "toy-scaled-loss" in report and "twice minus the loss (a test)" in report
    # mia-jax attack on a run's checkpoints runs it per checkpoint
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--target-size", "120",
                 "--save-every", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["attack", "--run", str(run), "--attacks", "loss,toy-scaled-loss",
                 "--quiet"]) == 0
    ck = json.loads((run / "checkpoint_results.json").read_text())
    assert len(ck["checkpoints"]) == 2
    for c in ck["checkpoints"]:
      assert c["attacks"]["toy-scaled-loss"]["auc"] == c["attacks"]["loss"]["auc"]
  # gone again: the CLI refuses it with the registry's error
  assert main(_audit_args(tmp_path / "again", "toy-scaled-loss")) == 2
  assert "unknown attack" in capsys.readouterr().err


def test_every_attack_per_checkpoint_of_a_train_run_equals_a_per_checkpoint_loop(tmp_path):
  """`mia-jax attack --run` on a `train --with-reference --save-every 1` run: every attack
  per checkpoint (Shokri's shadow models trained on the run's auxiliary data, as the
  audit's); each traceable attack's stacked scores
  (one traced, vmapped call: the score function runs in Python once, not C times) equal
  a loop that scores each checkpoint alone against its own epoch's reference models."""
  from mia_jax.audit import prepare, reference_keep
  from mia_jax.checkpoints import config_from_dict
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import load_variables
  from mia_jax.whitebox import gradient_norms
  calls = []

  def counted(state, signals):
    calls.append(1)
    return _toy_score(state, signals)

  toy = dataclasses.replace(TOY, name="toy-counted", score=counted)
  run = tmp_path / "run"
  assert main(["train", "--out", str(run), "--save-every", "1", "--with-reference", "--quiet",
               "--epochs", "3", "-M", "widths=[16]", "--target-size", "60",
               "--num-reference", "4"]) == 0
  every = list(registry.names())
  with registry.registered(toy):
    assert main(["attack", "--run", str(run), "--quiet", "--attacks", "all"]) == 0
  assert len(calls) == 1  # traced once for the 3 checkpoints
  res = json.loads((run / "checkpoint_results.json").read_text())
  assert res["checkpoints"][0]["attacks"]["shokri"]["num_shadow"] == 4
  assert [sorted(c["attacks"]) for c in res["checkpoints"]] == [sorted(every + ["toy-counted"])] * 3
  cfg = config_from_dict(json.loads((run / "config.json").read_text()))
  setup = prepare(cfg)
  model, x, y, split = setup.model, setup.x, setup.y, setup.split
  ev = np.concatenate([split.target_in, split.target_out])
  member = np.arange(ev.size) < split.target_in.size
  keep = reference_keep(cfg, ev.size)
  like = jax.eval_shape(model.init, jax.random.key(0))
  like_refs = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), 4))
  with np.load(run / "checkpoint_scores.npz") as f:
    stacked = {k.split(":", 1)[1]: f[k] for k in f.files if k.startswith("checkpoint_score:")}
  for c, name in enumerate(["epoch-000001", "epoch-000002", "epoch-000003"]):
    tgt, _ = load_variables(str(run / "checkpoints" / name), like=like)
    refs, _ = load_variables(str(run / "reference_checkpoints" / name), like=like_refs)
    t = blackbox_signals(model, tgt, x[ev], y[ev])
    tz = blackbox_signals(model, tgt, x[split.auxiliary], y[split.auxiliary])["confidence"]
    pool = np.concatenate([ev, split.auxiliary])
    r = blackbox_signals(model, refs, x[pool], y[pool], stacked=True)
    ref_side = AttackerSide({"reference": lambda r=r: {
        "scaled_logit": r["scaled_logit"][:, :ev.size], "confidence": r["confidence"][:, :ev.size],
        "confidence_z": r["confidence"][:, ev.size:], "keep": keep, "discrete": False}})
    norms = gradient_norms(model, tgt, x[ev], y[ev])
    probs = shokri.predict_probs(model, tgt, x[ev])
    signals = Lazy({**{k: (lambda k=k: t[k]) for k in t}, "confidence_z": lambda: tz,
                    "gradient_norms": lambda: norms, "probs": lambda: probs,
                    "labels": lambda: y[ev]}, "signals")
    # Shokri's attacker side from what the run saved: its shadow models and their keep.
    shadows, _ = load_variables(str(run / "shadow"), like=jax.eval_shape(
        jax.vmap(model.init), jax.random.split(jax.random.key(0), cfg.num_shadow)))
    skeep = np.load(run / "shadow_keep.npz")["keep"]
    sx, sy = x[split.auxiliary], y[split.auxiliary]
    side = AttackerSide({"reference": lambda: ref_side["reference"],
                         "shadow": lambda: {"probs": shokri.predict_probs(model, shadows, sx,
                                                                          stacked=True),
                                            "labels": sy, "keep": skeep}})
    for a in registry.all_attacks():
      if a.traceable:
        want, subs, _ = pipeline.run_one(a, cfg, side, signals, member)
        # The stacked pass computed the same float32 signals in another program (LiRA:
        # test_lira's float32 tolerance); an RMIA score is a fraction of the population,
        # where one comparison flipped by rounding moves it by 1/Z.
        tol = (dict(rtol=0, atol=1.0 / split.auxiliary.size + 1e-6) if a.name.startswith("rmia")
               else dict(rtol=1e-4, atol=1e-4))
        np.testing.assert_allclose(stacked[a.name][c], want, err_msg=f"{a.name} at {name}",
                                   **tol)
        for k, v in subs.items():
          np.testing.assert_allclose(stacked[f"{a.name}/{k}"][c], v, rtol=1e-4, atol=1e-5)
  # the plot shows every attack (one line each; matplotlib legend entries)
  assert (run / "checkpoints.png").stat().st_size > 1000
