"""The library's one trainer (optax): one model, or M models at once with params stacked
on axis 0, for any objective.

:func:`train_model` / :func:`train_models` fit classifier models (target, reference and
shadow models, proxies); :mod:`mia_jax.dp` runs DP-SGD's clipped, noised step in the same
epoch loop (:func:`run_epochs`); the attack classifiers (Shokri et al.'s per-class models,
the meta-attack, Nasr et al.'s network) are :func:`train_objective` with their own
objectives (:class:`ModelObjective` shows what an objective provides).

Both paths share one per-model step function; the stacked path ``vmap``s it over the model
axis (an epoch is a ``lax.scan`` of steps on accelerators, a host loop on the CPU; with
:class:`FullBatch` every epoch is one step on all examples and all epochs are one compiled
``lax.fori_loop``). Each model sees only its own examples (a row of ``keep``) in its own
shuffled order, drawn on the host with ``np.random.default_rng(seed)``. Batches are index
arrays into the training data (a pytree of arrays), which stays on the device; a batch of
a model that has fewer examples than the largest model is padded with zero-weight
examples, and a step with no real example leaves that model's state unchanged, so
training M models stacked equals training each alone.

Seeds: model ``m`` of a stack trained with ``seed=s`` uses seed ``(s, m)``;
``train_model(..., seed=(s, m))`` reproduces it alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mia_jax._batching import on_cpu
from mia_jax._io import hash_tree
from mia_jax._validation import (MiaInputError, as_array, check_in_range, check_indices,
                                 check_positive_int, check_seed)
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.sharding import (check_mesh, gather, replicate, replicated_sharding,
                              shard_stacked, stacked_sharding)
from mia_jax.models.adapters import check_model

Seed = int | Sequence[int]
OPTIMIZERS = ("sgd", "momentum", "adam")
KEEP_EPOCH_CHECKPOINTS = 2
"""Epoch checkpoints kept while training: the newest, and the one before it to fall back
to if the newest is found corrupt."""


class CorruptCheckpointError(MiaInputError):
  """A saved checkpoint cannot be read back, or its content differs from what was saved."""


class TrainingDivergedError(MiaInputError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training recipe (no early stopping: MI research studies overfit models).

  Attributes:
    optimizer: "sgd", "momentum" or "adam".
    learning_rate: step size.
    momentum: momentum for "momentum" (and beta1 for "adam" is optax's default).
    weight_decay: L2 penalty coefficient lambda of lambda * ||params||^2 / 2 (the L2
      regularization defense of Shokri et al.), applied as its gradient lambda * params by
      ``optax.add_decayed_weights`` before the optimizer (reported losses include it).
    epochs: passes over each model's training examples.
    batch_size: examples per step.
  """
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  epochs: int = 20
  batch_size: int = 128

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise MiaInputError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
    check_in_range(self.learning_rate, "learning_rate", 0, np.inf, low_open=True)
    check_in_range(self.momentum, "momentum", 0, 1, high_open=True)
    check_in_range(self.weight_decay, "weight_decay", 0, np.inf)
    check_positive_int(self.epochs, "epochs")
    check_positive_int(self.batch_size, "batch_size")

  def optimizer_fn(self) -> optax.GradientTransformation:
    """The optax transformation: weight decay (``optax.add_decayed_weights``: the gradient
    of the L2 penalty, ``weight_decay * params``, added to the gradient) then the optimizer.
    Every trainer (plain and DP-SGD) gets its weight decay here, and only here."""
    if self.optimizer == "sgd":
      opt = optax.sgd(self.learning_rate)
    elif self.optimizer == "momentum":
      opt = optax.sgd(self.learning_rate, momentum=self.momentum)
    else:
      opt = optax.adam(self.learning_rate)
    if self.weight_decay > 0:
      return optax.chain(optax.add_decayed_weights(self.weight_decay), opt)
    return opt


def jax_key(seed: Seed) -> jax.Array:
  """Typed PRNG key from an int or a tuple of ints (folded in order), each in [0, 2**32).

  Raises:
    MiaInputError: ``seed`` is not such an int or a non-empty tuple of them.
  """
  seed = check_seed(seed)
  parts = (seed,) if isinstance(seed, int) else seed
  key = jax.random.key(int(parts[0]))
  for p in parts[1:]:
    key = jax.random.fold_in(key, int(p))
  return key


def np_seed(seed: Seed):
  seed = check_seed(seed)
  return int(seed) if isinstance(seed, (int, np.integer)) else tuple(int(s) for s in seed)


class _Schedule(NamedTuple):
  idx: np.ndarray     # int32[T, B] indices into the training set
  weight: np.ndarray  # float32[T, B] 1 for real examples, 0 for padding


def epoch_schedule(rng: np.random.Generator, indices: np.ndarray, batch_size: int,
                    num_steps: int) -> _Schedule:
  """One shuffled epoch over ``indices`` cut into ``num_steps`` padded batches (examples of
  the shuffle past ``num_steps * batch_size`` sit this epoch out: a dropped last batch)."""
  total = num_steps * batch_size
  perm = rng.permutation(indices)[:total]
  idx = np.zeros(total, np.int32)
  w = np.zeros(total, np.float32)
  idx[:perm.size] = perm
  w[:perm.size] = 1.0
  return _Schedule(idx.reshape(num_steps, batch_size), w.reshape(num_steps, batch_size))


def _steps(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


# -- batches: what each model sees in an epoch, drawn on the host -----------------------------

class ShuffledBatches:
  """Minibatches: model m's examples (``keep[m]``) in its own shuffled order every epoch,
  drawn from its own generator ``rngs[m]``, cut into batches of ``batch_size``. Every model
  takes as many steps as the one with the most examples; the others' batches are padded
  with zero-weight examples, and a step with none leaves a model unchanged (so M models
  stacked train as each would alone). ``drop_last``: each epoch's last incomplete batch is
  left out (its examples come back in later shuffles).

  ``epoch(e)`` -> ``(idx int32[M, T, B], weight float32[M, T, B])`` (without the M axis
  unless ``stacked``). Epochs are drawn in order; a resumed run draws the ones it skips
  again, so the generators are where an uninterrupted run would have them.
  """

  def __init__(self, keep: np.ndarray, batch_size: int, rngs: Sequence[np.random.Generator],
               *, stacked: bool = True, drop_last: bool = False):
    self.keep = keep
    self.members = [np.flatnonzero(k) for k in keep]
    self.batch_size, self.rngs, self.stacked = int(batch_size), list(rngs), stacked
    count = (lambda n: max(1, n // self.batch_size)) if drop_last else (
        lambda n: _steps(n, self.batch_size))
    self.num_steps = max(count(len(idx)) for idx in self.members)

  def epoch(self, e: int):
    sched = [epoch_schedule(r, idx, self.batch_size, self.num_steps)
             for r, idx in zip(self.rngs, self.members)]
    if not self.stacked:
      return sched[0].idx, sched[0].weight
    return np.stack([s.idx for s in sched]), np.stack([s.weight for s in sched])

  def fingerprint(self):
    from mia_jax._io import hash_arrays
    return hash_arrays(self.keep)


class FullBatch:
  """Full-batch training: every epoch is one step on the same batch, ``idx`` int[M, B]
  (or [B]) with ``weight`` float[M, B] (1 real, 0 padding), in the given order (no
  shuffling). :func:`train_objective` runs all its epochs in one compiled loop.
  ``record_losses=False``: only the last epoch's loss is computed (the others are NaN in
  the result), the earlier steps take the gradient alone; a loss that is not finite at
  the end still stops with :class:`TrainingDivergedError`."""

  def __init__(self, idx, weight, *, record_losses: bool = True):
    self.idx = np.asarray(idx, np.int32)
    self.weight = np.asarray(weight, np.float32)
    self.record_losses = bool(record_losses)

  @classmethod
  def from_keep(cls, keep: np.ndarray) -> "FullBatch":
    """Each model's examples in row order, padded to the largest model's count."""
    members = [np.flatnonzero(k) for k in keep]
    width = max(len(m) for m in members)
    idx = np.zeros((len(members), width), np.int32)
    weight = np.zeros((len(members), width), np.float32)
    for m, rows in enumerate(members):
      idx[m, :rows.size], weight[m, :rows.size] = rows, 1.0
    return cls(idx, weight)

  def epoch(self, e: int):
    return self.idx[..., None, :], self.weight[..., None, :]  # one step [.., T=1, B]

  def fingerprint(self):
    from mia_jax._io import hash_arrays
    return hash_arrays(self.idx, self.weight)


# -- objectives: what the trainer minimizes ------------------------------------------------------

class ModelObjective(NamedTuple):
  """A classifier's objective: the mean softmax cross-entropy of the real examples of a
  batch ``(x, y)`` (the model's train-mode forward: dropout, BatchNorm statistics).

  The trainer reads an objective through ``init(key) -> variables`` (used when it
  initializes), ``loss(params, other, batch, weight, key) -> (loss, new_other)`` (``other``
  the non-parameter collections, ``weight`` float[B] 1 real / 0 padding, ``key`` this
  step's) and ``describe() -> str`` (in the checkpoint fingerprint). Objectives are
  hashable: the compiled steps are cached on them.
  """
  model: Any

  def init(self, key):
    return self.model.init(key)

  def loss(self, params, other, batch, weight, key):
    xb, yb = batch
    logits, new_other = self.model.apply_train({"params": params, **other}, xb, key,
                                               mask=weight > 0)
    per_ex = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(per_ex * weight) / jnp.maximum(jnp.sum(weight), 1.0), new_other

  def describe(self) -> str:
    return repr(dict(self.model.spec))


def program_key(config: TrainConfig) -> TrainConfig:
  """What of a recipe changes the compiled step: everything but ``epochs`` (a longer run
  of the same recipe reuses the compiled step)."""
  return dataclasses.replace(config, epochs=1)


_AXES = (0, 0, 0, 0, None, 0, 0, None)
"""vmap axes of a step's (params, other, opt_state, key, data, idx, weight, t)."""


@functools.lru_cache(maxsize=64)
def _compiled_epoch(objective, config: TrainConfig, stacked: bool,
                    mesh: jax.sharding.Mesh | None = None):
  """The compiled epoch, cached per objective, recipe (without ``epochs``), mode and mesh,
  so that repeated training (shadow models, proxies, tests) compiles once per input shape.

  Returns ``(run, tx)`` with ``run(state, key, data, (idx, w)) -> (state, mean_loss)``,
  ``state = (params, other, opt_state)`` and ``idx``/``w`` [T, B] (or [M, T, B]).
  On accelerators the T steps are one ``lax.scan`` inside one jit; on the CPU the jitted
  step is called T times from the host, because XLA:CPU runs convolution backward passes
  inside a loop body several times slower (see mia_jax/_batching.py). Both run the same
  step function, so the results are the same.

  With a ``mesh`` (stacked only) the jit pins its shardings: every per-model argument and
  every output has its model axis split over "model", the data is replicated; so each
  device steps its own models, and outputs come back placed as inputs (no recompile).
  """
  step, tx = _make_step_fn(objective, config)
  shardings = {}
  if mesh is not None:
    per_model, whole = stacked_sharding(mesh), replicated_sharding(mesh)
    shardings = dict(in_shardings=tuple(whole if a is None else per_model for a in _AXES),
                     out_shardings=per_model)
  if not on_cpu():
    def epoch(params, other, opt_state, key, data, idx, w):
      def body(carry, batch):
        idx_b, wb, t = batch
        *carry, loss, count = step(*carry, key, data, idx_b, wb, t)
        return tuple(carry), (loss, count)
      t = jnp.arange(idx.shape[0])
      (params, other, opt_state), (losses, counts) = jax.lax.scan(
          body, (params, other, opt_state), (idx, w, t))
      return params, other, opt_state, jnp.sum(losses * counts) / jnp.maximum(jnp.sum(counts), 1.0)
    if shardings:
      shardings["in_shardings"] = shardings["in_shardings"][:7]
    fn = jax.jit(jax.vmap(epoch, in_axes=_AXES[:7]) if stacked else epoch, **shardings)

    def run(state, key, data, batches):
      *state, loss = fn(*state, key, data, *batches)
      return tuple(state), loss
    return run, tx

  one_step = step

  def step(params, other, opt_state, key, data, idx, w, t):  # the epoch's step t
    return one_step(params, other, opt_state, key, data, idx[t], w[t], t)

  step_jit = jax.jit(jax.vmap(step, in_axes=_AXES) if stacked else step, **shardings)

  def run(state, key, data, batches):
    idx, w = batches
    losses, counts = [], []
    for t in range(idx.shape[-2]):  # the whole epoch's batches go in; the step takes row t
      *state, loss, count = step_jit(*state, key, data, idx, w, t)
      losses.append(loss)
      counts.append(count)
    losses, counts = jnp.stack(losses, -1), jnp.stack(counts, -1)
    return tuple(state), jnp.sum(losses * counts, -1) / jnp.maximum(jnp.sum(counts, -1), 1.0)

  return run, tx


@functools.lru_cache(maxsize=64)
def _compiled_full_batch(objective, config: TrainConfig, stacked: bool, buffer: int,
                         record: bool = True):
  """All epochs of full-batch training in one compiled ``lax.fori_loop`` (a traced trip
  count: changing ``epochs`` within ``buffer`` does not recompile). Epoch e is the step
  the host loop would take with epoch key ``fold_in(key, e + 1)`` and step 0, so it equals
  :class:`FullBatch` through the host loop. Returns ``(run, tx)``; ``run(params, other,
  opt_state, key, data, idx, w, epochs) -> (params, other, opt_state, losses[buffer])``.
  Every model's batch has a real example (checked by the caller), so no step is skipped.
  Without ``record`` the first ``epochs - 1`` steps take the gradient alone."""
  kw = dict(skip_empty=False, gathered=True)
  step, tx = _make_step_fn(objective, config, **kw)
  step_g = step if record else _make_step_fn(objective, config, value=False, **kw)[0]

  def whole(params, other, opt_state, key, data, idx, w, epochs):
    batch = jax.tree.map(lambda a: a[idx], data)  # the same batch every epoch: gathered once

    def body(e, carry):
      params, other, opt_state, losses = carry
      params, other, opt_state, loss, _ = step_g(params, other, opt_state,
                                                 jax.random.fold_in(key, e + 1), batch, w, 0)
      return params, other, opt_state, losses.at[e].set(loss)

    losses = jnp.full(buffer, jnp.nan, jnp.float32)
    if record:
      return jax.lax.fori_loop(0, epochs, body, (params, other, opt_state, losses))
    params, other, opt_state, losses = jax.lax.fori_loop(0, epochs - 1, body,
                                                         (params, other, opt_state, losses))
    params, other, opt_state, loss, _ = step(params, other, opt_state,
                                             jax.random.fold_in(key, epochs), batch, w, 0)
    return params, other, opt_state, losses.at[epochs - 1].set(loss)

  return jax.jit(jax.vmap(whole, in_axes=_AXES) if stacked else whole), tx


@functools.lru_cache(maxsize=64)
def _compiled_init(objective, stacked: bool):
  return jax.jit(jax.vmap(objective.init) if stacked else objective.init)


def _make_step_fn(objective, config: TrainConfig, skip_empty: bool = True,
                  gathered: bool = False, value: bool = True):
  """One optimizer step of one model on the batch ``data[idx_b]`` (every leaf of the data
  pytree indexed) with weights ``wb``: (params, other, opt_state, key, data, idx_b, wb, t)
  -> (params, other, opt_state, loss, number of real examples). ``gathered``: the step
  takes the batch itself in place of (data, idx_b). ``skip_empty``: a step without real
  examples leaves the model as it was (needless when every batch has one). ``value``:
  also return the loss (else NaN: the gradient alone is cheaper when the loss's own
  transcendental functions would dominate, as for small classifiers)."""
  tx = config.optimizer_fn()

  def step_on(params, other, opt_state, key, batch, wb, t):
    # Weight decay: its gradient is in TrainConfig.optimizer_fn.
    args = (params, other, batch, wb, jax.random.fold_in(key, t))
    if value:
      (loss, new_other), grads = jax.value_and_grad(objective.loss, has_aux=True)(*args)
    else:
      grads, new_other = jax.grad(objective.loss, has_aux=True)(*args)
      loss = jnp.full((), jnp.nan, jnp.float32)
    if config.weight_decay > 0:  # the reported loss is the penalized objective
      l2 = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
      loss = loss + 0.5 * config.weight_decay * l2
    updates, new_opt = tx.update(grads, opt_state, params)
    new = (optax.apply_updates(params, updates), {**other, **new_other}, new_opt)
    if not skip_empty:
      return *new, loss, jnp.sum(wb)
    # A step with no real example (padding for a model with fewer examples) is a no-op.
    has_data = jnp.sum(wb) > 0
    params, other, opt_state = jax.tree.map(
        lambda a, b: jnp.where(has_data, a, b), new, (params, other, opt_state))
    return params, other, opt_state, loss, jnp.sum(wb)

  if gathered:
    return step_on, tx

  def step(params, other, opt_state, key, data, idx_b, wb, t):
    return step_on(params, other, opt_state, key, jax.tree.map(lambda a: a[idx_b], data), wb, t)

  return step, tx


class TrainResult(NamedTuple):
  variables: Variables
  losses: np.ndarray  # float[epochs] (or [M, epochs] for stacked) mean training loss


def progress_bar(progress, total: int, description: str):
  """Returns (advance, close) callables for an optional rich progress bar."""
  if progress is None:
    return (lambda: None), (lambda: None)
  task = progress.add_task(description, total=total)
  return (lambda: progress.advance(task)), (lambda: progress.remove_task(task))


def _check_not_empty(x: np.ndarray) -> None:
  if x.shape[0] == 0:
    raise MiaInputError(f"x: expected at least one training example, got shape {x.shape}")


def train_model(model: LayeredModel, x, y, *, config: TrainConfig = TrainConfig(),
                seed: Seed = 0, indices=None, init_variables: Variables | None = None,
                progress=None, description: str = "training", checkpoint_dir=None,
                checkpoint_every: int = 1, on_epoch=None, dp=None) -> TrainResult:
  """Trains one model.

  Args:
    model: the architecture.
    x: float[N, *model.input_shape] training inputs (all candidates).
    y: int[N] labels.
    config: the recipe.
    seed: int or non-empty tuple of ints, each in [0, 2**32); fixes initialization,
      shuffling and dropout.
    indices: optional rows of x to train on (default: all): distinct row numbers
      int[n] (floats are refused, even integer-valued ones), or a boolean mask bool[N].
    init_variables: start from these instead of a fresh initialization.
    progress: optional ``rich.progress.Progress`` to show one bar (epochs).
    description: label of the progress bar.
    checkpoint_dir: if given, the training state is saved there every
      ``checkpoint_every`` epochs (atomically), and training resumes from the latest saved
      epoch when called again: an interrupted run (even ``kill -9``) continues and gives
      the same result as an uninterrupted one.
    checkpoint_every: epochs between checkpoints.
    on_epoch: optional callback ``on_epoch(epoch, variables)`` after each epoch (e.g. to
      save one checkpoint per epoch for a many-checkpoints attack).
    dp: optional :class:`mia_jax.dp.DPSGD`: train with DP-SGD (clipped per-example
      gradients, Gaussian noise, Poisson batches; :func:`mia_jax.dp.train_model_dp`).

  Returns:
    TrainResult(variables, losses[epochs]).
  """
  if dp is not None:
    from mia_jax.dp import train_model_dp
    return train_model_dp(model, x, y, config=config, seed=seed, indices=indices,
                          checkpoint_dir=checkpoint_dir, progress=progress,
                          description=description,
                          **_dp_options(dp, init_variables, on_epoch, checkpoint_every))
  seed = check_seed(seed)
  x, y = check_model(model).check_inputs(x, y)
  _check_not_empty(x)
  indices = check_indices(indices, x.shape[0])
  keep = np.zeros((1, x.shape[0]), bool)
  keep[0, indices] = True
  return _train(model, x, y, keep, config, [np_seed(seed)], init_variables, progress,
                description, False, checkpoint_dir, checkpoint_every, on_epoch)


def train_models(model: LayeredModel, x, y, keep, *, config: TrainConfig = TrainConfig(),
                 seed: int = 0, init_variables: Variables | None = None, progress=None,
                 description: str = "training models", checkpoint_dir=None,
                 checkpoint_every: int = 1, on_epoch=None,
                 mesh: jax.sharding.Mesh | None = None, first_model: int = 0,
                 dp=None) -> TrainResult:
  """Trains M models at once, model m on the rows where ``keep[m]`` is True.

  Args:
    model: the architecture (shared by all M models).
    x: float[N, *input_shape]; y: int[N].
    keep: bool[M, N] membership matrix.
    config: the recipe.
    seed: base seed, an int in [0, 2**32); model m uses ``(seed, first_model + m)``.
    init_variables: optional stacked variables (leading axis M) to start from.
    progress: optional ``rich.progress.Progress``.
    checkpoint_dir, checkpoint_every, on_epoch: as in :func:`train_model` (the whole
      stack is saved and resumed together).
    mesh: optional ``jax.sharding.Mesh`` with a "model" axis (``mia_jax.sharding.model_mesh()``)
      whose size divides M: the models are split over its devices, the data replicated;
      the result equals training without a mesh (see docs/multi_device.md).
    first_model: the index of the first of these models in a larger pool, so that a pool
      grown later trains its new models exactly as a bigger run would have trained them.
    dp: optional :class:`mia_jax.dp.DPSGD`: every model trains with DP-SGD, stacked
      (:func:`mia_jax.dp.train_models_dp`: each exactly as it trains alone).

  Returns:
    TrainResult with stacked variables (every leaf has leading axis M; sharded over
    ``mesh`` when given) and losses[M, epochs].
  """
  if dp is not None:
    from mia_jax.dp import train_models_dp
    return train_models_dp(model, x, y, keep, config=config, seed=seed,
                           first_model=first_model, checkpoint_dir=checkpoint_dir,
                           progress=progress, description=description,
                           **_dp_options(dp, init_variables, on_epoch, checkpoint_every, mesh))
  seed = check_seed(seed, allow_tuple=False)
  x, y = check_model(model).check_inputs(x, y)
  _check_not_empty(x)
  keep = as_array(keep, "keep")
  if keep.ndim != 2 or keep.shape[1] != x.shape[0]:
    raise MiaInputError(f"keep: expected bool[M, {x.shape[0]}] to match x, got shape {keep.shape}")
  if keep.dtype != bool:
    raise MiaInputError(f"keep: expected a boolean matrix, got dtype={keep.dtype}")
  empty = np.where(keep.sum(1) == 0)[0]
  if empty.size:
    raise MiaInputError(f"keep: model(s) {empty[:5].tolist()} have no training examples")
  if mesh is not None:
    check_mesh(mesh, keep.shape[0])
    if checkpoint_dir is not None and jax.process_count() > 1:
      raise MiaInputError("checkpoint_dir: not supported with a mesh spanning several "
                          "processes (save the gathered result on one process instead)")
  first_model = check_positive_int(first_model, "first_model", minimum=0)
  seeds = [(int(seed), first_model + m) for m in range(keep.shape[0])]
  return _train(model, x, y, keep, config, seeds, init_variables, progress, description,
                True, checkpoint_dir, checkpoint_every, on_epoch, mesh)


def _dp_options(dp, init_variables, on_epoch, checkpoint_every, mesh=None) -> dict:
  """The DP trainer's keyword arguments from a :class:`mia_jax.dp.DPSGD`; what DP-SGD
  training does not take is refused by name."""
  from mia_jax.dp import DPSGD
  if not isinstance(dp, DPSGD):
    raise MiaInputError(f"dp: expected a mia_jax.dp.DPSGD, got {type(dp).__name__}")
  unsupported = [name for name, v in (("init_variables", init_variables),
                                      ("on_epoch", on_epoch), ("mesh", mesh)) if v is not None]
  if checkpoint_every != 1:
    unsupported.append("checkpoint_every")
  if unsupported:
    raise MiaInputError(f"dp: DP-SGD training does not take {unsupported} (it starts from "
                        "the seed's initialization and checkpoints every epoch)")
  return dp.options()


def _epoch_checkpoints(checkpoint_dir) -> list[tuple[int, str]]:
  """(epochs completed, path) of the complete epoch checkpoints, newest first."""
  if checkpoint_dir is None or not os.path.isdir(checkpoint_dir):
    return []
  done = [int(n.split("-")[1]) for n in os.listdir(checkpoint_dir)
          if n.startswith("epoch-") and n.split("-")[1].isdigit()
          and os.path.isdir(os.path.join(checkpoint_dir, n, "state"))]
  return [(e, os.path.join(checkpoint_dir, f"epoch-{e:06d}")) for e in sorted(done, reverse=True)]


def save_epoch_checkpoint(checkpoint_dir, epoch, state, losses, fingerprint) -> None:
  path = os.path.join(checkpoint_dir, f"epoch-{epoch:06d}")
  save_variables(path, {"state": state, "losses": losses}, overwrite=True,
                 metadata={"epoch": epoch, "fingerprint": fingerprint})
  for _, old in _epoch_checkpoints(checkpoint_dir)[KEEP_EPOCH_CHECKPOINTS:]:
    shutil.rmtree(old, ignore_errors=True)
  for n in os.listdir(checkpoint_dir):  # a save interrupted by kill -9
    if n.startswith(".tmp-"):
      shutil.rmtree(os.path.join(checkpoint_dir, n), ignore_errors=True)


def resume_state(checkpoint_dir, like, fingerprint, description):
  """(epochs done, saved state or None): the newest epoch checkpoint of this training run
  that reads back intact. A corrupt one is reported, removed and the one before it used;
  one of another run (recipe, seeds, data or model) is an error."""
  for epoch, path in _epoch_checkpoints(checkpoint_dir):
    try:
      saved, meta = load_variables(path, like=like)
    except CorruptCheckpointError as e:
      _log(f"{description}: the epoch-{epoch} training checkpoint is corrupt ({e}); "
           "removing it and resuming from the one before")
      shutil.rmtree(path, ignore_errors=True)
      continue
    except MiaInputError as e:
      raise MiaInputError(
          f"checkpoint_dir: {checkpoint_dir} holds a checkpoint of a different training run "
          f"({e}); remove it or choose another directory") from e
    if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
      raise MiaInputError(
          f"checkpoint_dir: {checkpoint_dir} holds a checkpoint of a different training run "
          "(other recipe, seeds, data or model); remove it or choose another directory")
    return epoch, saved
  return 0, None


_LOGGERS: list = []


def _log(message: str) -> None:
  """Says something about training state (a corrupt checkpoint skipped) through the
  logger of the enclosing :func:`log_to` block, else as a warning."""
  if _LOGGERS:
    _LOGGERS[-1](message)
  else:
    import warnings
    warnings.warn(message, stacklevel=3)


class log_to:  # noqa: N801 - used as a context manager, like a function
  """Routes this module's messages (checkpoint fallbacks) to ``log`` inside the block."""

  def __init__(self, log):
    self.log = log

  def __enter__(self):
    _LOGGERS.append(self.log)

  def __exit__(self, *exc):
    _LOGGERS.pop()


def _train(model, x, y, keep, config, seeds, init_variables, progress, description, stacked,
           checkpoint_dir=None, checkpoint_every=1, on_epoch=None, mesh=None):
  batches = ShuffledBatches(keep, config.batch_size, [np.random.default_rng(s) for s in seeds],
                            stacked=stacked)
  return _fit(ModelObjective(model), (x, y), batches, config, seeds, init_variables, progress,
              description, stacked, checkpoint_dir, checkpoint_every, on_epoch, mesh)


def train_objective(objective, data, batches, *, config: TrainConfig, seeds: Sequence[Seed],
                    stacked: bool, init_variables: Variables | None = None,
                    progress=None, description: str = "training", checkpoint_dir=None,
                    checkpoint_every: int = 1, on_epoch=None) -> TrainResult:
  """The trainer itself, for any objective: what :func:`train_model` and
  :func:`train_models` run for a classifier model, and the attack networks (Shokri et
  al.'s and the meta-attack's classifiers, Nasr et al.'s network) run for theirs.

  Args:
    objective: hashable, with ``loss(params, other, batch, weight, key) -> (loss,
      new_other)``, ``describe()`` and, unless ``init_variables`` is given, ``init(key)``
      (see :class:`ModelObjective`).
    data: a pytree of arrays with a leading example axis N, on the device once; a step's
      batch is every leaf indexed by the step's indices.
    batches: :class:`ShuffledBatches` (minibatches, host-shuffled), :class:`FullBatch`
      (every epoch one step on all examples, all epochs in one compiled loop), or any
      object with ``epoch(e) -> (idx int32[M, T, B], weight float32[M, T, B])`` and
      ``fingerprint()``.
    config: the recipe (optimizer, learning rate, weight decay, epochs; the batch size is
      ``batches``').
    seeds: one per model: model m's keys derive from ``jax_key(seeds[m])`` (its
      initialization from fold 0, epoch e's from fold e + 1, step t's from that folded
      with t).
    stacked: M models with a leading model axis (else one model, no axis).
    init_variables: start from these (else ``objective.init``).
    progress, description, checkpoint_dir, checkpoint_every, on_epoch: as in
      :func:`train_model` (not with :class:`FullBatch`).

  Returns:
    TrainResult(variables, losses[M, epochs] or [epochs]).
  """
  leaves = jax.tree.leaves(data)
  if not leaves or len({np.shape(a)[0] if np.ndim(a) else -1 for a in leaves}) != 1:
    raise MiaInputError("data: expected a pytree of arrays sharing a leading example axis, "
                        f"got shapes {[np.shape(a) for a in leaves]}")
  if not isinstance(config, TrainConfig):
    raise MiaInputError(f"config: expected a TrainConfig, got {type(config).__name__}")
  models = len(seeds) if stacked else 1
  if isinstance(batches, ShuffledBatches):
    models = len(batches.members) if batches.stacked == stacked else -1
  elif isinstance(batches, FullBatch):
    models = -1 if batches.idx.ndim != (2 if stacked else 1) or \
        batches.idx.shape != batches.weight.shape else len(batches.idx) if stacked else 1
  if models < 0:
    raise MiaInputError("batches: expected " + ("a model axis (stacked)" if stacked else
                        "one model's batches (not stacked)") + " to match stacked="
                        f"{stacked}, and indices and weights of one shape")
  if not seeds or len(seeds) != models:
    raise MiaInputError(f"seeds: expected one seed per model ({models}), got {len(seeds)}")
  return _fit(objective, data, batches, config, [np_seed(s) for s in seeds], init_variables,
              progress, description, stacked, checkpoint_dir, checkpoint_every, on_epoch)


def _fit(objective, data, batches, config, seeds, init_variables, progress, description,
         stacked, checkpoint_dir=None, checkpoint_every=1, on_epoch=None, mesh=None):
  keys = jnp.stack([jax_key(s) for s in seeds])
  if init_variables is None:
    init_keys = _fold_all(keys, 0)
    if mesh is not None:
      init_keys = shard_stacked(init_keys, mesh)
    variables = _compiled_init(objective, stacked)(init_keys if stacked else init_keys[0])
  else:
    variables = init_variables
  params = variables["params"]
  other = {c: t for c, t in variables.items() if c != "params"}
  fingerprint = None
  if checkpoint_dir is not None:  # hashed as given (host arrays: no copy back from the device)
    from mia_jax._io import hash_arrays
    fingerprint = {"config": dataclasses.asdict(config),
                   "seeds": [list(np.atleast_1d(s).tolist()) for s in seeds],
                   "keep": batches.fingerprint(), "data": hash_arrays(*jax.tree.leaves(data)),
                   "model": objective.describe()}
  data = jax.tree.map(jnp.asarray, data)
  if isinstance(batches, FullBatch):
    if checkpoint_dir is not None or on_epoch is not None or mesh is not None:
      raise MiaInputError("batches: full-batch training runs every epoch in one compiled "
                          "loop, without checkpoint_dir, on_epoch or a mesh")
    return _fit_full_batch(objective, data, batches, config, keys, params, other, progress,
                           description, stacked)
  run, tx = _compiled_epoch(objective, program_key(config), stacked, mesh)
  opt_state = jax.vmap(tx.init)(params) if stacked else tx.init(params)
  state, losses = run_epochs(
      run, (params, other, opt_state), batches, keys, data, config=config, stacked=stacked,
      description=description, progress=progress, checkpoint_dir=checkpoint_dir,
      checkpoint_every=checkpoint_every, fingerprint=fingerprint, mesh=mesh,
      on_epoch=None if on_epoch is None else (
          lambda e, s: on_epoch(e, {"params": s[0], **s[1]})))
  params, other, _ = state
  return TrainResult({"params": params, **other}, losses if stacked else losses[0])


def _fit_full_batch(objective, data, batches, config, keys, params, other, progress,
                    description, stacked):
  empty = np.flatnonzero(~np.any(np.reshape(batches.weight, (-1, batches.weight.shape[-1])) > 0,
                                 axis=-1))
  if empty.size:
    raise MiaInputError(f"batches: model(s) {empty[:5].tolist()} have no training examples")
  buffer = 1 << max(0, config.epochs - 1).bit_length()  # nearby epoch counts share a compile
  fn, tx = _compiled_full_batch(objective, program_key(config), stacked, buffer,
                                batches.record_losses)
  opt_state = jax.vmap(tx.init)(params) if stacked else tx.init(params)
  idx, w = (jnp.asarray(a) for a in (batches.idx, batches.weight))
  advance, close = progress_bar(progress, 1, description)
  params, other, _, losses = fn(params, other, opt_state, keys if stacked else keys[0], data,
                                idx, w, config.epochs)
  losses = np.asarray(losses, np.float32).reshape(-1, buffer)[:, :config.epochs]
  checked = losses if batches.record_losses else losses[:, -1:]
  diverged = np.r_[np.zeros(config.epochs - checked.shape[1], bool),
                   ~np.all(np.isfinite(checked), axis=0)]
  if diverged.any():  # the first diverged epoch, as the host loop reports it
    e = int(np.argmax(diverged))
    check_converging(losses[:, e], description, e + 1, config)
  advance()
  close()
  return TrainResult({"params": params, **other}, losses if stacked else losses[0])


def _fold_all(keys: jax.Array, data: int) -> jax.Array:
  """``fold_in(k, data)`` for each key of a stack (one call)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def run_epochs(run, state, batches, keys: jax.Array, data, *, config: TrainConfig,
               stacked: bool, description: str, progress=None, checkpoint_dir=None,
               checkpoint_every: int = 1, fingerprint=None, on_epoch=None, mesh=None):
  """The training loop every trainer shares (plain and DP-SGD steps, the attack networks).

  For each epoch e: the host draws every model's batches (``batches.epoch(e)``, a pytree
  of arrays with a leading model axis when ``stacked``), folds e + 1 into each model's key
  (``keys``: a stack of M keys), and the compiled ``run(state, epoch_keys, data, batches)
  -> (state, loss[M])`` takes the epoch's steps; a non-finite loss stops training with
  :class:`TrainingDivergedError`. With ``checkpoint_dir`` the state is saved every
  ``checkpoint_every`` epochs (and at the end) under ``fingerprint``, and a run finds and
  resumes the newest intact one, drawing the skipped epochs' batches again so that it
  ends as an uninterrupted run would. ``on_epoch(e, state)`` after each epoch.

  Returns:
    (state, losses float32[M, epochs]).
  """
  m_count = keys.shape[0]
  losses = np.zeros((m_count, config.epochs), np.float32)
  check_positive_int(checkpoint_every, "checkpoint_every")
  start = 0
  if checkpoint_dir is not None:
    start, saved = resume_state(checkpoint_dir, {"state": state, "losses": losses},
                                fingerprint, description)
    if saved is not None:
      state, losses = saved["state"], np.array(saved["losses"])
      for e in range(start):  # replay the host draws so epoch `start` sees the same batches
        batches.epoch(e)
  if mesh is not None:  # the models split over the devices, the data on every device
    state, data = shard_stacked(state, mesh), replicate(data, mesh)
  advance, close = progress_bar(progress, config.epochs, description)
  for _ in range(start):
    advance()
  for e in range(start, config.epochs):
    arrays = jax.tree.map(jnp.asarray, batches.epoch(e))
    ekey = _fold_all(keys, e + 1)
    if not stacked:
      ekey = ekey[0]
    if mesh is not None:
      arrays, ekey = shard_stacked((arrays, ekey), mesh)
    state, loss = run(state, ekey, data, arrays)
    losses[:, e] = (np.asarray(loss) if mesh is None else gather(loss)).reshape(-1)
    check_converging(losses[:, e], description, e + 1, config)
    if checkpoint_dir is not None and ((e + 1) % checkpoint_every == 0 or e + 1 == config.epochs):
      save_epoch_checkpoint(checkpoint_dir, e + 1, state, losses, fingerprint)
    if on_epoch is not None:
      on_epoch(e, state)
    advance()
  close()
  return state, losses


def check_converging(epoch_losses, description: str, epoch: int, config: TrainConfig) -> None:
  """Raises :class:`TrainingDivergedError` if any model's mean loss of this epoch is NaN/inf."""
  bad = np.flatnonzero(~np.isfinite(np.asarray(epoch_losses)))
  if bad.size:
    which = "" if np.size(epoch_losses) == 1 else f" (model(s) {bad[:8].tolist()} of the stack)"
    raise TrainingDivergedError(
        f"training diverged: {description}: the loss became NaN/inf in epoch {epoch} of "
        f"{config.epochs}{which}; lower learning_rate (now {config.learning_rate}) or check "
        "the data for extreme values")


def accuracy(model: LayeredModel, variables: Variables, x, y, *, microbatch_size: int = 1024) -> float:
  """Top-1 accuracy of one model (eval mode)."""
  from mia_jax.signals import predict_logits  # local: signals imports models only.
  logits = predict_logits(model, variables, x, microbatch_size=microbatch_size)
  return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(y)))


# -- checkpoints (orbax) -----------------------------------------------------------------

def save_variables(path: str | os.PathLike, variables: Variables, *, metadata: dict | None = None,
                   overwrite: bool = False) -> str:
  """Saves a variables pytree (single or stacked) with orbax, plus ``metadata.json``.

  The checkpoint is written into a temporary sibling directory and renamed into place,
  so an interrupted save never leaves a half-written checkpoint at ``path``. The
  checkpoint records the sha256 of its content (``content.sha256``), which
  :func:`load_variables` checks.

  Returns:
    That sha256.
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path):
    if not overwrite:
      raise MiaInputError(f"path: {path} already exists (pass overwrite=True to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=parent)
  try:
    host = jax.tree.map(np.asarray, variables)
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(os.path.join(tmp, "state"), host)
      ckpt.wait_until_finished()
    with open(os.path.join(tmp, "metadata.json"), "w") as f:
      json.dump(metadata or {}, f, indent=2, sort_keys=True)
    digest = hash_tree(host)
    with open(os.path.join(tmp, HASH_FILE), "w") as f:
      f.write(digest + "\n")
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return digest


HASH_FILE = "content.sha256"
"""File in a checkpoint holding the sha256 of its content (:func:`mia_jax._io.hash_tree`)."""


def checkpoint_hash(path: str | os.PathLike) -> str | None:
  """The content hash recorded in the checkpoint at ``path`` (None for one without)."""
  try:
    with open(os.path.join(os.fspath(path), HASH_FILE), "rb") as f:
      return f.read().decode("ascii", "replace").strip()
  except FileNotFoundError:
    return None


def load_variables(path: str | os.PathLike, *, like: Variables | None = None) -> tuple[Variables, dict]:
  """Loads (variables, metadata) saved by :func:`save_variables`.

  The content is checked against the sha256 recorded at save time.

  Args:
    path: checkpoint directory.
    like: optional pytree with the expected structure/shapes; a mismatch is an error.
  Raises:
    MiaInputError: not a checkpoint, or another structure than ``like``.
    CorruptCheckpointError: unreadable, truncated, or content changed since it was saved.
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.fspath(path))
  state = os.path.join(path, "state")
  if not os.path.isdir(state):
    raise MiaInputError(f"path: {path} is not a mia-jax checkpoint (no 'state' directory)")
  metadata = _read_metadata(path)
  ckpt = ocp.StandardCheckpointer()
  try:
    return _restore(ckpt, path, state, like, metadata)
  finally:
    ckpt.close()  # its threads and event loop, also after a failed restore


def _restore(ckpt, path, state, like, metadata):
  try:
    if like is not None:
      abstract = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype if hasattr(a, "dtype")
                                         else np.asarray(a).dtype), like)
      variables = ckpt.restore(state, abstract)
    else:
      variables = ckpt.restore(state)
  except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many types on bad files
    intact = None
    if like is not None:  # another structure, or a damaged checkpoint? Read it as saved.
      try:
        intact = ckpt.restore(state)
      except Exception:  # noqa: BLE001
        intact = None
    if intact is None:
      raise CorruptCheckpointError(f"path: checkpoint {path} cannot be read back: "
                                   f"{type(e).__name__}: {_first_line(e)}") from e
    raise MiaInputError(f"path: checkpoint {path} does not match the expected structure: "
                        f"{_first_line(e)}") from e
  if like is not None:
    for (kp, want), got in zip(jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(variables)):
      if tuple(np.shape(want)) != tuple(np.shape(got)):
        raise MiaInputError(
            f"path: checkpoint {path} has shape {tuple(np.shape(got))} at "
            f"{jax.tree_util.keystr(kp)}, expected {tuple(np.shape(want))}")
  want = checkpoint_hash(path)
  if want is not None and hash_tree(variables) != want:
    raise CorruptCheckpointError(f"path: checkpoint {path} is corrupt: its content differs "
                                 "from what was saved (sha256 mismatch)")
  return variables, metadata


def read_metadata(path: str | os.PathLike) -> dict:
  """The ``metadata.json`` of a checkpoint written by :func:`save_variables` (without
  reading its arrays)."""
  return _read_metadata(os.fspath(path))


def _read_metadata(path: str) -> dict:
  meta_path = os.path.join(path, "metadata.json")
  if not os.path.exists(meta_path):
    return {}
  try:
    with open(meta_path, "rb") as f:
      metadata = json.loads(f.read().decode("utf-8"))
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CorruptCheckpointError(f"path: checkpoint {path} has a corrupt metadata.json "
                                 f"({_first_line(e)})") from e
  if not isinstance(metadata, dict):
    raise CorruptCheckpointError(f"path: checkpoint {path} has a corrupt metadata.json "
                                 "(not a mapping)")
  return metadata


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else type(e).__name__

