"""Hostile inputs: each used to give a silent wrong result or a raw traceback.

Every test is tiny (a few seconds at most): errors are raised on the host before any
compute, and the one training test trains a 2-layer MLP for one epoch.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mia_jax import metrics, whitebox
from mia_jax._validation import MiaInputError, check_indices, check_keep_shape
from mia_jax.attacks import lira
from mia_jax.attacks.stolen_memories import StolenMemoriesConfig
from mia_jax.data.loaders import load_npz
from mia_jax.models import make_model, stack_variables
from mia_jax.signals import blackbox_signals, loss, signals_from_logits, signals_from_probs
from mia_jax.train import TrainConfig, jax_key, train_model, train_models

MODEL = make_model("mlp", input_shape=(3,), num_classes=2, widths=(4,))
ONE_EPOCH = TrainConfig(epochs=1, batch_size=4)


def _xy(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, 3)).astype(np.float32), np.arange(n) % 2


def _variables(model, seed=0):
  """Variables built in NumPy from the abstract init (no compile)."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(model.init, jax.random.key(0))
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


# -- 1. training indices --------------------------------------------------------------------

def test_bool_indices_are_a_row_mask():
  mask = np.array([False, True, False, True, True, False])
  np.testing.assert_array_equal(check_indices(mask, 6), [1, 3, 4])
  x, y = _xy()
  got = train_model(MODEL, x, y, config=ONE_EPOCH, indices=mask)
  want = train_model(MODEL, x, y, config=ONE_EPOCH, indices=np.flatnonzero(mask))
  for a, b in zip(jax.tree.leaves(got.variables), jax.tree.leaves(want.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_indices_are_refused():
  x, y = _xy()
  with pytest.raises(MiaInputError, match=r"indices: .*boolean mask .*length 6.*got length 4"):
    train_model(MODEL, x, y, indices=np.ones(4, bool))
  with pytest.raises(MiaInputError, match="indices: .*selects no rows"):
    check_indices(np.zeros(6, bool), 6)
  with pytest.raises(MiaInputError, match="indices: .*integer.*float64"):
    train_model(MODEL, x, y, indices=[0.5, 1.7])
  with pytest.raises(MiaInputError, match="indices: .*integer-valued floats"):
    check_indices(np.array([0.0, 2.0]), 6)
  with pytest.raises(MiaInputError, match=r"indices: .*duplicate.*\[1\]"):
    check_indices([1, 1, 2], 6)
  with pytest.raises(MiaInputError, match="indices: .*non-empty"):
    check_indices([], 6)
  with pytest.raises(MiaInputError, match=r"indices: .*\[0, 6\)"):
    check_indices([0, 6], 6)


def test_keep_matrices_are_not_fooled():
  x, y = _xy()
  with pytest.raises(MiaInputError, match="keep: .*boolean"):
    train_models(MODEL, x, y, np.ones((2, 6), np.int64))
  with pytest.raises(MiaInputError, match="keep: .*0/1"):
    check_keep_shape(np.full((2, 6), 0.5), 2, 6, "test")
  np.testing.assert_array_equal(check_keep_shape(np.eye(2, 6), 2, 6, "test"), np.eye(2, 6) > 0)


# -- 2. labels of a loaded dataset ----------------------------------------------------------

def _npz(tmp_path, y, **kw):
  path = tmp_path / "d.npz"
  np.savez(path, x=np.zeros((len(y), 3), np.float32), y=np.asarray(y), **kw)
  return path


def test_npz_single_class_is_refused(tmp_path):
  with pytest.raises(MiaInputError, match="y: .*only 1 class.*at least 2"):
    load_npz(_npz(tmp_path, np.zeros(10, int)))
  with pytest.raises(MiaInputError, match="y_train: .*only 1 class"):  # even with K given
    load_npz(_npz(tmp_path, np.zeros(10, int)), num_classes=3)


def test_npz_gapped_labels_are_refused(tmp_path):
  y = np.r_[np.arange(10), np.arange(10), 1000]
  with pytest.raises(MiaInputError, match=r"y: .*990 of the 1001 classes in \[0, 1000\].*"
                                          r"10, 11, 12.*remap"):
    load_npz(_npz(tmp_path, y))


def test_npz_one_based_labels_are_refused(tmp_path):
  with pytest.raises(MiaInputError, match="y: .*1-based"):
    load_npz(_npz(tmp_path, np.r_[np.arange(1, 11), np.arange(1, 11)]))


# -- 3. complex inputs ----------------------------------------------------------------------

def test_complex_inputs_are_refused(tmp_path):
  x, y = _xy()
  with pytest.raises(MiaInputError, match="x: .*complex"):
    train_model(MODEL, x.astype(np.complex64) + 1j, y)
  with pytest.raises(MiaInputError, match="y: .*complex"):
    MODEL.check_inputs(x, y.astype(np.complex64))
  path = tmp_path / "c.npz"
  np.savez(path, x=np.ones((6, 3), np.complex64) * 1j, y=y)
  with pytest.raises(MiaInputError, match="x .*complex"):
    load_npz(path)


# -- 4. LiRA with constant references -------------------------------------------------------

def test_lira_constant_references_give_finite_ordered_scores():
  keep = np.array([[True, False], [True, False], [False, True], [False, True]])
  ref = np.where(keep, 1.0, 0.0)  # IN value 1, OUT value 0, no spread at all
  at_in = lira.lira_online(np.array([1.0, 1.0]), ref, keep)
  at_out = lira.lira_online(np.array([0.0, 0.0]), ref, keep)
  assert np.all(np.isfinite(at_in)) and np.all(np.isfinite(at_out))
  assert np.all(at_in > at_out)
  off_in = lira.lira_offline(np.array([1.0, 1.0]), ref, keep)
  off_out = lira.lira_offline(np.array([0.0, 0.0]), ref, keep)
  assert np.all(np.isfinite(off_in)) and np.all(off_in > off_out)


# -- 5. exact ranks of integer scores -------------------------------------------------------

def test_metrics_rank_large_integers_exactly():
  s = np.arange(10, dtype=np.int64) + 2**62
  m = np.arange(10) >= 5
  assert metrics.roc_auc(s, m) == 1.0
  assert metrics.tpr_at_fpr(s, m, 0.0) == 1.0
  assert metrics.advantage(s, m) == 1.0
  fpr, tpr, thr = metrics.roc_curve(s, m)
  assert len(thr) == 11 and thr[0] == np.inf
  assert metrics.summarize(s, m)["auc"] == 1.0
  u = np.arange(10, dtype=np.uint64) + np.uint64(2**63)
  assert metrics.roc_auc(u, m) == 1.0


# -- 6. seeds, empty data, variables, path_steps --------------------------------------------

def test_bad_seed_and_empty_x_are_refused():
  x, y = _xy()
  for seed in ("abc", -1, 2**32, 1.5, True, (), (0, "a")):
    with pytest.raises(MiaInputError, match="seed: .*2\\*\\*32"):
      train_model(MODEL, x, y, seed=seed)
  with pytest.raises(MiaInputError, match="seed"):
    train_models(MODEL, x, y, np.ones((2, 6), bool), seed="abc")
  with pytest.raises(MiaInputError, match="seed"):
    jax_key("abc")
  with pytest.raises(MiaInputError, match="x: .*at least one"):
    train_model(MODEL, x[:0], y[:0])
  with pytest.raises(MiaInputError, match="x: .*at least one"):
    train_models(MODEL, x[:0], y[:0], np.ones((2, 0), bool))


def test_jacobian_rows_checks_variables_against_the_model():
  x, y = _xy(4)
  v = _variables(MODEL)
  with pytest.raises(MiaInputError, match=r"variables: .*\['params'\]\['dense_0'\].*\['bias'\]"
                                          r".*expected shape \(M, 4\), got \(4,\)"):
    whitebox.jacobian_rows(MODEL, v, x, y, layers=["input"], stacked=True)
  other = _variables(make_model("mlp", input_shape=(3,), num_classes=2, widths=(5,)))
  with pytest.raises(MiaInputError, match=r"variables: .*\['params'\]\['dense_0'\].*\['bias'\]"
                                          r".*expected shape \(4,\), got \(5,\)"):
    whitebox.jacobian_rows(MODEL, other, x, y, layers=["input"])
  deeper = _variables(make_model("mlp", input_shape=(3,), num_classes=2, widths=(4, 4)))
  with pytest.raises(MiaInputError, match="variables: .*dense_1"):
    whitebox.jacobian_rows(MODEL, deeper, x, y, layers=["input"])
  with pytest.raises(MiaInputError, match="variables: .*expected"):
    blackbox_signals(MODEL, stack_variables([other, other]), x, y, stacked=True)
  with pytest.raises(MiaInputError, match="variables: .*expected"):
    whitebox.gradient_norms(MODEL, v, x, y, stacked=True)


def test_path_steps_must_be_a_whole_number():
  x, y = _xy(4)
  v = _variables(MODEL)
  with pytest.raises(MiaInputError, match="path_steps: .*1.5"):
    whitebox.jacobian_rows(MODEL, v, x, y, layers=["input"], path_steps=1.5)
  for bad in (1.5, -1, True, "2"):
    with pytest.raises(MiaInputError, match="path_steps"):
      StolenMemoriesConfig(path_steps=bad)
  for bad in (0, 1.0):
    with pytest.raises(MiaInputError, match="num_proxies"):
      StolenMemoriesConfig(num_proxies=bad)


# -- 7. labels of the signal functions ------------------------------------------------------

def test_signal_labels_out_of_range_are_refused():
  z = np.zeros((3, 10), np.float32)
  for bad in ([0, 12, 1], [0, -1, 1]):
    with pytest.raises(MiaInputError, match=r"y: .*\[0, 10\)"):
      signals_from_logits(z, np.array(bad))
    with pytest.raises(MiaInputError, match=r"y: .*\[0, 10\)"):
      loss(z, np.array(bad))
    with pytest.raises(MiaInputError, match=r"y: .*\[0, 10\)"):
      signals_from_probs(np.full((3, 10), 0.1, np.float32), np.array(bad))
  with pytest.raises(MiaInputError, match="y: .*integer"):
    signals_from_logits(z, np.array([0.5, 1.0, 2.0]))
  got = signals_from_logits(z, np.array([0, 9, 1]))  # valid labels still work
  assert np.all(np.isfinite(np.asarray(got["loss"])))
