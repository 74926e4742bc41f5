"""Run directories: one writer at a time, and nothing deleted that mia-jax did not write.

A run directory (``mia-jax audit --out DIR``, ``mia-jax train --out DIR``) holds

* ``.mia-jax-run`` -- the marker: this directory was created for a mia-jax run;
* ``manifest.json`` -- what mia-jax wrote there (``entries``: name -> kind and, for saved
  models, the sha256 of their content), the sha256 of the data the run was started with,
  and whether the run finished;
* ``.mia-jax-lock`` -- while a process writes the run: its pid, host and start time.

So ``--overwrite`` removes only the manifest's entries (a user's own files in the same
directory stay, and a directory without the marker is never emptied); a resumed run
checks the data against the recorded hash; a second process on the same directory gets
an error naming the holder; and a lock left by a killed process is recognized as stale
(same host, process gone) and taken over.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import socket
from typing import Any, Callable

from mia_jax._io import TMP_PREFIX, read_json, write_json_atomic
from mia_jax._validation import MiaInputError

MARKER = ".mia-jax-run"
MANIFEST = "manifest.json"
LOCK = ".mia-jax-lock"
FORMAT = 1

LEGACY_NAMES = ("results.json", "scores.npz", "target", "reference", "shadow", "config.json",
                "checkpoints", "report.html", "report.md", "plots", "whitebox_shadow",
                "reference_checkpoints", "checkpoint_results.json", "checkpoints.png")
"""What runs written before the manifest existed may hold (adopted on their next start)."""


def check_out_path(out: Any, name: str = "out") -> str:
  """The run directory's absolute path, or a clear error: not a string, empty, an
  existing file, or under something that is not a directory."""
  if not isinstance(out, (str, os.PathLike)):
    raise MiaInputError(f"{name}: expected a directory path, got {out!r}")
  out = os.fspath(out)
  if not out.strip():
    raise MiaInputError(f"{name}: expected a directory path, got an empty string (use '.' "
                        "for the current directory)")
  if "\0" in out:
    raise MiaInputError(f"{name}: the path contains a NUL byte")
  path = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(path) and not os.path.isdir(path):
    raise MiaInputError(f"{name}: {path} exists and is not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise MiaInputError(f"{name}: {parent} is not a directory, so {path} cannot be created")
  return path


def refuse_finished(path: str) -> None:
  """Raises if ``path`` holds a finished run (reads the manifest only: cheap, so it runs
  before any data is loaded)."""
  mpath = os.path.join(path, MANIFEST)
  if os.path.exists(mpath):
    try:
      m = read_json(mpath, "out")
    except MiaInputError:
      return  # RunDir.open deals with a corrupt manifest
    finished = (isinstance(m, dict) and bool(m.get("finished"))
                and os.path.exists(os.path.join(path, "results.json")))
  else:
    res = os.path.join(path, "results.json")
    finished = (os.path.isdir(path) and not os.path.exists(os.path.join(path, MARKER))
                and os.path.exists(res) and _legacy_run(path))
  if finished:
    raise MiaInputError(f"out: {path} holds a finished run; pass --overwrite to replace it, "
                        "or choose another --out")


_HELD: set[str] = set()
"""Lock files this process holds (released by :func:`release_held_locks` on an abrupt exit)."""


def release_held_locks() -> None:
  """Removes every lock this process holds (for an immediate exit on Ctrl-C: the files
  themselves are complete or temporary, as after ``kill -9``)."""
  for lock in list(_HELD):
    try:
      os.remove(lock)
    except OSError:
      pass
    _HELD.discard(lock)


def _legacy_run(path: str) -> bool:
  """A run directory written before the marker existed: a config.json or results.json
  that mia-jax wrote (recognized by their keys)."""
  try:
    res = read_json(os.path.join(path, "results.json"), "results")
    if isinstance(res, dict) and "schema_version" in res and "attacks" in res:
      return True
  except MiaInputError:
    pass
  try:
    cfg = read_json(os.path.join(path, "config.json"), "config")
  except MiaInputError:
    return False
  import dataclasses

  from mia_jax.audit import AuditConfig
  keys = {f.name for f in dataclasses.fields(AuditConfig)}
  return isinstance(cfg, dict) and "dataset" in cfg and set(cfg) <= keys


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class RunDir:
  """An open run directory, held under its lock (see the module docstring).

  Use :meth:`open` (a context manager): it validates the path, handles ``overwrite``,
  takes the lock and removes temporary files a killed run left behind.
  """

  def __init__(self, path: str, command: str, log: Callable[[str], None]):
    self.path = path
    self.command = command
    self.log = log
    self.manifest: dict[str, Any] = {"format": FORMAT, "command": command,
                                     "entries": {}, "data": None, "finished": False}
    self._locked = False

  # -- opening -----------------------------------------------------------------------------

  @classmethod
  def open(cls, out: Any, *, command: str, overwrite: bool = False,
           log: Callable[[str], None] = lambda s: None, refuse_finished: bool = True
           ) -> "RunDir":
    """Opens (creating if needed) the run directory ``out`` for writing.

    Args:
      out: the directory.
      command: "audit" or "train" (recorded in the marker).
      overwrite: remove what an earlier mia-jax run wrote there first.
      log: where to say what was found (resume, stale lock, adoption of an old run).
      refuse_finished: a finished run without ``overwrite`` is an error.
    Raises:
      MiaInputError: the path is unusable, another process holds the lock, the
        directory is not a mia-jax run and is not empty (with ``overwrite``), or the run
        is finished and ``overwrite`` was not given.
    """
    path = check_out_path(out)
    rd = cls(path, command, log)
    existed = os.path.isdir(path)
    if existed:
      rd._check_is_run(overwrite)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise MiaInputError(f"out: cannot create {path}: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
      raise MiaInputError(f"out: {path} is not writable")
    rd._lock()
    try:
      rd._load_or_adopt()
      rd._remove_temporaries()
      if overwrite:
        rd._clear()
      elif refuse_finished and rd.finished:
        raise MiaInputError(f"out: {path} holds a finished run; pass --overwrite to replace "
                            "it, or choose another --out")
      rd._write_marker()
      rd.save()
    except BaseException:
      rd.close()
      raise
    return rd

  def _check_is_run(self, overwrite: bool) -> None:
    try:
      names = os.listdir(self.path)
    except OSError as e:
      raise MiaInputError(f"out: cannot read {self.path}: {e.strerror}") from e
    if not names or MARKER in names or _legacy_run(self.path):
      return
    if overwrite:
      raise MiaInputError(
          f"out: {self.path} is not a mia-jax run directory (no {MARKER} marker) and is not "
          "empty; --overwrite deletes only what mia-jax wrote, and mia-jax wrote nothing "
          "here. Choose a new or empty directory.")
    clash = sorted(set(names) & (set(LEGACY_NAMES) | {MANIFEST}))
    if clash:
      raise MiaInputError(
          f"out: {self.path} is not a mia-jax run directory (no {MARKER} marker) and holds "
          f"{clash}, which the run would overwrite. Choose a new or empty directory.")

  # -- the lock ----------------------------------------------------------------------------

  def _lock(self) -> None:
    lock = os.path.join(self.path, LOCK)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
            "command": self.command}
    for _ in range(3):
      tmp = os.path.join(self.path, f"{TMP_PREFIX}lock-{os.getpid()}")
      with open(tmp, "w") as f:
        json.dump(info, f)
      try:
        os.link(tmp, lock)  # atomic: fails if a lock exists
        self._locked = True
        _HELD.add(lock)
        return
      except FileExistsError:
        holder = self._holder(lock)
        if holder is not None and self._is_stale(holder):
          self.log(f"removing a stale lock of pid {holder.get('pid')} (started "
                   f"{holder.get('started')}), a process that no longer runs")
          try:
            os.remove(lock)
          except FileNotFoundError:
            pass
          continue
        who = ("an unreadable lock" if holder is None else
               f"pid {holder.get('pid')} on host {holder.get('host')}, started "
               f"{holder.get('started')} ({holder.get('command')})")
        raise MiaInputError(
            f"out: {self.path} is in use by another mia-jax process ({who}). Wait for it to "
            f"finish or choose another --out; if that process is gone, delete {lock}")
      except OSError as e:
        if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hard links here
          try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
          except FileExistsError:
            continue
          with os.fdopen(fd, "w") as f:
            json.dump(info, f)
          self._locked = True
          _HELD.add(lock)
          return
        raise
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
    raise MiaInputError(f"out: could not take the lock {lock}")

  @staticmethod
  def _holder(lock: str) -> dict | None:
    try:
      with open(lock) as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
      return None

  @staticmethod
  def _is_stale(holder: dict) -> bool:
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
      return False
    return pid != os.getpid() and not _pid_alive(pid)

  def close(self) -> None:
    """Releases the lock (idempotent)."""
    if self._locked:
      lock = os.path.join(self.path, LOCK)
      try:
        os.remove(lock)
      except FileNotFoundError:
        pass
      _HELD.discard(lock)
      self._locked = False

  def __enter__(self) -> "RunDir":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- the manifest ------------------------------------------------------------------------

  def _load_or_adopt(self) -> None:
    mpath = os.path.join(self.path, MANIFEST)
    if os.path.exists(mpath):
      try:
        m = read_json(mpath, "out")
      except MiaInputError:
        m = None
      if (isinstance(m, dict) and isinstance(m.get("entries"), dict)
          and all(isinstance(v, dict) for v in m["entries"].values())
          and (m.get("data") is None or isinstance(m.get("data"), dict))):
        self.manifest.update(m)
        return
      self.log(f"{mpath} is corrupt; rebuilding it from what mia-jax writes (the data "
               "this run started with can no longer be checked)")
    if os.path.exists(os.path.join(self.path, MARKER)) or _legacy_run(self.path):
      # A marker without a manifest (killed between the two writes), or an older run:
      # adopt what mia-jax writes that is there.
      found = [n for n in LEGACY_NAMES if os.path.lexists(os.path.join(self.path, n))]
      for n in found:
        self.manifest["entries"][n] = {"kind": "dir" if os.path.isdir(
            os.path.join(self.path, n)) else "file"}
      self.manifest["finished"] = os.path.exists(os.path.join(self.path, "results.json"))
      if found:
        self.log(f"adopting the run in {self.path} written by an earlier mia-jax version")

  def _write_marker(self) -> None:
    marker = os.path.join(self.path, MARKER)
    if not os.path.exists(marker):
      write_json_atomic(marker, {"format": FORMAT, "command": self.command, "created": _now()})

  def save(self) -> None:
    write_json_atomic(os.path.join(self.path, MANIFEST), self.manifest)

  def _remove_temporaries(self) -> None:
    for n in os.listdir(self.path):
      if n.startswith(TMP_PREFIX):
        p = os.path.join(self.path, n)
        self.log(f"removing {p}, left by an interrupted write")
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)

  def _clear(self) -> None:
    """Removes everything the manifest lists (what mia-jax wrote), nothing else."""
    for name in list(self.manifest["entries"]):
      p = self._resolve(name)
      if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
      elif os.path.lexists(p):
        os.remove(p)
    self.manifest.update(entries={}, data=None, finished=False)
    self.save()

  def _resolve(self, name: str) -> str:
    p = os.path.normpath(os.path.join(self.path, name))
    if os.path.dirname(p) != self.path and not p.startswith(self.path + os.sep):
      raise MiaInputError(f"out: the manifest names {name!r}, outside the run directory")
    return p

  # -- recording ---------------------------------------------------------------------------

  @property
  def finished(self) -> bool:
    """Finished (its report, if asked for, written) and its results still there."""
    return (bool(self.manifest.get("finished"))
            and os.path.exists(os.path.join(self.path, "results.json")))

  def file(self, name: str) -> str:
    """The path of ``name`` in the run, recorded as written by mia-jax (call before
    writing it, so an interrupted write is still cleaned up by --overwrite)."""
    p = self._resolve(name)
    top = os.path.relpath(p, self.path).split(os.sep)[0]
    if top not in self.manifest["entries"]:
      self.manifest["entries"][top] = {"kind": "dir" if top != os.path.relpath(p, self.path)
                                       else "file"}
      self.save()
    return p

  def record_hash(self, name: str, sha256: str) -> None:
    """Records the content hash of a saved model (or file) ``name``."""
    self.file(name)
    self.manifest["entries"][name.split("/")[0]]["sha256"] = sha256
    self.save()

  def recorded_hash(self, name: str) -> str | None:
    return self.manifest["entries"].get(name, {}).get("sha256")

  def check_data(self, sha256: str, description: str) -> None:
    """Records the hash of the run's data, or checks it against the recorded one."""
    old = self.manifest.get("data")
    if old is None:
      self.manifest["data"] = {"sha256": sha256, "description": description}
      self.save()
    elif old.get("sha256") != sha256:
      raise MiaInputError(
          f"dataset: the data ({description}) differ from those this run in {self.path} was "
          f"started with (content hash {sha256[:12]} now, {str(old.get('sha256'))[:12]} "
          "then): the file changed since. Restore the original data to resume, or pass "
          "--overwrite to start over")

  def mark_finished(self, finished: bool = True) -> None:
    self.manifest["finished"] = finished
    self.save()
