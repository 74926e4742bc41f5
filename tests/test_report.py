"""The audit report: report.html self-contained (embedded PNGs only), report.md + plots/."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from mia_jax import MiaInputError
from mia_jax.metrics import summarize
from mia_jax.report import PLOT_FILES, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FPRS = (0.1, 0.01, 0.001, 0.0001, 0.0)
DPI = 40  # small plots keep the tests fast


def _make_run(path, *, attacks=("loss", "lira", "stolen-memories"), dp=False, n=200,
              num_classes=4, seed=0):
  """A synthetic run dir shaped like `mia-jax audit --out` (results.json + scores.npz)."""
  rng = np.random.default_rng(seed)
  is_member = np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  # Unequal classes among members so the per-class scatter is informative.
  labels[: n // 8] = 0
  scores = {}
  for i, a in enumerate(attacks):
    scores[a] = rng.normal(size=n) + (0.3 + 0.3 * i) * is_member
  if "stolen-memories" in attacks:
    for j, layer in enumerate(("input", "dense_0", "dense_1")):
      scores[f"stolen-memories/{layer}"] = (rng.normal(size=n) + 0.2 * j * is_member
                                            ).astype(np.float32)
  attacks_out = {}
  for a in attacks:
    attacks_out[a] = summarize(scores[a], is_member, FPRS)

  def calibrated(s, quantile, **extra):
    thr = float(np.quantile(s, quantile))
    pred = s >= thr
    return {"setting": "shadow", "target_precision": 0.9, "threshold": thr,
            "precision": float((pred & is_member).sum() / pred.sum()),
            "recall": float((pred & is_member).sum() / is_member.sum()),
            "fpr": float((pred & ~is_member).sum() / (~is_member).sum()), **extra}

  if "nasr" in attacks:
    attacks_out["nasr"]["calibrated"] = calibrated(
        scores["nasr"], 0.8, prior_precision={"0.5": 0.7}, layers=["logits"], best_epoch=7,
        calibration_examples=40)
  if "stolen-memories" in attacks:
    attacks_out["stolen-memories"]["calibrated"] = calibrated(
        scores["stolen-memories"], 0.9,
        prior_precision={"0.5": 0.8, "0.1": 0.3, "0.01": 0.04}, num_proxies=1, proxy_size=50,
        layers=["input", "dense_0", "dense_1"], meta_kind="logistic", use_loss=True)
    attacks_out["stolen-memories"]["layers"] = {
        layer: summarize(scores[f"stolen-memories/{layer}"], is_member, FPRS)
        for layer in ("input", "dense_0", "dense_1")}
  results = {
      "schema_version": 1,
      "dataset": {"name": "synthetic <test>", "num_classes": num_classes, "feature_shape": [8],
                  "num_examples": 4 * n, "num_members": n // 2, "num_nonmembers": n - n // 2,
                  "num_auxiliary": 2 * n},
      "model": {"name": "mlp", "spec": {"name": "mlp", "widths": [16]}},
      "seed": seed,
      "config": {"dataset": "synthetic", "attacks": list(attacks), "seed": seed},
      "target": {"train_accuracy": 1.0, "test_accuracy": 0.8, "generalization_gap": 0.2},
      "attacks": attacks_out,
      "timings": {"load_data": 0.5, "train_target": 3.25,
                  **{a.replace("-", "_"): 1.0 for a in attacks}},
      "versions": {"python": "3.11", "mia-jax": "0.1.0", "jax": "0.0"},
      "device": {"platform": "cpu", "device_kind": "cpu", "count": 1},
  }
  if dp:
    eps = [0.1, 1.0, 8.0, None]  # None: the non-private baseline
    results["dp"] = {"epsilon": eps, "delta": 1e-5,
                     "attack_accuracy": {"loss": [0.5, 0.52, 0.56, 0.6],
                                         "lira": [0.51, 0.53, 0.6, 0.66]},
                     "bounds": {"tight_accuracy": [0.525, 0.731, 0.9997, None],
                                "yeom_advantage": [0.105, 1.718, 2980.0, None]}}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(results, f)
  np.savez(os.path.join(path, "scores.npz"), is_member=is_member, labels=labels,
           **{f"score:{k}": v for k, v in scores.items()})
  return path


def _images(html_text):
  return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)


def _check_report(run_dir, html_path, md_path):
  assert html_path == os.path.join(str(run_dir), "report.html")
  assert md_path == os.path.join(str(run_dir), "report.md")
  text = open(html_path, encoding="utf-8").read()
  md = open(md_path, encoding="utf-8").read()
  # Self-contained: nothing fetched, nothing linked.
  assert 'src="http' not in text and "src='http" not in text
  assert "href=" not in text and "@import" not in text and "url(" not in text
  assert '<link' not in text
  imgs = _images(text)
  assert len(imgs) == text.count("<img ")
  assert len(imgs) == text.count('<img src="data:image/png;base64,')
  for b64 in imgs:
    assert base64.b64decode(b64, validate=True).startswith(PNG_MAGIC)
  refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  assert len(refs) == len(imgs)  # one PNG per plot in both documents
  for ref in refs:
    assert ref.startswith("plots/") and not os.path.isabs(ref)
    p = os.path.join(str(run_dir), ref)
    assert os.path.isfile(p)
    with open(p, "rb") as f:
      assert f.read(8) == PNG_MAGIC
  assert {os.path.basename(r) for r in refs} <= set(PLOT_FILES)
  assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp-")]
  return text, md, refs


def test_full_report(tmp_path):
  run = _make_run(tmp_path / "run")
  html_path, md_path = write_report(run, dpi=DPI)
  text, md, refs = _check_report(run, html_path, md_path)
  names = {os.path.basename(r) for r in refs}
  assert names == {"roc.png", "roc_layers.png", "histograms.png", "pr_whitebox.png",
                   "per_class_auc.png", "per_class_scatter.png", "timings.png"}
  assert "dp.png" not in names and "Differential privacy" not in text
  assert "Nasr" not in text
  # Content: header, target, table sorted by AUC, calibrated point, environment.
  assert "synthetic &lt;test&gt;" in text  # escaped
  assert "Target model" in text and "0.2000" in text
  res = json.load(open(run / "results.json"))
  aucs = {a: m["auc"] for a, m in res["attacks"].items()}
  order = [a for a in sorted(aucs, key=lambda a: -aucs[a])]
  table = md.split("## Attacks")[1]
  positions = [table.index(f"| {a} |") for a in order]
  assert positions == sorted(positions)
  for a in aucs:
    assert f"{aucs[a]:.3f}" in md
  cal = res["attacks"]["stolen-memories"]["calibrated"]
  assert f"{cal['precision']:.3f}" in md and f"{cal['recall']:.3f}" in md
  assert "stolen-memories/dense_1" in md  # per-layer table
  assert "Per-class" in md and "TPR@0.01%" in md
  assert "train_target" in md and "Environment" in md


def test_dp_section_and_stale_plot_cleanup(tmp_path):
  run = _make_run(tmp_path / "run", dp=True)
  html_path, md_path = write_report(run, dpi=DPI)
  text, md, refs = _check_report(run, html_path, md_path)
  assert "plots/dp.png" in refs
  assert "Differential privacy" in md and "yeom_advantage as accuracy" in md
  # A rebuilt report of a run without the dp key drops the section and its old plot.
  res = json.load(open(run / "results.json"))
  del res["dp"]
  json.dump(res, open(run / "results.json", "w"))
  write_report(run, dpi=DPI)
  assert not (run / "plots" / "dp.png").exists()
  assert "Differential privacy" not in open(run / "report.md").read()


def test_only_loss(tmp_path):
  run = _make_run(tmp_path / "run", attacks=("loss",))
  text, md, refs = _check_report(run, *write_report(run, dpi=DPI))
  names = {os.path.basename(r) for r in refs}
  assert {"roc.png", "histograms.png", "per_class_auc.png", "timings.png"} <= names
  assert "pr_whitebox.png" not in names and "roc_layers.png" not in names
  assert "White-box" not in text


def test_without_scores_npz_tables_only(tmp_path):
  run = _make_run(tmp_path / "run", attacks=("loss", "stolen-memories"))
  os.remove(run / "scores.npz")
  text, md, refs = _check_report(run, *write_report(run, dpi=DPI))
  assert {os.path.basename(r) for r in refs} == {"timings.png"}
  assert "scores.npz not found" in md and "stolen-memories" in md


def test_missing_or_bad_results_json(tmp_path):
  with pytest.raises(MiaInputError, match="results.json"):
    write_report(tmp_path)
  with pytest.raises(MiaInputError, match="not a directory"):
    write_report(tmp_path / "nope")
  (tmp_path / "results.json").write_text("{not json")
  with pytest.raises(MiaInputError, match="results.json"):
    write_report(tmp_path)
  (tmp_path / "results.json").write_text(json.dumps({"schema_version": 99, "attacks": {}}))
  with pytest.raises(MiaInputError, match="schema_version"):
    write_report(tmp_path)
  with pytest.raises(MiaInputError, match="dpi"):
    write_report(tmp_path, dpi=0)


def test_does_not_change_matplotlib_backend(tmp_path):
  import matplotlib
  before = matplotlib.get_backend()
  write_report(_make_run(tmp_path / "run", attacks=("loss",)), dpi=DPI)
  assert matplotlib.get_backend() == before


def _browser():
  for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
    path = shutil.which(name)
    if path:
      return path
  return None


def test_report_renders_in_headless_browser(tmp_path):
  """Every embedded image decodes in a real browser, offline (file:// URL, no network)."""
  browser = _browser()
  if browser is None:
    pytest.skip("chromium not installed (apt-get install chromium): headless rendering check "
                "skipped")
  run = _make_run(tmp_path / "run", dp=True)
  html_path, _ = write_report(run, dpi=DPI)
  n_images = len(_images(open(html_path).read()))
  profile = tmp_path / "profile"
  cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-extensions", "--disable-background-networking",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
         "file://" + html_path]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  m = re.search(r'data-images-loaded="(\d+)/(\d+)"', out.stdout)
  assert m, f"no load marker in the DOM; browser stderr tail:\n{out.stderr[-2000:]}"
  assert int(m.group(2)) == n_images > 0
  assert int(m.group(1)) == n_images, f"only {m.group(1)}/{n_images} images decoded"


def test_report_shows_the_nasr_operating_point(tmp_path):
  run = _make_run(tmp_path / "run", attacks=("loss", "stolen-memories", "nasr"))
  html_path, md_path = write_report(run, dpi=DPI)
  text, md, refs = _check_report(run, html_path, md_path)
  names = {os.path.basename(r) for r in refs}
  assert {"pr_whitebox.png", "pr_nasr.png"} <= names
  assert "Nasr et al. learned white-box attack: calibrated operating point" in md
  res = json.loads((tmp_path / "run" / "results.json").read_text())
  cal = res["attacks"]["nasr"]["calibrated"]
  section = md[md.index("Nasr et al. learned"):md.index("## Per-class leakage")]
  assert f"| precision | {cal['precision']:.3f} |" in section
  assert f"| recall (TPR) | {cal['recall']:.3f} |" in section
  assert "| best_epoch | 7 |" in section and "| layers | logits |" in section
