"""Input checks shared by every module.

Every public function validates its inputs on the host *before* any compute and
raises :class:`MiaInputError` (a ``ValueError``) whose message names the argument
and what was expected. The CLI catches this type and prints it without a traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class MiaInputError(ValueError):
  """Bad input to a mia-jax function: the message names the argument."""


def as_array(value: Any, name: str) -> np.ndarray:
  """Converts ``value`` to a NumPy array or raises a named error."""
  try:
    arr = np.asarray(value)
  except Exception as e:  # noqa: BLE001 - re-raised with the argument's name.
    raise MiaInputError(f"{name}: could not be converted to an array ({e})") from e
  if arr.dtype == object:
    raise MiaInputError(f"{name}: expected a numeric array, got dtype=object")
  return arr


def as_bool(arr: np.ndarray, name: str) -> np.ndarray:
  """Booleans, or numbers that are all 0/1, as a bool array; anything else is an error."""
  if arr.dtype == bool:
    return arr
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise MiaInputError(f"{name}: expected booleans, got dtype={arr.dtype}")
  if not np.all(np.isin(arr, (0, 1))):
    raise MiaInputError(f"{name}: expected booleans or 0/1 values")
  return arr.astype(bool)


def check_ndim(arr: np.ndarray, name: str, ndim: int | tuple[int, ...]) -> None:
  allowed = (ndim,) if isinstance(ndim, int) else ndim
  if arr.ndim not in allowed:
    raise MiaInputError(
        f"{name}: expected an array with ndim in {allowed}, got shape {arr.shape}")


def check_finite(arr: np.ndarray, name: str) -> None:
  if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
    n_bad = int(np.sum(~np.isfinite(arr)))
    raise MiaInputError(f"{name}: contains {n_bad} NaN/inf value(s); expected finite values")


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
  """1-D finite float scores."""
  arr = as_array(scores, name)
  check_ndim(arr, name, 1)
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
          or arr.dtype == bool):
    raise MiaInputError(f"{name}: expected a real-valued array, got dtype={arr.dtype}")
  arr = arr.astype(np.float64)
  check_finite(arr, name)
  return arr


def check_membership(is_member: Any, n: int | None = None, name: str = "is_member",
                     require_both: bool = True) -> np.ndarray:
  """1-D boolean membership labels (0/1 ints accepted), both classes present."""
  arr = as_array(is_member, name)
  check_ndim(arr, name, 1)
  arr = as_bool(arr, name)
  if n is not None and arr.shape[0] != n:
    raise MiaInputError(f"{name}: expected length {n} (same as the scores), got {arr.shape[0]}")
  if require_both:
    n_in = int(arr.sum())
    if n_in == 0 or n_in == arr.shape[0]:
      raise MiaInputError(
          f"{name}: needs both members and non-members, got {n_in} member(s) "
          f"out of {arr.shape[0]}")
  return arr


def check_labels(y: Any, num_classes: int, name: str = "y") -> np.ndarray:
  arr = as_array(y, name)
  check_ndim(arr, name, 1)
  if not np.issubdtype(arr.dtype, np.integer):
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
      arr = arr.astype(np.int64)
    else:
      raise MiaInputError(f"{name}: expected integer class labels, got dtype={arr.dtype}")
  if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
    raise MiaInputError(
        f"{name}: labels must be in [0, {num_classes}), got range "
        f"[{arr.min()}, {arr.max()}]")
  return arr.astype(np.int32)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise MiaInputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise MiaInputError(f"{name}: expected an integer >= {minimum}, got {value}")
  return int(value)


def check_in_range(value: Any, name: str, low: float, high: float,
                   low_open: bool = False, high_open: bool = False) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise MiaInputError(f"{name}: expected a number, got {value!r}") from e
  ok_low = v > low if low_open else v >= low
  ok_high = v < high if high_open else v <= high
  if not (ok_low and ok_high and np.isfinite(v)):
    lb = "(" if low_open else "["
    hb = ")" if high_open else "]"
    raise MiaInputError(f"{name}: expected a value in {lb}{low}, {high}{hb}, got {value!r}")
  return v


def check_keep_shape(keep: Any, m: int, n: int, what: str) -> np.ndarray:
  """keep: bool (or 0/1) matrix of shape [m, n]; ``what`` says what it must match."""
  arr = as_array(keep, "keep")
  check_ndim(arr, "keep", 2)
  arr = as_bool(arr, "keep")
  if arr.shape != (m, n):
    raise MiaInputError(f"keep: expected bool[{m}, {n}] ({what}), got shape {list(arr.shape)}")
  return arr


def check_indices(indices: Any, n: int, name: str = "indices") -> np.ndarray:
  """A non-empty 1-D array of row indices into an array of n rows (default: all rows)."""
  if indices is None:
    return np.arange(n)
  arr = np.asarray(indices, np.int64)
  if arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= n:
    raise MiaInputError(f"{name}: expected a non-empty 1-D array of rows of x (N={n})")
  return arr
