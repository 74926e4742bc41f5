"""White-box signals: Jacobian rows against a naive per-example jacrev loop."""

import functools

import jax
import numpy as np
import pytest

from mia_jax import whitebox
from mia_jax._validation import MiaInputError
from mia_jax.models import make_model, stack_variables

from _float32 import reduction_rtol


@functools.partial(jax.jit, static_argnames=("model", "layer", "centered"))
def _naive_row_at(model, variables, h, y1, layer, t, centered):
  """d z_y / d h_l at t * h for ONE example h[1, ...], from jax.jacrev of the full
  Jacobian of the upper part ``g_l`` (all K classes)."""
  jac = jax.jacrev(lambda hh: model.g(variables, hh, layer)[0])(t * h)[:, 0]  # [K, *shape]
  return jac[y1] - (jac.mean(0) if centered else 0.0)


def _naive_row(model, variables, x1, y1, layer, t=1.0, centered=False, h=None):
  """The row at t * h (h = h_l(x) of this model by default)."""
  if h is None:
    h = model.h(variables, x1[None], layer)
  return np.asarray(_naive_row_at(model, variables, h, int(y1), layer, float(t), centered))


MODELS = [
    ("mlp", (12,), dict(widths=(8, 6))),
    ("small_cnn", (10, 9, 1), dict(channels=(3, 4), hidden=5)),
    ("resnet", (8, 8, 3), dict(widths=(4, 6, 8))),
]


CASES = [(m, 0, False) for m in MODELS] + [(m, 3, True) for m in MODELS[:2]]


@pytest.mark.parametrize("spec,path_steps,centered", CASES, ids=lambda c: str(c[0]) if isinstance(c, tuple) else str(c))
def test_rows_match_naive_jacrev_loop(spec, path_steps, centered):
  name, shape, opts = spec
  model = make_model(name, input_shape=shape, num_classes=4, **opts)
  variables = model.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4,) + shape).astype(np.float32)
  y = rng.integers(0, 4, 4)
  layers = whitebox.default_layers(model)
  if name == "resnet":  # every kind of stage once; the naive jacrev loop compiles per layer
    layers = ("input", "block_1", "pool")
  rows = whitebox.jacobian_rows(model, variables, x, y, layers=layers, path_steps=path_steps,
                                centered=centered, microbatch_size=3)
  ts = [1.0] if path_steps == 0 else [(k + 1) / path_steps for k in range(path_steps)]
  for layer in layers:
    assert rows[layer].shape == (4,) + model.layer_shapes()[layer]
    for i in range(4):
      ref = sum(_naive_row(model, variables, x[i], y[i], layer, t, centered) for t in ts) / len(ts)
      np.testing.assert_allclose(rows[layer][i], ref, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name} {layer} example {i}")


def test_rows_stacked_equal_loop_over_models():
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))
  vs = [model.init(jax.random.key(i)) for i in range(3)]
  x = np.random.default_rng(1).normal(size=(9, 6)).astype(np.float32)
  y = np.arange(9) % 3
  stacked = whitebox.jacobian_rows(model, stack_variables(vs), x, y, layers=("input", "dense_0"),
                                   stacked=True, microbatch_size=4)
  for m, v in enumerate(vs):
    one = whitebox.jacobian_rows(model, v, x, y, layers=("input", "dense_0"))
    for layer in one:
      np.testing.assert_allclose(stacked[layer][m], one[layer], rtol=1e-5, atol=1e-6)


def test_layer_scores_match_naive_linear_attack():
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5, 4))
  target = model.init(jax.random.key(0))
  layers = ("input", "dense_0", "dense_1")
  proxies = {l: stack_variables([model.init(jax.random.key(10 + p)) for p in range(2)]) for l in layers}
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  y = rng.integers(0, 3, 4)
  means = {l: rng.normal(size=(3,) + model.layer_shapes()[l]).astype(np.float32) for l in layers}
  got = whitebox.layer_scores(model, target, proxies, means, x, y, path_steps=2, centered=True,
                              microbatch_size=3)
  for l in layers:
    for i in range(4):
      h = np.asarray(model.h(target, x[i:i + 1], l))[0]
      # The proxy's upper part is linearized around the TARGET's representation h.
      row = lambda v, t: _naive_row(model, v, x[i], y[i], l, t, centered=True, h=h[None])  # noqa: E731
      rt = (row(target, 0.5) + row(target, 1.0)) / 2
      proxies_l = [jax.tree.map(lambda a, p=p: a[p], proxies[l]) for p in range(2)]
      rp = np.mean([(row(pv, 0.5) + row(pv, 1.0)) / 2 for pv in proxies_l], axis=0)
      ref = np.sum((h - means[l][y[i]]) * (rt - rp))
      np.testing.assert_allclose(got[l][i], ref, rtol=1e-4, atol=1e-5)


def test_layer_scores_stacked_targets():
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))
  targets = [model.init(jax.random.key(i)) for i in range(2)]
  layers = ("input", "dense_0")
  proxies = [{l: stack_variables([model.init(jax.random.key(20 + 3 * m + p)) for p in range(2)])
              for l in layers} for m in range(2)]
  rng = np.random.default_rng(3)
  means = [{l: rng.normal(size=(3,) + model.layer_shapes()[l]).astype(np.float32) for l in layers}
           for _ in range(2)]
  x = rng.normal(size=(5, 6)).astype(np.float32)
  y = rng.integers(0, 3, 5)
  stacked = whitebox.layer_scores(
      model, stack_variables(targets), {l: stack_variables([p[l] for p in proxies]) for l in layers},
      {l: np.stack([m[l] for m in means]) for l in layers}, x, y, stacked=True)
  for m in range(2):
    one = whitebox.layer_scores(model, targets[m], proxies[m], means[m], x, y)
    for l in layers:
      np.testing.assert_allclose(stacked[l][m], one[l], rtol=1e-5, atol=1e-6)


def test_class_means_reference():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(30, 2, 3))
  y = np.arange(30) % 4
  got = whitebox.class_means(f, y, 5)
  for k in range(4):
    np.testing.assert_allclose(got[k], f[y == k].mean(0), rtol=1e-5)
  np.testing.assert_array_equal(got[4], 0.0)


def test_bad_inputs():
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))
  v = model.init(jax.random.key(0))
  x = np.zeros((4, 6), np.float32)
  y = np.zeros(4, int)
  with pytest.raises(MiaInputError, match="layer"):
    whitebox.jacobian_rows(model, v, x, y, layers=("nope",))
  with pytest.raises(MiaInputError, match="layers"):
    whitebox.jacobian_rows(model, v, x, y, layers=("logits",))
  with pytest.raises(MiaInputError, match="path_steps"):
    whitebox.jacobian_rows(model, v, x, y, layers=("input",), path_steps=-1)
  with pytest.raises(MiaInputError, match="x"):
    whitebox.jacobian_rows(model, v, np.zeros((4, 7)), y, layers=("input",))
  # A proxy of another architecture (wider hidden layer) is refused before compute.
  other = make_model("mlp", input_shape=(6,), num_classes=3, widths=(9,))
  proxy = stack_variables([other.init(jax.random.key(1))])
  means = {"input": np.zeros((3, 6), np.float32)}
  with pytest.raises(MiaInputError, match="architecture"):
    whitebox.layer_scores(model, v, {"input": proxy}, means, x, y)
  with pytest.raises(MiaInputError, match="means"):
    whitebox.layer_scores(model, v, {"input": stack_variables([v])}, {}, x, y)


def test_gradient_norms_match_naive_loop():
  model = make_model("small_cnn", input_shape=(8, 8, 1), num_classes=3, channels=(2,), hidden=4)
  v = model.init(jax.random.key(0))
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, 5)
  got = whitebox.gradient_norms(model, v, x, y, microbatch_size=2)
  assert set(got) == {"conv_0", "fc", "logits", "total"}
  for i in range(5):
    def loss(params, i=i):
      logits = model.apply({"params": params}, x[i:i + 1])
      return -jax.nn.log_softmax(logits)[0, y[i]]
    g = jax.grad(loss)(v["params"])
    per_stage = {s: np.sqrt(sum(float(np.sum(np.square(a))) for a in jax.tree.leaves(t)))
                 for s, t in g.items()}
    for s, n in per_stage.items():
      assert got[s][i] == pytest.approx(n, rel=1e-4)
    assert got["total"][i] == pytest.approx(np.sqrt(sum(n ** 2 for n in per_stage.values())), rel=1e-4)


def test_stacked_gradient_norms_equal_the_loop_over_models():
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))
  vs = [model.init(jax.random.key(i)) for i in range(3)]
  rng = np.random.default_rng(1)
  x = rng.normal(size=(11, 6)).astype(np.float32)
  y = rng.integers(0, 3, 11)
  got = whitebox.gradient_norms(model, stack_variables(vs), x, y, microbatch_size=4,
                                stacked=True)
  assert got["total"].shape == (3, 11)
  for m, v in enumerate(vs):
    want = whitebox.gradient_norms(model, v, x, y, microbatch_size=5)
    n_params = sum(a.size for a in jax.tree.leaves(v["params"]))
    for k in want:  # vmapped over models and chunked differently: a reordered float32 sum
      np.testing.assert_allclose(got[k][m], want[k], rtol=reduction_rtol(n_params), err_msg=k)
  with pytest.raises(MiaInputError, match="leading"):
    bad = stack_variables(vs)
    bad["params"]["logits"]["Dense_0"]["bias"] = bad["params"]["logits"]["Dense_0"]["bias"][:2]
    whitebox.gradient_norms(model, bad, x, y, stacked=True)


def test_gradient_norms_microbatch_shrinks_to_the_memory_bound(monkeypatch):
  import mia_jax.whitebox as wb
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(5,))
  vs = stack_variables([model.init(jax.random.key(i)) for i in range(4)])
  n_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(vs["params"]))  # 53
  seen = []
  real = wb.run_microbatched
  monkeypatch.setattr(wb, "run_microbatched",
                      lambda fn, arrays, mb, **kw: seen.append(mb) or real(fn, arrays, mb, **kw))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(9, 6)).astype(np.float32)
  y = rng.integers(0, 3, 9)
  full = wb.gradient_norms(model, vs, x, y, microbatch_size=8, stacked=True)
  small = wb.gradient_norms(model, vs, x, y, microbatch_size=8, stacked=True,
                            max_gradient_bytes=3 * 4 * 4 * n_params)  # room for 3 examples
  assert seen == [8, 3]
  # Another microbatch size is another vectorization of the same float32 arithmetic: the
  # per-example gradients agree to a few ulps and the norm sums n_params squares of them,
  # so the two orders differ by at most reduction_rtol(n_params) (not 1e-6: 1.2e-6 seen).
  for k in full:
    np.testing.assert_allclose(small[k], full[k], rtol=reduction_rtol(n_params))
