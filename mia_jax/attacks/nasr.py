"""The learned white-box attack of Nasr, Shokri & Houmansadr (IEEE S&P 2019).

"Comprehensive Privacy Analysis of Deep Learning": the attacker feeds, for each
example, what the white-box target reveals about it into a neural attack model:

* the **gradient** of the example's loss with respect to the parameters of chosen layers.
  A layer's kernel gradient is arranged as a matrix with one row per output unit
  (``[out, in]``; a convolution's ``[kh, kw, cin, cout]`` kernel gives ``[cout,
  kh*kw*cin]``), the bias gradient appended as a last column. The paper's gradient
  component is a convolution whose filter spans a whole row (kernel ``1 x in``); here it
  is the same thing written as one ``Dense(in -> filters)`` shared by every row,
  followed by fully connected layers;
* the **output** vector (the softmax probabilities), the **loss**, and the **label**
  (one-hot), each through a small fully connected component; optionally
  (``activations=True``) the **activations** (outputs) of the chosen stages, each through
  a fully connected component, as in the paper;
* an **encoder** (fully connected, 256-128-64-1) over the concatenated components gives
  the member logit.

Threat model here: the same as the Stolen Memories attack (the target's weights plus
auxiliary data disjoint from its training set), so the attack model is trained in the
**shadow setting**: the attacker trains a shadow target on half of its data with the
target's recipe (known members) and holds out the other half (known non-members),
trains the attack model on the shadow's features, and applies it to the target's. The
paper's supervised setting (a known subset of the target's own members) is the same
pipeline with the target as its own shadow: :func:`fit_attack_model` accepts any
features with known membership.

Features are computed in one compiled, vmapped pass of per-example gradients
(microbatched); only the chosen layers' parameters are differentiated. Gradients are
divided by one scale per layer (their root mean square on the attacker's training
features) and the loss is standardized, both stored with the attack model. A fifth of
the attacker-side examples is held out: the epoch with the best held-out loss is kept
and the decision threshold for a requested precision is chosen on the held-out part.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mia_jax._batching import run_microbatched
from mia_jax._validation import MiaInputError, check_in_range, check_positive_int
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.models.adapters import check_model
from mia_jax.streams import check_scheme, stage_seed
from mia_jax.train import ShuffledBatches, TrainConfig, jax_key, train_objective

FEATURE_KEYS = ("probs", "loss", "label")


@dataclasses.dataclass(frozen=True)
class NasrConfig:
  """Hyperparameters of the attack model and its training.

  Attributes:
    layers: stages whose parameter gradients are features (default: the last stage, the
      logits layer, which the paper finds the most informative; more layers make the
      features much larger).
    filters: width of the row-wise gradient filter (the paper's number of conv filters).
    gradient_hidden: fully connected widths after the gradient filter.
    component_hidden: widths of the output, loss and label components.
    encoder_hidden: widths of the encoder before the member logit.
    dropout: dropout rate on the gradient component's input and after its filter.
    epochs, batch_size, learning_rate: Adam training of the attack model.
    validation_fraction: attacker-side examples held out for early stopping and for the
      threshold calibration.
    microbatch_size: examples per compiled chunk of the per-example gradient pass.
    max_feature_bytes: the features are held in host memory; a larger request is an
      error before any compute (choose fewer or smaller layers).
    activations: also feed the chosen stages' outputs (the paper's activation component).
  """
  layers: tuple[str, ...] | None = None
  filters: int = 64
  gradient_hidden: tuple[int, ...] = (256, 64)
  component_hidden: tuple[int, ...] = (128, 64)
  encoder_hidden: tuple[int, ...] = (256, 128, 64)
  dropout: float = 0.2
  epochs: int = 40
  batch_size: int = 64
  learning_rate: float = 1e-3
  validation_fraction: float = 0.2
  microbatch_size: int = 128
  max_feature_bytes: int = 4 << 30
  activations: bool = False

  def __post_init__(self):
    if self.layers is not None:
      object.__setattr__(self, "layers", tuple(self.layers))
      if not self.layers:
        raise MiaInputError("layers: expected at least one layer (or None for the last)")
    for name in ("filters", "epochs", "batch_size", "microbatch_size", "max_feature_bytes"):
      check_positive_int(getattr(self, name), name)
    for name in ("gradient_hidden", "component_hidden", "encoder_hidden"):
      widths = tuple(getattr(self, name))
      object.__setattr__(self, name, widths)
      for w in widths:
        check_positive_int(w, name)
    check_in_range(self.dropout, "dropout", 0.0, 1.0, high_open=True)
    check_in_range(self.learning_rate, "learning_rate", 0.0, np.inf, low_open=True,
                   high_open=True)
    check_in_range(self.validation_fraction, "validation_fraction", 0.0, 0.5, low_open=True)


# -- features: per-example gradients of the chosen layers ------------------------------------

def _kernel_and_bias(tree: Any, stage: str) -> tuple[tuple, tuple | None]:
  """Paths of the one kernel (and its bias) in a stage's parameter tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  kernels = [p for p, _ in leaves if getattr(p[-1], "key", None) == "kernel"]
  if len(kernels) != 1:
    raise MiaInputError(
        f"layers: stage {stage!r} has {len(kernels)} weight kernels; the Nasr et al. attack "
        f"takes the gradient of stages with exactly one (a Dense or Conv layer)")
  kpath = kernels[0]
  bias = [p for p, _ in leaves if p[:-1] == kpath[:-1] and getattr(p[-1], "key", None) == "bias"]
  return kpath, (bias[0] if bias else None)


def _get(tree, path):
  for p in path:
    tree = tree[p.key]
  return tree


def check_layers(model: LayeredModel, layers: Sequence[str] | None) -> tuple[str, ...]:
  """The stages to take gradients of (default: the last); errors name bad ones."""
  # A built-in model's stages; an adapted model's top-level parameter groups (submodules)
  check_model(model)
  stages = getattr(model, "param_stages", None) or model.stage_names
  if layers is None:
    return (stages[-1],)
  layers = tuple(layers)
  bad = [l for l in layers if l not in stages]
  if bad:
    raise MiaInputError(f"layers: model {model.name!r} has no parameter stage(s) {bad}; its "
                        f"stages are {list(stages)}")
  if len(set(layers)) != len(layers):
    raise MiaInputError(f"layers: duplicate stage names in {list(layers)}")
  params = model._abstract_variables()["params"]
  for l in layers:
    if l not in params:
      raise MiaInputError(f"layers: stage {l!r} has no parameters")
    _kernel_and_bias(params[l], l)
  return layers


def gradient_matrix(stage_grads: Any, stage: str) -> jax.Array:
  """One example's gradient of a stage as ``[out, in + 1]`` (kernel rows, bias column)."""
  kpath, bpath = _kernel_and_bias(stage_grads, stage)
  k = _get(stage_grads, kpath)
  mat = k.reshape(-1, k.shape[-1]).T
  bias = _get(stage_grads, bpath) if bpath is not None else jnp.zeros(k.shape[-1], k.dtype)
  return jnp.concatenate([mat, bias[:, None]], axis=1)


def feature_shapes(model: LayeredModel, layers: Sequence[str], *,
                   activations: bool = False) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of every feature array (without the example axis)."""
  params = model._abstract_variables()["params"]
  shapes = {"probs": (model.num_classes,), "loss": (), "label": (model.num_classes,)}
  layer_shapes = model.layer_shapes() if activations else {}
  for l in layers:
    kpath, _ = _kernel_and_bias(params[l], l)
    k = _get(params[l], kpath).shape
    shapes[f"grad:{l}"] = (k[-1], int(np.prod(k[:-1])) + 1)
    if activations:
      shapes[f"act:{l}"] = (int(np.prod(layer_shapes[l])),)
  return shapes


@functools.lru_cache(maxsize=32)
def _compiled_features(model: LayeredModel, layers: tuple[str, ...], activations: bool = False):
  return jax.jit(jax.vmap(_per_example_features(model, layers, activations),
                          in_axes=(None, 0, 0)))


def _per_example_features(model: LayeredModel, layers: tuple[str, ...], activations: bool):
  """``(variables, x1, y1) -> {feature: array}`` of one example (the attack's inputs)."""
  from mia_jax.signals import loss as loss_of_logits

  def per_example(variables, x1, y1):
    params = variables["params"]

    def loss(selected):
      full = {**variables, "params": {**params, **selected}}
      logits = model.apply(full, x1[None])[0]
      return loss_of_logits(logits[None], y1[None])[0], logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(
        {l: params[l] for l in layers})
    out = {"probs": jax.nn.softmax(logits), "loss": value,
           "label": jax.nn.one_hot(y1, model.num_classes)}
    for l in layers:
      out[f"grad:{l}"] = gradient_matrix(grads[l], l)
    if activations:
      feats = model.features(variables, x1[None])
      for l in layers:
        out[f"act:{l}"] = feats[l][0].reshape(-1)
    return out

  return per_example


def attack_features(model: LayeredModel, variables: Variables, x, y, *,
                    layers: Sequence[str] | None = None, microbatch_size: int = 128,
                    max_feature_bytes: int | None = None,
                    activations: bool = False) -> dict[str, np.ndarray]:
  """The attack model's inputs for every example, as host arrays.

  Returns:
    {"probs": float[N, K], "loss": float[N], "label": float[N, K],
     "grad:<stage>": float[N, out, in + 1] for each chosen stage, and with
     ``activations`` "act:<stage>": float[N, D] (the stage's flattened output)}.
  """
  layers = check_layers(model, layers)
  x, y = check_model(model).check_inputs(x, y)
  shapes = feature_shapes(model, layers, activations=activations)
  nbytes = 4 * x.shape[0] * sum(int(np.prod(s)) for s in shapes.values())
  if max_feature_bytes is not None and nbytes > max_feature_bytes:
    raise MiaInputError(
        f"layers: the gradient features of {list(layers)} for {x.shape[0]} examples take "
        f"{nbytes / 2**30:.2f} GiB (> max_feature_bytes = {max_feature_bytes / 2**30:.2f} "
        f"GiB); choose fewer or smaller layers")
  fn = _compiled_features(model, layers, bool(activations))
  out = run_microbatched(lambda xb, yb: fn(variables, xb, yb), [x, y], microbatch_size)
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


# -- the attack model ----------------------------------------------------------------------

class _FC(nn.Module):
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, h):
    for w in self.widths:
      h = nn.relu(nn.Dense(w)(h))
    return h


class AttackModel(nn.Module):
  """Nasr et al.'s attack network: gradient, output, loss and label components, encoder."""
  grad_keys: tuple[str, ...]
  act_keys: tuple[str, ...]
  filters: int
  gradient_hidden: tuple[int, ...]
  component_hidden: tuple[int, ...]
  encoder_hidden: tuple[int, ...]
  dropout: float

  @nn.compact
  def __call__(self, feats: dict[str, jax.Array], train: bool = False) -> jax.Array:
    parts = [_FC(self.component_hidden, name="output")(feats["probs"]),
             _FC(self.component_hidden, name="loss")(feats["loss"][:, None]),
             _FC(self.component_hidden, name="label")(feats["label"])]
    for i, key in enumerate(self.grad_keys):
      g = nn.Dropout(self.dropout, deterministic=not train)(feats[key])
      # A filter spanning a whole row (the paper's 1 x in convolution), shared by rows.
      g = nn.relu(nn.Dense(self.filters, name=f"grad_filter_{i}")(g))
      g = g.reshape((g.shape[0], -1))
      g = nn.Dropout(self.dropout, deterministic=not train)(g)
      parts.append(_FC(self.gradient_hidden, name=f"grad_{i}")(g))
    for i, key in enumerate(self.act_keys):
      parts.append(_FC(self.component_hidden, name=f"act_{i}")(feats[key]))
    h = _FC(self.encoder_hidden, name="encoder")(jnp.concatenate(parts, axis=1))
    return nn.Dense(1, name="member")(h)[:, 0]


class NasrState(NamedTuple):
  """A trained attack model.

  Attributes:
    module: the flax module.
    params: its parameters.
    scales: per-feature normalization ({"grad:<stage>": rms, "loss": (mean, std)}).
    layers: the stages whose gradients it reads.
    history: per-epoch {"train_loss", "val_loss"}; ``best_epoch`` is the one kept.
    best_epoch: 0-based epoch whose parameters were kept.
  """
  module: AttackModel
  params: Any
  scales: dict
  layers: tuple[str, ...]
  history: dict
  best_epoch: int


def _normalize(feats: dict[str, np.ndarray], scales: dict) -> dict[str, np.ndarray]:
  out = dict(feats)
  mean, std = scales["loss"]
  out["loss"] = (feats["loss"] - mean) / std
  for k, s in scales.items():
    if k.startswith(("grad:", "act:")):
      out[k] = feats[k] / s
  return out


def _fit_scales(feats: dict[str, np.ndarray], idx: np.ndarray) -> dict:
  """Normalization statistics of the rows ``idx`` (one array copied at a time)."""
  loss = feats["loss"][idx]
  scales = {"loss": (float(loss.mean()), float(loss.std() or 1.0))}
  for k, v in feats.items():
    if k.startswith(("grad:", "act:")):
      rms = float(np.sqrt(np.mean(np.square(v[idx], dtype=np.float64))))
      scales[k] = rms if rms > 0 else 1.0
  return scales


def _take(feats, idx):
  return {k: v[idx] for k, v in feats.items()}


def _check_features(feats: dict[str, np.ndarray]
                    ) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
  missing = [k for k in FEATURE_KEYS if k not in feats]
  grad_keys = tuple(sorted(k for k in feats if k.startswith("grad:")))
  act_keys = tuple(sorted(k for k in feats if k.startswith("act:")))
  unknown = sorted(set(feats) - set(FEATURE_KEYS) - set(grad_keys) - set(act_keys))
  if unknown:
    raise MiaInputError(f"features: unknown array(s) {unknown}")
  if missing or not grad_keys:
    raise MiaInputError(f"features: expected {list(FEATURE_KEYS)} and at least one 'grad:' "
                        f"array (from attack_features), got {sorted(feats)}")
  sizes = {k: np.shape(v)[0] for k, v in feats.items()}
  if len(set(sizes.values())) != 1:
    raise MiaInputError(f"features: arrays have different numbers of examples: {sizes}")
  for k, v in feats.items():
    if not np.all(np.isfinite(v)):
      raise MiaInputError(f"features: {k!r} has non-finite values")
  return next(iter(sizes.values())), grad_keys, act_keys


def fit_attack_model(features: dict[str, np.ndarray], is_member, *,
                     config: NasrConfig = NasrConfig(), seed: int = 0, progress=None,
                     log: Callable[[str], None] | None = None
                     ) -> tuple[NasrState, np.ndarray]:
  """Trains the attack network on features with known membership.

  Args:
    features: from :func:`attack_features` (the same layers as will be attacked).
    is_member: bool[N]; both values must occur.
    config: architecture and training hyperparameters.
    seed: initialization, dropout, shuffling and the validation split.
  Returns:
    (state, validation indices): the attack model with the best held-out epoch's
    parameters, and the indices (into ``features``) held out from training.
  """
  from mia_jax._validation import check_membership
  n, grad_keys, act_keys = _check_features(features)
  labels = check_membership(is_member, n=n, name="is_member")
  rng = np.random.default_rng((seed, 1103))
  val = []
  for cls in (True, False):  # stratified hold-out, at least one of each class
    idx = rng.permutation(np.flatnonzero(labels == cls))
    if idx.size < 2:
      raise MiaInputError("is_member: need at least 2 members and 2 non-members")
    val.append(idx[:max(1, int(round(config.validation_fraction * idx.size)))])
  val = np.sort(np.concatenate(val))
  train = np.setdiff1d(np.arange(n), val)
  scales = _fit_scales(features, train)
  # On the device once (bounded by max_feature_bytes), normalized there; every step gathers
  # its batch by index inside the compiled step, so nothing is copied per step.
  feats = _normalize({k: jnp.asarray(v) for k, v in features.items()}, scales)
  y = jnp.asarray(labels, jnp.float32)
  # Members and non-members weigh half each in the training loss (balanced).
  n_pos = float(labels[train].sum())
  weight = np.where(labels, 0.5 / max(n_pos, 1.0), 0.5 / max(train.size - n_pos, 1.0))
  weight = jnp.asarray((weight * train.size).astype(np.float32))

  module = AttackModel(grad_keys=grad_keys, act_keys=act_keys, filters=config.filters,
                       gradient_hidden=config.gradient_hidden,
                       component_hidden=config.component_hidden,
                       encoder_hidden=config.encoder_hidden, dropout=config.dropout)
  # The library's single trainer (as for target and shadow models): initialization from
  # fold 0 of the seed's key, Adam minibatches of the training part in a fresh shuffle
  # each epoch (drawn by `rng`, the last incomplete batch dropped), dropout keys per step.
  params = module.init(jax.random.fold_in(jax_key(seed), 0),
                       _take(feats, np.arange(1)))["params"]
  bs = min(config.batch_size, train.size)
  keep = np.zeros((1, n), bool)
  keep[0, train] = True
  recipe = TrainConfig(optimizer="adam", learning_rate=config.learning_rate,
                       epochs=config.epochs, batch_size=bs)
  eval_loss = _compiled_eval_loss(module)
  val_idx = jnp.asarray(val)
  best = [np.inf, params, -1]
  val_losses = []

  def keep_best(epoch, variables):  # the epoch with the best held-out loss is kept
    vl = float(eval_loss(variables["params"], feats, y, val_idx))
    val_losses.append(vl)
    if vl < best[0]:
      best[:] = [vl, variables["params"], epoch]

  result = train_objective(
      NetworkObjective(module), (feats, y, weight),
      ShuffledBatches(keep, bs, [rng], stacked=False, drop_last=True), config=recipe,
      seeds=[seed], stacked=False, init_variables={"params": params}, progress=progress,
      description="nasr attack model", on_epoch=keep_best)
  history = {"train_loss": [float(v) for v in result.losses], "val_loss": val_losses}
  if log is not None:
    log(f"nasr: kept epoch {best[2] + 1}/{config.epochs} (held-out loss {best[0]:.4f})")
  return NasrState(module, best[1], scales, tuple(k[5:] for k in grad_keys), history,
                   best[2]), val


class NetworkObjective(NamedTuple):
  """What the trainer minimizes for the attack network: the member-weighted binary
  cross-entropy of its logit, averaged over a batch's examples, with dropout (train mode).
  A batch is ``(features dict, is_member float[B], weight float[B])``."""
  module: AttackModel

  def loss(self, params, other, batch, weight, key):
    feats, y, w = batch
    logits = self.module.apply({"params": params}, feats, train=True, rngs={"dropout": key})
    per_ex = w * optax.sigmoid_binary_cross_entropy(logits, y)
    return jnp.sum(per_ex * weight) / jnp.maximum(jnp.sum(weight), 1.0), other

  def describe(self) -> str:
    return repr(self.module)


@functools.lru_cache(maxsize=32)
def _compiled_eval_loss(module: AttackModel):
  """Balanced mean BCE on the rows ``idx`` (jitted; cached per module)."""

  @jax.jit
  def eval_loss(params, feats, y, idx):
    y = y[idx]
    logits = module.apply({"params": params}, _take(feats, idx))
    bce = optax.sigmoid_binary_cross_entropy(logits, y)
    pos = jnp.sum(y)
    return 0.5 * (jnp.sum(y * bce) / jnp.maximum(pos, 1.0)
                  + jnp.sum((1 - y) * bce) / jnp.maximum(y.size - pos, 1.0))

  return eval_loss


@functools.lru_cache(maxsize=32)
def _compiled_predict(module: AttackModel):
  return jax.jit(lambda params, scales, feats: module.apply({"params": params},
                                                            _normalize(feats, scales)))


def predict(state: NasrState, features: dict[str, np.ndarray], *,
            microbatch_size: int = 1024) -> np.ndarray:
  """Member logits float[N] of the attack model (higher = more likely member)."""
  _, grad_keys, act_keys = _check_features(features)
  want = tuple(f"grad:{l}" for l in state.layers)
  if grad_keys != want:
    raise MiaInputError(f"features: the attack model reads gradients of {list(state.layers)}, "
                        f"got {[k[5:] for k in grad_keys]}")
  if act_keys != state.module.act_keys:
    raise MiaInputError(f"features: the attack model reads activations "
                        f"{[k[4:] for k in state.module.act_keys]}, got "
                        f"{[k[4:] for k in act_keys]}")
  keys = sorted(features)
  fn = _compiled_predict(state.module)
  out = run_microbatched(lambda *arrs: fn(state.params, state.scales, dict(zip(keys, arrs))),
                         [features[k] for k in keys], microbatch_size)
  return np.asarray(out, np.float64)


@functools.lru_cache(maxsize=16)
def _compiled_checkpoint_scores(model: LayeredModel, layers: tuple[str, ...], activations: bool,
                                module: "AttackModel"):
  per_example = _per_example_features(model, layers, activations)

  def one(params, scales, variables, xb, yb):  # one checkpoint, one chunk of examples
    feats = jax.vmap(per_example, in_axes=(None, 0, 0))(variables, xb, yb)
    return module.apply({"params": params}, _normalize(feats, scales))

  return jax.jit(jax.vmap(one, in_axes=(None, None, 0, None, None)))


def score_checkpoints(model: LayeredModel, state: "AttackerState", stacked_variables: Variables,
                      x, y, *, microbatch_size: int = 128) -> np.ndarray:
  """The attack network's member logits float[C, N] for C stacked checkpoints: gradient
  features and scores of every checkpoint in one compiled, vmapped pass per chunk of
  examples (the features never leave the device: memory ~ C x microbatch_size features)."""
  x, y = check_model(model).check_inputs(x, y)
  net = state.network
  fn = _compiled_checkpoint_scores(model, state.layers, bool(state.config.activations),
                                   net.module)
  out = run_microbatched(lambda xb, yb: fn(net.params, net.scales, stacked_variables, xb, yb),
                         [x, y], microbatch_size, out_axis=1)
  return np.asarray(out, np.float64)


# -- the whole attack against one target -----------------------------------------------------

class NasrResult(NamedTuple):
  """Scores of the target's evaluation examples and the calibrated operating point.

  Attributes:
    scores: float[N] member logits of the evaluation examples.
    threshold: chosen on the attacker's held-out shadow examples for ``target_precision``.
    calibration: how the threshold was chosen, and the attack model's training record.
    attacker_scores: {"scores", "is_member"} on the held-out attacker-side examples.
  """
  scores: np.ndarray
  threshold: float
  calibration: dict
  attacker_scores: dict


def run_attack(model: LayeredModel, target_variables: Variables, aux_x, aux_y, eval_x, eval_y,
               *, target_train_size: int, config: NasrConfig = NasrConfig(),
               train_config=None, target_precision: float = 0.9, seed: int = 0,
               progress=None, work_dir: str | None = None,
               train_shadow: Callable | None = None,
               log: Callable[[str], None] | None = None,
               seed_streams: str = "named") -> NasrResult:
  """Shadow-setting Nasr et al. attack against one target.

  The attacker's data is partitioned as for the Stolen Memories shadow setting
  (:func:`mia_jax.attacks.stolen_memories.partition_attacker_data`, same seed stream), and
  the shadow target is trained with the same seed stream, so an audit running both attacks can train
  it once (pass the same memoizing ``train_shadow`` to both).

  Args:
    model, target_variables: the target.
    aux_x, aux_y: the attacker's auxiliary data (disjoint from the target's training set).
    eval_x, eval_y: the examples to decide membership of.
    target_train_size: size of the target's training set (the shadow's matches it, as far
      as the auxiliary data allows).
    config: the attack model's hyperparameters.
    train_config: the target's recipe (:class:`mia_jax.train.TrainConfig`) for the shadow.
    target_precision: precision the threshold aims for on held-out shadow examples.
    seed: fixes the partition, shadow training and the attack model.
    train_shadow: optional ``(x, y, indices, seed) -> variables`` that trains the shadow.
    seed_streams: how those stages' seeds derive from ``seed`` (named streams, or the
      "offsets" of runs made before them; :mod:`mia_jax.streams`).
  """
  eval_x, eval_y = check_model(model).check_inputs(eval_x, eval_y)
  state = fit_attacker(model, aux_x, aux_y, target_train_size=target_train_size, config=config,
                       train_config=train_config, target_precision=target_precision, seed=seed,
                       progress=progress, work_dir=work_dir, train_shadow=train_shadow, log=log,
                       num_eval=eval_x.shape[0], seed_streams=seed_streams)
  return NasrResult(score_target(model, state, target_variables, eval_x, eval_y),
                    state.threshold, state.calibration, state.attacker_scores)


class AttackerState(NamedTuple):
  """Everything :func:`run_attack` fits before it looks at the target: the attack network
  (trained on a shadow target's gradients) and its calibrated threshold."""
  network: NasrState
  threshold: float
  calibration: dict
  attacker_scores: dict
  layers: tuple[str, ...]
  config: NasrConfig


def fit_attacker(model: LayeredModel, aux_x, aux_y, *, target_train_size: int,
                 config: NasrConfig = NasrConfig(), train_config=None,
                 target_precision: float = 0.9, seed: int = 0, progress=None,
                 work_dir: str | None = None, train_shadow: Callable | None = None,
                 log: Callable[[str], None] | None = None, num_eval: int = 0,
                 seed_streams: str = "named") -> AttackerState:
  """The attacker's side of :func:`run_attack` (which does not depend on the target: the
  attack network learns from a shadow target, so one fit scores every checkpoint).
  ``num_eval`` counts the examples to be scored later in the feature-memory check."""
  from mia_jax.attacks.stolen_memories import partition_attacker_data
  from mia_jax.metrics import calibrate_threshold
  from mia_jax.train import train_model
  import os

  layers = check_layers(model, config.layers)
  check_in_range(target_precision, "target_precision", 0.0, 1.0)
  aux_x, aux_y = check_model(model).check_inputs(aux_x, aux_y)
  parts = partition_attacker_data(aux_x.shape[0], target_train_size=target_train_size,
                                  setting="shadow",
                                  seed=stage_seed(seed, "whitebox-partition", seed_streams))
  shapes = feature_shapes(model, layers, activations=config.activations)
  n_feat = parts.shadow_in.size + parts.shadow_out.size + num_eval
  nbytes = 4 * n_feat * sum(int(np.prod(s)) for s in shapes.values())
  if nbytes > config.max_feature_bytes:
    raise MiaInputError(
        f"layers: the gradient features of {list(layers)} for {n_feat} examples take "
        f"{nbytes / 2**30:.2f} GiB (> max_feature_bytes = {config.max_feature_bytes / 2**30:.2f}"
        f" GiB); choose fewer or smaller layers")
  shadow_seed = stage_seed(seed, "whitebox-shadow", seed_streams)
  if train_shadow is not None:
    shadow = train_shadow(aux_x, aux_y, parts.shadow_in, shadow_seed)
  else:
    ckpt = None if work_dir is None else os.path.join(work_dir, "shadow")
    shadow = train_model(model, aux_x, aux_y, config=train_config or TrainConfig(),
                         seed=shadow_seed, indices=parts.shadow_in, progress=progress,
                         description="shadow target", checkpoint_dir=ckpt).variables
  idx = np.concatenate([parts.shadow_in, parts.shadow_out])
  is_member = np.r_[np.ones(parts.shadow_in.size, bool), np.zeros(parts.shadow_out.size, bool)]
  feats = attack_features(model, shadow, aux_x[idx], aux_y[idx], layers=layers,
                          microbatch_size=config.microbatch_size,
                          activations=config.activations)
  state, val = fit_attack_model(feats, is_member, config=config,
                                seed=stage_seed(seed, "nasr-network", seed_streams),
                                progress=progress, log=log)
  val_scores = predict(state, _take(feats, val))
  threshold = calibrate_threshold(val_scores, is_member[val], target_precision=target_precision)
  calibration = {"setting": "shadow", "target_precision": float(target_precision),
                 "layers": list(layers), "activations": bool(config.activations),
                 "attacker_examples": int(idx.size), "shadow_size": int(parts.shadow_in.size),
                 "calibration_examples": int(val.size), "best_epoch": state.best_epoch + 1,
                 "epochs": config.epochs, "val_loss": state.history["val_loss"]}
  return AttackerState(state, float(threshold), calibration,
                       {"scores": val_scores, "is_member": is_member[val]}, layers, config)


def score_target(model: LayeredModel, state: AttackerState, target_variables: Variables,
                 eval_x, eval_y) -> np.ndarray:
  """The attack network's member logits float[N] for the target's examples."""
  feats = attack_features(model, target_variables, eval_x, eval_y, layers=state.layers,
                          microbatch_size=state.config.microbatch_size,
                          activations=state.config.activations)
  return predict(state.network, feats)


# -- the registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score -----------

from mia_jax.attacks.base import Attack, option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class NasrAttackConfig:
  """:func:`run_attack`'s settings (``attack``: the network's hyperparameters)."""
  attack: NasrConfig = NasrConfig()
  target_precision: float = 0.9
  seed: int = 0
  seed_streams: str = "named"


def fit_attack(config: NasrAttackConfig, side) -> AttackerState:
  wb = side["whitebox"]
  return fit_attacker(wb["model"], wb["aux_x"], wb["aux_y"],
                      target_train_size=wb["target_train_size"], config=config.attack,
                      train_config=wb["train_config"], target_precision=config.target_precision,
                      seed=config.seed, progress=wb.get("progress"),
                      train_shadow=wb.get("train_shadow"), log=wb.get("log"),
                      num_eval=wb.get("num_eval", 0), seed_streams=config.seed_streams)


def _score(state: AttackerState, signals):
  model, variables, x, y = signals["model"]
  return score_target(model, state, variables, x, y)


def _configure(o) -> NasrAttackConfig:
  layers = option(o, "gradient_layers", None)
  return NasrAttackConfig(
      attack=NasrConfig(layers=None if layers is None else tuple(layers),
                        microbatch_size=min(int(option(o, "microbatch_size", 128)), 128)),
      target_precision=float(option(o, "target_precision", 0.9)),
      seed=int(option(o, "seed", 0)),
      seed_streams=check_scheme(option(o, "seed_streams", "named")))


ATTACK = Attack(
    name="nasr", family="whitebox",
    summary="attack network on per-example gradients, losses and outputs, calibrated",
    paper="Nasr, Shokri & Houmansadr, S&P 2019", needs=("model",), attacker=("whitebox",),
    configure=_configure, fit=fit_attack, score=_score,
    score_stack=lambda state, signals: score_checkpoints(
        *signals["models"][:1], state, *signals["models"][1:],
        microbatch_size=state.config.microbatch_size),
    details=lambda config, state, signals: (
        {}, {"threshold": state.threshold, "calibration": state.calibration}),
    traceable=False)
ATTACKS = (ATTACK,)
