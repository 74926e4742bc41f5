"""Attack the user's own model: its checkpoints, its data, its membership split.

:func:`attack_model` runs the black-box threshold attacks and the white-box attacks
(gradient norms, Stolen Memories, Nasr et al.) on one model or on C checkpoints of it
(variables stacked on a leading axis), given the user's members and non-members and the
attacker's auxiliary data. The threshold attacks and the gradient norms of all C
checkpoints come from one compiled pass vmapped over the stack; Stolen Memories and Nasr
train their proxies / shadow target / attack network once per checkpoint. With ``out``
it writes a run directory (:mod:`mia_jax.rundir`): ``checkpoint_results.json`` (metrics per
checkpoint), ``scores.npz`` (per-example scores of every checkpoint, ``[C, N]`` per
attack), ``checkpoints.png`` (leakage against checkpoint), and for the last checkpoint
``results.json`` + ``report.html`` / ``report.md`` as an audit writes them.

``mia-jax attack --model pkg.module:factory --checkpoints DIR --dataset ... --members F
--nonmembers F`` is the command line for it.
"""

from __future__ import annotations

import os
import time
import types
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mia_jax._validation import MiaInputError, check_indices
from mia_jax.models.adapters import check_model



def read_indices(path: str | os.PathLike, n: int, name: str) -> np.ndarray:
  """Example indices from a ``.npy`` file or a text file of one integer per line, each in
  [0, n), no duplicates."""
  path = os.fspath(path)
  try:
    if path.endswith(".npy"):
      arr = np.load(path, allow_pickle=False)
    else:
      with open(path) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
      arr = np.array([int(ln) for ln in lines], np.int64)
  except OSError as e:
    raise MiaInputError(f"{name}: cannot read {path}: {e.strerror}") from e
  except ValueError as e:
    raise MiaInputError(f"{name}: {path} must hold one integer per line (or be a .npy of "
                        f"integers): {e}") from e
  arr = np.asarray(arr)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
    raise MiaInputError(f"{name}: {path} must hold a non-empty 1-D list of integers, got "
                        f"dtype {arr.dtype} and shape {arr.shape}")
  if arr.min() < 0 or arr.max() >= n:
    raise MiaInputError(f"{name}: indices must be in [0, {n}) (the dataset's examples, x_train "
                        f"then x_test), got [{arr.min()}, {arr.max()}]")
  if np.unique(arr).size != arr.size:
    raise MiaInputError(f"{name}: {path} holds duplicate indices")
  return arr.astype(np.int64)


def load_factory(spec: str):
  """``pkg.module:factory`` -> the adapted model the factory returns (it is called with
  no arguments)."""
  import importlib
  from mia_jax.models.adapters import is_model
  if not isinstance(spec, str) or ":" not in spec:
    raise MiaInputError(f"model: expected MODULE:FACTORY (e.g. mypkg.models:make), got {spec!r}")
  mod_name, attr = spec.split(":", 1)
  try:
    mod = importlib.import_module(mod_name)
  except ImportError as e:
    raise MiaInputError(f"model: cannot import {mod_name!r}: {e}") from e
  factory = getattr(mod, attr, None)
  if not callable(factory):
    raise MiaInputError(f"model: {mod_name!r} has no function {attr!r}")
  model = factory()
  if not is_model(model):
    raise MiaInputError(
        f"model: {spec} returned {type(model).__name__}; it must return an adapted model "
        "(mia_jax.models.from_linen / from_nnx / from_apply, or make_model)")
  return model


def warn_if_not_logits(logits: np.ndarray, log: Callable[[str], None]) -> str | None:
  """A warning when a model's outputs look like probabilities (every row non-negative and
  summing to 1) rather than logits."""
  # (log-probabilities are logits up to a constant: the signals are the same, no warning)
  z = np.asarray(logits, np.float64)
  if z.ndim != 2 or z.shape[0] == 0:
    return None
  if not (np.all(z >= 0) and np.allclose(z.sum(-1), 1.0, atol=1e-3)):
    return None
  msg = ("the model's outputs look like probabilities (rows sum to 1), not logits; "
         "every signal treats them as logits, so return logits (drop the softmax)")
  log(f"warning: {msg}")
  return msg


def attack_model(model, variables, x, y, *, members, nonmembers, auxiliary=None,
                 stacked: bool = False, names: Sequence[str] | None = None,
                 attacks: Sequence[str] | None = None, train_config=None,
                 whitebox_layers: Sequence[str] | None = None,
                 gradient_layers: Sequence[str] | None = None,
                 target_precision: float = 0.9, seed: int = 0, microbatch_size: int = 256,
                 reference_variables=None, reference_keep=None, rmia_offline_a: float = 0.3,
                 out: str | None = None, overwrite: bool = False, report: bool = True,
                 dataset_name: str = "user data", progress=None,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Membership-inference attacks on the user's model (module docstring).

  Args:
    model: an adapted model (:func:`mia_jax.models.from_linen`, ``from_nnx``, ...).
    variables: its variables; with ``stacked``, C checkpoints on a leading axis.
    x, y: the dataset (every index below points into it).
    members, nonmembers: int[...] indices of the target's training examples and of
      examples it did not see (the evaluation set).
    auxiliary: int[...] the attacker's own examples (disjoint from members), needed by
      Stolen Memories and Nasr (shadow target, proxies, attack network); default: every
      example that is neither a member nor a non-member.
    names: checkpoint names (default: ``ckpt-0``, ...).
    attacks: names from the registry (:mod:`mia_jax.attacks.registry`); default: every
      attack the inputs allow (LiRA and RMIA need reference models; the white-box ones
      enough auxiliary data; attacks that train shadow models run in ``mia-jax audit``).
    reference_variables: the user's own reference models for LiRA / RMIA, M of them
      stacked on a leading axis, each trained like the target on a subset of the data.
    reference_keep: bool[M, len(x)]: ``reference_keep[m, i]`` = example i was in reference
      model m's training set (each member and non-member should be IN for some and OUT
      for others). RMIA's population is the auxiliary data.
    rmia_offline_a: offline RMIA's a.
    train_config: the recipe for the attacker's proxies and shadow target (the target's,
      if known; default :class:`mia_jax.train.TrainConfig`).
    whitebox_layers: taps for Stolen Memories (default: every tap below the logits).
    gradient_layers: parameter groups for Nasr et al. (default: the last).
    target_precision: the white-box thresholds' calibration goal (shadow setting).
    seed: fixes everything the attacker trains.
    microbatch_size: examples per compiled chunk.
    out, overwrite, report: write a run directory (with the report).
  Returns:
    ``{"checkpoints": [{"name", "train_accuracy", "test_accuracy", "attacks": {...}}],
    "warnings": [...]}``; per-example scores are in ``scores.npz`` when ``out`` is given.
  """
  from mia_jax import pipeline
  from mia_jax.attacks import registry
  from mia_jax.audit import size_warnings
  from mia_jax.models.base import stack_variables
  from mia_jax.signals import blackbox_signals, check_stacked
  from mia_jax.train import TrainConfig
  available = {"whitebox"} | ({"reference"} if reference_variables is not None else set())
  if attacks is None:  # the default: every attack the inputs allow
    chosen = tuple(a for a in registry.all_attacks() if set(a.attacker) <= available)
  else:
    chosen = registry.select(list(attacks))
    shadow = [a.name for a in chosen if "shadow" in a.attacker]
    if shadow:
      raise MiaInputError(f"attacks: {shadow} train shadow models on the attacker's data, "
                          "which `attack` does not do; run `mia-jax audit` for them")
  attacks = tuple(a.name for a in chosen)
  x, y = check_model(model).check_inputs(x, y)
  n = x.shape[0]
  members = check_indices(members, n, "members")  # also refuses duplicates
  nonmembers = check_indices(nonmembers, n, "nonmembers")
  if np.intersect1d(members, nonmembers).size:
    raise MiaInputError("members, nonmembers: an example is in both")
  if auxiliary is None:
    aux = np.setdiff1d(np.arange(n), np.concatenate([members, nonmembers]))
  else:
    aux = check_indices(auxiliary, n, "auxiliary")
    if np.intersect1d(aux, members).size:
      raise MiaInputError("auxiliary: the attacker's data must not hold the target's members")
  needs_aux = [a.name for a in chosen if "whitebox" in a.attacker]
  warnings: list[str] = []
  if needs_aux and aux.size < 12:
    raise MiaInputError(f"auxiliary: {list(needs_aux)} need the attacker's own examples "
                        f"(at least 12), got {aux.size}; pass --auxiliary or fewer attacks")
  ref_attacks = [a.name for a in chosen if "reference" in a.attacker]
  if ref_attacks:
    if reference_variables is None or reference_keep is None:
      raise MiaInputError(f"attacks: {ref_attacks} need the user's reference models "
                          "(reference_variables, stacked) and their reference_keep matrix")
    m_ref = check_stacked(reference_variables, True, "reference_variables", model=model)
    from mia_jax._validation import check_keep_shape
    rkeep = check_keep_shape(reference_keep, m_ref, n, "reference models x dataset examples")
    if m_ref < 2:
      raise MiaInputError("reference_variables: LiRA / RMIA need at least 2 reference models")
    if aux.size == 0 and any(a.startswith("rmia") for a in ref_attacks):
      raise MiaInputError("auxiliary: RMIA's population is the auxiliary data; none is left")
  if not stacked:
    variables = stack_variables([variables])
  c = check_stacked(variables, True, model=model)
  names = list(names) if names is not None else [f"ckpt-{i}" for i in range(c)]
  if len(names) != c:
    raise MiaInputError(f"names: expected {c} names (one per checkpoint), got {len(names)}")
  tcfg = train_config or TrainConfig()
  options = types.SimpleNamespace(
      layers=whitebox_layers, gradient_layers=gradient_layers, seed=seed,
      target_precision=target_precision, rmia_offline_a=rmia_offline_a,
      microbatch_size=microbatch_size, whitebox_setting="shadow")
  ev = np.concatenate([members, nonmembers])
  is_member = np.r_[np.ones(members.size, bool), np.zeros(nonmembers.size, bool)]
  xe, ye = x[ev], y[ev]

  t0 = time.perf_counter()
  sig = blackbox_signals(model, variables, xe, ye, stacked=True, microbatch_size=microbatch_size)
  msg = warn_if_not_logits(sig["logits"][0], log)
  if msg:
    warnings.append(msg)
  per_ckpt = [{"name": nm, "train_accuracy": float(sig["correctness"][i][is_member].mean()),
               "test_accuracy": float(sig["correctness"][i][~is_member].mean()), "attacks": {}}
              for i, nm in enumerate(names)]
  signals = pipeline.checkpoint_signals(model, variables, sig, x, y, ev, aux,
                                        microbatch_size=microbatch_size)
  side_of = _side_of(model, variables, x, y, ev, aux, members.size, tcfg, seed, progress, log,
                     reference_variables, rkeep if ref_attacks else None, microbatch_size)
  scores: dict[str, np.ndarray] = {}
  for attack in chosen:
    s, subs, fields = pipeline.run_stacked(
        attack, options, side_of, signals, c,
        signals_of=lambda i: {"model": (model, jax.tree.map(lambda a: a[i], variables), xe, ye)},
        log=log)
    scores[attack.name] = s
    scores.update({f"{attack.name}/{k}": v for k, v in subs.items()})
    for i, entry in enumerate(per_ckpt):
      entry["attacks"][attack.name] = pipeline.entry(
          s[i], {k: v[i] for k, v in subs.items()}, fields[i], is_member)
    cal = per_ckpt[0]["attacks"][attack.name].get("calibrated")
    if cal:
      warnings += size_warnings(attack.name, cal, members.size, log)

  results = {"checkpoints": per_ckpt, "warnings": warnings,
             "timings": {"attack": time.perf_counter() - t0}}
  if out is not None:
    _write(out, results, scores, is_member, ye, model, dataset_name, x, members, nonmembers,
           aux, overwrite, report, log)
  return results




def _side_of(model, variables, x, y, ev, aux, target_size, tcfg, seed, progress, log,
             reference_variables, reference_keep, microbatch_size):
  """``c -> AttackerSide`` of checkpoint c: the user's reference models' signals (shared by
  every checkpoint, computed once) and the white-box attacker's data and target."""
  from mia_jax import pipeline
  from mia_jax.attacks.base import AttackerSide
  memo = {}

  def reference():
    if "reference" not in memo:
      memo["reference"] = {
          **pipeline.reference_signals(model, reference_variables, x, y, ev, aux,
                                       microbatch_size=microbatch_size),
          "keep": reference_keep[:, ev], "discrete": False,
          "fields": {"num_reference": int(reference_keep.shape[0])}}
    return memo["reference"]

  def side(c):
    return AttackerSide({
        "reference": reference,
        "whitebox": lambda: pipeline.whitebox_inputs(
            model, jax.tree.map(lambda a: a[c], variables), x, y, aux,
            target_train_size=target_size, train_config=tcfg, seed=seed, num_eval=ev.size,
            log=log, progress=progress)})
  return side


def _write(out, results, scores, is_member, labels, model, dataset_name, x, members,
           nonmembers, aux, overwrite, report, log) -> None:
  from mia_jax._io import hash_arrays, write_json_atomic, write_npz_atomic
  from mia_jax.audit import SCHEMA_VERSION, device_info, versions
  from mia_jax.checkpoints import plot_checkpoint_metrics
  from mia_jax.rundir import RunDir
  per = results["checkpoints"]
  with RunDir.open(out, command="attack", overwrite=overwrite, log=log) as rd:
    rd.manifest["data"] = {"sha256": hash_arrays(x, labels), "description": dataset_name}
    write_npz_atomic(rd.file("scores.npz"), is_member=is_member, labels=labels,
                     names=np.array([c["name"] for c in per]),
                     **{f"score:{k}": (v[-1] if v.ndim == 2 else v) for k, v in scores.items()},
                     **{f"checkpoint_score:{k}": v for k, v in scores.items()})
    write_json_atomic(rd.file("checkpoint_results.json"),
                      {"schema_version": SCHEMA_VERSION, "model": dict(model.spec), **results,
                       "versions": versions(), "device": device_info()})
    plot_checkpoint_metrics(per, [c["name"] for c in per], rd.file("checkpoints.png"))
    last = per[-1]
    write_json_atomic(rd.file("results.json"), {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"name": dataset_name, "num_classes": model.num_classes,
                    "feature_shape": list(model.input_shape), "num_examples": int(x.shape[0]),
                    "num_members": int(members.size), "num_nonmembers": int(nonmembers.size),
                    "num_auxiliary": int(aux.size)},
        "model": {"name": model.name, "spec": dict(model.spec)},
        "seed": None, "checkpoint": last["name"],
        "target": {"train_accuracy": last["train_accuracy"],
                   "test_accuracy": last["test_accuracy"],
                   "generalization_gap": last["train_accuracy"] - last["test_accuracy"]},
        "attacks": last["attacks"], "warnings": results["warnings"],
        "timings": results["timings"], "versions": versions(), "device": device_info()})
    if report:
      from mia_jax.report import write_report
      for name in ("report.html", "report.md", "plots"):
        rd.file(name)
      write_report(rd.path)
    rd.mark_finished()
