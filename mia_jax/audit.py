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
from typing import Any, Callable, NamedTuple

import numpy as np

from mia_jax._validation import MiaInputError, check_in_range, check_positive_int

SCHEMA_VERSION = 1
BLACKBOX_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy", "correctness")
REFERENCE_ATTACKS = ("lira", "lira-offline", "lira-fixed-variance", "rmia", "rmia-offline")
SHADOW_ATTACKS = ("shokri",)
WHITEBOX_ATTACKS = ("gradient-norm", "stolen-memories", "nasr")
ALL_ATTACKS = BLACKBOX_ATTACKS + REFERENCE_ATTACKS + SHADOW_ATTACKS + WHITEBOX_ATTACKS
DEFAULT_ATTACKS = ALL_ATTACKS
REPORT_FPRS = (0.1, 0.01, 0.001, 0.0001, 0.0)
SHADOW_SOURCES = ("real", "noisy", "marginals", "synthetic")
LIRA_AUGMENTATIONS = ("none", "flip", "shift", "flip+shift")


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
    gradient_layers: stages whose per-example parameter gradients the Nasr et al. attack
      reads (None: the last stage, the logits layer).
    num_proxies: proxies per layer (averaged).
    path_steps: 0 for point Jacobians, R for path-integrated ones.
    whitebox_setting: "shadow" or "nonmember" (see :mod:`mia_jax.attacks.meta`).
    target_precision: precision the white-box threshold is calibrated for.
    target_fpr: FPR the threshold is calibrated for in the non-member setting.
    num_reference: reference models for LiRA / RMIA (even; each candidate and auxiliary
      example is IN for exactly half of them).
    num_shadow: shadow models for Shokri et al. (trained on the auxiliary data only).
    rmia_offline_a: the offline RMIA constant ``a`` in P_IN ~ a P_OUT + (1 - a).
    defenses: prediction-API defenses (``"top-k=3"``, ``"round=2"``, ``"temperature=20"``,
      ``"label-only"``; :mod:`mia_jax.defenses`), applied in order to every output a
      black-box attack sees: the target's, and the attacker's own reference and shadow
      models' (the attacker queries them through the same API). White-box attacks read
      the weights and are unaffected.
    dp_epsilon: train with DP-SGD, noise calibrated so that the target's training is
      (dp_epsilon, delta)-DP (dp-accounting RDP accountant, Poisson sampling). Reference,
      shadow and white-box shadow models use the same recipe (same noise multiplier).
    noise_multiplier: train with DP-SGD at this noise multiplier instead (the epsilon it
      gives is reported); at most one of dp_epsilon and noise_multiplier.
    clip_norm: DP-SGD per-example clipping norm C.
    delta: DP delta, in (0, 1).
    shadow_source: the Shokri et al. shadow models' training data: "real" (the auxiliary
      data), "noisy" (it with a fraction ``shadow_noise`` of binary features flipped, or
      Gaussian noise of relative std ``shadow_noise`` for real features), "marginals"
      (per-class feature marginals of it) or "synthetic" (hill-climbing synthesis that
      queries the target's API; features assumed binary or in [0, 1]).
    shadow_noise: see shadow_source.
    lira_augmentations: LiRA's query augmentations for images: "none", "flip" (the
      mirror image), "shift" (the 9 one-pixel shifts), "flip+shift" (18, the reference
      code's set).
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
  gradient_layers: tuple[str, ...] | None = None
  num_proxies: int = 1
  path_steps: int = 0
  whitebox_setting: str = "shadow"
  target_precision: float = 0.9
  target_fpr: float = 0.01
  num_reference: int = 8
  num_shadow: int = 4
  rmia_offline_a: float = 0.3
  defenses: tuple[str, ...] = ()
  dp_epsilon: float | None = None
  noise_multiplier: float | None = None
  clip_norm: float = 1.0
  delta: float = 1e-5
  shadow_source: str = "real"
  shadow_noise: float = 0.1
  lira_augmentations: str = "none"
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
    from mia_jax.defenses import parse_defenses
    parse_defenses(self.defenses)  # names and values; k <= K is checked with the data
    if self.dp_epsilon is not None and self.noise_multiplier is not None:
      raise MiaInputError("dp_epsilon, noise_multiplier: give at most one (the noise is "
                          "calibrated to dp_epsilon, or dp_epsilon follows from the noise)")
    if self.dp_epsilon is not None:
      check_in_range(self.dp_epsilon, "dp_epsilon", 0, float("inf"), low_open=True,
                     high_open=True)
    if self.noise_multiplier is not None:
      check_in_range(self.noise_multiplier, "noise_multiplier", 0, float("inf"),
                     high_open=True)
    check_in_range(self.clip_norm, "clip_norm", 0, float("inf"), low_open=True, high_open=True)
    check_in_range(self.delta, "delta", 0, 1, low_open=True, high_open=True)
    if self.shadow_source not in SHADOW_SOURCES:
      raise MiaInputError(f"shadow_source: expected one of {SHADOW_SOURCES}, got "
                          f"{self.shadow_source!r}")
    check_in_range(self.shadow_noise, "shadow_noise", 0, 1)
    if self.lira_augmentations not in LIRA_AUGMENTATIONS:
      raise MiaInputError(f"lira_augmentations: expected one of {LIRA_AUGMENTATIONS}, got "
                          f"{self.lira_augmentations!r}")
    self.train_config()  # validates the recipe

  @property
  def uses_dp(self) -> bool:
    return self.dp_epsilon is not None or self.noise_multiplier is not None

  def train_config(self):
    from mia_jax.train import TrainConfig
    return TrainConfig(optimizer=self.optimizer, learning_rate=self.learning_rate,
                       epochs=self.epochs, batch_size=self.batch_size,
                       weight_decay=self.weight_decay)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["attacks"] = list(self.attacks)
    d["defenses"] = list(self.defenses)
    d["layers"] = list(self.layers) if self.layers is not None else None
    d["gradient_layers"] = (list(self.gradient_layers) if self.gradient_layers is not None
                            else None)
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


def _calibrated(scores, is_member, threshold: float, calibration: dict) -> dict:
  """A threshold chosen on attacker-side data, applied to the evaluation examples:
  achieved precision, recall, FPR and the precision at other member priors."""
  from mia_jax.metrics import precision_recall_at, prior_precision
  precision, recall = precision_recall_at(scores, is_member, threshold)
  fpr = float(np.mean(scores[~is_member] >= threshold))
  return {**calibration, "threshold": threshold, "precision": float(precision),
          "recall": float(recall), "fpr": fpr,
          "prior_precision": {str(p): float(prior_precision(recall, fpr, p))
                              for p in (0.5, 0.1, 0.01)}}


def _whitebox_shadow_trainer(path, model, tcfg, train_one, progress, log, checkpoint_dir):
  """``(x, y, indices, seed) -> variables`` for the white-box shadow target: trained once
  per (indices, seed) in this run, saved at ``path`` and reloaded when a run is resumed
  (the saved model is reused only if it was trained on the same indices and seed)."""
  import hashlib
  import jax
  from mia_jax.train import load_variables, save_variables, train_model
  memo = {}

  def train(xs, ys, indices, seed):
    key = hashlib.sha256(np.asarray(indices, np.int64).tobytes()
                         + repr(seed).encode()).hexdigest()
    if key in memo:
      return memo[key]
    if os.path.isdir(path):
      like = jax.eval_shape(model.init, jax.random.key(0))
      variables, meta = load_variables(path, like=like)
      if meta.get("key") == key:
        log(f"resuming: reusing the white-box shadow target in {path}")
        memo[key] = variables
        return variables
    if train_one is not None:
      variables = train_one(xs, ys, indices, seed)
    else:
      variables = train_model(model, xs, ys, config=tcfg, seed=seed, indices=indices,
                              progress=progress, description="white-box shadow target",
                              checkpoint_dir=checkpoint_dir).variables
    save_variables(path, variables, metadata={"model": dict(model.spec), "key": key},
                   overwrite=True)
    memo[key] = variables
    return variables

  return train


def _stacked_models(path, model, x, y, keep, tcfg, seed, progress, description, log,
                    checkpoint_dir=None, train_one=None):
  """Trains M models at once, or reloads them from ``path`` when a run is resumed.

  ``train_one(x, y, indices, seed) -> variables`` (DP-SGD) trains them one at a time
  instead, model m with seed ``(seed, m)`` as :func:`mia_jax.train.train_models` does.
  """
  import jax
  import jax.numpy as jnp
  from mia_jax.train import load_variables, save_variables, train_models
  if os.path.isdir(path):
    like = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), keep.shape[0]))
    log(f"resuming: reusing {description} from {path}")
    return load_variables(path, like=like)[0]
  if train_one is None:
    variables = train_models(model, x, y, keep, config=tcfg, seed=seed, progress=progress,
                             description=description, checkpoint_dir=checkpoint_dir).variables
  else:
    each = []
    for m in range(keep.shape[0]):
      log(f"{description}: training model {m + 1}/{keep.shape[0]} with DP-SGD")
      each.append(train_one(x, y, np.flatnonzero(keep[m]), (seed, m)))
    variables = jax.tree.map(lambda *a: jnp.stack(a), *each)
  save_variables(path, variables, metadata={"model": dict(model.spec), "keep": keep.tolist()})
  return variables


def reference_keep(config: AuditConfig, num_candidates: int) -> np.ndarray:
  """The reference models' keep matrix over the evaluation candidates (members, then
  non-members): each candidate IN for exactly half of ``config.num_reference`` models."""
  from mia_jax.data import keep_matrix
  return keep_matrix(config.num_reference, num_candidates, seed=config.seed + 17)


def reference_attacks(target_sl, ref_sl, target_conf, target_conf_z, ref_conf, ref_conf_z, keep,
                      *, rmia_offline_a: float, discrete: bool = False
                      ) -> dict[str, Callable[[], np.ndarray]]:
  """LiRA and RMIA from signals, as thunks by attack name (the audit and the checkpoint
  attack share them).

  Args:
    target_sl: float[N] or [N, A] the target's scaled logits (A augmentations).
    ref_sl: float[M, N] or [M, N, A] the reference models' scaled logits.
    target_conf, target_conf_z: float[N], float[Z] the target's true-class probability on
      the candidates and on RMIA's population z.
    ref_conf, ref_conf_z: float[M, N], float[M, Z] the same for the reference models.
    keep: bool[M, N] reference training membership of the candidates.
    rmia_offline_a: offline RMIA's a.
    discrete: outputs come through a defended API.
  """
  from mia_jax.attacks import lira, rmia
  # A defended API discretizes its outputs, so reference signals often tie exactly, and
  # with 2 reference models each example has one IN and one OUT value: zero variance.
  # There a std floor keeps the Gaussians proper (float32 cannot square the reference
  # code's 1e-30); otherwise the reference code's eps.
  eps = 1e-3 if discrete or np.shape(ref_sl)[0] == 2 else 1e-30
  return {
      "lira": lambda: lira.lira_online(target_sl, ref_sl, keep, eps=eps),
      "lira-offline": lambda: lira.lira_offline(target_sl, ref_sl, keep, eps=eps),
      "lira-fixed-variance": lambda: lira.lira_online(target_sl, ref_sl, keep,
                                                      fix_variance=True, eps=eps),
      "rmia": lambda: rmia.rmia_scores(target_conf, target_conf_z, ref_conf, ref_conf_z,
                                       keep=keep),
      "rmia-offline": lambda: rmia.rmia_scores(target_conf, target_conf_z, ref_conf,
                                               ref_conf_z, keep=keep,
                                               offline_a=rmia_offline_a),
  }


def _shadow_records(config: AuditConfig, model, target, defenses, ax: np.ndarray,
                    ay: np.ndarray):
  """The Shokri et al. shadow models' records from ``config.shadow_source``.

  Returns ``(x, y, synthesis)``; ``synthesis`` describes the model-based search (records
  attempted and emitted, target queries per emitted record) or is None.
  """
  if config.shadow_source == "real":
    return ax, ay, None
  import jax.numpy as jnp

  from mia_jax.attacks import shokri
  from mia_jax.defenses import apply_defenses
  from mia_jax.synthesis import binary_sampler, uniform_sampler
  shape = ax.shape[1:]
  flat = ax.reshape(ax.shape[0], -1)
  opts = {}
  if config.shadow_source == "synthetic":
    binary = bool(np.all((flat == 0) | (flat == 1)))
    opts = dict(query_fn=lambda xb: apply_defenses(
        model.apply(target, jnp.reshape(xb, (-1, *shape))), defenses),
        synthesis_options={"feature_sampler": binary_sampler if binary else uniform_sampler})
  data = shokri.shadow_data(config.shadow_source, num_records=ax.shape[0], seed=config.seed + 29,
                            x=flat, y=ay, noise=config.shadow_noise, **opts)
  synthesis = None
  if data.queries is not None:
    q = np.asarray(data.queries, np.float64)
    synthesis = {"attempted": int(data.attempted), "emitted": int(data.x.shape[0]),
                 "queries_mean": float(q.mean()) if q.size else None,
                 "queries_median": float(np.median(q)) if q.size else None}
    if data.x.shape[0] < 4:
      raise MiaInputError(f"shadow_source: the synthesis emitted only {data.x.shape[0]} of "
                          f"{data.attempted} records; too few to train shadow models")
  return np.asarray(data.x).reshape(-1, *shape), np.asarray(data.y), synthesis


def _dp_setup(config: AuditConfig, num_members: int) -> dict[str, Any]:
  """The DP-SGD noise and accounting of the target's training (see AuditConfig)."""
  from mia_jax import dp
  tcfg = config.train_config()
  q = dp.sampling_rate(num_members, tcfg.batch_size)
  steps = tcfg.epochs * dp.steps_per_epoch(num_members, tcfg.batch_size)
  if config.noise_multiplier is not None:
    sigma = float(config.noise_multiplier)
  else:
    sigma = dp.noise_for_epsilon(config.dp_epsilon, q, steps, config.delta)
  eps = dp.epsilon_for(sigma, q, steps, config.delta)
  return {"epsilon": eps, "target_epsilon": config.dp_epsilon, "delta": config.delta,
          "noise_multiplier": sigma, "clip_norm": config.clip_norm, "sampling_rate": q,
          "steps": steps, "sampling": "poisson"}


def _dp_results(dp_info: dict[str, Any], attacks_out: dict[str, Any]) -> dict[str, Any]:
  """``results["dp"]``: the accounting, the attacks' accuracy and the bounds at epsilon
  (lists with one entry per epsilon, so sweeps concatenate; see docs/results_schema.md)."""
  import math

  from mia_jax import dp
  eps, delta = dp_info["epsilon"], dp_info["delta"]
  finite = math.isfinite(eps)
  out = {**dp_info, "epsilon": [eps if finite else "inf"],
         "attack_accuracy": {k: [v["balanced_accuracy"]] for k, v in attacks_out.items()},
         "attack_advantage": {k: [v["advantage"]] for k, v in attacks_out.items()},
         "bounds": {}, "tpr_bound_at_fpr": {}}
  if finite:
    out["bounds"] = {k: [v] for k, v in dp.membership_advantage_bounds(eps, delta).items()
                     if math.isfinite(v)}
    out["tpr_bound_at_fpr"] = {repr(float(f)): float(dp.tpr_bound(f, eps, delta))
                               for f in REPORT_FPRS}
  return out


def _decision_metrics(scores: np.ndarray, is_member: np.ndarray, threshold: float
                      ) -> dict[str, Any]:
  """Accuracy, precision and recall of the rule ``score >= threshold``."""
  pred = scores >= threshold
  tp = int(np.sum(pred & is_member))
  return {"threshold": float(threshold), "accuracy": float(np.mean(pred == is_member)),
          "precision": float(tp / pred.sum()) if pred.any() else None,
          "recall": float(tp / is_member.sum()), "predicted_members": int(pred.sum())}


def _augmentation_views(name: str):
  """(flip, shifts) for LiRA's query augmentations, or None for "none"."""
  from mia_jax.attacks.lira import SHIFTS_3X3
  shifts = ((0, 0),) + tuple(d for d in SHIFTS_3X3 if d != (0, 0))
  return {"none": None, "flip": (True, ((0, 0),)), "shift": (False, shifts),
          "flip+shift": (True, shifts)}[name]


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
  from mia_jax.metrics import summarize
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import load_variables, save_variables, train_model

  out_dir = os.path.abspath(out_dir)
  results_path = os.path.join(out_dir, "results.json")
  if os.path.exists(results_path) and not overwrite:
    raise MiaInputError(f"out: {out_dir} holds a finished run; pass --overwrite to replace it")
  if overwrite and os.path.isdir(out_dir):
    import shutil
    for name in ("results.json", "scores.npz", "target", "reference", "shadow", "config.json",
                 "checkpoints", "report.html", "report.md", "plots", "whitebox_shadow"):
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
  if "nasr" in config.attacks:
    from mia_jax.attacks import nasr
    nasr.check_layers(model, config.gradient_layers)  # before any training
  tcfg = config.train_config()
  from mia_jax.defenses import parse_defenses
  defenses = parse_defenses(config.defenses, ds.num_classes)  # k <= K, before training
  views = _augmentation_views(config.lira_augmentations)
  if views is not None and len(ds.feature_shape) != 3:
    raise MiaInputError(f"lira_augmentations: {config.lira_augmentations!r} needs images "
                        f"[H, W, C]; dataset {ds.name!r} has features of shape "
                        f"{tuple(ds.feature_shape)}")
  dp_info = None
  if config.uses_dp:
    if set(jax.eval_shape(model.init, jax.random.key(0))) != {"params"}:
      raise MiaInputError(f"dp_epsilon/noise_multiplier: DP-SGD needs per-example gradients, "
                          f"but model {model.name!r} has non-parameter state (BatchNorm)")
    dp_info = _dp_setup(config, n_target)
    log(f"DP-SGD: noise multiplier {dp_info['noise_multiplier']:.4f}, clip norm "
        f"{config.clip_norm}, epsilon {dp_info['epsilon']:.4g} at delta {config.delta}")

  def train_dp(xs, ys, indices, seed):
    from mia_jax.dp import train_model_dp
    return train_model_dp(model, xs, ys, config=tcfg, noise_multiplier=dp_info["noise_multiplier"],
                          clip_norm=config.clip_norm, seed=seed, indices=indices).variables

  train_one = train_dp if dp_info is not None else None

  target_dir = os.path.join(out_dir, "target")

  work = os.path.join(out_dir, "checkpoints")

  def train_target():
    if os.path.isdir(target_dir):
      log(f"resuming: reusing the trained target in {target_dir}")
      like = model.init(__import__("jax").random.key(0))
      return load_variables(target_dir, like=like)[0]
    if train_one is not None:
      variables = train_one(x, y, split.target_in, config.seed)
    else:
      variables = train_model(model, x, y, config=tcfg, seed=config.seed,
                              indices=split.target_in, progress=progress, description="target",
                              checkpoint_dir=os.path.join(work, "target")).variables
    save_variables(target_dir, variables, metadata={"model": dict(model.spec)})
    return variables

  target = stages.run("train_target", train_target)
  eval_idx = np.concatenate([split.target_in, split.target_out])
  is_member = np.r_[np.ones(split.target_in.size, bool), np.zeros(split.target_out.size, bool)]
  bb = stages.run("blackbox_signals", lambda: blackbox_signals(
      model, target, x[eval_idx], y[eval_idx], microbatch_size=config.microbatch_size,
      defenses=defenses))
  # The target's accuracy is the model's own (argmax of its logits): defenses that round
  # or truncate probabilities may create ties the API's argmax breaks differently.
  raw_correct = bb["correct"] if not defenses else blackbox_signals(
      model, target, x[eval_idx], y[eval_idx], microbatch_size=config.microbatch_size)["correct"]
  train_acc = float(raw_correct[is_member].mean())
  test_acc = float(raw_correct[~is_member].mean())

  scores: dict[str, np.ndarray] = {}
  attacks_out: dict[str, Any] = {}
  bb_names = [a for a in config.attacks if a in BLACKBOX_ATTACKS]
  for name, s in threshold_scores(bb, bb_names).items():
    scores[name] = s
    attacks_out[name] = summarize(s, is_member, REPORT_FPRS)

  ref_attacks = [a for a in config.attacks if a in REFERENCE_ATTACKS]
  if ref_attacks:
    from mia_jax.attacks import lira
    # LiRA's setup: reference models on random halves of the candidates (members and
    # non-members of the target), each candidate IN for exactly half of them, so every
    # reference model trains on as many examples as the target. The auxiliary data is
    # RMIA's population z (OUT for every reference model).
    keep = reference_keep(config, eval_idx.size)
    refs = stages.run("reference_models", lambda: _stacked_models(
        os.path.join(out_dir, "reference"), model, x[eval_idx], y[eval_idx], keep, tcfg,
        config.seed + 1, progress, "reference models", log, os.path.join(work, "reference"),
        train_one))
    pool = np.concatenate([eval_idx, split.auxiliary])
    ref_sig = stages.run("reference_signals", lambda: blackbox_signals(
        model, refs, x[pool], y[pool], microbatch_size=config.microbatch_size, stacked=True,
        defenses=defenses))
    ne = eval_idx.size
    tgt_z = blackbox_signals(model, target, x[split.auxiliary], y[split.auxiliary],
                             microbatch_size=config.microbatch_size,
                             defenses=defenses)["confidence"]
    sl, conf = ref_sig["scaled_logit"], ref_sig["confidence"]
    tgt_sl, ref_sl = bb["scaled_logit"], sl[:, :ne]
    if views is not None and any(a.startswith("lira") for a in ref_attacks):
      def augmented():  # LiRA's A axis: [N, A] for the target, [M, N, A] for references
        ax = lira.augmentations(x[eval_idx], flip=views[0], shifts=views[1])
        t, r = [], []
        for a in range(ax.shape[0]):
          xa = np.asarray(ax[a])
          t.append(blackbox_signals(model, target, xa, y[eval_idx], defenses=defenses,
                                    microbatch_size=config.microbatch_size)["scaled_logit"])
          r.append(blackbox_signals(model, refs, xa, y[eval_idx], stacked=True,
                                    defenses=defenses,
                                    microbatch_size=config.microbatch_size)["scaled_logit"])
        return np.stack(t, -1), np.stack(r, -1)
      tgt_sl, ref_sl = stages.run("lira_augmentations", augmented)
    runs = reference_attacks(tgt_sl, ref_sl, bb["confidence"], tgt_z, conf[:, :ne],
                             conf[:, ne:], keep, rmia_offline_a=config.rmia_offline_a,
                             discrete=bool(defenses))
    for name in ref_attacks:
      scores[name] = np.asarray(stages.run(name, runs[name]), np.float64)
      attacks_out[name] = summarize(scores[name], is_member, REPORT_FPRS)
      attacks_out[name]["num_reference"] = config.num_reference
      if name.startswith("lira"):
        attacks_out[name]["augmentations"] = config.lira_augmentations

  if "shokri" in config.attacks:
    from mia_jax.attacks import shokri
    aux = split.auxiliary
    sx, sy, synthesis = stages.run("shadow_data", lambda: _shadow_records(
        config, model, target, defenses, x[aux], y[aux]))
    skeep = _shadow_keep(config.num_shadow, sx.shape[0], n_target, config.seed + 23)
    shadows = stages.run("shadow_models", lambda: _stacked_models(
        os.path.join(out_dir, "shadow"), model, sx, sy, skeep, tcfg, config.seed + 2,
        progress, "shadow models", log, os.path.join(work, "shadow"), train_one))

    # One attack model per class (the paper) needs in and out shadow records of every
    # class; synthesized or scarce shadow data may lack some, and then one class-agnostic
    # attack model is fit instead (reported as per_class = False).
    counts_in = np.stack([np.bincount(sy[k], minlength=ds.num_classes) for k in skeep])
    counts_out = np.stack([np.bincount(sy[~k], minlength=ds.num_classes) for k in skeep])
    uncovered = np.flatnonzero((counts_in.sum(0) == 0) | (counts_out.sum(0) == 0))
    per_class = uncovered.size == 0
    if not per_class:
      log(f"shokri: classes {uncovered.tolist()} have no in or no out shadow records; "
          f"fitting one class-agnostic attack model")

    def run_shokri():
      probs = shokri.predict_probs(model, shadows, sx, stacked=True, defenses=defenses,
                                   microbatch_size=config.microbatch_size)
      state = shokri.fit_shokri(probs, sy, skeep, per_class=per_class, seed=config.seed)
      target_probs = shokri.predict_probs(model, target, x[eval_idx], defenses=defenses,
                                          microbatch_size=config.microbatch_size)
      return np.asarray(shokri.score_shokri(state, target_probs, y[eval_idx]), np.float64)

    scores["shokri"] = stages.run("shokri", run_shokri)
    attacks_out["shokri"] = summarize(scores["shokri"], is_member, REPORT_FPRS)
    attacks_out["shokri"]["num_shadow"] = config.num_shadow
    # The attack models' own decision (membership probability >= 1/2, i.e. logit >= 0):
    # the paper's "attack accuracy, precision, recall".
    attacks_out["shokri"]["decision"] = _decision_metrics(scores["shokri"], is_member, 0.0)
    attacks_out["shokri"]["shadow_source"] = config.shadow_source
    attacks_out["shokri"]["per_class"] = bool(per_class)
    if not per_class:
      attacks_out["shokri"]["classes_without_shadow_records"] = uncovered.tolist()
    if synthesis is not None:
      attacks_out["shokri"]["synthesis"] = synthesis

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

  # The white-box attacks' shadow target (Stolen Memories' shadow setting and Nasr et al.)
  # is one model trained with the same data and seed: trained once, saved for resuming.
  whitebox_shadow = _whitebox_shadow_trainer(os.path.join(out_dir, "whitebox_shadow"), model,
                                             tcfg, train_one, progress, log,
                                             os.path.join(work, "whitebox_shadow"))

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
                           work_dir=os.path.join(work, "stolen_memories"),
                           train_shadow=whitebox_shadow)

    wb = stages.run("stolen_memories", whitebox)
    scores["stolen-memories"] = wb.meta_scores
    entry = summarize(wb.meta_scores, is_member, REPORT_FPRS)
    entry["calibrated"] = _calibrated(wb.meta_scores, is_member, wb.threshold, wb.calibration)
    entry["layers"] = {}
    for layer, s in wb.layer_scores.items():
      scores[f"stolen-memories/{layer}"] = s
      entry["layers"][layer] = summarize(s, is_member, REPORT_FPRS)
    attacks_out["stolen-memories"] = entry

  if "nasr" in config.attacks:
    from mia_jax.attacks import nasr
    ncfg = nasr.NasrConfig(layers=config.gradient_layers,
                           microbatch_size=min(config.microbatch_size, 128))
    res = stages.run("nasr", lambda: nasr.run_attack(
        model, target, x[split.auxiliary], y[split.auxiliary], x[eval_idx], y[eval_idx],
        target_train_size=n_target, config=ncfg, train_config=tcfg,
        target_precision=config.target_precision, seed=config.seed, progress=progress,
        train_shadow=whitebox_shadow, log=log))
    scores["nasr"] = res.scores
    entry = summarize(res.scores, is_member, REPORT_FPRS)
    entry["calibrated"] = _calibrated(res.scores, is_member, res.threshold, res.calibration)
    attacks_out["nasr"] = entry

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
      "defenses": [str(d) for d in defenses],
      "attacks": attacks_out,
      "timings": stages.timings,
      "versions": versions(),
      "device": device_info(),
  }
  if dp_info is not None:
    results["dp"] = _dp_results(dp_info, attacks_out)
  write_json_atomic(results_path, results)
  import shutil
  shutil.rmtree(work, ignore_errors=True)  # training checkpoints are only needed to resume
  return results
