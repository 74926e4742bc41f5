"""Tests for mia_jax.defenses: hand-computed outputs, composition order, parse errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax import defenses as D
from mia_jax._validation import MiaInputError


def test_top_k_keeps_k_largest_without_renormalizing():
  p = jnp.array([0.1, 0.5, 0.15, 0.25])
  np.testing.assert_allclose(D.top_k(p, 2), [0.0, 0.5, 0.0, 0.25])
  np.testing.assert_allclose(D.top_k(p, 2, renormalize=True), [0.0, 2 / 3, 0.0, 1 / 3],
                             rtol=1e-6)
  np.testing.assert_allclose(D.top_k(p, 4), p)
  np.testing.assert_allclose(D.top_k(p, 1), [0.0, 0.5, 0.0, 0.0])


def test_top_k_ties_keep_exactly_k_lower_index_first():
  p = jnp.array([0.3, 0.3, 0.4])
  np.testing.assert_allclose(D.top_k(p, 2), [0.3, 0.0, 0.4])


def test_round_and_label_only_known_values():
  p = jnp.array([0.123, 0.456, 0.421])
  np.testing.assert_allclose(D.round_probs(p, 1), [0.1, 0.5, 0.4], atol=1e-7)
  np.testing.assert_allclose(D.round_probs(p, 2), [0.12, 0.46, 0.42], atol=1e-7)
  np.testing.assert_allclose(D.round_probs(p, 0), [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(D.label_only(p), [0.0, 1.0, 0.0])
  np.testing.assert_array_equal(D.label_only(jnp.array([0.5, 0.5])), [1.0, 0.0])


def test_temperature_known_values():
  z = jnp.log(jnp.array([1.0, 2.0, 4.0]))
  np.testing.assert_allclose(D.temperature(z, 1.0), np.array([1, 2, 4]) / 7, rtol=1e-6)
  r2 = math.sqrt(2)
  np.testing.assert_allclose(D.temperature(z, 2.0), np.array([1, r2, 2]) / (3 + r2), rtol=1e-6)
  # Large t flattens towards uniform, small t sharpens towards one-hot.
  np.testing.assert_allclose(D.temperature(z, 1e6), np.full(3, 1 / 3), atol=1e-5)
  np.testing.assert_allclose(D.temperature(z, 1e-3), [0, 0, 1], atol=1e-6)


def test_defenses_broadcast_over_leading_axes_and_are_pure():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 5, 4)).astype(np.float32)
  z_copy = z.copy()
  p = np.asarray(jax.nn.softmax(z))
  for fn in (lambda a: D.top_k(a, 2), lambda a: D.round_probs(a, 1), D.label_only):
    out = np.asarray(fn(p))
    assert out.shape == p.shape
    flat = np.stack([np.asarray(fn(row)) for row in p.reshape(-1, 4)])  # per-example loop
    np.testing.assert_allclose(out.reshape(-1, 4), flat)
    np.testing.assert_array_equal(np.asarray(fn(p)), out)  # same input, same output
  out = D.apply_defenses(z, ["temperature=3", "top-k=2"])
  np.testing.assert_array_equal(z, z_copy)  # input untouched
  assert out.shape == z.shape


def test_apply_defenses_no_specs_is_softmax():
  z = jnp.array([[1.0, -2.0, 0.5]])
  np.testing.assert_allclose(D.apply_defenses(z), jax.nn.softmax(z), rtol=1e-6)
  np.testing.assert_allclose(D.apply_defenses(z, None), jax.nn.softmax(z), rtol=1e-6)


def test_composition_follows_given_order():
  z = jnp.log(jnp.array([0.2, 0.45, 0.35]))
  # round to 0 decimals first: all zeros, so the argmax is class 0.
  np.testing.assert_array_equal(D.apply_defenses(z, ["round=0", "label-only"]), [1, 0, 0])
  # label-only first: one-hot of class 1, rounding keeps it.
  np.testing.assert_array_equal(D.apply_defenses(z, ["label-only", "round=0"]), [0, 1, 0])
  # temperature applies to the logits before softmax, then top-k and rounding.
  got = D.apply_defenses(z, ["temperature=2", "top-k=2", "round=3"])
  want = np.round(np.asarray(D.top_k(D.temperature(z, 2.0), 2)), 3)
  np.testing.assert_allclose(got, want, atol=1e-7)
  # Two temperatures multiply.
  np.testing.assert_allclose(D.apply_defenses(z, ["temperature=2", "temperature=3"]),
                             D.temperature(z, 6.0), rtol=1e-6)


def test_apply_defenses_is_jittable_and_accepts_parsed_specs():
  z = jnp.array([[3.0, 1.0, 0.0, -1.0]])
  specs = D.parse_defenses(["temperature=20", "top-k=3", "round=2"])
  eager = D.apply_defenses(z, specs)
  jitted = jax.jit(lambda a: D.apply_defenses(a, specs))(z)
  np.testing.assert_allclose(eager, jitted)


def test_parse_defense_values():
  assert D.parse_defense("top-k=3") == D.Defense("top-k", 3)
  assert D.parse_defense(" Round = 2 ") == D.Defense("round", 2)
  assert D.parse_defense("temperature=20") == D.Defense("temperature", 20.0)
  assert D.parse_defense("temperature=0.5") == D.Defense("temperature", 0.5)
  assert D.parse_defense("label-only") == D.Defense("label-only", None)
  assert D.parse_defense(D.Defense("top-k", 1)) == D.Defense("top-k", 1)
  assert D.parse_defenses("round=1") == (D.Defense("round", 1),)


@pytest.mark.parametrize("spec, word", [
    ("top-k=0", "top-k"), ("top-k=-1", "top-k"), ("top-k=abc", "integer"), ("top-k", "value"),
    ("top-k=", "value"), ("round=-1", "round"), ("round=1.5", "integer"),
    ("temperature=0", "temperature"), ("temperature=-2", "temperature"),
    ("temperature=inf", "temperature"), ("temperature=x", "number"),
    ("label-only=3", "no value"), ("dropout=0.5", "unknown"), ("", "unknown"),
])
def test_parse_errors_name_the_argument(spec, word):
  with pytest.raises(MiaInputError, match="defense") as e:
    D.parse_defense(spec)
  assert word in str(e.value)


def test_spec_errors():
  with pytest.raises(MiaInputError, match="defense"):
    D.parse_defense(3)
  with pytest.raises(MiaInputError, match=r"defenses\[1\].*temperature"):
    D.apply_defenses(jnp.zeros(3), ["top-k=2", "temperature=2"])
  with pytest.raises(MiaInputError, match=r"defenses\[0\].*K=3"):
    D.apply_defenses(jnp.zeros(3), ["top-k=4"])


def test_function_errors():
  p = jnp.array([0.2, 0.3, 0.5])
  with pytest.raises(MiaInputError, match="k"):
    D.top_k(p, 4)
  with pytest.raises(MiaInputError, match="k"):
    D.top_k(p, 0)
  with pytest.raises(MiaInputError, match="k"):
    D.top_k(p, 1.0)
  with pytest.raises(MiaInputError, match="decimals"):
    D.round_probs(p, -1)
  with pytest.raises(MiaInputError, match="t"):
    D.temperature(p, 0.0)
  with pytest.raises(MiaInputError, match="t"):
    D.temperature(p, -1.0)
  with pytest.raises(MiaInputError, match="probs"):
    D.label_only(jnp.float32(1.0))
