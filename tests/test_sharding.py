"""Tests for mia_jax.sharding and the ``mesh=`` paths of train_models / blackbox_signals.

* On 4 devices (the CPU split with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``,
  in a subprocess because the device count is fixed when JAX starts): training M=4 and
  M=8 stacked models with ``mesh=model_mesh()`` equals training them on one device (to
  float32 rounding: each device runs the same per-model step on M/4 models, XLA may
  vectorize it differently), every result leaf is split over the 4 devices, the step and
  signal functions compile once, checkpoints of sharded stacks save and resume, and the
  black-box signals agree. The accelerator epoch (one ``lax.scan`` in one jit) is checked
  too, by forcing it on the CPU.
* Two processes of 2 CPU devices each, joined with ``jax.distributed.initialize`` as two
  hosts would be: the mesh spans both, and the results equal one device's.
* In-process (one device): placement helpers, and bad meshes raise MiaInputError before
  any compute.

Run this file as a script (``python tests/test_sharding.py``) to run the 4-device check
by hand; it prints OK.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mia_jax._validation import MiaInputError
from mia_jax.sharding import gather, model_mesh, replicate, shard_stacked

NUM_DEVICES = 4
CLOSE = dict(rtol=1e-5, atol=1e-6)  # one float32 pass on other devices: a reordered sum
# Models trained on 4 devices vs 1: each device vmaps over M/4 models instead of M, another
# vectorization of the same float32 steps, and rounding differences grow through the
# optimizer's steps (Adam divides by sqrt(v)); tests/test_train.py's stacked-vs-loop bound.
TRAINED = dict(rtol=2e-4, atol=2e-5)


# -- 4 devices, in a subprocess ------------------------------------------------------------

def test_sharded_training_and_signals_equal_single_device_on_4_cpu_devices():
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
  assert out.stdout.strip().splitlines()[-1] == "OK", out.stdout[-3000:]


def _assert_trees_close(a, b):  # trained variables
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, la), lb in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), err_msg=jax.tree_util.keystr(path),
                               **TRAINED)


def _assert_sharded(tree, mesh):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    where = jax.tree_util.keystr(path)
    assert isinstance(leaf.sharding, NamedSharding), where
    assert leaf.sharding.mesh == mesh and leaf.sharding.spec == P("model"), where
    assert len(leaf.devices()) == NUM_DEVICES, where
    # each device holds M/4 whole models
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {leaf.shape[0] // NUM_DEVICES}


def _child() -> None:
  """The 4-device check (run in a subprocess by the test above)."""
  import tempfile

  from mia_jax.models import make_model
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import TrainConfig, load_variables, save_variables, train_models

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  mesh = model_mesh()
  assert mesh.shape == {"model": NUM_DEVICES}

  compiles = io.StringIO()
  handler = logging.StreamHandler(compiles)
  logging.getLogger("jax").addHandler(handler)
  jax.config.update("jax_log_compiles", True)

  rng = np.random.default_rng(0)
  n = 24
  y = (np.arange(n) % 3).astype(np.int32)
  x = (2.0 * rng.standard_normal((3, 6))[y] + rng.standard_normal((n, 6))).astype(np.float32)
  # M=4: momentum + weight decay, 2 steps an epoch, unequal training sets (padding, no-op
  # steps). M=8: Adam with dropout (per-model keys, split over the devices).
  cases = [
      (4, 0.0, TrainConfig(optimizer="momentum", learning_rate=0.05, weight_decay=1e-2,
                           epochs=2, batch_size=8)),
      (8, 0.3, TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=2, batch_size=8)),
  ]
  for m, dropout, config in cases:
    model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,), dropout=dropout)
    keep = rng.random((m, n)) < 0.5
    keep[:, :2] = True
    keep[0, 2:] = False  # model 0: 2 examples, one padded step then a no-op step
    plain = train_models(model, x, y, keep, config=config, seed=7)
    compiles.seek(0)
    compiles.truncate()
    sharded = train_models(model, x, y, keep, config=config, seed=7, mesh=mesh)
    log = compiles.getvalue()
    # the jitted step ran epochs * steps times and was compiled once
    assert log.count("Compiling jit(step)") == 1, log
    _assert_sharded(sharded.variables, mesh)
    _assert_trees_close(sharded.variables, plain.variables)
    np.testing.assert_allclose(sharded.losses, plain.losses, **TRAINED)
    assert sharded.losses.shape == (m, config.epochs)

    # black-box signals, 3 chunks (the last padded): sharded == unsharded
    compiles.seek(0)
    compiles.truncate()
    want = blackbox_signals(model, plain.variables, x, y, stacked=True, microbatch_size=10)
    got = blackbox_signals(model, sharded.variables, x, y, stacked=True, microbatch_size=10,
                           mesh=mesh)
    assert compiles.getvalue().count("Compiling jit(batch)") == 2  # once each way
    assert set(got) == set(want)
    for k in want:
      assert isinstance(got[k], np.ndarray) and got[k].shape == want[k].shape, k
      np.testing.assert_allclose(got[k], want[k], err_msg=k, **TRAINED)
    # unsharded variables are placed by blackbox_signals itself
    again = blackbox_signals(model, plain.variables, x, y, stacked=True, microbatch_size=10,
                             mesh=mesh)
    np.testing.assert_allclose(again["logits"], got["logits"], **CLOSE)

  # Checkpoints of a sharded stack: save_variables gathers (np.asarray) and the reload
  # equals the sharded arrays; a finished checkpointed run resumes to the same result,
  # placed on the mesh again.
  with tempfile.TemporaryDirectory() as tmp:
    save_variables(os.path.join(tmp, "v"), sharded.variables)
    loaded, _ = load_variables(os.path.join(tmp, "v"), like=sharded.variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(sharded.variables)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt = os.path.join(tmp, "run")
    first = train_models(model, x, y, keep, config=config, seed=7, mesh=mesh,
                         checkpoint_dir=ckpt)
    resumed = train_models(model, x, y, keep, config=config, seed=7, mesh=mesh,
                           checkpoint_dir=ckpt)
    _assert_sharded(resumed.variables, mesh)
    for a, b in zip(jax.tree.leaves(resumed.variables), jax.tree.leaves(first.variables)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(resumed.losses, first.losses)

  # M not divisible by the 4 devices: an error that suggests a multiple, before compute.
  with pytest.raises(MiaInputError, match=r"M=6 is not divisible by the 4 devices.*M=8"):
    train_models(model, x, y, keep[:6], config=config, mesh=mesh)
  # fewer devices: a 2-device mesh takes M=6
  small = model_mesh(jax.devices()[:2])
  placed = shard_stacked({"a": np.arange(12.0).reshape(6, 2)}, small)
  assert len(placed["a"].devices()) == 2

  # The accelerator path (an epoch is one lax.scan inside one jit with pinned shardings),
  # forced on the CPU: sharded == unsharded, one compile for all epochs.
  import mia_jax.train as train_module
  train_module.on_cpu = lambda: False
  train_module._compiled_epoch.cache_clear()
  config4 = cases[0][2]
  model4 = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,))
  keep4 = rng.random((4, n)) < 0.5
  keep4[:, 0] = True
  plain = train_models(model4, x, y, keep4, config=config4, seed=3)
  compiles.seek(0)
  compiles.truncate()
  scanned = train_models(model4, x, y, keep4, config=config4, seed=3, mesh=mesh)
  assert compiles.getvalue().count("Compiling jit(epoch)") == 1, compiles.getvalue()
  _assert_sharded(scanned.variables, mesh)
  _assert_trees_close(scanned.variables, plain.variables)
  np.testing.assert_allclose(scanned.losses, plain.losses, **TRAINED)
  print("OK")


# -- 2 processes x 2 devices, through jax.distributed ------------------------------------

@pytest.mark.slow
def test_multi_process_mesh_equals_single_device():
  """Two processes on this machine (2 CPU devices each, gloo collectives) stand in for
  two hosts: ``jax.distributed.initialize`` then ``model_mesh()`` spans 4 devices."""
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--process-id", str(i),
                             "--num-processes", "2", "--coordinator", f"localhost:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert stdout.strip().splitlines()[-1] == "OK", stdout[-3000:]


def _multi_process_child(process_id: int, num_processes: int, coordinator: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  from mia_jax.models import make_model
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import TrainConfig, train_models

  assert jax.process_count() == num_processes and jax.device_count() == NUM_DEVICES
  mesh = model_mesh()
  rng = np.random.default_rng(0)  # the same data on every process (SPMD)
  n = 16
  y = (np.arange(n) % 3).astype(np.int32)
  x = rng.standard_normal((n, 6)).astype(np.float32)
  keep = rng.random((4, n)) < 0.5
  keep[:, 0] = True
  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,))
  config = TrainConfig(optimizer="adam", learning_rate=1e-2, epochs=1, batch_size=8)
  plain = train_models(model, x, y, keep, config=config, seed=7)  # this process's device 0
  sharded = train_models(model, x, y, keep, config=config, seed=7, mesh=mesh)
  leaf = jax.tree.leaves(sharded.variables)[0]
  assert not leaf.is_fully_addressable and len(leaf.addressable_shards) == 2
  _assert_trees_close(gather(sharded.variables), plain.variables)
  np.testing.assert_allclose(sharded.losses, plain.losses, **TRAINED)
  want = blackbox_signals(model, plain.variables, x, y, stacked=True, microbatch_size=10)
  got = blackbox_signals(model, sharded.variables, x, y, stacked=True, microbatch_size=10,
                         mesh=mesh)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], err_msg=k, **TRAINED)
  with pytest.raises(MiaInputError, match="checkpoint_dir"):
    train_models(model, x, y, keep, config=config, mesh=mesh, checkpoint_dir="unused")
  print("OK", flush=True)


# -- in-process, one device ----------------------------------------------------------------

def _two_of_one_device() -> Mesh:
  """A "model" axis of size 2 on one device: enough to exercise the divisibility check,
  which runs before anything is placed."""
  d = jax.devices()[0]
  return Mesh(np.array([d, d], dtype=object), ("model",))


def test_model_mesh_spans_the_devices():
  mesh = model_mesh()
  assert mesh.axis_names == ("model",)
  assert list(mesh.devices.flat) == jax.devices()
  with pytest.raises(MiaInputError, match="devices"):
    model_mesh([])
  with pytest.raises(MiaInputError, match="more than once"):
    model_mesh([jax.devices()[0]] * 2)


def test_shard_replicate_gather_round_trip():
  mesh = model_mesh()
  tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int32)}
  placed = shard_stacked(tree, mesh)
  for leaf in jax.tree.leaves(placed):
    assert leaf.sharding == NamedSharding(mesh, P("model"))
  back = gather(placed)
  for k in tree:
    assert isinstance(back[k], np.ndarray)
    np.testing.assert_array_equal(back[k], tree[k])
  rep = replicate({"x": np.zeros((5, 2))}, mesh)
  assert rep["x"].sharding == NamedSharding(mesh, P())
  keys = shard_stacked(jax.random.split(jax.random.key(0), 3), mesh)
  assert keys.shape == (3,) and keys.sharding.spec == P("model")


def test_shard_stacked_rejects_bad_inputs():
  mesh = model_mesh()
  with pytest.raises(MiaInputError, match="leading"):
    shard_stacked({"a": np.zeros((3, 2)), "b": np.zeros((4,))}, mesh)
  with pytest.raises(MiaInputError, match="leading"):
    shard_stacked({"a": np.zeros(())}, mesh)
  with pytest.raises(MiaInputError, match=r"M=3 is not divisible by the 2 devices.*M=4"):
    shard_stacked({"a": np.zeros((3, 2))}, _two_of_one_device())
  with pytest.raises(MiaInputError, match="jax.sharding.Mesh"):
    shard_stacked({"a": np.zeros((3, 2))}, jax.devices())
  other = Mesh(np.array(jax.devices()[:1], dtype=object), ("data",))
  with pytest.raises(MiaInputError, match="'model' axis"):
    replicate({"a": np.zeros(2)}, other)


def test_train_and_signals_check_the_mesh_before_compute():
  from mia_jax.models import make_model
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import TrainConfig, train_models

  model = make_model("mlp", input_shape=(6,), num_classes=3, widths=(8,))
  x = np.zeros((6, 6), np.float32)
  y = np.arange(6, dtype=np.int32) % 3
  keep = np.ones((3, 6), bool)
  with pytest.raises(MiaInputError, match=r"mesh: the number of models M=3 .* M=4"):
    train_models(model, x, y, keep, config=TrainConfig(epochs=1), mesh=_two_of_one_device())
  with pytest.raises(MiaInputError, match="mesh"):
    train_models(model, x, y, keep, config=TrainConfig(epochs=1), mesh="gpu")
  stacked = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), 3))
  stacked = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), stacked)
  with pytest.raises(MiaInputError, match="M=3"):
    blackbox_signals(model, stacked, x, y, stacked=True, mesh=_two_of_one_device())
  with pytest.raises(MiaInputError, match="stacked=True"):
    blackbox_signals(model, jax.tree.map(lambda a: a[0], stacked), x, y, mesh=model_mesh())


if __name__ == "__main__":
  if "--process-id" in sys.argv:
    arg = lambda name: sys.argv[sys.argv.index(name) + 1]  # noqa: E731
    _multi_process_child(int(arg("--process-id")), int(arg("--num-processes")),
                         arg("--coordinator"))
  else:
    _child()
