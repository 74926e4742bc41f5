"""The benchmark suite: the smoke run end to end, the timing summary, XLA FLOP counting."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is not part of the installed package
  sys.path.insert(0, ROOT)

from bench.cost import compiled_cost, cost_numbers  # noqa: E402
from bench.report import update_results_md  # noqa: E402
from bench.timing import summarize, time_fn  # noqa: E402


def test_smoke_suite_runs_every_case(tmp_path):
  out = tmp_path / "smoke.json"
  proc = subprocess.run(
      [sys.executable, "-m", "bench", "--suite", "all", "--smoke", "--out", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  res = json.loads(out.read_text())
  assert res["env"]["device_kind"] and res["env"]["jax"] == jax.__version__
  assert "--smoke" in res["env"]["command"]
  assert res["peaks"]["fp32"]["flops_per_s"] > 0 and res["peaks"]["fp32"]["bytes_per_s"] > 0
  assert set(res["cases"]) == {"whitebox", "training", "checkpoints"}
  for case, rows in res["cases"].items():
    assert rows, case
    for r in rows:
      assert r["examples_per_s"] is not None and r["examples_per_s"] > 0, (case, r)
      assert r["recompiles"] == 0, (case, r)
  wb = res["cases"]["whitebox"]
  got = {(r["model"], r["variant"], r["impl"]) for r in wb}
  for model in ("mlp", "small_cnn", "resnet"):
    for variant in ("rows", "scores", "gradients"):
      for impl in ("jax-device", "jax-lax-map", "jax-library", "naive-jacrev-loop"):
        assert (model, variant, impl) in got
  for r in wb:
    if r["impl"] == "jax-device":
      assert r["flops"] > 0 and r["flops_per_s"] > 0
    if r["impl"] == "naive-jacrev-loop":
      assert r["check_vs_batched"] < 1e-4, r
    if r["impl"] == "jax-lax-map":
      assert r["check_vs_device"] < 1e-5, r
  training = res["cases"]["training"]
  assert {r["impl"] for r in training} == {"vmapped", "sequential"}
  assert all(r["check_loss_vs_sequential"] < 1e-4 for r in training if r["impl"] == "vmapped")
  ops = {(r["op"], r["mode"]) for r in res["cases"]["checkpoints"]}
  assert ops == {(op, mode) for op in ("blackbox_signals", "jacobian_rows")
                 for mode in ("device", "e2e")}
  assert "(a) White-box" in proc.stdout and "(c) Many checkpoints" in proc.stdout


def test_summarize_median_and_iqr():
  t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
  assert (t.median, t.q1, t.q3, t.iqr, t.reps) == (3.0, 2.0, 4.0, 2.0, 5)
  t = summarize([1.0, 2.0, 3.0, 10.0])  # numpy's linear interpolation
  assert t.median == pytest.approx(2.5)
  assert t.q1 == pytest.approx(1.75) and t.q3 == pytest.approx(4.75)
  assert t.iqr == pytest.approx(3.0)
  with pytest.raises(ValueError):
    summarize([])


def test_time_fn_counts_reps_and_recompiles():
  f = jax.jit(lambda a: jnp.sin(a) * 2.0)
  x = jnp.ones((16,))
  t = time_fn(lambda: f(x), warmup=1, reps=4)
  assert t.reps == 4 and len(t.times) == 4 and t.recompiles == 0 and t.median > 0
  sizes = iter(range(1, 100))
  g = jax.jit(lambda a: jnp.cos(a) + 1.0)
  t = time_fn(lambda: g(jnp.ones((next(sizes),))), warmup=1, reps=3)  # new shape every call
  assert t.recompiles >= 3
  t, out = time_fn(lambda: f(x), warmup=0, reps=2, return_output=True)
  np.testing.assert_allclose(out, np.sin(1.0) * 2.0, rtol=1e-6)


def test_cost_analysis_flops_of_a_matmul():
  n = 128
  a = jnp.ones((n, n), jnp.float32)
  cost = compiled_cost(jax.jit(lambda p, q: p @ q), a, a)
  assert cost.flops == pytest.approx(2 * n ** 3, rel=0.02)
  assert cost.bytes_accessed >= 3 * n * n * 4 * 0.99  # two inputs and the output
  # Both return types across JAX versions, and a missing analysis.
  assert cost_numbers({"flops": 10.0, "bytes accessed": 4.0}) == (10.0, 4.0)
  assert cost_numbers([{"flops": 10.0}, {"flops": 5.0, "bytes accessed": 2.0}]) == (15.0, 2.0)
  assert cost_numbers(None) == (None, None)
  assert cost_numbers([{}]) == (None, None)


def test_results_md_section_is_replaced_not_duplicated(tmp_path):
  path = tmp_path / "RESULTS.md"
  path.write_text("# Benchmark results\n\nintro\n")
  update_results_md("GPU", "| a |\n|---|\n| 1 |", str(path))
  update_results_md("CPU", "cpu table", str(path))
  update_results_md("GPU", "| a |\n|---|\n| 2 |", str(path))
  text = path.read_text()
  assert text.count("## GPU") == 1 and "| 2 |" in text and "| 1 |" not in text
  assert text.index("intro") < text.index("## GPU") < text.index("## CPU")
