"""Stolen Memories experiments (issue 3): per-layer and meta white-box attacks vs black-box
baselines on real data, through the same `run_audit` pipeline as `mia-jax audit`.

Usage (from the repository root; needs ../shared/data for the real datasets):

  python experiments/stolen_memories.py --suite mnist      # MLP + small CNN, incl. ~1% gap
  python experiments/stolen_memories.py --suite location
  python experiments/stolen_memories.py --suite lfw
  python experiments/stolen_memories.py --suite nasr       # Nasr et al. on the MLP targets
  python experiments/stolen_memories.py --suite smoke      # digits, seconds (used in tests)

Each run writes runs/<suite>/<name>/results.json and scores.npz; the suite's markdown
table is written to experiments/results/stolen_memories_<suite>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("MIA_JAX_DATA", os.path.join(HERE, "..", "..", "shared", "data"))


def _npz(name):
  return os.path.join(DATA, name)


CNN_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy", "correctness",
               "stolen-memories")

# name -> AuditConfig keyword arguments. Every setting is visible here; nothing is tuned
# per attack.
SUITES = {
    "smoke": {
        "digits_mlp": dict(dataset="digits", model="mlp", epochs=30),
    },
    "mnist": {
        # Overfit MLP: small training set, many epochs.
        "mnist_mlp_overfit": dict(dataset=_npz("mnist.npz"), model="mlp",
                                  model_options={"widths": [512, 512]}, target_size=2000,
                                  epochs=60, batch_size=64, learning_rate=1e-3),
        # Well-generalized MLP: generalization gap near 1%.
        # (one epoch on 20000 members: train ~96%, test ~95%.)
        "mnist_mlp_gap1": dict(dataset=_npz("mnist.npz"), model="mlp",
                               model_options={"widths": [512, 512]}, target_size=20000,
                               epochs=1, batch_size=128, learning_rate=1e-3),
        # The CNN runs compare the white-box attack with the threshold baselines only
        # (reference/shadow CNNs would take hours on a 2-core CPU; LiRA/RMIA/Shokri on
        # MNIST are in experiments/reference_models.py).
        "mnist_cnn": dict(dataset=_npz("mnist.npz"), model="small_cnn", attacks=CNN_ATTACKS,
                          model_options={"channels": [16, 32], "hidden": 128},
                          target_size=2000, epochs=40, batch_size=64, learning_rate=1e-3),
    },
    "location": {
        "location_mlp": dict(dataset=_npz("location.npz"), model="mlp",
                             model_options={"widths": [256, 256]}, target_size=1000,
                             epochs=80, batch_size=64, learning_rate=1e-3),
    },
    "lfw": {
        "lfw_cnn": dict(dataset=_npz("lfw_gray_62x47.npz"),
                        dataset_options={"min_faces_per_person": 20}, model="small_cnn",
                        attacks=CNN_ATTACKS,
                        model_options={"channels": [16, 32], "hidden": 128}, target_size=600,
                        epochs=60, batch_size=32, learning_rate=1e-3),
    },
}


# Nasr et al.'s learned attack (and gradient norms) on the same targets as the MLP runs
# above: same dataset, recipe and seed, so the same target (the attack list does not change
# the split or the training); compare with those runs' Stolen Memories rows.
NASR_ATTACKS = ("loss", "gradient-norm", "nasr")
SUITES["nasr"] = {
    f"{name}_nasr": dict(kwargs, attacks=NASR_ATTACKS)
    for suite in ("mnist", "location") for name, kwargs in SUITES[suite].items()
    if kwargs["model"] == "mlp"
}


def table(results_by_name: dict) -> str:
  lines = []
  for name, r in results_by_name.items():
    t = r["target"]
    lines.append(f"### {name}\n")
    lines.append(f"dataset `{r['dataset']['name']}`, model `{r['model']['name']}` "
                 f"{r['model']['spec']}, members {r['dataset']['num_members']}, "
                 f"train acc {t['train_accuracy']:.4f}, test acc {t['test_accuracy']:.4f} "
                 f"(gap {t['generalization_gap']:.4f}); timings {r['timings']}\n")
    lines.append("| attack | AUC | bal. acc. | TPR@1%FPR | TPR@0.1%FPR | precision@thr | recall@thr |")
    lines.append("|---|---|---|---|---|---|---|")
    for a, m in r["attacks"].items():
      rows = [(a, m)] + [(f"{a} / layer {k}", v) for k, v in m.get("layers", {}).items()]
      for label, v in rows:
        c = v.get("calibrated")
        p = f"{c['precision']:.3f} (goal {c.get('target_precision', '-')})" if c else ""
        rc = f"{c['recall']:.3f}" if c else ""
        lines.append(f"| {label} | {v['auc']:.4f} | {v['balanced_accuracy']:.4f} | "
                     f"{v['tpr_at_fpr']['0.01']:.4f} | {v['tpr_at_fpr']['0.001']:.4f} | {p} | {rc} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  from mia_jax.audit import AuditConfig, run_audit
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", choices=sorted(SUITES), required=True)
  p.add_argument("--only", default=None, help="comma-separated run names within the suite")
  p.add_argument("--out", default=os.path.join("runs", "experiments"))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  runs = SUITES[args.suite]
  selected = set(args.only.split(",")) if args.only else set(runs)
  results = {}
  for name, kwargs in runs.items():
    out = os.path.join(args.out, args.suite, name)
    done = os.path.join(out, "results.json")
    if name not in selected:  # not run now; its finished results still go in the table
      if os.path.exists(done):
        with open(done) as f:
          results[name] = json.load(f)
      continue
    if os.path.exists(done):  # resume: finished runs are kept
      with open(done) as f:
        results[name] = json.load(f)
      print(f"[{name}] already finished, reusing {done}", flush=True)
      continue
    t0 = time.time()
    cfg = AuditConfig(seed=args.seed, **kwargs)
    results[name] = run_audit(cfg, out, log=lambda s, n=name: print(f"[{n}] {s}", flush=True))
    print(f"[{name}] done in {time.time() - t0:.0f}s", flush=True)
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  md = os.path.join(HERE, "results", f"stolen_memories_{args.suite}.md")
  cmd = "python experiments/stolen_memories.py --suite " + args.suite
  with open(md, "w") as f:
    f.write(f"<!-- produced by: {cmd} (seed {args.seed}) on {time.strftime('%Y-%m-%d')} -->\n\n")
    f.write(table(results))
  print(table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
