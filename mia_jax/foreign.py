"""Foreign checkpoints: orbax checkpoints written by the user's own training loop.

:func:`load_foreign_stack` loads the checkpoints of one training run -- written with
``ocp.StandardCheckpointer().save(path, tree)``, ``ocp.PyTreeCheckpointer().save(path,
tree)`` or an ``ocp.CheckpointManager`` -- as ONE stacked pytree (a leading checkpoint
axis C on every leaf), ready for :func:`mia_jax.checkpoints.attack_checkpoints`.

Recognized layouts of ``path``:

* one checkpoint directory (it holds orbax's ``_METADATA`` file);
* a directory of such checkpoint directories (``ep_0``, ``ep_1``, ...);
* a ``CheckpointManager`` root: step folders (``0``, ``1``, ...) each holding one item
  folder (``default`` when saved with ``args=ocp.args.StandardSave(...)``, or a named item
  such as ``state``); ``item=`` picks one when a step holds several;
* one step folder of a ``CheckpointManager``.

Checkpoints are ordered by name in natural order (``ep_10`` and step ``10`` after ``9``).

Nothing needs the user's ``TrainState`` class: trees are restored as orbax describes them
in the checkpoint's own metadata -- nested dicts (custom classes and named tuples become
dicts, tuples become lists) of NumPy arrays, exactly the saved bytes. Structures and
shapes are checked from that metadata before any array data is read, and only the
leaves that ``select`` picks are read when it picks them by key (``select_variables``
does: an optimizer state is never read).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from mia_jax._validation import MiaInputError

PYTREE_MARKERS = ("_METADATA", "manifest.ocdbt")
"""Files that make a directory an orbax PyTree checkpoint (or a manager's item folder)."""

STEP_MARKER = "_CHECKPOINT_METADATA"
"""File a ``CheckpointManager`` writes into each step folder."""

MAX_LISTED = 10
"""Paths listed per kind of difference in an error message (the count is always given)."""

LAYOUTS = ("one checkpoint directory written by ocp.StandardCheckpointer().save or "
           "ocp.PyTreeCheckpointer().save (it holds a _METADATA file); a directory of such "
           "checkpoint directories; a CheckpointManager root (step folders 0, 1, ... each "
           "holding an item folder such as 'default' or 'state'); or one step folder")


# -- finding checkpoints ------------------------------------------------------------------

def _natural_key(name: str) -> tuple:
  """Sort key putting ``ep_10`` after ``ep_9`` (digit runs compare as numbers)."""
  parts = re.split(r"(\d+)", name)
  return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _hidden(name: str) -> bool:
  """Temporary folders of an unfinished save (orbax's and mia-jax's) and dot-folders."""
  return name.startswith(".") or ".orbax-checkpoint-tmp" in name


def _is_pytree_dir(d: str) -> bool:
  return os.path.isdir(d) and any(os.path.isfile(os.path.join(d, m)) for m in PYTREE_MARKERS)


def _subdirs(d: str) -> list[str]:
  try:
    names = os.listdir(d)
  except OSError as e:
    raise MiaInputError(f"path: {d} cannot be listed ({e})") from e
  return sorted((n for n in names if not _hidden(n) and os.path.isdir(os.path.join(d, n))),
                key=_natural_key)


def _step_items(d: str) -> list[str]:
  """Item folders (orbax PyTree checkpoints) inside a step folder."""
  return [n for n in _subdirs(d) if _is_pytree_dir(os.path.join(d, n))]


def _pick_item(name: str, d: str, items: Sequence[str], item: str | None) -> str:
  if item is not None:
    if item not in items:
      raise MiaInputError(f"item: step folder {name!r} ({d}) has no item {item!r}; it holds "
                          f"{list(items)}")
    return os.path.join(d, item)
  if len(items) > 1:
    raise MiaInputError(f"item: step folder {name!r} ({d}) holds several items {list(items)}; "
                        "pass item= to pick one")
  return os.path.join(d, items[0])


def list_foreign_checkpoints(path: str | os.PathLike, *, item: str | None = None
                             ) -> list[tuple[str, str]]:
  """The orbax checkpoints at ``path``, in natural name order (step 10 after step 9).

  Args:
    path: one checkpoint directory, a directory of checkpoint directories, a
      ``CheckpointManager`` root, or one step folder (see the module docstring).
    item: the item to load from each step folder, when steps hold several (for example
      ``"state"``); by default the only one.
  Returns:
    ``(name, directory)`` pairs: the name is the checkpoint's (or step folder's) name,
    the directory the orbax PyTree checkpoint to restore.
  Raises:
    MiaInputError: ``path`` is not a directory, holds no checkpoints (the message lists
      the recognized layouts), or ``item`` is missing or ambiguous.
  """
  if item is not None and (not isinstance(item, str) or not item or os.sep in item):
    raise MiaInputError(f"item: expected the name of an item folder (such as 'default' or "
                        f"'state'), got {item!r}")
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise MiaInputError(f"path: {path} is not a directory")
  base = os.path.basename(path)
  if _is_pytree_dir(path):
    if item is not None:
      raise MiaInputError(f"item: {path} is a plain checkpoint directory, not a "
                          f"CheckpointManager step folder, so it has no item {item!r}")
    return [(base, path)]
  items = _step_items(path)
  if items and os.path.isfile(os.path.join(path, STEP_MARKER)):  # one manager step folder
    return [(base, _pick_item(base, path, items, item))]
  found, steps = [], 0
  children = _subdirs(path)
  for name in children:
    d = os.path.join(path, name)
    if _is_pytree_dir(d):
      found.append((name, d))
    elif sub := _step_items(d):
      found.append((name, _pick_item(name, d, sub, item)))
      steps += 1
    elif name.isdigit() and os.path.isfile(os.path.join(d, STEP_MARKER)):
      _corrupt(f"path: step folder {name!r} ({d}) holds no orbax item folder (no "
               f"sub-directory with {' or '.join(PYTREE_MARKERS)}); it is incomplete or "
               "corrupt")
  if not found:
    held = f"; it holds {len(children)} folder(s) none of which is a checkpoint: " \
           f"{children[:MAX_LISTED]}" if children else " (it is empty)"
    raise MiaInputError(f"path: no orbax checkpoints found in {path}{held}. Recognized "
                        f"layouts: {LAYOUTS}")
  if item is not None and not steps:
    raise MiaInputError(f"item: {path} holds plain checkpoint directories, not "
                        f"CheckpointManager step folders, so there is no item {item!r}")
  return found


# -- picking what the model needs ----------------------------------------------------------

def select_variables(restored: Any, like: Any) -> dict:
  """The variable collections ``like`` has, picked from a restored training state.

  ``restored`` is a TrainState-like dict (``params``, ``batch_stats``, ``opt_state``,
  ``step``, ...); the result holds ``like``'s top-level keys only (for a flax model:
  ``params`` plus ``batch_stats`` when it has batch norm). When ``like`` is a bare params
  tree (no ``params`` key) and ``restored`` holds ``params``, ``restored["params"]`` is
  returned.

  Args:
    restored: the restored tree (a mapping).
    like: the model's variables (arrays or ``jax.ShapeDtypeStruct``), e.g.
      ``jax.eval_shape(model.init, key, x)``.
  Returns:
    A dict with ``like``'s top-level keys.
  Raises:
    MiaInputError: ``like`` or ``restored`` is not a mapping, or ``restored`` lacks a
      collection ``like`` has (the message names it and lists what ``restored`` holds).
  """
  if not isinstance(like, Mapping) or not like:
    raise MiaInputError("like: expected a non-empty mapping of variable collections such as "
                        f"{{'params': ..., 'batch_stats': ...}}, got {type(like).__name__}")
  if not isinstance(restored, Mapping):
    raise MiaInputError(f"restored: expected a mapping (a TrainState-like dict), got "
                        f"{type(restored).__name__}; pass select= to pick the variables")
  wanted = list(like)
  missing = [k for k in wanted if k not in restored]
  if not missing:
    return {k: restored[k] for k in wanted}
  inner = restored.get("params")
  if "params" not in like and isinstance(inner, Mapping) and all(k in inner for k in wanted):
    return inner
  raise MiaInputError(f"like: the checkpoint lacks the collection(s) {missing} that the "
                      f"model's variables have; it holds {sorted(map(str, restored))}. Pass "
                      "select= to say where they are")


# -- reading -------------------------------------------------------------------------------

class _Opaque:
  """A leaf that is not an array (a string, or metadata orbax cannot describe)."""

  def __init__(self, kind: str):
    self.kind = kind

  def __repr__(self) -> str:
    return f"<{self.kind}>"


def _corrupt(message: str):
  from mia_jax.train import CorruptCheckpointError
  raise CorruptCheckpointError(message)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else type(e).__name__


def _abstract_leaf(meta: Any) -> Any:
  shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
  if shape is not None and dtype is not None:
    try:
      return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
    except (TypeError, ValueError):
      pass
  return _Opaque(type(meta).__name__)


class _Reader:
  """Reads orbax PyTree checkpoints (StandardCheckpointer, PyTreeCheckpointer and
  CheckpointManager items share this on-disk format) without a target structure."""

  def __init__(self):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self._handler = ocp.PyTreeCheckpointHandler()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._handler.close()

  def abstract(self, name: str, d: str) -> Any:
    """The saved tree with ``jax.ShapeDtypeStruct`` leaves, from the metadata only."""
    from etils import epath
    try:
      meta = self._handler.metadata(epath.Path(d))
      tree = meta.tree if hasattr(meta, "tree") else meta
    except Exception as e:  # noqa: BLE001 - orbax raises many types on bad files
      _corrupt(f"path: checkpoint {name!r} ({d}) cannot be read: its metadata is missing "
               f"or corrupt ({type(e).__name__}: {_first_line(e)})")
    if tree is None or not jax.tree.leaves(tree):
      _corrupt(f"path: checkpoint {name!r} ({d}) has no readable tree metadata")
    return jax.tree.map(_abstract_leaf, tree)

  def restore(self, name: str, d: str, abstract: Any, keys: list[tuple] | None) -> Any:
    """The saved tree as NumPy arrays; only the dict-key paths ``keys`` when given."""
    from etils import epath
    ocp = self._ocp

    def args_for(leaf):
      if isinstance(leaf, jax.ShapeDtypeStruct):
        return ocp.RestoreArgs(restore_type=np.ndarray)
      return ocp.RestoreArgs()

    try:
      if keys is None:
        args = ocp.args.PyTreeRestore(restore_args=jax.tree.map(args_for, abstract))
      else:
        item = _nested({k: _get(abstract, k) for k in keys})
        args = ocp.args.PyTreeRestore(item=item, restore_args=jax.tree.map(args_for, item),
                                      partial_restore=True)
      return self._handler.restore(epath.Path(d), args=args)
    except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many types on bad files
      _corrupt(f"path: checkpoint {name!r} ({d}) cannot be read back: "
               f"{type(e).__name__}: {_first_line(e)}")


def _key_name(k: Any) -> Any:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _get(tree: Any, path: tuple) -> Any:
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      tree = tree[k.key]
    elif isinstance(k, jax.tree_util.SequenceKey):
      tree = tree[k.idx]
    elif isinstance(k, jax.tree_util.GetAttrKey):
      tree = getattr(tree, k.name)
    else:
      tree = jax.tree.leaves(tree)[k.key]  # FlattenedIndexKey
  return tree


def _nested(flat: dict[tuple, Any]) -> dict:
  """Nested dicts from ``{(DictKey, ...): leaf}``."""
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k.key, {})
    node[path[-1].key] = leaf
  return out


# -- checking ------------------------------------------------------------------------------

def _path_str(path: tuple) -> str:
  return "/".join(str(_key_name(k)) for k in path)


def _leaf_sig(leaf: Any) -> tuple:
  if isinstance(leaf, _Opaque):
    return None, leaf.kind
  shape = tuple(np.shape(leaf))
  dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
  return shape, np.dtype(dtype).name


def _signature(tree: Any) -> dict[str, tuple]:
  """``{"params/Dense_0/kernel": (shape, dtype name)}`` in flattening order."""
  return {_path_str(p): _leaf_sig(leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _listed(paths: list[str]) -> str:
  more = f", ... ({len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else ""
  return ", ".join(paths[:MAX_LISTED]) + more


def _diff(got: dict, want: dict, got_label: str, want_label: str, dtypes: bool) -> str:
  """The differences between two signatures ("" when they match)."""
  missing = [p for p in want if p not in got]
  extra = [p for p in got if p not in want]
  common = [p for p in want if p in got]
  shapes = [f"{p} {got[p][0]} in {got_label} vs {want[p][0]} in {want_label}"
            for p in common if got[p][0] != want[p][0]]
  kinds = [f"{p} {got[p][1]} in {got_label} vs {want[p][1]} in {want_label}"
           for p in common if dtypes and got[p][0] == want[p][0] and got[p][1] != want[p][1]]
  parts = []
  if missing:
    parts.append(f"missing in {got_label} ({len(missing)}): {_listed(missing)}")
  if extra:
    parts.append(f"extra in {got_label} ({len(extra)}): {_listed(extra)}")
  if shapes:
    parts.append(f"shape differs ({len(shapes)}): {_listed(shapes)}")
  if kinds:
    parts.append(f"dtype differs ({len(kinds)}): {_listed(kinds)}")
  return "; ".join(parts)


def _check(name: str, sig: dict, like_sig: dict | None, ref: tuple[str, dict] | None) -> None:
  """Checkpoint ``name`` against ``like`` (structure and shapes) and against the first
  checkpoint of the stack (structure, shapes and dtypes)."""
  if like_sig is not None:
    d = _diff(sig, like_sig, "checkpoint", "like", dtypes=False)
    if d:
      raise MiaInputError(f"like: checkpoint {name!r} does not match the structure and shapes "
                          f"of like (the model's variables): {d}")
  if ref is not None:
    d = _diff(sig, ref[1], repr(name), repr(ref[0]), dtypes=True)
    if d:
      raise MiaInputError(f"path: the checkpoints have different structures: checkpoint "
                          f"{name!r} differs from the first one, {ref[0]!r}: {d}")


@dataclasses.dataclass
class _Plan:
  """How one checkpoint's selected tree is obtained.

  ``selected``: the selected tree's abstract form (None when ``select`` cannot be traced);
  ``sources``: for a ``select`` that picks leaves by key, the saved path of each selected
  leaf (in ``treedef`` order), so only those are read.
  """
  selected: Any = None
  sources: list[tuple] | None = None
  treedef: Any = None


def _plan(select: Callable | None, abstract: Any) -> _Plan:
  if select is None:
    return _Plan(selected=abstract)
  try:
    picked = select(abstract)
  except MiaInputError:
    raise
  except Exception:  # noqa: BLE001 - select may compute; traced or run on the data below
    picked = None
  if picked is not None:
    by_id = {id(leaf): p for p, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    leaves, treedef = jax.tree.flatten(picked)
    if leaves and all(id(leaf) in by_id for leaf in leaves):
      return _Plan(selected=picked, sources=[by_id[id(leaf)] for leaf in leaves],
                   treedef=treedef)
  try:
    return _Plan(selected=jax.eval_shape(select, abstract))
  except Exception:  # noqa: BLE001 - not traceable (NumPy, strings): checked after reading
    return _Plan()


def _as_leaf(x: Any, name: str, path: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.dtype.kind not in "biuf":
    raise MiaInputError(f"select: checkpoint {name!r} leaf {path} is a "
                        f"{type(x).__name__} (dtype {arr.dtype}), not a real-valued array; "
                        "select only the arrays the model needs")
  return arr


# -- the stack -----------------------------------------------------------------------------

def load_foreign_stack(path: str | os.PathLike, *, like: Any = None,
                       select: Callable[[Any], Any] | None = None, item: str | None = None
                       ) -> tuple[Any, list[str]]:
  """Loads the orbax checkpoints of a training run as ONE stacked pytree.

  Args:
    path: one checkpoint directory, a directory of checkpoint directories, a
      ``CheckpointManager`` root, or one step folder (see the module docstring).
    like: optional pytree (arrays or ``jax.ShapeDtypeStruct``, e.g.
      ``jax.eval_shape(model.init, key, x)``) the selected tree of every checkpoint must
      match in structure and shapes; the result then has ``like``'s tree structure.
    select: optional function applied to each restored tree (nested dicts of arrays)
      before stacking, e.g. ``lambda s: {"params": s["params"]}``. It is also called on
      the tree's abstract form (``jax.ShapeDtypeStruct`` leaves) to check shapes before
      any data is read, so it should be a pure function. Default with ``like``:
      :func:`select_variables` (``like``'s collections); without: the whole tree.
    item: the item to load from each ``CheckpointManager`` step that holds several.
  Returns:
    ``(stacked, names)``: the selected trees stacked on a new leading axis (NumPy arrays,
    the saved dtypes and bytes), and the checkpoints' names in stack order (natural
    order: step ``10`` after ``9``).
  Raises:
    MiaInputError: ``path`` is not a directory or holds no checkpoints; a checkpoint does
      not match ``like`` or differs from the first checkpoint (the message names it and
      lists the differing paths); bad ``select``/``item``.
    mia_jax.train.CorruptCheckpointError: a checkpoint cannot be read (named).
  """
  if select is not None and not callable(select):
    raise MiaInputError(f"select: expected a function of the restored tree, got "
                        f"{type(select).__name__}")
  like_sig = None
  if like is not None:
    like_sig = _signature(like)
    if not like_sig:
      raise MiaInputError("like: expected a pytree of arrays or jax.ShapeDtypeStruct, got "
                          "one with no leaves")
    if select is None:
      select = functools.partial(select_variables, like=like)
  ckpts = list_foreign_checkpoints(path, item=item)
  with _Reader() as reader:
    abstracts = [reader.abstract(name, d) for name, d in ckpts]
    plans = [_plan(select, a) for a in abstracts]
    if all(p.selected is not None for p in plans):  # every check before reading any data
      ref = None
      for (name, _), plan in zip(ckpts, plans):
        sig = _signature(plan.selected)
        _check(name, sig, like_sig, ref)
        ref = ref or (name, sig)
    return _stack(reader, ckpts, abstracts, plans, select, like, like_sig)


def _stack(reader, ckpts, abstracts, plans, select, like, like_sig):
  out: dict[str, np.ndarray] = {}
  ref = None
  for c, ((name, d), abstract, plan) in enumerate(zip(ckpts, abstracts, plans)):
    if plan.sources is not None:
      all_dict = all(isinstance(k, jax.tree_util.DictKey) for p in plan.sources for k in p)
      partial = all_dict and len(set(plan.sources)) < len(jax.tree.leaves(abstract))
      tree = reader.restore(name, d, abstract, sorted(set(plan.sources), key=str)
                            if partial else None)
      selected = jax.tree.unflatten(plan.treedef, [_get(tree, p) for p in plan.sources])
    else:
      tree = reader.restore(name, d, abstract, None)
      try:
        selected = tree if select is None else select(tree)
      except MiaInputError:
        raise
      except Exception as e:  # noqa: BLE001 - the user's function
        raise MiaInputError(f"select: failed on checkpoint {name!r}: {type(e).__name__}: "
                            f"{_first_line(e)}") from e
    flat = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(selected)}
    if not flat:
      raise MiaInputError(f"select: picked no arrays from checkpoint {name!r}")
    flat = {p: _as_leaf(leaf, name, p) for p, leaf in flat.items()}
    sig = {p: _leaf_sig(a) for p, a in flat.items()}
    _check(name, sig, like_sig, ref)
    if ref is None:
      ref = (name, sig)
      treedef = jax.tree.structure(selected)
      order = list(flat)
      out = {p: np.empty((len(ckpts),) + a.shape, a.dtype) for p, a in flat.items()}
    for p, a in flat.items():
      out[p][c] = a
    del tree, selected, flat
  if like is not None:  # the model's own tree structure
    return (jax.tree.unflatten(jax.tree.structure(like), [out[p] for p in _signature(like)]),
            [name for name, _ in ckpts])
  return jax.tree.unflatten(treedef, [out[p] for p in order]), [name for name, _ in ckpts]
