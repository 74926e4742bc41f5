"""Tests for mia_jax.data: synthetic data, loaders, preprocessing and splits."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mia_jax._validation import MiaInputError
from mia_jax.data import (BUILTIN_DATASETS, Dataset, MembershipSplit, add_channel, check_keep,
                          flatten, gaussian_nb, keep_matrix, load_builtin, load_dataset,
                          load_npz, membership_split, purchase_like, purchase_prototypes,
                          random_data, scale_to_unit, standardize, subsample_classes,
                          take_subset)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _assert_same(a: Dataset, b: Dataset) -> None:
  for f in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  assert a.num_classes == b.num_classes and a.name == b.name


def _assert_dtypes(ds: Dataset) -> None:
  assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32


# ---------------------------------------------------------------------------
# Synthetic data


def test_gaussian_nb_shapes_determinism_and_name():
  ds, means = gaussian_nb(num_classes=3, num_features=7, num_train=30, num_test=12,
                          sigma=0.5, seed=4)
  assert ds.x_train.shape == (30, 7) and ds.x_test.shape == (12, 7)
  assert means.shape == (3, 7)
  _assert_dtypes(ds)
  assert ds.num_classes == 3
  assert "sigma0.5" in ds.name
  np.testing.assert_array_equal(np.bincount(ds.y_train), [10, 10, 10])
  ds2, means2 = gaussian_nb(num_classes=3, num_features=7, num_train=30, num_test=12,
                            sigma=0.5, seed=4)
  _assert_same(ds, ds2)
  np.testing.assert_array_equal(means, means2)
  ds3, _ = gaussian_nb(num_classes=3, num_features=7, num_train=30, num_test=12,
                       sigma=0.5, seed=5)
  assert not np.array_equal(ds.x_train, ds3.x_train)


def test_gaussian_nb_means_match_empirical_and_construction():
  d, n, sigma, sep = 10, 8000, 0.7, 2.0
  ds, means = gaussian_nb(num_classes=2, num_features=d, num_train=n, num_test=n,
                          separation=sep, sigma=sigma, seed=0)
  # Documented construction: means = sep * N(0, I) / sqrt(d), first draw of the stream.
  expected = sep * np.random.default_rng(0).standard_normal((2, d)) / np.sqrt(d)
  np.testing.assert_allclose(means, expected)
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    for k in range(2):
      xk = x[y == k]
      # Empirical mean within 5 standard errors per coordinate.
      np.testing.assert_array_less(np.abs(xk.mean(0) - means[k]), 5 * sigma / math.sqrt(len(xk)))
      np.testing.assert_allclose(xk.std(0).mean(), sigma, rtol=0.05)
  # The nearest-mean (Bayes) classifier reaches Phi(||mu0 - mu1|| / (2 sigma)).
  dist = ((ds.x_test[:, None, :] - means[None]) ** 2).sum(-1)
  acc = np.mean(dist.argmin(1) == ds.y_test)
  z = np.linalg.norm(means[0] - means[1]) / (2 * sigma)
  bayes = 0.5 * (1 + math.erf(z / math.sqrt(2)))
  assert abs(acc - bayes) < 0.02


def test_purchase_like_labels_recoverable_by_nearest_prototype():
  ds = purchase_like(num_classes=20, num_features=600, num_train=1000, num_test=400, seed=3)
  _assert_dtypes(ds)
  assert ds.x_train.shape == (1000, 600)
  assert set(np.unique(ds.x_train)) <= {0.0, 1.0}
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(20, 50))
  protos = purchase_prototypes(num_classes=20, num_features=600, seed=3).astype(np.float32)
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    hamming = np.abs(x[:, None, :] - protos[None]).sum(-1)
    assert np.mean(hamming.argmin(1) == y) > 0.99
  # Resampling keeps each bit's marginal density.
  assert abs(ds.x_train.mean() - 0.1) < 0.01
  _assert_same(ds, purchase_like(num_classes=20, num_features=600, num_train=1000,
                                 num_test=400, seed=3))


def test_random_data_shapes_and_determinism():
  ds = random_data(shape=(6, 5, 3), num_classes=4, num_train=9, num_test=5, seed=1)
  assert ds.x_train.shape == (9, 6, 5, 3) and ds.x_test.shape == (5, 6, 5, 3)
  _assert_dtypes(ds)
  assert 0 <= ds.x_train.min() and ds.x_train.max() < 1
  _assert_same(ds, random_data(shape=(6, 5, 3), num_classes=4, num_train=9, num_test=5, seed=1))
  assert random_data(shape=12, num_train=3, num_test=2).x_train.shape == (3, 12)


@pytest.mark.parametrize("fn, kwargs, arg", [
    (gaussian_nb, {"num_classes": 1}, "num_classes"),
    (gaussian_nb, {"sigma": 0.0}, "sigma"),
    (gaussian_nb, {"num_train": 0}, "num_train"),
    (gaussian_nb, {"seed": -1}, "seed"),
    (purchase_like, {"density": 1.5}, "density"),
    (purchase_like, {"flip": -0.1}, "flip"),
    (random_data, {"shape": (28, 0)}, "shape"),
    (random_data, {"num_test": 2.5}, "num_test"),
])
def test_synthetic_bad_arguments(fn, kwargs, arg):
  with pytest.raises(MiaInputError, match=arg):
    fn(**kwargs)


# ---------------------------------------------------------------------------
# Built-in loaders and dispatch


def test_builtin_digits():
  ds = load_builtin("digits")
  assert ds.x_train.shape[1:] == (8, 8, 1)
  assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
  assert ds.x_test.shape[0] == round(0.2 * 1797)
  assert ds.num_classes == 10
  _assert_dtypes(ds)
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  _assert_same(ds, load_dataset("digits"))
  other = load_builtin("digits", seed=1, test_fraction=0.5)
  assert other.x_test.shape[0] == round(0.5 * 1797)
  assert not np.array_equal(load_builtin("digits", seed=1).y_train, ds.y_train)


def test_builtin_breast_cancer_is_standardized_on_train():
  ds = load_builtin("breast_cancer", seed=2)
  assert ds.x_train.shape[1:] == (30,) and ds.num_classes == 2
  assert ds.x_train.shape[0] + ds.x_test.shape[0] == 569
  np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(0), 1, atol=1e-4)
  _assert_same(ds, load_builtin("breast_cancer", seed=2))


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_every_builtin_loads(name):
  small = {"digits": {}, "breast_cancer": {},
           "gaussian_nb": {"num_train": 20, "num_test": 10},
           "purchase_like": {"num_train": 20, "num_test": 10},
           "random": {"num_train": 20, "num_test": 10}}[name]
  ds = load_dataset(name, **small)
  _assert_dtypes(ds)
  _assert_same(ds, load_builtin(name, **small))


def test_builtin_unknown_option_and_name():
  with pytest.raises(MiaInputError, match="options.*bogus"):
    load_builtin("digits", bogus=1)
  with pytest.raises(MiaInputError, match="test_fraction"):
    load_builtin("digits", test_fraction=1.0)
  with pytest.raises(MiaInputError, match="name.*built-in datasets"):
    load_builtin("mnist")


def test_load_dataset_unknown_name_lists_builtins():
  with pytest.raises(MiaInputError, match=r"name_or_path.*digits.*breast_cancer"):
    load_dataset("definitely_not_a_dataset_xyz")
  with pytest.raises(MiaInputError, match="name_or_path"):
    load_dataset(3)


# ---------------------------------------------------------------------------
# .npz files


def _images(n, seed, h=6, w=5):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 4, n).astype(np.int64)


def test_npz_roundtrip_split_layout(tmp_path):
  x_tr, y_tr = _images(20, 0)
  x_te, y_te = _images(7, 1)
  y_tr[0] = 3  # make sure K = 4 is inferred
  path = tmp_path / "imgs.npz"
  np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, extra=np.arange(3))
  ds = load_npz(path)
  _assert_dtypes(ds)
  assert ds.name == "imgs" and ds.num_classes == 4
  assert ds.x_train.shape == (20, 6, 5, 1)
  np.testing.assert_allclose(ds.x_train[..., 0], x_tr / 255.0, rtol=1e-6)
  np.testing.assert_allclose(ds.x_test[..., 0], x_te / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_train, y_tr)
  np.testing.assert_array_equal(ds.y_test, y_te)
  _assert_same(ds, load_dataset(str(path)))
  _assert_same(ds, load_dataset(path))
  raw = load_npz(path, scale_images=False, name="raw", num_classes=6)
  np.testing.assert_array_equal(raw.x_train[..., 0], x_tr)
  assert raw.num_classes == 6 and raw.name == "raw"


def test_npz_roundtrip_xy_layout(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, (50, 9), dtype=np.uint8)  # tabular bits: not rescaled
  x[:, 0] = np.arange(50)  # unique id per row to match examples up
  y = rng.integers(0, 3, 50)
  path = tmp_path / "tab.npz"
  np.savez(path, x=x, y=y)
  ds = load_npz(path, test_fraction=0.3, seed=5)
  _assert_dtypes(ds)
  assert ds.x_train.shape == (35, 9) and ds.x_test.shape == (15, 9)
  both_x = np.concatenate([ds.x_train, ds.x_test])
  both_y = np.concatenate([ds.y_train, ds.y_test])
  order = np.argsort(both_x[:, 0])
  np.testing.assert_array_equal(both_x[order], x.astype(np.float32))
  np.testing.assert_array_equal(both_y[order], y)
  _assert_same(ds, load_npz(path, test_fraction=0.3, seed=5))
  assert not np.array_equal(load_npz(path, test_fraction=0.3, seed=6).x_test, ds.x_test)


def test_npz_min_faces_per_person_relabels(tmp_path):
  counts = [5, 1, 3, 0, 4]  # class 1 and 3 dropped at min 3
  y = np.repeat(np.arange(5), counts)
  x, _ = _images(len(y), 2, h=4, w=3)
  x[:, 0, 0] = np.arange(len(y))
  path = tmp_path / "faces.npz"
  np.savez(path, x=x, y=y, names=np.array(["a", "b", "c", "d", "e"]))
  ds = load_npz(path, min_faces_per_person=3, test_fraction=0.25, seed=0)
  assert ds.num_classes == 3
  assert ds.x_train.shape[0] + ds.x_test.shape[0] == 12
  assert ds.x_train.shape[1:] == (4, 3, 1)
  all_y = np.concatenate([ds.y_train, ds.y_test])
  np.testing.assert_array_equal(np.bincount(all_y), [5, 3, 4])
  ids = np.rint(np.concatenate([ds.x_train, ds.x_test])[:, 0, 0, 0] * 255).astype(int)
  np.testing.assert_array_equal(np.array([0, -1, 1, -1, 2])[y[ids]], all_y)
  with pytest.raises(MiaInputError, match="min_faces_per_person"):
    load_npz(path, min_faces_per_person=5)


def test_npz_missing_and_unreadable_files(tmp_path):
  missing = tmp_path / "nope.npz"
  with pytest.raises(MiaInputError, match=r"path.*not found.*nope\.npz"):
    load_npz(missing)
  with pytest.raises(MiaInputError, match="path.*not found"):
    load_dataset(str(missing))
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"this is not a zip archive")
  with pytest.raises(MiaInputError, match=r"path.*junk\.npz"):
    load_npz(junk)
  with pytest.raises(MiaInputError, match="path.*not a file"):
    load_npz(tmp_path)


def test_npz_pickled_object_array_is_refused(tmp_path):
  path = tmp_path / "pickled.npz"
  np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
  with pytest.raises(MiaInputError, match=r"path.*'x'.*pickle"):
    load_npz(path)


def test_npz_missing_keys(tmp_path):
  path = tmp_path / "keys.npz"
  np.savez(path, x_train=np.zeros((3, 2)), y_train=np.zeros(3))
  with pytest.raises(MiaInputError, match=r"path.*x_train.*expected either"):
    load_npz(path)


def test_npz_bad_contents(tmp_path):
  x = np.zeros((6, 3), dtype=np.float32)
  y = np.array([0, 1, 0, 1, 0, 1])

  def save(**arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path

  bad_x = x.copy()
  bad_x[2, 1] = np.nan
  with pytest.raises(MiaInputError, match="x_train.*NaN"):
    load_npz(save(x_train=bad_x, y_train=y, x_test=x, y_test=y))
  with pytest.raises(MiaInputError, match="y_train.*labels must be in"):
    load_npz(save(x_train=x, y_train=y * 3, x_test=x, y_test=y), num_classes=2)
  with pytest.raises(MiaInputError, match="y_test.*>= 0"):
    load_npz(save(x_train=x, y_train=y, x_test=x, y_test=-y))
  with pytest.raises(MiaInputError, match="y: has 5 labels but x has 6"):
    load_npz(save(x=x, y=y[:5]))
  with pytest.raises(MiaInputError, match="y .*integer class labels"):
    load_npz(save(x=x, y=y + 0.5))
  with pytest.raises(MiaInputError, match="num_classes"):
    load_npz(save(x=x, y=y), num_classes=1)


def _shared(name: str) -> pathlib.Path:
  path = SHARED_DATA / name
  if not path.is_file():
    pytest.skip(f"real dataset {path} not present (only developer machines have ../shared/data)")
  return path


def test_real_location_npz():
  ds = load_npz(_shared("location.npz"), seed=0)
  assert ds.x_train.shape == (4008, 446) and ds.x_test.shape == (1002, 446)
  assert ds.num_classes == 30
  assert set(np.unique(ds.x_train)) <= {0.0, 1.0}
  _assert_dtypes(ds)


def test_real_mnist_npz():
  ds = load_dataset(str(_shared("mnist.npz")))
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.num_classes == 10
  # Canonical MNIST train pixel mean 33.318 / 255.
  assert abs(float(ds.x_train.mean()) * 255 - 33.318) < 0.01


def test_real_lfw_min_faces_matches_sklearn_counts():
  ds = load_npz(_shared("lfw_gray_62x47.npz"), min_faces_per_person=20)
  assert ds.num_classes == 62
  assert ds.x_train.shape[0] + ds.x_test.shape[0] == 3023
  assert ds.x_train.shape[1:] == (62, 47, 1)


# ---------------------------------------------------------------------------
# Preprocessing


def _small_ds():
  rng = np.random.default_rng(0)
  return Dataset(rng.normal(3, 2, (40, 4, 3)).astype(np.float32), rng.integers(0, 3, 40),
                 rng.normal(3, 2, (10, 4, 3)).astype(np.float32), rng.integers(0, 3, 10),
                 num_classes=3, name="small")


def test_standardize_fits_on_train_and_is_pure():
  ds = _small_ds()
  before = ds.x_train.copy()
  out = standardize(ds)
  np.testing.assert_array_equal(ds.x_train, before)
  np.testing.assert_allclose(out.x_train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(out.x_train.std(0), 1, atol=1e-5)
  m, s = ds.x_train.mean(0), ds.x_train.std(0)
  np.testing.assert_allclose(out.x_test, (ds.x_test - m) / s, rtol=1e-4, atol=1e-5)
  given_stats = standardize(ds, mean=1.0, std=np.full((4, 3), 2.0))
  np.testing.assert_allclose(given_stats.x_test, (ds.x_test - 1) / 2, rtol=1e-6)
  const = Dataset(np.ones((4, 2)), np.array([0, 1, 0, 1]), np.ones((2, 2)), np.array([0, 1]),
                  num_classes=2)
  np.testing.assert_array_equal(standardize(const).x_train, 0)
  with pytest.raises(MiaInputError, match="std"):
    standardize(ds, std=0.0)
  with pytest.raises(MiaInputError, match="mean"):
    standardize(ds, mean=np.zeros(5))
  with pytest.raises(MiaInputError, match="ds"):
    standardize(ds.x_train)


def test_scale_flatten_add_channel():
  ds = _small_ds()
  np.testing.assert_allclose(scale_to_unit(ds, max_value=2.0).x_train, ds.x_train / 2)
  with pytest.raises(MiaInputError, match="max_value"):
    scale_to_unit(ds, max_value=0)
  flat = flatten(ds)
  assert flat.x_train.shape == (40, 12) and flat.x_test.shape == (10, 12)
  chan = add_channel(ds)
  assert chan.x_train.shape == (40, 4, 3, 1)
  with pytest.raises(MiaInputError, match="add_channel"):
    add_channel(chan)
  assert ds.x_train.shape == (40, 4, 3)  # input untouched


def test_take_subset_and_subsample_classes():
  ds = _small_ds()
  sub = take_subset(ds, num_train=15, seed=3)
  assert sub.x_train.shape[0] == 15 and sub.x_test.shape[0] == 10
  _assert_same(sub, take_subset(ds, num_train=15, seed=3))
  rows = [int(np.flatnonzero((ds.x_train == r).all(axis=(1, 2)))[0]) for r in sub.x_train]
  assert rows == sorted(set(rows))
  with pytest.raises(MiaInputError, match="num_test"):
    take_subset(ds, num_test=11)
  two = subsample_classes(ds, [2, 0])
  assert two.num_classes == 2
  np.testing.assert_array_equal(two.y_train, np.where(ds.y_train[ds.y_train != 1] == 2, 0, 1))
  with pytest.raises(MiaInputError, match="classes"):
    subsample_classes(ds, [0])
  with pytest.raises(MiaInputError, match="classes"):
    subsample_classes(ds, [0, 3])


# ---------------------------------------------------------------------------
# Splits


def test_membership_split_disjoint_and_sized():
  split = membership_split(100, target_in=30, target_out=20, shadow_pool=40, auxiliary=5, seed=1)
  assert isinstance(split, MembershipSplit)
  assert [len(p) for p in split] == [30, 20, 40, 5]
  allidx = np.concatenate(split)
  assert len(np.unique(allidx)) == 95 and allidx.min() >= 0 and allidx.max() < 100
  again = membership_split(100, target_in=30, target_out=20, shadow_pool=40, auxiliary=5, seed=1)
  for a, b in zip(split, again):
    np.testing.assert_array_equal(a, b)
  other = membership_split(100, target_in=30, target_out=20, shadow_pool=40, auxiliary=5, seed=2)
  assert not np.array_equal(split.target_in, other.target_in)
  assert membership_split(10, target_in=10, target_out=0).target_out.shape == (0,)


def test_membership_split_errors():
  with pytest.raises(MiaInputError, match="exceeds num_examples=10"):
    membership_split(10, target_in=5, target_out=5, shadow_pool=1)
  with pytest.raises(MiaInputError, match="target_out"):
    membership_split(10, target_in=5, target_out=-1)
  with pytest.raises(MiaInputError, match="num_examples"):
    membership_split(0, target_in=0, target_out=0)


def test_keep_matrix_balanced_and_deterministic():
  keep = keep_matrix(16, 500, seed=0)
  assert keep.shape == (16, 500) and keep.dtype == bool
  np.testing.assert_array_equal(keep.sum(0), np.full(500, 8))
  np.testing.assert_array_equal(keep, keep_matrix(16, 500, seed=0))
  assert not np.array_equal(keep, keep_matrix(16, 500, seed=1))
  assert np.all(np.abs(keep.sum(1) - 250) < 60)  # each model gets ~N/2
  assert check_keep(keep, 500) is not None


@settings(max_examples=25, deadline=None)
@given(half=st.integers(1, 8), n=st.integers(1, 50), seed=st.integers(0, 2**31))
def test_keep_matrix_property(half, n, seed):
  keep = keep_matrix(2 * half, n, seed=seed)
  assert np.all(keep.sum(0) == half)
  check_keep(keep, n)


@pytest.mark.parametrize("m", [3, 1, 0, 2.0])
def test_keep_matrix_bad_num_models(m):
  with pytest.raises(MiaInputError, match="num_models"):
    keep_matrix(m, 10)


def test_check_keep_errors():
  keep = keep_matrix(4, 6)
  assert check_keep(keep.astype(int), 6).dtype == bool
  with pytest.raises(MiaInputError, match="keep.*7 columns"):
    check_keep(keep, 7)
  with pytest.raises(MiaInputError, match="keep.*2-D"):
    check_keep(keep[0], 6)
  with pytest.raises(MiaInputError, match="keep.*0/1"):
    check_keep(keep * 2, 6)
  bad = keep.copy()
  bad[:, 2] = True
  with pytest.raises(MiaInputError, match=r"never OUT.*\[2\]"):
    check_keep(bad, 6)
  bad[:, 2] = False
  with pytest.raises(MiaInputError, match=r"never IN.*\[2\]"):
    check_keep(bad, 6)
  assert check_keep(bad, 6, require_in_and_out=False).shape == (4, 6)
