"""Datasets for membership-inference experiments.

* :class:`Dataset` -- the host-side container (float32 features, int32 labels).
* Loaders: :func:`load_dataset` (dispatch), :func:`load_builtin`, :func:`load_npz`,
  :func:`load_tfds` (TF-free tensorflow-datasets reading).
* Synthetic data: :func:`gaussian_nb`, :func:`purchase_like`, :func:`random_data`.
* Pure preprocessing: :func:`standardize`, :func:`scale_to_unit`, :func:`flatten`,
  :func:`add_channel`, :func:`take_subset`, :func:`subsample_classes`.
* Membership splits: :func:`membership_split`, :func:`keep_matrix`, :func:`check_keep`.
"""

from mia_jax.data.dataset import Dataset, validate_dataset
from mia_jax.data.loaders import (BUILTIN_DATASETS, load_builtin, load_dataset, load_npz,
                                  load_tfds)
from mia_jax.data.preprocess import (add_channel, flatten, scale_to_unit, standardize,
                                     subsample_classes, take_subset)
from mia_jax.data.splits import MembershipSplit, check_keep, keep_matrix, membership_split
from mia_jax.data.synthetic import gaussian_nb, purchase_like, purchase_prototypes, random_data

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "MembershipSplit",
    "add_channel",
    "check_keep",
    "flatten",
    "gaussian_nb",
    "keep_matrix",
    "load_builtin",
    "load_dataset",
    "load_npz",
    "load_tfds",
    "membership_split",
    "purchase_like",
    "purchase_prototypes",
    "random_data",
    "scale_to_unit",
    "standardize",
    "subsample_classes",
    "take_subset",
    "validate_dataset",
]
