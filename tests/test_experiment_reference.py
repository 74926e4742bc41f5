"""experiments/reference_models.py: the smoke suite end to end (digits, 4 reference
models), its table and log-log ROC plot, and the reuse of finished runs."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from _experiments import load_experiment


rm = load_experiment("reference_models")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  base = tmp_path_factory.mktemp("refmodels")
  out, res = str(base / "runs"), str(base / "results")
  assert rm.main(["--suite", "smoke", "--out", out, "--results-dir", res]) == 0
  return out, res


def _rows(md: str) -> dict[str, list[str]]:
  rows = {}
  for line in md.splitlines():
    if line.startswith("| ") and not line.startswith("| attack"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      rows[cells[0]] = cells[1:]
  return rows


def _numbers(cells):
  return [float(c.rstrip("†‡")) for c in cells if c]


def test_smoke_table_and_plot(smoke):
  out, res = smoke
  md_path = os.path.join(res, "reference_models_smoke.md")
  png = os.path.join(res, "reference_models_smoke_roc.png")
  assert os.path.exists(md_path) and os.path.getsize(png) > 10_000
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  md = open(md_path).read()
  assert md.startswith("<!-- produced by: python experiments/reference_models.py --suite smoke")
  rows = _rows(md)
  suite = rm.SUITES["smoke"]
  expected = set(suite["shared"]) | set(suite["reference"])
  assert set(rows) == expected
  for name, cells in rows.items():
    values = _numbers(cells)
    assert len(values) == 4, (name, cells)  # AUC + 3 TPRs for the one reference count
    assert all(0.0 <= v <= 1.0 for v in values), (name, values)
  # 224 non-members: 0.1% and 0.01% FPR are below resolution, 1% allows < 10 FPs.
  assert rows["lira"][2].endswith("†") and rows["lira"][3].endswith("†")
  assert rows["lira"][1].endswith("‡")
  assert "max |loss score difference| between runs = 0" in md
  # The table's numbers are the run's results.json values.
  r = json.load(open(os.path.join(out, "smoke", "smoke_ref4", "results.json")))
  assert float(rows["rmia"][0]) == pytest.approx(r["attacks"]["rmia"]["auc"], abs=1e-4)
  assert r["config"]["num_reference"] == 4
  # The combined reference_models.md is only for the real datasets.
  assert not os.path.exists(os.path.join(res, "reference_models.md"))


def test_roc_curves_monotone(smoke):
  out, _ = smoke
  for name, attacks in [("smoke_shared", {"loss"}), ("smoke_ref4", {"loss", "lira", "lira-offline", "rmia"})]:
    curves = rm.roc_curves(os.path.join(out, "smoke", name))
    n_pos, n_neg = curves.pop("_n")
    assert (n_pos, n_neg) == (224, 224)
    assert set(curves) == attacks
    for fpr, tpr in curves.values():
      assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
      assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_several_reference_counts_side_by_side(smoke, tmp_path):
  """The table and plot with two reference counts (the second faked from the first)."""
  out, _ = smoke
  d = {n: os.path.join(out, "smoke", n) for n in ("smoke_shared", "smoke_ref4")}
  results = {n: json.load(open(os.path.join(p, "results.json"))) for n, p in d.items()}
  results["smoke_ref8"] = copy.deepcopy(results["smoke_ref4"])
  results["smoke_ref8"]["attacks"]["lira"]["auc"] = 0.75
  results["smoke_ref8"]["config"]["num_reference"] = 8
  d["smoke_ref8"] = d["smoke_ref4"]
  md = rm.suite_table("smoke", results, d)
  assert "AUC (M=4)" in md and "AUC (M=8)" in md
  rows = _rows(md)
  assert len(rows["lira"]) == 8 and rows["lira"][4] == "0.7500"
  assert rows["loss"][0] == rows["loss"][4]  # shared attacks repeated in every group
  curves = {"shared": rm.roc_curves(d["smoke_shared"]),
            4: rm.roc_curves(d["smoke_ref4"], rm.REFERENCE_ATTACKS + ("loss",)),
            8: rm.roc_curves(d["smoke_ref8"], rm.REFERENCE_ATTACKS + ("loss",))}
  png = str(tmp_path / "roc.png")
  rm.plot_roc(curves, png, "test")
  assert os.path.getsize(png) > 10_000


def test_finished_runs_reused_and_checked(smoke, tmp_path, capsys):
  out, res = smoke
  assert rm.main(["--suite", "smoke", "--out", out, "--results-dir", str(tmp_path)]) == 0
  assert "already finished, reusing" in capsys.readouterr().out
  # A finished run whose configuration is no longer this script's is refused.
  bad = tmp_path / "runs"
  import shutil
  shutil.copytree(os.path.join(out, "smoke"), bad / "smoke")
  p = bad / "smoke" / "smoke_ref4" / "results.json"
  r = json.loads(p.read_text())
  r["config"]["epochs"] += 1
  p.write_text(json.dumps(r))
  with pytest.raises(SystemExit, match="another configuration"):
    rm.main(["--suite", "smoke", "--out", str(bad), "--results-dir", str(tmp_path)])


@pytest.mark.parametrize("arg", ["3", "0", "4,x", ""])
def test_bad_reference_counts(arg):
  with pytest.raises(SystemExit):
    rm.main(["--suite", "smoke", "--num-reference", arg, "--out", "/nonexistent"])


def test_run_names_and_configs():
  runs = rm.run_configs("mnist", [16, 64], seed=0)
  assert list(runs) == ["mnist_shared", "mnist_ref16", "mnist_ref64"]
  assert runs["mnist_shared"]["attacks"] == ("loss", "shokri", "stolen-memories")
  assert runs["mnist_ref64"]["num_reference"] == 64
  # every run trains the same target: only the attacks / reference options differ
  strip = lambda kw: {k: v for k, v in kw.items()
                      if k not in ("attacks", "num_reference", "lira_augmentations")}
  assert strip(runs["mnist_shared"]) == strip(runs["mnist_ref16"]) == strip(runs["mnist_ref64"])
  if rm.has_config_field("lira_augmentations"):
    assert runs["mnist_ref16"]["lira_augmentations"] == "shift"
    assert rm.run_configs("fashion_mnist", [16], 0)["fashion_mnist_ref16"]["lira_augmentations"] \
        == "flip+shift"
