"""Run directories never lose user data, resumes cannot silently go wrong, and nothing a
user can cause ends in a traceback (issue: "Run directories that never lose user data").

Each numbered case of that issue is a test here (the library-level cases 4, 5 and parts
of 7 are in test_hostile_inputs.py); the fuzz tests at the end feed random options and
random corruptions of run-directory files to the command line.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mia_jax import cli
from mia_jax._validation import MiaInputError
from mia_jax.audit import AuditConfig, run_audit
from mia_jax.rundir import LOCK, MANIFEST, MARKER

TINY = ["--quiet", "--attacks", "loss", "--epochs", "2", "--target-size", "40",
        "-M", "widths=[8]", "--no-report"]
TINY_CFG = dict(attacks=("loss",), epochs=2, target_size=40, model_options={"widths": [8]})


def _audit(out, *extra) -> int:
  return cli.main(["audit", "--out", str(out), *TINY, *extra])


def _tree(path):
  """Every file under path with its bytes (to show nothing changed)."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, path)] = fh.read()
  return out


def _user_folder(path):
  (path / "plots").mkdir(parents=True)
  (path / "plots" / "fig1.png").write_bytes(b"\x89PNG user figure")
  (path / "checkpoints").mkdir()
  (path / "checkpoints" / "model.pt").write_bytes(b"user weights")
  (path / "report.md").write_text("my report")
  (path / "config.json").write_text(json.dumps({"lr": 0.1}))
  return _tree(path)


def _scores(out):
  with np.load(out / "scores.npz") as f:
    return {k: f[k] for k in f.files}


# -- 1. --overwrite deletes only what mia-jax wrote ------------------------------------------

def test_overwrite_never_touches_a_folder_mia_jax_did_not_write(tmp_path, capsys):
  user = tmp_path / "user"
  before = _user_folder(user)
  assert _audit(user, "--overwrite") == 2
  assert "not a mia-jax run directory" in capsys.readouterr().err
  assert _tree(user) == before
  # Without --overwrite the run would overwrite the user's config.json/report.md: refused.
  assert _audit(user) == 2
  assert "would overwrite" in capsys.readouterr().err
  assert _tree(user) == before


def test_empty_out_is_refused_and_the_current_directory_untouched(tmp_path, monkeypatch, capsys):
  before = _user_folder(tmp_path / "cwd")
  monkeypatch.chdir(tmp_path / "cwd")
  assert cli.main(["audit", "--out", "", "--overwrite", *TINY]) == 2
  assert "empty" in capsys.readouterr().err
  assert _tree(tmp_path / "cwd") == before


def test_overwrite_of_a_run_keeps_the_users_own_files(tmp_path):
  run = tmp_path / "run"
  assert _audit(run) == 0
  assert (run / MARKER).exists() and (run / MANIFEST).exists() and not (run / LOCK).exists()
  (run / "my_notes.txt").write_text("keep me")
  (run / "extra").mkdir()
  (run / "extra" / "data.bin").write_bytes(b"mine")
  first = _scores(run)
  assert _audit(run, "--seed", "1") == 2  # finished: refused without --overwrite
  assert _audit(run, "--seed", "1", "--overwrite") == 0
  assert (run / "my_notes.txt").read_text() == "keep me"
  assert (run / "extra" / "data.bin").read_bytes() == b"mine"
  assert json.loads((run / "config.json").read_text())["seed"] == 1
  assert not np.array_equal(_scores(run)["score:loss"], first["score:loss"])


# -- 2. resume checks the data, not the path -------------------------------------------------

def _npz(path, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(200, 5)).astype(np.float32)
  y = (np.arange(200) % 3).astype(np.int64)
  np.savez(path, x=x, y=y)


def test_resume_refuses_data_replaced_between_runs(tmp_path):
  data = tmp_path / "d.npz"
  _npz(data, 0)
  run = tmp_path / "run"
  cfg = AuditConfig(dataset=str(data), **TINY_CFG)
  run_audit(cfg, str(run))
  (run / "results.json").unlink()  # as if interrupted before the results
  _npz(data, 1)  # same path, other content
  with pytest.raises(MiaInputError, match="differ from those this run"):
    run_audit(cfg, str(run))
  _npz(data, 0)  # the original data back: resumes
  run_audit(cfg, str(run))


def test_training_checkpoint_fingerprint_covers_the_data(tmp_path):
  from mia_jax.models import make_model
  from mia_jax.train import TrainConfig, train_model
  model = make_model("logistic", input_shape=(5,), num_classes=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 5)).astype(np.float32)
  y = np.arange(30) % 3
  cfg = TrainConfig(epochs=2, batch_size=8)
  train_model(model, x, y, config=cfg, checkpoint_dir=tmp_path / "c")
  with pytest.raises(MiaInputError, match="different training run"):
    train_model(model, x + 1, y, config=TrainConfig(epochs=3, batch_size=8),
                checkpoint_dir=tmp_path / "c")


# -- 3. corrupt checkpoints are detected, and retrained or skipped ---------------------------

def _data_files(ckpt):
  return sorted(p for p in _tree(ckpt) if "state" in p and not p.endswith(".json")
                and os.path.getsize(os.path.join(ckpt, p)) > 64)


def _flip(path, offset=None):
  data = bytearray(open(path, "rb").read())
  i = len(data) // 2 if offset is None else offset
  data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_bit_flip_and_truncation_of_a_checkpoint_are_detected(tmp_path):
  from mia_jax.models import make_model
  from mia_jax.train import CorruptCheckpointError, load_variables, save_variables
  model = make_model("mlp", input_shape=(5,), num_classes=3, widths=(16,))
  v = model.init(jax.random.key(0))
  for damage in ("flip", "truncate"):
    path = tmp_path / damage
    save_variables(path, v)
    files = _data_files(path)
    assert files
    for f in files:
      p = os.path.join(path, f)
      if damage == "flip":
        _flip(p)
      else:
        os.truncate(p, os.path.getsize(p) // 2)
    with pytest.raises(CorruptCheckpointError):
      load_variables(path, like=v)


def test_corrupt_saved_target_is_retrained_with_identical_results(tmp_path):
  clean = tmp_path / "clean"
  assert _audit(clean) == 0
  run = tmp_path / "run"
  assert _audit(run) == 0
  (run / "results.json").unlink()  # unfinished, the target saved
  for f in _data_files(run / "target"):
    _flip(os.path.join(run / "target", f))
  lines = []
  cfg = AuditConfig(**{**TINY_CFG})
  run_audit(cfg, str(run), log=lines.append)
  assert any("cannot be used" in l and "training it again" in l for l in lines), lines
  for k, v in _scores(clean).items():
    np.testing.assert_array_equal(_scores(run)[k], v)


def test_corrupt_newest_epoch_checkpoint_falls_back_to_the_one_before(tmp_path):
  from mia_jax.models import make_model
  from mia_jax.train import TrainConfig, log_to, train_model
  model = make_model("mlp", input_shape=(5,), num_classes=3, widths=(8,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  y = np.arange(40) % 3
  want = train_model(model, x, y, config=TrainConfig(epochs=4, batch_size=8), seed=3)
  ckpt = tmp_path / "c"
  train_model(model, x, y, config=TrainConfig(epochs=4, batch_size=8), seed=3,
              checkpoint_dir=ckpt)
  assert sorted(os.listdir(ckpt)) == ["epoch-000003", "epoch-000004"]
  for f in _data_files(ckpt / "epoch-000004"):
    _flip(os.path.join(ckpt / "epoch-000004", f))
  lines = []
  with log_to(lines.append):
    got = train_model(model, x, y, config=TrainConfig(epochs=4, batch_size=8), seed=3,
                      checkpoint_dir=ckpt)
  assert any("epoch-4" in l and "corrupt" in l for l in lines), lines
  for a, b in zip(jax.tree.leaves(got.variables), jax.tree.leaves(want.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same program, same inputs


# -- 6. options validated and coerced before the run directory is touched -------------------

def test_yaml_numbers_as_strings_are_coerced(tmp_path):
  cfg = tmp_path / "c.yaml"
  cfg.write_text("learning_rate: 1e-3\nweight_decay: '0.5'\nepochs: '2'\n")
  out = tmp_path / "run"
  assert cli.main(["audit", "--config", str(cfg), "--out", str(out), "--quiet", "--attacks",
                   "loss", "--target-size", "40", "-M", "widths=[8]", "--no-report"]) == 0
  saved = json.loads((out / "config.json").read_text())
  assert saved["learning_rate"] == 1e-3 and saved["weight_decay"] == 0.5 and saved["epochs"] == 2


@pytest.mark.parametrize("args,needle", [
    (["--path-steps", "-1", "--attacks", "stolen-memories"], "path_steps"),
    (["--num-proxies", "0", "--attacks", "stolen-memories"], "num_proxies"),
    (["--seed", "99999999999999999999"], "seed"),
    (["--learning-rate", "nan"], "learning_rate"),
    (["--epochs", "1000000000"], "epochs"),
    (["-M", "widths=[1099511627776]"], "model_options"),
])
def test_bad_options_fail_before_anything_is_written(tmp_path, capsys, args, needle):
  out = tmp_path / "run"
  assert _audit(out, *args) == 2
  err = capsys.readouterr().err
  assert err.startswith("mia-jax: error:") and needle in err, err
  assert not out.exists()  # so the corrected rerun is not refused


@pytest.mark.parametrize("text,needle", [
    ("out: 5\n", "out"),
    ("attacks: null\n", "attacks"),
    ("attacks: {a: 1}\n", "attacks"),
    ("learning_rate: [1, 2]\n", "learning_rate"),
    ("quiet: maybe\n", "quiet"),
    ("model_options: 3\n", "model_options"),
    ("dataset: 7\n", "dataset"),
    ("path_steps: 1.5\n", "path_steps"),
    # a YAML alias bomb: ten levels of nine aliases expand to 9**10 values
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(10)) + "model_options: {w: *k}\n", "too large"),
])
def test_bad_yaml_values_are_clear_errors(tmp_path, capsys, text, needle):
  cfg = tmp_path / "c.yaml"
  cfg.write_text(text)
  # (the command line would override the file's out and quiet: not given here)
  extra = [] if needle in ("out", "quiet") else ["--out", str(tmp_path / "r"), "--quiet"]
  assert cli.main(["audit", "--config", str(cfg), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith("mia-jax: error:") and needle in err, err


def test_non_utf8_yaml_is_a_clear_error(tmp_path, capsys):
  cfg = tmp_path / "c.yaml"
  cfg.write_bytes(b"dataset: \xff\xfe digits\n")
  assert cli.main(["audit", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
  assert "UTF-8" in capsys.readouterr().err


# -- 7. no traceback for unusable paths, corrupt files, full disks, no memory ----------------

@pytest.mark.parametrize("out", ["/dev/null", "/dev/null/run", "FILE", "/proc/mia-jax-run"])
def test_unusable_out_paths_are_clear_errors(tmp_path, capsys, out):
  if out == "FILE":
    out = str(tmp_path / "a_file")
    open(out, "w").close()
  assert _audit(out) == 2
  err = capsys.readouterr().err
  assert err.startswith("mia-jax: error:") and "Traceback" not in err


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_config_json_of_a_run_is_a_clear_error(tmp_path, capsys, content):
  run = tmp_path / "run"
  assert _audit(run) == 0
  (run / "results.json").unlink()
  (run / "config.json").write_bytes(content)
  assert _audit(run) == 2
  assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]"])
def test_corrupt_checkpoint_metadata_retrains(tmp_path, content):
  run = tmp_path / "run"
  assert _audit(run) == 0
  first = _scores(run)
  (run / "results.json").unlink()
  (run / "target" / "metadata.json").write_bytes(content)
  assert _audit(run) == 0
  np.testing.assert_array_equal(_scores(run)["score:loss"], first["score:loss"])


@pytest.mark.parametrize("error,needle", [
    (OSError(28, "No space left on device"), "no space left"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4398046511108 bytes."),
     "--microbatch-size"),
    (ValueError("orbax: RESOURCE_EXHAUSTED: write failed: No space left on device"),
     "no space left"),
    (MemoryError(), "out of memory"),
    (PermissionError(13, "Permission denied", "/ro/run"), "Permission denied"),
])
def test_disk_full_and_out_of_memory_are_clear_errors(monkeypatch, tmp_path, capsys, error,
                                                      needle):
  import mia_jax.audit

  def boom(*a, **k):
    raise error
  monkeypatch.setattr(mia_jax.audit, "run_audit", boom)
  assert _audit(tmp_path / "r") == 2
  err = capsys.readouterr().err
  assert err.startswith("mia-jax: error:") and needle in err, err


# -- 8. divergence is reported as such ------------------------------------------------------

def test_diverging_training_says_so(tmp_path, capsys):
  assert _audit(tmp_path / "r", "--learning-rate", "1e30", "--optimizer", "sgd") == 2
  err = capsys.readouterr().err
  assert "training diverged" in err and "target" in err and "in epoch " in err, err


# -- 11. one writer per run directory -------------------------------------------------------

def test_a_second_writer_gets_the_holder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00",
            "command": "audit"}
  (run / LOCK).write_text(json.dumps(holder))
  assert _audit(run) == 2
  err = capsys.readouterr().err
  assert f"pid {os.getppid()}" in err and socket.gethostname() in err and "2026-01-01" in err
  assert not (run / "config.json").exists()
  # The same lock from a process that has exited: stale, taken over.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (run / LOCK).write_text(json.dumps({**holder, "pid": dead.pid}))
  lines = []
  run_audit(AuditConfig(**TINY_CFG), str(run), log=lines.append)
  assert any("stale lock" in l for l in lines), lines
  assert not (run / LOCK).exists()


# -- 12. a run is finished only when its report is written ----------------------------------

def test_interrupted_report_is_redone_and_temporaries_removed(tmp_path):
  run = tmp_path / "run"
  args = ["audit", "--out", str(run), *[a for a in TINY if a != "--no-report"]]
  assert cli.main(args) == 0
  assert (run / "report.html").exists()
  results = (run / "results.json").read_text()
  # As if killed while writing the report: not finished, report missing, a stray temp file.
  m = json.loads((run / MANIFEST).read_text())
  m["finished"] = False
  (run / MANIFEST).write_text(json.dumps(m))
  (run / "report.html").unlink()
  (run / ".tmp-abc123.json").write_text("{")
  assert cli.main(args) == 0
  assert (run / "report.html").exists() and not (run / ".tmp-abc123.json").exists()
  assert (run / "results.json").read_text() == results  # reused, not recomputed
  assert json.loads((run / MANIFEST).read_text())["finished"]


def test_files_follow_the_umask_and_markdown_escapes_names(tmp_path):
  old = os.umask(0o022)
  try:
    run = tmp_path / "run"
    assert cli.main(["audit", "--out", str(run), *[a for a in TINY if a != "--no-report"]]) == 0
    for name in ("results.json", "scores.npz", "config.json", "report.md", "report.html",
                 MANIFEST):
      assert os.stat(run / name).st_mode & 0o777 == 0o644, name
  finally:
    os.umask(old)
  from mia_jax.report import write_report
  res = json.loads((run / "results.json").read_text())
  res["dataset"]["name"] = "<img src=x onerror=alert(1)>"
  (run / "results.json").write_text(json.dumps(res))
  write_report(run)
  md = (run / "report.md").read_text()
  assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
  assert "<img src=x" not in (run / "report.html").read_text()


# -- fuzz: random options and random corruptions --------------------------------------------

_VALUES = [None, True, False, 0, 1, 2, 3, -1, 1.5, 1e-3, 2 ** 70, float("nan"), "", "abc",
           "1e-3", "3", "-2", "loss", "mlp", "logistic", "adam", "digits", "none", "[1, 2]",
           "\x00", "../..", "ünïcødé", [], [1, "a"], ["loss"], {}, {"a": 1}, {"widths": [4]},
           [[[]]], "top-k=2", "real"]


def test_fuzz_random_options_give_clear_errors_or_a_run(tmp_path, capsys):
  """Random values for random keys (on top of a tiny valid run): the CLI exits 0 or 2 with
  a one-line error, never a traceback."""
  keys = [k for k in cli.config_keys() if k not in ("out", "quiet", "report")]
  rng = np.random.default_rng(2026)
  import yaml
  codes = []
  for i in range(30):
    cfg = {"attacks": ["loss"], "epochs": 1, "target_size": 20, "model_options": {"widths": [4]},
           "num_reference": 2, "num_shadow": 1, "quiet": True, "report": False}
    for k in rng.choice(keys, size=rng.integers(1, 3), replace=False):
      cfg[str(k)] = _VALUES[rng.integers(len(_VALUES))]
    path = tmp_path / f"c{i}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    code = cli.main(["audit", "--config", str(path), "--out", str(tmp_path / f"r{i}")])
    err = capsys.readouterr().err
    assert code in (0, 2), (cfg, code, err)
    if code == 2:
      assert err.startswith("mia-jax: error:"), (cfg, err)
    codes.append(code)
  assert 0 < codes.count(0) < len(codes), codes  # both valid and invalid draws were tried


def test_fuzz_corrupting_run_files_gives_a_clear_error_or_identical_results(tmp_path, capsys):
  """Random byte corruptions of the files of an unfinished run: rerunning the same command
  gives the clean run's scores exactly, or a clear error (exit 2)."""
  more = ["--attacks", "loss,lira", "--num-reference", "2"]  # a saved stack too
  clean = tmp_path / "clean"
  assert _audit(clean, *more) == 0
  want = _scores(clean)
  rng = np.random.default_rng(7)
  outcomes = []
  for i in range(16):
    run = tmp_path / f"run{i}"
    assert _audit(run, *more) == 0
    (run / "results.json").unlink()
    (run / "scores.npz").unlink()
    files = sorted(_tree(run))
    victim = files[rng.integers(len(files))]
    p = run / victim
    size = os.path.getsize(p)
    kind = rng.integers(3)
    if kind == 0 and size:
      _flip(p, int(rng.integers(size)))
    elif kind == 1:
      os.truncate(p, int(rng.integers(size + 1)))
    else:
      p.write_bytes(rng.bytes(int(rng.integers(1, 64))))
    code = _audit(run, *more)
    err = capsys.readouterr().err
    outcomes.append((victim, code))
    if code == 0:
      for k, v in want.items():
        np.testing.assert_array_equal(_scores(run)[k], v, err_msg=victim)
    else:
      assert code == 2 and err.startswith("mia-jax: error:"), (victim, err)
  print(outcomes)
  assert any(code == 0 for _, code in outcomes)


# -- kill -9 and Ctrl-C at random points -----------------------------------------------------

@pytest.mark.slow
def test_kill_and_ctrl_c_at_random_points_then_rerun_gives_identical_results(tmp_path):
  """Interrupt a small audit (target, a reference stack, LiRA, report) at random moments
  with SIGKILL or SIGINT, rerun the same command each time until it finishes: the scores
  equal those of an uninterrupted run bit for bit (same program, same inputs)."""
  import signal
  import time
  args = [sys.executable, "-m", "mia_jax.cli", "audit", "--quiet", "--attacks", "loss,lira",
          "--num-reference", "2", "--epochs", "6", "--target-size", "60", "-M", "widths=[16]"]
  clean = tmp_path / "clean"
  assert subprocess.run([*args, "--out", str(clean)], capture_output=True, timeout=600
                        ).returncode == 0
  want = _scores(clean)
  rng = np.random.default_rng(11)
  run = tmp_path / "run"
  interrupts = 0
  for attempt in range(8):
    proc = subprocess.Popen([*args, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # The random moment is counted from when the run holds its directory: a SIGINT during
    # Python's own start-up (imports, before the CLI installs its handler) would test the
    # interpreter, and on a loaded machine start-up alone can take seconds.
    def holds_lock():  # a killed attempt may have left its own (stale) lock behind
      try:
        return json.loads((run / LOCK).read_text()).get("pid") == proc.pid
      except (OSError, ValueError):
        return False
    waited = 0.0
    while not holds_lock() and proc.poll() is None and waited < 120:
      time.sleep(0.05)
      waited += 0.05
    time.sleep(float(rng.uniform(0.0, 5.0)))
    sig = (signal.SIGKILL, signal.SIGINT)[attempt % 2]
    if proc.poll() is None:
      proc.send_signal(sig)
      interrupts += 1
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 130, -signal.SIGKILL), err
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    if proc.returncode == 0:
      break
  else:
    out = subprocess.run([*args, "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
  assert interrupts >= 2
  got = _scores(run)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert (run / "report.html").exists() and not (run / LOCK).exists()


def test_ctrl_c_while_the_console_script_imports_exits_cleanly(tmp_path):
  """Ctrl-C while `mia-jax` is still importing JAX (before the CLI exists): one line and
  exit code 130, no KeyboardInterrupt traceback from inside an import, nothing written.
  The signal is sent as soon as JAX's compiled extension is mapped into the process
  (/proc/PID/maps), i.e. in the middle of `import jax`."""
  import signal
  import time
  script = os.path.join(os.path.dirname(sys.executable), "mia-jax")
  if not os.path.exists(script) or not os.path.isdir("/proc/self"):
    pytest.skip("needs the installed mia-jax console script and /proc")
  out = tmp_path / "run"
  proc = subprocess.Popen([script, "audit", "--quiet", "--out", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def importing_jax():
    try:
      with open(f"/proc/{proc.pid}/maps") as f:
        return any("jaxlib" in line for line in f)
    except OSError:
      return False

  deadline = time.monotonic() + 120
  while not importing_jax() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.002)
  assert proc.poll() is None, "the process ended before it imported JAX"
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert "interrupted; rerun the same command to resume" in err, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
  assert not out.exists()
