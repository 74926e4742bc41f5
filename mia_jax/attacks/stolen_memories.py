"""Stolen Memories: the white-box attack of Leino & Fredrikson (USENIX Security 2020).

Threat model: the attacker has the target's architecture and parameters and auxiliary
data from the same distribution, disjoint from the target's training set.

Idea: membership leaks through the model's idiosyncratic use of features. A feature that
is distributed differently in the training set than in the population gets weight in the
target that a model trained on population data (the *proxy*) would not give it; the
difference of the two models' weights, seen through an example's features, is evidence
for membership.

* Linear models (:func:`linear_scores_closed_form`): for Gaussian naive-Bayes data and a
  linear softmax model the Bayes-optimal membership log-likelihood ratio is, up to
  per-class constants and for large class counts n_y,
  ``s(x, y) = sum_j (x_j - m_{y,j}) (W^_{j,y} - W*_{j,y})``; the exact version multiplies
  by ``n_y / (n_y - 1)`` and subtracts ``||x - m_y||^2 / (2 (n_y - 1) sigma^2)``.
* Deep models, layer by layer (:func:`fit_proxies`, :func:`mia_jax.whitebox.layer_scores`):
  for layer l the proxy's upper part ``g*_l`` is trained on auxiliary data on top of the
  target's frozen ``h_l``; both upper parts are linearized around ``h_l(x)`` (Jacobian
  rows of the true-class logit, point or path-integrated) and the linear attack is applied
  to ``(h_l(x), row^, row*)`` with class means of ``h_l`` on auxiliary data.
* The per-layer scores are combined by a meta-attack (:mod:`mia_jax.attacks.meta`) and
  thresholded for a requested precision or FPR (:mod:`mia_jax.metrics`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple

import numpy as np

from mia_jax._validation import MiaInputError, as_array, check_positive_int
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.train import TrainConfig, train_models
from mia_jax.whitebox import check_layers, class_means, default_layers, layer_features, layer_scores
from mia_jax.models.adapters import check_model
from mia_jax.streams import check_scheme, part_seed, stage_seed


@dataclasses.dataclass(frozen=True)
class StolenMemoriesConfig:
  """Hyperparameters of the layer-wise attack.

  Attributes:
    layers: layers to attack (default: every layer below the logits, "input" included).
    num_proxies: P proxies per layer; their Jacobian rows are averaged (averaging
      lowers the noise of the proxy's estimate of the population weights).
    proxy_size: examples each proxy trains on. Match the target's training-set size: a
      proxy trained on more data than the target has differently scaled weights. Default
      (None): the auxiliary data split evenly among the P proxies.
    proxy_sampling: "disjoint" (non-overlapping subsets; needs P * proxy_size <= A) or
      "random" (each proxy an independent subset of proxy_size examples).
    path_steps: 0 for point Jacobians, R >= 1 for path-integrated ones.
    centered: use rows of ``z_y - mean_k z_k`` (invariant to the softmax's shift).
    microbatch_size: examples per compiled chunk in the score pass.
  """
  layers: tuple[str, ...] | None = None
  num_proxies: int = 1
  proxy_size: int | None = None
  proxy_sampling: str = "disjoint"
  path_steps: int = 0
  centered: bool = True
  microbatch_size: int = 256

  def __post_init__(self):
    check_positive_int(self.num_proxies, "num_proxies")
    if self.proxy_size is not None:
      check_positive_int(self.proxy_size, "proxy_size", minimum=2)
    if self.proxy_sampling not in ("disjoint", "random"):
      raise MiaInputError(
          f"proxy_sampling: expected 'disjoint' or 'random', got {self.proxy_sampling!r}")
    check_positive_int(self.path_steps, "path_steps", minimum=0)  # refuses bools, floats
    check_positive_int(self.microbatch_size, "microbatch_size")


class Proxies(NamedTuple):
  """Fitted proxies for one target.

  Attributes:
    variables: {layer: variables of the proxy upper parts, leading axis P}.
    means: {layer: float[K, *layer_shape]} class means of h_l on the auxiliary data.
  """
  variables: dict[str, Variables]
  means: dict[str, np.ndarray]


def _proxy_keep(n: int, config: StolenMemoriesConfig, rng: np.random.Generator) -> np.ndarray:
  """bool[P, n]: which auxiliary examples each proxy trains on."""
  p = config.num_proxies
  size = config.proxy_size or n // p
  keep = np.zeros((p, n), bool)
  if config.proxy_sampling == "disjoint":
    if size < 2 or p * size > n:
      raise MiaInputError(
          f"num_proxies/proxy_size: {p} disjoint proxies of {size} examples need "
          f"{max(p * size, 2 * p)} auxiliary examples, got {n}")
    for i, part in enumerate(rng.permutation(n)[:p * size].reshape(p, size)):
      keep[i, part] = True
  else:
    if size > n:
      raise MiaInputError(f"proxy_size: {size} exceeds the {n} auxiliary examples")
    for i in range(p):
      keep[i, rng.choice(n, size, replace=False)] = True
  return keep


def check_disjoint(aux_indices, train_indices) -> None:
  """Raises when auxiliary indices overlap the target's known training indices."""
  overlap = np.intersect1d(np.asarray(aux_indices), np.asarray(train_indices))
  if overlap.size:
    raise MiaInputError(
        f"aux_indices: {overlap.size} auxiliary example(s) are in the target's training set "
        f"(e.g. index {int(overlap[0])}); the attack assumes disjoint auxiliary data")


def fit_proxies(model: LayeredModel, target_variables: Variables, aux_x, aux_y, *,
                config: StolenMemoriesConfig = StolenMemoriesConfig(),
                train_config: TrainConfig = TrainConfig(), seed: int = 0,
                progress=None, work_dir: str | None = None,
                seed_streams: str = "named") -> Proxies:
  """Trains the proxies ``g*_l`` for every attacked layer on auxiliary data.

  For each layer the target's frozen ``h_l`` maps the auxiliary data to features; P upper
  parts of the target's architecture are trained on them with the target's recipe
  (``train_config``), all P at once. For "input" the proxy is a whole model trained on the
  auxiliary data.

  Args:
    model: the target architecture.
    target_variables: the target's variables (one model).
    aux_x: float[A, *input_shape] auxiliary data, disjoint from the target's training set.
    aux_y: int[A].
    config: attack hyperparameters (layers, number of proxies).
    train_config: the proxies' training recipe (use the target's).
    seed: fixes the proxies' initialization, sampling and shuffling.
    seed_streams: "named" or "offsets" (:func:`mia_jax.streams.part_seed`): how the
      proxies of the i-th layer get their seed from ``seed``.
    progress: optional rich Progress.
    work_dir: optional directory for training checkpoints (one per layer); a rerun after
      an interruption resumes from them.
  Returns:
    Proxies(variables, means).
  """
  aux_x, aux_y = check_model(model).check_inputs(aux_x, aux_y)
  layers = check_layers(model, config.layers or default_layers(model))
  rng = np.random.default_rng(seed)
  variables, means = {}, {}
  for i, layer in enumerate(layers):
    feats = layer_features(model, target_variables, aux_x, layer)
    means[layer] = class_means(feats, aux_y, model.num_classes)
    keep = _proxy_keep(aux_x.shape[0], config, rng)
    res = train_models(model.upper(layer), feats, aux_y, keep, config=train_config,
                       seed=part_seed(seed, i, seed_streams), progress=progress,
                       description=f"proxies for {layer}",
                       checkpoint_dir=None if work_dir is None else os.path.join(work_dir, layer))
    variables[layer] = res.variables
    if hasattr(model, "freeze_below"):  # an adapted model: the part below is the target's
      variables[layer] = model.freeze_below(layer, res.variables, target_variables)
  return Proxies(variables, means)


def score(model: LayeredModel, target_variables: Variables, proxies: Proxies, x, y, *,
          config: StolenMemoriesConfig = StolenMemoriesConfig()) -> dict[str, np.ndarray]:
  """Per-layer scores {layer: float[N]} (higher = member) of examples (x, y)."""
  return layer_scores(model, target_variables, proxies.variables, proxies.means, x, y,
                      path_steps=config.path_steps, centered=config.centered,
                      microbatch_size=config.microbatch_size)


def linear_scores_closed_form(x, y, w_target, w_proxy, means, *, class_counts=None,
                              sigma: float | None = None, centered: bool = False) -> np.ndarray:
  """The linear attack on a linear softmax model, from its weights.

  Args:
    x: float[N, d]; y: int[N].
    w_target, w_proxy: float[d, K] weight matrices of the target and (mean) proxy.
    means: float[K, d] class means estimated on auxiliary data.
    class_counts: optional int[K] training-set class sizes n_y; with ``sigma`` gives the
      exact version n_y/(n_y-1) * s - ||x - m_y||^2 / (2 (n_y - 1) sigma^2).
    sigma: the features' noise standard deviation (exact version only).
    centered: subtract each weight matrix's mean over classes first (the softmax's
      shift invariance; equals the centered Jacobian rows).
  Returns:
    float[N] scores, higher = more likely member.
  """
  x = as_array(x, "x").astype(np.float64)
  y = np.asarray(y)
  wt = as_array(w_target, "w_target").astype(np.float64)
  wp = as_array(w_proxy, "w_proxy").astype(np.float64)
  means = as_array(means, "means").astype(np.float64)
  if wt.shape != wp.shape:
    raise MiaInputError(
        f"w_proxy: shape {wp.shape} differs from w_target's {wt.shape}; proxy and target "
        "must have the same architecture")
  if x.ndim != 2 or wt.ndim != 2 or wt.shape[0] != x.shape[1] or means.shape != (wt.shape[1], wt.shape[0]):
    raise MiaInputError(
        f"x/w_target/means: expected x [N, d], weights [d, K], means [K, d]; got {x.shape}, "
        f"{wt.shape}, {means.shape}")
  if centered:
    wt = wt - wt.mean(1, keepdims=True)
    wp = wp - wp.mean(1, keepdims=True)
  centered_x = x - means[y]
  s = np.sum(centered_x * (wt - wp).T[y], axis=1)
  if class_counts is None:
    return s
  if sigma is None or sigma <= 0:
    raise MiaInputError("sigma: the exact linear attack needs sigma > 0 with class_counts")
  n = np.asarray(class_counts, np.float64)[y]
  if np.any(n < 2):
    raise MiaInputError("class_counts: every class needs at least 2 training examples")
  return n / (n - 1) * s - np.sum(centered_x ** 2, axis=1) / (2 * (n - 1) * sigma ** 2)


# -- the full attack: proxies, per-layer scores, meta-attack, calibration -------------------

class AttackerData(NamedTuple):
  """How the attacker's auxiliary data is used (indices into the attacker's arrays).

  Attributes:
    proxy: examples the proxies train on (for the target and for the shadow).
    shadow_in: the shadow target's training set (its known members); empty in the
      non-member-only setting.
    shadow_out: known non-members used to fit/calibrate the meta-attack.
  """
  proxy: np.ndarray
  shadow_in: np.ndarray
  shadow_out: np.ndarray


def partition_attacker_data(num_aux: int, *, target_train_size: int, setting: str,
                            seed: int = 0) -> AttackerData:
  """Splits auxiliary data for the ``"shadow"`` or ``"nonmember"`` setting.

  shadow: shadow_in and shadow_out get ``min(target_train_size, num_aux // 3)`` examples
  each, the rest trains proxies. nonmember: a quarter (at most ``target_train_size``) is
  held out as known non-members, the rest trains proxies.
  """
  if setting not in ("shadow", "nonmember"):
    raise MiaInputError(f"setting: expected 'shadow' or 'nonmember', got {setting!r}")
  perm = np.random.default_rng(seed).permutation(num_aux)
  if setting == "shadow":
    k = min(target_train_size, num_aux // 3)
    if k < 4:
      raise MiaInputError(f"aux: the shadow setting needs at least 12 auxiliary examples, got {num_aux}")
    return AttackerData(np.sort(perm[2 * k:]), np.sort(perm[:k]), np.sort(perm[k:2 * k]))
  k = min(target_train_size, num_aux // 4)
  if k < 2:
    raise MiaInputError(f"aux: the non-member setting needs at least 8 auxiliary examples, got {num_aux}")
  return AttackerData(np.sort(perm[k:]), np.zeros(0, np.int64), np.sort(perm[:k]))


class WhiteboxResult(NamedTuple):
  """Scores of the target's evaluation examples and the calibrated operating point.

  Attributes:
    layer_scores: {layer: float[N]} per-layer scores.
    meta_scores: float[N] meta-attack scores.
    threshold: the meta threshold chosen on attacker-side data.
    calibration: dict describing how the threshold was chosen.
    attacker_scores: {"meta": float[n], "is_member": bool[n]} on attacker-side data.
  """
  layer_scores: dict[str, np.ndarray]
  meta_scores: np.ndarray
  threshold: float
  calibration: dict
  attacker_scores: dict


def _features(layer_scores, loss=None):
  feats = {f"layer:{k}": v for k, v in layer_scores.items()}
  if loss is not None:
    feats["neg_loss"] = -np.asarray(loss)
  return feats


def run_attack(model: LayeredModel, target_variables: Variables, aux_x, aux_y, eval_x, eval_y, *,
               target_train_size: int, config: StolenMemoriesConfig = StolenMemoriesConfig(),
               train_config: TrainConfig = TrainConfig(), setting: str = "shadow",
               meta_kind: str = "logistic", use_loss: bool = True,
               target_precision: float = 0.9, target_fpr: float = 0.01, seed: int = 0,
               progress=None, work_dir: str | None = None,
               train_shadow: Callable | None = None,
               seed_streams: str = "named") -> WhiteboxResult:
  """Runs the whole white-box attack against one target.

  Args:
    model, target_variables: the target.
    aux_x, aux_y: the attacker's auxiliary data (disjoint from the target's training set).
    eval_x, eval_y: the examples to decide membership of.
    target_train_size: size of the target's training set (proxies and shadow match it).
    config: layer-wise attack hyperparameters.
    train_config: the target's training recipe (used for proxies and the shadow target).
    setting: "shadow" (fit the meta-attack and a precision threshold on a shadow target)
      or "nonmember" (standardize on known non-members, threshold for ``target_fpr``).
    meta_kind: "logistic" or "mlp" (shadow setting).
    use_loss: add the black-box loss as a meta feature.
    target_precision: precision the threshold aims for (shadow setting).
    target_fpr: false-positive rate the threshold aims for (non-member setting).
    seed: fixes proxies, shadow training and the partition of the auxiliary data.
    seed_streams: how each of those stages' seeds derives from ``seed`` (named streams,
      or the "offsets" of runs made before them; :mod:`mia_jax.streams`).
    progress: optional rich Progress.
    work_dir: optional directory for training checkpoints (resumable).
    train_shadow: optional ``(x, y, indices, seed) -> variables`` that trains the shadow
      target when the target's recipe is not plain :func:`mia_jax.train.train_model`
      (e.g. DP-SGD); the proxies always use ``train_config``.
  Returns:
    WhiteboxResult.
  """
  eval_x, eval_y = check_model(model).check_inputs(eval_x, eval_y)
  state = fit_attacker(model, target_variables, aux_x, aux_y,
                       target_train_size=target_train_size, config=config,
                       train_config=train_config, setting=setting, meta_kind=meta_kind,
                       use_loss=use_loss, target_precision=target_precision,
                       target_fpr=target_fpr, seed=seed, progress=progress, work_dir=work_dir,
                       train_shadow=train_shadow, seed_streams=seed_streams)
  eval_layers, meta_scores = score_target(model, state, target_variables, eval_x, eval_y)
  return WhiteboxResult(eval_layers, meta_scores, state.threshold, state.calibration,
                        state.attacker_scores)


class AttackerState(NamedTuple):
  """Everything :func:`run_attack` fits before scoring the target's examples."""
  proxies: Proxies
  meta: Any
  threshold: float
  calibration: dict
  attacker_scores: dict
  config: StolenMemoriesConfig
  use_loss: bool


def fit_attacker(model: LayeredModel, target_variables: Variables, aux_x, aux_y, *,
                 target_train_size: int, config: StolenMemoriesConfig = StolenMemoriesConfig(),
                 train_config: TrainConfig = TrainConfig(), setting: str = "shadow",
                 meta_kind: str = "logistic", use_loss: bool = True,
                 target_precision: float = 0.9, target_fpr: float = 0.01, seed: int = 0,
                 progress=None, work_dir: str | None = None,
                 train_shadow: Callable | None = None,
                 seed_streams: str = "named") -> AttackerState:
  """The attacker's side of :func:`run_attack` (same arguments, no evaluation examples):
  the target's proxies, the meta-attack and its calibrated threshold."""
  from mia_jax.attacks.meta import fit_meta, fit_nonmember_meta, score_meta
  from mia_jax.metrics import calibrate_threshold
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import train_model

  aux_x, aux_y = check_model(model).check_inputs(aux_x, aux_y)
  parts = partition_attacker_data(aux_x.shape[0], target_train_size=target_train_size,
                                  setting=setting,
                                  seed=stage_seed(seed, "whitebox-partition", seed_streams))
  size = min(target_train_size, parts.proxy.size)
  num_proxies = max(1, min(config.num_proxies, parts.proxy.size // size))
  cfg = dataclasses.replace(config, proxy_size=size, num_proxies=num_proxies)

  def loss_of(variables, x, y):
    return blackbox_signals(model, variables, x, y)["loss"] if use_loss else None

  sub = (lambda name: None) if work_dir is None else (lambda name: os.path.join(work_dir, name))
  target_proxies = fit_proxies(model, target_variables, aux_x[parts.proxy], aux_y[parts.proxy],
                               config=cfg, train_config=train_config,
                               seed=stage_seed(seed, "target-proxies", seed_streams),
                               seed_streams=seed_streams,
                               progress=progress, work_dir=sub("target_proxies"))
  if setting == "shadow":
    shadow_seed = stage_seed(seed, "whitebox-shadow", seed_streams)
    if train_shadow is not None:
      shadow = train_shadow(aux_x, aux_y, parts.shadow_in, shadow_seed)
    else:
      shadow = train_model(model, aux_x, aux_y, config=train_config, seed=shadow_seed,
                           indices=parts.shadow_in, progress=progress,
                           description="shadow target", checkpoint_dir=sub("shadow")).variables
    shadow_proxies = fit_proxies(model, shadow, aux_x[parts.proxy], aux_y[parts.proxy],
                                 config=cfg, train_config=train_config,
                                 seed=stage_seed(seed, "shadow-proxies", seed_streams),
                                 seed_streams=seed_streams,
                                 progress=progress, work_dir=sub("shadow_proxies"))
    idx = np.concatenate([parts.shadow_in, parts.shadow_out])
    is_member = np.r_[np.ones(parts.shadow_in.size, bool), np.zeros(parts.shadow_out.size, bool)]
    feats = _features(score(model, shadow, shadow_proxies, aux_x[idx], aux_y[idx], config=cfg),
                      loss_of(shadow, aux_x[idx], aux_y[idx]))
    meta = fit_meta(feats, is_member, kind=meta_kind,
                    seed=stage_seed(seed, "meta-attack", seed_streams))
    attacker_meta = score_meta(meta, feats)
    threshold = calibrate_threshold(attacker_meta, is_member, target_precision=target_precision)
    calibration = {"setting": "shadow", "target_precision": float(target_precision)}
  else:
    idx = parts.shadow_out
    feats = _features(score(model, target_variables, target_proxies, aux_x[idx], aux_y[idx],
                            config=cfg), loss_of(target_variables, aux_x[idx], aux_y[idx]))
    meta = fit_nonmember_meta(feats)
    attacker_meta = score_meta(meta, feats)
    is_member = np.zeros(idx.size, bool)
    # Smallest threshold whose false-positive rate on the known non-members is <= target.
    srt = np.sort(attacker_meta)[::-1]
    k = int(np.floor(target_fpr * srt.size))
    threshold = float(np.nextafter(srt[k], np.inf)) if k < srt.size else -np.inf
    calibration = {"setting": "nonmember", "target_fpr": float(target_fpr)}
  if setting == "shadow":
    calibration["shadow_size"] = int(parts.shadow_in.size)
  calibration.update(num_proxies=num_proxies, proxy_size=size, layers=list(target_proxies.means),
                     attacker_examples=int(idx.size), meta_kind=meta.kind, use_loss=use_loss)
  return AttackerState(target_proxies, meta, float(threshold), calibration,
                       {"meta": attacker_meta, "is_member": is_member}, cfg, use_loss)


def score_target(model: LayeredModel, state: AttackerState, target_variables: Variables,
                 eval_x, eval_y) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """(per-layer scores, meta scores) of the target's examples."""
  from mia_jax.attacks.meta import score_meta
  from mia_jax.signals import blackbox_signals
  layers = score(model, target_variables, state.proxies, eval_x, eval_y, config=state.config)
  loss = (blackbox_signals(model, target_variables, eval_x, eval_y)["loss"]
          if state.use_loss else None)
  return layers, score_meta(state.meta, _features(layers, loss))


# -- the registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score -----------

from mia_jax.attacks.base import Attack, option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class StolenMemoriesAttackConfig:
  """:func:`run_attack`'s settings (``attack``: the layer-wise hyperparameters)."""
  attack: StolenMemoriesConfig = StolenMemoriesConfig()
  setting: str = "shadow"
  target_precision: float = 0.9
  target_fpr: float = 0.01
  meta_kind: str = "logistic"
  use_loss: bool = True
  seed: int = 0
  seed_streams: str = "named"


def fit_attack(config: StolenMemoriesAttackConfig, side) -> AttackerState:
  wb = side["whitebox"]
  work = wb.get("work_dir")
  return fit_attacker(wb["model"], wb["target"], wb["aux_x"], wb["aux_y"],
                      target_train_size=wb["target_train_size"], config=config.attack,
                      train_config=wb["train_config"], setting=config.setting,
                      meta_kind=config.meta_kind, use_loss=config.use_loss,
                      target_precision=config.target_precision, target_fpr=config.target_fpr,
                      seed=config.seed, progress=wb.get("progress"),
                      work_dir=None if work is None else os.path.join(work, "stolen_memories"),
                      train_shadow=wb.get("train_shadow"), seed_streams=config.seed_streams)


def _report(config, state: AttackerState, signals):
  model, variables, x, y = signals["model"]
  layers, meta = score_target(model, state, variables, x, y)
  return meta, layers, {"threshold": state.threshold, "calibration": state.calibration}


def _score_states(config, states: list, signals):
  """Scores C stacked checkpoints, each against its own fitted proxies and meta-attack:
  every checkpoint's per-layer Jacobian scores in one compiled, microbatched pass
  (:func:`mia_jax.whitebox.layer_scores` with stacked targets and proxies), then each
  checkpoint's meta-attack on its features."""
  import jax
  import jax.numpy as jnp

  from mia_jax.attacks.meta import score_meta
  from mia_jax.signals import blackbox_signals
  from mia_jax.whitebox import layer_scores
  model, stacked, x, y = signals["models"]
  first = states[0]
  layers = list(first.proxies.means)
  if any(s.config != first.config or list(s.proxies.means) != layers
         or s.use_loss != first.use_loss for s in states):
    raise MiaInputError("stolen-memories: the checkpoints' attackers differ in their "
                        "settings; they cannot be scored as one stack")
  proxies = {l: jax.tree.map(lambda *a: jnp.stack(a), *[s.proxies.variables[l] for s in states])
             for l in layers}
  means = {l: np.stack([np.asarray(s.proxies.means[l]) for s in states]) for l in layers}
  cfg = first.config
  per_layer = layer_scores(model, stacked, proxies, means, x, y, path_steps=cfg.path_steps,
                           centered=cfg.centered, microbatch_size=cfg.microbatch_size,
                           stacked=True)
  loss = (blackbox_signals(model, stacked, x, y, stacked=True, names=("loss",))["loss"]
          if first.use_loss else None)
  meta = np.stack([score_meta(s.meta, _features({l: per_layer[l][c] for l in layers},
                                                None if loss is None else loss[c]))
                   for c, s in enumerate(states)])
  return meta, per_layer, [{"threshold": s.threshold, "calibration": s.calibration}
                           for s in states]


def _configure(o) -> StolenMemoriesAttackConfig:
  layers = option(o, "layers", None)
  return StolenMemoriesAttackConfig(
      attack=StolenMemoriesConfig(
          layers=None if layers is None else tuple(layers),
          num_proxies=int(option(o, "num_proxies", 1)),
          path_steps=int(option(o, "path_steps", 0)),
          microbatch_size=min(int(option(o, "microbatch_size", 256)), 256)),
      setting=option(o, "whitebox_setting", "shadow"),
      target_precision=float(option(o, "target_precision", 0.9)),
      target_fpr=float(option(o, "target_fpr", 0.01)), seed=int(option(o, "seed", 0)),
      seed_streams=check_scheme(option(o, "seed_streams", "named")))


ATTACK = Attack(
    name="stolen-memories", family="whitebox",
    summary="layer-wise linear attacks on target vs proxy Jacobians, meta-attack, calibrated",
    paper="Leino & Fredrikson, USENIX Security 2020", needs=("model",),
    attacker=("whitebox",), configure=_configure, fit=fit_attack,
    score=lambda state, signals: _report(None, state, signals)[0], report=_report,
    score_states=_score_states, traceable=False, fit_per_target=True)
ATTACKS = (ATTACK,)
