"""The user's own model, as written: a linen CNN and a linen ResNet (BatchNorm, residual
blocks) written the way Flax's examples write them, and an NNX CNN as in Flax's NNX MNIST
tutorial, each trained by a plain optax loop here; no LayeredModel anywhere.

Checks against independent references: the Jacobian rows of every tap equal a naive
per-example ``jax.jacrev`` of the upper part written out by hand from the user's own
submodules (activations from Flax's ``capture_intermediates``); signals equal those of the
module's own ``apply``; stacked models equal a loop; a tap a skip connection crosses is
refused with its name.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mia_jax import whitebox
from mia_jax._validation import MiaInputError
from mia_jax.models import from_apply, from_linen, from_nnx, nnx_variables, stack_variables
from mia_jax.signals import blackbox_signals, signals_from_logits

SHAPE = (8, 8, 1)
K = 4
TOL = dict(rtol=1e-4, atol=1e-5)  # float32 through different programs


# -- the user's models, as Flax's examples write them --------------------------------------

class CNN(nn.Module):
  """flax/examples/mnist's CNN, smaller."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(features=4, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=8, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(features=16)(x)
    x = nn.relu(x)
    x = nn.Dense(features=K)(x)
    return x


class ResNetBlock(nn.Module):
  """flax/examples/imagenet's ResNetBlock."""
  filters: int
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    residual = x
    y = nn.Conv(self.filters, (3, 3), self.strides)(x)
    y = norm()(y)
    y = nn.relu(y)
    y = nn.Conv(self.filters, (3, 3))(y)
    y = norm(scale_init=nn.initializers.ones)(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(4, (3, 3), name="conv_init")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_init")(x)
    x = nn.relu(x)
    x = ResNetBlock(4)(x, train=train)
    x = ResNetBlock(8, strides=(2, 2))(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(K)(x)


class NnxCNN(nnx.Module):
  """Flax's NNX MNIST tutorial CNN, smaller."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(2 * 2 * 8, 16, rngs=rngs)
    self.linear2 = nnx.Linear(16, K, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.conv1(x)))
    x = self.avg_pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.linear1(x))
    return self.linear2(x)


def _data(n=24, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
  y = rng.integers(0, K, n).astype(np.int32)
  return x, y


def _train_linen(module, x, y, steps=5, train_kw=None, seed=0):
  """A plain optax loop, as a user writes it."""
  kw = {} if train_kw is None else train_kw
  variables = module.init(jax.random.key(seed), x[:1], **({"train": False} if kw else {}))
  params, stats = variables["params"], variables.get("batch_stats")
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  def loss_fn(p, s):
    v = {"params": p, **({"batch_stats": s} if s is not None else {})}
    if s is not None:
      logits, upd = module.apply(v, x, mutable=["batch_stats"], **kw)
      s = upd["batch_stats"]
    else:
      logits = module.apply(v, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s

  for _ in range(steps):
    (_, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
    upd, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, upd)
  return {"params": params, **({"batch_stats": stats} if stats is not None else {})}


@pytest.fixture(scope="module")
def cnn():
  x, y = _data()
  module = CNN()
  return module, _train_linen(module, x, y), x, y


@pytest.fixture(scope="module")
def resnet():
  x, y = _data()
  module = ResNet()
  return module, _train_linen(module, x, y, train_kw={"train": True}), x, y


@pytest.fixture(scope="module")
def nnx_cnn():
  x, y = _data()
  model = NnxCNN(rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  def loss_fn(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

  for _ in range(5):
    grads = nnx.grad(loss_fn)(model)
    opt.update(model, grads)
  return model, x, y


def _naive_rows(upper, hs, y):
  """Per-example jax.jacrev of the hand-written upper part, true-class row."""
  return np.stack([np.asarray(jax.jacrev(lambda h: upper(h[None])[0])(hs[i])[y[i]])
                   for i in range(len(y))])


# -- linen -------------------------------------------------------------------------------

def test_linen_cnn_default_taps_and_signals(cnn):
  module, v, x, y = cnn
  model = from_linen(module, input_shape=SHAPE, num_classes=K)
  assert model.layer_names == ("input", "Conv_0", "Conv_1", "Dense_0", "logits")
  np.testing.assert_allclose(model.apply(v, x), module.apply(v, x), rtol=0, atol=0)
  got = blackbox_signals(model, v, x, y)
  want = signals_from_logits(module.apply(v, x), y)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], **TOL, err_msg=k)


def test_linen_cnn_jacobian_rows_equal_naive_jacrev(cnn):
  module, v, x, y = cnn
  model = from_linen(module, input_shape=SHAPE, num_classes=K)
  rows = whitebox.jacobian_rows(model, v, x, y, layers=["input", "Conv_1", "Dense_0"],
                                microbatch_size=7)
  _, inter = module.apply(v, x, capture_intermediates=True)
  acts = {n: inter["intermediates"][n]["__call__"][0] for n in ("Conv_1", "Dense_0")}
  p = v["params"]

  def dense(name, h):
    return nn.Dense(p[name]["kernel"].shape[1]).apply({"params": p[name]}, h)

  def above_dense0(h):
    return dense("Dense_1", nn.relu(h))

  def above_conv1(h):
    h = nn.avg_pool(nn.relu(h), (2, 2), strides=(2, 2))
    return above_dense0(dense("Dense_0", h.reshape((h.shape[0], -1))))

  np.testing.assert_allclose(rows["Dense_0"], _naive_rows(above_dense0, acts["Dense_0"], y), **TOL)
  np.testing.assert_allclose(rows["Conv_1"], _naive_rows(above_conv1, acts["Conv_1"], y), **TOL)
  np.testing.assert_allclose(rows["input"],
                             _naive_rows(lambda xx: module.apply(v, xx), x, y), **TOL)
  # Path-integrated rows use g_l: the same at path_steps=1 as the point rows.
  path = whitebox.jacobian_rows(model, v, x, y, layers=["Conv_1"], path_steps=1)
  np.testing.assert_allclose(path["Conv_1"], rows["Conv_1"], **TOL)


def test_linen_resnet_block_taps_jacobian_rows_and_stacking(resnet):
  module, v, x, y = resnet
  assert set(v) == {"params", "batch_stats"}
  model = from_linen(module, input_shape=SHAPE, num_classes=K,
                     taps=["ResNetBlock_0", "ResNetBlock_1"])
  # eval mode from the signature: train=False, BatchNorm on its running statistics
  np.testing.assert_allclose(model.apply(v, x), module.apply(v, x, train=False), **TOL)
  rows = whitebox.jacobian_rows(model, v, x, y, layers=["ResNetBlock_0", "ResNetBlock_1"])
  _, inter = module.apply(v, x, train=False, capture_intermediates=True)
  h0 = inter["intermediates"]["ResNetBlock_0"]["__call__"][0]
  p, s = v["params"], v["batch_stats"]

  def block(name, filters, strides, h):
    return ResNetBlock(filters, strides).apply(
        {"params": p[name], "batch_stats": s[name]}, h, train=False)

  def head(h):
    return nn.Dense(K).apply({"params": p["Dense_0"]}, jnp.mean(h, axis=(1, 2)))

  def above_block0(h):
    return head(block("ResNetBlock_1", 8, (2, 2), h))

  np.testing.assert_allclose(rows["ResNetBlock_0"], _naive_rows(above_block0, h0, y), **TOL)
  # Two checkpoints stacked equal each alone.
  v2 = jax.tree.map(lambda a: a * 1.01, v)
  both = whitebox.jacobian_rows(model, stack_variables([v, v2]), x, y,
                                layers=["ResNetBlock_0"], stacked=True)
  for m, vm in enumerate((v, v2)):
    one = whitebox.jacobian_rows(model, vm, x, y, layers=["ResNetBlock_0"])
    np.testing.assert_allclose(both["ResNetBlock_0"][m], one["ResNetBlock_0"], **TOL)


def test_a_tap_inside_a_residual_block_is_refused(resnet):
  module, v, x, y = resnet
  model = from_linen(module, input_shape=SHAPE, num_classes=K,
                     taps=["ResNetBlock_0/Conv_0", "ResNetBlock_1"])
  with pytest.raises(MiaInputError, match="'ResNetBlock_0/Conv_0'.*not a cut"):
    whitebox.jacobian_rows(model, v, x, y, layers=["ResNetBlock_0/Conv_0"])
  model.check_cut(["ResNetBlock_1"])  # a block boundary is a cut


def test_linen_bad_input_is_our_error(cnn):
  module, v, x, y = cnn
  with pytest.raises(MiaInputError, match="Conv_9.*submodules"):
    from_linen(module, input_shape=SHAPE, num_classes=K, taps=["Conv_9"])
  with pytest.raises(MiaInputError, match="input_shape"):
    from_linen(module, input_shape=(5,), num_classes=K)
  with pytest.raises(MiaInputError, match="expected logits of shape"):
    from_linen(module, input_shape=SHAPE, num_classes=3)
  with pytest.raises(MiaInputError, match="from_nnx"):
    from_linen(NnxCNN(rngs=nnx.Rngs(0)), input_shape=SHAPE, num_classes=K)
  model = from_linen(module, input_shape=SHAPE, num_classes=K)
  with pytest.raises(MiaInputError, match="layer"):
    whitebox.jacobian_rows(model, v, x, y, layers=["nope"])
  with pytest.raises(MiaInputError, match="variables"):  # unstacked with stacked=True
    whitebox.jacobian_rows(model, v, x, y, layers=["Conv_1"], stacked=True)


# -- NNX ---------------------------------------------------------------------------------

def test_nnx_cnn_taps_signals_and_jacobian_rows(nnx_cnn):
  user, x, y = nnx_cnn
  model = from_nnx(user, input_shape=SHAPE, num_classes=K)
  assert model.layer_names == ("input", "conv1", "conv2", "linear1", "logits")
  v = nnx_variables(user)
  want_logits = np.asarray(user(x))
  np.testing.assert_allclose(model.apply(v, x), want_logits, **TOL)
  got = blackbox_signals(model, v, x, y)
  want = signals_from_logits(want_logits, y)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], **TOL, err_msg=k)
  rows = whitebox.jacobian_rows(model, v, x, y, layers=["conv2", "linear1"])

  def above_linear1(h):
    return user.linear2(nnx.relu(h))

  def above_conv2(h):
    h = user.avg_pool(nnx.relu(h))
    return above_linear1(user.linear1(h.reshape(h.shape[0], -1)))

  h2 = user.conv2(user.avg_pool(nnx.relu(user.conv1(jnp.asarray(x)))))
  np.testing.assert_allclose(rows["conv2"], _naive_rows(above_conv2, h2, y), **TOL)
  h3 = user.linear1(user.avg_pool(nnx.relu(h2)).reshape(len(y), -1))
  np.testing.assert_allclose(rows["linear1"], _naive_rows(above_linear1, h3, y), **TOL)
  # Many NNX models: their pure-dict states stacked.
  v2 = jax.tree.map(lambda a: a * 0.9, v)
  sig = blackbox_signals(model, stack_variables([v, v2]), x, y, stacked=True)
  np.testing.assert_allclose(sig["loss"][1], blackbox_signals(model, v2, x, y)["loss"], **TOL)
  with pytest.raises(MiaInputError, match="conv9"):
    from_nnx(user, input_shape=SHAPE, num_classes=K, taps=["conv9"])


# -- any apply function --------------------------------------------------------------------

def test_from_apply_black_box_only(cnn):
  module, v, x, y = cnn
  model = from_apply(module.apply, input_shape=SHAPE, num_classes=K, example_variables=v)
  np.testing.assert_allclose(blackbox_signals(model, v, x, y)["loss"],
                             signals_from_logits(module.apply(v, x), y)["loss"], **TOL)
  with pytest.raises(MiaInputError, match="layer"):
    whitebox.jacobian_rows(model, v, x, y, layers=["Conv_1"])


# -- white-box attacks that train: proxies and shadow targets on the user's model ----------

def _tiny_recipe():
  from mia_jax.train import TrainConfig
  return TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=2, batch_size=8)


@pytest.mark.parametrize("which", ["cnn", "resnet"])
def test_proxies_keep_the_part_below_and_retrain_the_part_above(which, cnn, resnet):
  from mia_jax.attacks import stolen_memories as sm
  module, v, x, y = {"cnn": cnn, "resnet": resnet}[which]
  layer = {"cnn": "Conv_1", "resnet": "ResNetBlock_0"}[which]
  model = from_linen(module, input_shape=SHAPE, num_classes=K)
  if which == "resnet":
    model = from_linen(module, input_shape=SHAPE, num_classes=K, taps=[layer])
  proxies = sm.fit_proxies(model, v, x, y, config=sm.StolenMemoriesConfig(
      layers=(layer,), num_proxies=2, proxy_size=12), train_config=_tiny_recipe(), seed=0)
  pv = proxies.variables[layer]
  mask = model.above_mask(layer)
  above = below = 0
  for (path, m), t, p in zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(v),
                             jax.tree.leaves(pv)):
    assert p.shape == (2, *np.shape(t)), path
    if m:
      above += 1
      assert not np.allclose(p[0], t), path  # freshly initialized and trained
    else:
      below += 1
      for i in range(2):
        np.testing.assert_array_equal(p[i], t, err_msg=str(path))  # frozen: the target's
  assert above and below
  # The first conv (below every tap) is frozen; the last Dense is above.
  assert not mask["params"][{"cnn": "Conv_0", "resnet": "conv_init"}[which]]["kernel"]
  assert mask["params"]["Dense_0" if which == "resnet" else "Dense_1"]["kernel"]
  scores = sm.score(model, v, proxies, x, y, config=sm.StolenMemoriesConfig(layers=(layer,)))
  assert scores[layer].shape == (len(y),) and np.all(np.isfinite(scores[layer]))


@pytest.mark.parametrize("setting", ["shadow", "nonmember"])
def test_stolen_memories_runs_on_user_models(setting, cnn, nnx_cnn):
  from mia_jax.attacks import stolen_memories as sm
  module, v, x, y = cnn
  xa, ya = _data(96, seed=1)
  for model, variables in ((from_linen(module, input_shape=SHAPE, num_classes=K), v),
                           (from_nnx(nnx_cnn[0], input_shape=SHAPE, num_classes=K),
                            nnx_variables(nnx_cnn[0]))):
    res = sm.run_attack(model, variables, xa, ya, x, y, target_train_size=16,
                        config=sm.StolenMemoriesConfig(layers=("input", model.taps[1])),
                        train_config=_tiny_recipe(), setting=setting, seed=0)
    assert res.meta_scores.shape == (len(y),) and np.all(np.isfinite(res.meta_scores))
    assert set(res.layer_scores) == {"input", model.taps[1]}


def test_nasr_gradients_and_gradient_norms_of_user_submodules(cnn, nnx_cnn):
  """Per-example gradients of the chosen submodules' parameters equal a naive jax.grad of
  the user's own loss; gradient norms are grouped by top-level submodule."""
  from mia_jax.attacks import nasr
  module, v, x, y = cnn
  model = from_linen(module, input_shape=SHAPE, num_classes=K)
  assert model.param_stages == ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
  assert nasr.check_layers(model, None) == ("Dense_1",)
  feats = nasr.attack_features(model, v, x[:5], y[:5], layers=("Dense_0",))

  def loss(p, i):
    z = module.apply({"params": p}, x[i:i + 1])
    return -jax.nn.log_softmax(z)[0, y[i]]

  for i in range(5):
    g = jax.grad(loss)(v["params"], i)["Dense_0"]
    want = np.concatenate([np.asarray(g["kernel"]).T, np.asarray(g["bias"])[:, None]], 1)
    np.testing.assert_allclose(feats["grad:Dense_0"][i], want, **TOL)
  norms = whitebox.gradient_norms(model, v, x[:5], y[:5])
  assert set(norms) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1", "total"}
  user = nnx_cnn[0]
  nmodel = from_nnx(user, input_shape=SHAPE, num_classes=K)
  assert nasr.check_layers(nmodel, None) == ("linear2",)
  with pytest.raises(MiaInputError, match="nope"):
    nasr.check_layers(nmodel, ("nope",))


def test_a_raw_flax_module_anywhere_is_our_error_with_the_adapter_to_use(cnn, nnx_cnn):
  from mia_jax.attacks import nasr
  from mia_jax.train import train_model
  module, v, x, y = cnn
  for call in (lambda m: blackbox_signals(m, v, x, y),
               lambda m: whitebox.jacobian_rows(m, v, x, y, layers=["Conv_1"]),
               lambda m: whitebox.gradient_norms(m, v, x, y),
               lambda m: train_model(m, x, y),
               lambda m: nasr.attack_features(m, v, x, y)):
    with pytest.raises(MiaInputError, match="from_linen"):
      call(module)
    with pytest.raises(MiaInputError, match="from_nnx"):
      call(nnx_cnn[0])


def test_cut_and_frozen_part_agree_with_the_conservative_dataflow_walk(resnet, monkeypatch):
  """Without JAX's private dce_jaxpr the conservative jaxpr walk decides the same cuts
  and the same part above a block tap for this ResNet."""
  from mia_jax.models import adapters
  module, v, x, y = resnet
  model = from_linen(module, input_shape=SHAPE, num_classes=K,
                     taps=["ResNetBlock_0/Conv_0", "ResNetBlock_0", "ResNetBlock_1"])
  want = model.above_mask("ResNetBlock_0")
  import jax._src.interpreters.partial_eval as pe
  monkeypatch.delattr(pe, "dce_jaxpr")
  closed = jax.make_jaxpr(lambda a, b: (a * 2, jnp.sin(a)))(1.0, 2.0)
  assert adapters.used_inputs(closed) == [True, False]
  assert jax.tree.leaves(model.above_mask("ResNetBlock_0")) == jax.tree.leaves(want)
  model.check_cut(["ResNetBlock_0", "ResNetBlock_1"])
  with pytest.raises(MiaInputError, match="not a cut"):
    model.check_cut(["ResNetBlock_0/Conv_0"])
