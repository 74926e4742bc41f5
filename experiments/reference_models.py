"""LiRA and RMIA with many reference models (issue 5), next to the loss, Shokri and
Stolen Memories attacks on the same target, through the same `run_audit` pipeline as
`mia-jax audit`.

Usage (from the repository root; needs ../shared/data, or MIA_JAX_DATA, for the real
datasets):

  python experiments/reference_models.py --suite mnist                      # 16 and 64 refs
  python experiments/reference_models.py --suite fashion_mnist
  python experiments/reference_models.py --suite mnist --num-reference 16   # one count only
  python experiments/reference_models.py --suite smoke    # digits, seconds (used in tests)

A suite is one target (dataset, seeded split and training recipe) audited several times,
all runs training the identical target (same seed, split and recipe):

* ``<suite>_shared``: the attacks that do not depend on the number of reference models
  (loss, Shokri, Stolen Memories);
* ``<suite>_ref<M>`` for each M in ``--num-reference``: LiRA online / offline / fixed
  variance and RMIA online / offline with M reference models (trained at once on random
  halves of the evaluation candidates, each candidate IN for exactly M/2 of them), plus
  the loss attack, whose scores are compared across runs to check that every run audited
  the same target.

Each run writes <out>/<suite>/<name>/results.json and scores.npz; finished runs are
reused (when their configuration is still the one of this script). Outputs, in
--results-dir: reference_models_<suite>.md (the table), reference_models_<suite>_roc.png
(log-log ROC curves), and, for the real datasets, reference_models.md (every dataset's
table, the plots and the comparison with the published results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# The stages of these runs draw their seeds as runs did before named streams
# (mia_jax.streams, "offsets"), so the numbers in experiments/RESULTS.md reproduce
# exactly; switch to "named" when every suite is rerun.
SEED_STREAMS = "offsets"
DATA = os.environ.get("MIA_JAX_DATA", os.path.join(HERE, "..", "..", "shared", "data"))


def _npz(name):
  return os.path.join(DATA, name)


REFERENCE_ATTACKS = ("lira", "lira-offline", "lira-fixed-variance", "rmia", "rmia-offline")
SHARED_ATTACKS = ("loss", "shokri", "stolen-memories")
# Table / plot order.
ATTACKS = ("loss",) + REFERENCE_ATTACKS + ("shokri", "stolen-memories")
FPRS = ("0.01", "0.001", "0.0001")  # keys of results.json's tpr_at_fpr
REAL_SUITES = ("mnist", "fashion_mnist")

# A 2-core CPU budget: one hidden layer of 256 units, 2500 members (as many non-members
# held out; each reference model also trains on 2500 examples), 25 epochs. Every setting
# is visible here; nothing is tuned per attack.
_CPU_RECIPE = dict(model="mlp", model_options={"widths": [256]}, target_size=2500, epochs=25,
                   batch_size=64, learning_rate=1e-3, num_shadow=8)

# suite -> the shared AuditConfig keyword arguments, the LiRA query augmentations (digits
# change meaning under a flip, so MNIST gets shifts only), the default reference counts
# and the attacks of the shared / reference runs.
SUITES = {
    "mnist": dict(config=dict(dataset=_npz("mnist.npz"), **_CPU_RECIPE),
                  lira_augmentations="shift", num_reference=(16, 64),
                  shared=SHARED_ATTACKS, reference=REFERENCE_ATTACKS),
    "fashion_mnist": dict(config=dict(dataset=_npz("fashion_mnist.npz"), **_CPU_RECIPE),
                          lira_augmentations="flip+shift", num_reference=(16, 64),
                          shared=SHARED_ATTACKS, reference=REFERENCE_ATTACKS),
    # digits (8x8, 1797 examples, built in), few epochs, 4 reference models (LiRA needs
    # >= 2 IN and 2 OUT references per example: with 2 its spreads are 0 and its scores
    # infinite), a shrunk attack list (training time here is mostly XLA compilation).
    "smoke": dict(config=dict(dataset="digits", model="mlp", model_options={"widths": [64]},
                              epochs=8, batch_size=64),
                  lira_augmentations="none", num_reference=(4,),
                  shared=("loss",), reference=("lira", "lira-offline", "rmia")),
}


def has_config_field(name: str) -> bool:
  from mia_jax.audit import AuditConfig
  return name in {f.name for f in dataclasses.fields(AuditConfig)}


def run_configs(suite: str, num_reference, seed: int) -> dict:
  """name -> AuditConfig keyword arguments of every run of the suite (shared run first)."""
  s = SUITES[suite]
  runs = {f"{suite}_shared": dict(s["config"], attacks=tuple(s["shared"]), seed=seed)}
  for m in num_reference:
    kw = dict(s["config"], attacks=("loss",) + tuple(s["reference"]), num_reference=m, seed=seed)
    if has_config_field("lira_augmentations"):
      kw["lira_augmentations"] = s["lira_augmentations"]
    elif s["lira_augmentations"] != "none":
      print(f"[{suite}] note: AuditConfig has no lira_augmentations field yet; LiRA runs "
            f"without the intended {s['lira_augmentations']!r} query augmentations", flush=True)
    runs[f"{suite}_ref{m}"] = kw
  return runs


def _comparable(d: dict) -> dict:
  from mia_jax.audit import saved_config
  return saved_config(d)


def config_matches(saved: dict, config) -> bool:
  """Whether a finished run's saved configuration is ``config`` (options added to
  AuditConfig since the run count with their defaults, as in run_audit)."""
  return _comparable(saved) == _comparable(config.to_dict())


# ---------------------------------------------------------------------------------------
# ROC curves and the plot.
# ---------------------------------------------------------------------------------------


def roc_curves(run_dir: str, attacks=None) -> dict:
  """attack -> (fpr, tpr) exact ROC curves (both non-decreasing) from ``scores.npz``,
  plus ``"_n"``: (number of members, number of non-members)."""
  from mia_jax.metrics import roc_curve
  with np.load(os.path.join(run_dir, "scores.npz")) as z:
    m = z["is_member"].astype(bool)
    out = {}
    for key in z.files:
      if not key.startswith("score:") or "/" in key:  # per-layer scores are left out
        continue
      name = key[len("score:"):]
      if attacks is None or name in attacks:
        fpr, tpr, _ = roc_curve(z[key], m)
        out[name] = (fpr, tpr)
  out["_n"] = (int(m.sum()), int((~m).sum()))
  return out


def plot_roc(curves: dict, path: str, title: str) -> None:
  """``curves``: M -> {attack: (fpr, tpr)} with M an int (reference count) or "shared".

  Left panel: every attack, reference attacks with the largest M. Right panel: the
  reference attacks for every M (largest solid, smaller dashed / dotted)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  counts = sorted(k for k in curves if k != "shared")
  n_pos, n_neg = next(iter(curves.values()))["_n"]
  # The axes start at the resolution 1/n (or 1e-4 with more examples); zeros cannot be
  # drawn on log axes, so they are pinned below the visible range and the curve leaves
  # the plot through the left / bottom edge.
  lo_x, lo_y = max(1e-4, 1.0 / n_neg), max(1e-4, 1.0 / n_pos)
  floor = min(lo_x, lo_y) / 10
  colors = dict(zip(ATTACKS, ["0.35", "tab:blue", "tab:cyan", "tab:purple", "tab:red",
                              "tab:orange", "tab:green", "tab:brown"]))
  styles = ["-", "--", ":", "-."]
  fig = Figure(figsize=(14, 6), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2, sharey=True)

  def draw(ax, fpr, tpr, label, color, ls, lw=1.5):
    ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=color, linestyle=ls, lw=lw,
            label=label)

  def auc(fpr, tpr):
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)

  big = counts[-1] if counts else None
  for a in ATTACKS:
    src = curves.get(big, {}) if a in REFERENCE_ATTACKS else curves.get("shared", {})
    if a not in src:  # the loss attack is also in every reference run (same target)
      src = curves.get(big, {})
    if a not in src:
      continue
    fpr, tpr = src[a]
    tag = f", M={big}" if a in REFERENCE_ATTACKS else ""
    draw(axes[0], fpr, tpr, f"{a}{tag} (AUC {auc(fpr, tpr):.3f})", colors.get(a, "k"), "-",
         lw=2.0 if a in REFERENCE_ATTACKS else 1.5)
  for a in REFERENCE_ATTACKS:
    for j, m in enumerate(reversed(counts)):  # largest M solid, smaller ones dashed / dotted
      if a in curves[m]:
        fpr, tpr = curves[m][a]
        draw(axes[1], fpr, tpr, f"{a}, M={m} (AUC {auc(fpr, tpr):.3f})", colors[a],
             styles[j % len(styles)])
  grid = np.logspace(np.log10(floor), 0, 100)
  for ax, t in zip(axes, [f"all attacks (reference attacks with M={big})",
                          "reference attacks by number of reference models M"]):
    ax.plot(grid, grid, color="0.6", lw=1, linestyle="--", label="chance")
    ax.axvline(1.0 / n_neg, color="0.8", lw=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo_x, 1.0)
    ax.set_ylim(lo_y, 1.05)
    ax.set_xlabel(f"false-positive rate ({n_neg} non-members; dotted line: 1/{n_neg})")
    ax.set_title(t, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5)
  axes[0].set_ylabel(f"true-positive rate ({n_pos} members)")
  fig.suptitle(title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=110, metadata={"Software": None})


# ---------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------


def _mark(fpr: float, n_neg: int) -> str:
  allowed = float(fpr) * n_neg  # false positives the FPR budget allows
  if allowed < 1:
    return "†"
  if allowed < 10:
    return "‡"
  return ""


def _loss_check(run_dirs: dict) -> str:
  """Max |difference| of the loss scores between runs (0 = the same target)."""
  base, diffs = None, []
  for name, d in run_dirs.items():
    p = os.path.join(d, "scores.npz")
    if not os.path.exists(p):
      continue
    with np.load(p) as z:
      s = z["score:loss"] if "score:loss" in z.files else None
    if s is None:
      continue
    if base is None:
      base = s
    else:
      diffs.append(float(np.max(np.abs(s - base))))
  if not diffs:
    return "not checked (fewer than two finished runs with the loss attack)"
  return f"max |loss score difference| between runs = {max(diffs):.3g}"


def _total(r: dict) -> float:
  return float(sum(r["timings"].values()))


def suite_table(suite: str, results: dict, run_dirs: dict) -> str:
  """The markdown table of one suite: rows = attacks, column groups = reference counts."""
  shared = results.get(f"{suite}_shared")
  refs = sorted(((int(n.rsplit("_ref", 1)[1]), r) for n, r in results.items()
                 if re.fullmatch(rf"{re.escape(suite)}_ref\d+", n)), key=lambda t: t[0])
  any_r = shared or (refs[0][1] if refs else None)
  if any_r is None:
    return f"### {suite}\n\n(no finished runs yet)\n"
  ds, t, cfg = any_r["dataset"], any_r["target"], any_r["config"]
  n_neg, n_pos = ds["num_nonmembers"], ds["num_members"]
  lines = [f"### {suite}\n"]
  lines.append(
      f"Dataset `{ds['name']}` ({ds['num_examples']} examples): {n_pos} members, {n_neg} "
      f"non-members (the evaluation candidates), {ds['num_auxiliary']} auxiliary examples "
      f"(RMIA's population z, Shokri's shadow data, Stolen Memories' proxies). Model "
      f"`{any_r['model']['name']}` {cfg['model_options']}, {cfg['optimizer']} lr "
      f"{cfg['learning_rate']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, weight "
      f"decay {cfg['weight_decay']}, seed {cfg['seed']}. Target: train accuracy "
      f"{t['train_accuracy']:.4f}, test accuracy {t['test_accuracy']:.4f} (gap "
      f"{t['generalization_gap']:.4f}).\n")
  shokri = (f"; Shokri uses {shared['config']['num_shadow']} shadow models, each on "
            f"{n_pos} auxiliary examples" if shared and "shokri" in shared["attacks"] else "")
  lines.append(
      f"Each reference model trains on a random half of the {n_pos + n_neg} candidates "
      f"(each candidate IN for exactly M/2 models) with the target's recipe{shokri}.\n")
  runs_desc = []
  for name, r in ([(f"{suite}_shared", shared)] if shared else []) + \
                 [(f"{suite}_ref{m}", r) for m, r in refs]:
    tm = r["timings"]
    aug = r["config"].get("lira_augmentations", "none (option not in this version)")
    labels = {"reference_models": "reference models", "reference_signals": "reference signals",
              "shadow_models": "shadow models", "shokri": "Shokri attack models",
              "stolen_memories": "Stolen Memories"}
    extra = "".join(f", {v} {tm[k]:.0f}s" for k, v in labels.items() if k in tm)
    if "reference_models" in tm:
      m = r["config"]["num_reference"]
      extra += (f" = {tm['reference_models'] / m:.1f}s per reference model; LiRA query "
                f"augmentations: {aug}")
    runs_desc.append(f"- `{name}`: train acc {r['target']['train_accuracy']:.4f}, test acc "
                     f"{r['target']['test_accuracy']:.4f}; total {_total(r):.0f}s (target "
                     f"{tm.get('train_target', 0):.0f}s{extra})")
  lines.append("Runs (all train the same target; " + _loss_check(run_dirs) + "):\n")
  lines += runs_desc + [""]
  if not refs:
    refs = [(None, None)]
  head = "| attack |" + "".join(
      f" AUC{'' if m is None else f' (M={m})'} | TPR@1% | TPR@0.1% | TPR@0.01% |" for m, _ in refs)
  lines += [head, "|---|" + "---|---|---|---|" * len(refs)]
  marks = [_mark(f, n_neg) for f in FPRS]
  for a in ATTACKS:
    cells = []
    found = False
    for m, r in refs:
      src = (shared or r) if a in SHARED_ATTACKS else r
      entry = (src or {}).get("attacks", {}).get(a)
      if entry is None:
        cells += ["", "", "", ""]
        continue
      found = True
      cells.append(f"{entry['auc']:.4f}")
      cells += [f"{entry['tpr_at_fpr'][f]:.4f}{mk}" for f, mk in zip(FPRS, marks)]
    if found:
      lines.append(f"| {a} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
      f"M = number of reference models. loss, Shokri and Stolen Memories do not use them: "
      f"computed once (run `{suite}_shared`) and repeated in every column group. With "
      f"{n_neg} non-members the smallest non-zero FPR is 1/{n_neg} = {1 / n_neg:.1e}. "
      f"† below resolution (the FPR budget allows fewer than one false positive, so the "
      f"value is the TPR at zero false positives; TPR at 0.01% FPR needs >= 10^4 "
      f"non-members); ‡ fewer than 10 false positives allowed (high variance).\n")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The combined file.
# ---------------------------------------------------------------------------------------

_BEGIN, _END = "<!-- comparison:begin -->", "<!-- comparison:end -->"
_TODO = (f"{_BEGIN}\nTODO (lead): compare with the published results (LiRA on CIFAR-10: about "
         f"0.72 AUC with 256 reference models; RMIA better than LiRA with few reference "
         f"models) and say where and why ours differ.\n{_END}")


def _kept_comparison(path: str) -> str:
  """The hand-written comparison section of an existing combined file (kept on rewrite)."""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
    i, j = text.find(_BEGIN), text.find(_END)
    if i >= 0 and j > i:
      return text[i:j + len(_END)]
  return _TODO


def write_combined(results_dir: str, tables: dict, seed: int) -> str:
  path = os.path.join(results_dir, "reference_models.md")
  comparison = _kept_comparison(path)
  parts = [f"<!-- produced by: python experiments/reference_models.py --suite SUITE for SUITE in "
           f"{' '.join(tables)} (seed {seed}) on {time.strftime('%Y-%m-%d')}; the comparison "
           f"section between its markers is hand-written and kept on rewrite -->\n",
           "# LiRA and RMIA with many reference models\n",
           "Every number is from `python experiments/reference_models.py --suite <dataset>` "
           "on this project's 2-core CPU machine (no GPU). Higher score = member; TPR at x% "
           "FPR is the highest TPR whose empirical FPR is at most x%.\n"]
  for suite, tab in tables.items():
    parts.append(tab)
    parts.append(f"![ROC {suite}](reference_models_{suite}_roc.png) "
                 f"([plot](reference_models_{suite}_roc.png))\n")
  parts.append("## Comparison with the published results\n")
  parts.append(comparison + "\n")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


# ---------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------


def _load(path):
  with open(path) as f:
    return json.load(f)


def _parse_counts(text):
  try:
    counts = sorted({int(v) for v in text.split(",") if v.strip()})
  except ValueError:
    raise SystemExit(f"--num-reference: expected comma-separated even integers, got {text!r}")
  if not counts or any(c < 2 or c % 2 for c in counts):
    raise SystemExit(f"--num-reference: expected even integers >= 2, got {text!r}")
  return counts


def main(argv=None):
  from mia_jax.audit import AuditConfig, run_audit
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", choices=sorted(SUITES), required=True)
  p.add_argument("--only", default=None,
                 help="comma-separated run names within the suite (e.g. mnist_ref16)")
  p.add_argument("--out", default=os.path.join("runs", "experiments"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
  p.add_argument("--num-reference", default=None,
                 help="comma-separated reference-model counts (default: 16,64; smoke: 4)")
  args = p.parse_args(argv)
  counts = (_parse_counts(args.num_reference) if args.num_reference is not None
            else list(SUITES[args.suite]["num_reference"]))
  runs = run_configs(args.suite, counts, args.seed)
  selected = set(args.only.split(",")) if args.only else set(runs)
  unknown = selected - set(runs)
  if unknown:
    raise SystemExit(f"--only: unknown run(s) {sorted(unknown)}; this suite has {list(runs)}")
  results, run_dirs = {}, {}
  for name, kwargs in runs.items():
    out = os.path.join(args.out, args.suite, name)
    done = os.path.join(out, "results.json")
    cfg = AuditConfig(seed_streams=SEED_STREAMS, **kwargs)
    if os.path.exists(done):  # finished runs are reused, also when not selected
      saved = _load(done)
      if not config_matches(saved["config"], cfg):
        raise SystemExit(
            f"[{name}] {done} was produced with another configuration than this script's; "
            f"move it away (or use another --out) to rerun")
      results[name], run_dirs[name] = saved, out
      if name in selected:
        print(f"[{name}] already finished, reusing {done}", flush=True)
      continue
    if name not in selected:
      continue
    t0 = time.time()
    results[name] = run_audit(cfg, out, log=lambda s, n=name: print(f"[{n}] {s}", flush=True))
    run_dirs[name] = out
    print(f"[{name}] done in {time.time() - t0:.0f}s", flush=True)

  os.makedirs(args.results_dir, exist_ok=True)
  tab = suite_table(args.suite, results, run_dirs)
  cmd = f"python experiments/reference_models.py --suite {args.suite}"
  if args.num_reference is not None:
    cmd += f" --num-reference {args.num_reference}"
  md = os.path.join(args.results_dir, f"reference_models_{args.suite}.md")
  with open(md, "w") as f:
    f.write(f"<!-- produced by: {cmd} (seed {args.seed}) on {time.strftime('%Y-%m-%d')} -->\n\n")
    f.write(tab)
  print(tab)

  curves = {}
  for name, d in run_dirs.items():
    key = "shared" if name.endswith("_shared") else int(name.rsplit("_ref", 1)[1])
    curves[key] = roc_curves(d, None if key == "shared" else REFERENCE_ATTACKS + ("loss",))
  if curves:
    png = os.path.join(args.results_dir, f"reference_models_{args.suite}_roc.png")
    plot_roc(curves, png, f"{args.suite}: log-log ROC (seed {args.seed})")
    print(f"wrote {md} and {png}", flush=True)

  if args.suite in REAL_SUITES:
    tables = {}
    for s in REAL_SUITES:
      if s == args.suite:
        tables[s] = tab
        continue
      res, dirs = {}, {}
      folder = os.path.join(args.out, s)
      if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
          # Only this script's runs: the folder may also hold other experiments' runs
          # (experiments/stolen_memories.py writes to <out>/mnist as well).
          if not re.fullmatch(rf"{s}_(shared|ref\d+)", name):
            continue
          f = os.path.join(folder, name, "results.json")
          if os.path.exists(f):
            res[name], dirs[name] = _load(f), os.path.join(folder, name)
      if res:
        tables[s] = suite_table(s, res, dirs)
    print(f"wrote {write_combined(args.results_dir, tables, args.seed)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
