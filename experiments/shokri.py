"""Reproduction of Shokri et al., "Membership Inference Attacks Against Machine Learning
Models" (IEEE S&P 2017): mitigation table, per-class precision, prediction-uncertainty
CDFs, shadow-model count and data source, and DP-SGD against the DP bounds.

Every run is one `mia_jax.audit.run_audit` (the same pipeline as `mia-jax audit`) with the
options listed in `base_recipe` / `SUITE_PLANS` below; nothing is tuned per row.

Usage (from the repository root; Location needs ../shared/data or $MIA_JAX_DATA):

  python experiments/shokri.py --suite table3    # Table III: mitigations (Location, Purchase-100*)
  python experiments/shokri.py --suite fig11     # Fig. 11: per-class precision (Purchase-2..100*)
  python experiments/shokri.py --suite fig12     # Fig. 12: uncertainty/accuracy CDFs (fig11 runs)
  python experiments/shokri.py --suite shadows   # precision vs #shadows and shadow data source
  python experiments/shokri.py --suite dp        # DP-SGD epsilon sweep against the bounds
  python experiments/shokri.py --suite all
  python experiments/shokri.py --suite table3 --smoke   # tiny synthetic data, seconds (tests)

  (*) Purchase-100 is not available offline: "purchase_like" is the seeded synthetic
  stand-in of mia_jax.data.purchase_like (binary records around random class prototypes,
  the construction the paper used to label Purchase), not the real dataset.

Measured on the 2-core CPU development machine (shared with other jobs, so upper
estimates): one base run (MLP [128], 1000 members, 60 epochs, 4 shadow models) takes
~45 s on Location and ~50 s on Purchase-100*; model-synthesized shadow data on Location
~220 s; a DP-SGD run of the dp suite (target, 8 LiRA reference, 4 shadow and the
white-box shadow models all with per-example clipping) ~730 s. Totals, roughly: table3
~17 min, fig11 ~4 min, shadows ~20 min, dp ~80 min.

Runs live in <out>/shokri-seed<S>/<name>/ (results.json, scores.npz; --smoke:
<out>/shokri-smoke-seed<S>/) and are shared between suites (e.g. fig12 reuses fig11's
runs, the "no mitigation" row of table3 is the "real, 4 shadows" row of shadows). A
finished run is reused; one whose stored configuration differs from the current recipe
is an error (delete it or use another --out). Markdown tables go to
<results-dir>/shokri_<suite>.md (default experiments/results/) with the reproducing
command at the top, plots to <results-dir>/shokri_<suite>.png (fig11, fig12, shadows, dp).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# The stages of these runs draw their seeds as runs did before named streams
# (mia_jax.streams, "offsets"), so the numbers in experiments/RESULTS.md reproduce
# exactly; switch to "named" when every suite is rerun.
SEED_STREAMS = "offsets"
DATA = os.environ.get("MIA_JAX_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
LOCATION = os.path.join(DATA, "location.npz")
MNIST = os.path.join(DATA, "mnist.npz")

SUITES = ("table3", "fig11", "fig12", "shadows", "dp")

# Attacks of every non-DP run: the Shokri attack, the loss baseline, and the signals the
# figures need (score:entropy, score:confidence, score:correctness). The threshold attacks
# cost nothing beyond the target's forward pass.
COMMON_ATTACKS = ("shokri", "loss", "confidence", "entropy", "correctness")
DP_ATTACKS = ("loss", "shokri", "lira", "stolen-memories")

# Table III rows: (label, run-name suffix, AuditConfig overrides). "" = the base run.
MITIGATIONS = (
    ("no mitigation", "", {}),
    ("top-3 classes", "top3", {"defenses": ("top-k=3",)}),
    ("top-1 class", "top1", {"defenses": ("top-k=1",)}),
    ("top-1 class, label only", "label", {"defenses": ("label-only",)}),
    ("rounding d=3", "round3", {"defenses": ("round=3",)}),
    ("rounding d=1", "round1", {"defenses": ("round=1",)}),
    ("temperature t=5", "temp5", {"defenses": ("temperature=5",)}),
    ("temperature t=20", "temp20", {"defenses": ("temperature=20",)}),
    ("L2 lambda=1e-4", "l2_1e-4", {"weight_decay": 1e-4}),
    ("L2 lambda=1e-3", "l2_1e-3", {"weight_decay": 1e-3}),
    ("L2 lambda=1e-2", "l2_1e-2", {"weight_decay": 1e-2}),
)

# Shadow data sources: (label, run-name suffix, overrides). "" = the base run ("real").
SOURCES = (
    ("real", "", {}),
    ("noisy 10%", "src_noisy10", {"shadow_source": "noisy", "shadow_noise": 0.1}),
    ("noisy 20%", "src_noisy20", {"shadow_source": "noisy", "shadow_noise": 0.2}),
    ("marginals", "src_marginals", {"shadow_source": "marginals"}),
    ("model-synthesized", "src_synthetic", {"shadow_source": "synthetic"}),
)

# DP-SGD trains one model at a time (per-example gradients), and every DP run trains the
# target, its reference, shadow and white-box shadow models with it: the DP suite uses a
# shorter recipe and fewer attacker models so that seven epsilons fit a 2-core CPU. Its
# epsilon = inf row uses the same recipe without noise, so the suite compares with itself.
DP_OVERRIDES = {False: {"epochs": 30, "num_reference": 4, "num_shadow": 2}, True: {}}

FULL = {
    "table3_datasets": ("location", "purchase100", "mnist"),
    "fig11_classes": (2, 10, 20, 50, 100),
    "num_shadows": (1, 2, 4, 8, 16, 32),
    "shadow_count_datasets": ("location",),
    "source_datasets": ("purchase10", "location"),
    "dp_dataset": "location",
    "epsilons": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None),
}
SMOKE = {
    "table3_datasets": ("location",),
    "fig11_classes": (5, 10),
    "num_shadows": (1, 2),
    "shadow_count_datasets": ("location",),
    "source_datasets": ("location",),
    "dp_dataset": "location",
    "epsilons": (1.0, None),
}
BASE_SHADOWS = {False: 4, True: 2}


def base_recipe(key: str, smoke: bool) -> dict:
  """AuditConfig keyword arguments of a dataset's base run. ``key``: "location" or
  "purchase<K>". In smoke mode every key maps to tiny purchase_like data (Location stands
  in as 10 classes), so the smoke suites need no files."""
  if smoke:
    k = 10 if key in ("location", "mnist") else int(key[len("purchase"):])
    return dict(dataset="purchase_like",
                dataset_options={"num_classes": k, "num_features": 32, "num_train": 200,
                                 "num_test": 200, "flip": 0.3, "seed": 0},
                model="mlp", model_options={"widths": [16]}, target_size=60, epochs=4,
                batch_size=32, learning_rate=1e-2, attacks=COMMON_ATTACKS,
                num_shadow=BASE_SHADOWS[True], num_reference=2)
  recipe = dict(model="mlp", model_options={"widths": [128]}, target_size=1000, epochs=60,
                batch_size=64, learning_rate=1e-3, attacks=COMMON_ATTACKS,
                num_shadow=BASE_SHADOWS[False])
  if key == "location":  # 5010 records, 446 binary features, 30 classes
    return dict(dataset=LOCATION, **recipe)
  if key == "mnist":  # 70000 28x28 digits; the same MLP recipe on flattened pixels
    return dict(dataset=MNIST, **recipe)
  if key.startswith("purchase"):
    # flip 0.72: the record noise at which Purchase-100's 1000-member target reaches about
    # the paper's test accuracy (~0.66); the same data with K = 2..100 prototypes.
    k = int(key[len("purchase"):])
    return dict(dataset="purchase_like",
                dataset_options={"num_classes": k, "num_features": 600, "num_train": 3000,
                                 "num_test": 2000, "flip": 0.72, "seed": 0}, **recipe)
  raise ValueError(f"unknown dataset key {key!r}")


def dataset_label(key: str, smoke: bool) -> str:
  if smoke:
    return f"{key} (smoke stand-in: tiny purchase_like)"
  if key == "location":
    return "Location (30 classes)"
  if key == "mnist":
    return "MNIST (10 classes)"
  return f"Purchase-{key[len('purchase'):]} (purchase_like synthetic stand-in)"


def _eps_name(eps) -> str:
  return "inf" if eps is None else f"{eps:g}"


def suite_plan(suite: str, smoke: bool) -> dict[str, dict]:
  """Ordered {run name: AuditConfig kwargs} of a suite. Run names are shared between
  suites; a name always means the same configuration."""
  s = SMOKE if smoke else FULL
  runs: dict[str, dict] = {}
  if suite == "table3":
    for ds in s["table3_datasets"]:
      for _, suffix, over in MITIGATIONS:
        runs[f"{ds}_{suffix}" if suffix else ds] = {**base_recipe(ds, smoke), **over}
  elif suite in ("fig11", "fig12"):
    for k in s["fig11_classes"]:
      runs[f"purchase{k}"] = base_recipe(f"purchase{k}", smoke)
  elif suite == "shadows":
    for ds in s["shadow_count_datasets"]:
      for n in s["num_shadows"]:
        name = ds if n == BASE_SHADOWS[smoke] else f"{ds}_shadows{n}"
        runs[name] = {**base_recipe(ds, smoke), "num_shadow": n}
    for ds in s["source_datasets"]:
      for _, suffix, over in SOURCES:
        runs[f"{ds}_{suffix}" if suffix else ds] = {**base_recipe(ds, smoke), **over}
  elif suite == "dp":
    ds = s["dp_dataset"]
    for eps in s["epsilons"]:
      kw = {**base_recipe(ds, smoke), "attacks": DP_ATTACKS, **DP_OVERRIDES[smoke]}
      if eps is not None:  # inf: ordinary (non-private) training, same recipe
        kw["dp_epsilon"] = float(eps)
      runs[f"{ds}_dp_eps{_eps_name(eps)}"] = kw
  else:
    raise ValueError(f"unknown suite {suite!r}")
  return runs


# -- running --------------------------------------------------------------------------------

def _normalized(cfg_dict: dict) -> dict:
  from mia_jax.audit import saved_config
  d = saved_config(cfg_dict)
  # The data directory may move ($MIA_JAX_DATA, another checkout): compare file names only.
  if isinstance(d.get("dataset"), str) and d["dataset"].endswith(".npz"):
    d["dataset"] = os.path.basename(d["dataset"])
  return d


def _config_diff(stored: dict, current: dict) -> list[str]:
  a, b = _normalized(stored), _normalized(current)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def run_dir(out: str, smoke: bool, seed: int, name: str) -> str:
  return os.path.join(out, f"shokri{'-smoke' if smoke else ''}-seed{seed}", name)


def execute(plan: dict[str, dict], *, out: str, smoke: bool, seed: int, selected=None,
            log=print) -> dict[str, dict]:
  """Runs (or reuses) the planned runs; returns {name: results} of the finished ones.
  Runs outside ``selected`` are not started, but their finished results are returned."""
  from mia_jax.audit import AuditConfig, run_audit
  results = {}
  todo = [n for n in plan if selected is None or n in selected]
  for name, kwargs in plan.items():
    rdir = run_dir(out, smoke, seed, name)
    done = os.path.join(rdir, "results.json")
    cfg = AuditConfig(seed=seed, seed_streams=SEED_STREAMS, **kwargs) if name in todo else None
    if os.path.exists(done):
      with open(done) as f:
        r = json.load(f)
      current = cfg.to_dict() if cfg is not None else {**kwargs, "seed": seed, "seed_streams": SEED_STREAMS}
      diff = _config_diff(r["config"], current)
      if diff:
        msg = (f"[{name}] {rdir} holds a finished run with another configuration (differs "
               f"in {diff}); delete it or pass another --out")
        if cfg is not None:
          raise SystemExit(msg)
        log(msg + " -- left out of the tables")
        continue
      results[name] = r
      if cfg is not None:
        log(f"[{name}] already finished, reusing {done}")
      continue
    if cfg is None:
      continue
    log(f"[{name}] starting ({todo.index(name) + 1}/{len(todo)} of this invocation)")
    t0 = time.time()
    results[name] = run_audit(cfg, rdir, log=lambda s, n=name: log(f"[{n}] {s}"))
    log(f"[{name}] done in {time.time() - t0:.0f}s")
  return results


# -- measurements from a finished run -------------------------------------------------------

def load_scores(rdir: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(rdir, "scores.npz")) as z:
    return {k: z[k] for k in z.files}


def decision_metrics(logits: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
  """The attack model's own decision (member iff logit >= 0, i.e. probability >= 0.5)."""
  pred = np.asarray(logits) >= 0.0
  m = np.asarray(is_member, bool)
  tp = int(np.sum(pred & m))
  return {"threshold": 0.0, "accuracy": float(np.mean(pred == m)),
          "precision": tp / int(pred.sum()) if pred.any() else float("nan"),
          "recall": tp / int(m.sum()) if m.any() else float("nan")}


def shokri_decision(result: dict, rdir: str) -> dict[str, float]:
  """results["attacks"]["shokri"]["decision"]; recomputed from scores.npz for runs that
  predate it."""
  d = result["attacks"]["shokri"].get("decision")
  if d is None:
    sc = load_scores(rdir)
    d = decision_metrics(sc["score:shokri"], sc["is_member"])
  # precision is None (JSON) when the attack calls no example a member
  return {k: (float("nan") if v is None else v) for k, v in d.items()}


def per_class_stats(sc: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
  """Per class c (Fig. 11): precision of the Shokri decision on the evaluation examples of
  class c (NaN where it predicts no member), c's share of the target's training set, and
  the target's train - test accuracy on c (NaN where c has no member or no non-member)."""
  m = sc["is_member"].astype(bool)
  y = sc["labels"]
  pred = sc["score:shokri"] >= 0.0
  correct = sc["score:correctness"] > 0.5
  out = {k: np.full(num_classes, np.nan) for k in ("precision", "fraction", "gap", "recall")}
  for c in range(num_classes):
    in_c = y == c
    pc = pred & in_c
    if pc.any():
      out["precision"][c] = np.sum(pc & m) / np.sum(pc)
    if (m & in_c).any():
      out["recall"][c] = np.sum(pc & m) / np.sum(m & in_c)
    out["fraction"][c] = np.sum(m & in_c) / max(int(m.sum()), 1)
    if (m & in_c).any() and (~m & in_c).any():
      out["gap"][c] = correct[m & in_c].mean() - correct[~m & in_c].mean()
  return out


def _nanmean(v) -> float:
  v = np.asarray(v, float)
  return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def pearson(a, b) -> float:
  a, b = np.asarray(a, float), np.asarray(b, float)
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
    return float("nan")
  return float(np.corrcoef(a[ok], b[ok])[0, 1])


def ks_statistic(a, b) -> float:
  """Two-sample Kolmogorov-Smirnov statistic: max |F_a - F_b|."""
  a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
  grid = np.concatenate([a, b])
  fa = np.searchsorted(a, grid, side="right") / a.size
  fb = np.searchsorted(b, grid, side="right") / b.size
  return float(np.max(np.abs(fa - fb)))


def ecdf(v):
  v = np.sort(np.asarray(v, float))
  return v, np.arange(1, v.size + 1) / v.size


def _f(v, digits=3) -> str:
  if v is None:
    return "-"
  v = float(v)
  return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def _total_time(r: dict) -> float:
  return float(sum(r.get("timings", {}).values()))


def _recipe_line(r: dict) -> str:
  c = r["config"]
  return (f"model `{r['model']['name']}` {c['model_options']}, {r['dataset']['num_members']} "
          f"members / {r['dataset']['num_nonmembers']} non-members / "
          f"{r['dataset']['num_auxiliary']} auxiliary, {c['optimizer']} lr {c['learning_rate']}, "
          f"{c['epochs']} epochs, batch {c['batch_size']}, {c['num_shadow']} shadow models")


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# -- suites: tables and plots ----------------------------------------------------------------

def _save_figure(plt, fig, png: str) -> str:
  """Lays out, writes (dpi 120) and closes a figure; returns its path."""
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)
  return png


def render_table3(ctx) -> str:
  lines = ["Attack: Shokri et al. shadow models (per-class attack models); accuracy, precision "
           "and recall are the attack model's own decision (membership probability >= 0.5) "
           "on the balanced evaluation set (members + as many non-members), as in the paper's "
           "Table III. AUC is threshold-free (Shokri and the loss baseline). Defenses act on "
           "what every black-box attack sees (target and the attacker's shadow models); "
           "L2 is the training penalty lambda ||w||^2 / 2. Target test accuracy is the "
           "target's own (undefended) argmax accuracy: the prediction-API defenses leave the "
           "model unchanged (rounding may only create ties in what the API returns).", ""]
  for ds in ctx.sizes["table3_datasets"]:
    base = ctx.results.get(ds)
    lines.append(f"### {dataset_label(ds, ctx.smoke)}\n")
    if base is not None:
      lines.append(_recipe_line(base) + "\n")
    lines.append("| mitigation | target train acc. | target test acc. | attack accuracy | "
                 "attack precision | attack recall | Shokri AUC | loss AUC | run time (s) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for label, suffix, _ in MITIGATIONS:
      name = f"{ds}_{suffix}" if suffix else ds
      r = ctx.results.get(name)
      if r is None:
        lines.append(f"| {label} | not run | | | | | | | |")
        continue
      d = shokri_decision(r, ctx.dir(name))
      lines.append(f"| {label} | {_f(r['target']['train_accuracy'])} | "
                   f"{_f(r['target']['test_accuracy'])} | {_f(d['accuracy'])} | "
                   f"{_f(d['precision'])} | {_f(d['recall'])} | "
                   f"{_f(r['attacks']['shokri']['auc'])} | {_f(r['attacks']['loss']['auc'])} | "
                   f"{_total_time(r):.0f} |")
    lines.append("")
  if not ctx.smoke:
    lines.append("Purchase-100 is not available offline; the Purchase rows use the seeded "
                 "`purchase_like` synthetic (600 binary features, 100 prototype classes), "
                 "not the real Acquire Valued Shoppers data.\n")
  return "\n".join(lines)


def _fig11_data(ctx):
  data = {}
  for k in ctx.sizes["fig11_classes"]:
    name = f"purchase{k}"
    if name in ctx.results:
      k_data = ctx.results[name]["dataset"]["num_classes"]
      data[k] = per_class_stats(load_scores(ctx.dir(name)), k_data)
  return data


def render_fig11(ctx) -> str:
  data = _fig11_data(ctx)
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  cmap = plt.get_cmap("viridis")
  ks = sorted(data)
  for i, k in enumerate(ks):
    d = data[k]
    color = cmap(i / max(len(ks) - 1, 1))
    for ax, x in ((axes[0], d["fraction"]), (axes[1], d["gap"])):
      ax.scatter(x, d["precision"], s=14, color=color, alpha=0.8, label=f"{k} classes")
  axes[0].set_xlabel("fraction of the training set in the class")
  axes[1].set_xlabel("target train - test accuracy on the class")
  for ax in axes:
    ax.set_ylabel("attack precision on the class")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Shokri et al. Fig. 11 (purchase_like stand-in)" + (" [smoke]" if ctx.smoke else ""))
  png = _save_figure(plt, fig, ctx.png("fig11"))

  lines = ["Per class c of the evaluation set (members + as many non-members): precision of "
           "the Shokri decision (members among the examples of class c it calls members), "
           "c's fraction of the target's training set (members with label c / members), and "
           "the target's train - test accuracy on c. Means over classes (NaN-free classes); "
           "r = Pearson correlation over the classes. Data: purchase_like (synthetic "
           "stand-in for Purchase; classes are balanced by construction, so the fraction "
           "only varies through the random member split, far less than in the real data).",
           "", f"Plot: `{os.path.relpath(png, ctx.results_dir)}`.", ""]
  lines.append("| classes | target train acc. | target test acc. | attack accuracy | attack "
               "precision (all) | mean per-class precision | mean gap | r(precision, fraction) "
               "| r(precision, gap) | classes with no predicted member |")
  lines.append("|---|---|---|---|---|---|---|---|---|---|")
  for k in ks:
    d, r = data[k], ctx.results[f"purchase{k}"]
    dec = shokri_decision(r, ctx.dir(f"purchase{k}"))
    cells = [k, _f(r["target"]["train_accuracy"]), _f(r["target"]["test_accuracy"]),
             _f(dec["accuracy"]), _f(dec["precision"]), _f(_nanmean(d["precision"])),
             _f(_nanmean(d["gap"])), _f(pearson(d["precision"], d["fraction"])),
             _f(pearson(d["precision"], d["gap"])), int(np.isnan(d["precision"]).sum())]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  missing = [k for k in ctx.sizes["fig11_classes"] if k not in data]
  if missing:
    lines.append(f"\nNot run yet: {missing} classes.")
  if ks:
    pooled = {c: np.concatenate([data[k][c] for k in ks]) for c in ("precision", "fraction", "gap")}
    lines.append(f"\nPooled over all class counts: r(precision, fraction) = "
                 f"{_f(pearson(pooled['precision'], pooled['fraction']))}, r(precision, gap) = "
                 f"{_f(pearson(pooled['precision'], pooled['gap']))}.")
  if ks:
    lines.append("\n" + _recipe_line(ctx.results[f"purchase{ks[0]}"]) + ".")
  return "\n".join(lines) + "\n"


def render_fig12(ctx) -> str:
  plt = _plt()
  ks = [k for k in ctx.sizes["fig11_classes"] if f"purchase{k}" in ctx.results]
  fig, axes = plt.subplots(2, max(len(ks), 1), figsize=(3.2 * max(len(ks), 1), 6), squeeze=False)
  rows = []
  for j, k in enumerate(ks):
    sc = load_scores(ctx.dir(f"purchase{k}"))
    m = sc["is_member"].astype(bool)
    num_classes = ctx.results[f"purchase{k}"]["dataset"]["num_classes"]
    # Normalized entropy H / log K in [0, 1]; score:entropy = -H (nats). Clip rounding noise.
    h = np.clip(-sc["score:entropy"] / math.log(num_classes), 0.0, 1.0)
    conf = sc["score:confidence"]
    for i, (v, xlabel) in enumerate(((h, "prediction uncertainty (normalized entropy)"),
                                     (conf, "prediction accuracy (true-class probability)"))):
      ax = axes[i, j]
      for sel, lab, col in ((m, "members", "tab:red"), (~m, "non-members", "tab:blue")):
        xs, ys = ecdf(v[sel])
        ax.step(xs, ys, where="post", color=col, label=lab)
      ax.set_xlim(-0.02, 1.02)
      ax.set_ylim(0, 1.01)
      ax.set_xlabel(xlabel, fontsize=8)
      ax.set_ylabel("cumulative fraction", fontsize=8)
      ax.grid(alpha=0.3)
      if i == 0:
        ax.set_title(f"Purchase-{k}*", fontsize=10)
      if j == 0:
        ax.legend(fontsize=8)
    rows.append((k, np.median(h[m]), np.median(h[~m]), ks_statistic(h[m], h[~m]),
                 np.median(conf[m]), np.median(conf[~m]), ks_statistic(conf[m], conf[~m])))
  fig.suptitle("Shokri et al. Fig. 12 (* purchase_like stand-in)"
               + (" [smoke]" if ctx.smoke else ""))
  png = _save_figure(plt, fig, ctx.png("fig12"))
  lines = ["CDFs over the evaluation set of the target's prediction uncertainty (normalized "
           "entropy H(p) / log K of the prediction vector) and prediction accuracy, members "
           "vs non-members. **Prediction accuracy** is defined here as the probability the "
           "target assigns to the true class (`score:confidence`), a continuous version of "
           "the paper's per-record accuracy. KS = two-sample Kolmogorov-Smirnov distance "
           "between the member and non-member distributions. Same runs as fig11 "
           "(purchase_like synthetic stand-in for Purchase).", "",
           f"Plot: `{os.path.relpath(png, ctx.results_dir)}`.", "",
           "| classes | median norm. entropy, members | ... non-members | KS | "
           "median true-class prob., members | ... non-members | KS |",
           "|---|---|---|---|---|---|---|"]
  for k, *v in rows:
    lines.append(f"| {k} | " + " | ".join(_f(x) for x in v) + " |")
  return "\n".join(lines) + "\n"


def _metric_row(r, rdir):
  d = shokri_decision(r, rdir)
  a = r["attacks"]["shokri"]
  return (f"{_f(d['accuracy'])} | {_f(d['precision'])} | {_f(d['recall'])} | {_f(a['auc'])} | "
          f"{_f(a['tpr_at_fpr']['0.001'])}")


def render_shadows(ctx) -> str:
  s, base_n = ctx.sizes, BASE_SHADOWS[ctx.smoke]
  lines = ["Shokri attack vs the number of shadow models and the source of the shadow "
           "training data. Accuracy / precision / recall: the attack model's own decision "
           "(probability >= 0.5) on the balanced evaluation set; AUC and TPR@0.1%FPR are "
           "threshold-free. Target and recipe are the same in every row of a table.", ""]
  counts = {}
  for ds in s["shadow_count_datasets"]:
    lines += [f"### Number of shadow models: {dataset_label(ds, ctx.smoke)}\n",
              "| shadow models | attack accuracy | precision | recall | AUC | TPR@0.1%FPR | "
              "run time (s) |",
              "|---|---|---|---|---|---|---|"]
    counts[ds] = []
    for n in s["num_shadows"]:
      name = ds if n == base_n else f"{ds}_shadows{n}"
      r = ctx.results.get(name)
      if r is None:
        lines.append(f"| {n} | not run | | | | | |")
        continue
      d = shokri_decision(r, ctx.dir(name))
      counts[ds].append((n, d["precision"], r["attacks"]["shokri"]["auc"], d["accuracy"]))
      lines.append(f"| {n} | {_metric_row(r, ctx.dir(name))} | {_total_time(r):.0f} |")
    lines.append("")
  sources = {}
  for ds in s["source_datasets"]:
    lines += [f"### Shadow data source: {dataset_label(ds, ctx.smoke)}\n",
              "| source | attack accuracy | precision | recall | AUC | TPR@0.1%FPR | per-class "
              "attack models | synthesis (emitted / attempted, mean / median queries per "
              "emitted record) |",
              "|---|---|---|---|---|---|---|---|"]
    sources[ds] = []
    for label, suffix, _ in SOURCES:
      name = f"{ds}_{suffix}" if suffix else ds
      r = ctx.results.get(name)
      if r is None:
        lines.append(f"| {label} | not run | | | | | | |")
        continue
      syn = r["attacks"]["shokri"].get("synthesis")
      syn_s = (f"{syn['emitted']} / {syn['attempted']}, {syn['queries_mean']:.0f} / "
               f"{syn['queries_median']:.0f}") if syn else ""
      d = shokri_decision(r, ctx.dir(name))
      sources[ds].append((label, d["precision"], r["attacks"]["shokri"]["auc"]))
      pc = r["attacks"]["shokri"].get("per_class", True)
      lines.append(f"| {label} | {_metric_row(r, ctx.dir(name))} | {'yes' if pc else 'no'} | "
                   f"{syn_s} |")
    lines.append("")
  for ds in dict.fromkeys(s["shadow_count_datasets"] + s["source_datasets"]):
    if ds in ctx.results:
      lines.append(f"Recipe ({ds}): " + _recipe_line(ctx.results[ds]) + " (the base run; "
                   "the other rows change only the number of shadow models or their data).\n")

  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ds, pts in counts.items():
    if pts:
      n, p, auc, _ = zip(*pts)
      axes[0].plot(n, p, "o-", label=f"{ds}: precision")
      axes[0].plot(n, auc, "s--", label=f"{ds}: AUC")
  axes[0].set_xscale("log", base=2)
  shown = sorted({n for pts in counts.values() for n, *_ in pts})
  if shown:
    axes[0].set_xticks(shown)
    axes[0].set_xticklabels([str(n) for n in shown])
    axes[0].minorticks_off()
  axes[0].set_xlabel("number of shadow models")
  axes[0].set_ylabel("attack precision / AUC")
  axes[0].set_title("vs number of shadow models")
  width = 0.8 / max(len(sources), 1)
  labels = [lab for lab, _, _ in SOURCES]
  for i, (ds, pts) in enumerate(sources.items()):
    by = {lab: p for lab, p, _ in pts}
    xs = np.arange(len(labels)) + i * width
    axes[1].bar(xs, [by.get(lab, np.nan) for lab in labels], width, label=f"{ds}: precision")
  axes[1].set_xticks(np.arange(len(labels)) + width * (len(sources) - 1) / 2)
  axes[1].set_xticklabels(labels, rotation=20, fontsize=8)
  axes[1].set_ylabel("attack precision")
  axes[1].set_title("vs shadow data source")
  for ax in axes:
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  png = _save_figure(plt, fig, ctx.png("shadows"))
  lines.append(f"Plot: `{os.path.relpath(png, ctx.results_dir)}`.\n")
  return "\n".join(lines)


def dp_rows(ctx) -> list[dict]:
  """One row per epsilon of the dp suite that has finished."""
  from mia_jax import dp as mdp
  s = ctx.sizes
  rows = []
  for eps in s["epsilons"]:
    name = f"{s['dp_dataset']}_dp_eps{_eps_name(eps)}"
    r = ctx.results.get(name)
    if r is None:
      rows.append({"eps": eps, "name": name, "r": None})
      continue
    delta = float(r["config"].get("delta", 1e-5))
    info = r.get("dp") or {}
    row = {"eps": eps, "name": name, "r": r, "delta": delta,
           "noise_multiplier": info.get("noise_multiplier"),
           "accounted_epsilon": (info.get("epsilon") or [None])[0],
           "decision": shokri_decision(r, ctx.dir(name))}
    if eps is None:
      row.update(tight=1.0, yeom=1.0, tpr_bound=1.0)
    else:
      row.update(tight=mdp.tight_accuracy_bound(eps, delta),
                 yeom=min(1.0, mdp.yeom_accuracy_bound(eps, delta)),
                 tpr_bound=float(mdp.tpr_bound(0.001, eps, delta)))
    rows.append(row)
  return rows


def render_dp(ctx) -> str:
  rows = dp_rows(ctx)
  attacks = [a for a in DP_ATTACKS]
  lines = [f"DP-SGD epsilon sweep on {dataset_label(ctx.sizes['dp_dataset'], ctx.smoke)}: "
           "target, shadow, reference and white-box proxy models all trained with DP-SGD "
           "(noise calibrated to epsilon; same recipe, clip norm and delta in every row); "
           "inf = ordinary training. Balanced accuracy = best threshold (so an upper "
           "estimate of what a calibrated attacker gets); bounds for a balanced prior: tight "
           "(e^eps + delta) / (1 + e^eps) and Yeom et al.'s (e^eps + delta) / 2 clipped at "
           "1; TPR bound at FPR 0.1%: min(1, e^eps FPR + delta, ...) "
           "(`mia_jax.dp.tpr_bound`). Shokri precision / recall: the attack model's own "
           "decision. Caveat: the bounds hold for the expected TPR / accuracy of a test fixed "
           "in advance, while the measured numbers pick the best threshold on the evaluation "
           "set itself; with n non-members, 'TPR at 0.1% FPR' admits floor(0.001 n) false "
           "positives (1 of 1000), so its true FPR is poorly determined and a measured TPR a "
           "little above the bound is sampling noise, not a violation.", ""]
  head = ("| epsilon | accounted epsilon | noise mult. | target train acc. | target test acc. | "
          + " | ".join(f"{a} bal. acc." for a in attacks)
          + " | tight bound | Yeom bound |")
  lines += [head, "|" + "---|" * (7 + len(attacks))]
  for row in rows:
    eps_s = "inf" if row["eps"] is None else f"{row['eps']:g}"
    r = row["r"]
    if r is None:
      lines.append(f"| {eps_s} | not run |" + " |" * (5 + len(attacks)))
      continue
    nm, acc_eps = row["noise_multiplier"], row["accounted_epsilon"]
    lines.append(f"| {eps_s} | {_f(acc_eps, 3) if isinstance(acc_eps, float) else '-'} | "
                 f"{_f(nm, 3) if nm is not None else '-'} | "
                 f"{_f(r['target']['train_accuracy'])} | {_f(r['target']['test_accuracy'])} | "
                 + " | ".join(_f(r["attacks"][a]["balanced_accuracy"]) if a in r["attacks"]
                              else "-" for a in attacks)
                 + f" | {_f(row['tight'])} | {_f(row['yeom'])} |")
  lines += ["", "| epsilon | " + " | ".join(f"{a} AUC | {a} TPR@0.1%FPR" for a in attacks)
            + " | TPR bound @0.1%FPR | Shokri precision | Shokri recall | "
            "stolen-memories calibrated precision / recall |",
            "|" + "---|" * (5 + 2 * len(attacks))]
  for row in rows:
    r = row["r"]
    if r is None:
      continue
    eps_s = "inf" if row["eps"] is None else f"{row['eps']:g}"
    cells = []
    for a in attacks:
      e = r["attacks"].get(a)
      cells += [_f(e["auc"]), _f(e["tpr_at_fpr"]["0.001"])] if e else ["-", "-"]
    cal = r["attacks"].get("stolen-memories", {}).get("calibrated")
    cal_s = f"{_f(cal['precision'])} / {_f(cal['recall'])}" if cal else "-"
    lines.append(f"| {eps_s} | " + " | ".join(cells) + f" | {_f(row['tpr_bound'])} | "
                 f"{_f(row['decision']['precision'])} | {_f(row['decision']['recall'])} | "
                 f"{cal_s} |")
  done = [row for row in rows if row["r"] is not None]
  if done:
    r0 = done[0]["r"]
    c = r0["config"]
    lines.append(f"\nRecipe: {_recipe_line(r0)}, {c.get('num_reference')} reference models; "
                 f"DP: clip norm {c.get('clip_norm', '-')}, delta {c.get('delta', '-')}. "
                 f"Run times (s): " + ", ".join(
                     f"{'inf' if row['eps'] is None else format(row['eps'], 'g')}: "
                     f"{_total_time(row['r']):.0f}" for row in done) + ".")

  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  finite = [row for row in done if row["eps"] is not None]
  inf_row = next((row for row in done if row["eps"] is None), None)
  eps_vals = [row["eps"] for row in finite]
  lo = min(eps_vals + [0.5]) / 1.5
  hi = max(eps_vals + [16.0]) * 1.5
  inf_x = hi * 2.0  # where "inf" is drawn, right of a break
  grid = np.geomspace(lo, hi, 200)
  delta = done[0]["delta"] if done else 1e-5
  from mia_jax import dp as mdp
  axes[0].plot(grid, [mdp.tight_accuracy_bound(e, delta) for e in grid], "k-",
               label="tight bound (e^eps+delta)/(1+e^eps)")
  axes[0].plot(grid, [min(1.0, mdp.yeom_accuracy_bound(e, delta)) for e in grid], "k--",
               label="Yeom bound (e^eps+delta)/2, clipped")
  axes[1].plot(grid, [mdp.tpr_bound(0.001, e, delta) for e in grid], "k-",
               label="TPR bound at FPR 0.1%")
  for a in attacks:
    for ax, get in ((axes[0], lambda e: e["balanced_accuracy"]),
                    (axes[1], lambda e: e["tpr_at_fpr"]["0.001"])):
      pts = [(row["eps"], get(row["r"]["attacks"][a])) for row in finite
             if a in row["r"]["attacks"]]
      line = None
      if pts:
        (line,) = ax.plot(*zip(*pts), "o-", label=a)
      if inf_row is not None and a in inf_row["r"]["attacks"]:
        ax.plot([inf_x], [get(inf_row["r"]["attacks"][a])], "D",
                color=line.get_color() if line is not None else None,
                label=None if line is not None else f"{a} (inf)")
  for ax, ylabel in ((axes[0], "attack balanced accuracy"), (axes[1], "TPR at 0.1% FPR")):
    ax.set_xscale("log")
    ticks = [e for e in (0.5, 1, 2, 4, 8, 16) if lo <= e <= hi] + [inf_x]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks[:-1]] + ["inf"])
    ax.axvline(np.sqrt(hi * inf_x), color="gray", lw=0.8, ls=":")
    ax.set_xlabel("epsilon (delta %g)" % delta)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylim(0.45, 1.02)
  axes[1].set_ylim(-0.02, 1.02)
  fig.suptitle("Membership inference vs DP-SGD" + (" [smoke]" if ctx.smoke else ""))
  png = _save_figure(plt, fig, ctx.png("dp"))
  lines.append(f"\nPlot: `{os.path.relpath(png, ctx.results_dir)}`.\n")
  return "\n".join(lines)


RENDER = {"table3": render_table3, "fig11": render_fig11, "fig12": render_fig12,
          "shadows": render_shadows, "dp": render_dp}


class Context:
  def __init__(self, results, *, out, smoke, seed, results_dir):
    self.results, self.out, self.smoke, self.seed = results, out, smoke, seed
    self.results_dir = results_dir
    self.sizes = SMOKE if smoke else FULL

  def dir(self, name):
    return run_dir(self.out, self.smoke, self.seed, name)

  def png(self, suite):
    return os.path.join(self.results_dir, f"shokri_{suite}.png")


class jax_compilation_cache:
  """Context manager: JAX's persistent compilation cache in ``path`` (None: unchanged).

  Each run_audit builds fresh model objects, so the library's in-process caches of
  compiled functions (keyed on the model object) miss from one run to the next; the
  persistent cache is keyed on the computation, so runs with the same shapes (the rows
  of a table) reuse the compiled code. Restores the previous settings on exit.
  """

  KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    if not self.path:
      return self
    import jax
    self.previous = {k: getattr(jax.config, k) for k in self.KEYS}
    os.makedirs(self.path, exist_ok=True)
    for k, v in zip(self.KEYS, (os.path.abspath(self.path), 0.0, 0)):
      jax.config.update(k, v)
    self._reset()
    return self

  def __exit__(self, *exc):
    if not self.path:
      return False
    import jax
    for k, v in self.previous.items():
      jax.config.update(k, v)
    self._reset()
    return False

  @staticmethod
  def _reset():
    try:  # private API: forget the cache object so that the new setting takes effect
      from jax._src import compilation_cache
      compilation_cache.reset_cache()
    except Exception:  # noqa: BLE001 - only an optimisation
      pass


def command_line(suite: str, args) -> str:
  cmd = f"python experiments/shokri.py --suite {suite}"
  if args.smoke:
    cmd += " --smoke"
  if args.seed:
    cmd += f" --seed {args.seed}"
  return cmd


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", choices=SUITES + ("all",), required=True)
  p.add_argument("--only", default=None,
                 help="comma-separated run names within the suite (see --list); the others are "
                      "not started, but their finished results still go in the tables")
  p.add_argument("--out", default=os.path.join("runs", "experiments"))
  p.add_argument("--results-dir", default=None,
                 help="where the markdown and PNG files go (default experiments/results; "
                      "--smoke: <out>/shokri-smoke-seed<S>/results)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true", help="tiny built-in data and recipes (tests)")
  p.add_argument("--list", action="store_true", help="print the suite's runs and exit")
  p.add_argument("--jax-cache", default=None,
                 help="JAX persistent compilation cache directory (default <out>/jax-cache; "
                      "'' disables it)")
  args = p.parse_args(argv)
  suites = SUITES if args.suite == "all" else (args.suite,)
  results_dir = args.results_dir or (
      os.path.join(args.out, f"shokri-smoke-seed{args.seed}", "results") if args.smoke
      else os.path.join(HERE, "results"))
  if args.list:
    for suite in suites:
      for name, kw in suite_plan(suite, args.smoke).items():
        print(f"{suite}\t{name}\t{kw}")
    return 0
  selected = set(args.only.split(",")) if args.only else None
  if selected is not None:
    known = set().union(*(suite_plan(s, args.smoke) for s in suites))
    unknown = sorted(selected - known)
    if unknown:
      p.error(f"--only: unknown run(s) {unknown}; see --list")
  if not args.smoke and any(s in ("table3", "dp", "shadows") for s in suites) \
     and not os.path.exists(LOCATION):
    print(f"warning: {LOCATION} not found (set MIA_JAX_DATA); Location runs will fail",
          flush=True)
  os.makedirs(results_dir, exist_ok=True)
  cache = os.path.join(args.out, "jax-cache") if args.jax_cache is None else args.jax_cache
  with jax_compilation_cache(cache or None):
    for suite in suites:
      run_suite(suite, args, results_dir, selected)
  return 0


def run_suite(suite, args, results_dir, selected) -> None:
  t0 = time.time()
  plan = suite_plan(suite, args.smoke)
  print(f"== suite {suite}: {len(plan)} runs ==", flush=True)
  results = execute(plan, out=args.out, smoke=args.smoke, seed=args.seed, selected=selected,
                    log=lambda s: print(s, flush=True))
  ctx = Context(results, out=args.out, smoke=args.smoke, seed=args.seed, results_dir=results_dir)
  body = RENDER[suite](ctx)
  md = os.path.join(results_dir, f"shokri_{suite}.md")
  with open(md, "w") as f:
    f.write(f"<!-- produced by: {command_line(suite, args)} (seed {args.seed}) on "
            f"{time.strftime('%Y-%m-%d')} -->\n\n")
    f.write(f"## Shokri et al. (S&P 2017): {suite}\n\n")
    f.write(f"Reproduce: `{command_line(suite, args)}` ({len(results)}/{len(plan)} runs "
            f"finished; this invocation took {time.time() - t0:.0f}s).\n\n")
    f.write(body)
  print(body, flush=True)
  print(f"wrote {md}", flush=True)


if __name__ == "__main__":
  sys.exit(main())
