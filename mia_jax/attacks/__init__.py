"""Membership-inference attacks. Orientation everywhere: higher score = more likely member.

Modules: :mod:`~mia_jax.attacks.threshold` (loss, confidence, entropy, modified entropy,
0-1 rule), :mod:`~mia_jax.attacks.stolen_memories` (white-box, Leino & Fredrikson 2020),
:mod:`~mia_jax.attacks.meta`, :mod:`~mia_jax.attacks.lira` (Carlini et al. 2022),
:mod:`~mia_jax.attacks.rmia` (Zarifzadeh et al. 2024), :mod:`~mia_jax.attacks.shokri`
(Shokri et al. 2017).
"""

from mia_jax.attacks import lira, meta, rmia, shokri, stolen_memories, threshold
from mia_jax.attacks.lira import leave_one_out, lira_offline, lira_online
from mia_jax.attacks.rmia import rmia_scores
from mia_jax.attacks.shokri import fit_shokri, score_shokri
from mia_jax.attacks.threshold import THRESHOLD_ATTACKS, threshold_scores

__all__ = [
    "THRESHOLD_ATTACKS", "fit_shokri", "leave_one_out", "lira", "lira_offline", "lira_online",
    "meta", "rmia", "rmia_scores", "score_shokri", "shokri", "stolen_memories", "threshold",
    "threshold_scores",
]
