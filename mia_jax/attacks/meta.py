"""Meta-attacks: combine per-layer (and black-box) scores into one membership score.

Two settings, by what the attacker knows:

* **shadow** (:func:`fit_meta`): the attacker trains shadow targets on its own data with
  known membership (plus their proxies), computes the same per-layer features for the
  shadow's members and non-members, and fits a classifier (logistic regression or a small
  MLP, JAX/optax) on them; the classifier is then applied to the real target's features.
  Use it when the attacker can afford to train shadow models with the target's recipe:
  it learns how much each layer's evidence is worth and can be calibrated for precision.
* **non-member only** (:func:`fit_nonmember_meta`): the attacker has only auxiliary data,
  all known to be outside the target's training set. Each feature is standardized with the
  non-members' mean and standard deviation and the meta score is the mean of the
  z-scores; thresholds are calibrated for a false-positive rate on the same non-members
  (precision cannot be estimated without members). Use it when shadow training is too
  expensive or the recipe is unknown.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from mia_jax._validation import MiaInputError, check_finite, check_membership
from mia_jax.attacks._classifier import KINDS, fit_binary, predict_binary


class MetaState(NamedTuple):
  """A fitted meta-attack.

  Attributes:
    feature_names: the order of the feature columns.
    kind: "logistic", "mlp" or "nonmember".
    params: the classifier's parameters (for "nonmember": {"mean", "scale"}).
  """
  feature_names: tuple[str, ...]
  kind: str
  params: dict


def stack_features(features: Mapping[str, np.ndarray], names: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, tuple[str, ...]]:
  """{name: float[N]} -> (float[N, F], names) in a fixed column order."""
  names = tuple(sorted(features)) if names is None else tuple(names)
  missing = [n for n in names if n not in features]
  if missing:
    raise MiaInputError(f"features: missing column(s) {missing}; got {sorted(features)}")
  cols = [np.asarray(features[n], np.float64) for n in names]
  n = {c.shape for c in cols}
  if len(n) != 1 or cols[0].ndim != 1:
    raise MiaInputError(f"features: expected 1-D columns of one length, got shapes {sorted(n)}")
  mat = np.stack(cols, axis=1)
  check_finite(mat, "features")
  return mat, names


def fit_meta(features: Mapping[str, np.ndarray], is_member, *, kind: str = "logistic",
             hidden: int = 32, steps: int = 1000, learning_rate: float = 0.05, l2: float = 1e-3,
             seed: int = 0) -> MetaState:
  """Fits the shadow-setting meta-attack on attacker-side features with known membership."""
  if kind not in KINDS:
    raise MiaInputError(f"kind: expected one of {KINDS}, got {kind!r}")
  mat, names = stack_features(features)
  y = check_membership(is_member, n=mat.shape[0])
  params = fit_binary(mat, y, kind=kind, hidden=hidden, steps=steps,
                      learning_rate=learning_rate, l2=l2, seed=seed)
  return MetaState(names, kind, {k: np.asarray(v) for k, v in params.items()}
                   if kind == "logistic" else params)


def fit_nonmember_meta(features: Mapping[str, np.ndarray]) -> MetaState:
  """Fits the non-member-only meta-attack: per-feature standardization on non-members."""
  mat, names = stack_features(features)
  if mat.shape[0] < 2:
    raise MiaInputError("features: need at least 2 non-member examples")
  mean, std = mat.mean(0), mat.std(0)
  return MetaState(names, "nonmember", {"mean": mean, "scale": np.where(std > 0, std, 1.0)})


def score_meta(state: MetaState, features: Mapping[str, np.ndarray]) -> np.ndarray:
  """Meta scores float[N] (higher = more likely member)."""
  mat, _ = stack_features(features, state.feature_names)
  if state.kind == "nonmember":
    return np.mean((mat - state.params["mean"]) / state.params["scale"], axis=1)
  return np.asarray(predict_binary(state.kind, state.params, mat), np.float64)
