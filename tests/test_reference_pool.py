"""Growing a run's reference pool: `--num-reference 8` on a finished run that has 4 trains
only the 4 new models, keeps the first 4 (and their keep rows) bit for bit, and keeps
every candidate IN for exactly half of the pool; keep matrices are stored in .npz."""

import json

import jax
import numpy as np
import pytest

from mia_jax import cli, train
from mia_jax.audit import reference_blocks, reference_keep, AuditConfig
from mia_jax.train import load_variables

COMMON = ["audit", "--dataset", "digits", "--epochs", "2", "--target-size", "100",
          "--attacks", "loss,lira,rmia", "--quiet", "--no-report"]


def test_blocks_and_keep_rows():
  cfg = AuditConfig(num_reference=8, seed=3)
  assert reference_blocks(cfg, None) == [8]
  assert reference_blocks(cfg, [4]) == [4, 4]
  assert reference_blocks(cfg, [4, 4]) == [4, 4]
  assert reference_blocks(cfg, [16]) == [8]  # shrinking: a fresh pool
  grown = reference_keep(cfg, 50, [4, 4])
  first = reference_keep(AuditConfig(num_reference=4, seed=3), 50)
  np.testing.assert_array_equal(grown[:4], first)
  assert (grown.sum(0) == 4).all() and (grown[4:].sum(0) == 2).all()
  # one block is what a fresh run always drew (results of earlier runs stay reproducible)
  from mia_jax.data import keep_matrix
  np.testing.assert_array_equal(reference_keep(cfg, 50),
                                keep_matrix(8, 50, seed=cfg.stage_seed("reference-keep")))


def test_growing_a_finished_run_trains_only_the_new_models(tmp_path, monkeypatch):
  out = tmp_path / "run"
  assert cli.main(COMMON + ["--num-reference", "4", "--out", str(out)]) == 0
  before = json.loads((out / "results.json").read_text())
  with np.load(out / "reference_keep.npz") as f:
    keep4 = f["keep"]
  meta = json.loads((out / "reference" / "metadata.json").read_text())
  assert "keep" not in meta and meta["num_models"] == 4 and meta["blocks"] == [4]
  saved4, _ = load_variables(str(out / "reference"))

  trained = []
  real = train.train_models

  def spy(model, x, y, keep, **kw):
    trained.append((keep.shape[0], kw.get("first_model", 0)))
    return real(model, x, y, keep, **kw)

  monkeypatch.setattr(train, "train_models", spy)
  # the same options again: the finished run is refused, as before
  assert cli.main(COMMON + ["--num-reference", "4", "--out", str(out)]) == 2
  assert cli.main(COMMON + ["--num-reference", "8", "--out", str(out)]) == 0
  assert trained == [(4, 4)]  # the 4 new models, as models 4..7 of the pool
  after = json.loads((out / "results.json").read_text())
  assert after["attacks"]["lira"]["num_reference"] == 8
  assert after["attacks"]["lira"]["reference_blocks"] == [4, 4]
  assert after["config"]["num_reference"] == 8
  with np.load(out / "reference_keep.npz") as f:
    keep8 = f["keep"]
  np.testing.assert_array_equal(keep8[:4], keep4)
  assert (keep8.sum(0) == 4).all()
  saved8, meta8 = load_variables(str(out / "reference"))
  assert meta8["blocks"] == [4, 4] and meta8["num_models"] == 8
  for a, b in zip(jax.tree.leaves(saved4), jax.tree.leaves(saved8)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:4])
  # the loss attack reads only the target: unchanged
  assert after["attacks"]["loss"] == before["attacks"]["loss"]
  # rerunning the grown run's options is a finished run again
  assert cli.main(COMMON + ["--num-reference", "8", "--out", str(out)]) == 2
  # another change than a larger pool is still refused
  assert cli.main(COMMON + ["--num-reference", "10", "--epochs", "3", "--out", str(out)]) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-keep"])
def test_a_damaged_keep_file_retrains_the_pool_with_identical_scores(tmp_path, damage):
  out = tmp_path / "run"
  args = COMMON + ["--num-reference", "2", "--out", str(out)]
  assert cli.main(args) == 0
  with np.load(out / "scores.npz") as f:
    want = f["score:lira"]
  (out / "results.json").unlink()
  (out / "scores.npz").unlink()
  p = out / "reference_keep.npz"
  if damage == "truncate":
    p.write_bytes(p.read_bytes()[:40])
  elif damage == "garbage":
    p.write_bytes(b"PK\x03\x04" + bytes(range(200)))
  else:
    np.savez(p, keep=~np.load(p)["keep"])
  assert cli.main(args) == 0
  with np.load(out / "scores.npz") as f:
    np.testing.assert_array_equal(f["score:lira"], want)
