"""Markdown tables from a results dict, and the bench/RESULTS.md section updater.

``python -m bench.report RESULTS.json --section "NAME"`` (or ``python -m bench ...
--results-md "NAME"``) writes the tables of a run into bench/RESULTS.md between the
markers ``<!-- bench:begin NAME -->`` and ``<!-- bench:end NAME -->``, replacing an
earlier section of the same name or appending a new one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any, Sequence

RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def fmt(v: Any, digits: int = 3) -> str:
  """Number -> short string with ``digits`` significant figures; None/NaN -> 'n/a'."""
  if v is None:
    return "n/a"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if math.isnan(v):
      return "n/a"
    if v == 0:
      return "0"
    if abs(v) >= 10 ** digits or abs(v) < 10 ** -3:
      return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"
  return str(v)


def fmt_bytes(v: Any) -> str:
  if v is None:
    return "n/a"
  v = float(v)
  for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if v >= scale:
      return f"{v / scale:.3g} {unit}"
  return f"{int(v)} B"


def _giga(v):
  return None if v is None else v / 1e9


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(str(c) for c in r) + " |")
  return "\n".join(lines)


def _xla_mem(m):
  if not m:
    return "n/a"
  return fmt_bytes(sum(m.get(k, 0) for k in
                       ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")))


def env_table(env: dict) -> str:
  keys = ("date", "device_kind", "platform", "device_count", "jax", "jaxlib", "host_cpus",
          "git_revision", "xla_flags")
  return table(["", ""], [[k, f"`{env.get(k)}`" if k == "git_revision" else env.get(k, "n/a")]
                          for k in keys] + [["command", f"`{env.get('command')}`"]])


def peaks_table(peaks: dict) -> str:
  rows = [[p, v["matmul_n"], fmt(_giga(v["flops_per_s"])), fmt(v["matmul"]["iqr"] / v["matmul"]["median"]),
           fmt_bytes(v["copy_bytes"]), fmt(_giga(v["bytes_per_s"]))]
          for p, v in peaks.items()]
  return table(["precision", "matmul n", "peak GFLOP/s", "matmul IQR/median", "copy size",
                "peak GB/s"], rows)


def whitebox_table(rows: list[dict]) -> str:
  out = []
  for r in rows:
    impl = r["impl"]
    if r.get("extrapolated_from"):
      impl += f" (timed on {r['extrapolated_from']}, extrapolated)"
    checks = []
    if r.get("check_vs_fp32") is not None:
      checks.append(f"vs fp32 {fmt(r['check_vs_fp32'], 2)}")
    if r.get("check_vs_device") is not None:
      checks.append(f"vs device {fmt(r['check_vs_device'], 2)}")
    if r.get("check_vs_batched") is not None:
      checks.append(f"vs batched {fmt(r['check_vs_batched'], 2)}")
    if r.get("check_vs_jax") is not None:
      checks.append(f"vs JAX fp32 {fmt(r['check_vs_jax'], 2)}")
    if r.get("recompiles"):
      checks.append(f"RECOMPILES {r['recompiles']}")
    out.append([r["model"], r["variant"], r["precision"], impl, r["mode"],
                f"{r['n']} ({r['microbatch']})", fmt(r["median_s"]), fmt(r["iqr_s"]),
                fmt(r["examples_per_s"]), fmt(_giga(r.get("flops_per_s"))),
                fmt(r.get("pct_peak_flops")), fmt(_giga(r.get("bytes_per_s"))),
                fmt(r.get("pct_peak_bytes")), fmt(r.get("jax_speedup")),
                "; ".join(checks) or ""])
  return table(["model", "variant", "prec", "impl", "mode", "N (mb)", "median s", "IQR s",
                "examples/s", "GFLOP/s", "% peak FLOP/s", "GB/s", "% peak BW",
                "JAX speedup", "check (max rel err)"], out)


def training_table(rows: list[dict]) -> str:
  out = []
  for r in rows:
    impl = r["impl"] + (f" (extrapolated from {r['extrapolated_from']} model(s))"
                        if r.get("extrapolated_from") else "")
    check = r.get("check_loss_vs_sequential")
    if r.get("recompiles"):
      impl += f" RECOMPILES {r['recompiles']}"
    out.append([r["m"], impl, fmt(r["median_s"]), fmt(r["iqr_s"]), fmt(r["per_model_s"]),
                fmt(r["examples_per_s"]), fmt(_giga(r.get("flops_per_s"))),
                fmt(r.get("pct_peak_flops")), fmt(r["speedup_vs_sequential"]),
                "" if check is None else f"max loss diff {fmt(check, 2)}"])
  return table(["M", "impl", "median s", "IQR s", "per model s", "model-examples/s",
                "GFLOP/s", "% peak FLOP/s", "speedup vs sequential", "check"], out)


def checkpoints_table(rows: list[dict]) -> str:
  out = []
  for r in rows:
    note = f" RECOMPILES {r['recompiles']}" if r.get("recompiles") else ""
    out.append([r["op"], r["mode"] + note, r["c"], f"{r['n']} ({r['microbatch']})",
                fmt(r["median_s"]), fmt(r["iqr_s"]), fmt(r["per_checkpoint_s"]),
                fmt(r["per_checkpoint_vs_first"]), fmt(r["examples_per_s"]),
                fmt(_giga(r.get("flops_per_s"))), fmt(_giga(r.get("bytes_per_s"))),
                fmt_bytes(r.get("peak_bytes_in_use")), _xla_mem(r.get("xla_memory_per_chunk"))])
  return table(["op", "mode", "C", "N (mb)", "median s", "IQR s", "s per checkpoint",
                "per-ckpt vs first C", "ckpt-examples/s", "GFLOP/s", "GB/s",
                "peak device mem", "XLA mem / chunk"], out)


TABLES = {"whitebox": whitebox_table, "training": training_table,
          "checkpoints": checkpoints_table}
TITLES = {"whitebox": "(a) White-box signal pass (Stolen Memories rows/scores; Nasr et al. gradients)",
          "training": "(b) Training many models",
          "checkpoints": "(c) Many checkpoints"}


def render(results: dict, level: int = 3) -> str:
  """All tables of a run as markdown (environment, peaks, one table per case, notes)."""
  h = "#" * level
  parts = [f"{h} Environment", env_table(results["env"]), "",
           f"Sizes: `{json.dumps(results['sizes'], sort_keys=True)}`", "",
           f"{h} Measured peaks (same run)", peaks_table(results["peaks"]), ""]
  for case in ("whitebox", "training", "checkpoints"):
    if case in results["cases"]:
      parts += [f"{h} {TITLES[case]}", TABLES[case](results["cases"][case]), ""]
  if results.get("notes"):
    parts += [f"{h} Notes"] + [f"- {n}" for n in results["notes"]] + [""]
  return "\n".join(parts)


def update_results_md(section: str, markdown: str, path: str = RESULTS_MD) -> None:
  """Replaces (or appends) the section ``section`` of ``path`` with ``markdown``."""
  begin, end = f"<!-- bench:begin {section} -->", f"<!-- bench:end {section} -->"
  block = f"{begin}\n## {section}\n\n{markdown.rstrip()}\n{end}\n"
  text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
  if pattern.search(text):
    text = pattern.sub(lambda _: block, text)
  else:
    text = text.rstrip("\n") + "\n\n" + block
  with open(path, "w") as f:
    f.write(text)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.report",
                              description="Render a bench JSON file; optionally update RESULTS.md.")
  p.add_argument("json", help="results JSON written by python -m bench --out")
  p.add_argument("--section", help="update this section of bench/RESULTS.md")
  p.add_argument("--results-md", default=RESULTS_MD, help="path of RESULTS.md")
  args = p.parse_args(argv)
  with open(args.json) as f:
    results = json.load(f)
  md = render(results)
  if args.section:
    update_results_md(args.section, md, args.results_md)
  else:
    print(md)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
