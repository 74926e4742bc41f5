"""The user's own model, used as written: Flax linen, Flax NNX, or any apply function.

Every attack reads a model through one interface (the one :class:`LayeredModel`, the
built-in zoo, also has):

* ``apply(variables, x) -> logits`` in eval mode;
* ``layer_names`` -- ``("input", *taps, "logits")``: named tap points;
* ``features(variables, x)`` -- the activation at every tap from one forward pass;
* ``apply_perturbed(variables, x, perturbations)`` -- the logits with ``perturbations[l]``
  added at tap ``l`` (so one backward pass gives the Jacobian rows of every tap);
* ``h(variables, x, l)`` and ``g(variables, h, l)`` -- the parts below and above a tap.

The adapters build that interface from the user's model without rewriting it:

* :func:`from_linen` taps submodules by path (``"Conv_1"``, ``"ResBlock_0"``,
  ``"backbone/Dense_2"``) with Flax's own ``nn.intercept_methods``: the submodule's
  ``__call__`` output is recorded, perturbed or replaced on the way up. The user's
  variables are used as saved (``params`` plus any ``batch_stats``).
* :func:`from_nnx` taps attributes by path (``"conv2"``, ``"blocks/0"``) of an NNX model
  turned into pure functions with ``nnx.split`` / ``nnx.merge``; its variables are its
  parameters and BatchNorm statistics as pure dicts, so many models stack on a leading axis.
* :func:`from_apply` wraps any ``(variables, x) -> logits`` (black-box attacks only).

``g_l`` runs the model with the tap's output replaced, so it is the upper part only if the
tap is a *cut* of the network: if a skip connection crosses it, the logits depend on the
input other than through ``h_l``. :meth:`TappedModel.check_cut` finds that from the
model's own dataflow (the jaxpr's dependencies after dead-code elimination), and every
white-box entry point refuses such a tap before any compute, naming it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import MiaInputError
from mia_jax.models.base import INPUT, LayeredModel, check_model_inputs

LOGITS = "logits"
Hook = Callable[[str, jax.Array], jax.Array]

_EVAL_FLAGS = (("train", False), ("training", False), ("is_training", False),
               ("deterministic", True), ("use_running_average", True))


@dataclasses.dataclass(frozen=True, eq=False)
class TappedModel:
  """A classifier given as a pure forward function with named taps (module docstring).

  Attributes:
    name: a label for messages and reports.
    input_shape: per-example input shape.
    num_classes: number of logits.
    taps: tap names, in call order (the logits are the extra last layer "logits").
    forward: ``forward(variables, x, hook) -> logits``; ``hook(tap, h)`` is called with
      every tap's output and returns what the model continues with.
    init_fn: ``init_fn(key) -> variables`` of the right structure (shapes matter).
    spec: a description saved with results.
    train_forward: ``train_forward(variables, x, hook, key) -> (logits, updated non-param
      collections)`` in training mode (dropout from ``key``, BatchNorm on the batch), for
      training proxies' upper parts; None when the model cannot be trained here.
    param_stages: top-level parameter groups in call order (for per-stage gradients).
  """
  name: str
  input_shape: tuple[int, ...]
  num_classes: int
  taps: tuple[str, ...]
  forward: Callable[[Any, jax.Array, Hook], jax.Array]
  init_fn: Callable[[jax.Array], Any]
  spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train_forward: Callable[..., Any] | None = None
  param_stages: tuple[str, ...] = ()

  # -- structure -------------------------------------------------------------------
  @property
  def stage_names(self) -> tuple[str, ...]:
    return self.taps + (LOGITS,)

  @property
  def layer_names(self) -> tuple[str, ...]:
    return (INPUT,) + self.stage_names

  def check_layers(self, layers) -> tuple[str, ...]:
    layers = tuple(layers)
    for layer in layers:
      if layer not in self.layer_names:
        raise MiaInputError(f"layer: model {self.name!r} has no tap {layer!r}; its taps are "
                            f"{list(self.layer_names)}")
    return layers

  def check_inputs(self, x, y=None):
    """x float32[N, *input_shape], y int32[N] in [0, num_classes), or a named error."""
    return check_model_inputs(self, x, y)

  def init(self, key: jax.Array):
    return self.init_fn(key)

  def _abstract_variables(self):
    return jax.eval_shape(self.init, jax.random.key(0))

  # -- forward -----------------------------------------------------------------------
  def apply(self, variables, x: jax.Array) -> jax.Array:
    """Logits float[B, K] in eval mode."""
    return self.forward(variables, x, lambda name, h: h)

  def apply_train(self, variables, x: jax.Array, dropout_key: jax.Array, mask=None):
    """Training-mode forward (for :mod:`mia_jax.train`): (logits, updated non-param
    collections). The user's BatchNorm cannot leave padded rows (``mask``) out of its
    batch statistics; the trainer pads only the last batch of an epoch."""
    if self.train_forward is None:
      raise MiaInputError(f"model: {self.name!r} ({self.spec.get('adapter')}) cannot be "
                          "trained here")
    return self.train_forward(variables, x, lambda n, a: a, dropout_key)

  def features(self, variables, x: jax.Array) -> dict[str, jax.Array]:
    """{tap: activation} for "input", every tap and "logits", from one forward pass."""
    out = {INPUT: x}

    def hook(name, h):
      if name in out:
        raise MiaInputError(f"taps: {name!r} ran more than once in one forward pass (a "
                            "shared submodule); tap a submodule that runs once")
      out[name] = h
      return h
    out[LOGITS] = self.forward(variables, x, hook)
    return out

  def apply_perturbed(self, variables, x: jax.Array,
                      perturbations: Mapping[str, jax.Array]) -> jax.Array:
    """Logits with ``perturbations[l]`` added at tap ``l`` ("input" and "logits" too)."""
    if INPUT in perturbations:
      x = x + perturbations[INPUT]
    z = self.forward(variables, x,
                     lambda name, h: h + perturbations[name] if name in perturbations else h)
    return z + perturbations[LOGITS] if LOGITS in perturbations else z

  def h(self, variables, x: jax.Array, layer: str) -> jax.Array:
    """The activation at ``layer`` (under jit the layers above it are not computed)."""
    self.check_layers([layer])
    return self.features(variables, x)[layer]

  def g(self, variables, h: jax.Array, layer: str) -> jax.Array:
    """Logits from the activation ``h`` at ``layer``: the model with that tap's output
    replaced by ``h``. Only meaningful for a cut (:meth:`check_cut`); the part below the
    tap runs on zeros and is removed by XLA as dead code."""
    self.check_layers([layer])
    if layer == INPUT:
      return self.apply(variables, h)
    if layer == LOGITS:
      return h
    x = jnp.zeros((h.shape[0],) + self.input_shape, jnp.float32)
    return self.forward(variables, x, lambda name, a: h if name == layer else a)

  def check_cut(self, layers: Sequence[str]) -> None:
    """Refuses, before any compute, a tap that is not a cut of the network: the logits
    computed from the tap's activation still depend on the input (a skip connection
    crosses the tap). Decided from the jaxpr's dataflow after dead-code elimination."""
    variables = jax.eval_shape(self.init, jax.random.key(0))
    shapes = self.layer_shapes()
    for layer in layers:
      if layer in (INPUT, LOGITS):
        continue
      x = jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.float32)
      h = jax.ShapeDtypeStruct((1,) + shapes[layer], jnp.float32)

      def replaced(vv, xx, hh, layer=layer):
        return self.forward(vv, xx, lambda name, a: hh if name == layer else a)

      used = used_inputs(jax.make_jaxpr(replaced)(variables, x, h))
      if used[len(jax.tree.leaves(variables))]:  # the input x
        raise MiaInputError(
            f"layers: tap {layer!r} of model {self.name!r} is not a cut of the network: the "
            "logits depend on the input other than through it (a skip connection crosses "
            "it, e.g. a tap inside a residual block); tap a block boundary instead")

  def layer_shapes(self) -> dict[str, tuple[int, ...]]:
    """Per-example shape of every tap's activation."""
    variables = jax.eval_shape(self.init, jax.random.key(0))
    feats = jax.eval_shape(lambda v, x: self.features(v, x), variables,
                           jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.float32))
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}

  def upper(self, layer: str) -> "UpperModel":
    """The part above tap ``layer`` as a trainable model whose input is ``h_layer`` (a
    Stolen Memories proxy's ``g*_l``). Its variables are the whole model's: the part
    below the tap does not enter its outputs (nor its gradients), and
    :meth:`freeze_below` sets it to the target's after training."""
    self.check_layers([layer])
    if layer == LOGITS:
      raise MiaInputError(f"layer: {layer!r} is the logits; there is no upper part above it")
    if self.train_forward is None:
      raise MiaInputError(f"layer: model {self.name!r} ({self.spec.get('adapter')}) cannot be "
                          "trained here, so no proxy can be trained above a tap")
    self.check_cut([layer])
    cache = self.__dict__.setdefault("_upper_cache", {})
    if layer not in cache:
      cache[layer] = UpperModel(self, layer, self.layer_shapes()[layer])
    return cache[layer]

  def above_mask(self, layer: str):
    """A pytree of bools like the variables: True where a leaf enters ``g_layer`` (the
    part above the tap), from the jaxpr's dataflow after dead-code elimination."""
    variables = self._abstract_variables()
    if layer == INPUT:
      return jax.tree.map(lambda _: True, variables)
    shape = self.layer_shapes()[layer]
    h = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    used = used_inputs(jax.make_jaxpr(lambda v, hh: self.g(v, hh, layer))(variables, h))
    leaves, treedef = jax.tree.flatten(variables)
    return jax.tree.unflatten(treedef, [bool(u) for u in used[:len(leaves)]])

  def freeze_below(self, layer: str, proxies, target, *, stacked: bool = True):
    """Proxy variables whose part below ``layer`` is the target's (broadcast over the
    proxies' leading axis when ``stacked``); the part above stays the proxies'."""
    mask = self.above_mask(layer)

    def pick(above, p, t):
      t = jnp.asarray(t)
      return p if above else (jnp.broadcast_to(t, p.shape) if stacked else t)
    return jax.tree.map(pick, mask, proxies, target)


@dataclasses.dataclass(frozen=True, eq=False)
class UpperModel:
  """The part of a :class:`TappedModel` above a tap, trainable by
  :func:`mia_jax.train.train_models` (input: the tap's activation)."""
  parent: TappedModel
  layer: str
  input_shape: tuple[int, ...]

  @property
  def name(self) -> str:
    return f"{self.parent.name}[above {self.layer}]"

  @property
  def num_classes(self) -> int:
    return self.parent.num_classes

  @property
  def spec(self) -> dict:
    return {**self.parent.spec, "above": self.layer}

  def check_inputs(self, x, y=None):
    return check_model_inputs(self, x, y)

  def init(self, key):
    return self.parent.init(key)

  def apply(self, variables, h):
    return self.parent.g(variables, h, self.layer)

  def apply_train(self, variables, h, dropout_key, mask=None):
    """Training-mode upper part: (logits, updated non-param collections). BatchNorm in the
    user's module cannot leave padded rows out of its batch statistics (``mask`` is not
    used): only the proxies' last, padded batch of an epoch is affected."""
    parent, layer = self.parent, self.layer
    if layer == INPUT:
      return parent.train_forward(variables, h, lambda n, a: a, dropout_key)
    x = jnp.zeros((h.shape[0],) + parent.input_shape, jnp.float32)
    return parent.train_forward(variables, x, lambda n, a: h if n == layer else a, dropout_key)


def used_inputs(closed) -> list[bool]:
  """Which inputs of a traced function its outputs depend on.

  JAX's own dead-code elimination (``dce_jaxpr``, which looks inside nested calls) when
  this JAX has it; otherwise a conservative forward walk over the jaxpr in which every
  output of an equation depends on all its inputs (it can only report more inputs as
  used: a cut may then be refused, never wrongly accepted).
  """
  outs = [True] * len(closed.jaxpr.outvars)
  try:
    from jax._src.interpreters import partial_eval as pe
    return [bool(u) for u in pe.dce_jaxpr(closed.jaxpr, outs, instantiate=False)[1]]
  except Exception:  # noqa: BLE001 - a private API; fall back to the walk below
    return _used_inputs_conservative(closed.jaxpr)


def _used_inputs_conservative(jaxpr) -> list[bool]:
  deps: dict[Any, frozenset] = {v: frozenset([i]) for i, v in enumerate(jaxpr.invars)}

  def of(v):
    return deps.get(v, frozenset()) if not hasattr(v, "val") else frozenset()
  for eqn in jaxpr.eqns:
    d = frozenset().union(*[of(v) for v in eqn.invars]) if eqn.invars else frozenset()
    for v in eqn.outvars:
      deps[v] = d
  used = frozenset().union(*[of(v) for v in jaxpr.outvars]) if jaxpr.outvars else frozenset()
  return [i in used for i in range(len(jaxpr.invars))]


def _check_shape_args(input_shape, num_classes, what: str) -> tuple[tuple[int, ...], int]:
  try:
    shape = tuple(int(d) for d in input_shape)
  except TypeError as e:
    raise MiaInputError(f"input_shape: expected a sequence of positive integers (one "
                        f"example, no batch axis), got {input_shape!r}") from e
  if not shape or any(d < 1 for d in shape):
    raise MiaInputError(f"input_shape: expected positive integer dimensions, got {input_shape!r}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
     or num_classes < 2:
    raise MiaInputError(f"num_classes: expected an integer >= 2 for {what}, got {num_classes!r}")
  return shape, int(num_classes)


def _check_output(model: TappedModel) -> TappedModel:
  """The forward pass must run on the declared input shape and give [B, num_classes]."""
  try:
    v = jax.eval_shape(model.init, jax.random.key(0))
    out = jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct((2,) + model.input_shape,
                                                              jnp.float32))
  except MiaInputError:
    raise
  except Exception as e:  # noqa: BLE001 - the user's model may fail in any way
    raise MiaInputError(f"model: {model.name!r} does not run on inputs of shape "
                        f"[B, {', '.join(map(str, model.input_shape))}]: {type(e).__name__}: "
                        f"{e}") from e
  if tuple(out.shape) != (2, model.num_classes):
    raise MiaInputError(f"model: {model.name!r} returns shape {tuple(out.shape[1:])} per "
                        f"example, expected logits of shape ({model.num_classes},)")
  return model


# -- Flax linen ----------------------------------------------------------------------------

def _eval_kwargs(module) -> dict[str, Any]:
  """The keyword that puts the module's ``__call__`` in eval mode, from its signature."""
  params = inspect.signature(type(module).__call__).parameters
  for name, value in _EVAL_FLAGS:
    if name in params:
      return {name: value}
  return {}


def _linen_call_paths(module, x_shape, kwargs) -> list[str]:
  """Paths of every submodule ``__call__`` in call order (from an abstract init)."""
  import flax.linen as nn
  seen: list[str] = []

  def record(next_fun, args, kw, context):
    if context.method_name == "__call__" and context.module.path:
      p = "/".join(context.module.path)
      if p not in seen:
        seen.append(p)
    return next_fun(*args, **kw)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda k: module.init(k, jnp.zeros(x_shape, jnp.float32), **kwargs),
                   jax.random.key(0))
  return seen


def from_linen(module, *, input_shape: Sequence[int], num_classes: int,
               taps: Sequence[str] | None = None, apply_kwargs: Mapping[str, Any] | None = None,
               name: str | None = None) -> TappedModel:
  """A Flax linen module as a model every attack reads (module docstring).

  Args:
    module: the user's ``flax.linen.Module`` (returns logits float[B, K]).
    input_shape: one example's shape, e.g. (28, 28, 1).
    num_classes: K.
    taps: submodule paths to tap, e.g. ``["Conv_1", "ResBlock_0", "backbone/Dense_2"]``;
      default: the module's top-level submodules in call order, except the last (whose
      output is usually the logits).
    apply_kwargs: keywords that put ``__call__`` in eval mode; default: from its signature
      (``train=False``, ``training=False``, ``deterministic=True``, ...).
    name: a label for messages (default: the module's class name).
  Returns:
    A :class:`TappedModel`; its variables are the module's (``{"params": ...,
    "batch_stats": ...}``), as ``module.init`` makes them and as the user saved them.
  """
  import flax.linen as nn
  if not isinstance(module, nn.Module):
    raise MiaInputError(f"module: expected a flax.linen.Module, got {type(module).__name__}"
                        + (" (an NNX model: use from_nnx)" if _is_nnx(module) else ""))
  shape, k = _check_shape_args(input_shape, num_classes, "from_linen")
  kwargs = dict(_eval_kwargs(module) if apply_kwargs is None else apply_kwargs)
  label = name or type(module).__name__
  try:
    paths = _linen_call_paths(module, (1,) + shape, kwargs)
  except Exception as e:  # noqa: BLE001 - the user's module may fail in any way
    raise MiaInputError(f"module: {label} cannot be initialized on inputs of shape "
                        f"[1, {', '.join(map(str, shape))}] (check input_shape): "
                        f"{type(e).__name__}: {e}") from e
  top = [p for p in paths if "/" not in p]
  if taps is None:
    taps = tuple(top[:-1])
  else:
    taps = tuple(str(t).strip("/") for t in ([taps] if isinstance(taps, str) else taps))
    unknown = [t for t in taps if t not in paths]
    if unknown:
      raise MiaInputError(f"taps: {unknown} are not submodules called by {label}; its "
                          f"submodules (in call order) are {paths}")
  if len(set(taps)) != len(taps) or set(taps) & {INPUT, LOGITS}:
    raise MiaInputError(f"taps: expected distinct submodule paths, got {list(taps)}")
  tapset = frozenset(taps)

  def forward(variables, x, hook):
    def intercept(next_fun, args, kw, context):
      out = next_fun(*args, **kw)
      if context.method_name == "__call__":
        p = "/".join(context.module.path)
        if p in tapset:
          out = hook(p, out)
      return out
    with nn.intercept_methods(intercept):
      return module.apply(variables, x, **kwargs)

  train_kwargs = {n: (not v) for n, v in kwargs.items() if isinstance(v, bool)}

  def train_forward(variables, x, hook, key):
    def intercept(next_fun, args, kw, context):
      out = next_fun(*args, **kw)
      if context.method_name == "__call__" and "/".join(context.module.path) in tapset:
        out = hook("/".join(context.module.path), out)
      return out
    mutable = [c for c in variables if c != "params"]
    with nn.intercept_methods(intercept):
      out = module.apply(variables, x, **{**kwargs, **train_kwargs}, rngs={"dropout": key},
                         mutable=mutable or False)
    return out if mutable else (out, {})

  def init_fn(key):
    v = module.init(key, jnp.zeros((1,) + shape, jnp.float32), **kwargs)
    return {c: t for c, t in v.items() if c in ("params", "batch_stats")} or dict(v)

  params = jax.eval_shape(init_fn, jax.random.key(0)).get("params", {})
  model = TappedModel(name=label, input_shape=shape, num_classes=k, taps=taps,
                      forward=forward, init_fn=init_fn,
                      spec={"adapter": "linen", "module": label, "taps": list(taps)},
                      train_forward=train_forward,
                      param_stages=tuple(p for p in top if p in params))
  return _check_output(model)


# -- Flax NNX ------------------------------------------------------------------------------

def _is_nnx(obj) -> bool:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover
    return False
  return isinstance(obj, nnx.Module)


class _Hooked:
  """Stands in for an NNX submodule: calls it, then the hook on its output."""

  def __init__(self, inner, name: str, hook: Hook):
    self.inner, self.name, self.hook = inner, name, hook

  def __call__(self, *args, **kwargs):
    return self.hook(self.name, self.inner(*args, **kwargs))


def _get_path(root, path: str):
  obj = root
  for part in path.split("/"):
    if part.isdigit() and not hasattr(obj, part):
      obj = obj[int(part)]
    else:
      obj = getattr(obj, part)
  return obj


def _set_path(root, path: str, value) -> None:
  *parents, last = path.split("/")
  parent = _get_path(root, "/".join(parents)) if parents else root
  if last.isdigit() and not hasattr(parent, last):
    parent[int(last)] = value
  else:
    object.__setattr__(parent, last, value)


def from_nnx(model, *, input_shape: Sequence[int], num_classes: int,
             taps: Sequence[str] | None = None, name: str | None = None) -> TappedModel:
  """A Flax NNX model as a model every attack reads (module docstring).

  The model is split with ``nnx.split`` into its parameters, its BatchNorm statistics
  and the rest; its variables are ``{"params": ..., "batch_stats": ...}`` as pure dicts
  (see :func:`nnx_variables`; the second only with BatchNorm), so M models are M such
  dicts stacked on a leading axis and train like linen models. Inference uses
  ``model.eval()``, training (proxies) ``model.train()``.

  Args:
    model: the user's ``flax.nnx.Module`` (returns logits float[B, K]).
    input_shape, num_classes: one example's shape; K.
    taps: attribute paths of submodules, e.g. ``["conv2", "blocks/0"]``; default: the
      top-level submodule attributes in call order, except the last.
    name: a label (default: the class name).
  """
  from flax import nnx
  if not _is_nnx(model):
    raise MiaInputError(f"model: expected a flax.nnx.Module, got {type(model).__name__}")
  shape, k = _check_shape_args(input_shape, num_classes, "from_nnx")
  label = name or type(model).__name__
  model.train()
  graph_train = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
  model.eval()
  graph_eval, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  variables0 = {"params": nnx.to_pure_dict(params)}
  if jax.tree.leaves(stats):
    variables0["batch_stats"] = nnx.to_pure_dict(stats)

  def merged(graphdef, variables):
    p = jax.tree.map(lambda a: a, params)
    nnx.replace_by_pure_dict(p, variables["params"])
    st = jax.tree.map(lambda a: a, stats)
    if "batch_stats" in variables:
      nnx.replace_by_pure_dict(st, variables["batch_stats"])
    return nnx.merge(graphdef, p, st, rest)

  def hooked(m, hook, paths):
    for path in paths:
      _set_path(m, path, _Hooked(_get_path(m, path), path, hook))
    return m

  top = [n for n, v in vars(model).items() if isinstance(v, nnx.Module)]
  if taps is None:
    order: list[str] = []

    def record(n, h):
      if n not in order:
        order.append(n)
      return h
    try:
      jax.eval_shape(lambda v: hooked(merged(graph_eval, v), record, top)(
          jnp.zeros((1,) + shape, jnp.float32)), variables0)
    except Exception as e:  # noqa: BLE001
      raise MiaInputError(f"model: {label} does not run on inputs of shape "
                          f"[1, {', '.join(map(str, shape))}] (check input_shape): "
                          f"{type(e).__name__}: {e}") from e
    taps = tuple(order[:-1])
    call_order = order
  else:
    taps = tuple(str(t).strip("/") for t in ([taps] if isinstance(taps, str) else taps))
    for t in taps:
      try:
        sub = _get_path(model, t)
      except (AttributeError, IndexError, KeyError, TypeError):
        sub = None
      if not isinstance(sub, nnx.Module):
        raise MiaInputError(f"taps: {t!r} is not a submodule attribute of {label}; its "
                            f"top-level submodules are {top}")
    call_order = top
  if len(set(taps)) != len(taps):
    raise MiaInputError(f"taps: expected distinct attribute paths, got {list(taps)}")

  def forward(variables, x, hook):
    return hooked(merged(graph_eval, variables), hook, taps)(x)

  def train_forward(variables, x, hook, key):  # dropout: the model's own nnx.Rngs stream
    del key
    m = hooked(merged(graph_train, variables), hook, taps)
    logits = m(x)
    new = {}
    if "batch_stats" in variables:
      new["batch_stats"] = nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))
    return logits, new

  tapped = TappedModel(name=label, input_shape=shape, num_classes=k, taps=taps,
                       forward=forward, init_fn=lambda key: variables0,
                       spec={"adapter": "nnx", "module": label, "taps": list(taps)},
                       train_forward=train_forward,
                       param_stages=tuple(n for n in call_order
                                          if n in variables0["params"]))
  return _check_output(tapped)


def nnx_variables(model) -> dict:
  """An NNX model's variables as :func:`from_nnx` models take them:
  ``{"params": pure dict, "batch_stats": pure dict}`` (the second only with BatchNorm)."""
  from flax import nnx
  _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  out = {"params": nnx.to_pure_dict(params)}
  if jax.tree.leaves(stats):
    out["batch_stats"] = nnx.to_pure_dict(stats)
  return out


# -- any apply function --------------------------------------------------------------------

def from_apply(apply_fn: Callable[[Any, jax.Array], jax.Array], *, input_shape: Sequence[int],
               num_classes: int, example_variables: Any = None,
               name: str = "apply_fn") -> TappedModel:
  """Any ``apply_fn(variables, x) -> logits`` as a model for the black-box attacks (it has
  no taps, so the white-box attacks refuse it).

  Args:
    apply_fn: pure function of (variables, x float[B, *input_shape]) -> float[B, K].
    input_shape, num_classes: one example's shape; K.
    example_variables: variables of the right structure (used for shapes and checks).
  """
  if not callable(apply_fn):
    raise MiaInputError(f"apply_fn: expected a callable (variables, x) -> logits, got "
                        f"{type(apply_fn).__name__}")
  shape, k = _check_shape_args(input_shape, num_classes, "from_apply")
  if example_variables is None:
    raise MiaInputError("example_variables: from_apply needs one model's variables (for "
                        "their structure and shapes)")
  model = TappedModel(name=name, input_shape=shape, num_classes=k, taps=(),
                      forward=lambda v, x, hook: apply_fn(v, x),
                      init_fn=lambda key: example_variables,
                      spec={"adapter": "apply", "name": name})
  return _check_output(model)


def is_model(obj) -> bool:
  return isinstance(obj, (LayeredModel, TappedModel, UpperModel))


def check_model(model, name: str = "model"):
  """``model`` if it is a model every attack reads; else a named error that says which
  adapter wraps what was given (a raw flax module fails deep inside Flax otherwise)."""
  if is_model(model):
    return model
  import flax.linen as nn
  if isinstance(model, nn.Module):
    hint = "wrap it: mia_jax.models.from_linen(module, input_shape=..., num_classes=...)"
  elif _is_nnx(model):
    hint = "wrap it: mia_jax.models.from_nnx(model, input_shape=..., num_classes=...)"
  elif callable(model):
    hint = ("wrap it: mia_jax.models.from_apply(fn, input_shape=..., num_classes=..., "
            "example_variables=...)")
  else:
    hint = "build one with mia_jax.models.make_model, from_linen, from_nnx or from_apply"
  raise MiaInputError(f"{name}: expected a mia-jax model, got {type(model).__name__}; {hint}")
