"""Seeded synthetic datasets.

Every generator here is a pure function of its keyword arguments: the same
arguments (``seed`` included) give bit-identical arrays on every platform, because
all randomness comes from one ``numpy.random.default_rng(seed)`` stream consumed in a
fixed order (class parameters first, then the training set, then the test set).

* :func:`gaussian_nb` -- isotropic Gaussian classes with known means, so a test can
  compute the Bayes-optimal classifier and the Bayes-optimal membership oracle.
* :func:`purchase_like` -- binary feature vectors clustered around random binary
  prototypes, the construction Shokri et al. (2017) used to make Purchase-100 a
  classification task.
* :func:`random_data` -- shape-only noise for scaling and throughput runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mia_jax._validation import MiaInputError, check_in_range, check_positive_int
from mia_jax.data.dataset import Dataset


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
  """int32[n]: class k appears floor(n/K) or ceil(n/K) times, in random order."""
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def gaussian_nb(*,
                num_classes: int = 2,
                num_features: int = 50,
                num_train: int = 1000,
                num_test: int = 1000,
                separation: float = 1.0,
                sigma: float = 1.0,
                seed: int = 0) -> tuple[Dataset, np.ndarray]:
  """Isotropic Gaussian classes ("Gaussian naive Bayes" data) with known means.

  Construction, with ``d = num_features`` and ``K = num_classes``, from one
  ``np.random.default_rng(seed)`` stream in this order:

  1. class means ``mu_k = separation * z_k / sqrt(d)`` with ``z_k ~ N(0, I_d)``
     (``k = 0..K-1``), so ``E||mu_k||^2 = separation^2`` whatever ``d`` is, and two
     means lie about ``separation * sqrt(2)`` apart;
  2. training labels: ``arange(num_train) % K`` randomly permuted (balanced classes),
     then ``x_i = mu_{y_i} + sigma * e_i`` with ``e_i ~ N(0, I_d)``;
  3. test labels and features the same way.

  The class-conditional density is ``N(mu_k, sigma^2 I_d)`` with equal priors, so
  the Bayes-optimal classifier is the nearest mean, and with two classes its accuracy
  is ``Phi(||mu_0 - mu_1|| / (2 sigma))``. ``sigma`` (and the other parameters) are
  recorded in the returned dataset's ``name``, e.g.
  ``"gaussian_nb_k2_d50_sep1_sigma1"``.

  Args:
    num_classes: K >= 2.
    num_features: d >= 1.
    num_train: number of training examples (>= 1).
    num_test: number of test examples (>= 1).
    separation: scale of the class means (>= 0).
    sigma: noise standard deviation (> 0).
    seed: seed of the NumPy generator.

  Returns:
    ``(dataset, means)``: ``dataset.x_train`` float32[num_train, d],
    ``dataset.y_train`` int32[num_train], ``x_test`` float32[num_test, d],
    ``y_test`` int32[num_test]; ``means`` float64[K, d] the true class means
    ``mu_k`` (not the empirical ones).

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
  num_features = check_positive_int(num_features, "num_features")
  num_train = check_positive_int(num_train, "num_train")
  num_test = check_positive_int(num_test, "num_test")
  separation = check_in_range(separation, "separation", 0.0, np.inf, high_open=True)
  sigma = check_in_range(sigma, "sigma", 0.0, np.inf, low_open=True, high_open=True)
  seed = _check_seed(seed)

  rng = np.random.default_rng(seed)
  means = separation * rng.standard_normal((num_classes, num_features)) / np.sqrt(num_features)

  def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_labels(rng, n, num_classes)
    x = means[y] + sigma * rng.standard_normal((n, num_features))
    return x.astype(np.float32), y

  x_train, y_train = draw(num_train)
  x_test, y_test = draw(num_test)
  name = (f"gaussian_nb_k{num_classes}_d{num_features}_sep{separation:g}"
          f"_sigma{sigma:g}")
  ds = Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes, name=name)
  return ds, means


def purchase_like(*,
                  num_classes: int = 10,
                  num_features: int = 600,
                  num_train: int = 2000,
                  num_test: int = 2000,
                  density: float = 0.1,
                  flip: float = 0.2,
                  seed: int = 0) -> Dataset:
  """Binary "shopping basket" records clustered around random prototypes.

  Shokri et al. (2017) turned the Purchase (Acquire Valued Shoppers) data into a
  classification task by clustering binary purchase vectors and using the cluster id
  as the label. This generator builds data with that structure directly, from one
  ``np.random.default_rng(seed)`` stream in this order:

  1. ``K`` prototypes ``P_k in {0,1}^d`` with i.i.d. ``Bernoulli(density)`` bits;
  2. training labels: ``arange(num_train) % K`` randomly permuted (balanced);
     each record starts as its class prototype, and each bit independently, with
     probability ``flip``, is resampled from ``Bernoulli(density)``. Resampling (not
     inverting) keeps every feature's marginal density at ``density``; a bit actually
     changes with probability ``flip * 2 * density * (1 - density)`` at most;
  3. test records the same way.

  With the defaults a record differs from its own prototype in about
  ``600 * 0.2 * 0.18 ~ 22`` bits and from another class's in about ``108``, so the
  label is recoverable by the nearest prototype (Hamming distance).

  Args:
    num_classes: K >= 2 clusters (Purchase-100 uses 100).
    num_features: d >= 1 binary features (Purchase uses 600).
    num_train: number of training records (>= 1).
    num_test: number of test records (>= 1).
    density: probability that a prototype / resampled bit is 1, in (0, 1).
    flip: per-bit resampling probability, in [0, 1].
    seed: seed of the NumPy generator.

  Returns:
    A :class:`Dataset` with ``x_*`` float32[N, d] in {0, 1} and ``y_*`` int32[N]
    (the cluster id). The prototypes are reproducible with
    :func:`purchase_prototypes`.

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
  num_features = check_positive_int(num_features, "num_features")
  num_train = check_positive_int(num_train, "num_train")
  num_test = check_positive_int(num_test, "num_test")
  density = check_in_range(density, "density", 0.0, 1.0, low_open=True, high_open=True)
  flip = check_in_range(flip, "flip", 0.0, 1.0)
  seed = _check_seed(seed)

  rng = np.random.default_rng(seed)
  prototypes = rng.random((num_classes, num_features)) < density

  def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_labels(rng, n, num_classes)
    resample = rng.random((n, num_features)) < flip
    fresh = rng.random((n, num_features)) < density
    x = np.where(resample, fresh, prototypes[y])
    return x.astype(np.float32), y

  x_train, y_train = draw(num_train)
  x_test, y_test = draw(num_test)
  name = f"purchase_like_k{num_classes}_d{num_features}"
  return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes, name=name)


def purchase_prototypes(*, num_classes: int = 10, num_features: int = 600,
                        density: float = 0.1, seed: int = 0) -> np.ndarray:
  """The prototypes :func:`purchase_like` uses for the same arguments.

  Returns:
    bool[K, d]: prototype ``k`` is the noise-free record of class ``k``.
  """
  num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
  num_features = check_positive_int(num_features, "num_features")
  density = check_in_range(density, "density", 0.0, 1.0, low_open=True, high_open=True)
  rng = np.random.default_rng(_check_seed(seed))
  return rng.random((num_classes, num_features)) < density


def random_data(*,
                shape: Sequence[int] = (28, 28, 1),
                num_classes: int = 10,
                num_train: int = 1000,
                num_test: int = 1000,
                seed: int = 0) -> Dataset:
  """Shape-only random data for scaling and throughput runs (nothing to learn).

  Features are i.i.d. ``Uniform[0, 1)`` and labels are balanced (``arange(N) % K``
  randomly permuted), independent of the features. Drawn from one
  ``np.random.default_rng(seed)`` stream: train labels, train features, test labels,
  test features.

  Args:
    shape: per-example feature shape, e.g. ``(28, 28, 1)`` or ``(32, 32, 3)`` or
      ``(600,)``; every entry >= 1.
    num_classes: K >= 2.
    num_train: number of training examples (>= 1).
    num_test: number of test examples (>= 1).
    seed: seed of the NumPy generator.

  Returns:
    A :class:`Dataset` with ``x_*`` float32[N, *shape] and ``y_*`` int32[N].

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
    shape = (int(shape),)
  try:
    shape = tuple(shape)
  except TypeError as e:
    raise MiaInputError(f"shape: expected a sequence of positive integers, got {shape!r}") from e
  if not shape:
    raise MiaInputError("shape: expected at least one dimension, got ()")
  shape = tuple(check_positive_int(s, "shape") for s in shape)
  num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
  num_train = check_positive_int(num_train, "num_train")
  num_test = check_positive_int(num_test, "num_test")
  rng = np.random.default_rng(_check_seed(seed))

  def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_labels(rng, n, num_classes)
    x = rng.random((n, *shape), dtype=np.float32)
    return x, y

  x_train, y_train = draw(num_train)
  x_test, y_test = draw(num_test)
  name = "random_" + "x".join(str(s) for s in shape)
  return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes, name=name)


def _check_seed(seed) -> int:
  """A non-negative integer seed (NumPy's requirement)."""
  return check_positive_int(seed, "seed", minimum=0)
