"""Privacy auditing of DP-SGD with canaries: empirical epsilon lower bounds against the
accountant's epsilon, per attack, canary kind and audit mode (issue #16).

Every run is one `mia_jax.audit.run_audit` (the same pipeline as `mia-jax audit
--canaries N`), with the options of `recipe` / `plan` below; nothing is tuned per row.

Usage (from the repository root; Location and MNIST need ../shared/data or $MIA_JAX_DATA):

  python experiments/auditing.py                        # both datasets, every run
  python experiments/auditing.py --datasets location    # one dataset
  python experiments/auditing.py --smoke                # tiny synthetic data (tests)

Grid: theoretical epsilon 1, 2, 4, 8, 16 (DP-SGD, noise calibrated by the RDP accountant
with the included canaries counted in the training set) and no DP; canary kinds
mislabeled, ood, input-space (scored by loss, LiRA and RMIA with 2 reference models, the
one-run setting of ML Privacy Meter's audit) and gradient (Dirac gradient canaries scored
on the final weights; its "no DP" run is DP-SGD with clipping and no noise); one-run
audits with 500 canaries in the target's single training run, and several-run audits
(4 runs, 250 canaries each: 1000 pooled guesses) for the mislabeled and gradient kinds,
on both datasets (GRID below).

Runs live in <out>/auditing-seed<S>/<name>/ and are reused when finished. The tables go
to <results-dir>/auditing.md (default experiments/results/), the plots (empirical against
theoretical epsilon with the diagonal, one per dataset) to <results-dir>/auditing_<dataset>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The stages of these runs draw their seeds as runs did before named streams
# (mia_jax.streams, "offsets"), so the numbers in experiments/RESULTS.md reproduce
# exactly; switch to "named" when every suite is rerun.
SEED_STREAMS = "offsets"
sys.path.insert(0, HERE)
from shokri import _config_diff, _plt, jax_compilation_cache  # noqa: E402

DATA = os.environ.get("MIA_JAX_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
FILES = {"location": os.path.join(DATA, "location.npz"), "mnist": os.path.join(DATA, "mnist.npz")}
DATASETS = ("location", "mnist")
EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0, None)
INPUT_KINDS = ("mislabeled", "ood", "input-space")
KINDS = INPUT_KINDS + ("gradient",)
SEVERAL_KINDS = ("mislabeled", "gradient")
# Every one-run kind and both several-run kinds on both datasets (the mislabeled several-run
# audits on MNIST, whose RMIA population is 66000 examples, ran in a later session).
GRID = {"location": (KINDS, SEVERAL_KINDS), "mnist": (KINDS, SEVERAL_KINDS)}
BLACKBOX = ("loss", "lira", "rmia")
ONE_RUN_CANARIES, SEVERAL_RUNS, SEVERAL_CANARIES = 500, 4, 250


def recipe(dataset: str, smoke: bool) -> dict:
  """The target's recipe (AuditConfig keyword arguments) on one dataset: an MLP with 128
  hidden units, 1000 members, 30 epochs of Adam (lr 0.01, batch 128), clip norm 1."""
  if smoke:
    return dict(dataset="purchase_like",
                dataset_options={"num_classes": 5, "num_features": 24, "num_train": 300,
                                 "num_test": 300, "seed": 0},
                model="mlp", model_options={"widths": [16]}, target_size=120, epochs=3,
                batch_size=32, learning_rate=0.01, bootstrap_resamples=0)
  return dict(dataset=FILES[dataset], model="mlp", model_options={"widths": [128]},
              target_size=1000, epochs=30, batch_size=128, learning_rate=0.01,
              clip_norm=1.0, bootstrap_resamples=0)


def _eps_name(eps) -> str:
  return "nodp" if eps is None else f"eps{eps:g}"


def plan(datasets, smoke: bool) -> dict[str, dict]:
  """{run name: AuditConfig keyword arguments} of every run."""
  epsilons = (4.0, None) if smoke else EPSILONS
  count = (20, 2, 10) if smoke else (ONE_RUN_CANARIES, SEVERAL_RUNS, SEVERAL_CANARIES)
  out = {}
  for ds in datasets:
    base = recipe(ds, smoke)
    for eps in epsilons:
      for mode in ("one-run", "several-run"):
        for kind in _kinds(ds, mode):
          kw = dict(base, canary_kind=kind)
          if mode == "one-run":
            kw["canaries"] = count[0]
          else:
            kw.update(canaries=count[2], canary_runs=count[1])
          if kind == "gradient":
            kw["attacks"] = ("loss",)  # the gradient-canary score needs no attacker models
            kw["noise_multiplier" if eps is None else "dp_epsilon"] = 0.0 if eps is None else eps
          else:
            kw.update(attacks=BLACKBOX, num_reference=2)
            if eps is not None:
              kw["dp_epsilon"] = eps
          out[f"{ds}-{kind}-{mode}-{_eps_name(eps)}"] = kw
  return out


def _kinds(dataset: str, mode: str) -> tuple[str, ...]:
  return GRID[dataset][0 if mode == "one-run" else 1]


def run_dir(out: str, smoke: bool, seed: int, name: str) -> str:
  return os.path.join(out, f"auditing{'-smoke' if smoke else ''}-seed{seed}", name)


def execute(runs: dict[str, dict], *, out: str, smoke: bool, seed: int, log=print) -> dict:
  """Runs (or reuses) every planned run; returns {name: results}."""
  from mia_jax.audit import AuditConfig, run_audit
  results = {}
  for i, (name, kw) in enumerate(runs.items()):
    rdir = run_dir(out, smoke, seed, name)
    cfg = AuditConfig(seed=seed, seed_streams=SEED_STREAMS, **kw)
    done = os.path.join(rdir, "results.json")
    if os.path.exists(done):
      with open(done) as f:
        r = json.load(f)
      diff = _config_diff(r["config"], cfg.to_dict())
      if diff:
        raise SystemExit(f"[{name}] {rdir} holds a finished run with another configuration "
                         f"(differs in {diff}); delete it or pass another --out")
      results[name] = r
      continue
    log(f"[{name}] starting ({i + 1}/{len(runs)})")
    t0 = time.time()
    results[name] = run_audit(cfg, rdir, log=lambda s, n=name: log(f"[{n}] {s}"))
    log(f"[{name}] done in {time.time() - t0:.0f}s")
  return results


# -- tables and plots -------------------------------------------------------------------------

def rows(results: dict[str, dict]) -> list[dict]:
  """One row per (run, attack): the run's setting, the theoretical epsilon and every
  estimator's bound."""
  out = []
  for name, r in results.items():
    pa = r["privacy_audit"]
    theo = pa["theoretical_epsilon"]
    ds = name.split("-")[0]
    for attack, entry in pa["attacks"].items():
      out.append({"run": name, "dataset": ds, "kind": pa["canaries"]["kind"],
                  "mode": pa["mode"], "runs": pa["canaries"]["runs"],
                  "guesses": entry["guesses"], "theoretical": math.inf if theo == "inf"
                  else float(theo), "attack": attack, "auc": entry["auc"],
                  "target_epsilon": r["config"].get("dp_epsilon"),
                  "test_accuracy": r["target"]["test_accuracy"],
                  **{est: v["epsilon"] for est, v in entry["epsilon"].items()}})
  return out


def best(rs: list[dict], estimators) -> tuple[float, str]:
  """The largest bound over rows and estimators, with "attack/estimator"."""
  top, what = 0.0, "-"
  for r in rs:
    for est in estimators:
      if r.get(est, 0.0) > top:
        top, what = r[est], f"{r['attack']}/{est}"
  return top, what


def _f(v, digits=2) -> str:
  if v is None:
    return "-"
  if isinstance(v, float) and math.isinf(v):
    return "inf"
  return f"{v:.{digits}f}"


def render(results: dict[str, dict], *, results_dir: str, datasets, smoke: bool) -> str:
  from mia_jax.privacy_audit import ESTIMATORS
  table = rows(results)
  lines = []
  epsilons = (4.0, None) if smoke else EPSILONS
  head = [_f(e, 0) if e is not None else "no DP" for e in epsilons]
  lines += ["### Best empirical epsilon lower bound (95% confidence, delta 1e-5)", "",
            "Each cell: the largest bound over the attacks and estimators of that audit, "
            "then the attack/estimator that gave it. Columns: the accountant's epsilon the "
            "training was calibrated to (the achieved one is within 1%; see the detail table).",
            "", "| dataset | canaries | audit | " + " | ".join(head) + " |",
            "|---|---|---|" + "---|" * len(head)]
  for ds in datasets:
    for mode in ("one-run", "several-run"):
      for kind in _kinds(ds, mode):
        cells = []
        for eps in epsilons:
          rs = [r for r in table if r["run"] == f"{ds}-{kind}-{mode}-{_eps_name(eps)}"]
          if not rs:
            cells.append("(not run)")
            continue
          v, what = best(rs, ESTIMATORS)
          cells.append(f"{_f(v)} ({what})" if v > 0 else "0")
        label = (f"one run, {ONE_RUN_CANARIES if not smoke else 20} canaries" if mode == "one-run"
                 else f"{SEVERAL_RUNS if not smoke else 2} runs x "
                      f"{SEVERAL_CANARIES if not smoke else 10}")
        lines.append(f"| {ds} | {kind} | {label} | " + " | ".join(cells) + " |")
  over = [r for r in table if any(r.get(e, 0) > r["theoretical"] + 1e-9 for e in ESTIMATORS)]
  lines += ["", f"Bounds above the theoretical epsilon: {len(over)} of {len(table)} "
                "(attack, run) pairs." + ("" if not over else " " + ", ".join(
                    f"{r['run']}/{r['attack']}" for r in over)), ""]
  lines += ["### Every audit and attack", "",
            "| run | theoretical eps | target test acc. | attack | AUC on canaries | guesses | "
            + " | ".join(ESTIMATORS) + " |", "|---|---|---|---|---|---|" + "---|" * len(ESTIMATORS)]
  for r in table:
    lines.append(f"| {r['run']} | {_f(r['theoretical'], 3)} | {_f(r['test_accuracy'])} | "
                 f"{r['attack']} | {_f(r['auc'], 3)} | {r['guesses']} | "
                 + " | ".join(_f(r.get(e)) for e in ESTIMATORS) + " |")
  lines.append("")
  from mia_jax.report import plot_empirical_epsilon
  for ds in datasets:
    points = []
    for mode in ("one-run", "several-run"):
      for kind in _kinds(ds, mode):
        for eps in epsilons:
          rs = [r for r in table if r["run"] == f"{ds}-{kind}-{mode}-{_eps_name(eps)}"]
          if rs:
            points.append((f"{kind}, {mode}", rs[0]["theoretical"], best(rs, ESTIMATORS)[0]))
    if points:
      png = os.path.join(results_dir, f"auditing_{ds}.png")
      with open(png, "wb") as f:
        f.write(plot_empirical_epsilon(points, dpi=110, title=(
            f"{ds}: best empirical epsilon lower bound per audit (95%, delta 1e-5)")))
      lines.append(f"![{ds}](auditing_{ds}.png)")
  _plt()  # matplotlib's Agg backend for headless runs
  return "\n".join(lines) + "\n"


def command_line(args) -> str:
  cmd = "python experiments/auditing.py"
  if args.smoke:
    cmd += " --smoke"
  if tuple(args.datasets) != DATASETS:
    cmd += " --datasets " + ",".join(args.datasets)
  return cmd


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", default=",".join(DATASETS),
                 help=f"comma-separated, from {DATASETS}")
  p.add_argument("--out", default=os.path.join("runs", "experiments"))
  p.add_argument("--results-dir", default=None,
                 help="where auditing.md and the plots go (default experiments/results; "
                      "--smoke: <out>/auditing-smoke-seed<S>/results)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true", help="tiny built-in data and recipes (tests)")
  p.add_argument("--list", action="store_true", help="print the runs and exit")
  p.add_argument("--jax-cache", default=None,
                 help="JAX persistent compilation cache directory (default <out>/jax-cache; "
                      "'' disables it)")
  args = p.parse_args(argv)
  args.datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
  bad = [d for d in args.datasets if d not in DATASETS]
  if bad or not args.datasets:
    p.error(f"--datasets: expected names from {DATASETS}, got {list(args.datasets)}")
  runs = plan(args.datasets[:1] if args.smoke else args.datasets, args.smoke)
  if args.smoke:
    args.datasets = args.datasets[:1]
  if args.list:
    for name, kw in runs.items():
      print(f"{name}\t{kw}")
    return 0
  if not args.smoke:
    for d in args.datasets:
      if not os.path.exists(FILES[d]):
        p.error(f"{FILES[d]} not found (set MIA_JAX_DATA to the folder holding {d}.npz)")
  results_dir = args.results_dir or (
      os.path.join(args.out, f"auditing-smoke-seed{args.seed}", "results") if args.smoke
      else os.path.join(HERE, "results"))
  os.makedirs(results_dir, exist_ok=True)
  t0 = time.time()
  reused = sum(os.path.exists(os.path.join(run_dir(args.out, args.smoke, args.seed, n),
                                           "results.json")) for n in runs)
  cache = os.path.join(args.out, "jax-cache") if args.jax_cache is None else args.jax_cache
  with jax_compilation_cache(cache or None):
    results = execute(runs, out=args.out, smoke=args.smoke, seed=args.seed,
                      log=lambda s: print(s, flush=True))
  body = render(results, results_dir=results_dir, datasets=args.datasets, smoke=args.smoke)
  md = os.path.join(results_dir, "auditing.md")
  with open(md, "w") as f:
    f.write(f"<!-- produced by: {command_line(args)} (seed {args.seed}) on "
            f"{time.strftime('%Y-%m-%d')} -->\n\n## Privacy auditing with canaries\n\n"
            f"Reproduce: `{command_line(args)}` ({len(results)} runs; this invocation ran "
            f"{len(results) - reused} of them in {time.time() - t0:.0f}s and reused the "
            f"{reused} finished ones).\n\n")
    f.write(body)
  print(body, flush=True)
  print(f"wrote {md}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
