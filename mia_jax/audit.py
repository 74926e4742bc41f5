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
import math
import os
import platform
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from mia_jax._io import write_json_atomic, write_npz_atomic  # noqa: F401 (re-exported)
from mia_jax._validation import MiaInputError, check_in_range, check_positive_int

from mia_jax.attacks import registry  # noqa: E402
from mia_jax.pipeline import REPORT_FPRS  # noqa: F401 (re-exported)
from mia_jax.streams import LEGACY_SCHEME, check_scheme, stage_seed, stream

SCHEMA_VERSION = 2
"""2: adds ``privacy_audit`` (canaries and empirical epsilon); version 1 files stay readable."""
# The built-in attacks by family (the registry is the list; these are its names at import).
BLACKBOX_ATTACKS = registry.names("threshold")
REFERENCE_ATTACKS = registry.names("reference")
SHADOW_ATTACKS = registry.names("shadow")
WHITEBOX_ATTACKS = registry.names("whitebox")
ALL_ATTACKS = registry.names()
DEFAULT_ATTACKS = ALL_ATTACKS
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
    seed_streams: how each stage's seed derives from ``seed`` (:mod:`mia_jax.streams`):
      "named" (each stage draws from a stream named after it) or "offsets" (the fixed
      offsets of runs made before named streams; their ``config.json`` lacks this option
      and they resume with it).
    microbatch_size: examples per compiled chunk in signal passes.
    bootstrap_resamples: resamples for every attack's bootstrap confidence intervals of
      AUC and TPR at each reported FPR (stratified percentile bootstrap over the
      evaluation examples, :func:`mia_jax.metrics.bootstrap_ci`); 0 skips them.
    confidence: the intervals' coverage, in (0, 1); with canaries also the confidence of
      the epsilon lower bounds (then in (0.5, 1)).
    canaries: N > 0 inserts N canaries (:mod:`mia_jax.canaries`), each into the target's
      training set with probability 1/2 (seeded, saved in ``canaries.npz``); every
      attack scores them and ``results["privacy_audit"]`` holds the empirical epsilon
      lower bounds of :mod:`mia_jax.privacy_audit` on its guesses, beside the theoretical
      epsilon. 0: no canaries, no bounds.
    canary_kind: "mislabeled", "ood", "input-space" or "gradient" (DP-SGD only: scored by
      the white-box ``gradient-canary`` attack on the final weights).
    canary_runs: R training runs of the target, each with its own coin flips for every
      canary (run 0 is the target the attacks report on; runs 1..R-1 train stacked). 1 is
      the one-run audit (Steinke et al. 2023); R > 1 pools R x N guesses.
    estimators: the epsilon estimators (:data:`mia_jax.privacy_audit.ESTIMATORS`; None:
      all). Needs canaries.
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
  seed_streams: str = "named"
  microbatch_size: int = 512
  bootstrap_resamples: int = 200
  confidence: float = 0.95
  canaries: int = 0
  canary_kind: str = "mislabeled"
  canary_runs: int = 1
  estimators: tuple[str, ...] | None = None

  def __post_init__(self):
    _coerce_fields(self)
    if not self.attacks:
      raise MiaInputError("attacks: expected at least one attack")
    registry.select(self.attacks)  # names every unknown attack
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

    check_positive_int(self.bootstrap_resamples, "bootstrap_resamples", minimum=0)
    check_in_range(self.confidence, "confidence", 0, 1, low_open=True, high_open=True)
    check_positive_int(self.num_proxies, "num_proxies")
    check_positive_int(self.path_steps, "path_steps", minimum=0)
    self._check_canaries()

  def _check_canaries(self) -> None:
    from mia_jax import canaries, privacy_audit
    if self.canary_kind not in canaries.CANARY_KINDS:
      raise MiaInputError(f"canary_kind: expected one of {canaries.CANARY_KINDS}, got "
                          f"{self.canary_kind!r}")
    check_positive_int(self.canaries, "canaries", minimum=0)
    check_positive_int(self.canary_runs, "canary_runs")
    if self.canaries == 0:
      if self.estimators is not None:
        raise MiaInputError(
            "estimators: the epsilon lower bounds are computed on canaries (examples "
            "included at random); add --canaries N (e.g. 500)")
      if self.canary_runs != 1:
        raise MiaInputError("canary_runs: several training runs audit canaries; add "
                            "--canaries N")
      return
    if self.canaries < canaries.MIN_CANARIES:
      raise MiaInputError(f"canaries: at least {canaries.MIN_CANARIES}, got {self.canaries}")
    if self.estimators is not None:
      object.__setattr__(self, "estimators", privacy_audit.check_estimators(self.estimators))
    privacy_audit.check_confidence(self.confidence)
    if self.canary_kind == "gradient" and not self.uses_dp:
      raise MiaInputError(canaries.GRADIENT_NEEDS_DP)

  @property
  def audit_estimators(self) -> tuple[str, ...]:
    from mia_jax.privacy_audit import ESTIMATORS
    return ESTIMATORS if self.estimators is None else tuple(self.estimators)

  @property
  def uses_dp(self) -> bool:
    return self.dp_epsilon is not None or self.noise_multiplier is not None

  def stage_seed(self, name: str):
    """The seed of the run's stage ``name`` (:func:`mia_jax.streams.stage_seed`)."""
    return stage_seed(self.seed, name, self.seed_streams)

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
    d["estimators"] = list(self.estimators) if self.estimators is not None else None
    return d


_FLOATS = ("learning_rate", "weight_decay", "target_precision", "target_fpr", "rmia_offline_a",
           "clip_norm", "delta", "shadow_noise", "confidence")
_OPTIONAL_FLOATS = ("dp_epsilon", "noise_multiplier")
_INTS = ("epochs", "batch_size", "num_proxies", "path_steps", "num_reference", "num_shadow",
         "seed", "microbatch_size", "bootstrap_resamples", "canaries", "canary_runs")
_OPTIONAL_INTS = ("target_size",)
_STRS = ("dataset", "model", "optimizer", "whitebox_setting", "shadow_source",
         "lira_augmentations", "canary_kind")
_NAME_LISTS = ("attacks", "defenses")
_OPTIONAL_NAME_LISTS = ("layers", "gradient_layers", "estimators")
_MAPPINGS = ("dataset_options", "model_options")
_AT_MOST = {"epochs": 1_000_000, "batch_size": 1 << 24, "microbatch_size": 1 << 24,
            "num_proxies": 1024, "path_steps": 100_000, "num_reference": 65_536,
            "num_shadow": 65_536, "target_size": 1 << 40, "bootstrap_resamples": 100_000,
            "canaries": 1 << 24, "canary_runs": 4096}
"""Sanity bounds on counts: far above any real run, far below what would hang or
overflow (a mistyped ``epochs: 1e9``)."""
MAX_OPTION_NODES = 10_000
"""The most values (counted with repeats, as YAML aliases expand) an option may hold."""


def as_float(value: Any, name: str) -> float:
  """A real number from a number or a string a YAML/CLI user means as one ("1e-3")."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, str)):
    raise MiaInputError(f"{name}: expected a number, got {value!r}")
  try:
    v = float(value.strip() if isinstance(value, str) else value)
  except (ValueError, OverflowError) as e:
    raise MiaInputError(f"{name}: expected a number, got {value!r}") from e
  if not np.isfinite(v):
    raise MiaInputError(f"{name}: expected a finite number, got {value!r}")
  return v


def as_int(value: Any, name: str) -> int:
  """An integer from an int, an integral float or a string ("10", "1e2")."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value)
  if isinstance(value, str):
    text = value.strip()
    try:
      return int(text)
    except ValueError:
      pass
  v = as_float(value, name) if not isinstance(value, bool) else None
  if v is None or v != int(v):
    raise MiaInputError(f"{name}: expected an integer, got {value!r}")
  return int(v)


def check_size(value: Any, name: str, limit: int = MAX_OPTION_NODES) -> None:
  """Refuses values that expand to more than ``limit`` nodes (a YAML alias bomb) or hold
  anything JSON cannot write."""
  count, stack = 0, [value]
  while stack:
    v = stack.pop()
    count += 1
    if count > limit:
      raise MiaInputError(f"{name}: too large (more than {limit} values once expanded)")
    if isinstance(v, dict):
      for k, w in v.items():
        if not isinstance(k, str):
          raise MiaInputError(f"{name}: keys must be strings, got {k!r}")
        stack.append(w)
    elif isinstance(v, (list, tuple)):
      stack.extend(v)
    elif not (v is None or isinstance(v, (str, bool, int, float))):
      raise MiaInputError(f"{name}: unsupported value {v!r} of type {type(v).__name__}")


def _name_list(value: Any, name: str) -> tuple[str, ...]:
  if isinstance(value, str):
    return tuple(t.strip() for t in value.split(",") if t.strip())
  if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    return tuple(v.strip() for v in value)
  raise MiaInputError(f"{name}: expected a list of names or a comma-separated string, got "
                      f"{value!r}")


def _coerce_fields(config) -> None:
  """Turns every field into its type the way a YAML or command-line user means it
  ("1e-3" is a float, "10" an int, "a,b" a list), or raises a named error."""
  def put(name, v):
    object.__setattr__(config, name, v)

  for names, coerce, optional in ((_FLOATS, as_float, False), (_OPTIONAL_FLOATS, as_float, True),
                                  (_INTS, as_int, False), (_OPTIONAL_INTS, as_int, True),
                                  (_NAME_LISTS, _name_list, False),
                                  (_OPTIONAL_NAME_LISTS, _name_list, True)):
    for f in names:
      if not (optional and getattr(config, f) is None):
        put(f, coerce(getattr(config, f), f))
  for f in _STRS:
    if not isinstance(getattr(config, f), str) or not getattr(config, f):
      raise MiaInputError(f"{f}: expected a non-empty string, got {getattr(config, f)!r}")
  for f in _MAPPINGS:
    v = getattr(config, f)
    if v is None:
      v = {}
    if not isinstance(v, dict):
      raise MiaInputError(f"{f}: expected a mapping of option: value, got {v!r}")
    check_size(v, f)
    put(f, {str(k).replace("-", "_"): w for k, w in v.items()})
  if not 0 <= config.seed < 2 ** 32:
    raise MiaInputError(f"seed: expected an integer in [0, 2**32), got {config.seed}")
  check_scheme(config.seed_streams)
  for name, most in _AT_MOST.items():
    v = getattr(config, name)
    if v is not None and v > most:
      raise MiaInputError(f"{name}: at most {most}, got {v}")
  check_positive_int(config.epochs, "epochs")
  check_positive_int(config.batch_size, "batch_size")
  check_in_range(config.learning_rate, "learning_rate", 0, float("inf"), low_open=True,
                 high_open=True)
  check_in_range(config.weight_decay, "weight_decay", 0, float("inf"), high_open=True)


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


class Stages:
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
  n_train = ds.x_train.shape[0]  # keep one copy of the data: the splits become views of x
  ds = dataclasses.replace(ds, x_train=x[:n_train], x_test=x[n_train:], y_train=y[:n_train],
                           y_test=y[n_train:])
  n_total = x.shape[0]
  n_target = config.target_size or n_total // 8
  if 2 * n_target >= n_total:
    raise MiaInputError(
        f"target_size: {n_target} members plus as many non-members leave no auxiliary data "
        f"from {n_total} examples")
  split = membership_split(n_total, target_in=n_target, target_out=n_target,
                           auxiliary=n_total - 2 * n_target, seed=config.stage_seed("split"))
  check_disjoint(split.auxiliary, split.target_in)
  model = make_model(config.model, input_shape=ds.feature_shape, num_classes=ds.num_classes,
                     **config.model_options)
  check_model_size(model, config)
  return Setup(ds, x, y, split, model, n_target)


def check_model_size(model, config: AuditConfig) -> None:
  """Refuses, before any compute, a model whose training state cannot fit in memory: the
  parameters (from abstract shapes, nothing allocated) times the models trained at once
  times 4 (parameters, gradients and two optimizer moments), against the device's memory
  (the host's on the CPU)."""
  import jax
  try:
    shapes = jax.eval_shape(model.init, jax.random.key(0))
  except MiaInputError:
    raise
  except Exception as e:  # noqa: BLE001 - flax/jax reject impossible shapes in many ways
    raise MiaInputError(f"model_options: cannot build model {model.name!r} with "
                        f"{config.model_options}: {type(e).__name__}: {e}") from e
  nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(shapes))
  sides = {s for a in registry.select(config.attacks) for s in a.attacker}
  at_once = max([1] + [config.num_reference] * ("reference" in sides)
                + [config.num_shadow] * ("shadow" in sides))
  need = 4 * nbytes * at_once
  have = _memory_bytes()
  if have is not None and need > have:
    raise MiaInputError(
        f"model_options: model {model.name!r} has {nbytes / 2**20:.1f} MiB of variables; "
        f"training {at_once} at once needs about {need / 2**30:.1f} GiB, more than the "
        f"{have / 2**30:.1f} GiB of memory here; lower the widths (-M widths=...) or "
        "--num-reference / --num-shadow")


def _memory_bytes() -> int | None:
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
    if stats and stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # noqa: BLE001 - not every backend reports memory
    pass
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _shadow_keep(num_models: int, n: int, size: int, seed: int) -> np.ndarray:
  """Shadow model m trains on a random half of the auxiliary data (at most ``size``
  examples, the target's training-set size); the rest are its known non-members."""
  rng = np.random.default_rng(seed)
  keep = np.zeros((num_models, n), bool)
  k = min(size, n // 2)
  for m in range(num_models):
    keep[m, rng.choice(n, k, replace=False)] = True
  return keep


def _whitebox_shadow_trainer(rd, name, model, tcfg, train_one, progress, log, checkpoint_dir):
  """``(x, y, indices, seed) -> variables`` for the white-box shadow target: trained once
  per (indices, seed) in this run, saved at ``path`` and reloaded when a run is resumed
  (the saved model is reused only if it was trained on the same indices and seed)."""
  import hashlib
  import jax
  from mia_jax.train import train_model
  memo = {}

  def train(xs, ys, indices, seed):
    key = hashlib.sha256(np.asarray(indices, np.int64).tobytes()
                         + repr(seed).encode()).hexdigest()
    if key in memo:
      return memo[key]
    like = jax.eval_shape(model.init, jax.random.key(0))
    variables, meta = _reuse_saved(rd, name, like, "white-box shadow target", log)
    if variables is not None and meta.get("key") == key:
      memo[key] = variables
      return variables
    if train_one is not None:
      variables = train_one(xs, ys, indices, seed, checkpoint_dir)
    else:
      variables = train_model(model, xs, ys, config=tcfg, seed=seed, indices=indices,
                              progress=progress, description="white-box shadow target",
                              checkpoint_dir=checkpoint_dir).variables
    _save(rd, name, variables, {"model": dict(model.spec), "key": key})
    memo[key] = variables
    return variables

  return train


def _saved_metadata(rd, name: str) -> dict:
  """The metadata of the model saved as ``name`` in the run ({} if none or unreadable)."""
  from mia_jax.train import read_metadata
  path = os.path.join(rd.path, name)
  if not os.path.isdir(os.path.join(path, "state")):
    return {}
  try:
    return read_metadata(path)
  except MiaInputError:
    return {}


def _saved_count(meta: dict) -> int | None:
  """How many stacked models a saved stack holds, from its metadata (older runs: the
  length of the keep matrix they stored as JSON)."""
  if isinstance(meta.get("num_models"), int):
    return meta["num_models"]
  keep = meta.get("keep")
  return len(keep) if isinstance(keep, list) and keep else None


def _saved_keep(rd, name: str, meta: dict) -> np.ndarray | None:
  """The keep matrix the saved stack ``name`` was trained with: ``{name}_keep.npz``
  (checked against the hash in the stack's metadata), or the JSON list older runs kept in
  the metadata itself."""
  from mia_jax._io import hash_arrays
  if "keep" in meta:
    return np.asarray(meta["keep"], bool)
  path = os.path.join(rd.path, f"{name}_keep.npz")
  try:
    with np.load(path, allow_pickle=False) as f:
      keep = np.asarray(f["keep"], bool)
  except Exception:  # noqa: BLE001 - a damaged .npz fails in zipfile, zlib, numpy...
    return None  # the models are then trained again
  return keep if hash_arrays(keep) == meta.get("keep_sha256") else None


def _stacked_models(rd, name, model, x, y, keep, tcfg, seed, progress, description, log,
                    checkpoint_dir=None, dp=None, blocks=None):
  """Trains M models at once (model m with seed ``(seed, m)``), or reloads them from the
  run when it is resumed. A saved stack of M' < M models trained on ``keep[:M']`` is
  grown: only models M'..M-1 are trained (as a fresh run would train them) and appended.

  ``dp`` (``{"noise_multiplier", "clip_norm"}``) trains them with DP-SGD, stacked as well
  (:func:`mia_jax.dp.train_models_dp`: each model as it would train alone with its seed).
  ``blocks`` (the pool's growth history) is recorded.
  """
  import jax
  import jax.numpy as jnp
  from mia_jax._io import hash_arrays
  from mia_jax.train import train_models
  m = keep.shape[0]
  meta = _saved_metadata(rd, name)
  m_old = _saved_count(meta)
  reused = None
  if m_old is not None and m_old <= m:
    like = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), m_old))
    variables, meta = _reuse_saved(rd, name, like, description, log)
    if variables is not None:
      saved_keep = _saved_keep(rd, name, meta)
      if saved_keep is not None and np.array_equal(saved_keep, keep[:m_old]):
        if m_old == m:
          return variables
        log(f"{description}: reusing the {m_old} saved models, training {m - m_old} more")
        reused = variables
      else:
        log(f"resuming: the saved {description} were trained on other data; training them again")
  start = 0 if reused is None else m_old
  if dp is not None:
    from mia_jax.dp import DPSGD
    log(f"{description}: training models {start + 1}..{m} with DP-SGD, stacked")
    dp, description = DPSGD(**dp), f"{description} (DP-SGD)"
  new = train_models(model, x, y, keep[start:], config=tcfg, seed=seed, progress=progress,
                     description=description, checkpoint_dir=checkpoint_dir,
                     first_model=start, dp=dp).variables
  variables = new if reused is None else jax.tree.map(
      lambda a, b: jnp.concatenate([jnp.asarray(a), jnp.asarray(b)]), reused, new)
  write_npz_atomic(rd.file(f"{name}_keep.npz"), keep=keep)
  _save(rd, name, variables, {"model": dict(model.spec), "num_models": m,
                              "keep_sha256": hash_arrays(keep),
                              "blocks": list(blocks) if blocks else [m]})
  return variables


def reference_blocks(config: AuditConfig, saved_blocks: Sequence[int] | None) -> list[int]:
  """The reference pool's growth history: the saved pool's blocks plus one block of the
  models ``config.num_reference`` adds ([16, 48] for a pool of 16 grown to 64); a fresh
  pool (or one asked to shrink) is one block."""
  m = config.num_reference
  old = [int(b) for b in saved_blocks or ()]
  if not old or sum(old) > m:
    return [m]
  return old if sum(old) == m else old + [m - sum(old)]


def reference_keep(config: AuditConfig, num_candidates: int,
                   blocks: Sequence[int] | None = None) -> np.ndarray:
  """The reference models' keep matrix over the evaluation candidates (members, then
  non-members): each candidate IN for exactly half of ``config.num_reference`` models.

  ``blocks`` (default: one block of all the models) is the pool's growth history: each
  block is a balanced keep matrix of its own, the first the one a fresh run draws, so a
  grown pool keeps its first models' rows and every candidate stays IN for exactly half
  of the pool."""
  from mia_jax.data import keep_matrix
  blocks = [config.num_reference] if blocks is None else [int(b) for b in blocks]
  if sum(blocks) != config.num_reference or any(b < 2 or b % 2 for b in blocks):
    raise MiaInputError(f"num_reference: blocks {blocks} do not make a pool of "
                        f"{config.num_reference} models (even sizes >= 2)")
  parts, first = [], 0
  for b in blocks:
    seed = config.stage_seed("reference-keep")
    parts.append(keep_matrix(b, num_candidates, seed=seed if first == 0 else (seed, first)))
    first += b
  return np.concatenate(parts)


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
  data = shokri.shadow_data(config.shadow_source, num_records=ax.shape[0],
                            seed=config.stage_seed("shadow-data"), x=flat, y=ay,
                            noise=config.shadow_noise, **opts)
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
  dp.require_jax_privacy()  # before anything is written: DP-SGD itself needs it
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


def size_warnings(attack: str, calibration: dict, target_size: int, log) -> list[str]:
  """Warnings (also logged) when the attacker's shadow target or proxies trained on fewer
  examples than the target: they may leak differently than the target does."""
  out = []
  for key, what in (("shadow_size", "shadow target"), ("proxy_size", "proxies")):
    size = calibration.get(key)
    if size is not None and size < target_size:
      out.append(f"{attack}: the {what} trained on {size} examples, fewer than the target's "
                 f"{target_size} members (the attacker's data is too small to match it); "
                 "its calibration may not transfer to the target")
      log(f"warning: {out[-1]}")
  return out


def _augmentation_views(name: str):
  """(flip, shifts) for LiRA's query augmentations, or None for "none"."""
  from mia_jax.attacks.lira import SHIFTS_3X3
  shifts = ((0, 0),) + tuple(d for d in SHIFTS_3X3 if d != (0, 0))
  return {"none": None, "flip": (True, ((0, 0),)), "shift": (False, shifts),
          "flip+shift": (True, shifts)}[name]


def run_audit(config: AuditConfig, out_dir: str, *, overwrite: bool = False, progress=None,
              log: Callable[[str], None] = lambda s: None, report: bool = False,
              dpi: int = 100) -> dict[str, Any]:
  """Runs an audit and writes results into ``out_dir`` (see module docstring).

  Everything is validated (the configuration, then what depends on the data) before the
  run directory is touched. The run directory (:mod:`mia_jax.rundir`) is held under a
  lock; a finished run is not overwritten unless ``overwrite``, which removes only what
  mia-jax wrote there; an unfinished one is resumed from its checkpoints after checking
  that the configuration and the data are those it started with, and every saved model
  it reuses is verified against its content hash (a corrupt one is trained again).
  ``progress`` (a rich Progress) shows bars for every training and every microbatched
  signal pass.

  Args:
    config: the audit.
    out_dir: the run directory.
    overwrite: replace a finished run (only what mia-jax wrote).
    progress: optional rich Progress.
    log: receives stage logs and what resuming found.
    report: also write report.html / report.md; the run counts as finished only once
      they are written (an interrupted report stage is redone by rerunning).
    dpi: resolution of the report's plots.

  Returns:
    The results dict written to ``results.json``.
  """
  from mia_jax._batching import progress_scope
  from mia_jax._io import hash_arrays
  from mia_jax.rundir import RunDir, check_out_path, refuse_finished
  from mia_jax.train import log_to
  out_dir = check_out_path(out_dir)
  if not isinstance(config, AuditConfig):
    raise MiaInputError(f"config: expected an AuditConfig, got {type(config).__name__}")
  growing = not overwrite and _grows_reference_pool(out_dir, config)
  if not overwrite and not growing:
    refuse_finished(out_dir)  # before loading any data
  stages = Stages(log)
  setup = stages.run("load_data", lambda: prepare(config))
  checked = _check_with_data(config, setup, log)
  with RunDir.open(out_dir, command="audit", overwrite=overwrite, log=log,
                   refuse_finished=not growing) as rd, \
       progress_scope(progress, "signals"), log_to(log):
    check_or_write_config(rd, config, log, growing)
    if growing:  # the results are computed again with the grown pool
      rd.mark_finished(False)
      for name in ("results.json", "scores.npz"):
        if os.path.exists(rd.file(name)):
          os.remove(rd.file(name))
    rd.check_data(hash_arrays(setup.x, setup.y), f"dataset {config.dataset!r}")
    if checked.canaries is not None:
      write_npz_atomic(rd.file("canaries.npz"), **checked.canaries.arrays())
    results_path = os.path.join(out_dir, "results.json")
    results = None
    if os.path.exists(results_path) and "results.json" in rd.manifest["entries"]:
      from mia_jax._io import read_json
      try:
        results = read_json(results_path, "out")
        log(f"resuming: the attacks of {out_dir} are done; finishing the report")
      except MiaInputError as e:
        log(f"resuming: {e}; computing the results again")
    if not isinstance(results, dict):
      results = _run_audit(config, rd, *_with_canaries(setup, checked.canaries), checked, stages,
                           progress=progress, log=log)
    if report:
      from mia_jax.report import write_report
      for name in ("report.html", "report.md", "plots"):
        rd.file(name)
      write_report(out_dir, dpi=dpi)
    rd.mark_finished()
    return results


class _Checked(NamedTuple):
  defenses: tuple
  views: Any
  dp_info: dict | None
  canaries: Any = None  # mia_jax.canaries.Canaries, or None


def _make_canaries(config: AuditConfig, setup: Setup):
  """The audit's canaries (checked against the data and model first), or None."""
  if not config.canaries:
    return None
  import jax

  from mia_jax import canaries
  from mia_jax.privacy_audit import require_auditing
  require_auditing()
  abstract = jax.eval_shape(setup.model.init, jax.random.key(0))
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract.get("params", {})))
  kw = dict(num_classes=setup.dataset.num_classes, feature_shape=setup.dataset.feature_shape)
  canaries.check_request(config.canary_kind, config.canaries, config.canary_runs,
                         target_size=setup.target_size, pool_size=setup.split.auxiliary.size,
                         uses_dp=config.uses_dp, params_only=set(abstract) == {"params"},
                         num_params=n_params, **kw)
  quiet = None
  if config.canary_kind == "gradient":  # the coordinates the attacker's data moves least
    from mia_jax.dp import initial_params
    aux = setup.split.auxiliary[:256]
    init = initial_params(setup.model, config.stage_seed("target"))
    quiet = canaries.quiet_coordinates(setup.model, init, setup.x[aux], setup.y[aux])
  return canaries.make_canaries(config.canary_kind, config.canaries, config.canary_runs,
                                x=setup.x, y=setup.y, pool=setup.split.auxiliary,
                                num_classes=kw["num_classes"], seed=config.seed,
                                num_params=n_params, coordinate_scores=quiet)


def _with_canaries(setup: Setup, can) -> tuple[Setup, np.ndarray | None]:
  """The setup with input canaries appended to the pooled data (their rows returned)
  and mislabeled canaries' sources removed from the auxiliary data."""
  if can is None or not can.is_input:
    return setup, None
  n0 = setup.x.shape[0]
  x = np.concatenate([setup.x, can.x.astype(setup.x.dtype)])
  y = np.concatenate([setup.y, can.y.astype(setup.y.dtype)])
  split = setup.split
  if can.source is not None:
    split = split._replace(auxiliary=np.setdiff1d(split.auxiliary, can.source))
  return setup._replace(x=x, y=y, split=split), np.arange(n0, n0 + can.count)


def _check_with_data(config: AuditConfig, setup: Setup, log) -> _Checked:
  """Every check that needs the data or the model, before the run directory is touched."""
  import jax
  ds, model = setup.dataset, setup.model
  if config.layers is not None and "stolen-memories" in config.attacks:
    from mia_jax.whitebox import check_layers
    check_layers(model, config.layers)
  if "nasr" in config.attacks:
    from mia_jax.attacks import nasr
    nasr.check_layers(model, config.gradient_layers)
  from mia_jax.defenses import parse_defenses
  defenses = parse_defenses(config.defenses, ds.num_classes)  # k <= K
  views = _augmentation_views(config.lira_augmentations)
  if views is not None and len(ds.feature_shape) != 3:
    raise MiaInputError(f"lira_augmentations: {config.lira_augmentations!r} needs images "
                        f"[H, W, C]; dataset {ds.name!r} has features of shape "
                        f"{tuple(ds.feature_shape)}")
  dp_info = None
  if config.uses_dp and set(jax.eval_shape(model.init, jax.random.key(0))) != {"params"}:
    raise MiaInputError(f"dp_epsilon/noise_multiplier: DP-SGD needs per-example gradients, "
                        f"but model {model.name!r} has non-parameter state (BatchNorm)")
  can = _make_canaries(config, setup)
  if config.uses_dp:
    # Included canaries are training examples: the smallest training set of the runs
    # (the largest sampling rate) gives the epsilon every run satisfies.
    extra = 0 if can is None else int(can.included.sum(1).min())
    dp_info = _dp_setup(config, setup.target_size + extra)
    log(f"DP-SGD: noise multiplier {dp_info['noise_multiplier']:.4f}, clip norm "
        f"{config.clip_norm}, epsilon {dp_info['epsilon']:.4g} at delta {config.delta}")
  return _Checked(defenses, views, dp_info, can)


def saved_config(saved: dict) -> dict:
  """A run's saved ``config.json`` completed for comparison with a current configuration
  (``to_dict()`` passed through JSON): options added to AuditConfig after the run was made
  count with their defaults, so a run begun by an older version resumes when nothing it
  used has changed -- but for the seed scheme: a run that records none was made with the
  legacy offsets (:data:`mia_jax.streams.LEGACY_SCHEME`)."""
  defaults = json.loads(json.dumps(AuditConfig().to_dict()))
  return {**defaults, "seed_streams": LEGACY_SCHEME, **json.loads(json.dumps(saved))}


def _config_changes(path: str, config: AuditConfig) -> tuple[dict, list[str]] | None:
  """(the saved configuration, the options that differ) of the run in ``path``; None when
  it has no config.json."""
  from mia_jax._io import read_json
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    return None
  previous = read_json(cfg_path, "out")
  if not isinstance(previous, dict):
    raise MiaInputError(f"out: {cfg_path} is corrupt (not a mapping of options); pass "
                        "--overwrite to start the run over")
  previous = saved_config(previous)
  current = json.loads(json.dumps(config.to_dict()))
  return previous, sorted(k for k in set(previous) | set(current)
                          if previous.get(k) != current.get(k))


def _grows_reference_pool(path: str, config: AuditConfig) -> bool:
  """The run in ``path`` (finished or not) differs from ``config`` only in a larger
  ``num_reference``: it is reopened and only the new reference models are trained."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    return False
  try:
    found = _config_changes(path, config)
  except MiaInputError:
    return False
  if found is None:
    return False
  previous, changed = found
  return changed == ["num_reference"] and config.num_reference > previous["num_reference"]


def check_or_write_config(rd, config: AuditConfig, log, growing: bool = False) -> None:
  """A resumed run must have the configuration it started with (or, ``growing``, a larger
  reference pool); a new one records it."""
  cfg_path = rd.file("config.json")
  found = _config_changes(rd.path, config)
  if found is not None:
    previous, changed = found
    if growing and changed == ["num_reference"]:
      log(f"growing the reference pool of {rd.path} from {previous['num_reference']} to "
          f"{config.num_reference} models (the saved ones are reused)")
    elif changed == ["seed_streams"]:
      raise MiaInputError(
          f"out: {rd.path} holds an unfinished run whose stages draw their seeds as "
          f"{previous['seed_streams']!r} (this run asks for {config.seed_streams!r}); resume "
          f"it with --seed-streams {previous['seed_streams']} (seed_streams="
          f"{previous['seed_streams']!r}), or pass --overwrite")
    elif changed:
      raise MiaInputError(
          f"out: {rd.path} holds an unfinished run with another configuration (differs in "
          f"{changed}); rerun with the same options to resume, or pass --overwrite")
    else:
      log(f"resuming the unfinished run in {rd.path}")
  write_json_atomic(cfg_path, config.to_dict())


def _reuse_saved(rd, name: str, like, description: str, log):
  """(variables, metadata) of the model saved as ``name`` in the run, if it is there and
  intact; a corrupt, mismatched or replaced one is removed (and trained again)."""
  import shutil

  from mia_jax.train import checkpoint_hash, load_variables
  path = os.path.join(rd.path, name)
  if not os.path.isdir(path):
    return None, None
  try:
    variables, meta = load_variables(path, like=like)
    recorded = rd.recorded_hash(name)
    if recorded is not None and checkpoint_hash(path) != recorded:
      raise MiaInputError("it is not the model this run saved (content hash differs from "
                          "the manifest's)")
  except MiaInputError as e:
    log(f"resuming: the saved {description} in {path} cannot be used ({e}); training it again")
    shutil.rmtree(path, ignore_errors=True)
    return None, None
  log(f"resuming: reusing the {description} in {path}")
  return variables, meta


def _save(rd, name: str, variables, metadata: dict) -> None:
  from mia_jax.train import save_variables
  path = rd.file(name)
  rd.record_hash(name, save_variables(path, variables, metadata=metadata, overwrite=True))


def _target_signals(config: AuditConfig, setup: Setup, target, eval_idx, defenses, views,
                    stages: Stages):
  """The target's signals on the evaluation examples, each computed on first use."""
  from mia_jax.attacks.base import Lazy
  from mia_jax.signals import blackbox_signals
  x, y, split, model = setup.x, setup.y, setup.split, setup.model
  xe, ye, mb = x[eval_idx], y[eval_idx], config.microbatch_size

  def bb():
    return stages.run("blackbox_signals", lambda: blackbox_signals(
        model, target, xe, ye, microbatch_size=mb, defenses=defenses))

  def scaled_logit():  # LiRA's A query views (A = 1 without augmentations)
    if views is None:
      return signals["bb"]["scaled_logit"]
    return stages.run("lira_augmentations", lambda: _views(
        model, target, xe, ye, views, defenses, mb, stacked=False))

  def gradient_norms():
    from mia_jax.whitebox import gradient_norms
    return stages.run("gradient_norm_signals", lambda: gradient_norms(
        model, target, xe, ye, microbatch_size=min(mb, 256)))

  providers = {
      "bb": bb, "scaled_logit": scaled_logit, "gradient_norms": gradient_norms,
      "confidence_z": lambda: blackbox_signals(
          model, target, x[split.auxiliary], y[split.auxiliary], microbatch_size=mb,
          defenses=defenses, names=("confidence",))["confidence"],
      "labels": lambda: ye,
      "probs": lambda: _predict_probs(model, target, xe, defenses, mb),
      "model": lambda: (model, target, xe, ye),
      **{k: (lambda k=k: signals["bb"][k])
         for k in ("loss", "confidence", "entropy", "modified_entropy", "correctness")},
  }
  signals = Lazy(providers, "target signals")
  return signals


def _predict_probs(model, variables, x, defenses, mb, stacked=False):
  from mia_jax.attacks import shokri
  return shokri.predict_probs(model, variables, x, stacked=stacked, defenses=defenses,
                              microbatch_size=mb)


def _views(model, variables, x, y, views, defenses, mb, stacked):
  """LiRA's augmented scaled logits: float[N, A] (float[M, N, A] with ``stacked``)."""
  from mia_jax.attacks import lira
  from mia_jax.signals import blackbox_signals
  ax = lira.augmentations(x, flip=views[0], shifts=views[1])
  return np.stack([blackbox_signals(model, variables, np.asarray(ax[a]), y, stacked=stacked,
                                    defenses=defenses, microbatch_size=mb,
                                    names=("scaled_logit",))["scaled_logit"]
                   for a in range(ax.shape[0])], -1)


def _attacker_side(config: AuditConfig, rd, setup: Setup, target, eval_idx, checked: _Checked,
                   stages: Stages, train_one, work: str, progress, log, base=None):
  """What the attacker has: reference models' and shadow models' signals (trained on first
  use, reused when a run resumes) and the white-box attacker's data and shadow trainer.
  ``base`` (another target's side): its reference and shadow models are shared (they do
  not depend on the target); only the white-box inputs are this target's."""
  from mia_jax import pipeline
  from mia_jax.attacks.base import AttackerSide
  x, y, split, model = setup.x, setup.y, setup.split, setup.model
  defenses, views, dp_info = checked.defenses, checked.views, checked.dp_info
  tcfg, mb = config.train_config(), config.microbatch_size
  dp = None if dp_info is None else {"noise_multiplier": dp_info["noise_multiplier"],
                                     "clip_norm": config.clip_norm}

  def reference():
    # LiRA's setup: reference models on random halves of the candidates (members and
    # non-members of the target), each candidate IN for exactly half of them, so every
    # reference model trains on as many examples as the target. The auxiliary data is
    # RMIA's population z (OUT for every reference model).
    blocks = reference_blocks(config, _saved_metadata(rd, "reference").get("blocks"))
    keep = reference_keep(config, eval_idx.size, blocks)
    refs = stages.run("reference_models", lambda: _stacked_models(
        rd, "reference", model, x[eval_idx], y[eval_idx], keep, tcfg,
        config.stage_seed("reference"), progress, "reference models", log,
        os.path.join(work, "reference"), dp, blocks))
    sig = stages.run("reference_signals", lambda: pipeline.reference_signals(
        model, refs, x, y, eval_idx, split.auxiliary, microbatch_size=mb, defenses=defenses))
    if views is not None:
      sig["scaled_logit"] = stages.run("lira_augmentations_reference", lambda: _views(
          model, refs, x[eval_idx], y[eval_idx], views, defenses, mb, stacked=True))
    return {**sig, "keep": keep, "discrete": bool(defenses),
            "fields": {"num_reference": config.num_reference,
                       **({"reference_blocks": blocks} if len(blocks) > 1 else {})}}

  def shadow():
    return shadow_side(config, rd, setup, target, defenses, stages, work, progress, log, dp)

  def whitebox():
    # The white-box attacks' shadow target (Stolen Memories' shadow setting and Nasr et
    # al.) is one model trained with the same data and seed: trained once, saved for resuming.
    return pipeline.whitebox_inputs(
        model, target, x, y, split.auxiliary, target_train_size=setup.target_size,
        train_config=tcfg, seed=config.seed, num_eval=eval_idx.size, log=log,
        progress=progress, work_dir=work, train_shadow=_whitebox_shadow_trainer(
            rd, "whitebox_shadow", model, tcfg, train_one, progress, log,
            os.path.join(work, "whitebox_shadow")))

  if base is not None:
    return AttackerSide({"reference": lambda: base["reference"],
                         "shadow": lambda: base["shadow"], "whitebox": whitebox})
  return AttackerSide({"reference": reference, "shadow": shadow, "whitebox": whitebox})


def shadow_side(config: AuditConfig, rd, setup: Setup, target, defenses, stages: Stages,
                work: str, progress, log, dp=None) -> dict[str, Any]:
  """Shokri et al.'s attacker side: shadow records from ``config.shadow_source`` (the
  synthetic source queries ``target``), ``config.num_shadow`` shadow models trained at once
  on halves of them (saved in the run ``rd``, reused when it resumes) and their (defended)
  prediction vectors."""
  x, y, aux, model = setup.x, setup.y, setup.split.auxiliary, setup.model
  sx, sy, synthesis = stages.run("shadow_data", lambda: _shadow_records(
      config, model, target, defenses, x[aux], y[aux]))
  skeep = _shadow_keep(config.num_shadow, sx.shape[0], setup.target_size,
                       config.stage_seed("shadow-keep"))
  shadows = stages.run("shadow_models", lambda: _stacked_models(
      rd, "shadow", model, sx, sy, skeep, config.train_config(), config.stage_seed("shadow"),
      progress, "shadow models", log, os.path.join(work, "shadow"), dp))
  probs = _predict_probs(model, shadows, sx, defenses, config.microbatch_size, stacked=True)
  fields = {"num_shadow": config.num_shadow, "shadow_source": config.shadow_source}
  if synthesis is not None:
    fields["synthesis"] = synthesis
  return {"probs": probs, "labels": sy, "keep": skeep, "log": log, "fields": fields}


def _run_audit(config: AuditConfig, rd, setup: Setup, canary_rows: np.ndarray | None,
               checked: _Checked, stages: Stages, *, progress,
               log: Callable[[str], None]) -> dict[str, Any]:
  """Target, then the attacker's side, then every chosen attack from the registry (and,
  with canaries, the privacy audit on their scores)."""
  import shutil

  import jax

  from mia_jax import pipeline
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import train_model

  ds, x, y, split, model, n_target = setup
  tcfg = config.train_config()
  defenses, views, dp_info, can = checked
  work = rd.file("checkpoints")  # training checkpoints, removed when the run is done

  def train_dp(xs, ys, indices, seed, checkpoint_dir=None, gradient_canaries=None):
    from mia_jax.dp import DPSGD
    dp = DPSGD(noise_multiplier=dp_info["noise_multiplier"], clip_norm=config.clip_norm,
               gradient_canaries=gradient_canaries)
    return train_model(model, xs, ys, config=tcfg, seed=seed, indices=indices,
                       checkpoint_dir=checkpoint_dir, progress=progress,
                       description="DP-SGD training", dp=dp).variables

  train_one = train_dp if dp_info is not None else None
  members = split.target_in
  if canary_rows is not None:  # the included input canaries join run 0's training set
    members = np.concatenate([members, canary_rows[can.included[0]]])
  planted = (can.coords, can.included[0]) if can is not None and not can.is_input else None

  def train_target():
    like = jax.eval_shape(model.init, jax.random.key(0))
    variables, _ = _reuse_saved(rd, "target", like, "trained target", log)
    if variables is not None:
      return variables
    seed = config.stage_seed("target")
    if train_one is not None:
      variables = train_one(x, y, members, seed, os.path.join(work, "target"), planted)
    else:
      variables = train_model(model, x, y, config=tcfg, seed=seed,
                              indices=members, progress=progress, description="target",
                              checkpoint_dir=os.path.join(work, "target")).variables
    _save(rd, "target", variables, {"model": dict(model.spec)})
    return variables

  target = stages.run("train_target", train_target)
  n_eval = split.target_in.size + split.target_out.size
  eval_idx = np.concatenate([split.target_in, split.target_out]
                            + ([canary_rows] if canary_rows is not None else []))
  is_member = np.r_[np.ones(split.target_in.size, bool), np.zeros(split.target_out.size, bool)]
  if canary_rows is not None:
    is_member = np.r_[is_member, can.included[0]]
  signals = _target_signals(config, setup, target, eval_idx, defenses, views, stages)
  side = _attacker_side(config, rd, setup, target, eval_idx, checked, stages, train_one, work,
                        progress, log)
  # The target's accuracy is the model's own (argmax of its logits): defenses that round
  # or truncate probabilities may create ties the API's argmax breaks differently.
  raw_correct = (signals["correctness"] if not defenses else blackbox_signals(
      model, target, x[eval_idx], y[eval_idx],
      microbatch_size=config.microbatch_size)["correctness"])[:n_eval]
  train_acc = float(raw_correct[is_member[:n_eval]].mean())
  test_acc = float(raw_correct[~is_member[:n_eval]].mean())

  scores: dict[str, np.ndarray] = {}
  canary_scores: dict[str, np.ndarray] = {}
  attacks_out: dict[str, Any] = {}
  warnings: list[str] = []
  for attack in registry.select(config.attacks):
    s, subs, entry = stages.run(attack.name.replace("-", "_"), lambda a=attack: pipeline.run_one(
        a, config, side, signals, is_member, slice(0, n_eval)))
    scores[attack.name] = s[:n_eval]
    scores.update({f"{attack.name}/{k}": v[:n_eval] for k, v in subs.items()})
    canary_scores[attack.name] = s[n_eval:]
    attacks_out[attack.name] = entry
    warnings += size_warnings(attack.name, entry.get("calibrated", {}), n_target, log)

  privacy = None
  if can is not None:
    privacy, canary_arrays = stages.run("privacy_audit", lambda: _privacy_audit(
        config, rd, setup, checked, canary_rows, target, canary_scores, eval_idx, side,
        train_one, stages, work, progress, log))
    if privacy["warnings"]:
      warnings += privacy["warnings"]
      for w in privacy["warnings"]:
        log(f"warning: {w}")
  write_npz_atomic(rd.file("scores.npz"), is_member=is_member[:n_eval],
                   labels=y[eval_idx[:n_eval]], **{f"score:{k}": v for k, v in scores.items()},
                   **({} if privacy is None else canary_arrays))
  results = _results(config, setup, canary_rows, defenses, (train_acc, test_acc),
                     attacks_out, stages, warnings, dp_info, privacy)
  write_json_atomic(rd.file("results.json"), results)
  shutil.rmtree(work, ignore_errors=True)  # training checkpoints are only needed to resume
  return results


def _results(config: AuditConfig, setup: Setup, canary_rows, defenses, accuracy,
             attacks_out: dict, stages: Stages, warnings: list, dp_info, privacy) -> dict:
  """The results.json mapping (docs/results_schema.md)."""
  ds, x, _, split, model, _ = setup
  train_acc, test_acc = accuracy
  results = {
      "schema_version": SCHEMA_VERSION,
      "dataset": {"name": ds.name, "num_classes": ds.num_classes,
                  "feature_shape": list(ds.feature_shape),
                  "num_examples": x.shape[0] - (0 if canary_rows is None else canary_rows.size),
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
  if warnings:
    results["warnings"] = warnings
  if dp_info is not None:
    results["dp"] = _dp_results(dp_info, attacks_out)
  if privacy is not None:
    privacy.pop("warnings")
    results["privacy_audit"] = privacy
  return results


def _privacy_audit(config: AuditConfig, rd, setup: Setup, checked: _Checked,
                   canary_rows: np.ndarray | None, target, run0_scores: dict[str, np.ndarray],
                   eval_idx: np.ndarray, side, train_one, stages: Stages, work: str, progress,
                   log) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """``results["privacy_audit"]`` and the canary arrays for scores.npz: every attack's
  scores of the canaries in every run (run 0 is the audited target; runs 1..R-1 are
  trained here, stacked, each with its own canary coins), and the epsilon lower bounds
  on the pooled guesses (:func:`mia_jax.privacy_audit.audit_entry`)."""
  from mia_jax import canaries, pipeline, privacy_audit
  from mia_jax.dp import initial_params
  can, dp_info = checked.canaries, checked.dp_info
  x, y, split, model = setup.x, setup.y, setup.split, setup.model
  runs = can.runs
  per_run: dict[str, list[np.ndarray]] = {}
  if can.is_input:
    per_run = {k: [v] for k, v in run0_scores.items()}
  else:
    per_run["gradient-canary"] = [canaries.gradient_scores(
        initial_params(model, config.stage_seed("target")), target["params"], can.coords)]
  if runs > 1:
    keep = np.zeros((runs - 1, x.shape[0]), bool)
    keep[:, split.target_in] = True
    if can.is_input:
      for r in range(1, runs):
        keep[r - 1, canary_rows[can.included[r]]] = True
    dp = None if dp_info is None else {"noise_multiplier": dp_info["noise_multiplier"],
                                       "clip_norm": config.clip_norm}
    if dp is not None and not can.is_input:
      dp["gradient_canaries"] = (can.coords, can.included[1:])
    seed = int(np.random.default_rng(stream(config.seed, "canary-runs")).integers(2**31))
    stack = stages.run("canary_runs", lambda: _stacked_models(
        rd, "canary_runs", model, x, y, keep, config.train_config(), seed, progress,
        "canary runs", log, os.path.join(work, "canary_runs"), dp))
    import jax
    for r in range(1, runs):
      target_r = jax.tree.map(lambda a, r=r: a[r - 1], stack)
      if not can.is_input:
        per_run["gradient-canary"].append(canaries.gradient_scores(
            initial_params(model, (seed, r - 1)), target_r["params"], can.coords))
        continue
      log(f"canary run {r + 1}/{runs}: scoring the canaries")
      sig_r = _target_signals(config, setup, target_r, eval_idx, checked.defenses,
                              checked.views, stages)
      side_r = _attacker_side(config, rd, setup, target_r, eval_idx, checked, stages,
                              train_one, os.path.join(work, f"canary_run_{r}"), progress, log,
                              base=side)
      n_eval = eval_idx.size - can.count
      for attack in registry.select(config.attacks):
        s, _, _ = pipeline.score_one(attack, config, side_r, sig_r)
        per_run[attack.name].append(s[n_eval:])
  arrays = {"canary_included": can.included}
  attacks: dict[str, Any] = {}
  warnings: list[str] = []
  for name, rows in per_run.items():
    mat = np.stack(rows)
    arrays[f"canary:{name}"] = mat
    try:
      attacks[name] = privacy_audit.audit_entry(
          mat, can.included, estimators=config.audit_estimators, confidence=config.confidence,
          delta=config.delta)
    except MiaInputError as e:
      warnings.append(f"{name}: no epsilon bound ({e})")
  theoretical = math.inf if dp_info is None else dp_info["epsilon"]  # no DP: no bound
  out = {
      "canaries": {"kind": can.kind, "count": can.count, "runs": runs,
                   "included": [int(v) for v in can.included.sum(1)]},
      "mode": "one-run" if runs == 1 else "several-run",
      "confidence": float(config.confidence), "delta": float(config.delta),
      "estimators": list(config.audit_estimators),
      "theoretical_epsilon": theoretical if math.isfinite(theoretical) else "inf",
      "attacks": attacks, "warnings": warnings,
  }
  return out, arrays
