"""Black-box signals: what a model's outputs reveal about each example.

All functions are per example on the last axis and broadcast over leading axes
(models, examples). Called eagerly (not under ``jax.jit``), the functions taking labels
check them on the host first: integers in ``[0, K)``, K the size of the last axis (an
out-of-range label would otherwise give NaN, or wrap around for -1); under a transform the
labels are abstract and the caller validates them (:func:`blackbox_signals` does).
:func:`blackbox_signals` computes every signal for one model or a stack of M models in one
compiled, microbatched pass.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._batching import run_microbatched
from mia_jax._validation import MiaInputError, check_labels
from mia_jax.models.base import LayeredModel, Variables, num_stacked
from mia_jax.sharding import (check_mesh, gather, replicated_sharding, shard_stacked,
                              stacked_sharding)
from mia_jax.models.adapters import check_model

SIGNAL_NAMES = ("loss", "confidence", "scaled_logit", "entropy", "modified_entropy", "correctness")


def _check_y(values, y):
  """Eager calls: ``y`` as int32 labels in [0, K) (K = values.shape[-1]), else
  MiaInputError naming ``y``; traced calls: ``y`` unchanged."""
  if isinstance(values, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
    return y
  k = np.shape(values)[-1] if np.ndim(values) else 0
  return check_labels(y, k, "y", ndim=None)


def _take(a: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.take_along_axis(a, y[..., None], axis=-1)[..., 0]


def loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy -log p_y, float[...].

  Computed as ``softplus(-scaled_logit) = log(1 + sum_{k != y} exp(z_k - z_y))``: the same
  value, but it keeps its precision for confident predictions, where ``-log_softmax``
  rounds to exactly 0 in float32 (margins above ~17) and ties every confidently
  classified example -- which would zero the loss attack's TPR at low FPR.
  """
  y = _check_y(logits, y)
  return jax.nn.softplus(-scaled_logit(logits, y))


def confidence(logits: jax.Array, y: jax.Array) -> jax.Array:
  """True-class probability p_y."""
  y = _check_y(logits, y)
  return _take(jax.nn.softmax(logits), y)


def scaled_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  """LiRA's score log p_y - log sum_{y' != y} p_y' = z_y - logsumexp_{y' != y} z_y'.

  Computed from the logits directly, so it stays finite when p_y rounds to 1.
  """
  y = _check_y(logits, y)
  z_y = _take(logits, y)
  mask = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  others = jnp.where(mask, -jnp.inf, logits)
  return z_y - jax.nn.logsumexp(others, axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
  """Prediction entropy -sum_k p_k log p_k (nats)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def modified_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Song & Mittal (2021): -(1 - p_y) log p_y - sum_{y' != y} p_y' log(1 - p_y')."""
  y = _check_y(logits, y)
  logp = jax.nn.log_softmax(logits)
  p = jnp.exp(logp)
  mask = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  p_y, logp_y = _take(p, y), _take(logp, y)
  # log(1 - p_k) = logsumexp_{j != k} log p_j: exact even when p_k rounds to 1 (a
  # confidently wrong prediction), where log1p(-p_k) would saturate. O(K^2) per example.
  k = logits.shape[-1]
  off = jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, logp[..., None, :])
  log1m = jax.nn.logsumexp(off, axis=-1)
  wrong = jnp.sum(jnp.where(mask, 0.0, p * log1m), axis=-1)
  return -(1.0 - p_y) * logp_y - wrong


def correctness(logits: jax.Array, y: jax.Array) -> jax.Array:
  """1.0 where argmax equals the label."""
  y = _check_y(logits, y)
  return (jnp.argmax(logits, -1) == y).astype(jnp.float32)


def signals_from_logits(logits: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """Every black-box signal from logits float[..., K] and labels int[...] in [0, K)."""
  y = _check_y(logits, y)
  return {
      "loss": loss(logits, y), "confidence": confidence(logits, y),
      "scaled_logit": scaled_logit(logits, y), "entropy": entropy(logits),
      "modified_entropy": modified_entropy(logits, y), "correctness": correctness(logits, y),
  }


PROB_FLOOR = 1e-30
"""Probabilities below this count as this value in logarithms of defended outputs."""


def signals_from_probs(probs: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """Every black-box signal from the probability vector an API returns, float[..., K].

  Used when the prediction API is defended (:mod:`mia_jax.defenses`: top-k, rounding,
  temperature, label-only): the attacker sees only these vectors, not the logits. The
  vectors need not sum to 1 (top-k keeps the model's own values). Logarithms use
  ``max(p, PROB_FLOOR)``, so a zeroed true class gives a large finite loss:

  * loss ``-log p_y``; confidence ``p_y``; scaled logit ``log p_y - log(sum_{k!=y} p_k)``;
  * entropy ``-sum_k p_k log p_k``; modified entropy as :func:`modified_entropy` with
    ``log(1 - p_k)`` taken directly; correctness: argmax (lower index on ties) equals y.
  """
  y = _check_y(probs, y)
  p = probs
  log = lambda a: jnp.log(jnp.maximum(a, PROB_FLOOR))  # noqa: E731
  mask = jax.nn.one_hot(y, p.shape[-1], dtype=bool)
  p_y = _take(p, y)
  others = jnp.sum(jnp.where(mask, 0.0, p), axis=-1)
  ent = -jnp.sum(jnp.where(p > 0, p * log(p), 0.0), axis=-1)
  wrong = jnp.sum(jnp.where(mask | (p <= 0), 0.0, p * log(1.0 - p)), axis=-1)
  return {
      "loss": -log(p_y), "confidence": p_y, "scaled_logit": log(p_y) - log(others),
      "entropy": ent, "modified_entropy": -(1.0 - p_y) * log(p_y) - wrong,
      "correctness": (jnp.argmax(p, -1) == y).astype(jnp.float32),
  }


@functools.lru_cache(maxsize=64)
def _expected_shapes(model: LayeredModel) -> dict[str, tuple[int, ...]]:
  """{path: shape} of one model's variables, in tree order (shapes only, no compile)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  return {jax.tree_util.keystr(kp): tuple(leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _shape_str(shape: tuple[int, ...], stacked: bool) -> str:
  return "(" + ", ".join(["M"] + [str(d) for d in shape]) + ")" if stacked else str(shape)


def _check_variables_match(model: LayeredModel, variables: Variables, stacked: bool,
                           name: str) -> None:
  """Every leaf of ``variables`` has the path and shape ``model.init`` gives it (with a
  leading model axis when ``stacked``); the message names the first differing path."""
  want = _expected_shapes(model)
  got = {jax.tree_util.keystr(kp): tuple(np.shape(leaf))
         for kp, leaf in jax.tree_util.tree_leaves_with_path(variables)}
  where = f"{name}: do not match model {model.name!r}"
  for path, shape in want.items():
    if path not in got:
      raise MiaInputError(f"{where}: missing {path} (expected shape "
                          f"{_shape_str(shape, stacked)}); are these another model's variables?")
  for path in got:
    if path not in want:
      raise MiaInputError(f"{where}: has {path}, which model {model.name!r} does not have; "
                          "are these another model's variables?")
  for path, shape in want.items():
    g = got[path]
    ok = (len(g) == len(shape) + 1 and g[1:] == shape) if stacked else g == shape
    if not ok:
      hint = ""
      if stacked:
        hint = " (stacked=True: every leaf needs a leading model axis M)"
      elif len(g) == len(shape) + 1 and g[1:] == shape:
        hint = " (these look like stacked variables: pass stacked=True)"
      raise MiaInputError(f"{where}: at {path} expected shape {_shape_str(shape, stacked)}, "
                          f"got {g}{hint}")


def check_stacked(variables: Variables, stacked: bool, name: str = "variables",
                  model: LayeredModel | None = None) -> int | None:
  """Number of stacked models (None if not stacked); validates the leading axis.

  With ``model``, also checks that every leaf has the path and shape of ``model``'s
  variables (plus the leading model axis when ``stacked``), so that another model's
  variables or unstacked variables passed with ``stacked=True`` are a named error.
  """
  if not isinstance(variables, Mapping):
    raise MiaInputError(
        f"{name}: expected a dict of variable collections (e.g. {{'params': ...}}), got "
        f"{type(variables).__name__}")
  if model is not None:
    _check_variables_match(model, variables, bool(stacked), name)
  if not stacked:
    return None
  m = num_stacked(variables)
  first = None
  for kp, leaf in jax.tree_util.tree_leaves_with_path(variables):
    lead = jnp.shape(leaf)[:1]
    if first is None:
      first = (jax.tree_util.keystr(kp), lead)
    if lead != (m,):
      raise MiaInputError(
          f"{name}: stacked=True but leaves have different leading axes: "
          f"{first[1]} at {first[0]}, {lead} at {jax.tree_util.keystr(kp)}")
  return m


@functools.lru_cache(maxsize=64)
def _compiled_logits(model: LayeredModel, stacked: bool):
  fn = model.apply
  return jax.jit(jax.vmap(fn, in_axes=(0, None)) if stacked else fn)


@functools.lru_cache(maxsize=64)
def _compiled_signals(model: LayeredModel, stacked: bool, mesh: jax.sharding.Mesh | None = None,
                      defenses: tuple = (), names: tuple[str, ...] | None = None):
  from mia_jax.defenses import apply_defenses

  def every(variables, xb, yb):
    logits = model.apply(variables, xb)
    if not defenses:
      return {"logits": logits, **signals_from_logits(logits, yb)}
    probs = apply_defenses(logits, defenses)
    return {"logits": jnp.log(jnp.maximum(probs, PROB_FLOOR)), "probs": probs,
            **signals_from_probs(probs, yb)}

  def batch(variables, xb, yb):  # only what was asked for leaves the device
    out = every(variables, xb, yb)
    return out if names is None else {k: out[k] for k in names}
  shardings = {}
  if mesh is not None:  # models split over "model", the chunk replicated, outputs per model
    per_model, whole = stacked_sharding(mesh), replicated_sharding(mesh)
    shardings = dict(in_shardings=(per_model, whole, whole), out_shardings=per_model)
  return jax.jit(jax.vmap(batch, in_axes=(0, None, None)) if stacked else batch, **shardings)


def predict_logits(model: LayeredModel, variables: Variables, x, *, microbatch_size: int = 1024,
                   stacked: bool = False) -> np.ndarray:
  """Logits float[N, K], or float[M, N, K] for M stacked models."""
  x, _ = check_model(model).check_inputs(x)
  check_stacked(variables, stacked, model=model)
  fn = _compiled_logits(model, stacked)
  out = run_microbatched(lambda xb: fn(variables, xb), [x], microbatch_size,
                         out_axis=1 if stacked else 0)
  return np.asarray(out)


def blackbox_signals(model: LayeredModel, variables: Variables, x, y, *,
                     microbatch_size: int = 1024, stacked: bool = False,
                     mesh: jax.sharding.Mesh | None = None, defenses=(),
                     names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """All black-box signals of one model (or M stacked models) on (x, y).

  Args:
    model: the architecture.
    variables: one model's variables, or M models' stacked on axis 0 (``stacked=True``).
    x: float[N, *input_shape]; y: int[N].
    microbatch_size: examples per compiled chunk (memory bound).
    stacked: whether ``variables`` holds M models.
    mesh: optional ``jax.sharding.Mesh`` with a "model" axis whose size divides M
      (``stacked=True`` only): each device scores its own models on every chunk; the
      result equals the unsharded one (see docs/multi_device.md).
    defenses: prediction-API defense specs (:func:`mia_jax.defenses.apply_defenses`,
      e.g. ``("top-k=3",)``): the signals are then those of the defended probability
      vectors (:func:`signals_from_probs`), as an attacker querying that API sees them.

    names: only these signals (of SIGNAL_NAMES, "logits", and "probs" with defenses): the
      rest is never copied off the device, so host memory holds [M, N] per signal and not
      the [M, N, K] logits (LiRA and RMIA need two numbers per model and example).

  Returns:
    {"logits": [(M,) N, K], and each of SIGNAL_NAMES: [(M,) N]} as NumPy arrays (or the
    ``names`` only). With defenses, "probs" holds the returned vectors and "logits" their
    logarithms.
  """
  from mia_jax.defenses import parse_defenses
  x, y = check_model(model).check_inputs(x, y)
  defenses = parse_defenses(defenses, model.num_classes)
  m = check_stacked(variables, stacked, model=model)
  if mesh is not None:
    if not stacked:
      raise MiaInputError("mesh: sharding over devices needs stacked=True (M models)")
    variables = shard_stacked(variables, check_mesh(mesh, m))
  if names is not None:
    names = tuple(dict.fromkeys(names))
    known = SIGNAL_NAMES + ("logits",) + (("probs",) if defenses else ())
    bad = [k for k in names if k not in known]
    if bad or not names:
      raise MiaInputError(f"names: unknown signal(s) {bad}; expected some of {list(known)}")
  fn = _compiled_signals(model, stacked, mesh, defenses, names)
  out = run_microbatched(lambda xb, yb: fn(variables, xb, yb), [x, y], microbatch_size,
                         out_axis=1 if stacked else 0)
  if mesh is not None:
    return gather(out)
  return {k: np.asarray(v) for k, v in out.items()}
