"""``python -m bench``: run the benchmark suites, print markdown tables, write JSON.

Examples:
  python -m bench --suite all --smoke --out /tmp/smoke.json        # CI: < 60 s on a CPU
  python -m bench --suite all --out bench/results/h100.json \\
      --results-md "NVIDIA H100 (full preset)"                      # the GPU run
  python -m bench --suite whitebox --precision fp32,tf32,bf16        # precision study
  python -m bench --suite checkpoints --sizes ckpt_c=1,4,16 ckpt_n=2048
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from bench import report, sizes as sizes_mod
from bench.cost import PRECISIONS, measure_peaks
from bench.timing import compile_count, env_info

SUITES = ("whitebox", "training", "checkpoints")
# Run order for --suite all: smallest device memory first, so the process's peak-memory
# high-water mark read by the checkpoints case is its own.
ORDER = ("checkpoints", "training", "whitebox")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m bench", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", default="all", choices=("all",) + SUITES)
  p.add_argument("--smoke", action="store_true",
                 help="tiny sizes (same as --preset smoke): every code path in < 60 s on a CPU")
  p.add_argument("--preset", default="full", choices=sorted(sizes_mod.PRESETS),
                 help="size preset (default: full, meant for a GPU)")
  p.add_argument("--sizes", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                 help="override sizes, e.g. wb_n=8192 train_m=1,8; keys: "
                      + ", ".join(f"{k} ({v})" for k, v in sizes_mod.DOC.items()))
  p.add_argument("--precision", default="fp32",
                 help="comma-separated subset of fp32,tf32,bf16 for the white-box case "
                      "(matmul/conv precision via jax.default_matmul_precision; each "
                      "reported separately; training and checkpoints run in fp32)")
  p.add_argument("--torch-compile", default="auto", choices=("auto", "on", "off"),
                 help="time a torch.compile variant (auto: only on CUDA)")
  p.add_argument("--out", default=None,
                 help="JSON output path (default bench/results/<date>-<device>-<preset>.json)")
  p.add_argument("--results-md", default=None, metavar="SECTION",
                 help="also write the tables into bench/RESULTS.md under this section title")
  return p


def _clean(v: Any) -> Any:
  """JSON-safe: NumPy scalars to Python, NaN/inf to None."""
  if isinstance(v, dict):
    return {str(k): _clean(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_clean(x) for x in v]
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, (str, int, float, bool)) or v is None:
    return v
  return str(v)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  preset = "smoke" if args.smoke else args.preset
  sizes = sizes_mod.resolve(preset, sizes_mod.parse_overrides(args.sizes))
  precisions = [p for p in args.precision.split(",") if p]
  bad = [p for p in precisions if p not in PRECISIONS]
  if bad or not precisions:
    raise SystemExit(f"--precision: expected a subset of {sorted(PRECISIONS)}, got {args.precision!r}")
  suites = ORDER if args.suite == "all" else (args.suite,)
  compile_count()  # install the recompile listener before anything compiles
  env = env_info()
  start = time.perf_counter()
  print(f"# bench: {env['device_kind']} ({env['platform']}), jax {env['jax']}, preset {preset}",
        flush=True)

  def log(msg):
    print(msg, flush=True)

  peaks = {}
  for p in dict.fromkeys(["fp32"] + (precisions if "whitebox" in suites else [])):
    pk = measure_peaks(p, matmul_n=sizes["peak_matmul_n"],
                       copy_bytes=sizes["peak_copy_mb"] << 20, warmup=sizes["warmup"],
                       reps=max(3, sizes["reps"]))
    peaks[p] = pk
    log(f"peak {p}: {pk.flops_per_s / 1e9:.4g} GFLOP/s (matmul {pk.matmul_n}), "
        f"{pk.bytes_per_s / 1e9:.4g} GB/s (copy {pk.copy_bytes >> 20} MiB)")

  cases, notes = {}, []
  for suite in suites:
    log(f"## {suite}")
    t0 = time.perf_counter()
    if suite == "whitebox":
      from bench.cases import whitebox
      rows, n = whitebox.run(sizes, peaks, precisions, torch_compile=args.torch_compile, log=log)
    elif suite == "training":
      from bench.cases import training
      rows, n = training.run(sizes, peaks, log=log)
    else:
      from bench.cases import checkpoints
      rows, n = checkpoints.run(sizes, peaks, log=log)
    cases[suite] = rows
    notes += n
    log(f"## {suite} done in {time.perf_counter() - t0:.1f} s")

  recompiled = [r for rows in cases.values() for r in rows if r.get("recompiles")]
  if recompiled:
    notes.append(f"WARNING: {len(recompiled)} timed row(s) saw XLA compilations during the "
                 "timed repetitions (see 'recompiles')")
  results = _clean({
      "env": env, "preset": preset, "sizes": sizes, "precisions": precisions,
      "suites": list(suites), "peaks": {p: pk.as_dict() for p, pk in peaks.items()},
      "cases": cases, "notes": notes, "wall_s": time.perf_counter() - start,
  })
  out = args.out
  if out is None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = env["device_kind"].replace(" ", "_").replace("/", "_")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       f"{stamp}-{kind}-{preset}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(results, f, indent=1)
  md = report.render(results)
  print()
  print(md)
  print(f"wrote {out} ({results['wall_s']:.1f} s)")
  if args.results_md:
    report.update_results_md(args.results_md, md)
    print(f"updated {report.RESULTS_MD} section {args.results_md!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
