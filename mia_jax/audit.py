"""The audit: train a target, compute its signals, run every attack, measure leakage.

:func:`run_audit` is the library entry point behind ``mia-jax audit``. It writes into
``out_dir``:

* ``target/`` -- the trained target (orbax checkpoint; reused when the run is resumed);
* ``scores.npz`` -- every attack's score on the evaluation examples and ``is_member``;
* ``results.json`` -- the documented, versioned summary (see ``docs/results_schema.md``).

Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from mia_jax._validation import MiaInputError, check_in_range, check_positive_int

SCHEMA_VERSION = 1
BLACKBOX_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy", "correctness")
REFERENCE_ATTACKS = ("lira", "lira-offline", "lira-fixed-variance", "rmia", "rmia-offline")
SHADOW_ATTACKS = ("shokri",)
WHITEBOX_ATTACKS = ("gradient-norm", "stolen-memories")
ALL_ATTACKS = BLACKBOX_ATTACKS + REFERENCE_ATTACKS + SHADOW_ATTACKS + WHITEBOX_ATTACKS
DEFAULT_ATTACKS = ALL_ATTACKS
REPORT_FPRS = (0.1, 0.01, 0.001, 0.0001, 0.0)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """Everything an audit run needs (every field is a CLI flag and a config key).

  Attributes:
    dataset: built-in name, ``tfds:NAME`` / tfds name, or an ``.npz`` path.
    dataset_options: keyword options for the loader (e.g. ``{"num_features": 50}``).
    model: architecture name (``logistic``, ``mlp``, ``small_cnn``, ``resnet``).
    model_options: keyword options for the architecture (e.g. ``{"widths": [256, 256]}``).
    target_size: examples in the target's training set (members); the same number of
      non-members is held out for evaluation; the rest is the attacker's auxiliary data.
      None: an eighth of the pooled data (small, so the default target overfits).
    optimizer, learning_rate, epochs, batch_size, weight_decay: the training recipe.
    attacks: attack names (see ``ALL_ATTACKS``).
    layers: layers for the white-box attack (None: all below the logits).
    num_proxies: proxies per layer (averaged).
    path_steps: 0 for point Jacobians, R for path-integrated ones.
    whitebox_setting: "shadow" or "nonmember" (see :mod:`mia_jax.attacks.meta`).
    target_precision: precision the white-box threshold is calibrated for.
    target_fpr: FPR the threshold is calibrated for in the non-member setting.
    num_reference: reference models for LiRA / RMIA (even; each candidate and auxiliary
      example is IN for exactly half of them).
    num_shadow: shadow models for Shokri et al. (trained on the auxiliary data only).
    rmia_offline_a: the offline RMIA constant ``a`` in P_IN ~ a P_OUT + (1 - a).
    seed: fixes the split, all training and all attacks.
    microbatch_size: examples per compiled chunk in signal passes.
  """
  dataset: str = "digits"
  dataset_options: dict = dataclasses.field(default_factory=dict)
  model: str = "mlp"
  model_options: dict = dataclasses.field(default_factory=dict)
  target_size: int | None = None
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  epochs: int = 60
  batch_size: int = 64
  weight_decay: float = 0.0
  attacks: tuple[str, ...] = DEFAULT_ATTACKS
  layers: tuple[str, ...] | None = None
  num_proxies: int = 1
  path_steps: int = 0
  whitebox_setting: str = "shadow"
  target_precision: float = 0.9
  target_fpr: float = 0.01
  num_reference: int = 8
  num_shadow: int = 4
  rmia_offline_a: float = 0.3
  seed: int = 0
  microbatch_size: int = 512

  def __post_init__(self):
    unknown = [a for a in self.attacks if a not in ALL_ATTACKS]
    if unknown:
      raise MiaInputError(f"attacks: unknown attack(s) {unknown}; expected some of {list(ALL_ATTACKS)}")
    if not self.attacks:
      raise MiaInputError("attacks: expected at least one attack")
    if self.target_size is not None:
      check_positive_int(self.target_size, "target_size", minimum=2)
    check_in_range(self.target_precision, "target_precision", 0, 1, low_open=True)
    check_in_range(self.target_fpr, "target_fpr", 0, 1)
    if self.whitebox_setting not in ("shadow", "nonmember"):
      raise MiaInputError(
          f"whitebox_setting: expected 'shadow' or 'nonmember', got {self.whitebox_setting!r}")
    check_positive_int(self.microbatch_size, "microbatch_size")
    check_positive_int(self.num_reference, "num_reference", minimum=2)
    if self.num_reference % 2:
      raise MiaInputError(f"num_reference: expected an even number >= 2, got {self.num_reference}")
    check_positive_int(self.num_shadow, "num_shadow")
    check_in_range(self.rmia_offline_a, "rmia_offline_a", 0, 1)
    self.train_config()  # validates the recipe

  def train_config(self):
    from mia_jax.train import TrainConfig
    return TrainConfig(optimizer=self.optimizer, learning_rate=self.learning_rate,
                       epochs=self.epochs, batch_size=self.batch_size,
                       weight_decay=self.weight_decay)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["attacks"] = list(self.attacks)
    d["layers"] = list(self.layers) if self.layers is not None else None
    return d


def write_json_atomic(path: str, obj: Any) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=False)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_npz_atomic(path: str, **arrays) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=d)
  os.close(fd)
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def versions() -> dict[str, str]:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for pkg in ("mia-jax", "jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = "not installed"
  return out


def device_info() -> dict[str, Any]:
  import jax
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind, "count": len(devs)}


class _Stages:
  """Wall-clock timing of named stages (also printed through ``log``)."""

  def __init__(self, log: Callable[[str], None]):
    self.timings: dict[str, float] = {}
    self.log = log

  def run(self, name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    self.timings[name] = round(time.perf_counter() - t0, 3)
    self.log(f"[stage] {name}: {self.timings[name]:.1f}s")
    return out


class Setup(NamedTuple):
  """The data, membership split and architecture an audit (or checkpoint attack) uses."""
  dataset: Any
  x: np.ndarray
  y: np.ndarray
  split: Any
  model: Any
  target_size: int


def prepare(config: AuditConfig) -> Setup:
  """Loads the dataset, draws the seeded split (members, non-members, auxiliary) and
  builds the model. Deterministic in ``config``, so a run can be reconstructed from its
  saved configuration."""
  from mia_jax.attacks.stolen_memories import check_disjoint
  from mia_jax.data import load_dataset, membership_split
  from mia_jax.models import make_model
  ds = load_dataset(config.dataset, **config.dataset_options)
  x, y = ds.all_x(), ds.all_y()
  n_total = x.shape[0]
  n_target = config.target_size or n_total // 8
  if 2 * n_target >= n_total:
    raise MiaInputError(
        f"target_size: {n_target} members plus as many non-members leave no auxiliary data "
        f"from {n_total} examples")
  split = membership_split(n_total, target_in=n_target, target_out=n_target,
                           auxiliary=n_total - 2 * n_target, seed=config.seed)
  check_disjoint(split.auxiliary, split.target_in)
  model = make_model(config.model, input_shape=ds.feature_shape, num_classes=ds.num_classes,
                     **config.model_options)
  return Setup(ds, x, y, split, model, n_target)


def _shadow_keep(num_models: int, n: int, size: int, seed: int) -> np.ndarray:
  """Shadow model m trains on a random half of the auxiliary data (at most ``size``
  examples, the target's training-set size); the rest are its known non-members."""
  rng = np.random.default_rng(seed)
  keep = np.zeros((num_models, n), bool)
  k = min(size, n // 2)
  for m in range(num_models):
    keep[m, rng.choice(n, k, replace=False)] = True
  return keep


def _stacked_models(path, model, x, y, keep, tcfg, seed, progress, description, log,
                    checkpoint_dir=None):
  """Trains M models at once, or reloads them from ``path`` when a run is resumed."""
  import jax
  from mia_jax.train import load_variables, save_variables, train_models
  if os.path.isdir(path):
    like = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), keep.shape[0]))
    log(f"resuming: reusing {description} from {path}")
    return load_variables(path, like=like)[0]
  res = train_models(model, x, y, keep, config=tcfg, seed=seed, progress=progress,
                     description=description, checkpoint_dir=checkpoint_dir)
  save_variables(path, res.variables, metadata={"model": dict(model.spec), "keep": keep.tolist()})
  return res.variables


def run_audit(config: AuditConfig, out_dir: str, *, overwrite: bool = False, progress=None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Runs an audit and writes results into ``out_dir`` (see module docstring).

  A finished run (``results.json`` present) is not overwritten unless ``overwrite``; an
  unfinished one is resumed from its checkpoints. ``progress`` (a rich Progress) shows
  bars for every training and every microbatched signal pass.

  Returns:
    The results dict written to ``results.json``.
  """
  from mia_jax._batching import progress_scope
  with progress_scope(progress, "signals"):
    return _run_audit(config, out_dir, overwrite=overwrite, progress=progress, log=log)


def _run_audit(config: AuditConfig, out_dir: str, *, overwrite: bool, progress,
               log: Callable[[str], None]) -> dict[str, Any]:
  import jax  # noqa: F401  (device info)

  from mia_jax.attacks import stolen_memories as sm
  from mia_jax.attacks.threshold import threshold_scores
  from mia_jax.metrics import precision_recall_at, prior_precision, summarize
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import load_variables, save_variables, train_model

  out_dir = os.path.abspath(out_dir)
  results_path = os.path.join(out_dir, "results.json")
  if os.path.exists(results_path) and not overwrite:
    raise MiaInputError(f"out: {out_dir} holds a finished run; pass --overwrite to replace it")
  if overwrite and os.path.isdir(out_dir):
    import shutil
    for name in ("results.json", "scores.npz", "target", "reference", "shadow", "config.json",
                 "checkpoints", "report.html", "report.md", "plots"):
      p = os.path.join(out_dir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
  os.makedirs(out_dir, exist_ok=True)
  cfg_path = os.path.join(out_dir, "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      previous = json.load(f)
    # Options added to AuditConfig after the run started count with their defaults, so a
    # run begun by an older version resumes when nothing it used has changed.
    defaults = json.loads(json.dumps(AuditConfig().to_dict()))
    previous = {**defaults, **previous}
    current = json.loads(json.dumps(config.to_dict()))
    if previous != current:
      changed = sorted(k for k in set(previous) | set(current)
                       if previous.get(k) != current.get(k))
      raise MiaInputError(
          f"out: {out_dir} holds an unfinished run with another configuration (differs in "
          f"{changed}); rerun with the same options to resume, or pass --overwrite")
    log(f"resuming the unfinished run in {out_dir}")
  write_json_atomic(cfg_path, config.to_dict())

  stages = _Stages(log)
  ds, x, y, split, model, n_target = stages.run("load_data", lambda: prepare(config))
  n_total = x.shape[0]
  if config.layers is not None and "stolen-memories" in config.attacks:
    from mia_jax.whitebox import _check_layers
    _check_layers(model, config.layers)  # before any training
  tcfg = config.train_config()

  target_dir = os.path.join(out_dir, "target")

  work = os.path.join(out_dir, "checkpoints")

  def train_target():
    if os.path.isdir(target_dir):
      log(f"resuming: reusing the trained target in {target_dir}")
      like = model.init(__import__("jax").random.key(0))
      return load_variables(target_dir, like=like)[0]
    res = train_model(model, x, y, config=tcfg, seed=config.seed, indices=split.target_in,
                      progress=progress, description="target",
                      checkpoint_dir=os.path.join(work, "target"))
    save_variables(target_dir, res.variables, metadata={"model": dict(model.spec)})
    return res.variables

  target = stages.run("train_target", train_target)
  eval_idx = np.concatenate([split.target_in, split.target_out])
  is_member = np.r_[np.ones(split.target_in.size, bool), np.zeros(split.target_out.size, bool)]
  bb = stages.run("blackbox_signals", lambda: blackbox_signals(
      model, target, x[eval_idx], y[eval_idx], microbatch_size=config.microbatch_size))
  train_acc = float(bb["correct"][is_member].mean())
  test_acc = float(bb["correct"][~is_member].mean())

  scores: dict[str, np.ndarray] = {}
  attacks_out: dict[str, Any] = {}
  bb_names = [a for a in config.attacks if a in BLACKBOX_ATTACKS]
  for name, s in threshold_scores(bb, bb_names).items():
    scores[name] = s
    attacks_out[name] = summarize(s, is_member, REPORT_FPRS)

  ref_attacks = [a for a in config.attacks if a in REFERENCE_ATTACKS]
  if ref_attacks:
    from mia_jax.attacks import lira, rmia
    from mia_jax.data import keep_matrix
    # LiRA's setup: reference models on random halves of the candidates (members and
    # non-members of the target), each candidate IN for exactly half of them, so every
    # reference model trains on as many examples as the target. The auxiliary data is
    # RMIA's population z (OUT for every reference model).
    keep = keep_matrix(config.num_reference, eval_idx.size, seed=config.seed + 17)
    refs = stages.run("reference_models", lambda: _stacked_models(
        os.path.join(out_dir, "reference"), model, x[eval_idx], y[eval_idx], keep, tcfg,
        config.seed + 1, progress, "reference models", log, os.path.join(work, "reference")))
    pool = np.concatenate([eval_idx, split.auxiliary])
    ref_sig = stages.run("reference_signals", lambda: blackbox_signals(
        model, refs, x[pool], y[pool], microbatch_size=config.microbatch_size, stacked=True))
    ne = eval_idx.size
    tgt_z = blackbox_signals(model, target, x[split.auxiliary], y[split.auxiliary],
                             microbatch_size=config.microbatch_size)["confidence"]
    sl, conf = ref_sig["scaled_logit"], ref_sig["confidence"]
    runs = {
        "lira": lambda: lira.lira_online(bb["scaled_logit"], sl[:, :ne], keep),
        "lira-offline": lambda: lira.lira_offline(bb["scaled_logit"], sl[:, :ne], keep),
        "lira-fixed-variance": lambda: lira.lira_online(
            bb["scaled_logit"], sl[:, :ne], keep, fix_variance=True),
        "rmia": lambda: rmia.rmia_scores(bb["confidence"], tgt_z, conf[:, :ne], conf[:, ne:],
                                         keep=keep),
        "rmia-offline": lambda: rmia.rmia_scores(bb["confidence"], tgt_z, conf[:, :ne], conf[:, ne:],
                                                 keep=keep, offline_a=config.rmia_offline_a),
    }
    for name in ref_attacks:
      scores[name] = np.asarray(stages.run(name, runs[name]), np.float64)
      attacks_out[name] = summarize(scores[name], is_member, REPORT_FPRS)
      attacks_out[name]["num_reference"] = config.num_reference

  if "shokri" in config.attacks:
    from mia_jax.attacks import shokri
    from mia_jax.data import keep_matrix
    aux = split.auxiliary
    skeep = _shadow_keep(config.num_shadow, aux.size, n_target, config.seed + 23)
    shadows = stages.run("shadow_models", lambda: _stacked_models(
        os.path.join(out_dir, "shadow"), model, x[aux], y[aux], skeep, tcfg, config.seed + 2,
        progress, "shadow models", log, os.path.join(work, "shadow")))

    def run_shokri():
      probs = shokri.predict_probs(model, shadows, x[aux], stacked=True,
                                   microbatch_size=config.microbatch_size)
      state = shokri.fit_shokri(probs, y[aux], skeep, per_class=True, seed=config.seed)
      target_probs = shokri.predict_probs(model, target, x[eval_idx],
                                          microbatch_size=config.microbatch_size)
      return np.asarray(shokri.score_shokri(state, target_probs, y[eval_idx]), np.float64)

    scores["shokri"] = stages.run("shokri", run_shokri)
    attacks_out["shokri"] = summarize(scores["shokri"], is_member, REPORT_FPRS)
    attacks_out["shokri"]["num_shadow"] = config.num_shadow

  if "gradient-norm" in config.attacks:
    from mia_jax.whitebox import gradient_norms
    norms = stages.run("gradient_norm", lambda: gradient_norms(
        model, target, x[eval_idx], y[eval_idx], microbatch_size=min(config.microbatch_size, 256)))
    scores["gradient-norm"] = -norms["total"].astype(np.float64)
    entry = summarize(scores["gradient-norm"], is_member, REPORT_FPRS)
    entry["layers"] = {}
    for stage, n in norms.items():
      if stage != "total":
        scores[f"gradient-norm/{stage}"] = -n.astype(np.float64)
        entry["layers"][stage] = summarize(scores[f"gradient-norm/{stage}"], is_member, REPORT_FPRS)
    attacks_out["gradient-norm"] = entry

  if "stolen-memories" in config.attacks:
    smc = sm.StolenMemoriesConfig(layers=config.layers, num_proxies=config.num_proxies,
                                  path_steps=config.path_steps,
                                  microbatch_size=min(config.microbatch_size, 256))

    def whitebox():
      return sm.run_attack(model, target, x[split.auxiliary], y[split.auxiliary],
                           x[eval_idx], y[eval_idx], target_train_size=n_target, config=smc,
                           train_config=tcfg, setting=config.whitebox_setting,
                           target_precision=config.target_precision,
                           target_fpr=config.target_fpr, seed=config.seed, progress=progress,
                           work_dir=os.path.join(work, "stolen_memories"))

    wb = stages.run("stolen_memories", whitebox)
    scores["stolen-memories"] = wb.meta_scores
    entry = summarize(wb.meta_scores, is_member, REPORT_FPRS)
    precision, recall = precision_recall_at(wb.meta_scores, is_member, wb.threshold)
    tpr = recall
    fpr = float(np.mean(wb.meta_scores[~is_member] >= wb.threshold))
    entry["calibrated"] = {
        **wb.calibration, "threshold": wb.threshold, "precision": float(precision),
        "recall": float(recall), "fpr": fpr,
        "prior_precision": {str(p): float(prior_precision(tpr, fpr, p)) for p in (0.5, 0.1, 0.01)},
    }
    entry["layers"] = {}
    for layer, s in wb.layer_scores.items():
      scores[f"stolen-memories/{layer}"] = s
      entry["layers"][layer] = summarize(s, is_member, REPORT_FPRS)
    attacks_out["stolen-memories"] = entry

  write_npz_atomic(os.path.join(out_dir, "scores.npz"), is_member=is_member,
                   labels=y[eval_idx], **{f"score:{k}": v for k, v in scores.items()})
  results = {
      "schema_version": SCHEMA_VERSION,
      "dataset": {"name": ds.name, "num_classes": ds.num_classes,
                  "feature_shape": list(ds.feature_shape), "num_examples": n_total,
                  "num_members": int(split.target_in.size),
                  "num_nonmembers": int(split.target_out.size),
                  "num_auxiliary": int(split.auxiliary.size)},
      "model": {"name": model.name, "spec": dict(model.spec)},
      "seed": config.seed,
      "config": config.to_dict(),
      "target": {"train_accuracy": train_acc, "test_accuracy": test_acc,
                 "generalization_gap": train_acc - test_acc},
      "attacks": attacks_out,
      "timings": stages.timings,
      "versions": versions(),
      "device": device_info(),
  }
  write_json_atomic(results_path, results)
  import shutil
  shutil.rmtree(work, ignore_errors=True)  # training checkpoints are only needed to resume
  return results
