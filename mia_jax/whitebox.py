"""White-box signals: layer features and Jacobian rows of the true-class logit.

For a layer l the model splits as ``f = g_l o h_l``. Linearizing ``g_l`` around
``h_l(x)`` gives the row ``d z_y / d h_l``: at ``h_l(x)`` itself ("point"), or averaged
along the path ``t * h_l(x)``, ``t = 1/R, 2/R, ..., 1`` ("path-integrated", the internal
influence of Leino & Fredrikson). Rows are per example because examples do not interact in
eval mode, so one backward pass of the summed true-class logits gives the rows of a whole
microbatch, and -- for point rows -- of every tapped layer at once (the forward pass adds
a zero perturbation at each tapped layer and differentiates with respect to all of them).

``centered=True`` differentiates ``z_y - mean_k z_k`` instead of ``z_y``. The softmax is
unchanged when the same vector is added to every class's weights, so only the centered
row is identified by the model's predictions; it removes that arbitrary component from the
target-minus-proxy difference (see docs/attacks.md).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._batching import on_cpu, run_microbatched
from mia_jax._validation import MiaInputError, check_positive_int
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.models.adapters import check_model


def _cotangent(num_classes: int, y: jax.Array, centered: bool) -> jax.Array:
  cot = jax.nn.one_hot(y, num_classes)
  return cot - 1.0 / num_classes if centered else cot


def point_rows(model: LayeredModel, variables: Variables, x: jax.Array, y: jax.Array,
               layers: Sequence[str], *, centered: bool = False) -> dict[str, jax.Array]:
  """Jacobian rows at ``h_l(x)`` for every layer in ``layers``, one backward pass.

  Args:
    x: float[B, *input_shape]; y: int[B].
  Returns:
    {layer: float[B, *layer_shape]}.
  """
  feats = jax.eval_shape(lambda xx: model.features(variables, xx), x)
  zeros = {l: jnp.zeros(feats[l].shape, feats[l].dtype) for l in layers}
  cot = _cotangent(model.num_classes, y, centered)

  def objective(perts):
    return jnp.sum(model.apply_perturbed(variables, x, perts) * cot)

  return jax.grad(objective)(zeros)


def upper_rows(model: LayeredModel, variables: Variables, h: jax.Array, y: jax.Array,
               layer: str, *, path_steps: int = 0, centered: bool = False) -> jax.Array:
  """Jacobian rows of ``g_layer`` (the stages above ``layer``) with respect to its input.

  ``variables`` needs only the stages above ``layer`` (a proxy's upper part suffices).

  Args:
    h: float[B, *layer_shape], the representation to linearize around.
    y: int[B].
    path_steps: 0 for the point row at ``h``; R >= 1 for the average of the rows at
      ``t * h`` for t = 1/R, ..., 1 (computed with a scan: memory does not grow with R).
  Returns:
    float[B, *layer_shape].
  """
  cot = _cotangent(model.num_classes, y, centered)
  grad = jax.grad(lambda hh: jnp.sum(model.g(variables, hh, layer) * cot))
  if path_steps == 0:
    return grad(h)
  ts = jnp.arange(1, path_steps + 1, dtype=h.dtype) / path_steps

  def step(acc, t):
    return acc + grad(t * h), None

  # Unrolled on the CPU, where a loop body with a convolution's backward pass is slow.
  total, _ = jax.lax.scan(step, jnp.zeros_like(h), ts, unroll=path_steps if on_cpu() else 1)
  return total / path_steps


def linear_scores(h: jax.Array, y: jax.Array, row_target: jax.Array, row_proxy: jax.Array,
                  class_means: jax.Array) -> jax.Array:
  """The linear membership score sum_j (h_j - m_{y,j}) (w^_j - w*_j) per example.

  Args:
    h: float[B, *shape] features; y: int[B].
    row_target, row_proxy: float[B, *shape] effective weights (Jacobian rows).
    class_means: float[K, *shape] class means of the features on auxiliary data.
  Returns:
    float[B].
  """
  diff = (h - class_means[y]) * (row_target - row_proxy)
  return jnp.sum(diff.reshape(diff.shape[0], -1), axis=-1)


def check_layers(model: LayeredModel, layers) -> tuple[str, ...]:
  layers = check_model(model).check_layers(layers)
  if not layers:
    raise MiaInputError("layers: expected at least one layer name")
  if model.stage_names[-1] in layers:
    raise MiaInputError(
        f"layers: {model.stage_names[-1]!r} is the output; choose among "
        f"{list(model.layer_names[:-1])}")
  if hasattr(model, "check_cut"):  # an adapted model: every tap must be a cut
    model.check_cut(layers)
  return layers


def default_layers(model: LayeredModel) -> tuple[str, ...]:
  """Every tap point below the logits, "input" included."""
  return model.layer_names[:-1]


def _rows_fn(model, layers, path_steps, centered):
  def fn(variables, x, y):
    if path_steps == 0:
      return point_rows(model, variables, x, y, layers, centered=centered)
    feats = model.features(variables, x)
    return {l: upper_rows(model, variables, feats[l], y, l, path_steps=path_steps,
                          centered=centered) for l in layers}
  return fn


@functools.lru_cache(maxsize=32)
def _compiled_rows(model, layers, path_steps, centered, stacked):
  rows = _rows_fn(model, layers, path_steps, centered)
  return jax.jit(jax.vmap(rows, in_axes=(0, None, None)) if stacked else rows)


def jacobian_rows(model: LayeredModel, variables: Variables, x, y, *, layers: Sequence[str],
                  path_steps: int = 0, centered: bool = False, microbatch_size: int = 256,
                  stacked: bool = False) -> dict[str, np.ndarray]:
  """Jacobian rows ``d z_y / d h_l`` for every layer, for all examples.

  Args:
    model, variables: the model (M stacked models if ``stacked``).
    x: float[N, *input_shape]; y: int[N].
    layers: layer names (see ``model.layer_names``; not the logits).
    path_steps: 0 for point rows, R for path-integrated rows.
    centered: differentiate ``z_y - mean_k z_k`` (see module docstring).
    microbatch_size: examples per compiled chunk.
    stacked: ``variables`` holds M models stacked on axis 0.
  Returns:
    {layer: float[(M,) N, *layer_shape]} as NumPy arrays.
  Raises:
    MiaInputError: bad inputs, e.g. variables of another model or unstacked variables
      with ``stacked=True`` (the message shows the first differing path and shapes).
  """
  from mia_jax.signals import check_stacked
  x, y = check_model(model).check_inputs(x, y)
  layers = check_layers(model, layers)
  path_steps = check_positive_int(path_steps, "path_steps", minimum=0)
  check_positive_int(microbatch_size, "microbatch_size")
  check_stacked(variables, stacked, model=model)
  fn = _compiled_rows(model, layers, int(path_steps), bool(centered), bool(stacked))
  out = run_microbatched(lambda xb, yb: fn(variables, xb, yb), [x, y], microbatch_size,
                         out_axis=1 if stacked else 0)
  return {k: np.asarray(v) for k, v in out.items()}


# -- features -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _compiled_features(model, layer, stacked):
  def one(variables, x):
    return model.h(variables, x, layer)
  return jax.jit(jax.vmap(one, in_axes=(0, None)) if stacked else one)


def layer_features(model: LayeredModel, variables: Variables, x, layer: str, *,
                   microbatch_size: int = 1024, stacked: bool = False) -> np.ndarray:
  """h_layer(x) for all examples: float[(M,) N, *layer_shape]."""
  from mia_jax.signals import check_stacked
  x, _ = check_model(model).check_inputs(x)
  model.check_layers([layer])
  check_stacked(variables, stacked, model=model)
  fn = _compiled_features(model, layer, bool(stacked))
  return np.asarray(run_microbatched(lambda xb: fn(variables, xb), [x], microbatch_size,
                                     out_axis=1 if stacked else 0))


def class_means(features, y, num_classes: int) -> np.ndarray:
  """Per-class mean of features float[N, *shape] -> float[K, *shape] (0 for empty classes)."""
  f = np.asarray(features, np.float64)
  y = np.asarray(y)
  onehot = np.eye(num_classes)[y]  # [N, K]
  counts = onehot.sum(0)
  means = np.tensordot(onehot.T, f, axes=1) / np.maximum(counts, 1).reshape((-1,) + (1,) * (f.ndim - 1))
  return means.astype(np.float32)


# -- the layer-wise score pass --------------------------------------------------------------

def _scores_one_target(model, layers, path_steps, centered):
  """(target_vars, proxies{l: vars[P]}, means{l: [K,..]}, x[B], y[B]) -> {l: [B]}."""

  def fn(target_vars, proxies, means, x, y):
    feats = model.features(target_vars, x)
    if path_steps == 0:
      rows_t = point_rows(model, target_vars, x, y, layers, centered=centered)
    else:
      rows_t = {l: upper_rows(model, target_vars, feats[l], y, l, path_steps=path_steps,
                              centered=centered) for l in layers}
    out = {}
    for l in layers:
      # Average the proxies' rows (linear in the proxy, so this is the averaged attack).
      rows_p = jax.vmap(lambda pv, l=l: upper_rows(
          model, pv, feats[l], y, l, path_steps=path_steps, centered=centered))(proxies[l])
      out[l] = linear_scores(feats[l], y, rows_t[l], jnp.mean(rows_p, axis=0), means[l])
    return out

  return fn


@functools.lru_cache(maxsize=32)
def _compiled_scores(model, layers, path_steps, centered, stacked):
  per_batch = _scores_one_target(model, layers, path_steps, centered)
  return jax.jit(jax.vmap(per_batch, in_axes=(0, 0, 0, None, None)) if stacked else per_batch)


def _check_proxy(model: LayeredModel, target_variables, proxy_variables, layer: str,
                 lead: int) -> None:
  """The proxy's upper part must have the target's upper architecture (plus a P axis)."""
  if not hasattr(model, "_index"):  # an adapted model: proxies carry the whole variables
    want, got = jax.tree.structure(target_variables), jax.tree.structure(proxy_variables)
    if want != got:
      raise MiaInputError(f"proxy_variables[{layer!r}]: the proxies' variables do not have "
                          "the target's structure: proxy and target must share the model")
    for a, b in zip(jax.tree.leaves(target_variables), jax.tree.leaves(proxy_variables)):
      if tuple(np.shape(a))[lead:] != tuple(np.shape(b))[lead + 1:]:
        raise MiaInputError(
            f"proxy_variables[{layer!r}]: a proxy variable has shape {np.shape(b)}, expected "
            f"[P, {', '.join(map(str, np.shape(a)[lead:]))}] (leading axis: proxies)")
    return
  upper = model.stage_names[model._index(layer):]
  for col, tree in target_variables.items():
    want = {name: tree[name] for name in upper if name in tree}
    got = proxy_variables.get(col, {})
    got = {name: got[name] for name in upper if name in got}
    if jax.tree.structure(want) != jax.tree.structure(got):
      raise MiaInputError(
          f"proxy_variables[{layer!r}]: the proxy's {col!r} do not match the target's upper "
          f"part above {layer!r} (stages {list(upper)}): proxy and target must share the "
          "architecture")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      if tuple(np.shape(a))[lead:] != tuple(np.shape(b))[lead + 1:]:
        raise MiaInputError(
            f"proxy_variables[{layer!r}]: a proxy parameter has shape {np.shape(b)}, expected "
            f"[P, {', '.join(map(str, np.shape(a)[lead:]))}] (leading axis: proxies): proxy and "
            "target must share the architecture")


def layer_scores(model: LayeredModel, target_variables: Variables,
                 proxy_variables: Mapping[str, Variables], means: Mapping[str, np.ndarray], x, y,
                 *, path_steps: int = 0, centered: bool = True, microbatch_size: int = 256,
                 stacked: bool = False) -> dict[str, np.ndarray]:
  """Per-layer Stolen Memories scores for every example, in one compiled pass.

  Args:
    model: the target architecture.
    target_variables: the target's variables (M stacked targets if ``stacked``).
    proxy_variables: {layer: variables of the proxy upper part g*_l, with a leading axis
      of P proxies (averaged)}; with ``stacked``, a further leading axis M.
    means: {layer: float[(M,) K, *layer_shape]} class means of h_l on auxiliary data.
    x: float[N, *input_shape]; y: int[N].
    path_steps, centered: see :func:`jacobian_rows`.
    microbatch_size: examples per compiled chunk (memory bound).
  Returns:
    {layer: float[(M,) N]}: higher = more likely member.
  """
  from mia_jax.signals import check_stacked
  x, y = check_model(model).check_inputs(x, y)
  layers = check_layers(model, tuple(proxy_variables))
  missing = [l for l in layers if l not in means]
  if missing:
    raise MiaInputError(f"means: missing class means for layer(s) {missing}")
  path_steps = check_positive_int(path_steps, "path_steps", minimum=0)
  check_stacked(target_variables, stacked, "target_variables", model=model)
  lead = 1 if stacked else 0
  for l in layers:
    _check_proxy(model, target_variables, proxy_variables[l], l, lead)
  fn = _compiled_scores(model, layers, int(path_steps), bool(centered), bool(stacked))
  means = {l: jnp.asarray(means[l]) for l in layers}
  proxies = {l: proxy_variables[l] for l in layers}
  out = run_microbatched(lambda xb, yb: fn(target_variables, proxies, means, xb, yb), [x, y],
                         microbatch_size, out_axis=1 if stacked else 0)
  return {k: np.asarray(v) for k, v in out.items()}


# -- gradient features (Nasr, Shokri & Houmansadr, S&P 2019) ---------------------------------

@functools.lru_cache(maxsize=32)
def _compiled_grad_norms(model: LayeredModel, stacked: bool = False):
  def per_example(variables, x1, y1):
    def loss(params):
      logits = model.apply({**variables, "params": params}, x1[None])
      return -jax.nn.log_softmax(logits)[0, y1]
    grads = jax.grad(loss)(variables["params"])
    norms = {stage: jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))
             for stage, tree in grads.items()}
    norms["total"] = jnp.sqrt(sum(jnp.square(v) for v in norms.values()))
    return norms
  batch = jax.vmap(per_example, in_axes=(None, 0, 0))
  return jax.jit(jax.vmap(batch, in_axes=(0, None, None)) if stacked else batch)


def gradient_norms(model: LayeredModel, variables: Variables, x, y, *,
                   microbatch_size: int = 256, stacked: bool = False,
                   max_gradient_bytes: int = 1 << 30) -> dict[str, np.ndarray]:
  """Per-example L2 norms of the loss gradient with respect to each stage's parameters
  (and ``"total"`` over all of them): the white-box gradient features of Nasr, Shokri &
  Houmansadr (S&P 2019). Members tend to have smaller gradients; the attack score is
  ``-norm`` (higher = member).

  With ``stacked=True`` the variables carry a leading axis M (many targets or
  checkpoints) and one compiled, vmapped pass computes the norms of all of them
  (memory: M x microbatch_size per-example gradients).

  Memory: the per-example gradients of a chunk (models x examples x parameters, float32)
  are kept under ``max_gradient_bytes`` by shrinking the microbatch (down to one example).

  Returns:
    {stage: float[N], ..., "total": float[N]} (float[M, N] when stacked) as NumPy arrays.
  """
  from mia_jax.signals import check_stacked
  x, y = check_model(model).check_inputs(x, y)
  m = check_stacked(variables, stacked, model=model) or 1
  n_params = sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(variables["params"])) // m
  per_example = 4 * m * max(n_params, 1)
  microbatch_size = max(1, min(int(microbatch_size), int(max_gradient_bytes) // per_example))
  fn = _compiled_grad_norms(model, bool(stacked))
  out = run_microbatched(lambda xb, yb: fn(variables, xb, yb), [x, y], microbatch_size,
                         out_axis=1 if stacked else 0)
  return {k: np.asarray(v) for k, v in out.items()}
