"""Dataset loaders: built-in, local ``.npz`` files, and tensorflow-datasets.

:func:`load_dataset` dispatches on its first argument:

* a name in :data:`BUILTIN_DATASETS` -> :func:`load_builtin` (no network, no files:
  scikit-learn's bundled ``digits`` / ``breast_cancer`` and the synthetic generators);
* a path ending in ``.npz`` -> :func:`load_npz`;
* ``"tfds:NAME"``, or any other name registered in tensorflow-datasets (or any name
  when a ``data_dir`` option is given) -> :func:`load_tfds`;
* anything else -> :class:`MiaInputError` listing the built-in names.

All loaders return a validated :class:`~mia_jax.data.dataset.Dataset` (float32
features, int32 labels) and are deterministic given their ``seed``.
"""

from __future__ import annotations

import functools
import inspect
import os
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from mia_jax._validation import (MiaInputError, check_in_range, check_positive_int)
from mia_jax.data import synthetic
from mia_jax.data.dataset import Dataset
from mia_jax.data.preprocess import standardize

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "gaussian_nb", "purchase_like",
                                     "random")
"""Names :func:`load_builtin` accepts (none needs the network or data files)."""

_TFDS_PREFIX = "tfds:"


# ---------------------------------------------------------------------------
# Helpers


def _seeded_split(x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Random train/test split: ``round(test_fraction * N)`` test examples (at least 1).

  One ``np.random.default_rng(seed)`` permutation; the test set is its first block
  and both blocks are put back in the original order.
  """
  n = x.shape[0]
  if n < 2:
    raise MiaInputError(f"x: need at least 2 examples to split into train and test, got {n}")
  n_test = int(round(test_fraction * n))
  n_test = min(max(n_test, 1), n - 1)
  perm = np.random.default_rng(seed).permutation(n)
  te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
  return x[tr], y[tr], x[te], y[te]


def _check_split_args(test_fraction: Any, seed: Any) -> tuple[float, int]:
  test_fraction = check_in_range(test_fraction, "test_fraction", 0.0, 1.0, low_open=True,
                                 high_open=True)
  seed = check_positive_int(seed, "seed", minimum=0)
  return test_fraction, seed


def _call_with_options(fn: Callable[..., Any], options: Mapping[str, Any], context: str) -> Any:
  """Calls ``fn(**options)`` after checking every option is one of its parameters."""
  accepted = [p for p in inspect.signature(fn).parameters]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise MiaInputError(
        f"options: {context} does not accept {unknown}; accepted options: {accepted}")
  return fn(**options)


def _check_two_classes(y_train: np.ndarray, name: str) -> None:
  """The training labels must hold at least 2 classes (else no classifier is learned)."""
  present = np.unique(y_train)
  if present.size < 2:
    raise MiaInputError(
        f"{name}: the training labels hold only {present.size} class(es) "
        f"{present.tolist()}; a classifier needs at least 2")


def _infer_num_classes(ys: Mapping[str, np.ndarray], name: str) -> int:
  """K from labels that must be exactly the contiguous classes 0..K-1 (over all splits).

  Refuses labels with fewer than 2 classes, 1-based labels (1..K with no 0) and labels
  with absent classes in [0, max] (e.g. one stray label 1000 among 0..9), which would
  otherwise silently give a model with the wrong number of outputs.
  """
  present = np.unique(np.concatenate([np.asarray(y).reshape(-1) for y in ys.values()]))
  if present.size < 2:
    raise MiaInputError(
        f"{name}: labels hold only {present.size} class(es) {present.tolist()}; a "
        "classifier needs at least 2")
  top = int(present[-1])
  if present.size == top and int(present[0]) == 1:
    raise MiaInputError(
        f"{name}: labels look 1-based (they run 1..{top} with no 0); subtract 1 so they "
        f"run 0..{top - 1}, or pass num_classes")
  if present.size != top + 1:
    missing = np.setdiff1d(np.arange(top + 1), present)
    raise MiaInputError(
        f"{name}: labels are not the contiguous classes 0..K-1: {missing.size} of the "
        f"{top + 1} classes in [0, {top}] have no example (e.g. {missing[:5].tolist()}); "
        "remap them to 0..K-1 (e.g. np.unique(y, return_inverse=True)[1]), or pass "
        "num_classes")
  return top + 1


def _labels_to_int(y: np.ndarray, name: str) -> np.ndarray:
  """int64 labels from an integer (or integral float) array; raises MiaInputError."""
  if y.ndim != 1:
    raise MiaInputError(f"{name}: expected a 1-D label array, got shape {y.shape}")
  if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
    return y.astype(np.int64)
  if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0):
    return y.astype(np.int64)
  raise MiaInputError(f"{name}: expected integer class labels, got dtype={y.dtype}")


def _features_to_float(x: np.ndarray, name: str, scale_images: bool) -> np.ndarray:
  """float32 features; uint8 images ``[N,H,W(,C)]`` -> /255; ``[N,H,W]`` -> ``[N,H,W,1]``."""
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
    raise MiaInputError(f"{name}: expected a numeric feature array, got dtype={x.dtype}")
  if np.issubdtype(x.dtype, np.complexfloating):
    raise MiaInputError(
        f"{name}: expected real features, got complex dtype={x.dtype} (the imaginary part "
        "would be dropped silently)")
  if x.ndim < 2:
    raise MiaInputError(f"{name}: expected shape [N, *features] with ndim >= 2, got {x.shape}")
  is_image = x.ndim in (3, 4)
  out = x.astype(np.float32)
  if is_image and x.dtype == np.uint8 and scale_images:
    out /= np.float32(255.0)
  if x.ndim == 3:
    out = out[..., None]
  return out


# ---------------------------------------------------------------------------
# Built-in datasets


def _load_sklearn(which: str, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  test_fraction, seed = _check_split_args(test_fraction, seed)
  from sklearn import datasets as skd  # Lazy: only these two loaders need it.
  if which == "digits":
    bunch = skd.load_digits()
    # 8x8 images with integer intensities 0..16.
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = _seeded_split(x, y, test_fraction=test_fraction, seed=seed)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10, name="digits")
  bunch = skd.load_breast_cancer()
  x = bunch.data.astype(np.float32)
  y = bunch.target.astype(np.int64)
  x_tr, y_tr, x_te, y_te = _seeded_split(x, y, test_fraction=test_fraction, seed=seed)
  return standardize(Dataset(x_tr, y_tr, x_te, y_te, num_classes=2, name="breast_cancer"))


def _load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  return _load_sklearn("digits", test_fraction=test_fraction, seed=seed)


def _load_breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  return _load_sklearn("breast_cancer", test_fraction=test_fraction, seed=seed)


@functools.wraps(synthetic.gaussian_nb)  # Same accepted options (signature).
def _load_gaussian_nb(**options: Any) -> Dataset:
  return synthetic.gaussian_nb(**options)[0]


_BUILTIN_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "breast_cancer": _load_breast_cancer,
    "gaussian_nb": _load_gaussian_nb,
    "purchase_like": synthetic.purchase_like,
    "random": synthetic.random_data,
}


def load_builtin(name: str, **options: Any) -> Dataset:
  """Loads a built-in dataset (no network, no data files).

  * ``"digits"`` -- scikit-learn's bundled copy of the UCI optical digits: 1797
    images, x float32[N, 8, 8, 1] in [0, 1] (raw 0..16 divided by 16), 10 classes.
    Options: ``test_fraction=0.2``, ``seed=0`` (seeded random split).
  * ``"breast_cancer"`` -- scikit-learn's bundled Wisconsin diagnostic data: 569
    examples, x float32[N, 30] standardized with the training split's mean/std,
    2 classes. Options: ``test_fraction=0.2``, ``seed=0``.
  * ``"gaussian_nb"`` -- :func:`~mia_jax.data.synthetic.gaussian_nb` (its options;
    only the dataset is returned, call the generator for the true means).
  * ``"purchase_like"`` -- :func:`~mia_jax.data.synthetic.purchase_like`.
  * ``"random"`` -- :func:`~mia_jax.data.synthetic.random_data`.

  Args:
    name: one of :data:`BUILTIN_DATASETS`.
    **options: keyword options of that dataset (unknown ones are an error).

  Returns:
    A :class:`Dataset`.

  Raises:
    MiaInputError: unknown ``name`` or option, or a bad option value.
  """
  if name not in _BUILTIN_LOADERS:
    raise MiaInputError(
        f"name: unknown built-in dataset {name!r}; built-in datasets: {list(BUILTIN_DATASETS)}")
  return _call_with_options(_BUILTIN_LOADERS[name], options, f"built-in dataset {name!r}")


# ---------------------------------------------------------------------------
# .npz files


def _read_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise MiaInputError(f"path: file not found: {path!r} (expected a .npz file)")
  if not os.path.isfile(path):
    raise MiaInputError(f"path: {path!r} is not a file (expected a .npz file)")
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise MiaInputError(f"path: could not read {path!r} as a .npz archive ({e})") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise MiaInputError(
        f"path: {path!r} holds a single array, expected a .npz archive with named arrays "
        f"(x_train, y_train, x_test, y_test) or (x, y)")
  out = {}
  with npz:
    for key in npz.files:
      try:
        out[key] = npz[key]
      except ValueError as e:  # Object arrays need pickle, which is refused.
        raise MiaInputError(
            f"path: array {key!r} in {path!r} could not be loaded without pickle "
            f"(object arrays are refused; expected numeric arrays): {e}") from e
      except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise MiaInputError(f"path: array {key!r} in {path!r} is unreadable ({e})") from e
  return out


def _filter_min_per_class(ys: list[np.ndarray], min_count: int) -> tuple[list[np.ndarray], int]:
  """Masks keeping classes with >= min_count examples (over all arrays), and new K."""
  all_y = np.concatenate(ys)
  if all_y.size and all_y.min() < 0:
    raise MiaInputError(f"y: labels must be >= 0, got {all_y.min()}")
  counts = np.bincount(all_y)
  kept = np.flatnonzero(counts >= min_count)
  lut = np.full(counts.shape[0], -1, dtype=np.int64)
  lut[kept] = np.arange(kept.size)  # Sorted old ids -> 0..K-1 (sklearn's order).
  return [lut[y] for y in ys], int(kept.size)


def load_npz(path: str | os.PathLike, *, name: str | None = None, test_fraction: float = 0.2,
             seed: int = 0, min_faces_per_person: int | None = None,
             num_classes: int | None = None, scale_images: bool = True) -> Dataset:
  """Loads a dataset from a ``.npz`` archive (never unpickles).

  Two layouts are recognised (other keys, e.g. ``names`` or ``feature_names``, are
  ignored):

  * ``x_train, y_train, x_test, y_test`` -- the archive's own split is used;
  * ``x, y`` -- split with one ``np.random.default_rng(seed)`` permutation,
    ``round(test_fraction * N)`` examples going to the test set.

  Features become float32. uint8 *images* (``x`` of shape ``[N, H, W]`` or
  ``[N, H, W, C]``) are divided by 255 (unless ``scale_images=False``) and
  ``[N, H, W]`` gets a channel axis (28x28 -> 28x28x1, 62x47 -> 62x47x1). Tabular
  ``[N, D]`` features are cast as they are (e.g. Location's 0/1 bits).

  Args:
    path: the ``.npz`` file.
    name: dataset name; default the file name without extension.
    test_fraction: test share for the ``(x, y)`` layout, in (0, 1).
    seed: split seed for the ``(x, y)`` layout.
    min_faces_per_person: if set (>= 1), keep only the classes with at least this
      many examples (counted over the whole archive) and relabel them ``0..K-1`` in
      order of their original id, like scikit-learn's ``fetch_lfw_people`` (for
      ``lfw_gray_62x47.npz``, 20 keeps 62 people and 3023 images).
    num_classes: K; default ``max label + 1`` (after the filter above), and then the
      labels must be exactly 0..K-1 (every class present in train or test): labels
      with gaps (an absent class, a stray large label) or 1-based labels are refused,
      remap them or pass ``num_classes``.
    scale_images: divide uint8 image pixels by 255.

  Returns:
    A :class:`Dataset`.

  Raises:
    MiaInputError: missing/unreadable file, pickled object arrays, missing keys,
      mismatched lengths, non-integer or out-of-range labels, fewer than 2 classes in
      the training labels, inferred labels that are not 0..K-1, complex or non-finite
      features.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise MiaInputError(f"path: expected a file path, got {type(path).__name__}")
  path = os.fspath(path)
  test_fraction, seed = _check_split_args(test_fraction, seed)
  if min_faces_per_person is not None:
    min_faces_per_person = check_positive_int(min_faces_per_person, "min_faces_per_person")
  if num_classes is not None:
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
  if name is None:
    name = os.path.splitext(os.path.basename(path))[0]

  arrays = _read_npz(path)
  split_keys = ("x_train", "y_train", "x_test", "y_test")
  if all(k in arrays for k in split_keys):
    xs = {"x_train": arrays["x_train"], "x_test": arrays["x_test"]}
    ys = {"y_train": arrays["y_train"], "y_test": arrays["y_test"]}
  elif "x" in arrays and "y" in arrays:
    xs, ys = {"x": arrays["x"]}, {"y": arrays["y"]}
  else:
    raise MiaInputError(
        f"path: {path!r} has arrays {sorted(arrays)}; expected either "
        f"(x_train, y_train, x_test, y_test) or (x, y)")

  for key in xs:
    xs[key] = _features_to_float(np.asarray(xs[key]), f"{key} (in {path!r})", scale_images)
  for key in ys:
    ys[key] = _labels_to_int(np.asarray(ys[key]), f"{key} (in {path!r})")
  for xk, yk in zip(xs, ys):
    if xs[xk].shape[0] != ys[yk].shape[0]:
      raise MiaInputError(
          f"{yk}: has {ys[yk].shape[0]} labels but {xk} has {xs[xk].shape[0]} examples "
          f"(in {path!r})")
    if ys[yk].size and ys[yk].min() < 0:
      raise MiaInputError(f"{yk}: labels must be >= 0, got {ys[yk].min()} (in {path!r})")

  if min_faces_per_person is not None:
    new_ys, n_kept = _filter_min_per_class(list(ys.values()), min_faces_per_person)
    if n_kept < 2:
      raise MiaInputError(
          f"min_faces_per_person: only {n_kept} class(es) have >= {min_faces_per_person} "
          f"examples in {path!r}; need at least 2")
    for (xk, yk), new_y in zip(zip(list(xs), list(ys)), new_ys):
      keep = new_y >= 0
      xs[xk], ys[yk] = xs[xk][keep], new_y[keep]

  if "x" in xs:
    x_tr, y_tr, x_te, y_te = _seeded_split(xs["x"], ys["y"], test_fraction=test_fraction,
                                           seed=seed)
  else:
    x_tr, y_tr, x_te, y_te = xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"]

  try:
    if num_classes is None:
      num_classes = _infer_num_classes({"y_train": y_tr, "y_test": y_te},
                                       "y" if "x" in xs else "y_train/y_test")
    _check_two_classes(y_tr, "y_train")
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=num_classes, name=name)
  except MiaInputError as e:
    raise MiaInputError(f"{e} (in {path!r})") from e


# ---------------------------------------------------------------------------
# tensorflow-datasets (TF-free)


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MiaInputError(
        "name: loading a tensorflow-datasets dataset needs the `tensorflow-datasets` "
        f"package ({e})") from e
  return tfds


def _tfds_is_registered(name: str) -> bool:
  """Whether ``name`` (``NAME[/CONFIG][:VERSION]``) is a tfds builder, without network."""
  try:
    tfds = _import_tfds()
  except MiaInputError:
    return False
  base = name.split(":")[0].split("/")[0]
  try:
    return base in tfds.list_builders(with_community_datasets=False)
  except Exception:  # noqa: BLE001 - registry trouble means "not known".
    return False


def _fetch_split(source: Any, n: int, image_key: str, label_key: str, split: str,
                 batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Reads the first ``n`` records of a tfds random-access data source."""
  xs, ys = [], []
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, batch):
    idx = list(range(start, min(start + batch, n)))
    records = getitems(idx) if getitems is not None else [source[i] for i in idx]
    for rec in records:
      if image_key not in rec or label_key not in rec:
        raise MiaInputError(
            f"image_key/label_key: split {split!r} records have keys {sorted(rec)}; "
            f"asked for image_key={image_key!r}, label_key={label_key!r}")
      xs.append(np.asarray(rec[image_key]))
      ys.append(np.asarray(rec[label_key]))
  if not xs:
    raise MiaInputError(f"split: split {split!r} is empty")
  try:
    x = np.stack(xs)
  except ValueError as e:
    raise MiaInputError(
        f"image_key: {image_key!r} has varying shapes in split {split!r} ({e}); "
        f"resize the examples first") from e
  return x, np.stack(ys)


def load_tfds(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = False,
              split_train: str = "train", split_test: str | None = "test",
              image_key: str = "image", label_key: str = "label",
              max_examples: int | None = None, test_fraction: float = 0.2,
              seed: int = 0, scale_images: bool = True) -> Dataset:
  """Loads a tensorflow-datasets dataset without TensorFlow.

  Reads through tfds' random-access data sources (``tfds.data_source``): the
  prepared dataset must be stored as ``array_record`` (or ``parquet``) files under
  ``data_dir/NAME/[CONFIG/]VERSION/`` with its ``dataset_info.json``. Such a
  directory is read even when ``NAME`` is not a registered builder (tfds rebuilds
  a read-only builder from the files). Images are decoded by tfds with PIL/OpenCV.

  Preparing a dataset (``download=True``) runs the builder's
  ``download_and_prepare(file_format="array_record")``; note that most image
  builders encode NumPy images with TensorFlow while preparing, so preparing them
  needs TF (or a machine with TF to prepare the folder once); reading never does.
  A dataset prepared as ``tfrecord`` (tfds' default with TF) cannot be read without
  TF: re-prepare it with ``file_format="array_record"``.

  Args:
    name: tfds name, ``NAME[/CONFIG][:VERSION]`` (a ``"tfds:"`` prefix is removed).
    data_dir: the tfds data directory; ``None`` uses tfds' default
      (``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
    download: download and prepare the dataset if it is not prepared yet.
    split_train: tfds split for training (e.g. ``"train"`` or ``"train[:50%]"``).
    split_test: tfds split for testing; ``None`` carves a seeded
      ``test_fraction`` of ``split_train`` out instead.
    image_key: feature holding the inputs (an image or a tensor).
    label_key: feature holding the integer label.
    max_examples: if set, read only the first ``max_examples`` records of each
      split (in the data source's fixed order).
    test_fraction: test share when ``split_test`` is None, in (0, 1).
    seed: split seed when ``split_test`` is None.
    scale_images: divide uint8 image pixels by 255.

  Returns:
    A :class:`Dataset` with ``x_*`` float32[N, H, W, C] (or the feature's shape),
    ``y_*`` int32[N]; ``num_classes`` from the ``ClassLabel`` feature when there is
    one, else ``max label + 1`` (the labels must then be exactly 0..K-1, see
    :func:`load_npz`); ``name`` the tfds name.

  Raises:
    MiaInputError: tfds missing, dataset unknown or not prepared in ``data_dir``
      while ``download=False``, stored in a format readable only with TF, a missing
      split or feature, or bad values.
  """
  if not isinstance(name, str) or not name:
    raise MiaInputError(f"name: expected a tfds dataset name, got {name!r}")
  if name.startswith(_TFDS_PREFIX):
    name = name[len(_TFDS_PREFIX):]
  if max_examples is not None:
    max_examples = check_positive_int(max_examples, "max_examples")
  test_fraction, seed = _check_split_args(test_fraction, seed)
  for arg, val in (("split_train", split_train), ("image_key", image_key),
                   ("label_key", label_key)):
    if not isinstance(val, str) or not val:
      raise MiaInputError(f"{arg}: expected a non-empty string, got {val!r}")
  if split_test is not None and (not isinstance(split_test, str) or not split_test):
    raise MiaInputError(f"split_test: expected a non-empty string or None, got {split_test!r}")
  if data_dir is not None:
    data_dir = os.fspath(data_dir)
  tfds = _import_tfds()
  where = f"data_dir={data_dir!r}" if data_dir is not None else "tfds' default data_dir"

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise MiaInputError(
        f"name: tfds dataset {name!r} is neither a registered tfds builder nor prepared "
        f"under {where}") from e
  except Exception as e:  # noqa: BLE001 - tfds raises many types here.
    raise MiaInputError(f"name: could not open tfds dataset {name!r} in {where}: "
                        f"{type(e).__name__}: {e}") from e

  if not builder.is_prepared():
    if not download:
      raise MiaInputError(
          f"name: tfds dataset {name!r} is not prepared under {where} (looked in "
          f"{builder.data_dir}); pass download=True, or point data_dir at a folder "
          f"holding it in array_record format")
    try:
      builder.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as e:
      raise MiaInputError(
          f"download: preparing tfds dataset {name!r} needs a module that is not "
          f"installed ({e}); prepare it once where TensorFlow is installed with "
          f"file_format='array_record' and pass that folder as data_dir") from e
    except Exception as e:  # noqa: BLE001
      raise MiaInputError(f"download: preparing tfds dataset {name!r} failed: "
                          f"{type(e).__name__}: {e}") from e

  info = builder.info
  splits = list(info.splits.keys())
  features = info.features
  for arg, key in (("image_key", image_key), ("label_key", label_key)):
    if key not in features:
      raise MiaInputError(
          f"{arg}: tfds dataset {name!r} has no feature {key!r}; features: {list(features)}")

  def read(split: str, arg: str) -> tuple[np.ndarray, np.ndarray]:
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except NotImplementedError as e:  # Prepared as tfrecord: random access needs TF.
      raise MiaInputError(
          f"name: tfds dataset {name!r} under {where} is stored as "
          f"{builder.info.file_format}, which is readable only with TensorFlow; "
          f"re-prepare it with file_format='array_record' ({e})") from e
    except (KeyError, ValueError) as e:
      raise MiaInputError(
          f"{arg}: could not read split {split!r} of tfds dataset {name!r}; available "
          f"splits: {splits} ({e})") from e
    n = len(source)
    if max_examples is not None:
      n = min(n, max_examples)
    return _fetch_split(source, n, image_key, label_key, split)

  x_tr, y_tr = read(split_train, "split_train")
  if split_test is None:
    x_tr, y_tr, x_te, y_te = _seeded_split(x_tr, y_tr, test_fraction=test_fraction, seed=seed)
  else:
    x_te, y_te = read(split_test, "split_test")

  x_tr = _features_to_float(x_tr, f"{image_key} ({split_train})", scale_images)
  x_te = _features_to_float(x_te, f"{image_key} ({split_test})", scale_images)
  y_tr = _labels_to_int(y_tr, f"label_key ({label_key!r} in {split_train!r})")
  y_te = _labels_to_int(y_te, f"label_key ({label_key!r} in {split_test!r})")
  num_classes = getattr(features[label_key], "num_classes", None)
  try:
    if num_classes is None:
      num_classes = _infer_num_classes({"y_train": y_tr, "y_test": y_te},
                                       f"label_key ({label_key!r})")
    _check_two_classes(y_tr, f"label_key ({label_key!r} in {split_train!r})")
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=int(num_classes), name=name)
  except MiaInputError as e:
    raise MiaInputError(f"{e} (tfds dataset {name!r})") from e


# ---------------------------------------------------------------------------
# Dispatch


def load_dataset(name_or_path: str | os.PathLike, **options: Any) -> Dataset:
  """Loads a dataset by built-in name, ``.npz`` path, or tensorflow-datasets name.

  Dispatch, in order:

  1. a path (``os.PathLike``, or a string ending in ``.npz``) -> :func:`load_npz`;
  2. ``"tfds:NAME"`` -> :func:`load_tfds` (``NAME``);
  3. a name in :data:`BUILTIN_DATASETS` -> :func:`load_builtin`;
  4. another name, when ``data_dir`` is among the options or tfds registers the name
     -> :func:`load_tfds`;
  5. otherwise :class:`MiaInputError` listing the built-in names.

  Args:
    name_or_path: what to load.
    **options: keyword options of the chosen loader.

  Returns:
    A :class:`Dataset`.

  Raises:
    MiaInputError: unknown name, or any error of the chosen loader.
  """
  if isinstance(name_or_path, os.PathLike):
    return _call_with_options(load_npz, {"path": name_or_path, **options}, "load_npz")
  if not isinstance(name_or_path, str) or not name_or_path:
    raise MiaInputError(
        f"name_or_path: expected a dataset name or a .npz path, got {name_or_path!r}")
  if name_or_path.lower().endswith(".npz"):
    return _call_with_options(load_npz, {"path": name_or_path, **options}, "load_npz")
  if name_or_path.startswith(_TFDS_PREFIX):
    return _call_with_options(load_tfds, {"name": name_or_path, **options}, "load_tfds")
  if name_or_path in BUILTIN_DATASETS:
    return load_builtin(name_or_path, **options)
  if "data_dir" in options or _tfds_is_registered(name_or_path):
    return _call_with_options(load_tfds, {"name": name_or_path, **options}, "load_tfds")
  raise MiaInputError(
      f"name_or_path: unknown dataset {name_or_path!r}; built-in datasets: "
      f"{list(BUILTIN_DATASETS)}; or give a path to a .npz file, or 'tfds:NAME' for a "
      f"tensorflow-datasets dataset")
