"""``mia-jax``: the command line. Thin: parses options, calls the library, shows progress.

Subcommands:
  audit    train a target on a dataset, run the attacks, print a table, write results.json
           and report.html / report.md
  report   rebuild report.html / report.md of a run directory
  score    run the black-box attacks on a model's outputs alone (an .npz of logits or
           losses), write results.json, scores.npz and the report
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from typing import Any, Sequence

from mia_jax._validation import MiaInputError


def _parse_value(text: str) -> Any:
  """Parses an option value: YAML scalars and lists ("3", "0.5", "[256, 256]", "true")."""
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


RUN_KEYS = {"out": "runs/audit", "overwrite": False, "quiet": False, "report": True}
"""Config keys that are options of the run rather than of the audit itself."""


def _add_audit_parser(sub) -> argparse.ArgumentParser:
  p = sub.add_parser(
      "audit", help="train a target, run membership-inference attacks, report leakage",
      description="Train a target model on a dataset, compute its signals, run every requested "
                  "attack, print a summary table and write results.json, scores.npz, "
                  "report.html and report.md (and the trained models) into --out. Defaults "
                  "need no network: the built-in 'digits' dataset and an MLP trained to "
                  "overfit. Every option is also a key of a YAML --config file (the option's "
                  "name with '_' for '-', see docs/config.md); options given on the command "
                  "line override the file. An interrupted run resumes when rerun with the "
                  "same options.")
  _add_config_options(p)
  return p


def _add_config_options(p: argparse.ArgumentParser) -> None:
  """The audit configuration's options (shared by 'audit' and 'train')."""
  from mia_jax.attacks import registry
  from mia_jax.audit import AuditConfig
  d = AuditConfig()

  def arg(*flags, key, help, **kw):
    default = RUN_KEYS[key] if key in RUN_KEYS else getattr(d, key)
    if isinstance(default, tuple):
      default = ",".join(default) or "none"
    if isinstance(default, dict):
      default = default or "{}"
    p.add_argument(*flags, dest=key, default=argparse.SUPPRESS,
                   help=f"{help} [config key: {key}; default: {default}]", **kw)

  p.add_argument("--config", default=None, metavar="FILE",
                 help="YAML file of options (docs/config.md); command-line options override it")
  arg("--out", key="out", help="run directory")
  arg("--overwrite", key="overwrite", action="store_true", help="replace a finished run in --out (removes only what mia-jax wrote there)")
  arg("--quiet", key="quiet", action="store_true", help="no progress bars or stage logs")
  arg("--no-report", key="report", action="store_false",
      help="do not write report.html / report.md")
  arg("--dataset", key="dataset",
      help="built-in name (digits, breast_cancer, gaussian_nb, purchase_like, random), a "
           "tensorflow-datasets name (tfds:NAME), or a path to an .npz file")
  arg("--dataset-option", "-D", key="dataset_options", action="append", metavar="KEY=VALUE",
      help="dataset loader option, repeatable (e.g. -D num_features=100, -D "
           "data_dir=~/tensorflow_datasets, -D min_faces_per_person=20)")
  arg("--model", key="model", help="logistic, mlp, small_cnn or resnet")
  arg("--model-option", "-M", key="model_options", action="append", metavar="KEY=VALUE",
      help="architecture option, repeatable (e.g. -M widths=[512,512], -M dropout=0.1)")
  arg("--target-size", key="target_size", type=int,
      help="members in the target's training set (None: 1/8 of the data); as many non-members "
           "are held out, the rest is the attacker's auxiliary data")
  arg("--optimizer", key="optimizer", choices=["sgd", "momentum", "adam"], help="optimizer")
  arg("--learning-rate", key="learning_rate", type=float, help="step size")
  arg("--epochs", key="epochs", type=int, help="training epochs (no early stopping)")
  arg("--batch-size", key="batch_size", type=int, help="examples per step")
  arg("--weight-decay", key="weight_decay", type=float,
      help="L2 coefficient lambda (adds lambda/2 ||params||^2 to the loss)")
  arg("--attacks", key="attacks", type=_csv,
      help=f"comma-separated attacks from: {registry.help_text()}")
  arg("--layers", key="layers", type=_csv,
      help="white-box layers, comma-separated (None: every layer below the logits)")
  arg("--gradient-layers", key="gradient_layers", type=_csv,
      help="stages whose per-example parameter gradients the Nasr et al. attack reads, "
           "comma-separated (None: the last stage)")
  arg("--num-proxies", key="num_proxies", type=int, help="white-box proxies per layer")
  arg("--path-steps", key="path_steps", type=int,
      help="0: point Jacobians; R: path-integrated over R steps")
  arg("--whitebox-setting", key="whitebox_setting", choices=["shadow", "nonmember"],
      help="how the white-box meta-attack is fit: on a shadow target, or on known non-members only")
  arg("--target-precision", key="target_precision", type=float,
      help="precision the white-box threshold is calibrated for (shadow setting)")
  arg("--target-fpr", key="target_fpr", type=float,
      help="FPR the white-box threshold is calibrated for (non-member setting)")
  arg("--num-reference", key="num_reference", type=int,
      help="reference models for LiRA/RMIA (even; trained at once)")
  arg("--num-shadow", key="num_shadow", type=int,
      help="shadow models for the Shokri et al. attack (trained at once)")
  arg("--rmia-offline-a", key="rmia_offline_a", type=float,
      help="offline RMIA's a in P_IN ~ a P_OUT + (1 - a)")
  arg("--defense", key="defenses", action="append", metavar="SPEC",
      help="prediction-API defense applied to every black-box attack's queries (target, "
           "reference and shadow models), repeatable and applied in order: top-k=K, round=D, "
           "temperature=T, label-only (e.g. --defense top-k=3 --defense round=2)")
  arg("--dp-epsilon", key="dp_epsilon", type=float,
      help="train with DP-SGD, noise calibrated to this epsilon (at --delta); reference and "
           "shadow models use the same noise")
  arg("--noise-multiplier", key="noise_multiplier", type=float,
      help="train with DP-SGD at this noise multiplier (instead of --dp-epsilon)")
  arg("--clip-norm", key="clip_norm", type=float, help="DP-SGD per-example clipping norm")
  arg("--delta", key="delta", type=float, help="DP delta, in (0, 1)")
  arg("--shadow-source", key="shadow_source",
      choices=["real", "noisy", "marginals", "synthetic"],
      help="Shokri et al. shadow data: the auxiliary data, it with noise, its per-class "
           "feature marginals, or records synthesized by querying the target")
  arg("--shadow-noise", key="shadow_noise", type=float,
      help="fraction of binary features flipped (or relative noise std) for --shadow-source noisy")
  arg("--lira-augmentations", key="lira_augmentations",
      choices=["none", "flip", "shift", "flip+shift"],
      help="LiRA query augmentations for images (mirror image, the 9 one-pixel shifts, or "
           "both: 18 queries per example)")
  arg("--seed", key="seed", type=int, help="seed of the split, all training and all attacks")
  arg("--seed-streams", key="seed_streams", choices=["named", "offsets"],
      help="how each stage's seed derives from --seed: a stream named after the stage, or "
           "the offsets of runs made before named streams (to resume or reproduce them)")
  arg("--microbatch-size", key="microbatch_size", type=int,
      help="examples per compiled chunk in signal passes (memory bound)")
  arg("--bootstrap-resamples", key="bootstrap_resamples", type=int,
      help="resamples for each attack's bootstrap confidence intervals of AUC and TPR at "
           "each reported FPR (0: none)")
  arg("--confidence", key="confidence", type=float,
      help="coverage of the confidence intervals, in (0, 1); with --canaries also the "
           "confidence of the epsilon lower bounds, in (0.5, 1)")
  arg("--canaries", key="canaries", type=int,
      help="insert N canaries, each into the target's training set with probability 1/2, "
           "and report every attack's empirical epsilon lower bound on them (0: none)")
  arg("--canary-kind", key="canary_kind",
      choices=["mislabeled", "ood", "input-space", "gradient"],
      help="real examples with a wrong label, out-of-distribution inputs, crafted inputs "
           "along the data's least-varying directions, or (DP-SGD) Dirac gradients planted "
           "in the clipped sum")
  arg("--canary-runs", key="canary_runs", type=int,
      help="training runs of the target for the canary audit (1: one-run audit; R > 1 "
           "trains R-1 more, stacked, each with its own canary coins, and pools the guesses)")
  arg("--estimators", key="estimators", type=_csv,
      help="epsilon estimators, comma-separated: clopper-pearson, one-run, one-run-fdp "
           "(None: all; needs --canaries)")


def config_keys() -> tuple[str, ...]:
  """Every key a --config file may hold (= every audit command-line option)."""
  from mia_jax.audit import AuditConfig
  return tuple(f.name for f in dataclasses.fields(AuditConfig)) + tuple(RUN_KEYS)


MAX_CONFIG_BYTES = 1 << 20


def load_config_file(path: str) -> dict[str, Any]:
  """Reads a YAML config (``yaml.safe_load``, UTF-8, at most 1 MiB and
  :data:`mia_jax.audit.MAX_OPTION_NODES` values once aliases expand); unknown keys are an
  error naming them."""
  import yaml

  from mia_jax.audit import check_size
  try:
    with open(os.path.expanduser(path), "rb") as f:
      raw = f.read(MAX_CONFIG_BYTES + 1)
  except OSError as e:
    raise MiaInputError(f"--config: cannot read {path}: {e.strerror}") from e
  if len(raw) > MAX_CONFIG_BYTES:
    raise MiaInputError(f"--config: {path} is larger than {MAX_CONFIG_BYTES} bytes")
  try:
    data = yaml.safe_load(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise MiaInputError(f"--config: {path} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from e
  except (yaml.YAMLError, RecursionError) as e:
    raise MiaInputError(f"--config: {path} is not valid YAML: {e}") from e
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise MiaInputError(f"--config: {path} must hold a mapping of option: value")
  check_size(data, f"--config {path}")
  data = {str(k).replace("-", "_"): v for k, v in data.items()}
  unknown = sorted(set(data) - set(config_keys()))
  if unknown:
    raise MiaInputError(f"--config: unknown key(s) {unknown} in {path}; valid keys: "
                        f"{sorted(config_keys())}")
  return data


def audit_options(args) -> tuple[Any, dict[str, Any]]:
  """(AuditConfig, run options) from --config and the command line (which wins)."""
  from mia_jax.audit import AuditConfig
  given = {k: v for k, v in vars(args).items()
           if k not in ("command", "func", "config", "save_every", "with_reference")}
  merged = load_config_file(args.config) if args.config else {}
  for key in ("dataset_options", "model_options"):
    if key in merged and not isinstance(merged[key], dict):
      raise MiaInputError(f"{key}: expected a mapping in the config file, got {merged[key]!r}")
    if key in given:  # -D/-M pairs update the file's mapping key by key
      merged[key] = {**merged.get(key, {}), **_key_values(given.pop(key), f"--{key}")}
  merged.update(given)
  run = {k: merged.pop(k, v) for k, v in RUN_KEYS.items()}
  for key in ("overwrite", "quiet", "report"):
    if not isinstance(run[key], bool):
      raise MiaInputError(f"{key}: expected true or false, got {run[key]!r}")
  from mia_jax.rundir import check_out_path
  check_out_path(run["out"])
  try:
    return AuditConfig(**merged), run
  except TypeError as e:
    raise MiaInputError(f"config: {e}") from e


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
  if results.get("defenses"):
    console.print(f"prediction API defended by {', '.join(results['defenses'])} (black-box "
                  f"attacks see the defended outputs; white-box attacks the weights)")
  dp = results.get("dp")
  if dp:
    bounds = dp.get("bounds", {})
    tight = bounds.get("tight_accuracy", [None])[0]
    eps = dp["epsilon"][0]
    eps = f"{eps:.4g}" if isinstance(eps, (int, float)) else str(eps)
    console.print(f"DP-SGD: epsilon {eps} at delta {dp['delta']} (noise "
                  f"multiplier {dp['noise_multiplier']:.4g}, clip norm {dp['clip_norm']}); "
                  + (f"no attack's balanced accuracy can exceed {tight:.4f}" if tight is not None
                     else "no bound (infinite epsilon)"))
  d = results["attacks"].get("shokri", {}).get("decision")
  if d:
    prec = "n/a" if d["precision"] is None else f"{d['precision']:.3f}"
    console.print(f"shokri: attack models' decisions: accuracy {d['accuracy']:.3f}, precision "
                  f"{prec}, recall {d['recall']:.3f}")
  for name, m in results["attacks"].items():
    c = m.get("calibrated")
    if c:
      goal = (f"precision {c['target_precision']}" if c["setting"] == "shadow"
              else f"FPR {c['target_fpr']}")
      console.print(f"{name}: threshold calibrated on attacker data for {goal}: achieved "
                    f"precision {c['precision']:.3f}, recall {c['recall']:.3f}, FPR {c['fpr']:.4f}")
  pa = results.get("privacy_audit")
  if pa:
    can = pa["canaries"]
    theo = pa["theoretical_epsilon"]
    table = Table(title=f"privacy audit: empirical epsilon lower bounds ({pa['confidence']:g} "
                        f"confidence, delta {pa['delta']:g}) from {can['count']} {can['kind']} "
                        f"canaries, {can['runs']} run(s); theoretical epsilon "
                        + (f"{theo:.4g}" if theo != "inf" else "inf (no DP)"))
    table.add_column("attack")
    table.add_column("AUC on canaries", justify="right")
    for est in pa["estimators"]:
      table.add_column(est, justify="right")
    for name, entry in pa["attacks"].items():
      table.add_row(name, f"{entry['auc']:.4f}",
                    *(f"{entry['epsilon'][est]['epsilon']:.3f}" for est in pa["estimators"]))
    console.print(table)



def _cmd_audit(args) -> int:
  from rich.console import Console
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                             TimeElapsedColumn, TimeRemainingColumn)

  from mia_jax.audit import run_audit
  config, run = audit_options(args)
  console = Console(stderr=True, quiet=run["quiet"])
  log = (lambda s: None) if run["quiet"] else (lambda s: console.log(s))
  kw = dict(overwrite=run["overwrite"], log=log, report=run["report"])
  if run["quiet"]:
    results = run_audit(config, run["out"], **kw)
  else:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
      results = run_audit(config, run["out"], progress=progress, **kw)
  print_table(results, __import__("rich.console").console.Console())
  out = os.path.abspath(os.path.expanduser(run["out"]))
  print(f"results written to {os.path.join(out, 'results.json')}")
  if run["report"]:
    print(f"report written to {os.path.join(out, 'report.html')} and "
          f"{os.path.join(out, 'report.md')}")
  return 0


def _cmd_report(args) -> int:
  from mia_jax.report import write_report, write_sweep_report
  if args.sweep is not None:
    html_path, md_path = write_sweep_report(args.run_dir, args.sweep, dpi=args.dpi)
    print(f"sweep of {len(args.run_dir)} privacy audits written to {html_path} and {md_path}")
    return 0
  if len(args.run_dir) > 1:
    raise MiaInputError(f"run_dir: {len(args.run_dir)} run directories given; one rebuilds "
                        "its report, several need --sweep DIR (a sweep of their privacy "
                        "audits)")
  html_path, md_path = write_report(args.run_dir[0], dpi=args.dpi)
  print(f"report written to {html_path} and {md_path}")
  return 0


def _cmd_train(args) -> int:
  from rich.console import Console
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

  from mia_jax.checkpoints import train_run
  config, run = audit_options(args)
  console = Console(stderr=True, quiet=run["quiet"])
  log = (lambda s: None) if run["quiet"] else (lambda s: console.log(s))
  with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), console=console, transient=True,
                disable=run["quiet"]) as progress:
    paths = train_run(config, run["out"], save_every=args.save_every,
                      with_reference=args.with_reference, progress=progress, log=log)
  print(f"{len(paths)} checkpoints in {os.path.dirname(paths[0])}")
  return 0


def _cmd_attack(args) -> int:
  from rich.console import Console
  from rich.table import Table

  console = Console(stderr=True, quiet=args.quiet)
  log = lambda s: console.log(s)  # noqa: E731
  if args.model is not None:
    res, out = _attack_user_model(args, log)
  else:
    if args.run is None:
      raise MiaInputError("attack: give --run DIR (a run of 'mia-jax train'), or --model "
                          "MODULE:FACTORY with --checkpoints, --dataset, --members and "
                          "--nonmembers (your own model and checkpoints)")
    from mia_jax.checkpoints import attack_run
    res = attack_run(args.run, checkpoints=args.checkpoints, attacks=_csv(args.attacks),
                     microbatch_size=args.microbatch_size, log=log)
    out = os.path.abspath(args.run)
  table = Table(title="membership inference per checkpoint")
  attacks = list(res["checkpoints"][0]["attacks"])
  for col in ["checkpoint", "train acc.", "test acc."] + [f"{a} AUC" for a in attacks]:
    table.add_column(col)
  for c in res["checkpoints"]:
    table.add_row(c["name"], f"{c['train_accuracy']:.3f}", f"{c['test_accuracy']:.3f}",
                  *[f"{c['attacks'][a]['auc']:.4f}" for a in attacks])
  Console().print(table)
  print(f"results written to {os.path.join(out, 'checkpoint_results.json')} and checkpoints.png")
  return 0


def _attack_user_model(args, log):
  """``mia-jax attack --model MODULE:FACTORY ...``: the user's model and checkpoints."""
  import jax
  import numpy as np

  from mia_jax.attack_model import attack_model, load_factory, read_indices
  from mia_jax.data import load_dataset
  from mia_jax.foreign import load_foreign_stack
  from mia_jax.rundir import check_out_path
  from mia_jax.train import TrainConfig
  missing = [f for f in ("checkpoints", "dataset", "members", "nonmembers", "out")
             if getattr(args, f) is None]
  if missing:
    raise MiaInputError(f"attack --model: also give {', '.join('--' + m for m in missing)}")
  out = check_out_path(args.out)
  attacks = _csv(args.attacks) if args.attacks_given else None
  if attacks == ["all"]:
    attacks = None  # every attack the inputs allow
  tcfg = TrainConfig(optimizer=args.optimizer, learning_rate=args.learning_rate,
                     epochs=args.epochs, batch_size=args.batch_size)
  sys.path.insert(0, os.getcwd())  # a factory module beside the user's code
  try:
    model = load_factory(args.model)
  finally:
    sys.path.remove(os.getcwd())
  dataset = args.dataset
  if dataset.endswith(".npz") or os.sep in dataset:
    dataset = os.path.abspath(os.path.expanduser(dataset))
  ds = load_dataset(dataset, **_key_values(args.dataset_option, "--dataset-option"))
  x, y = ds.all_x(), ds.all_y()
  members = read_indices(args.members, x.shape[0], "members")
  nonmembers = read_indices(args.nonmembers, x.shape[0], "nonmembers")
  aux = None if args.auxiliary is None else read_indices(args.auxiliary, x.shape[0], "auxiliary")
  like = jax.eval_shape(model.init, jax.random.key(0))
  stacked, names = load_foreign_stack(args.checkpoints, like=like, item=args.item)
  refs = keep = None
  if (args.reference_checkpoints is None) != (args.reference_keep is None):
    raise MiaInputError("attack --model: give --reference-checkpoints and --reference-keep "
                        "together (LiRA / RMIA need both)")
  if args.reference_checkpoints is not None:
    refs, _ = load_foreign_stack(args.reference_checkpoints, like=like, item=args.item)
    try:
      keep = np.load(args.reference_keep, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise MiaInputError(f"reference_keep: cannot read {args.reference_keep} as a .npy of "
                          f"booleans: {e}") from e
  log(f"loaded {len(names)} checkpoints of {model.name} from {args.checkpoints}")
  res = attack_model(model, stacked, x, y, members=members, nonmembers=nonmembers,
                     auxiliary=aux, stacked=True, names=names, attacks=attacks,
                     reference_variables=refs, reference_keep=keep,
                     train_config=tcfg, whitebox_layers=args.layers,
                     gradient_layers=args.gradient_layers, seed=args.seed,
                     microbatch_size=args.microbatch_size, out=out, overwrite=args.overwrite,
                     report=args.report, dataset_name=ds.name if dataset == args.dataset
                     else dataset, log=log)
  return res, out


SCORE_EPILOG = """\
keys of SIGNALS.npz (np.savez; read with allow_pickle=False; any other key is an error):
  logits          float[N, K]     the target's outputs on the N examples (or `losses`)
  losses          float[N]        instead of logits: per-example losses (loss attack only)
  labels          int[N]          true classes in [0, K) (required with logits)
  is_member       bool[N]         example i is in the target's training set (both kinds)
  ref_logits      float[M, N, K]  M reference models' outputs on the same examples (LiRA)
  keep            bool[M, N]      keep[m, i]: example i in reference model m's training set
  pop_logits      float[Z, K]     the target's outputs on Z population examples (RMIA)
  pop_labels      int[Z]          their classes
  pop_ref_logits  float[M, Z, K]  the reference models' outputs on them
  output          str             logits | probs | log_probs (as --output)
Every attack the keys allow runs: loss, confidence, entropy, modified_entropy,
correctness; with ref_logits + keep also lira, lira-offline, lira-fixed-variance; with
the population also rmia, rmia-offline. See docs/score.md.
"""


def _cmd_score(args) -> int:
  from rich.console import Console
  from rich.table import Table

  from mia_jax.evaluate import evaluate, load_signals
  console = Console(stderr=True, quiet=args.quiet)
  inputs = load_signals(args.signals)
  if args.output is not None:
    if inputs.get("output", args.output) != args.output:
      raise MiaInputError(f"output: --output {args.output} but {args.signals} says "
                          f"output={inputs['output']!r}; give one")
    inputs["output"] = args.output
  if "is_member" not in inputs:
    raise MiaInputError(f"is_member: {args.signals} has no 'is_member' array (bool[N])")
  res = evaluate(**inputs, attacks=_csv(args.attacks) if args.attacks else None,
                 rmia_offline_a=args.rmia_offline_a, microbatch_size=args.microbatch_size,
                 name=os.path.basename(args.signals), out=args.out, overwrite=args.overwrite,
                 report=args.report, dpi=args.dpi, log=lambda s: console.log(s))
  for name, why in res.skipped.items():
    console.log(f"not run: {name} ({why})")
  out = Console()
  t = res.results.get("target")
  if t:
    out.print(f"target: train accuracy {t['train_accuracy']:.4f}, test accuracy "
              f"{t['test_accuracy']:.4f} ({os.path.basename(args.signals)})")
  table = Table(title="membership inference (higher AUC = more leakage)")
  for col in ("attack", "AUC", "balanced acc.", "TPR@1%FPR", "TPR@0.1%FPR"):
    table.add_column(col, justify="left" if col == "attack" else "right")
  for r in res.metrics:
    table.add_row(r["attack"], f"{r['auc']:.4f}", f"{r['balanced_accuracy']:.4f}",
                  f"{r['tpr@0.01']:.4f}", f"{r['tpr@0.001']:.4f}")
  out.print(table)
  path = os.path.abspath(os.path.expanduser(args.out))
  print(f"results written to {os.path.join(path, 'results.json')}")
  if args.report:
    print(f"report written to {os.path.join(path, 'report.html')} and "
          f"{os.path.join(path, 'report.md')}")
  return 0


def _add_score_parser(sub) -> argparse.ArgumentParser:
  p = sub.add_parser(
      "score", help="attack a model from its outputs alone (an .npz of logits or losses)",
      description="Run every black-box attack the given outputs allow (threshold attacks;\n"
                  "LiRA with reference models; RMIA with a population too) with the audit's\n"
                  "own functions, print a summary table and write results.json, scores.npz,\n"
                  "report.html and report.md into --out (a run directory: locked, atomic,\n"
                  "--overwrite removes only what mia-jax wrote).",
      epilog=SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("signals", metavar="SIGNALS.npz", help="the outputs (keys below)")
  p.add_argument("--out", required=True, help="run directory")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a finished run in --out (removes only what mia-jax wrote there)")
  p.add_argument("--output", choices=["logits", "probs", "log_probs"], default=None,
                 help="what the output arrays hold (default: logits; arrays that look like "
                      "probabilities or log-probabilities are then an error)")
  p.add_argument("--attacks", default=None,
                 help="comma-separated attacks (default: every attack the keys allow)")
  p.add_argument("--rmia-offline-a", type=float, default=0.3,
                 help="offline RMIA's a in P_IN ~ a P_OUT + (1 - a)")
  p.add_argument("--microbatch-size", type=int, default=1024,
                 help="examples per compiled chunk in signal passes (memory bound)")
  p.add_argument("--no-report", dest="report", action="store_false",
                 help="do not write report.html / report.md")
  p.add_argument("--dpi", type=int, default=100, help="resolution of the report's plots")
  p.add_argument("--quiet", action="store_true", help="no log messages")
  return p


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mia-jax",
      description="Membership-inference attacks in JAX: Stolen Memories (white-box), LiRA, "
                  "RMIA, Shokri et al. shadow models and threshold baselines. Run "
                  "'mia-jax SUBCOMMAND --help' for every option.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
  _add_audit_parser(sub).set_defaults(func=_cmd_audit)
  p = sub.add_parser(
      "train", help="train a target and save a checkpoint every --save-every epochs",
      description="Train the target an audit with the same options would train (same data "
                  "split) and save orbax checkpoints into --out/checkpoints, for "
                  "'mia-jax attack --run'. Resumes when rerun after an interruption.")
  _add_config_options(p)
  p.add_argument("--save-every", type=int, default=1, help="epochs between saved checkpoints")
  p.add_argument("--with-reference", action="store_true",
                 help="also train --num-reference reference models (as the audit does) and save "
                      "them at the same epochs, so 'mia-jax attack' can run LiRA and RMIA on "
                      "every checkpoint")
  p.set_defaults(func=_cmd_train)
  p = sub.add_parser(
      "attack", help="attack every checkpoint of a training run, or of your own model",
      description="Two ways. (1) --run DIR: every checkpoint of a run written by 'mia-jax "
                  "train' (or --checkpoints DIR of the same model), stacked, signals of all "
                  "of them in one vmapped compiled pass. (2) --model MODULE:FACTORY "
                  "--checkpoints DIR --dataset D --members F --nonmembers F --out DIR: your "
                  "own model (the factory returns mia_jax.models.from_linen(...) / "
                  "from_nnx(...)) and your own orbax checkpoints (StandardCheckpointer / "
                  "PyTreeCheckpointer directories or CheckpointManager steps; a TrainState's "
                  "params and batch_stats are picked), with the black-box and white-box "
                  "attacks on every checkpoint. Writes checkpoint_results.json, "
                  "checkpoints.png (leakage against checkpoint) and, with --model, "
                  "scores.npz (per-example scores of every checkpoint) and the report of "
                  "the last checkpoint.")
  p.add_argument("--run", default=None, help="run directory written by 'mia-jax train'")
  p.add_argument("--checkpoints", default=None,
                 help="directory of checkpoints (default with --run: RUN/checkpoints), one "
                      "stacked checkpoint, or (with --model) your orbax checkpoints")
  from mia_jax.attacks import registry
  p.add_argument("--attacks", default=None,
                 help=f"comma-separated attacks from: {', '.join(registry.names())}, or "
                      "'all'. With --run the default is loss, confidence, entropy, "
                      "modified_entropy ('all': every attack the run allows); the "
                      "reference attacks need a run trained with --with-reference "
                      "(checkpoint c against the reference models of the same epoch); "
                      "shokri trains shadow models on the run's auxiliary data. With --model "
                      "the default is every attack the inputs allow (the reference attacks "
                      "with --reference-checkpoints; shokri only in --run and 'audit')")
  p.add_argument("--microbatch-size", type=int, default=1024)
  p.add_argument("--quiet", action="store_true")
  g = p.add_argument_group("your own model (--model)")
  g.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                 help="a function returning an adapted model (mia_jax.models.from_linen / "
                      "from_nnx), imported from MODULE (the current directory is on the path)")
  g.add_argument("--dataset", default=None,
                 help="the data the indices point into: a built-in or tfds name, or an .npz "
                      "(x, y, or x_train, y_train, x_test, y_test pooled in that order)")
  g.add_argument("--dataset-option", "-D", action="append", metavar="KEY=VALUE",
                 help="dataset loader option, repeatable")
  g.add_argument("--members", default=None, metavar="FILE",
                 help="the target's training examples: indices into the pooled dataset, a .npy "
                      "or one integer per line")
  g.add_argument("--nonmembers", default=None, metavar="FILE",
                 help="examples the target did not train on (same format)")
  g.add_argument("--auxiliary", default=None, metavar="FILE",
                 help="the attacker's own examples for the white-box attacks' shadow target, "
                      "proxies and attack network (default: every other example)")
  g.add_argument("--reference-checkpoints", default=None, metavar="DIR",
                 help="your reference models for LiRA / RMIA: orbax checkpoints, one per "
                      "reference model (same layouts as --checkpoints)")
  g.add_argument("--reference-keep", default=None, metavar="FILE.npy",
                 help="bool[M, examples]: keep[m, i] = example i (pooled dataset order) was in "
                      "reference model m's training set")
  g.add_argument("--out", default=None, help="run directory for the results (with --model)")
  g.add_argument("--overwrite", action="store_true",
                 help="replace a finished run in --out (removes only what mia-jax wrote)")
  g.add_argument("--no-report", dest="report", action="store_false",
                 help="do not write report.html / report.md")
  g.add_argument("--item", default=None,
                 help="the item of CheckpointManager steps that hold several")
  g.add_argument("--layers", type=_csv, default=None,
                 help="taps for Stolen Memories (default: every tap below the logits)")
  g.add_argument("--gradient-layers", type=_csv, default=None,
                 help="parameter groups for Nasr et al. (default: the last)")
  g.add_argument("--optimizer", default="adam", choices=["sgd", "momentum", "adam"],
                 help="the attacker's training recipe (proxies, shadow target): optimizer")
  g.add_argument("--learning-rate", type=float, default=1e-3, help="... its step size")
  g.add_argument("--epochs", type=int, default=20, help="... its epochs")
  g.add_argument("--batch-size", type=int, default=64, help="... its batch size")
  g.add_argument("--seed", type=int, default=0, help="seed of everything the attacker trains")
  p.set_defaults(func=_cmd_attack)
  p = sub.add_parser("report", help="rebuild report.html / report.md of an audit run directory, "
                                     "or compare the privacy audits of several (--sweep)",
                     description="Rebuild report.html (self-contained) and report.md with plots "
                                 "from a run directory's results.json and scores.npz; with "
                                 "--sweep DIR, write DIR/sweep.html and DIR/sweep.md: the "
                                 "privacy audits (--canaries) of several runs, e.g. one recipe "
                                 "at several --dp-epsilon, in one table and one plot of "
                                 "empirical against theoretical epsilon.")
  p.add_argument("run_dir", nargs="+", help="a directory written by 'mia-jax audit' (several "
                                            "with --sweep)")
  p.add_argument("--sweep", default=None, metavar="DIR",
                 help="write a sweep page of the runs' privacy audits into DIR")
  p.add_argument("--dpi", type=int, default=100, help="resolution of the plots")
  p.set_defaults(func=_cmd_report)
  _add_score_parser(sub).set_defaults(func=_cmd_score)
  return parser


def _error(message: str) -> int:
  print(f"mia-jax: error: {message}", file=sys.stderr)
  return 2


def _resource_message(e: BaseException) -> str | None:
  """A user-facing message for running out of disk or memory (raised as many types by
  the OS, XLA and orbax/tensorstore), or None."""
  text = f"{type(e).__name__}: {e}"
  disk = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
      k in text for k in ("No space left", "ENOSPC", "Disk quota"))
  if disk:
    return ("no space left on the device holding the run directory; free some space and "
            "rerun the same command to resume")
  if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return ("out of memory (" + first + "); lower --microbatch-size, --batch-size, "
            "--num-reference / --num-shadow (models trained at once) or the model's widths "
            "(-M widths=...), then rerun the same command to resume")
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status: 0, 2 for anything a user can cause
  (bad input, unusable paths, no disk space or memory, corrupt files), 130 for Ctrl-C."""
  try:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "attack":
      args.attacks_given = args.attacks is not None
      if args.attacks is None:
        args.attacks = "loss,confidence,entropy,modified_entropy"
    return args.func(args)
  except MiaInputError as e:
    return _error(str(e))
  except KeyboardInterrupt:
    print("mia-jax: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  except OSError as e:
    msg = _resource_message(e)
    if msg is None:
      where = f": {e.filename}" if e.filename else ""
      msg = f"{e.strerror or e}{where}"
    return _error(msg)
  except Exception as e:  # noqa: BLE001 - only resource exhaustion is turned into a message
    msg = _resource_message(e)
    if msg is None:
      raise
    return _error(msg)


def _exit_on_interrupt(signum, frame) -> None:
  """SIGINT in the console script: release the run directory's lock and exit at once
  with 130. Every file mia-jax writes is complete or temporary at any moment (the same
  guarantee that makes ``kill -9`` safe), so nothing is lost, and the rerun resumes. A
  KeyboardInterrupt instead can land inside a garbage-collection callback (where Python
  ignores it and prints a traceback) or crash the interpreter's teardown while XLA or
  orbax threads run."""
  from mia_jax.rundir import release_held_locks
  release_held_locks()
  try:
    os.write(2, b"mia-jax: interrupted; rerun the same command to resume\n")
  finally:
    os._exit(130)


def entry() -> None:
  """The ``mia-jax`` console script: :func:`main`, exiting with 130 at once on Ctrl-C
  (:func:`_exit_on_interrupt`)."""
  import signal
  signal.signal(signal.SIGINT, _exit_on_interrupt)
  try:
    code = main()
  except KeyboardInterrupt:  # between main's own handler and here
    print("mia-jax: interrupted; rerun the same command to resume", file=sys.stderr)
    code = 130
  if code == 130:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
  sys.exit(code)


if __name__ == "__main__":
  entry()
