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
  if np.issubdtype(arr.dtype, np.complexfloating):
    raise MiaInputError(
        f"{name}: expected real numbers, got complex dtype={arr.dtype} (complex inputs are "
        "refused: casting them would silently drop the imaginary part)")
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
  """1-D finite real scores, in their own dtype (bool becomes float64).

  Integer scores keep their integer dtype: converting int64 values above 2**53 to float64
  would tie distinct scores, so callers that rank must rank them in their own dtype.
  """
  arr = as_array(scores, name)
  check_ndim(arr, name, 1)
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
          or arr.dtype == bool):
    raise MiaInputError(f"{name}: expected a real-valued array, got dtype={arr.dtype}")
  if arr.dtype == bool:
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


def check_labels(y: Any, num_classes: int, name: str = "y",
                 ndim: int | None = 1) -> np.ndarray:
  """Integer class labels in [0, num_classes) as int32 (integral floats accepted).

  Args:
    y: the labels.
    num_classes: K.
    name: the argument's name in error messages.
    ndim: required number of dimensions (None: any).
  """
  arr = as_array(y, name)
  if ndim is not None:
    check_ndim(arr, name, ndim)
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
  """Rows of an array of n rows to use (default: all rows), as int64[n'] in the given order.

  Accepted: a 1-D integer array of distinct row numbers in [0, n), or a boolean row mask
  of length n (its True rows, ``np.flatnonzero``). Refused: floats (even integer-valued
  ones: pass ``indices.astype(int)``), a mask of another length, an empty selection,
  out-of-range rows and duplicated rows (a row is trained on once per epoch, so a
  duplicate would be silently dropped rather than weighted twice).
  """
  if indices is None:
    return np.arange(n)
  arr = as_array(indices, name)
  if arr.ndim != 1:
    raise MiaInputError(
        f"{name}: expected a 1-D array of row numbers or a boolean mask of length {n}, "
        f"got shape {arr.shape}")
  if arr.dtype == bool:
    if arr.shape[0] != n:
      raise MiaInputError(
          f"{name}: a boolean mask must have one entry per row of x (length {n}), got "
          f"length {arr.shape[0]}")
    arr = np.flatnonzero(arr)
    if arr.size == 0:
      raise MiaInputError(f"{name}: the boolean mask selects no rows (all False)")
    return arr.astype(np.int64)
  if arr.size == 0:
    raise MiaInputError(f"{name}: expected a non-empty 1-D array of rows of x (N={n}), got none")
  if not np.issubdtype(arr.dtype, np.integer):
    integral = (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                and np.all(np.mod(arr, 1) == 0))
    raise MiaInputError(
        f"{name}: expected integer row numbers (or a boolean mask of length {n}), got "
        f"dtype={arr.dtype}" + ("; integer-valued floats are refused too, pass "
                                "indices.astype(int)" if integral else ""))
  if arr.min() < 0 or arr.max() >= n:
    raise MiaInputError(
        f"{name}: row numbers must be in [0, {n}) (rows of x), got range "
        f"[{arr.min()}, {arr.max()}]")
  uniq, counts = np.unique(arr, return_counts=True)
  if uniq.size != arr.size:
    dup = uniq[counts > 1]
    raise MiaInputError(
        f"{name}: {dup.size} row(s) appear more than once (duplicates, e.g. "
        f"{dup[:5].tolist()}); each row is trained on once per epoch, so pass distinct rows "
        "(np.unique(indices))")
  return arr.astype(np.int64)


SEED_LIMIT = 2**32


def check_seed(seed: Any, name: str = "seed", allow_tuple: bool = True) -> int | tuple[int, ...]:
  """An int in [0, 2**32), or (``allow_tuple``) a non-empty tuple/list of such ints.

  Returns the seed as a Python int or tuple of ints.
  """
  what = ("an integer in [0, 2**32) or a non-empty tuple of them" if allow_tuple
          else "an integer in [0, 2**32)")

  def one(v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
      raise MiaInputError(f"{name}: expected {what}, got {seed!r}")
    if not 0 <= int(v) < SEED_LIMIT:
      raise MiaInputError(f"{name}: expected {what}, got {seed!r}")
    return int(v)

  if isinstance(seed, (tuple, list)) and allow_tuple:
    if not seed:
      raise MiaInputError(f"{name}: expected {what}, got {seed!r}")
    return tuple(one(v) for v in seed)
  return one(seed)
