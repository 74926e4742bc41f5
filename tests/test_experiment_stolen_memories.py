"""experiments/stolen_memories.py: precision among the top-k scores (ties broken in
expectation) against a brute-force average over random tie-breaks, and a tiny suite end to
end (table with the white-box attacks' calibrated columns, finished runs reused)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _experiments import load_experiment


sm = load_experiment("stolen_memories")


def test_top_k_precision_equals_random_tie_breaking_on_average(tmp_path):
  rng = np.random.default_rng(0)
  member = rng.random(300) < 0.4
  scores = {"distinct": rng.normal(size=300) + member,
            "ties": rng.integers(0, 4, 300).astype(float) + member}  # many ties at each k
  path = tmp_path / "scores.npz"
  np.savez(path, is_member=member, **{f"score:{k}": v for k, v in scores.items()})
  got = sm.top_k_precision(str(path))
  for name, s in scores.items():
    for k in sm.TOP_K:
      draws = []
      for _ in range(4000):  # a random permutation, then a stable sort: random tie-breaks
        perm = rng.permutation(300)
        top = perm[np.argsort(-s[perm], kind="stable")[:k]]
        draws.append(member[top].mean())
      assert got[name][k] == pytest.approx(np.mean(draws), abs=0.01), (name, k)
  o = np.argsort(-scores["distinct"])
  assert got["distinct"][10] == member[o[:10]].mean()  # no ties: exact
  assert sm.top_k_precision(str(tmp_path / "missing.npz")) == {}


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setitem(sm.SUITES, "tiny", {
      "digits_tiny": dict(dataset="digits", model="mlp", model_options={"widths": [16]},
                          target_size=120, epochs=3, batch_size=32,
                          attacks=("loss", "stolen-memories", "nasr"), layers=("dense_0",)),
  })
  out, res = str(tmp_path / "runs"), str(tmp_path / "results")
  assert sm.main(["--suite", "tiny", "--out", out, "--results-dir", res]) == 0
  md = open(os.path.join(res, "stolen_memories_tiny.md")).read()
  assert "prec. top 10" in md and "| nasr |" in md and "| stolen-memories / layer dense_0 |" in md
  rows = [l for l in md.splitlines() if l.startswith("| nasr |")]
  assert "(goal 0.9)" in rows[0]
  before = os.path.getmtime(os.path.join(out, "tiny", "digits_tiny", "results.json"))
  assert sm.main(["--suite", "tiny", "--out", out, "--results-dir", res]) == 0  # reused
  assert os.path.getmtime(os.path.join(out, "tiny", "digits_tiny", "results.json")) == before
