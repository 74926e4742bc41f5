"""Tests for experiments/shokri.py (the Shokri et al. reproduction script).

* Plan and helper tests: no training.
* Rendering tests: every suite's tables and plots from fake finished runs written with the
  results.json / scores.npz contract of `run_audit` (the script reuses finished runs, so
  nothing is trained).
* End-to-end: a real `--smoke` run (built-in synthetic data only). A two-row table3 run
  is always on; all five suites end-to-end are marked slow (minutes on a loaded 2-core
  CPU).
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from _experiments import load_experiment

from mia_jax.audit import AuditConfig, write_json_atomic, write_npz_atomic
from mia_jax.metrics import summarize


@pytest.fixture(scope="module")
def shokri():
  return load_experiment("shokri")


# -- helpers ---------------------------------------------------------------------------------

def md_table(text: str, first_header: str) -> list[dict[str, str]]:
  """Rows of the first markdown table whose header starts with ``| first_header |``."""
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if line.startswith(f"| {first_header} |"):
      header = [c.strip() for c in line.strip("|").split("|")]
      rows = []
      for row in lines[i + 2:]:
        if not row.startswith("|"):
          break
        cells = [c.strip() for c in row.strip("|").split("|")]
        rows.append(dict(zip(header, cells)))
      return rows
  raise AssertionError(f"no table with first column {first_header!r} in:\n{text}")


def as_prob(cell: str) -> float:
  v = float(cell)
  assert 0.0 <= v <= 1.0, cell
  return v


def fake_run(rdir: str, kwargs: dict, seed: int, rng: np.random.Generator) -> None:
  """A finished run in ``rdir`` following run_audit's results contract, with scores that
  mildly separate members from non-members."""
  cfg = AuditConfig(seed=seed, seed_streams="offsets", **kwargs)  # as the script runs them
  k = kwargs["dataset_options"]["num_classes"]
  n = kwargs["target_size"]
  m = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  labels = rng.integers(0, k, 2 * n).astype(np.int32)
  scores = {}
  for a in cfg.attacks:
    scores[a] = rng.normal(size=2 * n) + 0.8 * m
  scores["shokri"] = rng.normal(size=2 * n) + 0.8 * m - 0.3
  scores["entropy"] = -rng.uniform(0.1, 1.0, 2 * n) * math.log(k) * np.where(m, 0.8, 1.0)
  scores["confidence"] = np.clip(rng.uniform(0, 1, 2 * n) + 0.2 * m, 0, 1)
  scores["correctness"] = (rng.uniform(size=2 * n) < np.where(m, 0.9, 0.6)).astype(float)
  scores = {a: scores[a] for a in cfg.attacks}
  attacks = {a: summarize(s, m, (0.1, 0.01, 0.001)) for a, s in scores.items()}
  pred = scores["shokri"] >= 0
  attacks["shokri"]["decision"] = {
      "threshold": 0.0, "accuracy": float(np.mean(pred == m)),
      "precision": float(np.sum(pred & m) / pred.sum()), "recall": float(np.sum(pred & m) / n)}
  attacks["shokri"]["per_class"] = True
  attacks["shokri"]["shadow_source"] = cfg.shadow_source
  if cfg.shadow_source == "synthetic":
    attacks["shokri"]["synthesis"] = {"attempted": 100, "emitted": 80, "queries_mean": 50.0,
                                      "queries_median": 40.0}
  if "stolen-memories" in attacks:
    attacks["stolen-memories"]["calibrated"] = {"precision": 0.9, "recall": 0.1}
  results = {
      "config": cfg.to_dict(),
      "dataset": {"name": "purchase_like", "num_classes": k, "num_members": n,
                  "num_nonmembers": n, "num_auxiliary": 3 * n},
      "model": {"name": "mlp", "spec": {}},
      "target": {"train_accuracy": 0.9, "test_accuracy": 0.7, "generalization_gap": 0.2},
      "attacks": attacks,
      "timings": {"train_target": 1.0, "shadow_models": 2.0},
  }
  if cfg.dp_epsilon is not None:
    results["dp"] = {"epsilon": [cfg.dp_epsilon * 0.999], "delta": cfg.delta,
                     "noise_multiplier": 1.5, "clip_norm": cfg.clip_norm}
  write_npz_atomic(os.path.join(rdir, "scores.npz"), is_member=m, labels=labels,
                   **{f"score:{a}": s for a, s in scores.items()})
  write_json_atomic(os.path.join(rdir, "results.json"), results)


def check_table3(shokri, text: str, expect_run=None):
  rows = md_table(text, "mitigation")
  assert [r["mitigation"] for r in rows] == [lab for lab, _, _ in shokri.MITIGATIONS]
  for r in rows:
    if expect_run is not None and r["mitigation"] not in expect_run:
      assert r["target train acc."] == "not run"
      continue
    for col in ("target train acc.", "target test acc.", "attack accuracy", "attack precision",
                "attack recall", "Shokri AUC", "loss AUC"):
      as_prob(r[col])


# -- plans and helpers (no training) -----------------------------------------------------------

@pytest.mark.parametrize("smoke", [False, True])
def test_plans_are_consistent(shokri, smoke):
  seen = {}
  for suite in shokri.SUITES:
    plan = shokri.suite_plan(suite, smoke)
    assert plan
    for name, kw in plan.items():
      AuditConfig(**kw)  # every recipe is a valid configuration (no data is loaded)
      if name in seen:  # a run name means one configuration everywhere
        assert seen[name] == kw, name
      seen[name] = kw
  sizes = shokri.SMOKE if smoke else shokri.FULL
  t3 = shokri.suite_plan("table3", smoke)
  assert len(t3) == 11 * len(sizes["table3_datasets"])
  assert shokri.suite_plan("fig12", smoke) == shokri.suite_plan("fig11", smoke)
  dp = shokri.suite_plan("dp", smoke)
  assert [kw.get("dp_epsilon") for kw in dp.values()] == list(sizes["epsilons"])
  # Rows of a table differ only in what the row is about.
  base = t3[sizes["table3_datasets"][0]]
  for kw in list(t3.values())[:11]:
    changed = {k for k in set(kw) | set(base) if kw.get(k) != base.get(k)}
    assert changed <= {"defenses", "weight_decay"}
  if smoke:  # smoke mode uses built-in data only
    assert all(kw["dataset"] == "purchase_like" for kw in seen.values())
  else:
    assert shokri.FULL["epsilons"] == (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None)
    assert shokri.FULL["num_shadows"] == (1, 2, 4, 8, 16, 32)
    assert set(shokri.FULL["fig11_classes"]) >= {10, 20, 50, 100}


def test_decision_and_per_class(shokri):
  logits = np.array([1.0, 0.0, -1.0, 2.0, -0.5, 0.3])
  member = np.array([1, 1, 1, 0, 0, 0], bool)
  d = shokri.decision_metrics(logits, member)
  assert d["precision"] == pytest.approx(2 / 4) and d["recall"] == pytest.approx(2 / 3)
  assert d["accuracy"] == pytest.approx(3 / 6)
  sc = {"is_member": member, "labels": np.array([0, 0, 1, 0, 1, 1]),
        "score:shokri": logits, "score:correctness": np.array([1, 1, 1, 0, 1, 0], float)}
  pc = shokri.per_class_stats(sc, 3)
  # class 0: members {0, 1}, non-member {3}; predicted members {0, 1, 3} -> precision 2/3
  assert pc["precision"][0] == pytest.approx(2 / 3)
  assert pc["fraction"][0] == pytest.approx(2 / 3) and pc["fraction"][1] == pytest.approx(1 / 3)
  assert pc["gap"][0] == pytest.approx(1.0 - 0.0) and pc["gap"][1] == pytest.approx(1.0 - 0.5)
  assert pc["precision"][1] == pytest.approx(0.0)  # predicted {5}, a non-member
  assert math.isnan(pc["precision"][2]) and math.isnan(pc["gap"][2])  # empty class
  assert shokri.ks_statistic([0, 1, 2], [0, 1, 2]) == 0.0
  assert shokri.ks_statistic([0, 0.1], [5, 6]) == 1.0
  assert shokri.pearson([1, 2, 3, np.nan], [2, 4, 6, 0]) == pytest.approx(1.0)
  assert math.isnan(shokri.pearson([1, 1, 1], [1, 2, 3]))


# -- rendering from fake finished runs ---------------------------------------------------------

def test_all_suites_render_from_finished_runs(shokri, tmp_path, capsys):
  out, res = tmp_path / "runs", tmp_path / "results"
  rng = np.random.default_rng(0)
  made = set()
  for suite in shokri.SUITES:
    for name, kw in shokri.suite_plan(suite, True).items():
      if name not in made:
        fake_run(shokri.run_dir(str(out), True, 0, name), kw, 0, rng)
        made.add(name)
  assert shokri.main(["--suite", "all", "--smoke", "--out", str(out), "--results-dir",
                      str(res), "--jax-cache", ""]) == 0
  assert "already finished" in capsys.readouterr().out
  for suite in shokri.SUITES:
    text = (res / f"shokri_{suite}.md").read_text()
    cmd = f"python experiments/shokri.py --suite {suite} --smoke"
    assert text.startswith(f"<!-- produced by: {cmd}")
    assert "not run" not in text
  for png in ("fig11", "fig12", "shadows", "dp"):
    assert (res / f"shokri_{png}.png").stat().st_size > 5000

  check_table3(shokri, (res / "shokri_table3.md").read_text())

  rows = md_table((res / "shokri_fig11.md").read_text(), "classes")
  assert [int(r["classes"]) for r in rows] == list(shokri.SMOKE["fig11_classes"])
  for r in rows:
    as_prob(r["mean per-class precision"])
    assert -1 <= float(r["r(precision, fraction)"]) <= 1

  rows = md_table((res / "shokri_fig12.md").read_text(), "classes")
  assert len(rows) == len(shokri.SMOKE["fig11_classes"])
  for r in rows:
    for v in list(r.values())[1:]:
      as_prob(v)
  assert "probability the target assigns to the true class" in (res / "shokri_fig12.md").read_text()

  text = (res / "shokri_shadows.md").read_text()
  rows = md_table(text, "shadow models")
  assert [int(r["shadow models"]) for r in rows] == list(shokri.SMOKE["num_shadows"])
  rows = md_table(text, "source")
  assert [r["source"] for r in rows] == [lab for lab, _, _ in shokri.SOURCES]
  assert rows[-1]["synthesis (emitted / attempted, mean / median queries per emitted record)"] \
      .startswith("80 / 100")
  for r in rows:
    as_prob(r["precision"]), as_prob(r["AUC"])

  rows = md_table((res / "shokri_dp.md").read_text(), "epsilon")
  assert [r["epsilon"] for r in rows] == ["1", "inf"]
  assert float(rows[0]["tight bound"]) == pytest.approx(math.e / (1 + math.e), abs=1e-3)
  assert rows[0]["Yeom bound"] == "1.000" and rows[1]["tight bound"] == "1.000"
  assert rows[1]["noise mult."] == "-"
  for r in rows:
    for a in shokri.DP_ATTACKS:
      as_prob(r[f"{a} bal. acc."])


def test_partial_and_mismatched_runs(shokri, tmp_path):
  out, res = tmp_path / "runs", tmp_path / "results"
  plan = shokri.suite_plan("table3", True)
  rng = np.random.default_rng(1)
  fake_run(shokri.run_dir(str(out), True, 0, "location_label"), plan["location_label"], 0, rng)
  # --only selects nothing unfinished here: the finished row is shown, the others "not run"
  shokri.main(["--suite", "table3", "--smoke", "--only", "location_label", "--out", str(out),
               "--results-dir", str(res), "--jax-cache", ""])
  check_table3(shokri, (res / "shokri_table3.md").read_text(),
               expect_run={"top-1 class, label only"})
  # a stored run with another configuration is refused, not silently reused
  fake_run(shokri.run_dir(str(out), True, 0, "location"),
           {**plan["location"], "epochs": plan["location"]["epochs"] + 1}, 0, rng)
  with pytest.raises(SystemExit, match="another configuration"):
    shokri.main(["--suite", "table3", "--smoke", "--only", "location", "--out", str(out),
                 "--results-dir", str(res), "--jax-cache", ""])
  with pytest.raises(SystemExit):
    shokri.main(["--suite", "table3", "--smoke", "--only", "no_such_run", "--out", str(out)])


# -- end-to-end (real training on tiny built-in data) -------------------------------------------

def _check_decisions_match_scores(shokri, out: str, names):
  for name in names:
    rdir = shokri.run_dir(out, True, 0, name)
    with open(os.path.join(rdir, "results.json")) as f:
      r = json.load(f)
    sc = shokri.load_scores(rdir)
    assert sc["is_member"][: sc["is_member"].size // 2].all()  # members first
    mine = shokri.decision_metrics(sc["score:shokri"], sc["is_member"])
    theirs = shokri.shokri_decision(r, rdir)
    for k in ("accuracy", "precision", "recall"):
      assert theirs[k] == pytest.approx(mine[k], nan_ok=True), (name, k)


def test_smoke_table3_two_rows(shokri, tmp_path):
  out, res = str(tmp_path / "runs"), tmp_path / "results"
  only = ["location", "location_label"]
  assert shokri.main(["--suite", "table3", "--smoke", "--only", ",".join(only), "--out", out,
                      "--results-dir", str(res), "--jax-cache", str(tmp_path / "jc")]) == 0
  check_table3(shokri, (res / "shokri_table3.md").read_text(),
               expect_run={"no mitigation", "top-1 class, label only"})
  _check_decisions_match_scores(shokri, out, only)


@pytest.mark.slow
def test_smoke_all_suites_end_to_end(shokri, tmp_path):
  out, res = str(tmp_path / "runs"), tmp_path / "results"
  args = ["--smoke", "--out", out, "--results-dir", str(res), "--jax-cache", str(tmp_path / "jc")]
  assert shokri.main(["--suite", "all", *args]) == 0
  check_table3(shokri, (res / "shokri_table3.md").read_text())
  for suite in shokri.SUITES:
    assert "not run" not in (res / f"shokri_{suite}.md").read_text()
  for png in ("fig11", "fig12", "shadows", "dp"):
    assert (res / f"shokri_{png}.png").stat().st_size > 5000
  rows = md_table((res / "shokri_dp.md").read_text(), "epsilon")
  assert float(rows[0]["noise mult."]) > 0 and float(rows[0]["accounted epsilon"]) <= 1.0 + 1e-6
  text = (res / "shokri_shadows.md").read_text()
  syn = md_table(text, "source")[-1]
  assert re.match(r"\d+ / \d+, ", syn["synthesis (emitted / attempted, mean / median queries per "
                                      "emitted record)"])
  names = [n for s in shokri.SUITES for n in shokri.suite_plan(s, True)]
  _check_decisions_match_scores(shokri, out, dict.fromkeys(names))
  # resume: a second invocation trains nothing and writes the same tables
  before = (res / "shokri_fig11.md").read_text()
  assert shokri.main(["--suite", "fig11", *args]) == 0
  strip = lambda t: re.sub(r"this invocation took \d+s", "", t)  # noqa: E731
  assert strip((res / "shokri_fig11.md").read_text()) == strip(before)
