"""The command line: audit end to end, results.json schema, errors without tracebacks."""

import json
import subprocess
import sys

import pytest

from mia_jax import cli
from mia_jax.audit import SCHEMA_VERSION

FAST = ["--epochs", "40", "--target-size", "150", "--quiet"]


def _run(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "mia_jax.cli", *args], capture_output=True,
                        text=True, cwd=cwd, timeout=600)


def test_help_lists_every_option():
  out = _run("audit", "--help")
  assert out.returncode == 0
  for flag in ("--dataset", "--model", "--attacks", "--layers", "--num-proxies", "--path-steps",
               "--target-precision", "--whitebox-setting", "--seed", "--out", "--overwrite",
               "--dataset-option", "--model-option", "--microbatch-size"):
    assert flag in out.stdout
  assert _run("--help").returncode == 0


@pytest.mark.slow
def test_audit_writes_results_and_refuses_to_overwrite(tmp_path):
  out_dir = tmp_path / "run"
  assert cli.main(["audit", "--out", str(out_dir), *FAST]) == 0
  res = json.loads((out_dir / "results.json").read_text())
  assert res["schema_version"] == SCHEMA_VERSION
  assert res["dataset"]["name"] == "digits"
  assert res["model"]["name"] == "mlp"
  assert res["seed"] == 0
  assert res["target"]["train_accuracy"] == 1.0  # the default target overfits
  assert 0.5 < res["target"]["test_accuracy"] < 1.0
  for name in ("loss", "confidence", "entropy", "modified_entropy", "correctness",
               "stolen-memories"):
    a = res["attacks"][name]
    for key in ("auc", "balanced_accuracy", "advantage", "tpr_at_fpr"):
      assert key in a
    assert set(a["tpr_at_fpr"]) == {"0.1", "0.01", "0.001", "0.0001", "0.0"}
  assert res["attacks"]["loss"]["auc"] > 0.55  # overfit target leaks through its loss
  sm = res["attacks"]["stolen-memories"]
  assert set(sm["layers"]) == {"input", "dense_0", "dense_1"}
  assert 0 <= sm["calibrated"]["precision"] <= 1
  nasr = res["attacks"]["nasr"]  # the default runs every attack, Nasr et al. included
  assert nasr["calibrated"]["layers"] == ["logits"] and 0.3 < nasr["auc"] <= 1
  assert {"train_target", "stolen_memories"} <= set(res["timings"])
  assert "jax" in res["versions"]
  assert (out_dir / "scores.npz").exists() and (out_dir / "target").is_dir()
  assert json.loads((out_dir / "config.json").read_text())["epochs"] == 40
  html = (out_dir / "report.html").read_text()
  assert html.count('src="data:image/png;base64,') >= 4 and (out_dir / "report.md").exists()
  # A finished run is not overwritten without --overwrite.
  assert cli.main(["audit", "--out", str(out_dir), *FAST]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "no_such_dataset"], "no_such_dataset"),
    (["--model", "transformer"], "model"),
    (["--attacks", "loss,telepathy"], "attacks"),
    (["--dataset", "/nonexistent/file.npz"], "file.npz"),
    (["--target-precision", "1.5"], "target_precision"),
    (["--layers", "conv_9", "--attacks", "stolen-memories", "--epochs", "1"], "conv_9"),
])
def test_bad_input_is_a_clear_error_without_traceback(tmp_path, args, needle):
  out = _run("audit", "--out", str(tmp_path / "r"), "--quiet", *args)
  assert out.returncode == 2
  assert "Traceback" not in out.stderr
  assert needle in out.stderr
  assert out.stderr.startswith("mia-jax: error:")


def test_progress_bars_cover_training_and_signal_passes():
  """Every training and every multi-chunk signal pass gets a progress task."""
  import numpy as np
  from mia_jax._batching import progress_scope
  from mia_jax.models import make_model
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import TrainConfig, train_model

  class Recorder:
    def __init__(self):
      self.tasks, self.advanced = {}, {}
    def add_task(self, description, total):
      self.tasks[len(self.tasks)] = (description, total)
      self.advanced[len(self.tasks) - 1] = 0
      return len(self.tasks) - 1
    def advance(self, task, n=1):
      self.advanced[task] += n
    def remove_task(self, task):
      pass

  model = make_model("mlp", input_shape=(4,), num_classes=2, widths=(3,))
  x = np.zeros((10, 4), np.float32)
  y = np.arange(10) % 2
  rec = Recorder()
  with progress_scope(rec, "signals"):
    v = train_model(model, x, y, config=TrainConfig(epochs=3, batch_size=4), progress=rec).variables
    blackbox_signals(model, v, x, y, microbatch_size=4)
  assert [t[1] for t in rec.tasks.values()] == [3, 3]  # 3 epochs; 10 examples in 3 chunks
  assert list(rec.advanced.values()) == [3, 3]
  assert "signals" in rec.tasks[1][0]
