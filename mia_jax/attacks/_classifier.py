"""Small binary classifiers used as attack models (logistic regression, one-hidden-layer MLP).

The attack models of Shokri et al. (2017) are binary classifiers "member / non-member"
over a model's prediction vectors. This module fits them with the library's single
trainer (:func:`mia_jax.train.train_objective`, Adam from optax) in full-batch mode: every
step sees all of a classifier's rows, and all steps run in one compiled ``lax.fori_loop``
(the number of steps is traced, so changing it does not recompile):

* :func:`fit_binary` / :func:`predict_binary` -- one classifier.
* :func:`fit_binary_groups` / :func:`predict_binary_groups` -- G independent
  classifiers at once (``vmap`` over a leading group axis). Groups may have different
  sizes: each is padded to the largest and carries a ``mask`` (padding has zero weight),
  so group ``g`` fitted in a batch equals group ``g`` fitted alone, up to float
  summation order (for the MLP, given the same initial weights: group g's are drawn
  with ``np.random.default_rng((seed, g))``, a lone fit's with
  ``np.random.default_rng((seed,))``).

Rows are zero-padded (with zero weight) to a multiple of ``ROW_BUCKET`` so calls with
nearby sizes share one compilation. Parameters are plain dicts (pytrees). Features are
standardized with the (masked) training mean and standard deviation, which are stored
in the parameters (``"mean"``, ``"scale"``) so prediction needs only
``(kind, params, features)``.

Predictions are **logits** of "member" (higher = more likely member); apply
``jax.nn.sigmoid`` for probabilities.

The loss is the weighted mean binary cross-entropy, where (with ``balance=True``) the
members and the non-members of a group each carry half of the total weight, plus
``l2 / 2 * ||weights||^2`` over the weight matrices (not the biases).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mia_jax._validation import (MiaInputError, as_array, check_finite, check_in_range,
                                 check_membership, check_positive_int)
from mia_jax.train import FullBatch, TrainConfig, train_objective

KINDS = ("logistic", "mlp")
ROW_BUCKET = 128  # rows are zero-padded (with zero weight) to a multiple of this
Params = dict[str, Any]

__all__ = ["KINDS", "fit_binary", "fit_binary_groups", "predict_binary",
           "predict_binary_groups", "binary_logit"]


# -- one example, one classifier -----------------------------------------------------------

def _init(kind: str, num_features: int, hidden: int, seed: tuple[int, ...]) -> Params:
  """Initial trainable parameters, drawn on the host with ``np.random.default_rng(seed)``
  (no PRNG in the compiled fit, which keeps its compilation small)."""
  if kind == "logistic":
    return {"w": np.zeros(num_features, np.float32), "b": np.zeros((), np.float32)}
  rng = np.random.default_rng(seed)
  return {
      "w1": (rng.normal(size=(num_features, hidden)) / np.sqrt(num_features)).astype(np.float32),
      "b1": np.zeros(hidden, np.float32),
      "w2": (rng.normal(size=hidden) / np.sqrt(hidden)).astype(np.float32),
      "b2": np.zeros((), np.float32),
  }


def binary_logit(kind: str, params: Params, feature: jax.Array) -> jax.Array:
  """Member logit of one example.

  Args:
    kind: "logistic" or "mlp".
    params: one classifier's parameters.
    feature: float[D].

  Returns:
    float[] -- the logit (higher = more likely member).
  """
  h = (feature - params["mean"]) / params["scale"]
  if kind == "logistic":
    return h @ params["w"] + params["b"]
  h = jax.nn.relu(h @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def _weight_leaves(kind: str, params: Params):
  return [params["w"]] if kind == "logistic" else [params["w1"], params["w2"]]


class ClassifierObjective(NamedTuple):
  """The objective :func:`mia_jax.train.train_objective` minimizes for these classifiers:
  the weighted binary cross-entropy of the batch ``(features float[B, D], labels
  float[B], row_weight float[B])`` (the row weights hold the balance and sum to 1 over a
  group's real rows) plus ``l2 / 2 * ||weights||^2`` over the weight matrices. The
  standardization statistics are the ``"stats"`` collection (not trained)."""
  kind: str
  l2: float

  def loss(self, params, other, batch, weight, key):
    features, labels, row_weight = batch
    full = {**params, **other["stats"]}
    logits = jax.vmap(lambda f: binary_logit(self.kind, full, f))(features)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
    reg = sum(jnp.sum(jnp.square(a)) for a in _weight_leaves(self.kind, full))
    return jnp.sum(row_weight * weight * bce) + 0.5 * self.l2 * reg, {}

  def describe(self) -> str:
    return f"binary {self.kind} classifier, l2 {self.l2}"


def _prepare_one(features, labels, mask, *, balance):
  """Row weights, float labels and standardization statistics of one group's real rows
  (``mask``); features float[M, D], labels/mask bool[M]."""
  w = mask.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  if balance:
    n_pos = jnp.sum(w * y)
    n_neg = jnp.sum(w * (1.0 - y))
    w = w * jnp.where(labels, 0.5 / jnp.maximum(n_pos, 1.0), 0.5 / jnp.maximum(n_neg, 1.0))
  else:
    w = w / jnp.maximum(jnp.sum(w), 1.0)
  # Standardization statistics over the real rows only.
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(features * mask[:, None], 0) / count
  var = jnp.sum(jnp.square(features - mean) * mask[:, None], 0) / count
  scale = jnp.where(var > 1e-12, jnp.sqrt(var), 1.0)
  return w, y, {"mean": mean, "scale": scale}


@functools.lru_cache(maxsize=8)
def _compiled_prepare(balance: bool, grouped: bool):
  prep = functools.partial(_prepare_one, balance=balance)
  return jax.jit(jax.vmap(prep) if grouped else prep)


def _fit(x, y, mask, init, *, kind, balance, steps, learning_rate, l2, seed, grouped):
  """Fits one classifier (x float[M, D]) or G (x float[G, M, D]) from ``init`` with
  full-batch Adam: the single trainer (:func:`mia_jax.train.train_objective`) with a
  :class:`~mia_jax.train.FullBatch`, so all ``steps`` epochs are one compiled loop."""
  row_w, labels, stats = _compiled_prepare(balance, grouped)(x, y, mask)
  rows = x.shape[-2]
  if grouped:  # one data table; group g's batch is its own rows
    data = (x.reshape(-1, x.shape[-1]), labels.reshape(-1), row_w.reshape(-1))
    idx = np.arange(x.shape[0] * rows).reshape(x.shape[0], rows)
    seeds = [(seed, g) for g in range(x.shape[0])]
  else:
    data, idx, seeds = (x, labels, row_w), np.arange(rows), [(seed,)]
  config = TrainConfig(optimizer="adam", learning_rate=learning_rate, epochs=steps,
                       batch_size=rows)
  result = train_objective(ClassifierObjective(kind, float(l2)), data,
                           FullBatch(idx, mask.astype(np.float32), record_losses=False),
                           config=config, seeds=seeds, stacked=grouped,
                           init_variables={"params": init, "stats": stats},
                           description="attack classifier")
  return {**result.variables["params"], **result.variables["stats"]}


@functools.lru_cache(maxsize=32)
def _compiled_predict(kind: str, grouped: bool):
  one = jax.vmap(functools.partial(binary_logit, kind), in_axes=(None, 0))
  return jax.jit(jax.vmap(one) if grouped else one)


# -- validation ------------------------------------------------------------------------------

def check_hyper(kind, hidden, steps, learning_rate, l2, seed):
  if kind not in KINDS:
    raise MiaInputError(f"kind: expected one of {KINDS}, got {kind!r}")
  hidden = check_positive_int(hidden, "hidden")
  steps = check_positive_int(steps, "steps")
  learning_rate = check_in_range(learning_rate, "learning_rate", 0.0, np.inf, low_open=True,
                                 high_open=True)
  l2 = check_in_range(l2, "l2", 0.0, np.inf, high_open=True)
  seed = check_positive_int(seed, "seed", minimum=0)
  return hidden, steps, learning_rate, l2, seed


def _check_features(features, name: str, ndim: int) -> np.ndarray:
  arr = as_array(features, name)
  if arr.ndim != ndim:
    shape = "[N, D]" if ndim == 2 else "[G, M, D]"
    raise MiaInputError(f"{name}: expected a float array {shape}, got shape {arr.shape}")
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
          or arr.dtype == bool):
    raise MiaInputError(f"{name}: expected real values, got dtype={arr.dtype}")
  arr = arr.astype(np.float32)
  check_finite(arr, name)
  if arr.shape[-1] == 0:
    raise MiaInputError(f"{name}: expected at least one feature, got shape {arr.shape}")
  return arr


def _check_params(kind: str, params: Params, num_features: int, grouped: bool,
                  name: str = "params") -> None:
  if kind not in KINDS:
    raise MiaInputError(f"kind: expected one of {KINDS}, got {kind!r}")
  expected = {"mean", "scale"} | ({"w", "b"} if kind == "logistic" else {"w1", "b1", "w2", "b2"})
  if not isinstance(params, dict) or set(params) != expected:
    got = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise MiaInputError(f"{name}: expected a {kind} classifier's parameters with keys "
                        f"{sorted(expected)}, got {got}")
  mean_shape = np.shape(params["mean"])
  if len(mean_shape) != (2 if grouped else 1):
    what = "G stacked classifiers" if grouped else "one classifier"
    raise MiaInputError(f"{name}: expected the parameters of {what}, got 'mean' of shape "
                        f"{mean_shape}")
  if mean_shape[-1] != num_features:
    raise MiaInputError(f"features: expected {mean_shape[-1]} features per example (the "
                        f"classifier's input size), got {num_features}")


def _pad_rows(a: np.ndarray, axis: int) -> np.ndarray:
  """Zero-pads ``axis`` up to a multiple of ROW_BUCKET (so nearby sizes share a compile)."""
  pad = (-a.shape[axis]) % ROW_BUCKET
  if not pad:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, pad)
  return np.pad(a, widths)


# -- public API ------------------------------------------------------------------------------

def fit_binary(features, labels, *, kind: str = "logistic", hidden: int = 64,
               steps: int = 500, learning_rate: float = 0.05, l2: float = 0.0,
               balance: bool = True, seed: int = 0) -> Params:
  """Fits one binary "member" classifier with full-batch Adam.

  Args:
    features: float[N, D] attack features.
    labels: bool[N], True = member (0/1 accepted); both values must occur.
    kind: "logistic" (logistic regression) or "mlp" (one ReLU hidden layer).
    hidden: hidden width of the MLP.
    steps: number of Adam steps (full batch).
    learning_rate: Adam step size.
    l2: L2 penalty coefficient on the weight matrices.
    balance: weigh members and non-members equally (half of the loss each).
    seed: initialization seed (the MLP's weights are drawn on the host with
      ``np.random.default_rng((seed,))``).

  Returns:
    Parameters (dict of arrays) for :func:`predict_binary`.

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  hidden, steps, learning_rate, l2, seed = check_hyper(kind, hidden, steps, learning_rate,
                                                         l2, seed)
  x = _check_features(features, "features", 2)
  y = check_membership(labels, n=x.shape[0], name="labels")
  mask = np.ones(x.shape[0], bool)
  x, y, mask = _pad_rows(x, 0), _pad_rows(y, 0), _pad_rows(mask, 0)
  return _fit(x, y, mask, _init(kind, x.shape[1], hidden, (seed,)), kind=kind,
              balance=bool(balance), steps=steps, learning_rate=learning_rate, l2=l2, seed=seed,
              grouped=False)


def predict_binary(kind: str, params: Params, features) -> jax.Array:
  """Member logits float[N] of one classifier on features float[N, D]."""
  x = _check_features(features, "features", 2)
  _check_params(kind, params, x.shape[1], grouped=False)
  return _compiled_predict(kind, False)(params, jnp.asarray(_pad_rows(x, 0)))[:x.shape[0]]


def fit_binary_groups(features, labels, mask, *, kind: str = "logistic", hidden: int = 64,
                      steps: int = 500, learning_rate: float = 0.05, l2: float = 0.0,
                      balance: bool = True, seed: int = 0) -> Params:
  """Fits G independent classifiers at once (one per group, ``vmap`` over groups).

  Args:
    features: float[G, M, D]; group g's rows are ``features[g][mask[g]]``.
    labels: bool[G, M], True = member.
    mask: bool[G, M], True for real rows, False for padding (zero weight). Every group's
      real rows must contain both members and non-members.
    kind, hidden, steps, learning_rate, l2, balance: as in :func:`fit_binary`.
    seed: group g's MLP weights are drawn with ``np.random.default_rng((seed, g))``.

  Returns:
    Parameters whose leaves carry a leading axis G.

  Raises:
    MiaInputError: a bad argument (or a group without both labels), named in the message.
  """
  hidden, steps, learning_rate, l2, seed = check_hyper(kind, hidden, steps, learning_rate,
                                                         l2, seed)
  x = _check_features(features, "features", 3)
  g, m = x.shape[:2]
  y = as_array(labels, "labels")
  msk = as_array(mask, "mask")
  for arr, name in ((y, "labels"), (msk, "mask")):
    if arr.shape != (g, m):
      raise MiaInputError(f"{name}: expected shape {(g, m)} to match features, got {arr.shape}")
    if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.integer)
                                  and np.all(np.isin(arr, (0, 1)))):
      raise MiaInputError(f"{name}: expected booleans (or 0/1), got dtype={arr.dtype}")
  y, msk = y.astype(bool), msk.astype(bool)
  n_pos = np.sum(y & msk, axis=1)
  n_neg = np.sum(~y & msk, axis=1)
  bad = np.flatnonzero((n_pos == 0) | (n_neg == 0))
  if bad.size:
    raise MiaInputError(
        f"labels: group(s) {bad[:5].tolist()} lack members or non-members among their "
        f"real rows (members={n_pos[bad[:5]].tolist()}, non-members={n_neg[bad[:5]].tolist()})")
  x, y, msk = _pad_rows(x, 1), _pad_rows(y, 1), _pad_rows(msk, 1)
  inits = [_init(kind, x.shape[2], hidden, (seed, i)) for i in range(g)]
  init = jax.tree.map(lambda *a: np.stack(a), *inits)
  return _fit(x, y, msk, init, kind=kind, balance=bool(balance), steps=steps,
              learning_rate=learning_rate, l2=l2, seed=seed, grouped=True)


def predict_binary_groups(kind: str, params: Params, features) -> jax.Array:
  """Member logits float[G, M] of G classifiers, group g's on ``features[g]`` float[M, D]."""
  x = _check_features(features, "features", 3)
  _check_params(kind, params, x.shape[2], grouped=True)
  g_params = np.shape(params["mean"])[0]
  if g_params != x.shape[0]:
    raise MiaInputError(f"features: expected {g_params} groups (one per classifier), got "
                        f"{x.shape[0]}")
  return _compiled_predict(kind, True)(params, jnp.asarray(_pad_rows(x, 1)))[:, :x.shape[1]]
