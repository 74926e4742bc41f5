"""Tests for mia_jax.models: the layered split f = g_l o h_l, eval mode, stacking, errors.

References are the models' own full forward pass (``apply``) and, where it matters,
a hand-built equivalent (a dropout model in eval mode equals the same weights with no
dropout; an eval-mode BatchNorm model gives each example the same output whatever the
rest of the batch is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.models import (INPUT, MODELS, LayeredModel, make_model, num_stacked,
                            stack_variables, unstack_variables)

# name -> (architecture, make_model kwargs, batch size). Tiny widths keep compiles fast.
CASES = {
    "logistic": ("logistic", dict(input_shape=(12,), num_classes=3), 5),
    "mlp": ("mlp", dict(input_shape=(12,), num_classes=3, widths=(7, 5)), 5),
    "cnn28": ("small_cnn", dict(input_shape=(28, 28, 1), num_classes=4, channels=(2, 3),
                                hidden=6), 3),
    "cnn62x47": ("small_cnn", dict(input_shape=(62, 47, 1), num_classes=5, channels=(2, 2),
                                   hidden=4), 2),
    "resnet": ("resnet", dict(input_shape=(32, 32, 3), num_classes=3, widths=(4, 6)), 3),
}

EXPECTED_LAYERS = {
    "logistic": (INPUT, "logits"),
    "mlp": (INPUT, "dense_0", "dense_1", "logits"),
    "cnn28": (INPUT, "conv_0", "conv_1", "fc", "logits"),
    "cnn62x47": (INPUT, "conv_0", "conv_1", "fc", "logits"),
    "resnet": (INPUT, "stem", "block_0", "block_1", "pool", "logits"),
}

EXPECTED_SHAPES = {
    "logistic": {INPUT: (12,), "logits": (3,)},
    "mlp": {INPUT: (12,), "dense_0": (7,), "dense_1": (5,), "logits": (3,)},
    "cnn28": {INPUT: (28, 28, 1), "conv_0": (28, 28, 2), "conv_1": (14, 14, 3), "fc": (6,),
              "logits": (4,)},
    "cnn62x47": {INPUT: (62, 47, 1), "conv_0": (62, 47, 2), "conv_1": (31, 23, 2), "fc": (4,),
                 "logits": (5,)},
    "resnet": {INPUT: (32, 32, 3), "stem": (32, 32, 4), "block_0": (32, 32, 4),
               "block_1": (16, 16, 6), "pool": (6,), "logits": (3,)},
}

TOL = dict(rtol=1e-5, atol=1e-5)


def np_variables(model, seed=0):
  """Random variables built in NumPy from the abstract init (no jax.random compiles).

  Kernels ~ N(0, 1/fan_in), biases and BatchNorm scales/offsets random, and running
  statistics non-trivial (init's mean 0 / var 1 would make eval-mode BN an identity).
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
    if "var" in name or "scale" in name:
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    return (0.1 * rng.standard_normal(s.shape)).astype(s.dtype)

  abstract = jax.eval_shape(model.init, jax.random.key(0))  # shapes only, no compile
  return jax.tree_util.tree_map_with_path(fill, abstract)


def np_normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


_CASE_CACHE = {}


def _case(name):
  """(name, model, variables, x, logits), built once per session."""
  if name not in _CASE_CACHE:
    arch, kwargs, batch = CASES[name]
    model = make_model(arch, **kwargs)
    variables = np_variables(model)
    x = np_normal(1, (batch,) + model.input_shape)
    _CASE_CACHE[name] = (name, model, variables, x, model.apply(variables, x))
  return _CASE_CACHE[name]


@pytest.fixture(params=list(CASES))
def case(request):
  return _case(request.param)


def test_models_registry_is_covered():
  assert set(MODELS) == {arch for arch, _, _ in CASES.values()}


def test_init_apply_shapes(case):
  name, model, variables, x, logits = case
  assert isinstance(model, LayeredModel)
  # init's structure and shapes (traced, not compiled: jax.random compiles are slow on CPU).
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)
  assert model.layer_names == EXPECTED_LAYERS[name]
  assert logits.shape == (x.shape[0], model.num_classes)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert model.layer_shapes() == EXPECTED_SHAPES[name]
  # Every stage has params; only the resnet has batch_stats.
  assert set(variables["params"]) == set(model.stage_names) - {"pool"}
  assert ("batch_stats" in variables) == (name == "resnet")


def test_g_of_h_equals_apply(case):
  _, model, variables, x, logits = case
  shapes = model.layer_shapes()
  for layer in model.layer_names[:-1]:
    h = model.h(variables, x, layer)
    assert h.shape == (x.shape[0],) + shapes[layer]
    np.testing.assert_allclose(model.g(variables, h, layer), logits, **TOL, err_msg=layer)
  # h at "input" is x itself and h at the logits is the logits.
  np.testing.assert_array_equal(model.h(variables, x, INPUT), x)
  np.testing.assert_allclose(model.h(variables, x, "logits"), logits, **TOL)


def test_features_match_h(case):
  _, model, variables, x, _ = case
  feats = model.features(variables, x)
  assert tuple(feats) == model.layer_names
  for layer in model.layer_names:
    np.testing.assert_allclose(feats[layer], model.h(variables, x, layer), **TOL, err_msg=layer)


def test_upper_is_a_model_of_h(case):
  _, model, variables, x, logits = case
  shapes = model.layer_shapes()
  for layer in model.layer_names[:-1]:
    up = model.upper(layer)
    assert isinstance(up, LayeredModel)
    assert up.input_shape == shapes[layer]
    assert up.num_classes == model.num_classes
    i = model.layer_names.index(layer)
    assert up.stage_names == model.stage_names[i:]
    h = model.h(variables, x, layer)
    np.testing.assert_allclose(up.apply(variables, h), logits, **TOL, err_msg=layer)
  # The upper part's own init gives variables for exactly its stages, with the shapes of
  # the full model's (checked at the middle layer; tracing only).
  i = (len(model.layer_names) - 1) // 2
  own = jax.eval_shape(model.upper(model.layer_names[i]).init, jax.random.key(3))
  assert set(own["params"]) == set(model.stage_names[i:]) & set(variables["params"])
  for stage in own["params"]:
    assert (jax.tree.map(jnp.shape, own["params"][stage])
            == jax.tree.map(jnp.shape, variables["params"][stage]))
  with pytest.raises(MiaInputError, match="layer"):
    model.upper("logits")


def test_apply_perturbed(case):
  _, model, variables, x, logits = case
  shapes = model.layer_shapes()
  zeros = {l: jnp.zeros((x.shape[0],) + shapes[l]) for l in model.layer_names}
  np.testing.assert_allclose(model.apply_perturbed(variables, x, zeros), logits, **TOL)
  np.testing.assert_allclose(model.apply_perturbed(variables, x, {}), logits, **TOL)
  # A perturbation at one layer equals g_l(h_l + delta).
  for layer in model.layer_names[:-1]:
    delta = np_normal(5, (x.shape[0],) + shapes[layer], 0.1)
    ref = model.g(variables, model.h(variables, x, layer) + delta, layer)
    np.testing.assert_allclose(
        model.apply_perturbed(variables, x, {layer: delta}), ref, **TOL, err_msg=layer)


def test_init_real_values():
  """A real (compiled) init: deterministic in the key, different keys differ, finite."""
  # (Same shapes as the MLP in test_train.py, so the compiled initializers are shared.)
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,))
  a, b, c = (model.init(jax.random.key(k)) for k in (0, 0, 1))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["params"]["dense_0"]["Dense_0"]["kernel"],
                            c["params"]["dense_0"]["Dense_0"]["kernel"])
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(a))
  # Stages get independent keys (fold_in by stage index): no two kernels are copies.
  assert not np.allclose(a["params"]["dense_0"]["Dense_0"]["kernel"][:3, :3],
                         a["params"]["logits"]["Dense_0"]["kernel"][:3])
  out = model.apply(a, np.ones((2, 6), np.float32))
  assert out.shape == (2, 3) and np.all(np.isfinite(out))


def test_perturbation_gradient_is_upper_jacobian():
  """d z_y / d delta_l at 0 equals the gradient of g_l at h_l (the white-box use)."""
  _, model, variables, x, _ = _case("mlp")
  x, y = x[:1], 2
  shapes = model.layer_shapes()
  zeros = {l: jnp.zeros((1,) + shapes[l]) for l in model.layer_names}

  @jax.jit
  def grads_and_refs(v, x):
    grads = jax.grad(lambda p: model.apply_perturbed(v, x, p)[0, y])(zeros)
    refs = {l: jax.grad(lambda hh, l=l: model.g(v, hh, l)[0, y])(model.h(v, x, l))
            for l in model.layer_names}
    return grads, refs

  grads, refs = grads_and_refs(variables, x)
  for layer in model.layer_names:
    assert np.any(refs[layer] != 0), layer
    np.testing.assert_allclose(grads[layer], refs[layer], **TOL, err_msg=layer)


def test_eval_mode_dropout_is_deterministic_identity():
  _, plain, variables, x, logits = _case("mlp")
  drop = make_model("mlp", dropout=0.5, **CASES["mlp"][1])
  a = drop.apply(variables, x)
  b = drop.apply(variables, x)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a, logits, **TOL)
  feats = drop.features(variables, x)
  np.testing.assert_allclose(feats["dense_1"], plain.h(variables, x, "dense_1"), **TOL)
  np.testing.assert_allclose(drop.g(variables, feats["dense_0"], "dense_0"), logits, **TOL)


def test_eval_mode_cnn_dropout_is_deterministic():
  _, _, variables, x, logits = _case("cnn28")
  drop = make_model("small_cnn", dropout=0.5, **CASES["cnn28"][1])
  np.testing.assert_array_equal(drop.apply(variables, x), drop.apply(variables, x))
  np.testing.assert_allclose(drop.apply(variables, x), logits, **TOL)


def test_resnet_eval_batchnorm_uses_running_stats():
  """Each example's output is independent of the rest of the batch (train-mode BN would
  normalize with the batch's statistics)."""
  _, model, variables, x, full = _case("resnet")
  # Other batch members replaced by very different inputs: example 0's output is unchanged.
  other = np.concatenate([x[:1], 10.0 * x[1:] + 3.0])
  np.testing.assert_allclose(model.apply(variables, other)[0], full[0], **TOL)
  # Permuting the batch permutes the outputs.
  perm = np.array([2, 0, 1])
  np.testing.assert_allclose(model.apply(variables, x[perm]), np.asarray(full)[perm], **TOL)
  # Copies of one example give that example's output.
  np.testing.assert_allclose(model.apply(variables, x[[1, 1, 1]]),
                             np.asarray(full)[[1, 1, 1]], **TOL)


def test_stack_unstack_round_trip():
  _, model, _, x, _ = _case("mlp")
  trees = [np_variables(model, seed=i) for i in range(3)]
  stacked = stack_variables(trees)
  assert num_stacked(stacked) == 3
  for leaf, ref in zip(jax.tree.leaves(stacked), jax.tree.leaves(trees[0])):
    assert leaf.shape == (3,) + ref.shape
  back = unstack_variables(stacked)
  assert len(back) == 3
  for t, b in zip(trees, back):
    assert jax.tree.structure(t) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, t, b)
  # vmap over the stacked axis equals a loop over the models.
  vm = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(stacked, x)
  for i, t in enumerate(trees):
    np.testing.assert_allclose(vm[i], model.apply(t, x), **TOL)


def test_stack_unstack_two_collections():
  """BatchNorm-style variables (params + batch_stats) stack leaf by leaf."""
  trees = [{"params": {"a": np.full((2, 3), i, np.float32)},
            "batch_stats": {"b": {"mean": np.full((3,), 10 + i, np.float32)}}} for i in range(2)]
  stacked = stack_variables(trees)
  np.testing.assert_array_equal(stacked["batch_stats"]["b"]["mean"][:, 0], [10, 11])
  assert stacked["params"]["a"].shape == (2, 2, 3)
  for t, b in zip(trees, unstack_variables(stacked)):
    jax.tree.map(np.testing.assert_array_equal, t, b)


def test_stack_variables_errors():
  small = make_model("mlp", input_shape=(12,), num_classes=3, widths=(4,))
  wide = make_model("mlp", input_shape=(12,), num_classes=3, widths=(5,))
  deep = make_model("mlp", input_shape=(12,), num_classes=3, widths=(4, 4))
  a = np_variables(small)
  with pytest.raises(MiaInputError, match=r"trees\[1\].*structure"):
    stack_variables([a, np_variables(deep)])
  with pytest.raises(MiaInputError, match=r"trees\[2\].*shape"):
    stack_variables([a, a, np_variables(wide)])
  with pytest.raises(MiaInputError, match="trees"):
    stack_variables([])
  with pytest.raises(MiaInputError, match="variables"):
    num_stacked({})


# -- make_model / layer-name errors -------------------------------------------------------

def test_make_model_unknown_name():
  with pytest.raises(MiaInputError, match="model.*'vgg'"):
    make_model("vgg", input_shape=(12,), num_classes=3)


@pytest.mark.parametrize("arch,shape", [("logistic", (12,)), ("mlp", (12,)),
                                        ("small_cnn", (28, 28, 1)), ("resnet", (32, 32, 3))])
def test_make_model_bad_option(arch, shape):
  with pytest.raises(MiaInputError, match="bogus"):
    make_model(arch, input_shape=shape, num_classes=3, bogus=1)


def test_make_model_bad_num_classes():
  with pytest.raises(MiaInputError, match="num_classes"):
    make_model("mlp", input_shape=(12,), num_classes=1)


def test_make_model_bad_activation_mlp():
  with pytest.raises(MiaInputError, match="activation"):
    make_model("mlp", input_shape=(12,), num_classes=3, activation="swishy")


def test_make_model_bad_activation_small_cnn():
  """Checked when the model is built, not only when a stage is first traced."""
  with pytest.raises(MiaInputError, match="activation"):
    make_model("small_cnn", input_shape=(28, 28, 1), num_classes=3, activation="swishy")


def test_make_model_bad_widths_and_images():
  with pytest.raises(MiaInputError, match="widths"):
    make_model("mlp", input_shape=(12,), num_classes=3, widths=(4, 0))
  with pytest.raises(MiaInputError, match="channels"):
    make_model("small_cnn", input_shape=(28, 28, 1), num_classes=3, channels=(-1,))
  with pytest.raises(MiaInputError, match="input_shape"):
    make_model("small_cnn", input_shape=(784,), num_classes=3)
  with pytest.raises(MiaInputError, match="input_shape"):
    make_model("resnet", input_shape=(32, 32), num_classes=3)


@pytest.mark.parametrize("arch,shape,rate", [("mlp", (12,), 1.5), ("small_cnn", (28, 28, 1), -0.5)])
def test_make_model_bad_dropout(arch, shape, rate):
  with pytest.raises(MiaInputError, match="dropout"):
    make_model(arch, input_shape=shape, num_classes=3, dropout=rate)


def test_make_model_resnet_empty_widths():
  """(Was an IndexError from widths[0].)"""
  with pytest.raises(MiaInputError, match="widths"):
    make_model("resnet", input_shape=(32, 32, 3), num_classes=3, widths=())


def test_unknown_layer_name_errors():
  model = make_model("mlp", input_shape=(12,), num_classes=3, widths=(4,))
  v = np_variables(model)
  x = jnp.zeros((2, 12))
  with pytest.raises(MiaInputError, match="layer.*'conv_9'"):
    model.h(v, x, "conv_9")
  with pytest.raises(MiaInputError, match="layer.*'conv_9'"):
    model.g(v, jnp.zeros((2, 4)), "conv_9")
  with pytest.raises(MiaInputError, match="layer.*'dense_7'"):
    model.check_layers(["dense_0", "dense_7"])
  with pytest.raises(MiaInputError, match="layer"):
    model.upper("nope")
  assert model.check_layers(["input", "dense_0", "logits"]) == ("input", "dense_0", "logits")


def test_check_inputs_errors():
  model = make_model("mlp", input_shape=(12,), num_classes=3, widths=(4,))
  with pytest.raises(MiaInputError, match="x: expected shape"):
    model.check_inputs(np.zeros((2, 11)))
  with pytest.raises(MiaInputError, match="x:.*NaN"):
    model.check_inputs(np.full((2, 12), np.nan))
  with pytest.raises(MiaInputError, match="y: labels"):
    model.check_inputs(np.zeros((2, 12)), [0, 3])
  with pytest.raises(MiaInputError, match="y: expected 2 labels"):
    model.check_inputs(np.zeros((2, 12)), [0, 1, 2])
  x, y = model.check_inputs(np.zeros((2, 12), np.float64), np.array([0.0, 2.0]))
  assert x.dtype == np.float32 and y.dtype == np.int32


def test_make_model_bad_input_shape():
  with pytest.raises(MiaInputError, match="input_shape"):
    make_model("mlp", input_shape=(0,), num_classes=3)
  with pytest.raises(MiaInputError, match="input_shape"):
    make_model("mlp", input_shape=(), num_classes=3)
