"""Threshold attacks on one black-box signal (higher score = more likely member).

* ``loss`` -- Yeom et al. (CSF 2018): members have lower loss; score = -loss.
* ``confidence`` -- true-class probability p_y.
* ``entropy`` -- members get sharper predictions; score = -entropy.
* ``modified_entropy`` -- Song & Mittal (USENIX Security 2021); score = -Mentr.
* ``correctness`` -- the 0-1 rule "correctly classified => member" (Yeom et al.);
  on balanced member/non-member sets its accuracy is (1 + train_acc - test_acc) / 2.

Each takes the dict returned by :func:`mia_jax.signals.blackbox_signals` (any leading
axes) and returns scores of the same shape. Thresholds are chosen separately with
:func:`mia_jax.metrics.calibrate_threshold` or Yeom's rule (:func:`yeom_threshold`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from mia_jax._validation import MiaInputError

Signals = Mapping[str, np.ndarray]


def _need(signals: Signals, key: str) -> np.ndarray:
  if key not in signals:
    raise MiaInputError(f"signals: missing {key!r}; got keys {sorted(signals)}")
  return np.asarray(signals[key], np.float64)


def loss_score(signals: Signals) -> np.ndarray:
  return -_need(signals, "loss")


def confidence_score(signals: Signals) -> np.ndarray:
  return _need(signals, "confidence")


def entropy_score(signals: Signals) -> np.ndarray:
  return -_need(signals, "entropy")


def modified_entropy_score(signals: Signals) -> np.ndarray:
  return -_need(signals, "modified_entropy")


def correctness_score(signals: Signals) -> np.ndarray:
  return _need(signals, "correctness")


THRESHOLD_ATTACKS: dict[str, Callable[[Signals], np.ndarray]] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
    "correctness": correctness_score,
}


def yeom_threshold(train_losses) -> float:
  """Yeom et al.'s threshold on ``loss_score``: members are predicted where the loss is
  at most the average training loss, i.e. ``loss_score >= -mean(train_losses)``."""
  losses = np.asarray(train_losses, np.float64)
  if losses.ndim != 1 or losses.size == 0 or not np.all(np.isfinite(losses)):
    raise MiaInputError("train_losses: expected a non-empty 1-D array of finite losses")
  return -float(np.mean(losses))


def threshold_scores(signals: Signals, names=None) -> dict[str, np.ndarray]:
  """Scores of the named threshold attacks (default: all)."""
  names = list(THRESHOLD_ATTACKS) if names is None else list(names)
  unknown = [n for n in names if n not in THRESHOLD_ATTACKS]
  if unknown:
    raise MiaInputError(f"attacks: unknown threshold attack(s) {unknown}; "
                        f"expected some of {sorted(THRESHOLD_ATTACKS)}")
  return {n: THRESHOLD_ATTACKS[n](signals) for n in names}


# -- the registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score -------------

import dataclasses  # noqa: E402

from mia_jax.attacks.base import Attack  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ThresholdConfig:
  """A threshold attack has nothing to configure or fit: its score is a signal."""


def fit(config: ThresholdConfig, side=None) -> dict:
  """Nothing to fit (the threshold is chosen on the scores, by the metrics)."""
  del config, side
  return {}


def _scorer(signal: str, sign: float):
  def score(state, signals):
    import jax.numpy as jnp
    del state
    return sign * jnp.asarray(signals[signal], jnp.float32)
  return score


def _threshold(name: str, signal: str, sign: float, summary: str, paper: str = "") -> Attack:
  return Attack(name=name, family="threshold", summary=summary, paper=paper, needs=(signal,),
                configure=lambda options: ThresholdConfig(), fit=fit,
                score=_scorer(signal, sign))


ATTACKS = (
    _threshold("loss", "loss", -1.0, "-loss(x, y): members have lower loss",
               "Yeom et al., CSF 2018"),
    _threshold("confidence", "confidence", 1.0, "p_y, the true-class probability"),
    _threshold("entropy", "entropy", -1.0, "-H(p): members get sharper predictions"),
    _threshold("modified_entropy", "modified_entropy", -1.0,
               "-Mentr(p, y), entropy that accounts for the label",
               "Song & Mittal, USENIX Security 2021"),
    _threshold("correctness", "correctness", 1.0, "1[argmax p = y]: correctly classified => member",
               "Yeom et al., CSF 2018"),
)
