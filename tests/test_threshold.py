"""Tests for mia_jax.attacks.threshold: orientation, Yeom's identities, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mia_jax import metrics
from mia_jax._validation import MiaInputError
from mia_jax.attacks.threshold import (THRESHOLD_ATTACKS, confidence_score, correctness_score,
                                       entropy_score, loss_score, modified_entropy_score,
                                       threshold_scores, yeom_threshold)
from mia_jax.data import gaussian_nb
from mia_jax.models import make_model
from mia_jax.signals import blackbox_signals
from mia_jax.train import TrainConfig, train_model


def test_orientation_on_synthetic_signals():
  """Higher score = more likely member, for every attack."""
  is_member = np.array([True, True, False, False])
  sig = {
      "loss": np.array([0.1, 0.2, 1.5, 2.0]),
      "confidence": np.array([0.9, 0.8, 0.2, 0.1]),
      "entropy": np.array([0.05, 0.1, 0.9, 1.0]),
      "modified_entropy": np.array([0.2, 0.3, 2.0, 3.0]),
      "correctness": np.array([1.0, 1.0, 0.0, 0.0]),
  }
  scores = threshold_scores(sig)
  assert set(scores) == set(THRESHOLD_ATTACKS)
  for name, s in scores.items():
    assert s.dtype == np.float64
    assert np.all(s[is_member].min() > s[~is_member].max()), name
    assert metrics.roc_auc(s, is_member) == 1.0, name
  np.testing.assert_array_equal(loss_score(sig), -sig["loss"])
  np.testing.assert_array_equal(confidence_score(sig), sig["confidence"])
  np.testing.assert_array_equal(entropy_score(sig), -sig["entropy"])
  np.testing.assert_array_equal(modified_entropy_score(sig), -sig["modified_entropy"])
  np.testing.assert_array_equal(correctness_score(sig), sig["correctness"])


def test_scores_keep_leading_axes():
  sig = {"loss": np.arange(6.0).reshape(2, 3)}
  assert threshold_scores(sig, ["loss"])["loss"].shape == (2, 3)


@pytest.fixture(scope="module")
def trained():
  """An MLP trained on the first half of a noisy synthetic dataset (it overfits)."""
  ds, _ = gaussian_nb(num_classes=3, num_features=20, num_train=120, num_test=10,
                      separation=2.5, sigma=1.0, seed=0)
  x, y = ds.x_train, ds.y_train
  members = np.arange(60)
  nonmembers = np.arange(60, 120)
  model = make_model("mlp", input_shape=(20,), num_classes=3, widths=(32,))
  # Initial weights drawn in NumPy (jax.random initializers are slow to compile on CPU).
  rng = np.random.default_rng(0)
  init = jax.tree_util.tree_map_with_path(
      lambda p, s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(s.dtype)
      if "kernel" in jax.tree_util.keystr(p) else np.zeros(s.shape, s.dtype),
      jax.eval_shape(model.init, jax.random.key(0)))
  res = train_model(model, x, y, indices=members, seed=0, init_variables=init,
                    config=TrainConfig(optimizer="adam", learning_rate=0.02, epochs=25,
                                       batch_size=16))
  idx = np.concatenate([members, nonmembers])
  is_member = np.r_[np.ones(60, bool), np.zeros(60, bool)]
  sig = blackbox_signals(model, res.variables, x[idx], y[idx], microbatch_size=64)
  # Accuracies from the logits, independently of the "correctness" signal.
  pred = np.argmax(sig["logits"], -1)
  train_acc = float(np.mean(pred[:60] == y[members]))
  test_acc = float(np.mean(pred[60:] == y[nonmembers]))
  return sig, is_member, train_acc, test_acc, res


def test_trained_model_overfits(trained):
  sig, is_member, train_acc, test_acc, _ = trained
  assert train_acc == 1.0
  assert 0.34 < test_acc < 1.0  # better than chance, worse than on the training set
  # Orientation on a real model: members have lower loss, so loss_score ranks them higher.
  assert np.mean(sig["loss"][is_member]) < np.mean(sig["loss"][~is_member])
  for name, s in threshold_scores(sig).items():
    assert metrics.roc_auc(s, is_member) > 0.55, name


def test_correctness_attack_accuracy_identity(trained):
  """Yeom et al.: on balanced sets, the 0-1 rule "member iff correctly classified" has
  accuracy exactly (1 + train_acc - test_acc) / 2."""
  sig, is_member, train_acc, test_acc, _ = trained
  scores = correctness_score(sig)
  expected = (1.0 + train_acc - test_acc) / 2.0
  assert expected > 0.5
  bal = metrics.balanced_accuracy(scores, is_member, threshold=0.5)
  assert bal == pytest.approx(expected, abs=1e-12)
  direct = np.mean((scores >= 0.5) == is_member)
  assert direct == pytest.approx(expected, abs=1e-12)
  # It is also the best threshold on a 0/1 score (advantage = train_acc - test_acc).
  assert metrics.advantage(scores, is_member) == pytest.approx(train_acc - test_acc, abs=1e-12)


def test_correctness_identity_known_answer():
  """Hand-made case: 8 members with 7 correct, 8 non-members with 3 correct."""
  correct_in = np.array([1, 1, 1, 1, 1, 1, 1, 0], float)
  correct_out = np.array([1, 1, 1, 0, 0, 0, 0, 0], float)
  sig = {"correctness": np.r_[correct_in, correct_out]}
  is_member = np.r_[np.ones(8, bool), np.zeros(8, bool)]
  acc = metrics.balanced_accuracy(correctness_score(sig), is_member, threshold=0.5)
  assert acc == pytest.approx((1 + 7 / 8 - 3 / 8) / 2)


def test_yeom_threshold_known_answer():
  assert yeom_threshold([1.0, 2.0, 3.0]) == -2.0
  assert yeom_threshold(np.array([0.5])) == -0.5
  # Member iff loss <= mean training loss.
  sig = {"loss": np.array([0.5, 2.0, 2.5, 4.0])}
  t = yeom_threshold([1.0, 2.0, 3.0])
  np.testing.assert_array_equal(loss_score(sig) >= t, [True, True, False, False])


def test_yeom_threshold_on_trained_model(trained):
  sig, is_member, _, _, res = trained
  # The mean loss over the members (what Yeom's attacker is assumed to know).
  t = yeom_threshold(sig["loss"][is_member])
  acc = metrics.balanced_accuracy(loss_score(sig), is_member, threshold=t)
  assert acc > 0.55
  # Last-epoch training loss is close to the eval-mode member loss (no dropout here).
  assert res.losses[-1] == pytest.approx(np.mean(sig["loss"][is_member]), rel=0.5, abs=0.05)


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, np.nan], [np.inf]])
def test_yeom_threshold_errors(bad):
  with pytest.raises(MiaInputError, match="train_losses"):
    yeom_threshold(bad)


def test_unknown_attack_name():
  with pytest.raises(MiaInputError, match=r"attacks:.*'lira'"):
    threshold_scores({"loss": np.zeros(3)}, ["loss", "lira"])


def test_missing_signal():
  with pytest.raises(MiaInputError, match="signals: missing 'confidence'"):
    threshold_scores({"loss": np.zeros(3)}, ["confidence"])
  with pytest.raises(MiaInputError, match="signals: missing 'correctness'"):
    correctness_score({"loss": np.zeros(3)})
