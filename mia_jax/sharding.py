"""Many models over many devices: the model axis of a stack, sharded with ``jax.sharding``.

A stack of M models (every leaf of the params pytree has leading axis M, see
:mod:`mia_jax.train`) is split over the devices of a one-axis :class:`jax.sharding.Mesh`
named ``"model"``: device d holds models ``d * M/D .. (d+1) * M/D - 1``. The data (the
training set, a chunk of examples to score) is replicated on every device. A jitted,
``vmap``-ed per-model function then runs each device's models locally; no device talks to
another, because the models are independent. The results equal the single-device path
(``tests/test_sharding.py`` checks it on 4 CPU devices).

Multi-host: call ``jax.distributed.initialize(...)`` first; ``jax.devices()`` then lists
the devices of all hosts and :func:`model_mesh` spans them (see ``docs/multi_device.md``).

These are pure placement helpers: nothing here is jitted or traced.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mia_jax._validation import MiaInputError

MODEL_AXIS = "model"

__all__ = ["MODEL_AXIS", "model_mesh", "check_mesh", "stacked_sharding", "replicated_sharding",
           "shard_stacked", "replicate", "gather"]


def model_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh ``("model",)`` over ``devices`` (default: ``jax.devices()``, which
  spans every host after ``jax.distributed.initialize``).

  Args:
    devices: the devices to shard the models over, in order.

  Returns:
    ``Mesh(devices, ("model",))``.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise MiaInputError("devices: expected at least one device")
  if not all(isinstance(d, jax.Device) for d in devices):
    raise MiaInputError(f"devices: expected jax.Device objects, got {devices!r}")
  if len(set(devices)) != len(devices):
    raise MiaInputError("devices: the same device is listed more than once")
  return Mesh(np.array(devices, dtype=object), (MODEL_AXIS,))


def check_mesh(mesh: Any, num_models: int | None = None, name: str = "mesh") -> Mesh:
  """Validates a model mesh (a ``jax.sharding.Mesh`` with a "model" axis whose size
  divides ``num_models``); returns it."""
  if not isinstance(mesh, Mesh):
    raise MiaInputError(f"{name}: expected a jax.sharding.Mesh (see model_mesh()), got "
                        f"{type(mesh).__name__}")
  if MODEL_AXIS not in mesh.axis_names:
    raise MiaInputError(f"{name}: expected a mesh with a {MODEL_AXIS!r} axis, got axes "
                        f"{tuple(mesh.axis_names)}")
  d = int(mesh.shape[MODEL_AXIS])
  if num_models is not None and num_models % d:
    up = -(-num_models // d) * d
    raise MiaInputError(
        f"{name}: the number of models M={num_models} is not divisible by the {d} devices "
        f"of the mesh's {MODEL_AXIS!r} axis; use a multiple of {d} (e.g. M={up}) or fewer "
        f"devices (model_mesh(jax.devices()[:k]) with k dividing M)")
  return mesh


def stacked_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a stacked leaf: leading axis M split over "model", rest whole."""
  return NamedSharding(mesh, P(MODEL_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def _put(leaf, sharding: NamedSharding):
  """``jax.device_put`` that also works when ``sharding`` spans other hosts' devices (the
  value is then taken to be the same on every process, as in SPMD programs)."""
  if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
    return leaf
  if sharding.is_fully_addressable:
    return jax.device_put(leaf, sharding)
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    data = _put(jax.random.key_data(leaf), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
  host = np.asarray(leaf)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_stacked(tree, mesh: Mesh):
  """Places every leaf of a stacked pytree with its leading axis M split over "model".

  Args:
    tree: pytree whose leaves all have the same leading axis M (stacked variables,
      optimizer states, per-model schedules or keys); NumPy or JAX arrays.
    mesh: a mesh with a "model" axis of D devices; D must divide M.

  Returns:
    The same pytree of ``jax.Array``s with sharding ``NamedSharding(mesh, P("model"))``:
    each device holds M/D consecutive models.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return tree
  m = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in leaves}
  if len(m) != 1 or None in m:
    raise MiaInputError(f"tree: expected every leaf to have the same leading (model) axis, "
                        f"got leading sizes {sorted(m, key=str)}")
  check_mesh(mesh, m.pop())
  sharding = stacked_sharding(mesh)
  return jax.tree.map(lambda leaf: _put(leaf, sharding), tree)


def replicate(tree, mesh: Mesh):
  """Places a whole copy of every leaf on every device of ``mesh``."""
  check_mesh(mesh)
  sharding = replicated_sharding(mesh)
  return jax.tree.map(lambda leaf: _put(leaf, sharding), tree)


def gather(tree):
  """Every (numeric) leaf as one host NumPy array, whatever its sharding.

  On one host this is ``np.asarray`` (which already assembles the shards); across hosts
  each process receives the whole array (``multihost_utils.process_allgather``, a
  collective: call it on every process).
  """
  def one(leaf):
    if (isinstance(leaf, jax.Array) and jax.process_count() > 1
        and not leaf.is_fully_addressable):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)
  return jax.tree.map(one, tree)
