"""Many checkpoints: stack round trip, one vmapped pass == per-checkpoint loop, errors, CLI."""

import json
import os

import jax
import numpy as np
import pytest

from mia_jax import checkpoints as ck
from mia_jax._validation import MiaInputError
from mia_jax.attacks.threshold import threshold_scores
from mia_jax.models import make_model, stack_variables
from mia_jax.signals import blackbox_signals
from mia_jax.train import save_variables

from _float32 import assert_auc_close

MODEL = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))


def _save_run(tmp_path, count=3):
  vs = [MODEL.init(jax.random.key(i)) for i in range(count)]
  d = tmp_path / "ckpts"
  for i, v in enumerate(vs):
    save_variables(d / f"epoch-{i + 1:06d}", v)
  return d, vs


def test_stack_round_trip_and_order(tmp_path):
  d, vs = _save_run(tmp_path)
  stacked, names = ck.load_checkpoint_stack(d, MODEL)
  assert names == ["epoch-000001", "epoch-000002", "epoch-000003"]
  for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(stack_variables(vs))):
    np.testing.assert_array_equal(got, want)
  # A single checkpoint that already holds a stack loads the same.
  save_variables(tmp_path / "stacked", stack_variables(vs))
  again, names2 = ck.load_checkpoint_stack(tmp_path / "stacked", MODEL)
  assert len(names2) == 3
  for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(got, want)


def test_attack_checkpoints_equals_per_checkpoint_loop(tmp_path):
  d, vs = _save_run(tmp_path, count=4)
  stacked, _ = ck.load_checkpoint_stack(d, MODEL)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6)).astype(np.float32)
  y = rng.integers(0, 3, 40)
  member = np.arange(40) < 20
  got = ck.attack_checkpoints(MODEL, stacked, x, y, member, microbatch_size=7)
  assert len(got) == 4
  for c, v in enumerate(vs):
    sig = blackbox_signals(MODEL, v, x, y)
    for name, s in threshold_scores(sig, ["loss", "confidence", "entropy", "modified_entropy"]).items():
      # One vmapped pass vs each checkpoint alone: float32 signals equal to rounding, so
      # the AUCs equal up to the pairs that rounding could reorder.
      assert_auc_close(got[c]["attacks"][name]["auc"], s, member, rtol=1e-5, atol=1e-6)
    assert got[c]["train_accuracy"] == pytest.approx(sig["correctness"][member].mean())


def test_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(MiaInputError, match="no mia-jax checkpoints"):
    ck.load_checkpoint_stack(tmp_path / "empty", MODEL)
  with pytest.raises(MiaInputError, match="not a directory"):
    ck.load_checkpoint_stack(tmp_path / "missing", MODEL)
  d, _ = _save_run(tmp_path, count=2)
  other = make_model("mlp", input_shape=(6,), num_classes=3, widths=(7,))
  save_variables(d / "epoch-000009", other.init(jax.random.key(0)))
  with pytest.raises(MiaInputError, match="epoch-000009"):
    ck.load_checkpoint_stack(d, MODEL)


@pytest.mark.slow
def test_cli_train_then_attack(tmp_path):
  from mia_jax import cli
  run = tmp_path / "run"
  assert cli.main(["train", "--out", str(run), "--epochs", "4", "--save-every", "2", "--quiet",
                   "-M", "widths=[32]", "--target-size", "100"]) == 0
  assert sorted(os.listdir(run / "checkpoints")) == ["epoch-000002", "epoch-000004"]
  assert cli.main(["attack", "--run", str(run), "--quiet", "--attacks",
                   "loss,entropy,gradient-norm"]) == 0
  res = json.loads((run / "checkpoint_results.json").read_text())
  assert [c["name"] for c in res["checkpoints"]] == ["epoch-000002", "epoch-000004"]
  assert list(res["checkpoints"][0]["attacks"]) == ["loss", "entropy", "gradient-norm"]
  # The white-box gradient norms per checkpoint equal those of each checkpoint alone.
  from mia_jax.audit import prepare
  from mia_jax.whitebox import gradient_norms
  setup = prepare(ck.config_from_dict(json.loads((run / "config.json").read_text())))
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  member = np.arange(ev.size) < setup.split.target_in.size
  stacked, _ = ck.load_checkpoint_stack(run / "checkpoints", setup.model)
  for c, entry in enumerate(res["checkpoints"]):
    one = jax.tree.map(lambda a, c=c: a[c], stacked)
    norms = gradient_norms(setup.model, one, setup.x[ev], setup.y[ev])
    assert_auc_close(entry["attacks"]["gradient-norm"]["auc"], -norms["total"], member,
                     rtol=1e-5, atol=1e-7)
    assert set(entry["attacks"]["gradient-norm"]["layers"]) == {"dense_0", "logits"}
  assert (run / "checkpoints.png").stat().st_size > 1000
  # Training accuracy rises between the checkpoints of this run.
  assert res["checkpoints"][1]["train_accuracy"] >= res["checkpoints"][0]["train_accuracy"]


@pytest.mark.slow
def test_lira_and_rmia_per_checkpoint_equal_the_audit_at_the_last_epoch(tmp_path):
  """`train --with-reference` trains the audit's reference models; LiRA/RMIA on the last
  checkpoint therefore equal the audit's, and earlier checkpoints use their own epoch's
  reference models."""
  from mia_jax import cli
  from mia_jax.audit import AuditConfig, run_audit
  common = ["--epochs", "3", "-M", "widths=[16]", "--target-size", "60", "--num-reference", "4"]
  run = tmp_path / "run"
  assert cli.main(["train", "--out", str(run), "--save-every", "1", "--with-reference",
                   "--quiet", *common]) == 0
  assert sorted(os.listdir(run / "reference_checkpoints")) == [
      "epoch-000001", "epoch-000002", "epoch-000003"]
  attacks = ["loss", "lira", "lira-offline", "rmia"]
  assert cli.main(["attack", "--run", str(run), "--quiet", "--attacks", ",".join(attacks)]) == 0
  res = json.loads((run / "checkpoint_results.json").read_text())
  assert [list(c["attacks"]) for c in res["checkpoints"]] == [attacks] * 3
  audit = run_audit(AuditConfig(epochs=3, model_options={"widths": [16]}, target_size=60,
                                num_reference=4, attacks=tuple(attacks)), str(tmp_path / "a"))
  last = res["checkpoints"][-1]["attacks"]
  # The audit scored the target alone, the checkpoint attack the stacked checkpoints: the
  # same float32 arithmetic in another order. LiRA's scores carry test_lira's float32
  # tolerance; RMIA's are fractions of the population, where one comparison flipped by
  # rounding moves a score by 1/Z.
  with np.load(tmp_path / "a" / "scores.npz") as f:
    is_member = f["is_member"]
    for a in attacks:
      z = audit["dataset"]["num_auxiliary"]
      tol = dict(rtol=0, atol=1.0 / z + 1e-6) if a.startswith("rmia") else dict(rtol=1e-4,
                                                                                  atol=1e-4)
      assert_auc_close(last[a]["auc"], f[f"score:{a}"], is_member, **tol)
  # Epoch 1's LiRA uses epoch-1 reference models: recompute it by hand.
  from mia_jax.attacks import lira
  from mia_jax.audit import prepare
  from mia_jax.checkpoints import config_from_dict
  from mia_jax.data import keep_matrix
  from mia_jax.train import load_variables
  cfg = config_from_dict(json.loads((run / "config.json").read_text()))
  setup = prepare(cfg)
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  member = np.arange(ev.size) < setup.split.target_in.size
  tgt, _ = load_variables(str(run / "checkpoints" / "epoch-000001"),
                          like=setup.model.init(jax.random.key(0)))
  refs, _ = load_variables(str(run / "reference_checkpoints" / "epoch-000001"),
                           like=jax.eval_shape(jax.vmap(setup.model.init),
                                               jax.random.split(jax.random.key(0), 4)))
  t = blackbox_signals(setup.model, tgt, setup.x[ev], setup.y[ev])["scaled_logit"]
  r = blackbox_signals(setup.model, refs, setup.x[ev], setup.y[ev], stacked=True)["scaled_logit"]
  want = lira.lira_online(t, r, keep_matrix(4, ev.size, seed=cfg.stage_seed("reference-keep")))
  assert_auc_close(res["checkpoints"][0]["attacks"]["lira"]["auc"], want, member, rtol=1e-4,
                   atol=1e-4)


def test_reference_attacks_need_reference_checkpoints(tmp_path, capsys):
  from mia_jax import cli
  run = tmp_path / "run"
  assert cli.main(["train", "--out", str(run), "--epochs", "1", "--quiet", "-M", "widths=[8]",
                   "--target-size", "40"]) == 0
  assert cli.main(["attack", "--run", str(run), "--quiet", "--attacks", "loss,lira"]) == 2
  assert "--with-reference" in capsys.readouterr().err
  assert cli.main(["attack", "--run", str(run), "--quiet", "--attacks", "loss,bogus"]) == 2
  assert cli.main(["train", "--out", str(tmp_path / "dp"), "--epochs", "1", "--quiet",
                   "--noise-multiplier", "1"]) == 2
