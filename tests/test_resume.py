"""Nothing lost on interruption: kill -9 an audit mid-training, rerun, same results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["audit", "--quiet", "--epochs", "20", "--target-size", "100", "-M", "widths=[64]",
        "--attacks", "loss,lira,stolen-memories", "--num-reference", "4", "--layers", "input"]


def _audit(out_dir, *extra, wait=True):
  cmd = [sys.executable, "-m", "mia_jax.cli", *ARGS, "--out", str(out_dir), *extra]
  if wait:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _metrics(path):
  res = json.loads((path / "results.json").read_text())
  return {k: {m: v[m] for m in ("auc", "tpr_at_fpr", "balanced_accuracy")}
          for k, v in res["attacks"].items()}, res["target"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  reference = tmp_path_factory.mktemp("resume") / "uninterrupted"
  assert _audit(reference).returncode == 0
  return reference


def _interrupt_during_reference_training(run, sig):
  """Starts the audit and sends ``sig`` as soon as the reference-model stack (trained
  after the target) has saved an epoch: the target is finished, the stack mid-training."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "mia_jax.cli", *ARGS, "--out", str(run)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  stack_dir = run / "checkpoints" / "reference"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if stack_dir.is_dir() and any(n.startswith("epoch-") for n in os.listdir(stack_dir)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be interrupted"
  os.kill(proc.pid, sig)
  _, stderr = proc.communicate(timeout=120)
  assert not (run / "results.json").exists()
  assert (run / "target").is_dir()
  return proc.returncode, stderr


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_gives_same_results(tmp_path, uninterrupted):
  run = tmp_path / "interrupted"
  code, _ = _interrupt_during_reference_training(run, signal.SIGKILL)
  assert code == -signal.SIGKILL
  out = _audit(run)
  assert out.returncode == 0, out.stderr
  assert _metrics(run) == _metrics(uninterrupted)
  assert not (run / "checkpoints").exists()  # cleaned up once finished


@pytest.mark.slow
def test_ctrl_c_mid_training_exits_130_cleanly_and_resumes(tmp_path, uninterrupted):
  """SIGINT (Ctrl-C) during reference training: exit status 130 with one line, no crash
  at exit, the lock released; the rerun resumes to the same results."""
  run = tmp_path / "interrupted"
  code, stderr = _interrupt_during_reference_training(run, signal.SIGINT)
  assert code == 130, stderr
  assert "interrupted; rerun the same command to resume" in stderr
  assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr
  assert not (run / ".mia-jax-lock").exists()
  out = _audit(run)
  assert out.returncode == 0, out.stderr
  assert _metrics(run) == _metrics(uninterrupted)


def test_resume_refuses_a_different_configuration(tmp_path):
  run = tmp_path / "r"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"dataset": "digits", "epochs": 1}))
  out = subprocess.run([sys.executable, "-m", "mia_jax.cli", *ARGS, "--out", str(run)],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "another configuration" in out.stderr and "Traceback" not in out.stderr


def test_run_started_by_an_older_version_resumes(tmp_path, monkeypatch):
  """A config.json without options added later (they take their defaults) is the same
  configuration; a changed value is still refused."""
  from mia_jax import audit
  cfg = audit.AuditConfig(epochs=1, attacks=("loss",), target_size=50)
  older = cfg.to_dict()
  del older["num_shadow"], older["rmia_offline_a"]  # as written before these existed
  run = tmp_path / "r"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(older))
  res = audit.run_audit(cfg, str(run))
  assert res["config"]["num_shadow"] == audit.AuditConfig().num_shadow
  other = tmp_path / "o"
  other.mkdir()
  older["epochs"] = 2
  (other / "config.json").write_text(json.dumps(older))
  with pytest.raises(audit.MiaInputError, match="epochs"):
    audit.run_audit(cfg, str(other))
