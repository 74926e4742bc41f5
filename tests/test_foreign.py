"""Foreign orbax checkpoints (the user's own training loop) loaded as one stack."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

from mia_jax import foreign
from mia_jax._validation import MiaInputError
from mia_jax.train import CorruptCheckpointError


class CNN(nn.Module):
  features: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(2, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.features)(x)


class TrainState(train_state.TrainState):
  batch_stats: dict


X = jnp.zeros((1, 4, 4, 1))
LIKE = jax.eval_shape(CNN().init, jax.random.key(0), X)


def _states(n, features=3):
  """n successive training states (adam steps), as a user's loop produces them."""
  model = CNN(features)
  v = model.init(jax.random.key(0), X)
  st = TrainState.create(apply_fn=model.apply, params=v["params"],
                         batch_stats=v["batch_stats"], tx=optax.adam(0.1))
  out = []
  for i in range(n):
    grads = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.5 + i), st.params)
    st = st.apply_gradients(grads=grads,
                            batch_stats=jax.tree.map(lambda b, i=i: b + i + 1.0, st.batch_stats))
    out.append(st)
  return out


def _as_dict(st):
  return {"params": st.params, "batch_stats": st.batch_stats, "opt_state": st.opt_state,
          "step": st.step}


def _variables(st):
  return {"params": st.params, "batch_stats": st.batch_stats}


def _flat(tree):
  """{"params/Dense_0/kernel": leaf}: dicts, named tuples and dataclasses alike."""
  def name(k):
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(map(name, p)): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_stack_equals(stacked, trees):
  """Checkpoint c of the stack holds exactly tree c (same keys, dtypes and bytes)."""
  got = _flat(stacked)
  for c, tree in enumerate(trees):
    want = _flat(tree)
    assert sorted(got) == sorted(want)
    for p, w in want.items():
      w = np.asarray(w)
      assert got[p].dtype == w.dtype, p
      np.testing.assert_array_equal(got[p][c], w, err_msg=p)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("foreign")
  states = _states(12)
  with ocp.StandardCheckpointer() as ckpt:  # one directory per epoch
    for i, st in enumerate(states[:3]):
      ckpt.save(root / "std" / f"ep_{i}", _as_dict(st))
  with ocp.PyTreeCheckpointer() as ckpt:  # the TrainState object itself
    for i, st in enumerate(states[:2]):
      ckpt.save(root / "pt" / f"ep_{i}", st)
  mgr = ocp.CheckpointManager(root / "mgr", options=ocp.CheckpointManagerOptions(max_to_keep=None))
  for i, st in enumerate(states):
    mgr.save(i, args=ocp.args.StandardSave(_as_dict(st)))
  mgr.wait_until_finished()
  mgr.close()
  mgr = ocp.CheckpointManager(root / "items", item_names=("state", "ema"))
  for i, st in enumerate(states[:2]):
    mgr.save(i, args=ocp.args.Composite(state=ocp.args.PyTreeSave(_as_dict(st)),
                                        ema=ocp.args.StandardSave(_variables(states[0]))))
  mgr.wait_until_finished()
  mgr.close()
  return root, states


def test_standard_checkpointer_epochs_default_select(run, monkeypatch):
  root, states = run
  read = []
  restore = foreign._Reader.restore

  def spy(self, name, d, abstract, keys):
    read.append(keys)
    return restore(self, name, d, abstract, keys)

  monkeypatch.setattr(foreign._Reader, "restore", spy)
  stacked, names = foreign.load_foreign_stack(root / "std", like=LIKE)
  # Only params and batch_stats are read, never the optimizer state.
  assert len(read) == 3 and {k[0].key for keys in read for k in keys} == {"params", "batch_stats"}
  assert names == ["ep_0", "ep_1", "ep_2"]
  assert jax.tree.structure(stacked) == jax.tree.structure(LIKE)  # params + batch_stats only
  _assert_stack_equals(stacked, [_variables(st) for st in states[:3]])
  # One checkpoint directory is a stack of one.
  one, names = foreign.load_foreign_stack(root / "std" / "ep_2", like=LIKE)
  assert names == ["ep_2"]
  _assert_stack_equals(one, [_variables(states[2])])


def test_pytree_checkpointer_whole_tree_and_select(run):
  root, states = run
  whole, names = foreign.load_foreign_stack(root / "pt")  # no TrainState class needed
  assert names == ["ep_0", "ep_1"]
  assert sorted(whole) == ["batch_stats", "opt_state", "params", "step"]
  _assert_stack_equals(whole, states[:2])  # opt_state (adam mu, nu, count) and step too
  picked, _ = foreign.load_foreign_stack(
      root / "pt", select=lambda s: {"params": s["params"], "batch_stats": s["batch_stats"]})
  _assert_stack_equals(picked, [_variables(st) for st in states[:2]])
  # A select that computes (not just picks) runs on the restored arrays.
  doubled, _ = foreign.load_foreign_stack(root / "pt", select=lambda s: {
      "k": np.asarray(s["params"]["Dense_0"]["kernel"]) * 2})
  np.testing.assert_array_equal(doubled["k"][1],
                                np.asarray(states[1].params["Dense_0"]["kernel"]) * 2)


def test_checkpoint_manager_numeric_step_order(run):
  root, states = run
  whole, names = foreign.load_foreign_stack(root / "mgr")
  assert names == [str(i) for i in range(12)]  # 10 and 11 after 9
  np.testing.assert_array_equal(whole["step"], np.arange(1, 13))
  _assert_stack_equals(whole, [_as_dict(st) for st in states])
  stacked, _ = foreign.load_foreign_stack(root / "mgr", like=LIKE)
  _assert_stack_equals(stacked, [_variables(st) for st in states])
  one, names = foreign.load_foreign_stack(root / "mgr" / "10", like=LIKE)  # one step folder
  assert names == ["10"]
  _assert_stack_equals(one, [_variables(states[10])])


def test_checkpoint_manager_named_items(run):
  root, states = run
  with pytest.raises(MiaInputError, match=r"item: .*several items \['ema', 'state'\]"):
    foreign.load_foreign_stack(root / "items", like=LIKE)
  stacked, names = foreign.load_foreign_stack(root / "items", like=LIKE, item="state")
  assert names == ["0", "1"]
  _assert_stack_equals(stacked, [_variables(st) for st in states[:2]])
  ema, _ = foreign.load_foreign_stack(root / "items", like=LIKE, item="ema")
  _assert_stack_equals(ema, [_variables(states[0])] * 2)
  with pytest.raises(MiaInputError, match=r"item: .*no item 'nope'.*\['ema', 'state'\]"):
    foreign.load_foreign_stack(root / "items", item="nope")
  with pytest.raises(MiaInputError, match="item: .*plain checkpoint"):
    foreign.load_foreign_stack(root / "std", item="state")


def test_like_mismatch_lists_paths_before_reading_data(run, monkeypatch):
  root, _ = run

  def no_read(*a, **k):
    raise AssertionError("array data read before the structure check")

  monkeypatch.setattr(foreign._Reader, "restore", no_read)
  wide = jax.eval_shape(CNN(features=5).init, jax.random.key(0), X)
  with pytest.raises(MiaInputError) as e:
    foreign.load_foreign_stack(root / "std", like=wide)
  msg = str(e.value)
  assert msg.startswith("like: checkpoint 'ep_0'")
  assert "shape differs (2)" in msg
  assert "params/Dense_0/kernel (2, 3) in checkpoint vs (2, 5) in like" in msg
  assert "params/Dense_0/bias (3,) in checkpoint vs (5,) in like" in msg
  other = {"params": dict(LIKE["params"]), "batch_stats": LIKE["batch_stats"]}
  del other["params"]["Conv_0"]
  other["params"]["Dense_1"] = {"kernel": jax.ShapeDtypeStruct((3, 3), jnp.float32)}
  with pytest.raises(MiaInputError) as e:
    foreign.load_foreign_stack(root / "mgr", like=other)
  msg = str(e.value)
  assert "missing in checkpoint (1): params/Dense_1/kernel" in msg
  assert "extra in checkpoint (2): params/Conv_0/bias, params/Conv_0/kernel" in msg
  many = {"params": {f"layer_{i:02d}": jax.ShapeDtypeStruct((2,), jnp.float32)
                     for i in range(15)}}
  with pytest.raises(MiaInputError, match=r"missing in checkpoint \(15\): .*layer_09, \.\.\. "
                                          r"\(5 more\); extra in checkpoint \(6\)"):
    foreign.load_foreign_stack(root / "std", like=many)
  with pytest.raises(MiaInputError, match=r"like: the checkpoint lacks the collection\(s\) "
                                          r"\['cache'\]"):
    foreign.load_foreign_stack(root / "std", like={"cache": LIKE["params"]})


def test_mixed_structures_rejected(run, tmp_path):
  root, _ = run
  shutil.copytree(root / "std" / "ep_0", tmp_path / "ep_0")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ep_1", _as_dict(_states(1, features=5)[0]))
  with pytest.raises(MiaInputError, match=r"path: the checkpoints have different structures: "
                                          r"checkpoint 'ep_1' differs from the first one, "
                                          r"'ep_0'.*Dense_0/kernel \(2, 5\) in 'ep_1' "
                                          r"vs \(2, 3\) in 'ep_0'"):
    foreign.load_foreign_stack(tmp_path, select=lambda s: s["params"])
  with pytest.raises(MiaInputError, match="like: checkpoint 'ep_1' does not match"):
    foreign.load_foreign_stack(tmp_path, like=LIKE)


def test_path_errors(run, tmp_path):
  root, _ = run
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(MiaInputError, match="path: .* is not a directory"):
    foreign.load_foreign_stack(tmp_path / "file.txt")
  (tmp_path / "empty").mkdir()
  with pytest.raises(MiaInputError, match=r"path: no orbax checkpoints found .*empty.*"
                                          r"Recognized layouts: .*CheckpointManager root"):
    foreign.load_foreign_stack(tmp_path / "empty")
  (tmp_path / "junk" / "logs").mkdir(parents=True)
  with pytest.raises(MiaInputError, match=r"none of which is a checkpoint: \['logs'\]"):
    foreign.load_foreign_stack(tmp_path / "junk")
  shutil.copytree(root / "std" / "ep_1", tmp_path / "bad" / "ep_1")
  (tmp_path / "bad" / "ep_1" / "_METADATA").write_text("{not json")
  with pytest.raises(CorruptCheckpointError, match=r"path: checkpoint 'ep_1' .*cannot be read"):
    foreign.load_foreign_stack(tmp_path / "bad", like=LIKE)
  with pytest.raises(MiaInputError, match="select: expected a function"):
    foreign.load_foreign_stack(root / "std", select="params")


def test_select_variables():
  restored = {"params": {"w": np.ones(2)}, "batch_stats": {"m": np.zeros(2)},
              "opt_state": [{"mu": np.ones(2)}], "step": np.int64(3)}
  like = {"params": {"w": np.ones(2)}, "batch_stats": {"m": np.zeros(2)}}
  assert foreign.select_variables(restored, like) == {"params": restored["params"],
                                                      "batch_stats": restored["batch_stats"]}
  assert foreign.select_variables(restored, {"params": {}}) == {"params": restored["params"]}
  assert foreign.select_variables(restored, {"w": 0}) is restored["params"]  # bare params
  with pytest.raises(MiaInputError, match=r"like: the checkpoint lacks the collection\(s\) "
                                          r"\['batch_stats'\].*\['opt_state', 'params', 'step'\]"):
    foreign.select_variables({k: v for k, v in restored.items() if k != "batch_stats"}, like)
  with pytest.raises(MiaInputError, match="like: expected a non-empty mapping"):
    foreign.select_variables(restored, [1])
