"""Differentially private training (DP-SGD), its privacy accounting, and MI bounds.

DP-SGD (Abadi et al., CCS 2016), one step:

1. sample a batch (see *Sampling*);
2. per-example gradients ``g_i``, each clipped to L2 norm at most ``clip_norm`` over the
   **whole** parameter pytree (``g_i * min(1, clip_norm / ||g_i||)``), summed: Google's
   jax-privacy (``jax_privacy.clipped_grad``; an optional dependency, ``mia-jax[dp]``);
3. add Gaussian noise ``N(0, (noise_multiplier * clip_norm)^2 I)``
   (``jax_privacy.noise_addition.gaussian_privatizer``, keyed per step);
4. divide by the **expected** batch size ``B = config.batch_size`` (a constant, so the
   noise scale does not depend on the data); apply the optax update of ``config`` (which
   adds the data-independent weight-decay gradient ``config.weight_decay * params`` first,
   as for non-private training).

The step is the library's one trainer with this gradient rule: the epochs run in
:func:`mia_jax.train.run_epochs` (host-drawn batches, per-model keys, checkpoints and
resume, progress, divergence checks), so DP models train stacked and resume like any other.

Every step adds noise, also when a sampled batch is empty. BatchNorm is rejected
(batch statistics mix examples, so per-example sensitivity would not hold); dropout
uses an independent key per example.

*Sampling.* ``sampling="poisson"`` (default) includes each training example in each step
independently with probability ``q = B / n``, with ``ceil(n / B)`` steps per epoch
(jax-privacy's ``CyclicPoissonSampling`` with cycle length 1): exactly the subsampled
Gaussian mechanism that the RDP accountant analyses (:func:`training_epsilon`). Batches
have random sizes; they are padded with slots jax-privacy marks as padding (they add
exactly zero) to one fixed capacity (the largest batch of the whole run, drawn up front
on the host), so the step compiles once. :func:`train_models_dp` trains M models at once,
each exactly as it trains alone. ``sampling="shuffle"`` uses fixed-size
batches of a shuffled epoch (as :mod:`mia_jax.train`); accounting it as Poisson with
the same ``q`` and steps is common practice but only an approximation, not a proven
guarantee (Chua et al., 2024, "How Private are DP-SGD Implementations?").

*Accounting* uses Google's ``dp_accounting`` (imported lazily; an optional dependency):
the RDP accountant on ``PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier))``
composed ``steps`` times, with add-or-remove-one neighbours and ``dp_accounting``'s
RDP-to-(eps, delta) conversion (Canonne-Kamath-Steinke 2020 / Asoodeh et al. 2020),
which is tighter than the classic ``min_a rdp_a + log(1/delta) / (a - 1)`` used by
older TF-Privacy releases: for TF-Privacy's example (n=60000, B=256, noise 1.12,
60 epochs, delta=1e-5) it gives eps ~ 2.52 where the classic conversion of the same
RDP curve gives the published 2.92.

*Bounds* on any membership-inference attack against an (eps, delta)-DP training
algorithm, for a balanced prior (half members): see :func:`membership_advantage_bounds`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mia_jax._validation import check_indices, MiaInputError, check_in_range, check_positive_int
from mia_jax.models.base import LayeredModel
from mia_jax.train import (Seed, TrainConfig, TrainResult, epoch_schedule, jax_key, np_seed,
                           program_key, run_epochs)
from mia_jax.models.adapters import check_model

SAMPLINGS = ("poisson", "shuffle")

__all__ = [
    "DPSGD", "SAMPLINGS", "clip_and_sum", "clipped_grad_sum", "epsilon_for", "membership_advantage_bounds",
    "noise_for_epsilon", "sampling_rate", "steps_per_epoch", "tight_accuracy_bound",
    "tight_advantage_bound", "tpr_bound", "train_model_dp", "train_models_dp", "training_epsilon",
    "yeom_accuracy_bound", "yeom_advantage_bound",
]


# -- clipping ------------------------------------------------------------------------------

def require_jax_privacy():
  try:
    import jax_privacy  # noqa: PLC0415 - optional dependency, imported lazily.
  except ImportError as e:
    raise MissingDependencyError(
        "dp_epsilon/noise_multiplier: DP-SGD needs the optional package jax-privacy "
        "(pip install 'mia-jax[dp]')") from e
  return jax_privacy


def clip_and_sum(per_example_grads: Any, clip_norm: float, weights: jax.Array | None = None):
  """Clips each example's gradient to ``clip_norm`` (global L2 norm, jax-privacy's
  ``clip_pytree``) and sums them.

  Args:
    per_example_grads: pytree whose leaves have a leading batch axis B.
    clip_norm: C > 0.
    weights: optional float[B] multipliers (0 drops padding slots; 1 keeps).

  Returns:
    (summed pytree without the batch axis, norms float[B] before clipping).
  """
  clip_pytree = require_jax_privacy().clipping.clip_pytree
  clipped, norms = jax.vmap(lambda g: clip_pytree(g, clip_norm))(per_example_grads)
  if weights is None:
    return jax.tree.map(lambda g: jnp.sum(g, 0), clipped), norms
  return jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), clipped), norms


def clipped_grad_sum(loss_fn: Callable, params: Any, batch: tuple, weights: jax.Array,
                     clip_norm: float, microbatch_size: int | None = None):
  """Sum of clipped per-example gradients of ``loss_fn(params, *example)``, computed by
  jax-privacy's ``clipped_grad`` (per-example gradients, clipping to global L2 norm
  ``clip_norm``, sum; padding slots contribute exactly zero).

  ``loss_fn`` is written for ONE example (unbatched arrays) and returns a scalar. With
  ``microbatch_size`` the batch is processed in chunks of that many examples, so at most
  that many per-example gradients are held at once. Not jitted (jit at the call site).

  Args:
    loss_fn: ``(params, *example) -> float[]``.
    params: the parameter pytree.
    batch: tuple of arrays with a leading batch axis B (the examples).
    weights: float[B], 1 for an example, 0 for a padding slot.
    clip_norm: C > 0.
    microbatch_size: optional chunk size (must divide B).

  Returns:
    (summed clipped gradients, sum of the examples' losses).
  """
  b = weights.shape[0]
  if microbatch_size is not None and microbatch_size < b and b % microbatch_size:
    raise MiaInputError(f"microbatch_size: expected a divisor of the batch size {b}, got "
                        f"{microbatch_size}")
  fn = require_jax_privacy().clipped_grad(
      loss_fn, l2_clip_norm=clip_norm, batch_argnums=tuple(range(1, 1 + len(batch))),
      keep_batch_dim=False, return_values=True,
      microbatch_size=None if microbatch_size is None or microbatch_size >= b
      else microbatch_size)
  summed, aux = fn(params, *batch, is_padding_example=weights == 0)
  return summed, jnp.sum(jnp.where(weights > 0, aux.values * weights, 0.0))


def add_noise(summed: Any, key: jax.Array, stddev) -> Any:
  """``summed`` plus i.i.d. Gaussian noise of std ``stddev`` on every coordinate, from
  jax-privacy's ``gaussian_privatizer`` keyed by ``key``."""
  priv = require_jax_privacy().noise_addition.gaussian_privatizer(stddev=stddev, prng_key=key)
  noised, _ = priv.update(summed, priv.init(summed))
  return noised


# -- training ------------------------------------------------------------------------------

def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """``ceil(n / B)`` DP-SGD steps per epoch."""
  return -(-int(num_examples) // int(batch_size))


def sampling_rate(num_examples: int, batch_size: int) -> float:
  """Poisson sampling rate ``q = min(1, B / n)``."""
  return min(1.0, int(batch_size) / int(num_examples))


def poisson_batches(members: np.ndarray, rate: float, steps: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
  """``steps`` Poisson-sampled batches of ``members`` (each member in each batch
  independently with probability ``rate``), from jax-privacy's ``CyclicPoissonSampling``
  (cycle length 1, independent partition: the add-or-remove neighbours the accountant
  assumes)."""
  bs = require_jax_privacy().batch_selection
  sampler = bs.CyclicPoissonSampling(sampling_prob=float(rate), iterations=int(steps),
                                     partition_type=bs.PartitionType.INDEPENDENT)
  return [members[np.asarray(b, np.int64)] for b in sampler.batch_iterator(members.size, rng)]


@functools.lru_cache(maxsize=16)
def _compiled_dp_epoch(model: LayeredModel, config: TrainConfig, microbatch_size: int | None,
                       stacked: bool = False, planted: bool = False):
  """Jitted DP-SGD epoch ``(params, opt_state, key, x, y, idx[T, B'], w[T, B'], active[T],
  clip_norm, noise_std, coords[P], sampled[T, P]) -> (params, opt_state, mean loss)``, and
  the optax transformation. ``active[t]`` False skips step t (no update, no noise): the
  padding of a model with fewer steps per epoch than the others it is stacked with. With
  ``planted``, step t adds the gradient canaries ``clip_norm * e_coords[j]`` that were
  sampled (``sampled[t, j]``) to the clipped sum before the noise (:mod:`mia_jax.canaries`);
  without it they are ignored. With ``stacked`` the epoch is vmapped over a leading model
  axis of everything but the data and the coordinates. Cached on the recipe without
  ``epochs`` (see :func:`mia_jax.train.program_key`)."""
  from jax.flatten_util import ravel_pytree
  tx = config.optimizer_fn()
  bsz = config.batch_size

  def example_loss(params, xi, yi, ki):
    logits, _ = model.apply_train({"params": params}, xi[None], ki)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  def epoch(params, opt_state, ekey, x_all, y_all, idx, w, active, clip_norm, noise_std,
            coords, sampled):
    def step(carry, batch):
      params, opt_state = carry
      idx_b, w_b, on, t, sampled_t = batch
      skey = jax.random.fold_in(ekey, t)
      k_drop, k_noise = jax.random.split(skey)
      ex_keys = jax.random.split(k_drop, idx_b.shape[0])
      summed, loss_sum = clipped_grad_sum(example_loss, params,
                                          (x_all[idx_b], y_all[idx_b], ex_keys), w_b,
                                          clip_norm, microbatch_size)
      if planted:  # gradient canaries: C at their coordinates, when sampled
        flat, unravel = ravel_pytree(summed)
        summed = unravel(flat.at[coords].add(clip_norm * sampled_t.astype(flat.dtype)))
      # Weight decay (data-independent) is in tx (TrainConfig.optimizer_fn).
      grads = jax.tree.map(lambda g: g / bsz, add_noise(summed, k_noise, noise_std))
      updates, new_opt = tx.update(grads, opt_state, params)
      new = optax.apply_updates(params, updates)
      keep_old = lambda a, b: jnp.where(on, a, b)  # noqa: E731
      return ((jax.tree.map(keep_old, new, params), jax.tree.map(keep_old, new_opt, opt_state)),
              (loss_sum * on, jnp.sum(w_b) * on))

    t = jnp.arange(idx.shape[0])
    (params, opt_state), (losses, counts) = jax.lax.scan(step, (params, opt_state),
                                                         (idx, w, active, t, sampled))
    return params, opt_state, jnp.sum(losses) / jnp.maximum(jnp.sum(counts), 1.0)

  if stacked:
    epoch = jax.vmap(epoch, in_axes=(0, 0, 0, None, None, 0, 0, 0, None, None, None, 0))
  return jax.jit(epoch), tx


@dataclasses.dataclass(frozen=True)
class DPSGD:
  """DP-SGD as an option of the trainer: ``train_model(..., dp=DPSGD(noise_multiplier=1.1,
  clip_norm=1.0))`` and ``train_models(..., dp=...)`` train exactly as
  :func:`train_model_dp` / :func:`train_models_dp` with these arguments (same batches,
  noise, keys, checkpoints and resume).

  Attributes:
    noise_multiplier: sigma >= 0 (0: clipping only, no privacy).
    clip_norm: C > 0, the per-example L2 clipping norm over all parameters.
    sampling: "poisson" (what the accountant assumes) or "shuffle".
    microbatch_size: optional chunk of the per-example gradients (bounds memory).
    gradient_canaries: optional ``(coords, included)`` Dirac gradient canaries
      (:mod:`mia_jax.canaries`): ``included`` bool[P] for one model, [M, P] for M.
  """
  noise_multiplier: float
  clip_norm: float
  sampling: str = "poisson"
  microbatch_size: int | None = None
  gradient_canaries: Any = None

  def __post_init__(self):
    _check_dp_args(self.noise_multiplier, self.clip_norm)
    if self.sampling not in SAMPLINGS:
      raise MiaInputError(f"sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
    if self.microbatch_size is not None:
      check_positive_int(self.microbatch_size, "microbatch_size")

  def options(self) -> dict[str, Any]:
    """The keyword arguments of :func:`train_model_dp` / :func:`train_models_dp`."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_dp_args(noise_multiplier, clip_norm):
  noise_multiplier = check_in_range(noise_multiplier, "noise_multiplier", 0.0, np.inf,
                                    high_open=True)
  clip_norm = check_in_range(clip_norm, "clip_norm", 0.0, np.inf, low_open=True,
                             high_open=True)
  return noise_multiplier, clip_norm


class _Schedule:
  """One model's DP-SGD batches, drawn on the host from its own seeded generator:
  ``epoch(e) -> (idx int32[T, cap], w float32[T, cap])``; ``cap`` and ``steps`` are fixed
  for the whole run (Poisson batch sizes are drawn up front)."""

  def __init__(self, indices: np.ndarray, config: TrainConfig, seed: Seed, sampling: str):
    n, bsz = indices.size, config.batch_size
    self.steps = steps_per_epoch(n, bsz)
    self.rng = np.random.default_rng(np_seed(seed))
    self.indices, self.bsz, self.sampling = indices, bsz, sampling
    if sampling == "poisson":
      # Every batch of the run first, so the padded capacity is fixed for the run.
      self.batches = poisson_batches(indices, sampling_rate(n, bsz), config.epochs * self.steps,
                                     self.rng)
      self.cap = max(8, -(-max(b.size for b in self.batches) // 8) * 8)
    else:
      self.cap = bsz

  def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
    if self.sampling == "poisson":
      idx = np.zeros((self.steps, self.cap), np.int32)
      w = np.zeros((self.steps, self.cap), np.float32)
      for t, b in enumerate(self.batches[e * self.steps:(e + 1) * self.steps]):
        idx[t, :b.size], w[t, :b.size] = b, 1.0
      return idx, w
    s = epoch_schedule(self.rng, self.indices, self.bsz, self.steps)
    return s.idx, s.weight


def _check_dp_model(model, noise_multiplier, clip_norm, sampling, microbatch_size, config):
  if not isinstance(config, TrainConfig):
    raise MiaInputError(f"config: expected a TrainConfig, got {type(config).__name__}")
  noise_multiplier, clip_norm = _check_dp_args(noise_multiplier, clip_norm)
  if sampling not in SAMPLINGS:
    raise MiaInputError(f"sampling: expected one of {SAMPLINGS}, got {sampling!r}")
  if microbatch_size is not None:
    microbatch_size = check_positive_int(microbatch_size, "microbatch_size")
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  if set(abstract) != {"params"}:
    raise MiaInputError(
        f"model: DP-SGD needs per-example gradients, but {model.name!r} has non-parameter "
        f"state {sorted(set(abstract) - {'params'})} (e.g. BatchNorm); use a model without it")
  return noise_multiplier, clip_norm, microbatch_size


def _run_dp(model, x, y, members: list[np.ndarray], seeds: list, config: TrainConfig,
            noise_multiplier: float, clip_norm: float, sampling: str,
            microbatch_size: int | None, stacked: bool,
            checkpoint_dir: str | None = None, progress=None,
            description: str = "DP-SGD training", canaries=None) -> TrainResult:
  """DP-SGD of one model per (members, seed); ``stacked``: all of them in one vmapped
  program, each with exactly the batches, noise and dropout keys it gets alone. With
  ``checkpoint_dir`` the state is saved every epoch and an interrupted run resumes from
  it (as :func:`mia_jax.train.train_models`: fingerprinted, the newest two kept).

  ``canaries`` ``(coords int[P], included bool[len(members), P])``: gradient canaries;
  model m's included ones join its training set as examples (indices past ``x``'s rows
  in the sampler, so they count in n and are Poisson-sampled like the data) whose clipped
  gradient is planted, not computed."""
  n_rows = x.shape[0]
  coords = np.zeros((0,), np.int32)
  if canaries is not None:
    coords = np.asarray(canaries[0], np.int32)
    inc = np.asarray(canaries[1], bool).reshape(len(members), coords.size)
    members = [np.concatenate([m, n_rows + np.flatnonzero(i)]) for m, i in zip(members, inc)]
  batches = _DPBatches([_Schedule(idx, config, s, sampling) for idx, s in zip(members, seeds)],
                       n_rows, coords.size, stacked, microbatch_size)
  microbatch_size = batches.microbatch_size
  epoch, tx = _compiled_dp_epoch(model, program_key(config), microbatch_size, stacked,
                                 canaries is not None)
  keys = jnp.stack([jax_key(s) for s in seeds])
  params = [model.init(jax.random.fold_in(k, 0))["params"] for k in keys]  # as mia_jax.train
  if stacked:
    params = jax.tree.map(lambda *a: jnp.stack(a), *params)
    opt_state = jax.vmap(tx.init)(params)
  else:
    params = params[0]
    opt_state = tx.init(params)
  noise_std = noise_multiplier * clip_norm
  coords_dev = jnp.asarray(coords)

  def run(state, ekey, data, b):
    idx, w, active, sampled = b
    params, opt_state, loss = epoch(*state, ekey, *data, idx, w, active, clip_norm, noise_std,
                                    coords_dev, sampled)
    return (params, opt_state), loss

  fingerprint = None
  if checkpoint_dir is not None:
    from mia_jax._io import hash_arrays
    fingerprint = {"config": dataclasses.asdict(config), "dp": [noise_multiplier, clip_norm,
                                                                  sampling, microbatch_size],
                   "seeds": [list(np.atleast_1d(s).tolist()) for s in seeds],
                   "members": hash_arrays(*members), "data": hash_arrays(x, y),
                   "model": repr(dict(model.spec))}
    if canaries is not None:
      fingerprint["gradient_canaries"] = hash_arrays(coords)
  (params, _), losses = run_epochs(
      run, (params, opt_state), batches, keys, (jnp.asarray(x), jnp.asarray(y)), config=config,
      stacked=stacked, description=description, progress=progress,
      checkpoint_dir=checkpoint_dir, fingerprint=fingerprint)
  return TrainResult({"params": params}, losses if stacked else losses[0])


class _DPBatches:
  """Every model's DP-SGD batches of an epoch, padded to common shapes, for
  :func:`mia_jax.train.run_epochs`: ``epoch(e) -> (idx int32[M, T, cap], w [M, T, cap],
  active bool[M, T], sampled bool[M, T, P])``. A sampled gradient canary (an index past
  the ``n_rows`` data rows) leaves the batch for ``sampled`` (its gradient is planted)."""

  def __init__(self, schedules: list[_Schedule], n_rows: int, num_canaries: int,
               stacked: bool, microbatch_size: int | None):
    self.schedules, self.n_rows, self.num_canaries = schedules, n_rows, num_canaries
    self.stacked = stacked
    self.cap = max(s.cap for s in schedules)
    self.steps = max(s.steps for s in schedules)
    if microbatch_size is not None and microbatch_size < self.cap:
      self.cap = -(-self.cap // microbatch_size) * microbatch_size
    else:
      microbatch_size = None
    self.microbatch_size = microbatch_size

  def epoch(self, e: int):
    m_count = len(self.schedules)
    idx = np.zeros((m_count, self.steps, self.cap), np.int32)
    w = np.zeros((m_count, self.steps, self.cap), np.float32)
    active = np.zeros((m_count, self.steps), bool)
    sampled = np.zeros((m_count, self.steps, self.num_canaries), bool)
    for m, s in enumerate(self.schedules):
      i_m, w_m = s.epoch(e)
      if self.num_canaries:  # sampled gradient canaries leave the batch for the planted sum
        virtual = (i_m >= self.n_rows) & (w_m > 0)
        t_at, slot = np.nonzero(virtual)
        sampled[m, t_at, i_m[t_at, slot] - self.n_rows] = True
        i_m, w_m = np.where(virtual, 0, i_m), np.where(virtual, 0.0, w_m).astype(np.float32)
      idx[m, :i_m.shape[0], :i_m.shape[1]] = i_m
      w[m, :w_m.shape[0], :w_m.shape[1]] = w_m
      active[m, :s.steps] = True
    out = (idx, w, active, sampled)
    return out if self.stacked else tuple(a[0] for a in out)


def train_model_dp(model: LayeredModel, x, y, *, config: TrainConfig = TrainConfig(),
                   noise_multiplier: float, clip_norm: float, seed: Seed = 0, indices=None,
                   sampling: str = "poisson", microbatch_size: int | None = None,
                   checkpoint_dir: str | None = None, progress=None,
                   description: str = "DP-SGD training", gradient_canaries=None
                   ) -> TrainResult:
  """Trains one model with DP-SGD (see the module docstring).

  Args:
    model: the architecture (no BatchNorm).
    x: float[N, *model.input_shape]; y: int[N].
    config: optimizer, learning rate, weight decay, epochs, batch size B (the expected
      batch size for Poisson sampling).
    noise_multiplier: sigma >= 0 (0: clipping only, no privacy).
    clip_norm: C > 0, per-example L2 clipping norm over all parameters.
    seed: int or tuple of ints; fixes initialization (as :func:`mia_jax.train.train_model`),
      sampling, noise and dropout.
    indices: optional int[n] rows of x to train on (default all); n is the dataset size
      the accounting uses.
    sampling: "poisson" (matches the accountant) or "shuffle" (fixed-size batches).
    microbatch_size: optional chunk size for per-example gradients (bounds memory);
      the padded batch is rounded up to a multiple of it.
    checkpoint_dir: optional directory for per-epoch training state; an interrupted run
      resumes from it with the same result.
    progress, description: an optional rich Progress and the bar's label (epochs).
    gradient_canaries: optional ``(coords int[P], included bool[P])``: Dirac gradient
      canaries (:mod:`mia_jax.canaries`); each included one is a training example (it
      counts in n) whose clipped gradient ``clip_norm * e_coords[j]`` is planted in the
      sum whenever Poisson sampling picks it.

  Returns:
    TrainResult(variables, losses[epochs]); the losses are the (non-private) mean
    training loss of the sampled examples, for diagnostics only.

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  noise_multiplier, clip_norm, microbatch_size = _check_dp_model(
      model, noise_multiplier, clip_norm, sampling, microbatch_size, config)
  x, y = check_model(model).check_inputs(x, y)
  indices = check_indices(indices, x.shape[0])
  planted = _check_gradient_canaries(model, gradient_canaries, 1)
  return _run_dp(model, x, y, [indices], [seed], config, noise_multiplier, clip_norm,
                 sampling, microbatch_size, stacked=False, checkpoint_dir=checkpoint_dir,
                 progress=progress, description=description, canaries=planted)


def _check_gradient_canaries(model, gradient_canaries, num_models: int):
  """``(coords int[P], included bool[num_models, P])`` checked against the model's
  parameter count, or None."""
  if gradient_canaries is None:
    return None
  try:
    coords, included = gradient_canaries
  except (TypeError, ValueError) as e:
    raise MiaInputError("gradient_canaries: expected (coords, included)") from e
  coords = np.asarray(coords)
  included = np.asarray(included)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(
      jax.eval_shape(model.init, jax.random.key(0))["params"]))
  if coords.ndim != 1 or not np.issubdtype(coords.dtype, np.integer) or coords.size == 0:
    raise MiaInputError(f"gradient_canaries: coords must be a non-empty int[P], got "
                        f"{coords.dtype}{list(coords.shape)}")
  if coords.min() < 0 or coords.max() >= n_params or np.unique(coords).size != coords.size:
    raise MiaInputError(f"gradient_canaries: coords must be distinct parameter coordinates "
                        f"in [0, {n_params})")
  if included.dtype != bool or included.size != num_models * coords.size:
    raise MiaInputError(f"gradient_canaries: included must be bool[{num_models}, "
                        f"{coords.size}], got {included.dtype}{list(included.shape)}")
  return coords, included.reshape(num_models, coords.size)


def initial_params(model: LayeredModel, seed: Seed):
  """The parameters DP-SGD (and :func:`mia_jax.train.train_model`) starts from with
  ``seed``: what a white-box auditor of gradient canaries compares the final ones to."""
  return model.init(jax.random.fold_in(jax_key(seed), 0))["params"]


def train_models_dp(model: LayeredModel, x, y, keep, *, config: TrainConfig = TrainConfig(),
                    noise_multiplier: float, clip_norm: float, seed: int = 0,
                    sampling: str = "poisson", microbatch_size: int | None = None,
                    first_model: int = 0, checkpoint_dir: str | None = None, progress=None,
                    description: str = "DP-SGD training", gradient_canaries=None
                    ) -> TrainResult:
  """Trains M models at once with DP-SGD, model m on the rows where ``keep[m]`` is True,
  with seed ``(seed, first_model + m)`` (as :func:`mia_jax.train.train_models`).

  Model m gets exactly the batches, noise and dropout keys that
  ``train_model_dp(..., indices=flatnonzero(keep[m]), seed=(seed, first_model + m))``
  gives it alone; only float32 rounding of the vmapped program differs. Its privacy is
  that model's own (its n_m = keep[m].sum() members set its sampling rate).

  ``gradient_canaries`` ``(coords int[P], included bool[M, P])``: as for
  :func:`train_model_dp`, model m planting the canaries ``included[m]`` marks.

  Returns:
    TrainResult with stacked variables (leading axis M) and losses[M, epochs].
  """
  from mia_jax._validation import as_array, check_seed
  noise_multiplier, clip_norm, microbatch_size = _check_dp_model(
      model, noise_multiplier, clip_norm, sampling, microbatch_size, config)
  seed = check_seed(seed, allow_tuple=False)
  first_model = check_positive_int(first_model, "first_model", minimum=0)
  x, y = check_model(model).check_inputs(x, y)
  keep = as_array(keep, "keep")
  if keep.ndim != 2 or keep.shape[1] != x.shape[0] or keep.dtype != bool:
    raise MiaInputError(f"keep: expected bool[M, {x.shape[0]}] to match x, got "
                        f"{keep.dtype}{list(keep.shape)}")
  empty = np.flatnonzero(keep.sum(1) == 0)
  if empty.size:
    raise MiaInputError(f"keep: model(s) {empty[:5].tolist()} have no training examples")
  members = [np.flatnonzero(k) for k in keep]
  seeds = [(int(seed), first_model + m) for m in range(keep.shape[0])]
  planted = _check_gradient_canaries(model, gradient_canaries, keep.shape[0])
  return _run_dp(model, x, y, members, seeds, config, noise_multiplier, clip_norm, sampling,
                 microbatch_size, stacked=True, checkpoint_dir=checkpoint_dir, progress=progress,
                 description=description, canaries=planted)


# -- accounting ----------------------------------------------------------------------------

def _check_accounting(noise_multiplier, q, steps, delta):
  noise_multiplier = check_in_range(noise_multiplier, "noise_multiplier", 0.0, np.inf,
                                    high_open=True)
  q = check_in_range(q, "sampling_rate", 0.0, 1.0, low_open=True)
  steps = check_positive_int(steps, "steps")
  delta = check_in_range(delta, "delta", 0.0, 1.0, low_open=True, high_open=True)
  return noise_multiplier, q, steps, delta


class MissingDependencyError(MiaInputError, ImportError):
  """An optional package a requested feature needs is not installed."""


def _import_dp_accounting():
  try:
    import dp_accounting  # noqa: PLC0415 - optional dependency, imported lazily.
  except ImportError as e:
    raise MissingDependencyError(
        "dp_epsilon/noise_multiplier: DP accounting needs the optional package dp-accounting "
        "(pip install 'mia-jax[dp]')") from e
  return dp_accounting


class _QuietAbsl:
  """Silences dp-accounting's per-order absl warnings (at large sampling rates some RDP
  orders fail to converge and are excluded; epsilon stays a valid upper bound over the
  remaining orders). Hundreds of them would otherwise flood a bisection's output."""

  def __enter__(self):
    import logging
    self.logger = logging.getLogger("absl")
    self.level = self.logger.level
    self.logger.setLevel(logging.ERROR)

  def __exit__(self, *exc):
    self.logger.setLevel(self.level)


def _rdp_accountant(noise_multiplier: float, q: float, steps: int):
  """RDP accountant after ``steps`` Poisson-subsampled Gaussian steps."""
  dpa = _import_dp_accounting()
  acc = dpa.rdp.RdpAccountant()
  event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(noise_multiplier))
  with _QuietAbsl():
    acc.compose(dpa.SelfComposedDpEvent(event, steps))
  return acc


def epsilon_for(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
  """Epsilon of ``steps`` Poisson-subsampled Gaussian steps (RDP accountant).

  Args:
    noise_multiplier: sigma >= 0 (noise std / clip norm); 0 gives ``inf``.
    sampling_rate: q in (0, 1].
    steps: number of steps >= 1.
    delta: in (0, 1).

  Returns:
    epsilon (float, possibly ``inf``).
  """
  noise_multiplier, q, steps, delta = _check_accounting(noise_multiplier, sampling_rate,
                                                        steps, delta)
  if noise_multiplier == 0.0:
    return math.inf
  acc = _rdp_accountant(noise_multiplier, q, steps)
  with _QuietAbsl():
    return float(acc.get_epsilon(delta))


def training_epsilon(num_examples: int, *, config: TrainConfig, noise_multiplier: float,
                     delta: float) -> float:
  """Epsilon of :func:`train_model_dp` on ``num_examples`` examples with ``config``.

  Uses ``q = B / n`` and ``epochs * ceil(n / B)`` steps (exact for
  ``sampling="poisson"``; see the module docstring for "shuffle").
  """
  n = check_positive_int(num_examples, "num_examples")
  return epsilon_for(noise_multiplier, sampling_rate(n, config.batch_size),
                     config.epochs * steps_per_epoch(n, config.batch_size), delta)


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                      *, tol: float = 1e-3, max_noise: float = 1e4) -> float:
  """Smallest noise multiplier (within ``tol``) with ``epsilon_for(...) <= target_epsilon``.

  Bisection on sigma (epsilon decreases with sigma); the returned sigma is the upper
  end of the final bracket, so its epsilon never exceeds the target.

  Raises:
    MiaInputError: ``target_epsilon <= 0`` or bad accounting arguments, or no sigma up
      to ``max_noise`` reaches the target.
  """
  target = check_in_range(target_epsilon, "target_epsilon", 0.0, np.inf, low_open=True,
                          high_open=True)
  _, q, steps, delta = _check_accounting(1.0, sampling_rate, steps, delta)
  tol = check_in_range(tol, "tol", 0.0, np.inf, low_open=True, high_open=True)
  eps = lambda s: epsilon_for(s, q, steps, delta)  # noqa: E731
  lo, hi = 0.0, 1.0
  while eps(hi) > target:
    lo, hi = hi, 2.0 * hi
    if hi > max_noise:
      raise MiaInputError(f"target_epsilon: {target} is not reached with noise_multiplier <= "
                          f"{max_noise} (q={q}, steps={steps}, delta={delta})")
  while hi - lo > tol:
    mid = 0.5 * (lo + hi)
    if eps(mid) <= target:
      hi = mid
    else:
      lo = mid
  return hi


# -- bounds on membership inference ---------------------------------------------------------

def _check_eps_delta(eps, delta):
  eps = check_in_range(eps, "epsilon", 0.0, np.inf, high_open=True)
  delta = check_in_range(delta, "delta", 0.0, 1.0, high_open=True)
  return eps, delta


def yeom_advantage_bound(eps: float, delta: float = 0.0) -> float:
  """Yeom et al. (CSF 2018): membership advantage ``TPR - FPR <= e^eps - 1`` (+ delta).

  Follows from ``TPR <= e^eps FPR + delta`` with ``FPR <= 1``; vacuous (>= 1) for
  ``eps >= ln 2``. Not clipped to 1, so the vacuity is visible.
  """
  eps, delta = _check_eps_delta(eps, delta)
  return (math.expm1(eps) if eps < 700 else math.inf) + delta


def yeom_accuracy_bound(eps: float, delta: float = 0.0) -> float:
  """Balanced-prior accuracy ``(1 + advantage) / 2 <= (e^eps + delta) / 2`` (Yeom et al.).

  Vacuous (>= 1) for ``eps >= ln 2`` (with delta = 0). Not clipped.
  """
  return 0.5 * (1.0 + yeom_advantage_bound(eps, delta))


def tight_advantage_bound(eps: float, delta: float = 0.0) -> float:
  """Tight advantage ``(e^eps - 1 + 2 delta) / (e^eps + 1)``; ``tanh(eps / 2)`` at delta = 0.

  The maximum of ``TPR - FPR`` over the (eps, delta)-DP hypothesis-testing region
  (Kairouz et al. 2015): ``TPR <= e^eps FPR + delta`` and
  ``1 - FPR <= e^eps (1 - TPR) + delta``.
  """
  eps, delta = _check_eps_delta(eps, delta)
  if delta == 0.0:
    return math.tanh(eps / 2.0)
  e = math.exp(eps) if eps < 700 else math.inf
  return 1.0 if math.isinf(e) else (e - 1.0 + 2.0 * delta) / (e + 1.0)


def tight_accuracy_bound(eps: float, delta: float = 0.0) -> float:
  """Tight balanced-prior accuracy ``(e^eps + delta) / (1 + e^eps)``; ``e^eps / (1 + e^eps)``
  at delta = 0 (never vacuous for finite eps)."""
  return 0.5 * (1.0 + tight_advantage_bound(eps, delta))


def tpr_bound(fpr, eps: float, delta: float = 0.0):
  """Largest TPR of any MI attack at false-positive rate ``fpr`` under (eps, delta)-DP.

  ``min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR))`` -- the first term is the
  usual ``TPR <= e^eps FPR + delta``; the second is the same constraint applied to the
  complementary test (it only binds at large FPR).

  Args:
    fpr: a number or array of numbers in [0, 1].
    eps: >= 0; delta: in [0, 1).

  Returns:
    float or float64 array shaped like ``fpr``.
  """
  eps, delta = _check_eps_delta(eps, delta)
  f = np.asarray(fpr, dtype=np.float64) if not isinstance(fpr, bool) else None
  if f is None or not np.all(np.isfinite(f)) or np.any((f < 0) | (f > 1)):
    raise MiaInputError(f"fpr: expected values in [0, 1], got {fpr!r}")
  with np.errstate(over="ignore"):
    # e^eps may overflow to inf; at fpr = 0 the term is 0 (not inf * 0 = NaN).
    scaled = np.where(f > 0, np.exp(eps) * np.where(f > 0, f, 1.0), 0.0)
    t = np.minimum.reduce([np.ones_like(f), scaled + delta,
                           1.0 - np.exp(-eps) * (1.0 - delta - f)])
  return float(t) if t.ndim == 0 else t


def membership_advantage_bounds(eps: float, delta: float = 0.0) -> dict[str, float]:
  """All bounds at (eps, delta): ``{"yeom_advantage", "yeom_accuracy", "tight_advantage",
  "tight_accuracy"}`` (see the individual functions)."""
  return {
      "yeom_advantage": yeom_advantage_bound(eps, delta),
      "yeom_accuracy": yeom_accuracy_bound(eps, delta),
      "tight_advantage": tight_advantage_bound(eps, delta),
      "tight_accuracy": tight_accuracy_bound(eps, delta),
  }
