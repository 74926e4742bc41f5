"""Tests for experiments/auditing.py (the privacy-auditing experiment): its grid, and its
tables and plots from two real tiny runs (built-in synthetic data)."""

from __future__ import annotations

import math

import pytest
from _experiments import load_experiment

pytest.importorskip("jax_privacy")


@pytest.fixture(scope="module")
def auditing():
  return load_experiment("auditing")


def test_the_grid_is_every_epsilon_kind_and_mode(auditing):
  runs = auditing.plan(("location", "mnist"), smoke=False)
  # 6 epsilons x (4 one-run kinds + 2 several-run kinds) on each dataset.
  assert len(runs) == 2 * 6 * 6
  assert {k for k in runs if k.startswith("mnist-") and "several" in k} == {
      f"mnist-{kind}-several-run-{e}" for kind in ("mislabeled", "gradient")
      for e in ("eps1", "eps2", "eps4", "eps8", "eps16", "nodp")}
  r = runs["location-gradient-one-run-nodp"]
  assert r["noise_multiplier"] == 0.0 and "dp_epsilon" not in r and r["canaries"] == 500
  r = runs["location-mislabeled-several-run-eps4"]
  assert r["dp_epsilon"] == 4.0 and r["canary_runs"] == 4 and r["canaries"] == 250
  assert r["attacks"] == ("loss", "lira", "rmia") and r["num_reference"] == 2
  r = runs["location-ood-one-run-nodp"]
  assert "dp_epsilon" not in r and "noise_multiplier" not in r
  from mia_jax.audit import AuditConfig
  for kw in runs.values():  # every run is a valid audit configuration
    AuditConfig(**kw)


def test_tables_and_plots_from_real_runs(auditing, tmp_path):
  runs = auditing.plan(("location",), smoke=True)
  chosen = {k: runs[k] for k in ("location-mislabeled-one-run-eps4",
                                 "location-gradient-one-run-nodp")}
  results = auditing.execute(chosen, out=str(tmp_path), smoke=True, seed=0, log=lambda s: None)
  assert set(results) == set(chosen)
  again = auditing.execute(chosen, out=str(tmp_path), smoke=True, seed=0,
                           log=lambda s: None)  # finished runs are reused, not retrained
  assert again == results
  body = auditing.render(results, results_dir=str(tmp_path), datasets=("location",),
                         smoke=True)
  rows = auditing.rows(results)
  assert {r["attack"] for r in rows} == {"loss", "lira", "rmia", "gradient-canary"}
  grad = [r for r in rows if r["attack"] == "gradient-canary"][0]
  assert math.isinf(grad["theoretical"])
  dp_rows = [r for r in rows if r["run"].endswith("eps4")]
  assert all(r["theoretical"] == pytest.approx(4.0, rel=1e-2) for r in dp_rows)
  for r in rows:  # every detail row is in the table with its numbers
    assert f"| {r['run']} | " in body and f"| {r['attack']} | {r['auc']:.3f} |" in body
  assert "(not run)" in body  # the runs left out are marked, not invented
  assert (tmp_path / "auditing_location.png").stat().st_size > 1000
