"""The trainer's workloads timed side by side against another revision of the library.

    python bench/trainer_revisions.py --against cb8c87e [--reps 5]

Exports ``mia_jax/`` of the given git revision into a temporary directory as package
``mia_jax_rev`` (every ``mia_jax`` name rewritten), imports both in this one process and
times each workload alternately (old, new, old, new, ...) after a warm-up call that
compiles: stacked training (train_models), stacked DP-SGD (train_models_dp), Shokri et
al.'s per-class attack classifiers (fit_binary_groups) and Nasr et al.'s attack network
(fit_attack_model). Prints the medians, their ratio (this checkout / the revision) and the
device; wall times end in ``jax.block_until_ready``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np


def export_revision(rev: str, root: str) -> str:
  """``mia_jax/`` at ``rev`` as package ``mia_jax_rev`` under a new temporary directory."""
  out = tempfile.mkdtemp(prefix="mia-jax-rev-")
  archive = subprocess.run(["git", "-C", root, "archive", rev, "mia_jax"], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
  os.rename(os.path.join(out, "mia_jax"), os.path.join(out, "mia_jax_rev"))
  for d, _, files in os.walk(os.path.join(out, "mia_jax_rev")):
    for f in files:
      if f.endswith(".py"):
        p = os.path.join(d, f)
        with open(p) as fh:
          text = fh.read()
        with open(p, "w") as fh:
          fh.write(re.sub(r"\bmia_jax\b", "mia_jax_rev", text))
  return out


def workloads(pkg: str):
  """{name: zero-argument callable} for the package ``pkg`` (fixed data and seeds)."""
  train = importlib.import_module(f"{pkg}.train")
  dp = importlib.import_module(f"{pkg}.dp")
  models = importlib.import_module(f"{pkg}.models")
  classifier = importlib.import_module(f"{pkg}.attacks._classifier")
  nasr = importlib.import_module(f"{pkg}.attacks.nasr")
  rng = np.random.default_rng(0)
  n, d, k = 2000, 600, 100
  x = (rng.random((n, d)) < 0.3).astype(np.float32)
  y = rng.integers(0, k, n).astype(np.int32)
  keep = rng.random((8, n)) < 0.5
  mlp = models.make_model("mlp", input_shape=(d,), num_classes=k, widths=(128,))
  recipe = train.TrainConfig(epochs=2, batch_size=64)
  feats = rng.normal(size=(k, 256, 8)).astype(np.float32)
  member = rng.random((k, 256)) < 0.5
  mask = np.ones((k, 256), bool)
  nf = {"probs": rng.random((2000, 10)).astype(np.float32),
        "loss": rng.random(2000).astype(np.float32),
        "label": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 2000)],
        "grad:logits": rng.normal(size=(2000, 10, 129)).astype(np.float32)}
  is_member = rng.random(2000) < 0.5
  return {
      "train_models (8 MLPs 600-128-100, 2 epochs of ~1000, batch 64)":
          lambda: train.train_models(mlp, x, y, keep, config=recipe, seed=1).variables,
      "train_models_dp (4 MLPs, Poisson, 1 epoch)":
          lambda: dp.train_models_dp(mlp, x, y, keep[:4], config=train.TrainConfig(
              epochs=1, batch_size=64), noise_multiplier=1.0, clip_norm=1.0, seed=2).variables,
      "fit_binary_groups (100 classes, MLP 64, 256 rows, 500 steps)":
          lambda: classifier.fit_binary_groups(feats, member, mask, kind="mlp", steps=500),
      "nasr fit_attack_model (2000 examples, [10, 129] gradients, 5 epochs)":
          lambda: nasr.fit_attack_model(nf, is_member, config=nasr.NasrConfig(epochs=5))[0].params,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--against", required=True, help="git revision to compare with")
  p.add_argument("--reps", type=int, default=5)
  args = p.parse_args(argv)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  sys.path.insert(0, export_revision(args.against, root))
  import jax
  new, old = workloads("mia_jax"), workloads("mia_jax_rev")
  head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPUs; this checkout {head} vs {args.against}; "
        f"median of {args.reps} alternating repetitions after one warm-up call each")
  print("| workload | revision (s) | this checkout (s) | ratio |\n|---|---|---|---|")
  for name in new:
    times = {"old": [], "new": []}
    for which, fns in (("old", old), ("new", new)):
      jax.block_until_ready(fns[name]())  # compile
    for _ in range(args.reps):
      for which, fns in (("old", old), ("new", new)):
        t = time.perf_counter()
        jax.block_until_ready(fns[name]())
        times[which].append(time.perf_counter() - t)
    o, n_ = np.median(times["old"]), np.median(times["new"])
    print(f"| {name} | {o:.3f} | {n_:.3f} | {n_ / o:.2f} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
