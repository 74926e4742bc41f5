"""The Dataset container: NumPy arrays on the host."""

from __future__ import annotations

import dataclasses

import numpy as np

from mia_jax._validation import MiaInputError, as_array, check_finite, check_labels


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset held as host NumPy arrays.

  Attributes:
    x_train: float32[N_train, *feature_shape] (images are HWC, C optional).
    y_train: int32[N_train] labels in [0, num_classes).
    x_test: float32[N_test, *feature_shape].
    y_test: int32[N_test].
    num_classes: number of classes K.
    name: a short name used in results and reports.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str = "dataset"

  def __post_init__(self):
    validate_dataset(self)
    cast = {"x_train": np.float32, "x_test": np.float32, "y_train": np.int32, "y_test": np.int32}
    for field, dtype in cast.items():
      object.__setattr__(self, field, np.ascontiguousarray(getattr(self, field), dtype=dtype))
    object.__setattr__(self, "num_classes", int(self.num_classes))

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def all_x(self) -> np.ndarray:
    """Train and test features concatenated (train first)."""
    return np.concatenate([self.x_train, self.x_test], axis=0)

  def all_y(self) -> np.ndarray:
    return np.concatenate([self.y_train, self.y_test], axis=0)


def validate_dataset(ds: Dataset) -> None:
  """Checks shapes, dtypes, label range and finiteness; raises MiaInputError."""
  if not isinstance(ds.num_classes, (int, np.integer)) or ds.num_classes < 2:
    raise MiaInputError(f"num_classes: expected an integer >= 2, got {ds.num_classes!r}")
  for split in ("train", "test"):
    x = as_array(getattr(ds, f"x_{split}"), f"x_{split}")
    y = as_array(getattr(ds, f"y_{split}"), f"y_{split}")
    if x.ndim < 2:
      raise MiaInputError(
          f"x_{split}: expected shape [N, *features] with ndim >= 2, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
            or x.dtype == bool):
      raise MiaInputError(f"x_{split}: expected a numeric array, got dtype={x.dtype}")
    check_finite(x, f"x_{split}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
      raise MiaInputError(
          f"y_{split}: expected shape [{x.shape[0]}] to match x_{split}, got {y.shape}")
    check_labels(y, int(ds.num_classes), f"y_{split}")
  if tuple(np.shape(ds.x_train)[1:]) != tuple(np.shape(ds.x_test)[1:]):
    raise MiaInputError(
        f"x_test: feature shape {np.shape(ds.x_test)[1:]} differs from x_train's "
        f"{np.shape(ds.x_train)[1:]}")
