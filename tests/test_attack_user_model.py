"""``mia-jax attack --model module:factory``: a user's own linen model, trained by a plain
optax loop and saved every epoch with orbax's StandardCheckpointer as a TrainState-like
dict, attacked on every checkpoint with every black-box and white-box attack."""

import functools
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from mia_jax import cli

USER_MODULE = textwrap.dedent('''
    import flax.linen as nn
    from mia_jax.models import from_linen

    class CNN(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.Conv(features=4, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(features=32)(x)
        x = nn.relu(x)
        return nn.Dense(features=10)(x)

    def make():
      return from_linen(CNN(), input_shape=(8, 8, 1), num_classes=10)
''')


def _step(module, tx, xs, ys, params, opt):
  import jax
  import optax

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": p}, xs), ys).mean()
  upd, opt = tx.update(jax.grad(loss)(params), opt, params)
  return optax.apply_updates(params, upd), opt


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
  """The user's side: their module, their training loop, their checkpoints and split."""
  import jax
  import optax
  import orbax.checkpoint as ocp

  from mia_jax.data import load_dataset
  root = tmp_path_factory.mktemp("user")
  (root / "user_model_for_test.py").write_text(USER_MODULE)
  sys.path.insert(0, str(root))
  import user_model_for_test as um
  ds = load_dataset("digits")
  x, y = ds.all_x(), ds.all_y()
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(x))
  members, nonmembers = perm[:80], perm[80:160]
  np.save(root / "members.npy", members)
  (root / "nonmembers.txt").write_text("\n".join(map(str, nonmembers)) + "\n")
  module = um.CNN()
  params = module.init(jax.random.key(0), x[:1])["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    def loss(p):
      z = module.apply({"params": p}, x[members])
      return optax.softmax_cross_entropy_with_integer_labels(z, y[members]).mean()
    g = jax.grad(loss)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  ckpt = ocp.StandardCheckpointer()
  for epoch in range(5):
    for _ in range(20):
      params, opt = step(params, opt)
    ckpt.save(root / "ckpt" / f"epoch_{epoch}", {"params": params, "opt_state": opt,
                                                 "step": (epoch + 1) * 20})
  # The user's own reference models for LiRA / RMIA: each on a random half of the
  # candidates (members and non-members), trained like the target.
  cand = np.concatenate([members, nonmembers])
  from mia_jax.data import keep_matrix
  keep = np.zeros((4, len(x)), bool)
  keep[:, cand] = keep_matrix(4, cand.size, seed=0)  # each candidate IN for 2 of the 4
  for m in range(4):
    rows = np.flatnonzero(keep[m])
    p = module.init(jax.random.key(10 + m), x[:1])["params"]
    o = tx.init(p)
    ref_step = jax.jit(functools.partial(_step, module, tx, x[rows], y[rows]))
    for _ in range(100):
      p, o = ref_step(p, o)
    ckpt.save(root / "refs" / f"ref_{m}", {"params": p})
  np.save(root / "ref_keep.npy", keep)
  ckpt.wait_until_finished()
  ckpt.close()
  yield root, module, members, nonmembers
  sys.path.remove(str(root))


@pytest.mark.slow
def test_cli_attacks_every_checkpoint_of_a_user_linen_model(user_run, monkeypatch):
  root, module, members, nonmembers = user_run
  monkeypatch.chdir(root)
  out = root / "attack"
  code = cli.main(["attack", "--model", "user_model_for_test:make", "--checkpoints",
                   str(root / "ckpt"), "--dataset", "digits", "--members",
                   str(root / "members.npy"), "--nonmembers", str(root / "nonmembers.txt"),
                   "--out", str(out), "--layers", "Dense_0", "--epochs", "3", "--quiet",
                   "--reference-checkpoints", str(root / "refs"), "--reference-keep",
                   str(root / "ref_keep.npy")])
  assert code == 0
  res = json.loads((out / "checkpoint_results.json").read_text())
  names = [c["name"] for c in res["checkpoints"]]
  assert names == [f"epoch_{i}" for i in range(5)]
  every = {"loss", "confidence", "entropy", "modified_entropy", "correctness", "lira",
           "lira-offline", "lira-fixed-variance", "lira-offline-fixed-variance", "rmia",
           "rmia-offline", "gradient-norm", "stolen-memories", "nasr"}
  for c in res["checkpoints"]:
    assert set(c["attacks"]) == every
    assert all(0 <= a["auc"] <= 1 for a in c["attacks"].values())
  # The target memorizes as it trains: train accuracy rises over the checkpoints.
  assert res["checkpoints"][-1]["train_accuracy"] > res["checkpoints"][0]["train_accuracy"]
  with np.load(out / "scores.npz") as f:
    assert f["checkpoint_score:loss"].shape == (5, members.size + nonmembers.size)
    assert f["checkpoint_score:nasr"].shape == (5, members.size + nonmembers.size)
    # The loss attack's per-example scores are the user's own model's losses, negated.
    import optax
    import orbax.checkpoint as ocp
    from mia_jax.data import load_dataset
    ds = load_dataset("digits")
    x, y = ds.all_x(), ds.all_y()
    ev = np.concatenate([members, nonmembers])
    with ocp.StandardCheckpointer() as ck:
      saved = ck.restore(root / "ckpt" / "epoch_2")
    z = module.apply({"params": saved["params"]}, x[ev])
    want = -np.asarray(optax.softmax_cross_entropy_with_integer_labels(z, y[ev]))
    np.testing.assert_allclose(f["checkpoint_score:loss"][2], want, rtol=1e-4, atol=1e-5)
  assert (out / "checkpoints.png").stat().st_size > 1000
  assert (out / "report.html").exists() and (out / "results.json").exists()
  # the shadow / proxies are smaller than the target's training set here? then it says so
  assert isinstance(res["warnings"], list)


def test_cli_attack_bad_user_input_is_a_clear_error(user_run, monkeypatch, capsys):
  root, _, _, _ = user_run
  monkeypatch.chdir(root)
  base = ["attack", "--checkpoints", str(root / "ckpt"), "--dataset", "digits",
          "--members", str(root / "members.npy"), "--nonmembers", str(root / "nonmembers.txt"),
          "--out", str(root / "bad"), "--quiet"]
  for model, needle in (("nomodule:make", "cannot import"), ("user_model_for_test:nope", "nope"),
                        ("no_colon", "MODULE:FACTORY")):
    assert cli.main([*base, "--model", model]) == 2
    assert needle in capsys.readouterr().err
  (root / "bad_idx.txt").write_text("1\n2\n999999\n")
  assert cli.main([*base[:6], str(root / "bad_idx.txt"), *base[7:], "--model",
                   "user_model_for_test:make"]) == 2
  assert "[0, 1797)" in capsys.readouterr().err
  assert cli.main(["attack", "--model", "user_model_for_test:make", "--quiet"]) == 2
  assert "--checkpoints" in capsys.readouterr().err
  assert not os.path.exists(root / "bad")


def test_small_attacker_data_is_a_warning_in_log_and_results(user_run, tmp_path):
  """A shadow target / proxies smaller than the target's training set: said in the log
  and in results.json."""
  import jax

  from mia_jax.attack_model import attack_model
  from mia_jax.data import load_dataset
  from mia_jax.models import from_linen
  from mia_jax.train import TrainConfig
  _, module, members, nonmembers = user_run
  ds = load_dataset("digits")
  x, y = ds.all_x(), ds.all_y()
  model = from_linen(module, input_shape=(8, 8, 1), num_classes=10)
  v = model.init(jax.random.key(0))
  aux = np.setdiff1d(np.arange(len(x)), np.concatenate([members, nonmembers]))[:90]
  lines = []
  res = attack_model(model, v, x, y, members=members, nonmembers=nonmembers, auxiliary=aux,
                     attacks=("loss", "stolen-memories"), whitebox_layers=("Dense_0",),
                     train_config=TrainConfig(epochs=1, batch_size=32), out=str(tmp_path / "r"),
                     report=False, log=lines.append)
  assert any("shadow target trained on 30 examples" in w for w in res["warnings"]), res
  assert any(l.startswith("warning:") and "fewer than the target's 80" in l for l in lines)
  saved = json.loads((tmp_path / "r" / "results.json").read_text())
  assert saved["warnings"] == res["warnings"]


def test_dp_without_dp_accounting_is_a_clear_error(monkeypatch, tmp_path, capsys):
  import builtins
  real = builtins.__import__

  def no_dp(name, *a, **k):
    if name == "dp_accounting" or name.startswith("dp_accounting."):
      raise ImportError("No module named 'dp_accounting'")
    return real(name, *a, **k)
  monkeypatch.setattr(builtins, "__import__", no_dp)
  assert cli.main(["audit", "--out", str(tmp_path / "r"), "--dp-epsilon", "1", "--quiet",
                   "--attacks", "loss", "--epochs", "1"]) == 2
  err = capsys.readouterr().err
  assert "dp-accounting" in err and "Traceback" not in err
  assert not (tmp_path / "r").exists()
