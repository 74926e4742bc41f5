"""Pure preprocessing functions: each takes a Dataset and returns a new one.

Nothing here mutates its input; statistics are always fitted on the training split
only and then applied to both splits (fitting on the test split would leak
non-member information into the target model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mia_jax._validation import (MiaInputError, as_array, check_finite, check_in_range,
                                 check_positive_int)
from mia_jax.data.dataset import Dataset


def _check_dataset(ds: Any, name: str = "ds") -> Dataset:
  if not isinstance(ds, Dataset):
    raise MiaInputError(f"{name}: expected a mia_jax.data.Dataset, got {type(ds).__name__}")
  return ds


def _stat(value: Any, name: str, feature_shape: tuple[int, ...]) -> np.ndarray:
  arr = as_array(value, name).astype(np.float64)
  check_finite(arr, name)
  try:
    np.broadcast_to(arr, feature_shape)
  except ValueError as e:
    raise MiaInputError(
        f"{name}: shape {arr.shape} does not broadcast to the feature shape "
        f"{feature_shape}") from e
  return arr


def standardize(ds: Dataset, *, mean: Any = None, std: Any = None,
                min_std: float = 1e-8) -> Dataset:
  """Per-feature standardization ``(x - mean) / std``, fitted on the training split.

  Args:
    ds: the dataset; features ``x_*`` float32[N, *F].
    mean: float[*F] (or anything broadcastable to ``F``); ``None`` fits
      ``x_train.mean(axis=0)``.
    std: float[*F] (or broadcastable), > 0; ``None`` fits ``x_train.std(axis=0)``.
      Fitted features whose std is <= ``min_std`` (constant features) are only
      centred (their std is taken as 1).
    min_std: threshold for a constant feature, >= 0.

  Returns:
    A new :class:`Dataset` with the same labels and standardized float32 features.

  Raises:
    MiaInputError: ``ds`` is not a Dataset, or ``mean``/``std`` have the wrong
      shape, are not finite, or ``std`` is not positive.
  """
  ds = _check_dataset(ds)
  min_std = check_in_range(min_std, "min_std", 0.0, np.inf, high_open=True)
  fshape = ds.feature_shape
  x_train = ds.x_train.astype(np.float64)
  if mean is None:
    mean_arr = x_train.mean(axis=0)
  else:
    mean_arr = _stat(mean, "mean", fshape)
  if std is None:
    std_arr = x_train.std(axis=0)
    std_arr = np.where(std_arr <= min_std, 1.0, std_arr)
  else:
    std_arr = _stat(std, "std", fshape)
    if np.any(std_arr <= 0):
      raise MiaInputError("std: expected strictly positive values")

  def apply(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float64) - mean_arr) / std_arr).astype(np.float32)

  return dataclasses.replace(ds, x_train=apply(ds.x_train), x_test=apply(ds.x_test))


def scale_to_unit(ds: Dataset, max_value: float = 255.0) -> Dataset:
  """Divides features by ``max_value`` (e.g. 255 for 8-bit pixels to [0, 1]).

  Args:
    ds: the dataset.
    max_value: the largest raw feature value, > 0.

  Returns:
    A new :class:`Dataset` with ``x / max_value`` (float32).
  """
  ds = _check_dataset(ds)
  max_value = check_in_range(max_value, "max_value", 0.0, np.inf, low_open=True,
                             high_open=True)
  return dataclasses.replace(ds, x_train=ds.x_train / np.float32(max_value),
                             x_test=ds.x_test / np.float32(max_value))


def flatten(ds: Dataset) -> Dataset:
  """Reshapes features ``[N, *F]`` to ``[N, prod(F)]`` (C order).

  Returns:
    A new :class:`Dataset` with 2-D features.
  """
  ds = _check_dataset(ds)
  return dataclasses.replace(ds, x_train=ds.x_train.reshape(ds.x_train.shape[0], -1),
                             x_test=ds.x_test.reshape(ds.x_test.shape[0], -1))


def add_channel(ds: Dataset) -> Dataset:
  """Adds a trailing channel axis to grayscale images: ``[N, H, W] -> [N, H, W, 1]``.

  Raises:
    MiaInputError: the features are not ``[N, H, W]``.
  """
  ds = _check_dataset(ds)
  if len(ds.feature_shape) != 2:
    raise MiaInputError(
        f"ds: add_channel expects features of shape [N, H, W], got "
        f"{ds.x_train.shape}")
  return dataclasses.replace(ds, x_train=ds.x_train[..., None], x_test=ds.x_test[..., None])


def take_subset(ds: Dataset, *, num_train: int | None = None, num_test: int | None = None,
                seed: int = 0) -> Dataset:
  """A seeded random subset of each split (without replacement, original order kept).

  Args:
    ds: the dataset.
    num_train: number of training examples to keep, 1 <= num_train <= N_train;
      ``None`` keeps them all.
    num_test: the same for the test split.
    seed: seed of the NumPy generator.

  Returns:
    A new :class:`Dataset`; ``num_classes`` is unchanged.
  """
  ds = _check_dataset(ds)
  seed = check_positive_int(seed, "seed", minimum=0)
  rng = np.random.default_rng(seed)

  def pick(n_have: int, n_want: int | None, arg: str) -> np.ndarray:
    if n_want is None:
      return np.arange(n_have)
    n_want = check_positive_int(n_want, arg)
    if n_want > n_have:
      raise MiaInputError(f"{arg}: asked for {n_want} examples, the split has {n_have}")
    return np.sort(rng.permutation(n_have)[:n_want])

  tr = pick(ds.x_train.shape[0], num_train, "num_train")
  te = pick(ds.x_test.shape[0], num_test, "num_test")
  return dataclasses.replace(ds, x_train=ds.x_train[tr], y_train=ds.y_train[tr],
                             x_test=ds.x_test[te], y_test=ds.y_test[te])


def subsample_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
  """Keeps only the given classes and relabels them ``0..len(classes)-1`` in order.

  Args:
    ds: the dataset.
    classes: at least two distinct labels in ``[0, ds.num_classes)``; class
      ``classes[j]`` becomes label ``j``.

  Returns:
    A new :class:`Dataset` with ``num_classes = len(classes)``.
  """
  ds = _check_dataset(ds)
  cls = as_array(classes, "classes")
  if cls.ndim != 1 or not np.issubdtype(cls.dtype, np.integer):
    raise MiaInputError(f"classes: expected a 1-D sequence of integers, got {classes!r}")
  if len(np.unique(cls)) != len(cls) or len(cls) < 2:
    raise MiaInputError(f"classes: expected at least two distinct labels, got {cls.tolist()}")
  if cls.min() < 0 or cls.max() >= ds.num_classes:
    raise MiaInputError(f"classes: labels must be in [0, {ds.num_classes}), got {cls.tolist()}")
  lut = np.full(ds.num_classes, -1, dtype=np.int64)
  lut[cls] = np.arange(len(cls))
  tr = lut[ds.y_train] >= 0
  te = lut[ds.y_test] >= 0
  if not tr.any() or not te.any():
    raise MiaInputError(f"classes: no examples of classes {cls.tolist()} in both splits")
  return dataclasses.replace(ds, x_train=ds.x_train[tr], y_train=lut[ds.y_train[tr]],
                             x_test=ds.x_test[te], y_test=lut[ds.y_test[te]],
                             num_classes=len(cls))
