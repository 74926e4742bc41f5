"""Atomic file output and content hashes (one writer for every module).

Every file mia-jax writes goes through :func:`write_bytes_atomic`: a temporary file in
the same directory, flushed and fsynced, then renamed over the destination, so a reader
(or a rerun after ``kill -9``) sees the old file or the new one, never half of one. The
file gets the permissions the umask gives a newly created file (``mkstemp`` alone makes
them 0600).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"
"""Prefix of every temporary file or directory mia-jax writes (removed on the next start)."""


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (temporary file + rename)."""
  path = os.path.abspath(os.fspath(path))
  d = os.path.dirname(path)
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=d)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """``obj`` as indented JSON, atomically."""
  write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def write_npz_atomic(path: str | os.PathLike, **arrays) -> None:
  """``np.savez`` of ``arrays``, atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes_atomic(path, buf.getvalue())


def read_json(path: str | os.PathLike, what: str) -> Any:
  """Reads a JSON file mia-jax wrote; a missing, unreadable or corrupt file is a
  :class:`~mia_jax._validation.MiaInputError` naming ``what`` and the path."""
  from mia_jax._validation import MiaInputError
  try:
    with open(path, "rb") as f:
      return json.loads(f.read().decode("utf-8"))
  except OSError as e:
    raise MiaInputError(f"{what}: cannot read {path}: {e.strerror}") from e
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise MiaInputError(f"{what}: {path} is corrupt (not valid JSON: {e})") from e


def hash_arrays(*arrays: Any) -> str:
  """sha256 over the dtypes, shapes and bytes of arrays (C order): equal for equal
  content, different (with overwhelming probability) for any other."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
  return h.hexdigest()


def hash_tree(tree: Any) -> str:
  """sha256 of a pytree's leaves with their paths (dtype, shape, bytes of each)."""
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(hash_arrays(np.asarray(leaf)).encode())
  return h.hexdigest()
