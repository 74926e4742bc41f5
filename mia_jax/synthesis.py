"""Model-based synthesis of shadow training data (Shokri et al. 2017, Algorithm 1).

An attacker without data can query the target model to synthesize records that the
target classifies with high confidence: a hill climb in record space per requested
class ``c``::

    x <- random record; y*_c <- 0; j <- 0; k <- k_max
    for iteration = 1 .. max_iters:
      y <- f_target(x)                                   # one query
      if y_c >= y*_c:                                    # accept
        if y_c > conf_min and c == argmax(y):
          if rand() < y_c: return x                      # sample: emit the record
        x* <- x; y*_c <- y_c; j <- 0
      else:
        j <- j + 1
        if j > rej_max: k <- max(k_min, ceil(k / 2)); j <- 0
      x <- x* with k features chosen uniformly at random resampled
    return failure

:func:`synthesize` runs this for many records at once, in one jitted
``lax.while_loop``: every record has its own class, current/best record, ``k``, ``j``,
done flag and query counter; each iteration queries the target once on the whole
batch ``[R, D]`` and counts one query for every record still searching. The loop
ends when every record is done or after ``max_iters`` iterations.

Features are binary by default (Purchase, Location): the initial record and every
resampled feature are uniform on {0, 1}. ``feature_sampler`` changes that distribution
for other feature types. It maps i.i.d. uniforms ``u`` float[R, D] in [0, 1) to feature
values float[R, D] (an inverse-CDF transform, which broadcasts per-feature parameters),
e.g. :func:`bernoulli_sampler` for sparse binary data or :func:`uniform_sampler` for
real values in [0, 1). Taking uniforms rather than a key lets each iteration use ONE
PRNG draw for everything (threefry is by far the costliest part to compile on CPU).

``query_fn`` must be a JAX-traceable function ``float[B, D] -> probs float[B, K]``
(e.g. ``lambda x: apply_defenses(model.apply(variables, x), defenses)``); it is
compiled into the loop. Compiled loops are cached per (query_fn, feature_sampler,
shapes), so pass the same function object to reuse a compilation.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import MiaInputError, as_array, check_in_range, check_positive_int

QueryFn = Callable[[jax.Array], jax.Array]
FeatureSampler = Callable[[jax.Array], jax.Array]

__all__ = ["SynthesisResult", "bernoulli_sampler", "binary_sampler", "synthesize",
           "uniform_sampler"]


def binary_sampler(u: jax.Array) -> jax.Array:
  """Uniform {0, 1} features as float32 (the default): ``u < 0.5``."""
  return (u < 0.5).astype(jnp.float32)


def uniform_sampler(u: jax.Array) -> jax.Array:
  """Uniform [0, 1) real-valued features (the uniforms themselves)."""
  return u.astype(jnp.float32)


def bernoulli_sampler(p) -> FeatureSampler:
  """Binary features that are 1 with probability ``p`` (a number, or float[D] per feature).

  Each call returns a new function; reuse it across calls to share the compilation.
  """
  p_arr = np.asarray(p, np.float32)
  if p_arr.ndim > 1 or not np.all((p_arr >= 0) & (p_arr <= 1)):
    raise MiaInputError(f"p: expected a probability or float[D] of probabilities, got {p!r}")
  p_dev = jnp.asarray(p_arr)
  return lambda u: (u < p_dev).astype(jnp.float32)


class SynthesisResult(NamedTuple):
  """Output of :func:`synthesize` (host NumPy arrays).

  Attributes:
    records: float32[R, D]; the emitted record where ``success``, else the best record
      found (highest y_c) when the search stopped.
    labels: int32[R], the requested class of each record.
    queries: int32[R], target queries spent on each record.
    success: bool[R], True where Algorithm 1 emitted the record.
  """
  records: np.ndarray
  labels: np.ndarray
  queries: np.ndarray
  success: np.ndarray


class _State(NamedTuple):
  it: jax.Array        # int32[] iterations run
  x: jax.Array         # float[R, D] record to query next
  x_best: jax.Array    # float[R, D] x*
  y_best: jax.Array    # float[R] y*_c
  j: jax.Array         # int32[R] consecutive rejections
  k: jax.Array         # int32[R] features randomized per proposal
  done: jax.Array      # bool[R]
  success: jax.Array   # bool[R]
  out: jax.Array       # float[R, D] emitted records
  queries: jax.Array   # int32[R]


def _randomize(u: jax.Array, values: jax.Array, x_best: jax.Array, k: jax.Array) -> jax.Array:
  """x_best [R, D] with k[r] features of row r replaced by ``values`` [R, D].

  The replaced features are those whose uniform ``u`` [R, D] ranks among the k smallest
  of the row: a uniformly random k-subset (exactly k, ties broken by position).
  """
  rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
  return jnp.where(rank < k[:, None], values.astype(x_best.dtype), x_best)


@functools.lru_cache(maxsize=16)
def _compiled(query_fn: QueryFn, sampler: FeatureSampler, num_records: int,
              num_features: int):
  r, d = num_records, num_features

  def run(key, classes, k_max, k_min, conf_min, rej_max, max_iters):
    zeros = jnp.zeros((r, d), jnp.float32)
    # Iteration 0 "randomizes all D features of x*": the random initial record.
    state = _State(
        it=jnp.zeros((), jnp.int32), x=zeros, x_best=zeros, y_best=jnp.zeros(r),
        j=jnp.zeros(r, jnp.int32), k=jnp.full(r, d, jnp.int32), done=jnp.zeros(r, bool),
        success=jnp.zeros(r, bool), out=zeros, queries=jnp.zeros(r, jnp.int32))

    def cond(s: _State):
      return (s.it < max_iters) & ~jnp.all(s.done)

    def body(s: _State):
      # One uniform draw per iteration: columns [0, D) pick the features to randomize,
      # [D, 2D) give their new values (through the sampler), 2D is the sampling test.
      u = jax.random.uniform(jax.random.fold_in(key, s.it), (r, 2 * d + 1))
      x = _randomize(u[:, :d], sampler(u[:, d:2 * d]), s.x_best, s.k)
      x = jnp.where(s.done[:, None], s.x, x)
      probs = query_fn(x)
      active = ~s.done
      y_c = jnp.take_along_axis(probs, classes[:, None], axis=-1)[:, 0]
      accept = active & (y_c >= s.y_best)
      confident = (y_c > conf_min) & (jnp.argmax(probs, axis=-1) == classes)
      emit = accept & confident & (u[:, 2 * d] < y_c)
      improve = accept & ~emit
      reject = active & ~accept
      # k was D only to draw the initial record; the search starts at k_max.
      k = jnp.where(s.it == 0, k_max, s.k)
      j = jnp.where(improve, 0, jnp.where(reject, s.j + 1, s.j))
      halve = reject & (j > rej_max)
      k = jnp.where(halve, jnp.maximum(k_min, (k + 1) // 2), k)
      j = jnp.where(halve, 0, j)
      return _State(
          it=s.it + 1, x=x, x_best=jnp.where(improve[:, None], x, s.x_best),
          y_best=jnp.where(improve, y_c, s.y_best), j=j, k=k, done=s.done | emit,
          success=s.success | emit, out=jnp.where(emit[:, None], x, s.out),
          queries=s.queries + active.astype(jnp.int32))

    s = jax.lax.while_loop(cond, body, state)
    records = jnp.where(s.success[:, None], s.out, s.x_best)
    return records, s.queries, s.success

  return jax.jit(run)


def synthesize(query_fn: QueryFn, *, num_records: int, num_features: int, classes,
               k_max: int, k_min: int = 1, conf_min: float = 0.2, rej_max: int = 20,
               max_iters: int = 1000, key: jax.Array,
               feature_sampler: FeatureSampler = binary_sampler) -> SynthesisResult:
  """Synthesizes records the target classifies confidently (Algorithm 1, vectorized).

  Args:
    query_fn: JAX-traceable ``float[B, D] -> probs float[B, K]`` (the target's API).
    num_records: R, records searched in parallel.
    num_features: D.
    classes: the class of each record: an int (all records) or int[R], in ``[0, K)``.
    k_max: features randomized per proposal at the start, 1 <= k_max <= D.
    k_min: smallest k after halvings, 1 <= k_min <= k_max.
    conf_min: confidence a record must exceed to be emitted, in [0, 1].
    rej_max: consecutive rejections before k is halved, >= 0.
    max_iters: iterations (queries per record) at most, >= 1.
    key: typed PRNG key (``jax.random.key``); same key, same result.
    feature_sampler: ``u float[R, D] -> float[R, D]`` maps uniforms in [0, 1) to feature
      values (default :func:`binary_sampler`).

  Returns:
    :class:`SynthesisResult` (records, labels, queries, success), NumPy arrays.

  Raises:
    MiaInputError: a bad argument, named in the message (checked before compute, with
      ``jax.eval_shape`` for the output shape of ``query_fn``).
  """
  if not callable(query_fn):
    raise MiaInputError(f"query_fn: expected a callable float[B, D] -> float[B, K], got "
                        f"{query_fn!r}")
  if not callable(feature_sampler):
    raise MiaInputError(f"feature_sampler: expected a callable float[R, D] uniforms -> "
                        f"float[R, D] values, got {feature_sampler!r}")
  num_records = check_positive_int(num_records, "num_records")
  num_features = check_positive_int(num_features, "num_features")
  k_max = check_positive_int(k_max, "k_max")
  if k_max > num_features:
    raise MiaInputError(f"k_max: expected at most num_features={num_features}, got {k_max}")
  k_min = check_positive_int(k_min, "k_min")
  if k_min > k_max:
    raise MiaInputError(f"k_min: expected k_min <= k_max={k_max}, got {k_min}")
  conf_min = check_in_range(conf_min, "conf_min", 0.0, 1.0)
  rej_max = check_positive_int(rej_max, "rej_max", minimum=0)
  max_iters = check_positive_int(max_iters, "max_iters")
  if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()):
    raise MiaInputError(f"key: expected one typed key from jax.random.key(seed), got {key!r}")
  x_spec = jax.ShapeDtypeStruct((num_records, num_features), jnp.float32)
  try:
    out = jax.eval_shape(query_fn, x_spec)
  except Exception as e:  # noqa: BLE001 - re-raised with the argument's name.
    raise MiaInputError(f"query_fn: failed on float32[{num_records}, {num_features}] "
                        f"inputs ({type(e).__name__}: {e})") from e
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != num_records:
    raise MiaInputError(f"query_fn: expected probabilities float[{num_records}, K], got "
                        f"{getattr(out, 'shape', out)}")
  num_classes = int(out.shape[1])
  try:
    s_out = jax.eval_shape(feature_sampler, x_spec)
  except Exception as e:  # noqa: BLE001 - re-raised with the argument's name.
    raise MiaInputError(f"feature_sampler: failed on float32[{num_records}, {num_features}] "
                        f"uniforms ({type(e).__name__}: {e})") from e
  if getattr(s_out, "shape", None) != (num_records, num_features):
    raise MiaInputError(f"feature_sampler: expected values of the uniforms' shape "
                        f"{(num_records, num_features)}, got {getattr(s_out, 'shape', s_out)}")
  cls = as_array(classes, "classes")
  if cls.ndim == 0:
    cls = np.full(num_records, cls)
  if cls.shape != (num_records,):
    raise MiaInputError(f"classes: expected an int or int[{num_records}], got shape {cls.shape}")
  if not np.issubdtype(cls.dtype, np.integer):
    raise MiaInputError(f"classes: expected integer classes, got dtype={cls.dtype}")
  if cls.min() < 0 or cls.max() >= num_classes:
    raise MiaInputError(f"classes: expected values in [0, {num_classes}) (query_fn returns "
                        f"K={num_classes}), got range [{cls.min()}, {cls.max()}]")
  cls = cls.astype(np.int32)
  run = _compiled(query_fn, feature_sampler, num_records, num_features)
  records, queries, success = run(key, jnp.asarray(cls), k_max, k_min, conf_min, rej_max,
                                  max_iters)
  return SynthesisResult(np.asarray(records, np.float32), cls, np.asarray(queries, np.int32),
                         np.asarray(success, bool))
