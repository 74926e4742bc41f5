"""Case (b): training many small models at once.

M Location-like MLPs (446 binary features, 30 classes, one hidden layer of 128; Adam,
batch 128) on synthetic data, each on its own random half of a pool of 2 x n examples:
``train.train_models`` (the M models' parameters stacked and the step ``vmap``ped) against
the same M models trained one after another with ``train.train_model``. Both are the
library's public functions, timed end to end (host data in, trained variables on the
device). The check column is the largest difference between the stacked run's per-epoch
losses and the sequential run's, over the models trained both ways (they should agree to
float rounding: the library promises that stacked training equals training alone).
"""

from __future__ import annotations

import jax
import numpy as np

from bench.cases._common import random_variables, result_row
from bench.cost import Peaks, compiled_cost
from bench.timing import time_fn
from mia_jax import train
from mia_jax.models import make_model

CASE = "training"
FEATURES, CLASSES, WIDTHS = 446, 30, (128,)


def _data(n_models: int, n_per_model: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  pool = 2 * n_per_model
  x = (rng.random((pool, FEATURES)) < 0.5).astype(np.float32)
  y = rng.integers(0, CLASSES, pool).astype(np.int32)
  keep = np.zeros((n_models, pool), bool)
  for m in range(n_models):
    keep[m, rng.choice(pool, n_per_model, replace=False)] = True
  return x, y, keep


def _step_flops(model, config: train.TrainConfig) -> float | None:
  """XLA's FLOPs for one optimizer step of one model (library step function; private)."""
  try:
    step, tx = train._make_step_fn(train.ModelObjective(model), config)
    variables = random_variables(model, 0)
    params = variables["params"]
    other = {c: t for c, t in variables.items() if c != "params"}
    opt_state = tx.init(params)
    b = config.batch_size
    x_all = jax.ShapeDtypeStruct((2 * b,) + model.input_shape, np.float32)
    y_all = jax.ShapeDtypeStruct((2 * b,), np.int32)
    idx = jax.ShapeDtypeStruct((b,), np.int32)
    w = jax.ShapeDtypeStruct((b,), np.float32)
    return compiled_cost(jax.jit(step), params, other, opt_state, jax.random.key(0), (x_all, y_all),
                         idx, w, 0).flops
  except Exception:  # noqa: BLE001 -- FLOPs are optional; library internals may move
    return None


def run(sizes: dict, peaks: dict[str, Peaks], *, log=print) -> tuple[list[dict], list[str]]:
  ms = sorted(sizes["train_m"])
  n, epochs, batch = sizes["train_n"], sizes["train_epochs"], sizes["train_batch"]
  cap = sizes["train_seq_cap"]
  model = make_model("mlp", input_shape=(FEATURES,), num_classes=CLASSES, widths=WIDTHS)
  config = train.TrainConfig(optimizer="adam", learning_rate=1e-3, epochs=epochs,
                             batch_size=batch)
  x, y, keep_all = _data(max(ms), n)
  steps = -(-n // batch)
  flops_step = _step_flops(model, config)
  pk = peaks.get("fp32")
  notes = [f"training: MLP {FEATURES}-{'-'.join(map(str, WIDTHS))}-{CLASSES}, Adam, batch {batch}, "
           f"{epochs} epoch(s) of {n} examples per model ({steps} steps per epoch); "
           f"examples/s counts model-examples (M x n x epochs per second)"]
  rows: list[dict] = []
  seq_cache: dict[int, tuple] = {}  # models trained one after another -> (timing, results)

  def sequential(k: int):
    """Trains the first k models one after another (timed once per k)."""
    if k not in seq_cache:
      members = [np.flatnonzero(keep_all[i]) for i in range(k)]
      seq_cache[k] = time_fn(
          lambda: [train.train_model(model, x, y, config=config, seed=(0, i), indices=members[i])
                   for i in range(k)],
          warmup=sizes["warmup"], reps=sizes["reps"],
          sync=lambda rs: jax.block_until_ready([r.variables for r in rs]), return_output=True)
    return seq_cache[k]

  for m in ms:
    keep = keep_all[:m]
    examples = m * n * epochs
    flops = flops_step * steps * epochs * m if flops_step else None
    common = dict(m=m, n_per_model=n, epochs=epochs, batch=batch, precision="fp32")
    log(f"  training M={m}: n={n} epochs={epochs}")
    t_vm, res_vm = time_fn(
        lambda: train.train_models(model, x, y, keep, config=config, seed=0),
        warmup=sizes["warmup"], reps=sizes["reps"],
        sync=lambda r: jax.block_until_ready(r.variables), return_output=True)
    # Sequential: measured for all M models up to the cap; above it, measured on the first
    # `cap` models and extrapolated linearly (each model is an independent run).
    k = min(m, cap)
    t_seq, res_seq = sequential(k)
    diffs = [float(np.max(np.abs(res_vm.losses[i] - res_seq[i].losses)))
             for i in range(min(k, 4))]
    vm_row = result_row(CASE, t_vm, examples=examples, flops=flops, peaks=pk, impl="vmapped",
                        check_loss_vs_sequential=max(diffs), **common)
    if k < m:
      scale = m / k
      t_seq = t_seq._replace(median=t_seq.median * scale, q1=t_seq.q1 * scale,
                             q3=t_seq.q3 * scale, iqr=t_seq.iqr * scale,
                             times=tuple(v * scale for v in t_seq.times))
      notes.append(f"training: sequential time for M={m} extrapolated from {k} model(s) "
                   f"trained one after another (x{scale:g}), not measured")
    seq_row = result_row(CASE, t_seq, examples=examples, flops=flops, peaks=pk,
                         impl="sequential", extrapolated_from=k if k < m else None, **common)
    for r in (vm_row, seq_row):
      r["per_model_s"] = r["median_s"] / m
      r["speedup_vs_sequential"] = seq_row["median_s"] / r["median_s"]
    rows += [vm_row, seq_row]
    log(f"    vmapped {vm_row['median_s']:.4g} s, sequential {seq_row['median_s']:.4g} s, "
        f"speedup {vm_row['speedup_vs_sequential']:.3g}x")
  return rows, notes
