"""The gradient-norm attack: members have smaller per-example loss gradients.

The white-box feature of Nasr, Shokri & Houmansadr (S&P 2019) used as a threshold attack:
score = ``-||d loss(x, y) / d theta||_2`` over every parameter (and, as sub-scores, over each
stage's parameters). The norms come from :func:`mia_jax.whitebox.gradient_norms` (one
compiled pass, vmapped over stacked checkpoints); the score is pure.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mia_jax.attacks.base import Attack


@dataclasses.dataclass(frozen=True)
class GradientNormConfig:
  """Nothing to configure: the score is the negated norm."""


def fit(config: GradientNormConfig, side=None) -> dict:
  del config, side
  return {}


def score(state, signals):
  del state
  return -jnp.asarray(signals["gradient_norms"]["total"], jnp.float32)


def details(config, state, signals):
  subs = {stage: -jnp.asarray(v, jnp.float32)
          for stage, v in signals["gradient_norms"].items() if stage != "total"}
  return subs, {}


ATTACK = Attack(
    name="gradient-norm", family="whitebox",
    summary="minus the L2 norm of the loss gradient: members have smaller gradients",
    paper="Nasr et al., S&P 2019 (feature)", needs=("gradient_norms",),
    configure=lambda options: GradientNormConfig(), fit=fit, score=score, details=details)
ATTACKS = (ATTACK,)
