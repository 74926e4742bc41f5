"""Runs registered attacks on one target or on C stacked checkpoints (the audit and
``mia-jax attack`` share it).

For each attack: ``configure`` from the run's options, ``fit`` on the attacker side, then
``score`` on the target signals it declares. On a stack of C checkpoints a traceable
attack's scores of every checkpoint come from one ``jax.jit(jax.vmap(score))`` call;
an attack whose ``fit`` reads the target (``fit_per_target``) is fit per checkpoint; one
whose score is not traceable (Stolen Memories, Nasr et al.: their white-box passes have
their own compiled, microbatched loops) scores all checkpoints in one such pass
(``score_stack``, ``score_states``), or else per checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from mia_jax.attacks.base import Attack, AttackerSide, option
from mia_jax.streams import stage_seed

REPORT_FPRS = (0.1, 0.01, 0.001, 0.0001, 0.0)
"""The false-positive rates every result reports TPR at (0.0: the lowest achievable)."""


def decision_metrics(scores: np.ndarray, is_member: np.ndarray, threshold: float
                     ) -> dict[str, Any]:
  """Accuracy, precision and recall of the rule ``score >= threshold`` (precision None
  when nothing is predicted a member, as :func:`mia_jax.metrics.precision_recall_at`)."""
  pred = scores >= threshold
  tp = int(np.sum(pred & is_member))
  return {"threshold": float(threshold), "accuracy": float(np.mean(pred == is_member)),
          "precision": float(tp / pred.sum()) if pred.any() else None,
          "recall": float(tp / is_member.sum()), "predicted_members": int(pred.sum())}


def calibrated(scores, is_member, threshold: float, calibration: dict) -> dict:
  """A threshold chosen on attacker-side data, applied to the evaluation examples:
  achieved precision, recall, FPR and the precision at other member priors."""
  from mia_jax.metrics import precision_recall_at, prior_precision
  precision, recall = precision_recall_at(scores, is_member, threshold)
  fpr = float(np.mean(scores[~is_member] >= threshold))
  return {**calibration, "threshold": threshold,
          "precision": None if precision is None else float(precision),
          "recall": float(recall), "fpr": fpr,
          "prior_precision": {str(p): float(prior_precision(recall, fpr, p))
                              for p in (0.5, 0.1, 0.01)}}


def bootstrap_intervals(scores: np.ndarray, is_member: np.ndarray, *, resamples: int,
                        confidence: float, seed: int) -> dict[str, Any]:
  """Percentile-bootstrap confidence intervals of the AUC and of the TPR at each of
  :data:`REPORT_FPRS` (one stratified resampling loop for all of them,
  :func:`mia_jax.metrics.bootstrap_ci`): ``{"confidence", "resamples", "auc": [lo, hi],
  "tpr_at_fpr": {fpr: [lo, hi]}}``."""
  from mia_jax.metrics import bootstrap_ci, roc_auc, tpr_at_fpr
  fprs = list(REPORT_FPRS)

  def metrics(s, m):
    return np.r_[roc_auc(s, m), np.atleast_1d(tpr_at_fpr(s, m, fprs))]

  _, lo, hi = bootstrap_ci(metrics, scores, is_member, num_resamples=resamples,
                           confidence=confidence, seed=seed)
  return {"confidence": float(confidence), "resamples": int(resamples),
          "auc": [float(lo[0]), float(hi[0])],
          "tpr_at_fpr": {repr(float(f)): [float(a), float(b)]
                         for f, a, b in zip(fprs, lo[1:], hi[1:])}}


def entry(scores: np.ndarray, subs: Mapping[str, np.ndarray], fields: Mapping[str, Any],
          is_member: np.ndarray, ci: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """One attack's result entry: its metrics, its sub-scores' metrics (``layers``) and its
  fields (a calibrated threshold becomes ``calibrated``; a decision rule ``decision``);
  with ``ci`` (``resamples``, ``confidence``, ``seed``) the bootstrap intervals of its
  AUC and TPRs (``ci``)."""
  from mia_jax.metrics import summarize
  out = summarize(scores, is_member, REPORT_FPRS)
  if ci:
    out["ci"] = bootstrap_intervals(scores, is_member, **ci)
  if subs:
    out["layers"] = {k: summarize(v, is_member, REPORT_FPRS) for k, v in subs.items()}
  fields = dict(fields)
  if "threshold" in fields:
    out["calibrated"] = calibrated(scores, is_member, fields.pop("threshold"),
                                   fields.pop("calibration", {}))
  if "decision_threshold" in fields:
    out["decision"] = decision_metrics(scores, is_member, fields.pop("decision_threshold"))
  out.update(fields)
  return out


def _side_fields(attack: Attack, side: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name in attack.attacker:
    out.update(side[name].get("fields", {}))
  return out


def score_one(attack: Attack, options: Any, side: AttackerSide, signals: Mapping[str, Any]
              ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
  """``(scores float64[N], sub-scores, fields)`` of one attack on one target."""
  config = attack.configure(options)
  state = attack.fit(config, side)
  scores, subs, fields = attack.evaluate(config, state, signals)
  return (np.asarray(scores, np.float64), {k: np.asarray(v, np.float64) for k, v in subs.items()},
          {**_side_fields(attack, side), **fields})


def run_one(attack: Attack, options: Any, side: AttackerSide, signals: Mapping[str, Any],
            is_member: np.ndarray, evaluated: slice | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
  """``(scores float64[N], sub-scores, result entry)`` of one attack on one target; the
  entry's metrics are on the rows ``evaluated`` (default all; an audit's canaries are
  scored with the rest but measured apart)."""
  scores, subs, fields = score_one(attack, options, side, signals)
  rows = slice(None) if evaluated is None else evaluated
  resamples = int(option(options, "bootstrap_resamples", 0) or 0)
  ci = (dict(resamples=resamples, confidence=float(option(options, "confidence", 0.95)),
             seed=stage_seed(int(option(options, "seed", 0)), "bootstrap",
                             option(options, "seed_streams", "named"))) if resamples else None)
  return scores, subs, entry(scores[rows], {k: v[rows] for k, v in subs.items()}, fields,
                             np.asarray(is_member)[rows], ci)


def _needed(attack: Attack, signals: Mapping[str, Any]) -> dict[str, Any]:
  return {k: signals[k] for k in attack.needs}


def score_stacked(attack: Attack, config: Any, state: Any, signals: Mapping[str, Any],
                  *, state_stacked: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Scores (and sub-scores) ``[C, N]`` of C checkpoints in one compiled, vmapped call:
  ``signals`` carry a leading C axis; ``state`` is shared or (``state_stacked``) has one."""
  def one(st, sig):
    subs = attack.details(config, st, sig)[0] if attack.details else {}
    return attack.score(st, sig), subs
  fn = jax.jit(jax.vmap(one, in_axes=(0 if state_stacked else None, 0)))
  s, subs = fn(state, _needed(attack, signals))
  return np.asarray(s, np.float64), {k: np.asarray(v, np.float64) for k, v in subs.items()}


def run_stacked(attack: Attack, options: Any, side_of: Callable[[int], AttackerSide],
                signals: Mapping[str, Any], num_checkpoints: int, *,
                signals_of: Callable[[int], Mapping[str, Any]] | None = None,
                per_checkpoint: frozenset[str] | set[str] = frozenset(),
                log: Callable[[str], None] = lambda s: None
                ) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
  """``(scores [C, N], sub-scores [C, N], per-checkpoint fields)`` of one attack.

  Args:
    side_of: checkpoint c's attacker side (``side_of(c)["whitebox"]["target"]`` is
      checkpoint c).
    signals: the target signals with a leading C axis (traceable attacks).
    signals_of: checkpoint c's signals (attacks whose score is not traceable).
    per_checkpoint: attacker-side inputs that differ by checkpoint (reference models
      saved at each checkpoint's epoch): an attack reading one is fit per checkpoint and
      its states stacked, then scored in the same single vmapped call.
  """
  config = attack.configure(options)
  c_count = num_checkpoints
  per_target = attack.fit_per_target or bool(set(attack.attacker) & set(per_checkpoint))
  if attack.traceable:
    if per_target:
      states = [attack.fit(config, side_of(c)) for c in range(c_count)]
      state = jax.tree.map(lambda *a: jax.numpy.stack(a), *states)
      first_state = states[0]
    else:
      state = first_state = attack.fit(config, side_of(0))
    scores, subs = score_stacked(attack, config, state, signals, state_stacked=per_target)
    first = jax.tree.map(lambda a: a[0], _needed(attack, signals))
    fields = attack.details(config, first_state, first)[1] if attack.details else {}
    common = {**_side_fields(attack, side_of(0)), **fields}
    return scores, subs, [dict(common) for _ in range(c_count)]
  # Not traceable: Nasr et al. scores every checkpoint in one pass of its own
  # (score_stack); Stolen Memories, whose fit reads each target's own layers (proxies
  # share its frozen lower part), is fit per checkpoint and scored in one pass
  # (score_states).
  if per_target and attack.score_states is not None:
    states = []
    for c in range(c_count):
      log(f"checkpoint {c + 1}/{c_count}: fitting {attack.name}")
      states.append(attack.fit(config, side_of(c)))
    scores, subs, fields = attack.score_states(config, states, signals)
    return (np.asarray(scores, np.float64), {k: np.asarray(v, np.float64) for k, v in subs.items()},
            [{**_side_fields(attack, side_of(c)), **f} for c, f in enumerate(fields)])
  state = None if per_target else attack.fit(config, side_of(0))
  if attack.score_stack is not None and not per_target:
    scores = np.asarray(attack.score_stack(state, signals), np.float64)
    fields = attack.details(config, state, {})[1] if attack.details else {}
    common = {**_side_fields(attack, side_of(0)), **fields}
    return scores, {}, [dict(common) for _ in range(c_count)]
  outs = []
  for c in range(c_count):
    log(f"checkpoint {c + 1}/{c_count}: {attack.name}")
    st = attack.fit(config, side_of(c)) if per_target else state
    s, subs, fields = attack.evaluate(config, st, signals_of(c))
    outs.append((np.asarray(s, np.float64), {k: np.asarray(v, np.float64)
                                             for k, v in subs.items()},
                 {**_side_fields(attack, side_of(c)), **fields}))
  scores = np.stack([o[0] for o in outs])
  subs = {k: np.stack([o[1][k] for o in outs]) for k in outs[0][1]}
  return scores, subs, [o[2] for o in outs]


# -- attacker-side and target inputs shared by the audit, attack_run and attack_model -------------

def reference_signals(model, refs, x, y, candidates: np.ndarray, population: np.ndarray, *,
                      microbatch_size: int, defenses=()) -> dict[str, np.ndarray]:
  """What LiRA and RMIA read of M stacked reference models: ``scaled_logit`` and
  ``confidence`` ``[M, n]`` on the n candidates and ``confidence_z`` ``[M, Z]`` on RMIA's
  population, from one stacked pass that returns only those two signals. When candidates
  and population are every example, ``x`` is read in place and the outputs reordered
  (no copy of ``x[pool]``)."""
  from mia_jax.signals import blackbox_signals
  pool = np.concatenate([candidates, population])
  whole = pool.size == x.shape[0] and np.array_equal(np.sort(pool), np.arange(x.shape[0]))
  sig = blackbox_signals(model, refs, x if whole else x[pool], y if whole else y[pool],
                         stacked=True, microbatch_size=microbatch_size, defenses=defenses,
                         names=("scaled_logit", "confidence"))
  if whole:
    sig = {k: v[:, pool] for k, v in sig.items()}
  n = candidates.size
  return {"scaled_logit": sig["scaled_logit"][:, :n], "confidence": sig["confidence"][:, :n],
          "confidence_z": sig["confidence"][:, n:]}


def whitebox_inputs(model, target, x, y, auxiliary: np.ndarray, *, target_train_size: int,
                    train_config, seed: int, num_eval: int, log, progress=None,
                    work_dir: str | None = None, train_shadow=None) -> dict[str, Any]:
  """The ``"whitebox"`` attacker side (see :class:`mia_jax.attacks.base.AttackerSide`)."""
  return {"model": model, "target": target, "aux_x": x[auxiliary], "aux_y": y[auxiliary],
          "target_train_size": int(target_train_size), "train_config": train_config,
          "seed": seed, "progress": progress, "log": log, "work_dir": work_dir,
          "num_eval": int(num_eval), "train_shadow": train_shadow}


def checkpoint_signals(model, stacked, sig: Mapping[str, np.ndarray], x, y,
                       evaluation: np.ndarray, population: np.ndarray, *,
                       microbatch_size: int, defenses=()):
  """The target signals of C stacked checkpoints (``[C, N]`` each, computed on first use)
  on the evaluation examples, given their black-box signals ``sig`` (``[C, N]``)."""
  from mia_jax.attacks.base import Lazy
  from mia_jax.attacks.shokri import predict_probs
  from mia_jax.signals import blackbox_signals
  from mia_jax.whitebox import gradient_norms
  xe, ye = x[evaluation], y[evaluation]
  c = np.shape(sig["loss"])[0]
  return Lazy({
      **{k: (lambda k=k: sig[k]) for k in ("loss", "confidence", "entropy", "modified_entropy",
                                           "correctness", "scaled_logit")},
      "confidence_z": lambda: blackbox_signals(
          model, stacked, x[population], y[population], stacked=True,
          microbatch_size=microbatch_size, defenses=defenses,
          names=("confidence",))["confidence"],
      "probs": lambda: predict_probs(model, stacked, xe, stacked=True, defenses=defenses,
                                     microbatch_size=microbatch_size),
      "labels": lambda: np.broadcast_to(ye, (c, ye.shape[0])),
      "models": lambda: (model, stacked, xe, ye),
      "gradient_norms": lambda: gradient_norms(model, stacked, xe, ye, stacked=True,
                                               microbatch_size=min(microbatch_size, 256)),
  }, "checkpoint signals")
