"""LayeredModel: a Flax model as a chain of named stages.

The white-box attack needs, for every layer l, the split of the logits
``f(x) = g_l(h_l(x))`` with ``h_l`` and ``g_l`` both pure functions of the variables.
A :class:`LayeredModel` is a tuple of named Flax stage modules, each with its own
variables, so any contiguous range of stages is itself a model:

* ``model.layer_names`` -- ``("input", stage_0, ..., "logits")``; ``h_l`` is the output of
  stage ``l`` ("input" is ``x`` itself).
* ``model.h(variables, x, layer)`` and ``model.g(variables, h, layer)``.
* ``model.upper(layer)`` -- the stages above ``layer`` as a model of their own (a proxy's
  upper part ``g*_l`` is trained with it on top of frozen features ``h_l``).
* ``model.features(variables, x)`` -- every layer's activation from one forward pass.
* ``model.apply_perturbed(variables, x, perturbations)`` -- adds ``perturbations[name]`` to
  ``h_name`` on the way up; differentiating the true-class logit with respect to all
  perturbations at zero gives the Jacobian rows of every layer in one backward pass.

Variables are ``{"params": {stage: ...}, "batch_stats": {stage: ...}}`` (the second
collection only when a stage has BatchNorm). Inference is always eval mode (no dropout,
BatchNorm with running statistics); ``train=True`` is used by the trainer only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

import numpy as np

from mia_jax._validation import MiaInputError, as_array, check_finite, check_labels

Variables = dict[str, Any]
INPUT = "input"


@dataclasses.dataclass(frozen=True, eq=False)
class LayeredModel:
  """A classifier made of named stages (see module docstring).

  Attributes:
    name: architecture name (e.g. "mlp").
    stages: ((layer_name, flax_module), ...); each module is called as
      ``module(h, train=bool)``; the last stage outputs the logits.
    input_shape: per-example input shape (no batch axis).
    num_classes: number of logits.
    spec: the keyword arguments that rebuild this model with ``make_model`` (saved
      beside checkpoints and compared to detect architecture mismatches).
  """

  name: str
  stages: tuple[tuple[str, nn.Module], ...]
  input_shape: tuple[int, ...]
  num_classes: int
  spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  # -- structure -------------------------------------------------------------------
  @property
  def stage_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.stages)

  @property
  def layer_names(self) -> tuple[str, ...]:
    """All tap points: "input", then every stage output (the last is the logits)."""
    return (INPUT,) + self.stage_names

  def _index(self, layer: str) -> int:
    """Number of stages that make up ``h_layer`` (0 for "input")."""
    if layer == INPUT:
      return 0
    names = self.stage_names
    if layer not in names:
      raise MiaInputError(
          f"layer: model {self.name!r} has no layer {layer!r}; its layers are "
          f"{list(self.layer_names)}")
    return names.index(layer) + 1

  def check_layers(self, layers) -> tuple[str, ...]:
    layers = tuple(layers)
    for layer in layers:
      self._index(layer)
    return layers

  def sub(self, start: int, stop: int | None = None, input_shape=None) -> "LayeredModel":
    """The model made of stages[start:stop]."""
    stop = len(self.stages) if stop is None else stop
    return LayeredModel(
        name=f"{self.name}[{start}:{stop}]", stages=self.stages[start:stop],
        input_shape=tuple(input_shape) if input_shape is not None else self.input_shape,
        num_classes=self.num_classes, spec={**self.spec, "_range": (start, stop)})

  def upper(self, layer: str) -> "LayeredModel":
    """The stages above ``layer`` as a model whose input is ``h_layer``.

    The same object is returned for the same layer, so compiled functions cached per model
    (training epochs, signal passes) are reused across calls.
    """
    cache = self.__dict__.setdefault("_upper_cache", {})
    if layer not in cache:
      cache[layer] = self._make_upper(layer)
    return cache[layer]

  def _make_upper(self, layer: str) -> "LayeredModel":
    i = self._index(layer)
    if i == len(self.stages):
      raise MiaInputError(f"layer: {layer!r} is the logits; there is no upper part above it")
    shape = self.layer_shapes()[layer]
    return self.sub(i, None, input_shape=shape)

  def check_inputs(self, x, y=None):
    """Validates inputs for this model (see :func:`check_model_inputs`)."""
    return check_model_inputs(self, x, y)

  # -- variables ---------------------------------------------------------------------
  def init(self, key: jax.Array) -> Variables:
    """Initial variables for all stages (one example of zeros traced through)."""
    h = jnp.zeros((1,) + self.input_shape, jnp.float32)
    out: dict[str, dict[str, Any]] = {}
    for i, (name, module) in enumerate(self.stages):
      v = module.init({"params": jax.random.fold_in(key, i)}, h, train=False)
      for col, tree in v.items():
        out.setdefault(col, {})[name] = tree
      h = module.apply(v, h, train=False)
    return out

  def _abstract_variables(self) -> Variables:
    return jax.eval_shape(self.init, jax.random.key(0))

  def stage_variables(self, variables: Variables, name: str) -> dict[str, Any]:
    return {col: tree[name] for col, tree in variables.items() if name in tree}

  # -- forward -----------------------------------------------------------------------
  def _run(self, variables, h, start, stop, perturbations=None):
    for name, module in self.stages[start:stop]:
      h = module.apply(self.stage_variables(variables, name), h, train=False)
      if perturbations is not None and name in perturbations:
        h = h + perturbations[name]
    return h

  def apply(self, variables: Variables, x: jax.Array) -> jax.Array:
    """Logits float[B, K] in eval mode."""
    return self._run(variables, x, 0, None)

  def apply_train(self, variables: Variables, x: jax.Array, dropout_key: jax.Array,
                  mask: jax.Array | None = None):
    """Training-mode forward: returns (logits, updated non-param collections).

    ``mask`` (bool[B]) marks the real rows of a padded batch; padding rows are left out of
    BatchNorm's batch statistics.
    """
    h = x
    new_state: dict[str, dict[str, Any]] = {}
    for i, (name, module) in enumerate(self.stages):
      v = self.stage_variables(variables, name)
      mutable = [c for c in v if c != "params"]
      rngs = {"dropout": jax.random.fold_in(dropout_key, i)}
      if mutable:
        h, upd = module.apply(v, h, train=True, rngs=rngs, mutable=mutable, mask=mask)
        for col, tree in upd.items():
          new_state.setdefault(col, {})[name] = tree
      else:
        h = module.apply(v, h, train=True, rngs=rngs, mask=mask)
    return h, new_state

  def h(self, variables: Variables, x: jax.Array, layer: str) -> jax.Array:
    """Representation h_layer(x), float[B, *layer_shape]."""
    return self._run(variables, x, 0, self._index(layer))

  def g(self, variables: Variables, h: jax.Array, layer: str) -> jax.Array:
    """Logits from the representation at ``layer``: g_layer(h), float[B, K]."""
    return self._run(variables, h, self._index(layer), None)

  def features(self, variables: Variables, x: jax.Array) -> dict[str, jax.Array]:
    """Every layer's activation from one eval-mode forward pass: {name: float[B, ...]}."""
    out = {INPUT: x}
    h = x
    for name, module in self.stages:
      h = module.apply(self.stage_variables(variables, name), h, train=False)
      out[name] = h
    return out

  def apply_perturbed(self, variables: Variables, x: jax.Array,
                      perturbations: Mapping[str, jax.Array]) -> jax.Array:
    """Logits with ``perturbations[l]`` added to h_l (l may include "input")."""
    if INPUT in perturbations:
      x = x + perturbations[INPUT]
    return self._run(variables, x, 0, None, perturbations)

  def layer_shapes(self) -> dict[str, tuple[int, ...]]:
    """Per-example shape of every layer's activation."""
    feats = jax.eval_shape(
        lambda v, x: self.features(v, x), self._abstract_variables(),
        jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.float32))
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def check_model_inputs(model, x, y=None):
  """Validates inputs for ``model``: x float[N, *model.input_shape], y int[N] in range.

  Returns (x as float32, y as int32 or None); raises MiaInputError before any compute.
  Complex x or y are refused (a cast would drop the imaginary part silently).
  """
  x = as_array(x, "x")  # refuses object and complex arrays
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
          or x.dtype == bool):
    raise MiaInputError(f"x: expected real numbers, got dtype={x.dtype}")
  if x.ndim < 1 or tuple(x.shape[1:]) != tuple(model.input_shape):
    raise MiaInputError(
        f"x: expected shape [N, {', '.join(map(str, model.input_shape))}] for model "
        f"{model.name!r}, got {x.shape}")
  x = x.astype(np.float32)
  check_finite(x, "x")
  if y is None:
    return x, None
  y = check_labels(y, model.num_classes, "y")
  if y.shape[0] != x.shape[0]:
    raise MiaInputError(f"y: expected {x.shape[0]} labels to match x, got {y.shape[0]}")
  return x, y


def stack_variables(trees) -> Variables:
  """Stacks variables of M models on a new leading axis (M on every leaf)."""
  trees = list(trees)
  if not trees:
    raise MiaInputError("trees: expected at least one variables pytree to stack")
  s0 = jax.tree.structure(trees[0])
  for i, t in enumerate(trees[1:], 1):
    if jax.tree.structure(t) != s0:
      raise MiaInputError(f"trees[{i}]: tree structure differs from trees[0]")
    for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(t)):
      if jnp.shape(a) != jnp.shape(b):
        raise MiaInputError(
            f"trees[{i}]: leaf shape {jnp.shape(b)} differs from trees[0]'s {jnp.shape(a)}")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_variables(stacked: Variables) -> list[Variables]:
  """Inverse of :func:`stack_variables`."""
  m = num_stacked(stacked)
  return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(m)]


def num_stacked(stacked: Variables) -> int:
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise MiaInputError("variables: empty pytree")
  return int(jnp.shape(leaves[0])[0])
