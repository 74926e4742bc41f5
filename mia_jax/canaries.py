"""Canaries for privacy audits: examples (or gradients) inserted into the target's
training with probability 1/2 each, so that what an attack guesses about them measures
the training algorithm's privacy (:mod:`mia_jax.privacy_audit`).

Kinds (``CANARY_KINDS``):

``mislabeled``   a real example (from the attacker's auxiliary data, then removed from it)
                 with a label drawn uniformly from the other classes: the canaries of ML
                 Privacy Meter's one-run audit and of Steinke et al. (2023).
``ood``          out-of-distribution inputs: uniform noise over the data's value range
                 (fair coin flips for binary features), with a random label.
``input-space``  crafted inputs in the spirit of ClipBKD (Jagielski, Ullman & Oprea 2020):
                 a point far out along the directions in which the data varies least
                 (the smallest principal components of the auxiliary data), as far from the
                 mean as the data's 90th-percentile example, clipped to the data's range,
                 with a random label -- an input the rest of the data barely explains.
``gradient``     Dirac gradient canaries for white-box DP-SGD audits (Nasr et al. 2021,
                 2023; Steinke et al. 2023): canary j is the gradient ``C e_{k_j}`` (the
                 clip norm C at one parameter coordinate ``k_j``), planted directly into
                 DP-SGD's clipped-gradient sum whenever Poisson sampling picks it, like an
                 example's. The attack reads the final weights: the score of canary j is
                 how far coordinate ``k_j`` moved against its gradient,
                 ``theta_0[k_j] - theta_T[k_j]``. The coordinates are those the data moves
                 least (smallest mean absolute per-example gradient at the initial
                 weights, on the auxiliary data; :func:`quiet_coordinates`): the data's
                 own updates there would hide the canaries. The choice does not depend on
                 the coin flips, so the audit stays valid.

Inclusion: ``included[r, j]`` is an independent fair coin per canary and training run
(seeded, saved with the run); an included canary is part of that run's training set, and
of the dataset size the accountant uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mia_jax._validation import MiaInputError, check_positive_int
from mia_jax.streams import stream

CANARY_KINDS = ("mislabeled", "ood", "input-space", "gradient")
GRADIENT_NEEDS_DP = (
    "canary_kind: 'gradient' canaries are planted in DP-SGD's clipped-gradient sum; train "
    "with DP-SGD (--dp-epsilon, or --noise-multiplier; --noise-multiplier 0 clips without "
    "noise)")
MIN_CANARIES = 10
"""Fewer canaries cannot give a bound: both sides need guesses."""


@dataclasses.dataclass(frozen=True)
class Canaries:
  """The canaries of one audit.

  Attributes:
    kind: one of :data:`CANARY_KINDS`.
    included: bool[R, N] -- canary j is in training run r.
    x, y: the canary examples ``float[N, *feature_shape]``, ``int[N]`` (input kinds).
    source: int[N] rows of the pooled data the mislabeled canaries copy (else None).
    coords: int[N] flat parameter coordinates of gradient canaries (else None).
  """
  kind: str
  included: np.ndarray
  x: np.ndarray | None = None
  y: np.ndarray | None = None
  source: np.ndarray | None = None
  coords: np.ndarray | None = None

  @property
  def count(self) -> int:
    return int(self.included.shape[1])

  @property
  def runs(self) -> int:
    return int(self.included.shape[0])

  @property
  def is_input(self) -> bool:
    return self.kind != "gradient"

  def arrays(self) -> dict[str, np.ndarray]:
    """What ``canaries.npz`` holds."""
    out = {"included": self.included}
    for k in ("x", "y", "source", "coords"):
      if getattr(self, k) is not None:
        out[k] = getattr(self, k)
    return out


def check_request(kind: str, count: int, runs: int, *, target_size: int, pool_size: int,
                  num_classes: int, feature_shape, uses_dp: bool, params_only: bool,
                  num_params: int) -> None:
  """Every check of a canary request that can be made before anything is trained."""
  if kind not in CANARY_KINDS:
    raise MiaInputError(f"canary_kind: expected one of {CANARY_KINDS}, got {kind!r}")
  check_positive_int(count, "canaries", minimum=MIN_CANARIES)
  check_positive_int(runs, "canary_runs")
  if count > target_size:
    raise MiaInputError(
        f"canaries: {count} canaries (about {count // 2} included) cannot fit in a training "
        f"set of {target_size} examples: at most {target_size} (as many as the members), "
        "so the canaries do not outnumber the data")
  if kind == "mislabeled":
    if num_classes < 2:
      raise MiaInputError(f"canary_kind: 'mislabeled' needs labels of at least 2 classes; the "
                          f"dataset has {num_classes}")
    if count > pool_size // 2:
      raise MiaInputError(
          f"canaries: 'mislabeled' canaries are real examples taken from the attacker's "
          f"{pool_size} auxiliary examples; at most half of them ({pool_size // 2}) can be "
          f"canaries, got {count}")
  if kind == "input-space" and int(np.prod(feature_shape)) < 2:
    raise MiaInputError("canary_kind: 'input-space' canaries are crafted along the data's "
                        "least-varying directions; the data has a single feature")
  if kind in ("ood", "input-space") and num_classes < 1:
    raise MiaInputError(f"canary_kind: {kind!r} canaries need class labels")
  if kind == "gradient":
    if not uses_dp:
      raise MiaInputError(GRADIENT_NEEDS_DP)
    if not params_only:
      raise MiaInputError("canary_kind: 'gradient' canaries need a model whose only "
                          "variables are parameters (no BatchNorm)")
    if count > num_params:
      raise MiaInputError(f"canaries: {count} gradient canaries need as many parameter "
                          f"coordinates; the model has {num_params}")


def draw_inclusion(count: int, runs: int, seed: int) -> np.ndarray:
  """bool[runs, count]: independent fair coins (the named stream "canary-inclusion")."""
  rng = np.random.default_rng(stream(seed, "canary-inclusion"))
  return rng.random((runs, count)) < 0.5


def _random_labels(rng, n, num_classes):
  return rng.integers(0, num_classes, n).astype(np.int32)


def _is_binary(a: np.ndarray) -> bool:
  return bool(np.all((a == 0) | (a == 1)))


def make_canaries(kind: str, count: int, runs: int, *, x: np.ndarray, y: np.ndarray,
                  pool: np.ndarray, num_classes: int, seed: int,
                  num_params: int | None = None,
                  coordinate_scores: np.ndarray | None = None) -> Canaries:
  """Builds ``count`` canaries of ``kind`` and their inclusion in ``runs`` runs.

  Args:
    x, y: the pooled data; ``pool`` (int[A]) the rows the attacker holds (the auxiliary
      data): mislabeled canaries are drawn from it, the other kinds take the data's range
      and principal directions from it.
    num_classes: K.
    seed: the audit's seed (canaries draw from the named stream "canaries").
    num_params: the model's parameter count (gradient canaries).
    coordinate_scores: optional float[num_params]: gradient canaries take the ``count``
      coordinates of lowest score (ties broken at random); default: uniformly random ones.
  """
  included = draw_inclusion(count, runs, seed)
  rng = np.random.default_rng(stream(seed, "canaries"))
  if kind == "gradient":
    if num_params is None:
      raise MiaInputError("num_params: gradient canaries need the model's parameter count")
    if coordinate_scores is None:
      coords = rng.choice(int(num_params), count, replace=False)
    else:
      scores = np.asarray(coordinate_scores, np.float64).ravel()
      if scores.size != num_params:
        raise MiaInputError(f"coordinate_scores: expected {num_params} values, got "
                            f"{scores.size}")
      coords = np.lexsort((rng.random(scores.size), scores))[:count]
    coords = np.sort(coords).astype(np.int64)
    return Canaries(kind, included, coords=coords)
  pool = np.asarray(pool, np.int64)
  if kind == "mislabeled":
    source = np.sort(rng.choice(pool, count, replace=False))
    shift = rng.integers(1, num_classes, count)  # a label from the other K - 1 classes
    cy = ((np.asarray(y)[source].astype(np.int64) + shift) % num_classes).astype(np.int32)
    return Canaries(kind, included, x=np.asarray(x[source]), y=cy, source=source)
  shape = x.shape[1:]
  sample = pool if pool.size <= 4096 else np.sort(rng.choice(pool, 4096, replace=False))
  data = np.asarray(x[sample], np.float64).reshape(sample.size, -1)
  lo, hi = float(data.min()), float(data.max())
  if kind == "ood":
    if _is_binary(data):
      cx = (rng.random((count, data.shape[1])) < 0.5).astype(np.float64)
    else:
      cx = rng.uniform(lo, hi, (count, data.shape[1]))
  else:  # input-space: far along the least-varying principal directions
    mean = data.mean(0)
    centred = data - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=True)
    d = data.shape[1]
    k = max(1, d // 10)
    bottom = vt[d - k:]  # [k, D], the k smallest-variance directions (SVD sorts descending)
    z = rng.normal(size=(count, k))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    radius = float(np.quantile(np.linalg.norm(centred, axis=1), 0.9)) or 1.0
    cx = np.clip(mean + radius * (z @ bottom), lo, hi)
  cx = cx.astype(x.dtype).reshape(count, *shape)
  return Canaries(kind, included, x=cx, y=_random_labels(rng, count, num_classes))


def quiet_coordinates(model, params, x, y, *, max_examples: int = 256,
                      chunk: int = 32) -> np.ndarray:
  """float[P]: each parameter coordinate's mean absolute per-example loss gradient at
  ``params`` over (at most ``max_examples`` of) ``x, y``, flattened as ``ravel_pytree``
  flattens the parameters. Low = the data barely moves that coordinate."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax.flatten_util import ravel_pytree

  def loss(p, xi, yi):
    logits = model.apply({"params": p}, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  @jax.jit
  def abs_grads(p, xb, yb):
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, xb, yb)
    return jnp.sum(jax.vmap(lambda t: jnp.abs(ravel_pytree(t)[0]))(g), 0)

  n = min(int(max_examples), x.shape[0])
  total = None
  for i in range(0, n, chunk):
    part = abs_grads(params, jnp.asarray(x[i:min(n, i + chunk)]),
                     jnp.asarray(y[i:min(n, i + chunk)]))
    total = part if total is None else total + part
  return np.asarray(total, np.float64) / max(n, 1)


def gradient_scores(initial_params, final_params, coords, *, stacked: bool = False
                    ) -> np.ndarray:
  """Gradient canaries' scores ``theta_0[k_j] - theta_T[k_j]`` (higher = included: the
  planted gradient ``+C e_k`` pushes coordinate k down), on parameters flattened as
  ``jax.flatten_util.ravel_pytree`` does (the order the trainer plants in). ``stacked``:
  both parameter trees carry a leading axis of R runs; float[R, N] (else float[N])."""
  import jax
  from jax.flatten_util import ravel_pytree
  coords = np.asarray(coords, np.int64)

  def one(p0, p1):
    f0, _ = ravel_pytree(p0)
    f1, _ = ravel_pytree(p1)
    return np.asarray(f0[coords], np.float64) - np.asarray(f1[coords], np.float64)

  if not stacked:
    return one(initial_params, final_params)
  r = jax.tree.leaves(final_params)[0].shape[0]
  take = lambda t, i: jax.tree.map(lambda a: a[i], t)  # noqa: E731
  return np.stack([one(take(initial_params, i), take(final_params, i)) for i in range(r)])
