"""``mia-jax``: the command line. Thin: parses options, calls the library, shows progress.

Subcommands:
  audit   train a target on a dataset, run the attacks, print a table, write results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from mia_jax._validation import MiaInputError


def _parse_value(text: str) -> Any:
  """Parses an option value: JSON/YAML scalars and lists ("3", "0.5", "[256, 256]", "true")."""
  import yaml
  try:
    return yaml.safe_load(text)
  except yaml.YAMLError:
    return text


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
  out = {}
  for item in items or ():
    if "=" not in item:
      raise MiaInputError(f"{flag}: expected KEY=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    out[k.strip().replace("-", "_")] = _parse_value(v)
  return out


def _csv(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


def _add_audit_parser(sub) -> argparse.ArgumentParser:
  from mia_jax.audit import ALL_ATTACKS, AuditConfig
  d = AuditConfig()
  p = sub.add_parser(
      "audit", help="train a target, run membership-inference attacks, report leakage",
      description="Train a target model on a dataset, compute its signals, run every requested "
                  "attack, print a summary table and write results.json (and scores.npz, the "
                  "target checkpoint) into --out. Defaults need no network: the built-in "
                  "'digits' dataset and an MLP trained to overfit.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--out", default="runs/audit", help="run directory")
  p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
  p.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")
  p.add_argument("--dataset", default=d.dataset,
                 help="built-in name (digits, breast_cancer, gaussian_nb, purchase_like, random), "
                      "a tensorflow-datasets name (tfds:NAME), or a path to an .npz file")
  p.add_argument("--dataset-option", "-D", action="append", metavar="KEY=VALUE",
                 help="dataset loader option, repeatable (e.g. -D num_features=100, "
                      "-D data_dir=~/tensorflow_datasets, -D min_faces_per_person=20)")
  p.add_argument("--model", default=d.model, help="logistic, mlp, small_cnn or resnet")
  p.add_argument("--model-option", "-M", action="append", metavar="KEY=VALUE",
                 help="architecture option, repeatable (e.g. -M widths=[512,512], -M dropout=0.1)")
  p.add_argument("--target-size", type=int, default=d.target_size,
                 help="members in the target's training set (default: 1/8 of the data); as many "
                      "non-members are held out, the rest is the attacker's auxiliary data")
  p.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "momentum", "adam"])
  p.add_argument("--learning-rate", type=float, default=d.learning_rate)
  p.add_argument("--epochs", type=int, default=d.epochs)
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                 help="L2 coefficient lambda (adds lambda/2 ||params||^2 to the loss)")
  p.add_argument("--attacks", type=_csv, default=",".join(d.attacks),
                 help=f"comma-separated attacks from: {', '.join(ALL_ATTACKS)}")
  p.add_argument("--layers", type=_csv, default=None,
                 help="white-box layers, comma-separated (default: every layer below the logits)")
  p.add_argument("--num-proxies", type=int, default=d.num_proxies, help="proxies per layer")
  p.add_argument("--path-steps", type=int, default=d.path_steps,
                 help="0: point Jacobians; R: path-integrated over R steps")
  p.add_argument("--whitebox-setting", default=d.whitebox_setting, choices=["shadow", "nonmember"],
                 help="how the white-box meta-attack is fit: on a shadow target, or on known "
                      "non-members only")
  p.add_argument("--target-precision", type=float, default=d.target_precision,
                 help="precision the white-box threshold is calibrated for (shadow setting)")
  p.add_argument("--target-fpr", type=float, default=d.target_fpr,
                 help="FPR the white-box threshold is calibrated for (non-member setting)")
  p.add_argument("--num-reference", type=int, default=d.num_reference,
                 help="reference models for LiRA/RMIA (even; trained at once)")
  p.add_argument("--num-shadow", type=int, default=d.num_shadow,
                 help="shadow models for the Shokri et al. attack (trained at once)")
  p.add_argument("--rmia-offline-a", type=float, default=d.rmia_offline_a,
                 help="offline RMIA's a in P_IN ~ a P_OUT + (1 - a)")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--microbatch-size", type=int, default=d.microbatch_size,
                 help="examples per compiled chunk in signal passes (memory bound)")
  return p


def _audit_config(args) -> "Any":
  from mia_jax.audit import AuditConfig
  attacks = args.attacks if isinstance(args.attacks, tuple) else _csv(args.attacks)
  return AuditConfig(
      dataset=args.dataset, dataset_options=_key_values(args.dataset_option, "--dataset-option"),
      model=args.model, model_options=_key_values(args.model_option, "--model-option"),
      target_size=args.target_size, optimizer=args.optimizer, learning_rate=args.learning_rate,
      epochs=args.epochs, batch_size=args.batch_size, weight_decay=args.weight_decay,
      attacks=attacks, layers=args.layers, num_proxies=args.num_proxies,
      path_steps=args.path_steps, whitebox_setting=args.whitebox_setting,
      target_precision=args.target_precision, target_fpr=args.target_fpr,
      num_reference=args.num_reference, num_shadow=args.num_shadow,
      rmia_offline_a=args.rmia_offline_a, seed=args.seed,
      microbatch_size=args.microbatch_size)


def print_table(results: dict, console) -> None:
  from rich.table import Table
  t = results["target"]
  console.print(f"target: train accuracy {t['train_accuracy']:.4f}, test accuracy "
                f"{t['test_accuracy']:.4f} (dataset {results['dataset']['name']}, model "
                f"{results['model']['name']})")
  table = Table(title="membership inference (higher AUC = more leakage)")
  for col in ("attack", "AUC", "balanced acc.", "TPR@1%FPR", "TPR@0.1%FPR"):
    table.add_column(col, justify="left" if col == "attack" else "right")
  for name, m in results["attacks"].items():
    rows = [(name, m)] + [(f"  {name}/{k}", v) for k, v in m.get("layers", {}).items()]
    for label, r in rows:
      table.add_row(label, f"{r['auc']:.4f}", f"{r['balanced_accuracy']:.4f}",
                    f"{r['tpr_at_fpr']['0.01']:.4f}", f"{r['tpr_at_fpr']['0.001']:.4f}")
  console.print(table)
  for name, m in results["attacks"].items():
    c = m.get("calibrated")
    if c:
      goal = (f"precision {c['target_precision']}" if c["setting"] == "shadow"
              else f"FPR {c['target_fpr']}")
      console.print(f"{name}: threshold calibrated on attacker data for {goal}: achieved "
                    f"precision {c['precision']:.3f}, recall {c['recall']:.3f}, FPR {c['fpr']:.4f}")


def _cmd_audit(args) -> int:
  from rich.console import Console
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                             TimeElapsedColumn, TimeRemainingColumn)

  from mia_jax.audit import run_audit
  config = _audit_config(args)
  console = Console(stderr=True, quiet=args.quiet)
  log = (lambda s: None) if args.quiet else (lambda s: console.log(s))
  if args.quiet:
    results = run_audit(config, args.out, overwrite=args.overwrite, log=log)
  else:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("epochs"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
      results = run_audit(config, args.out, overwrite=args.overwrite, progress=progress, log=log)
  from rich.console import Console as _C
  print_table(results, _C())
  print(f"results written to {os.path.join(os.path.abspath(args.out), 'results.json')}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mia-jax",
      description="Membership-inference attacks in JAX: Stolen Memories (white-box), threshold "
                  "baselines, and more. Run 'mia-jax SUBCOMMAND --help' for every option.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
  _add_audit_parser(sub).set_defaults(func=_cmd_audit)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except MiaInputError as e:
    print(f"mia-jax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("mia-jax: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
