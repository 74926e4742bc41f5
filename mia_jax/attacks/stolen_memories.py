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
from typing import NamedTuple, Sequence

import jax
import numpy as np

from mia_jax._validation import MiaInputError, as_array, check_positive_int
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.train import TrainConfig, train_models
from mia_jax.whitebox import _check_layers, class_means, default_layers, layer_features, layer_scores


@dataclasses.dataclass(frozen=True)
class StolenMemoriesConfig:
  """Hyperparameters of the layer-wise attack.

  Attributes:
    layers: layers to attack (default: every layer below the logits, "input" included).
    num_proxies: P proxies per layer, trained on disjoint parts of the auxiliary data
      (``proxy_sampling="disjoint"``) or on bootstrap resamples of all of it
      (``"bootstrap"``); their Jacobian rows are averaged.
    proxy_sampling: "disjoint" or "bootstrap".
    path_steps: 0 for point Jacobians, R >= 1 for path-integrated ones.
    centered: use rows of ``z_y - mean_k z_k`` (invariant to the softmax's shift).
    microbatch_size: examples per compiled chunk in the score pass.
  """
  layers: tuple[str, ...] | None = None
  num_proxies: int = 1
  proxy_sampling: str = "disjoint"
  path_steps: int = 0
  centered: bool = True
  microbatch_size: int = 256

  def __post_init__(self):
    check_positive_int(self.num_proxies, "num_proxies")
    if self.proxy_sampling not in ("disjoint", "bootstrap"):
      raise MiaInputError(
          f"proxy_sampling: expected 'disjoint' or 'bootstrap', got {self.proxy_sampling!r}")
    if not isinstance(self.path_steps, int) or self.path_steps < 0:
      raise MiaInputError(f"path_steps: expected an integer >= 0, got {self.path_steps!r}")
    check_positive_int(self.microbatch_size, "microbatch_size")


class Proxies(NamedTuple):
  """Fitted proxies for one target.

  Attributes:
    variables: {layer: variables of the proxy upper parts, leading axis P}.
    means: {layer: float[K, *layer_shape]} class means of h_l on the auxiliary data.
  """
  variables: dict[str, Variables]
  means: dict[str, np.ndarray]


def _proxy_keep(n: int, num_proxies: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
  keep = np.zeros((num_proxies, n), bool)
  if sampling == "disjoint":
    if n < 2 * num_proxies:
      raise MiaInputError(
          f"num_proxies: {num_proxies} disjoint proxies need at least {2 * num_proxies} "
          f"auxiliary examples, got {n}")
    for p, part in enumerate(np.array_split(rng.permutation(n), num_proxies)):
      keep[p, part] = True
  else:
    # A bootstrap resample as a keep row: the distinct examples drawn (duplicates dropped,
    # since training weights each kept example once).
    for p in range(num_proxies):
      keep[p, rng.integers(0, n, n)] = True
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
                progress=None) -> Proxies:
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
    progress: optional rich Progress.
  Returns:
    Proxies(variables, means).
  """
  aux_x, aux_y = model.check_inputs(aux_x, aux_y)
  layers = _check_layers(model, config.layers or default_layers(model))
  rng = np.random.default_rng(seed)
  variables, means = {}, {}
  for i, layer in enumerate(layers):
    feats = layer_features(model, target_variables, aux_x, layer)
    means[layer] = class_means(feats, aux_y, model.num_classes)
    keep = _proxy_keep(aux_x.shape[0], config.num_proxies, config.proxy_sampling, rng)
    res = train_models(model.upper(layer), feats, aux_y, keep, config=train_config,
                       seed=seed * 1009 + i, progress=progress,
                       description=f"proxies for {layer}")
    variables[layer] = res.variables
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
