"""Case (c): many checkpoints at once.

C stacked MLP checkpoints (784-256-256-10, random weights) x N examples:
``signals.blackbox_signals(stacked=True)`` and ``whitebox.jacobian_rows(stacked=True)``
(every tapped layer), each timed end to end (the public function: host in, host out) and
on the device (the library's compiled per-microbatch function on device-resident chunks).
Reported against C: time, time per checkpoint and its ratio to C=1's (1.0 = perfectly
linear; below 1 = batching across checkpoints amortizes overheads), the device's peak
memory where the backend reports it (``memory_stats()``; 'n/a' on the CPU) and XLA's
compiled memory for one microbatch (arguments + outputs + temporaries).

``peak_bytes_in_use`` is the process's high-water mark: C runs in increasing order, and
``--suite all`` runs this case first, so each reading is that of the largest C so far.
"""

from __future__ import annotations

import jax
import numpy as np

from bench.cases._common import device_chunks, random_variables, result_row
from bench.cost import Peaks, compiled_cost, device_memory
from bench.timing import time_fn
from mia_jax import signals, whitebox
from mia_jax.models import make_model

CASE = "checkpoints"
INPUT, CLASSES, WIDTHS = 784, 10, (256, 256)


def run(sizes: dict, peaks: dict[str, Peaks], *, log=print) -> tuple[list[dict], list[str]]:
  cs = sorted(sizes["ckpt_c"])
  n, mb = sizes["ckpt_n"], sizes["ckpt_mb"]
  model = make_model("mlp", input_shape=(INPUT,), num_classes=CLASSES, widths=WIDTHS)
  layers = whitebox.default_layers(model)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, INPUT)).astype(np.float32)
  y = rng.integers(0, CLASSES, n).astype(np.int32)
  chunks = device_chunks([x, y], mb)
  all_vars = random_variables(model, 0, stack=max(cs))
  pk = peaks.get("fp32")
  notes = [f"checkpoints: MLP {INPUT}-{'-'.join(map(str, WIDTHS))}-{CLASSES}, rows for layers "
           f"{list(layers)}; examples/s counts checkpoint-examples (C x N per second)"]
  if device_memory() is None:
    notes.append("checkpoints: device memory_stats() unavailable on this backend: peak 'n/a'")
  rows: list[dict] = []
  base: dict[tuple[str, str], float] = {}
  for c in cs:
    variables = jax.tree.map(lambda a: a[:c], all_vars)
    jax.block_until_ready(variables)
    ops = {
        "blackbox_signals": (
            signals._compiled_signals(model, True),
            lambda: signals.blackbox_signals(model, variables, x, y, microbatch_size=mb,
                                             stacked=True)),
        "jacobian_rows": (
            whitebox._compiled_rows(model, layers, 0, False, True),
            lambda: whitebox.jacobian_rows(model, variables, x, y, layers=layers,
                                           microbatch_size=mb, stacked=True)),
    }
    for op, (fn, library) in ops.items():
      log(f"  checkpoints C={c} {op}: N={n} mb={mb}")
      cost = compiled_cost(fn, variables, *chunks[0])
      flops = cost.flops * len(chunks) if cost.flops else None
      nbytes = cost.bytes_accessed * len(chunks) if cost.bytes_accessed else None
      timings = {
          "device": time_fn(lambda: [fn(variables, xb, yb) for xb, yb in chunks],
                            warmup=sizes["warmup"], reps=sizes["reps"]),
          "e2e": time_fn(library, warmup=sizes["warmup"], reps=sizes["reps"],
                         sync=lambda _: None),
      }
      mem = device_memory()
      for mode, t in timings.items():
        r = result_row(CASE, t, examples=c * n, flops=flops, nbytes=nbytes, peaks=pk, op=op,
                       mode=mode, c=c, n=n, microbatch=mb, precision="fp32",
                       xla_memory_per_chunk=cost.memory, flops_source=cost.flops_source,
                       peak_bytes_in_use=mem.get("peak_bytes_in_use") if mem else None,
                       bytes_limit=mem.get("bytes_limit") if mem else None)
        r["per_checkpoint_s"] = t.median / c
        base.setdefault((op, mode), r["per_checkpoint_s"])
        r["per_checkpoint_vs_first"] = r["per_checkpoint_s"] / base[(op, mode)]
        r["first_c"] = cs[0]
        rows.append(r)
        log(f"    {mode:<6} {t.median:.4g} s  per checkpoint {r['per_checkpoint_s']:.4g} s")
  return rows, notes
