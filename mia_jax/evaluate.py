"""Membership inference from a model's outputs alone ("only my model's outputs").

:func:`evaluate` takes what a user already computed -- the target's logits (or only its
losses) on members and non-members, optionally reference models' logits with their
training membership, and a population set for RMIA -- and runs every black-box attack
those inputs allow, with the very functions the audit uses
(:func:`mia_jax.attacks.threshold.threshold_scores`,
the attack registry (:mod:`mia_jax.attacks.registry`), :func:`mia_jax.metrics.summarize`), so on the
same signals its numbers are the audit's. ``mia-jax score SIGNALS.npz --out DIR`` is the
command line behind it (:func:`load_signals` reads the file; keys in docs/score.md).

Which attacks run:

* logits (or probabilities): the threshold attacks ``loss``, ``confidence``,
  ``entropy``, ``modified_entropy``, ``correctness``; losses only: ``loss``;
* plus ``ref_logits`` and ``keep``: ``lira``, ``lira-offline``, ``lira-fixed-variance``;
* plus the population ``pop_logits``, ``pop_labels``, ``pop_ref_logits``: ``rmia``,
  ``rmia-offline``.

An attack whose reference coverage is missing (online LiRA needs an IN and an OUT
reference model for every example, the offline attacks an OUT one) is skipped and listed
in :attr:`EvaluateResult.skipped`; naming it in ``attacks`` makes that an error instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from mia_jax._validation import (MiaInputError, as_array, as_bool, check_finite, check_in_range,
                                 check_keep_shape, check_labels, check_membership,
                                 check_positive_int)
from mia_jax.audit import BLACKBOX_ATTACKS, REFERENCE_ATTACKS, SCHEMA_VERSION

__all__ = ["evaluate", "EvaluateResult", "load_signals", "OUTPUT_KINDS", "SIGNAL_KEYS",
           "SCORE_ATTACKS"]

OUTPUT_KINDS = ("logits", "probs", "log_probs")
SCORE_ATTACKS = BLACKBOX_ATTACKS + REFERENCE_ATTACKS
PROBABILITY_TOLERANCE = 1e-3
"""Rows summing to 1 (or with logsumexp 0) within this look like probabilities (log-probs)."""
SIGNAL_KEYS = ("logits", "losses", "labels", "is_member", "ref_logits", "keep", "pop_logits",
               "pop_labels", "pop_ref_logits", "output")
"""The keys a ``mia-jax score`` .npz may hold (the keyword arguments of :func:`evaluate`)."""
_POPULATION = ("pop_logits", "pop_labels", "pop_ref_logits")


@dataclasses.dataclass(frozen=True)
class EvaluateResult:
  """What :func:`evaluate` computed.

  Attributes:
    metrics: one row per attack (in the order run): ``{"attack", "auc",
      "balanced_accuracy", "advantage", "tpr@0.1", "tpr@0.01", "tpr@0.001", "tpr@0.0001",
      "tpr@0.0"}`` (highest TPR at empirical FPR <= the key; ``pandas.DataFrame(metrics)``
      makes a table).
    scores: ``{attack: float64[N]}``, higher = more likely a member.
    is_member: bool[N] the membership ground truth given.
    labels: int32[N] the labels given (None if only losses without labels were given).
    results: the ``results.json`` content (docs/results_schema.md, "score runs").
    skipped: ``{attack: reason}`` for attacks the inputs did not allow.
  """
  metrics: list[dict[str, Any]]
  scores: dict[str, np.ndarray]
  is_member: np.ndarray
  labels: np.ndarray | None
  results: dict[str, Any]
  skipped: dict[str, str]
  data_sha256: str = ""

  def table(self) -> str:
    """The metrics as a fixed-width text table (one line per attack)."""
    cols = [("attack", None)] + [(h, k) for h, k in (
        ("AUC", "auc"), ("bal. acc.", "balanced_accuracy"), ("TPR@10%", "tpr@0.1"),
        ("TPR@1%", "tpr@0.01"), ("TPR@0.1%", "tpr@0.001"), ("TPR@0.01%", "tpr@0.0001"))]
    width = max([len("attack")] + [len(r["attack"]) for r in self.metrics])
    lines = ["  ".join([f"{'attack':<{width}}"] + [f"{h:>9}" for h, _ in cols[1:]])]
    for r in self.metrics:
      lines.append("  ".join([f"{r['attack']:<{width}}"]
                             + [f"{r[k]:>9.4f}" for _, k in cols[1:]]))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()

  def write(self, out: str | os.PathLike, *, overwrite: bool = False, report: bool = True,
            dpi: int = 100, log: Callable[[str], None] = lambda s: None) -> str:
    """Writes the run directory ``out``: ``results.json``, ``scores.npz`` and (``report``)
    ``report.html`` / ``report.md`` / ``plots/``, through :class:`mia_jax.rundir.RunDir`
    (command ``score``): locked, every file atomic and recorded in the manifest, a
    finished run refused unless ``overwrite`` (which removes only what mia-jax wrote).

    Returns:
      The run directory's absolute path.
    """
    from mia_jax._io import write_json_atomic, write_npz_atomic
    from mia_jax.rundir import RunDir
    path = _check_out(out, overwrite, dpi)
    with RunDir.open(path, command="score", overwrite=overwrite, log=log) as rd:
      # Nothing is reused from an earlier, unfinished score run, so the inputs' hash is
      # recorded (provenance), never compared.
      rd.manifest["data"] = {"sha256": self.data_sha256, "description": "the outputs scored"}
      rd.save()
      arrays = {"is_member": self.is_member}
      if self.labels is not None:
        arrays["labels"] = self.labels
      arrays.update({f"score:{k}": v for k, v in self.scores.items()})
      write_npz_atomic(rd.file("scores.npz"), **arrays)
      write_json_atomic(rd.file("results.json"), self.results)
      if report:
        from mia_jax.report import write_report
        for name in ("report.html", "report.md", "plots"):
          rd.file(name)
        write_report(rd.path, dpi=dpi)
      rd.mark_finished()
      return rd.path


def _check_out(out: Any, overwrite: bool, dpi: Any) -> str:
  from mia_jax.report import check_dpi
  from mia_jax.rundir import check_out_path, refuse_finished
  check_dpi(dpi)
  path = check_out_path(out)
  if not overwrite:
    refuse_finished(path)
  return path


# ---------------------------------------------------------------------------------------------
# Validation (host, before any compute).
# ---------------------------------------------------------------------------------------------

def _real(value: Any, name: str, shape_doc: str, ndim: int) -> np.ndarray:
  """A real array of ``ndim`` dimensions, as the float dtype JAX computes in (float32
  unless x64 is enabled), finite after that cast."""
  import jax
  import jax.numpy as jnp
  arr = as_array(value, name)
  if arr.ndim != ndim:
    raise MiaInputError(f"{name}: expected {shape_doc}, got shape {list(arr.shape)}")
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                               or np.issubdtype(arr.dtype, np.integer)):
    raise MiaInputError(f"{name}: expected real numbers {shape_doc}, got dtype={arr.dtype}")
  if 0 in arr.shape:
    raise MiaInputError(f"{name}: expected a non-empty {shape_doc}, got shape {list(arr.shape)}")
  with np.errstate(over="ignore"):
    arr = np.asarray(arr, jax.dtypes.canonicalize_dtype(jnp.float64))
  check_finite(arr, name)
  return arr


def _shape_is(arr: np.ndarray, want: tuple[int, ...], name: str, doc: str) -> None:
  if arr.shape != want:
    raise MiaInputError(f"{name}: expected shape {list(want)} ({doc}), got {list(arr.shape)}")


def _looks_like(arr: np.ndarray) -> str | None:
  """"probs" if every row is non-negative and sums to 1, "log_probs" if every row's
  logsumexp is 0 (both within PROBABILITY_TOLERANCE), else None."""
  a = np.asarray(arr, np.float64)
  if np.all(a >= 0) and np.all(np.abs(a.sum(-1) - 1.0) <= PROBABILITY_TOLERANCE):
    return "probs"
  top = a.max(-1, keepdims=True)
  lse = (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]
  if np.all(np.abs(lse) <= PROBABILITY_TOLERANCE):
    return "log_probs"
  return None


def _check_output_kind(arrays: dict[str, np.ndarray], output: str | None) -> str:
  """The kind of the outputs: ``output`` if given; else "logits", after checking that no
  array looks like probabilities or log-probabilities."""
  if output is not None:
    if output not in OUTPUT_KINDS:
      raise MiaInputError(f"output: expected one of {list(OUTPUT_KINDS)}, got {output!r}")
    if output == "probs":
      for name, a in arrays.items():
        if a.min() < 0 or a.max() > 1:
          raise MiaInputError(f"{name}: output='probs' needs probabilities in [0, 1], got "
                              f"range [{a.min()}, {a.max()}]")
    return output
  for name, a in arrays.items():
    kind = _looks_like(a)
    if kind == "probs":
      raise MiaInputError(
          f"output: every row of {name} is non-negative and sums to 1 (within "
          f"{PROBABILITY_TOLERANCE}): these look like probabilities, not logits. Pass "
          "output='probs' if they are (or output='logits' if they really are logits)")
    if kind == "log_probs":
      raise MiaInputError(
          f"output: every row of {name} has logsumexp 0 (within {PROBABILITY_TOLERANCE}): "
          "these look like log-probabilities, not logits. Pass output='log_probs' if they "
          "are (they are valid logits up to a constant), or output='logits'")
  return "logits"


@dataclasses.dataclass
class _Inputs:
  kind: str  # "logits", "probs", "log_probs" or "losses"
  n: int
  k: int | None
  is_member: np.ndarray
  labels: np.ndarray | None
  values: np.ndarray | None  # [N, K] logits or probabilities
  losses: np.ndarray | None
  ref: np.ndarray | None  # [M, N, K]
  keep: np.ndarray | None  # [M, N]
  pop: np.ndarray | None  # [Z, K]
  pop_labels: np.ndarray | None
  pop_ref: np.ndarray | None  # [M, Z, K]


def _check_inputs(*, logits, losses, labels, is_member, ref_logits, keep, pop_logits,
                  pop_labels, pop_ref_logits, output) -> _Inputs:
  if (logits is None) == (losses is None):
    raise MiaInputError("logits, losses: give exactly one (the target's logits float[N, K], "
                        "or only its per-example losses float[N])")
  pop = {"pop_logits": pop_logits, "pop_labels": pop_labels, "pop_ref_logits": pop_ref_logits}
  given_pop = [k for k, v in pop.items() if v is not None]
  if losses is not None:
    extra = [k for k, v in (("ref_logits", ref_logits), ("keep", keep), *pop.items())
             if v is not None]
    if extra:
      raise MiaInputError(f"{extra[0]}: the reference attacks need the target's logits "
                          "(logits=...); with only losses, only the loss attack runs")
    if output is not None:
      raise MiaInputError("output: applies to logits; losses were given")
    loss = _real(losses, "losses", "float[N] (one loss per example)", 1)
    n = loss.shape[0]
    mem = _membership(is_member, n, "losses")
    y = None
    if labels is not None:
      y = check_labels(labels, np.iinfo(np.int32).max, "labels")
      _shape_is(y, (n,), "labels", "int[N], one per row of losses")
    return _Inputs("losses", n, None, mem, y, None, loss, None, None, None, None, None)

  values = _real(logits, "logits", "float[N, K] (one row of outputs per example)", 2)
  n, k = values.shape
  if k < 2:
    raise MiaInputError(f"logits: expected K >= 2 classes (float[N, K]), got shape {[n, k]}")
  if labels is None:
    raise MiaInputError("labels: required with logits (int[N], the true classes)")
  y = check_labels(labels, k, "labels")
  _shape_is(y, (n,), "labels", "int[N], one per row of logits")
  mem = _membership(is_member, n, "logits")
  arrays = {"logits": values}
  ref = keep_np = pop_v = pop_y = pop_r = None
  if (ref_logits is None) != (keep is None):
    missing = "keep" if keep is None else "ref_logits"
    raise MiaInputError(f"{missing}: ref_logits (float[M, N, K]) and keep (bool[M, N]) go "
                        "together: the reference models' outputs and their training membership")
  if ref_logits is not None:
    ref = _real(ref_logits, "ref_logits", "float[M, N, K] (M reference models' outputs on "
                "the same examples)", 3)
    m = ref.shape[0]
    _shape_is(ref, (m, n, k), "ref_logits", "float[M, N, K], N and K as logits")
    keep_np = check_keep_shape(keep, m, n, "reference models x examples, matching ref_logits")
    arrays["ref_logits"] = ref
  if given_pop:
    missing = [key for key in pop if pop[key] is None]
    if missing:
      raise MiaInputError(f"{missing[0]}: the population for RMIA needs pop_logits "
                          "float[Z, K], pop_labels int[Z] and pop_ref_logits float[M, Z, K] "
                          f"together; got only {given_pop}")
    if ref is None:
      raise MiaInputError("ref_logits: the population (pop_*) is for RMIA, which also needs "
                          "the reference models' ref_logits float[M, N, K] and keep bool[M, N]")
    pop_v = _real(pop_logits, "pop_logits", "float[Z, K] (the target's outputs on the "
                  "population)", 2)
    z = pop_v.shape[0]
    _shape_is(pop_v, (z, k), "pop_logits", "float[Z, K], K as logits")
    pop_y = check_labels(pop_labels, k, "pop_labels")
    _shape_is(pop_y, (z,), "pop_labels", "int[Z], one per row of pop_logits")
    pop_r = _real(pop_ref_logits, "pop_ref_logits", "float[M, Z, K]", 3)
    _shape_is(pop_r, (ref.shape[0], z, k), "pop_ref_logits",
              "float[M, Z, K], M as ref_logits, Z and K as pop_logits")
    arrays.update(pop_logits=pop_v, pop_ref_logits=pop_r)
  kind = _check_output_kind(arrays, output)
  return _Inputs(kind, n, k, mem, y, values, None, ref, keep_np, pop_v, pop_y, pop_r)


def _membership(is_member: Any, n: int, against: str) -> np.ndarray:
  arr = as_array(is_member, "is_member")
  if arr.ndim != 1 or arr.shape[0] != n:
    raise MiaInputError(f"is_member: expected bool[{n}] (one per row of {against}), got "
                        f"shape {list(arr.shape)}")
  return check_membership(as_bool(arr, "is_member"), n)


def _allowed(inp: _Inputs) -> dict[str, str | None]:
  """{attack: None if the inputs allow it, else why not}."""
  out: dict[str, str | None] = {}
  for a in BLACKBOX_ATTACKS:
    out[a] = None if inp.kind != "losses" or a == "loss" else "needs logits (only losses given)"
  no_ref = ("needs the target's logits" if inp.kind == "losses"
            else "needs reference models (ref_logits and keep)")
  no_pop = "needs a population (pop_logits, pop_labels, pop_ref_logits)"
  for a in REFERENCE_ATTACKS:
    out[a] = no_ref if inp.ref is None else None
    if inp.ref is not None and a.startswith("rmia") and inp.pop is None:
      out[a] = no_pop
  if inp.ref is not None:
    m = inp.ref.shape[0]
    n_in, n_out = inp.keep.sum(0), (~inp.keep).sum(0)

    def lacking(counts, side):
      bad = np.flatnonzero(counts < 1)
      return (f"needs at least one {side} reference model per example; {bad.size} "
              f"example(s) have none in keep (first: {bad[:5].tolist()})") if bad.size else None

    for a in ("lira", "lira-fixed-variance"):
      why = (f"needs at least 2 reference models, got M={m}" if m < 2
             else lacking(n_in, "IN") or lacking(n_out, "OUT"))
      out[a] = out[a] or why
    for a in REFERENCE_ATTACKS:  # the online LiRAs above; offline ones need OUT only
      if a.startswith("rmia") or "offline" in a:
        out[a] = out[a] or (lacking(n_out, "OUT") if "offline" in a else None)
  return out


# ---------------------------------------------------------------------------------------------
# Signals: the audit's functions (mia_jax.signals), compiled and microbatched.
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _signal_fn(kind: str, names: tuple[str, ...]):
  """Jitted ``(values [b, ..., K], y [b]) -> {name: [b, ...]}``: the signals of
  :func:`mia_jax.signals.signals_from_logits` (``signals_from_probs`` for probabilities);
  the labels are broadcast over any axes between b and K (reference models)."""
  import jax
  import jax.numpy as jnp

  from mia_jax.signals import signals_from_logits, signals_from_probs
  from_values = signals_from_probs if kind == "probs" else signals_from_logits

  def fn(values, y):
    y = jnp.broadcast_to(y.reshape(y.shape + (1,) * (values.ndim - 2)), values.shape[:-1])
    s = from_values(values, y)
    return {k: s[k] for k in names}
  return jax.jit(fn)


def _signals(kind: str, values: np.ndarray, y: np.ndarray, names: Sequence[str],
             microbatch_size: int, stacked: bool = False) -> dict[str, np.ndarray]:
  """Signals of float[N, K] (or float[M, N, K], ``stacked``) outputs: {name: [(M,) N]}."""
  from mia_jax._batching import run_microbatched
  fn = _signal_fn(kind, tuple(names))
  if stacked:
    values = np.moveaxis(values, 1, 0)  # [N, M, K]: the examples are microbatched
  out = run_microbatched(fn, [values, y], microbatch_size)
  return {k: (np.asarray(v).T if stacked else np.asarray(v)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------------------------

def evaluate(*, is_member: Any, logits: Any = None, losses: Any = None, labels: Any = None,
             ref_logits: Any = None, keep: Any = None, pop_logits: Any = None,
             pop_labels: Any = None, pop_ref_logits: Any = None, output: str | None = None,
             attacks: Sequence[str] | None = None, rmia_offline_a: float = 0.3,
             microbatch_size: int = 1024, name: str = "outputs",
             out: str | os.PathLike | None = None, overwrite: bool = False, report: bool = True,
             dpi: int = 100, log: Callable[[str], None] = lambda s: None) -> EvaluateResult:
  """Runs every black-box attack the given model outputs allow (see the module docstring).

  Everything is validated before any compute. Scores and metrics are those of
  :func:`mia_jax.audit.run_audit` on the same signals (the same functions compute them).

  Args:
    is_member: bool[N] (or 0/1) ground truth: example i is in the target's training set;
      both members and non-members present.
    logits: float[N, K] the target's outputs on the N examples (K >= 2); see ``output``.
    losses: float[N] instead of ``logits``: the target's per-example losses (then only
      the ``loss`` attack runs; no reference or population arguments).
    labels: int[N] true classes in [0, K); required with ``logits``, optional with
      ``losses`` (used for the report's per-class metrics).
    ref_logits: float[M, N, K] M reference models' outputs on the same N examples
      (LiRA; with the population also RMIA).
    keep: bool[M, N] with ``ref_logits``: ``keep[m, i]`` = example i was in reference model
      m's training set.
    pop_logits: float[Z, K] the target's outputs on Z population examples (in no model's
      training set; RMIA's z).
    pop_labels: int[Z] their true classes.
    pop_ref_logits: float[M, Z, K] the reference models' outputs on them.
    output: what the output arrays hold: "logits", "probs" (probability vectors, as an API
      returns them: signals as :func:`mia_jax.signals.signals_from_probs`, logarithms
      floored at ``PROB_FLOOR``) or "log_probs" (valid logits up to a constant). None
      (default): logits, and arrays whose rows all look like probabilities or
      log-probabilities are an error naming ``output``.
    attacks: attack names to run (from ``SCORE_ATTACKS``); None: every attack the inputs
      allow (the others are listed in ``EvaluateResult.skipped``). A named attack the
      inputs do not allow is an error.
    rmia_offline_a: offline RMIA's a in [0, 1] (the audit's default).
    microbatch_size: examples per compiled signal chunk (memory bound).
    name: what the outputs are called in results.json (``dataset.name``) and the report.
    out: optional run directory to write (:meth:`EvaluateResult.write`).
    overwrite: with ``out``: replace a finished run (only what mia-jax wrote).
    report: with ``out``: also write report.html / report.md.
    dpi: with ``out`` and ``report``: resolution of the report's plots.
    log: receives what the run directory found (stale lock, earlier run).

  Returns:
    An :class:`EvaluateResult` (``.metrics`` rows, ``.scores``, ``.table()``, ``.write()``).

  Raises:
    MiaInputError: inconsistent shapes (the message names the argument and the expected
      shape), labels outside [0, K), NaN/inf, probabilities passed as logits without
      ``output``, one membership class only, unknown or impossible attacks, or an
      unusable ``out``.
  """
  inp = _check_inputs(logits=logits, losses=losses, labels=labels, is_member=is_member,
                      ref_logits=ref_logits, keep=keep, pop_logits=pop_logits,
                      pop_labels=pop_labels, pop_ref_logits=pop_ref_logits, output=output)
  allowed = _allowed(inp)
  if attacks is None:
    chosen = [a for a in SCORE_ATTACKS if allowed[a] is None]
    skipped = {a: why for a, why in allowed.items() if why is not None}
  else:
    if isinstance(attacks, str):
      attacks = [t.strip() for t in attacks.split(",") if t.strip()]
    chosen = list(dict.fromkeys(attacks))
    unknown = [a for a in chosen if a not in SCORE_ATTACKS]
    if unknown or not chosen:
      raise MiaInputError(f"attacks: unknown attack(s) {unknown}; from model outputs these "
                          f"run: {list(SCORE_ATTACKS)}" if unknown
                          else "attacks: expected at least one attack")
    for a in chosen:
      if allowed[a] is not None:
        raise MiaInputError(f"attacks: {a} {allowed[a]}")
    skipped = {}
  a_off = check_in_range(rmia_offline_a, "rmia_offline_a", 0, 1)
  microbatch_size = check_positive_int(microbatch_size, "microbatch_size")
  if not isinstance(name, str) or not name:
    raise MiaInputError(f"name: expected a non-empty string, got {name!r}")
  if out is not None:
    _check_out(out, overwrite, dpi)

  from mia_jax._io import hash_arrays
  from mia_jax import pipeline
  from mia_jax.attacks import registry
  from mia_jax.attacks.base import AttackerSide, Lazy
  from mia_jax.audit import device_info, versions

  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  thresholds = [a for a in chosen if a in BLACKBOX_ATTACKS]
  refs = [a for a in chosen if a in REFERENCE_ATTACKS]
  accuracy = None
  if inp.kind == "losses":
    sig = {"loss": inp.losses}
  else:
    need = {"loss": "loss", "confidence": "confidence", "entropy": "entropy",
            "modified_entropy": "modified_entropy", "correctness": "correctness"}
    names = sorted({need[a] for a in thresholds} | {"correctness"}
                   | ({"scaled_logit", "confidence"} if refs else set()))
    sig = _signals(inp.kind, inp.values, inp.labels, names, microbatch_size)
    accuracy = sig["correctness"]
  timings["signals"] = round(time.perf_counter() - t0, 3)

  def reference():
    t0 = time.perf_counter()
    names = ("scaled_logit", "confidence")
    ref_sig = _signals(inp.kind, inp.ref, inp.labels, names, microbatch_size, stacked=True)
    ref_z = None
    if inp.pop is not None and any(a.startswith("rmia") for a in refs):
      ref_z = _signals(inp.kind, inp.pop_ref, inp.pop_labels, ("confidence",),
                       microbatch_size, stacked=True)["confidence"]
    timings["reference_signals"] = round(time.perf_counter() - t0, 3)
    return {"scaled_logit": ref_sig["scaled_logit"], "confidence": ref_sig["confidence"],
            "confidence_z": ref_z, "keep": inp.keep, "discrete": False,
            "fields": {"num_reference": int(inp.ref.shape[0])}}

  signals = Lazy({**{k: (lambda k=k: sig[k]) for k in sig},
                  "confidence_z": lambda: _signals(inp.kind, inp.pop, inp.pop_labels,
                                                   ("confidence",), microbatch_size)["confidence"]},
                 "signals")
  side = AttackerSide({"reference": reference})
  options = {"rmia_offline_a": a_off}
  scores: dict[str, np.ndarray] = {}
  attacks_out: dict[str, Any] = {}
  for attack in registry.select(chosen):
    t0 = time.perf_counter()
    scores[attack.name], _, attacks_out[attack.name] = pipeline.run_one(
        attack, options, side, signals, inp.is_member)
    if attack.family != "threshold":
      timings[attack.name] = round(time.perf_counter() - t0, 3)
  # Display order: the order the caller named, else SCORE_ATTACKS'.
  attacks_out = {a: attacks_out[a] for a in chosen}
  scores = {a: scores[a] for a in chosen}

  n_in = int(inp.is_member.sum())
  z = 0 if inp.pop is None else int(inp.pop.shape[0])
  k = inp.k if inp.k is not None else (int(inp.labels.max()) + 1 if inp.labels is not None
                                       else None)
  results: dict[str, Any] = {
      "schema_version": SCHEMA_VERSION,
      "source": "outputs",
      "dataset": {"name": name, "num_classes": k, "feature_shape": [],
                  "num_examples": inp.n + z, "num_members": n_in,
                  "num_nonmembers": inp.n - n_in, "num_auxiliary": z},
      "model": {"name": "user model", "spec": {}},
      "seed": None,
      "config": {"command": "score", "output": inp.kind, "attacks": list(chosen),
                 "num_reference": None if inp.ref is None else int(inp.ref.shape[0]),
                 "rmia_offline_a": a_off, "microbatch_size": microbatch_size},
      "defenses": [],
      "attacks": attacks_out,
      "skipped_attacks": skipped,
      "timings": timings,
      "versions": versions(),
      "device": device_info(),
  }
  if accuracy is not None:
    train_acc = float(accuracy[inp.is_member].mean())
    test_acc = float(accuracy[~inp.is_member].mean())
    results["target"] = {"train_accuracy": train_acc, "test_accuracy": test_acc,
                         "generalization_gap": train_acc - test_acc}
  rows = [{"attack": a, "auc": m["auc"], "balanced_accuracy": m["balanced_accuracy"],
           "advantage": m["advantage"], **{f"tpr@{f}": t for f, t in m["tpr_at_fpr"].items()}}
          for a, m in attacks_out.items()]
  given = [v for v in (inp.values, inp.losses, inp.labels, inp.is_member, inp.ref, inp.keep,
                       inp.pop, inp.pop_labels, inp.pop_ref) if v is not None]
  result = EvaluateResult(metrics=rows, scores=scores, is_member=inp.is_member,
                          labels=inp.labels, results=results, skipped=skipped,
                          data_sha256=hash_arrays(*given))
  if out is not None:
    result.write(out, overwrite=overwrite, report=report, dpi=dpi, log=log)
  return result


# ---------------------------------------------------------------------------------------------
# The .npz of `mia-jax score`.
# ---------------------------------------------------------------------------------------------

def load_signals(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a ``mia-jax score`` input: an ``.npz`` whose keys are :data:`SIGNAL_KEYS`
  (``np.load(allow_pickle=False)``; documented in docs/score.md).

  Returns:
    ``{key: array}`` ready for ``evaluate(**...)`` (``output`` as a string).

  Raises:
    MiaInputError: unreadable or not an .npz of arrays, an unknown key (named), a
      pickled (object) array, or an ``output`` that is not one string.
  """
  import zipfile
  if not isinstance(path, (str, os.PathLike)):
    raise MiaInputError(f"signals: expected a path to an .npz file, got {path!r}")
  path = os.fspath(path)
  try:
    data = np.load(path, allow_pickle=False)
  except OSError as e:
    raise MiaInputError(f"signals: cannot read {path}: {e.strerror or e}") from e
  except (ValueError, zipfile.BadZipFile, EOFError) as e:
    raise MiaInputError(f"signals: {path} is not an .npz archive of arrays ({e})") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise MiaInputError(f"signals: {path} holds a single array; expected an .npz archive "
                        f"with the keys {list(SIGNAL_KEYS)} (np.savez(path, logits=..., ...))")
  with data:
    unknown = sorted(set(data.files) - set(SIGNAL_KEYS))
    if unknown:
      raise MiaInputError(f"signals: unknown key(s) {unknown} in {path}; expected some of "
                          f"{list(SIGNAL_KEYS)} (see docs/score.md)")
    out: dict[str, Any] = {}
    for key in data.files:
      try:
        out[key] = np.asarray(data[key])
      except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise MiaInputError(f"{key}: cannot read this array from {path} ({e}); object "
                            "(pickled) arrays are refused") from e
  if "output" in out:
    v = out["output"]
    if v.ndim != 0 or v.dtype.kind not in "US":
      raise MiaInputError(f"output: expected one string in {path} (one of "
                          f"{list(OUTPUT_KINDS)}), got dtype={v.dtype} shape {list(v.shape)}")
    v = v[()]
    out["output"] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
  return out
