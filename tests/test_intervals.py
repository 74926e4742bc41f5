"""Bootstrap confidence intervals of every attack's AUC and TPRs in an audit's results."""

import json

import numpy as np
from scipy.stats import norm

from mia_jax import cli, pipeline
from mia_jax.metrics import bootstrap_ci, roc_auc, tpr_at_fpr


def test_intervals_are_the_libraries_bootstrap_of_each_metric():
  rng = np.random.default_rng(0)
  m = np.r_[np.ones(150, bool), np.zeros(250, bool)]
  s = rng.normal(size=400) + m
  got = pipeline.bootstrap_intervals(s, m, resamples=300, confidence=0.9, seed=4)
  # Same seed, same stratified resamples: each metric's own bootstrap gives the same interval.
  _, lo, hi = bootstrap_ci(roc_auc, s, m, num_resamples=300, confidence=0.9, seed=4)
  assert got["auc"] == [lo, hi]
  for f in (0.1, 0.01):
    _, lo, hi = bootstrap_ci(lambda a, b: tpr_at_fpr(a, b, f), s, m, num_resamples=300,
                             confidence=0.9, seed=4)
    assert got["tpr_at_fpr"][repr(f)] == [lo, hi]
  assert got["confidence"] == 0.9 and got["resamples"] == 300


def test_auc_intervals_cover_the_true_auc_about_as_often_as_stated():
  """Members ~ N(1, 1), non-members ~ N(0, 1): the AUC is Phi(1 / sqrt 2) = 0.760. Over 60
  independent evaluation sets, 90% intervals should cover it about 54 times; a binomial
  (60, 0.9) is below 47 with probability < 0.1%."""
  true_auc = norm.cdf(1 / np.sqrt(2))
  covered = 0
  for seed in range(60):
    rng = np.random.default_rng(100 + seed)
    m = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    s = rng.normal(size=400) + m
    lo, hi = pipeline.bootstrap_intervals(s, m, resamples=200, confidence=0.9,
                                          seed=seed)["auc"]
    covered += lo <= true_auc <= hi
  assert 47 <= covered <= 60


def test_audit_results_and_report_carry_the_intervals(tmp_path):
  out = tmp_path / "run"
  assert cli.main(["audit", "--epochs", "2", "--target-size", "100", "--attacks",
                   "loss,confidence", "--bootstrap-resamples", "50", "--confidence", "0.8",
                   "--out", str(out), "--quiet"]) == 0
  res = json.loads((out / "results.json").read_text())
  with np.load(out / "scores.npz") as f:
    scores, member = f["score:loss"], f["is_member"]
  ci = res["attacks"]["loss"]["ci"]
  from mia_jax.streams import stage_seed
  assert ci == pipeline.bootstrap_intervals(scores, member, resamples=50, confidence=0.8,
                                            seed=stage_seed(0, "bootstrap"))
  assert ci["auc"][0] <= ci["auc"][1] and set(ci["tpr_at_fpr"]) == set(
      res["attacks"]["loss"]["tpr_at_fpr"])
  report = (out / "report.md").read_text()
  assert "AUC CI" in report and "80.00% confidence intervals" in report
  # 0 resamples: no intervals
  out2 = tmp_path / "none"
  assert cli.main(["audit", "--epochs", "2", "--target-size", "100", "--attacks", "loss",
                   "--bootstrap-resamples", "0", "--out", str(out2), "--quiet",
                   "--no-report"]) == 0
  assert "ci" not in json.loads((out2 / "results.json").read_text())["attacks"]["loss"]
