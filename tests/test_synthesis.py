"""Tests for mia_jax.synthesis (Shokri et al. Algorithm 1, vectorized)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.synthesis import _randomize, bernoulli_sampler, synthesize, uniform_sampler

K, D = 3, 30


def _linear_weights() -> jnp.ndarray:
  """Class c likes features [10c, 10c + 10) and dislikes the others."""
  w = np.full((K, D), -0.5, np.float32)
  for c in range(K):
    w[c, 10 * c:10 * (c + 1)] = 1.0
  return jnp.asarray(w)


W = _linear_weights()


def linear_target(x):
  """A fixed, hand-built linear model over binary features: probs float[B, K]."""
  return jax.nn.softmax(x @ W.T, axis=-1)


def _run(key=0, conf_min=0.8, max_iters=300, num_records=30, query_fn=linear_target, **kw):
  return synthesize(query_fn, num_records=num_records, num_features=D,
                    classes=np.arange(num_records) % K, k_max=kw.pop("k_max", 10), k_min=1,
                    conf_min=conf_min, rej_max=5, max_iters=max_iters,
                    key=jax.random.key(key), **kw)


def test_synthesized_records_are_classified_as_requested():
  res = _run()
  assert res.records.shape == (30, D) and res.labels.shape == (30,)
  np.testing.assert_array_equal(res.labels, np.arange(30) % K)
  assert res.success.mean() >= 0.9
  probs = np.asarray(linear_target(jnp.asarray(res.records)))
  ok = res.success
  assert np.all(probs[ok].argmax(1) == res.labels[ok])
  assert np.all(probs[ok, res.labels[ok]] > 0.8)
  assert set(np.unique(res.records)) <= {0.0, 1.0}  # binary features by default
  assert np.all((res.queries >= 1) & (res.queries <= 300))


def test_query_counting_on_a_constant_target_with_real_valued_features():
  # The target always answers class 0 with probability 1: a class-0 record is emitted at
  # its first query (rand() < 1); a class-1 record has y_c = 0 forever: every proposal
  # is accepted (0 >= 0) but never confident, so it spends all max_iters queries.
  def constant(x):
    return jnp.broadcast_to(jnp.array([1.0, 0.0]), (x.shape[0], 2))
  res = synthesize(constant, num_records=6, num_features=D, classes=np.array([0, 1] * 3),
                   k_max=4, conf_min=0.0, rej_max=3, max_iters=17, key=jax.random.key(1),
                   feature_sampler=uniform_sampler)
  np.testing.assert_array_equal(res.success, [True, False] * 3)
  np.testing.assert_array_equal(res.queries, [1, 17] * 3)
  # feature_sampler: real-valued features in [0, 1) instead of bits.
  assert np.all((res.records >= 0) & (res.records < 1))
  assert not set(np.unique(res.records)) <= {0.0, 1.0}


def test_unreachable_confidence_spends_max_iters_and_returns_best():
  res = _run(conf_min=1.0, max_iters=40)
  assert not res.success.any()
  np.testing.assert_array_equal(res.queries, np.full(30, 40))
  # The best record found is far better than chance for its class.
  probs = np.asarray(linear_target(jnp.asarray(res.records)))
  assert np.mean(probs[np.arange(30), res.labels]) > 0.5


def test_same_key_same_result_other_key_differs():
  a, b, c = _run(key=3), _run(key=3), _run(key=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.records, c.records)


def test_randomize_changes_exactly_k_features():
  x = jnp.zeros((5, D))
  k = jnp.array([1, 2, 5, 10, D])
  u = jax.random.uniform(jax.random.key(0), (5, D))
  out = _randomize(u, jnp.full((5, D), 2.0), x, k)
  np.testing.assert_array_equal(np.sum(np.asarray(out) == 2.0, axis=1), np.asarray(k))


@pytest.mark.parametrize("kwargs, name", [
    (dict(k_max=D + 1), "k_max"), (dict(k_max=0), "k_max"), (dict(k_min=5, k_max=4), "k_min"),
    (dict(conf_min=1.5), "conf_min"), (dict(max_iters=0), "max_iters"),
    (dict(rej_max=-1), "rej_max"), (dict(classes=3), "classes"),
    (dict(classes=np.zeros(7, int)), "classes"), (dict(classes=np.zeros(4)), "classes"),
    (dict(key=0), "key"), (dict(num_records=0), "num_records"),
    (dict(query_fn=lambda x: x[:, 0]), "query_fn"), (dict(query_fn=3), "query_fn"),
    (dict(feature_sampler=lambda u: jnp.zeros(3)), "feature_sampler"),
    (dict(feature_sampler=lambda k, s: k), "feature_sampler"),
])
def test_errors_name_the_argument(kwargs, name):
  args = dict(num_records=4, num_features=D, classes=0, k_max=4, k_min=1, conf_min=0.5,
              rej_max=2, max_iters=5, key=jax.random.key(0))
  query_fn = kwargs.pop("query_fn", linear_target)
  args.update(kwargs)
  with pytest.raises(MiaInputError, match=name):
    synthesize(query_fn, **args)


def test_bernoulli_sampler():
  u = jnp.array([[0.05, 0.5, 0.95]])
  np.testing.assert_array_equal(bernoulli_sampler(0.1)(u), [[1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(bernoulli_sampler([0.0, 0.6, 1.0])(u), [[0.0, 1.0, 1.0]])
  with pytest.raises(MiaInputError, match="p"):
    bernoulli_sampler(1.5)
