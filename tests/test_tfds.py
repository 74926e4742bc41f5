"""The tensorflow-datasets path of mia_jax.data, for real and without TensorFlow.

Each test builds a tiny tfds dataset itself in a temporary data_dir with a
``tfds.core.GeneratorBasedBuilder`` and ``download_and_prepare()`` in the
``array_record`` file format, then reads it back through ``load_tfds`` /
``load_dataset``, which use tfds' TF-free random-access data sources.

What works without TensorFlow in tfds 4.9.10 (checked): writing array_record
shards, ``dataset_info.json`` and the feature metadata; serializing ``ClassLabel``
and ``Tensor`` features; reading with ``tfds.data_source``; decoding ``Image``
features with PIL. The one TF dependency is ``tfds.features.Image`` *encoding a
NumPy array* (it calls ``tf.image.encode_png``), so the generator yields each image
already PNG-encoded by PIL; ``Image.encode_example`` stores such bytes as they are.
The builders use ``skip_registration=True`` so the loader has to find the dataset
from the files in ``data_dir`` alone (tfds' read-only builder), as it would for a
dataset prepared elsewhere.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from mia_jax._validation import MiaInputError
from mia_jax.data import load_dataset, load_tfds

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

H, W = 5, 4
NUM_CLASSES = 3
N_TRAIN, N_TEST = 12, 5


def _png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  PIL_Image.fromarray(img[..., 0], mode="L").save(buf, format="PNG")
  return buf.getvalue()


def _examples(split: str) -> list[tuple[np.ndarray, int]]:
  n, seed = (N_TRAIN, 0) if split == "train" else (N_TEST, 1)
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, 256, (H, W, 1), dtype=np.uint8), i % NUM_CLASSES) for i in range(n)]


class MiaTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """5x4x1 uint8 images with a 3-class label; splits train (12) and test (5)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(H, W, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    for i, (img, label) in enumerate(_examples(split)):
      yield i, {"image": _png(img), "label": label}


class MiaTinyVectors(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """float32[6] feature vectors under the key "features", integer label "y"; train only."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "features": tfds.features.Tensor(shape=(6,), dtype=np.float32),
            "y": tfds.features.Scalar(dtype=np.int64),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(7)
    for i in range(20):
      yield i, {"features": np.concatenate([[i], rng.normal(size=5)]).astype(np.float32),
                "y": i % 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  for cls in (MiaTinyImages, MiaTinyVectors):
    cls(data_dir=str(root), file_format="array_record").download_and_prepare()
  return root


def _sorted(x: np.ndarray, y: np.ndarray):
  """Orders examples canonically (tfds shuffles records by key when writing)."""
  keys = [xi.tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y)]
  order = sorted(range(len(keys)), key=keys.__getitem__)
  return x[order], y[order]


def test_load_tfds_returns_exactly_the_examples_written(data_dir):
  ds = load_tfds("mia_tiny_images", data_dir=data_dir, download=False)
  assert ds.name == "mia_tiny_images" and ds.num_classes == NUM_CLASSES
  assert ds.x_train.shape == (N_TRAIN, H, W, 1) and ds.x_test.shape == (N_TEST, H, W, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
    written = _examples(split)
    wx = np.stack([img for img, _ in written]).astype(np.float32) / 255.0
    wy = np.array([label for _, label in written], dtype=np.int32)
    gx, gy = _sorted(x, y)
    ex, ey = _sorted(wx, wy)
    np.testing.assert_array_equal(gx, ex)
    np.testing.assert_array_equal(gy, ey)
  # Deterministic order across loads, and the same through load_dataset's dispatch.
  again = load_dataset("tfds:mia_tiny_images", data_dir=data_dir)
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  np.testing.assert_array_equal(again.y_test, ds.y_test)
  unprefixed = load_dataset("mia_tiny_images", data_dir=str(data_dir))
  np.testing.assert_array_equal(unprefixed.y_train, ds.y_train)


def test_load_tfds_options(data_dir):
  few = load_tfds("mia_tiny_images", data_dir=data_dir, max_examples=4)
  assert few.x_train.shape[0] == 4 and few.x_test.shape[0] == 4
  full = load_tfds("mia_tiny_images", data_dir=data_dir)
  np.testing.assert_array_equal(few.x_train, full.x_train[:4])
  half = load_tfds("mia_tiny_images", data_dir=data_dir, split_train="train[:50%]")
  assert half.x_train.shape[0] == N_TRAIN // 2
  raw = load_tfds("mia_tiny_images", data_dir=data_dir, scale_images=False)
  np.testing.assert_array_equal(raw.x_train, full.x_train * 255)


def test_load_tfds_tensor_features_and_carved_test_split(data_dir):
  ds = load_tfds("mia_tiny_vectors", data_dir=data_dir, split_test=None, test_fraction=0.25,
                 seed=3, image_key="features", label_key="y")
  assert ds.x_train.shape == (15, 6) and ds.x_test.shape == (5, 6)
  assert ds.num_classes == 4  # no ClassLabel: max label + 1
  x = np.concatenate([ds.x_train, ds.x_test])
  y = np.concatenate([ds.y_train, ds.y_test])
  ids = x[:, 0].astype(int)
  np.testing.assert_array_equal(np.sort(ids), np.arange(20))
  np.testing.assert_array_equal(y, ids % 4)


def test_load_tfds_errors(data_dir, tmp_path):
  with pytest.raises(MiaInputError, match="name.*mia_tiny_images.*prepared"):
    load_tfds("mia_tiny_images", data_dir=tmp_path)
  with pytest.raises(MiaInputError, match="split_test.*validation.*available splits"):
    load_tfds("mia_tiny_images", data_dir=data_dir, split_test="validation")
  with pytest.raises(MiaInputError, match="image_key.*'img'"):
    load_tfds("mia_tiny_images", data_dir=data_dir, image_key="img")
  with pytest.raises(MiaInputError, match="max_examples"):
    load_tfds("mia_tiny_images", data_dir=data_dir, max_examples=0)
  with pytest.raises(MiaInputError, match="options.*bogus"):
    load_dataset("tfds:mia_tiny_images", data_dir=data_dir, bogus=True)


def test_registered_but_unprepared_dataset_is_a_clear_error(tmp_path):
  # "mnist" is registered in tfds; nothing is prepared in an empty data_dir.
  with pytest.raises(MiaInputError, match=r"name.*'mnist' is not prepared.*download=True"):
    load_dataset("mnist", data_dir=tmp_path)
  with pytest.raises(MiaInputError, match=r"not prepared"):
    load_tfds("tfds:mnist", data_dir=tmp_path, download=False)


def test_tfrecord_prepared_dataset_is_a_clear_error(data_dir, tmp_path):
  # A copy whose dataset_info.json says tfrecord: readable only with TensorFlow.
  import shutil
  src = data_dir / "mia_tiny_vectors"
  dst = tmp_path / "mia_tiny_vectors"
  shutil.copytree(src, dst)
  info_path = dst / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(MiaInputError, match="array_record"):
    load_tfds("mia_tiny_vectors", data_dir=tmp_path, image_key="features", label_key="y")
