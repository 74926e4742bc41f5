"""The one shape every attack has, and the inputs it is given.

An attack is a module-level :class:`Attack` (listed in :mod:`mia_jax.attacks.registry`):

* ``configure(options) -> config``: its config dataclass from the run's options (an
  :class:`mia_jax.audit.AuditConfig`, or any object with the same attribute names; a
  missing attribute takes the config's default);
* ``fit(config, side) -> state``: everything the attacker does before seeing the target's
  outputs on the evaluation examples, from :class:`AttackerSide` (reference models'
  signals, shadow models' outputs, auxiliary data); ``state`` is a pytree;
* ``score(state, signals) -> float[N]``: the target's membership scores on the evaluation
  examples, **higher = more likely member**, from the target signals the attack declares
  in ``needs`` (the pipeline computes only those). Where ``traceable`` is true, ``score``
  is pure ``jnp`` with no validation or host work inside, so C checkpoints score in one
  ``jax.vmap`` under one ``jax.jit``; validation happens in ``fit`` and in the pipeline.

Signals (keys of the mapping ``score`` receives; ``[N]`` per target, a leading ``C`` when
checkpoints are stacked):

=====================  ================================================================
``loss`` ...           the black-box signals of :data:`mia_jax.signals.SIGNAL_NAMES`
``scaled_logit``       ``float[N, A]`` LiRA's logit-scaled confidence, A query views
``confidence_z``       ``float[Z]`` the target's true-class probability on RMIA's population
``probs``              ``float[N, K]`` the (defended) prediction vectors
``labels``             ``int[N]`` true labels of the evaluation examples
``gradient_norms``     ``{stage: float[N]}`` per-example gradient norms (and ``"total"``)
``model``              ``(model, variables, x, y)`` the white-box target itself
``models``             ``(model, stacked variables, x, y)``: C checkpoints at once
=====================  ================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

FAMILIES = ("threshold", "reference", "shadow", "whitebox")
"""Attack families, in the order runs and reports list them."""

SIGNALS = ("loss", "confidence", "entropy", "modified_entropy", "correctness", "scaled_logit",
           "confidence_z", "probs", "labels", "gradient_norms", "model", "models")
"""Target signals an attack may declare in ``needs``."""

SIDES = ("reference", "shadow", "whitebox")
"""Attacker-side inputs an attack may declare in ``attacker``."""


@dataclasses.dataclass(frozen=True)
class Attack:
  """One membership-inference attack (see the module docstring).

  Attributes:
    name: the name users type (``--attacks``), unique in the registry.
    family: one of :data:`FAMILIES`.
    summary: one line for the CLI help, ``docs/attacks.md``'s table and the report.
    paper: where it comes from ("" for folklore baselines).
    needs: target signals ``score`` reads (from :data:`SIGNALS`).
    attacker: attacker-side inputs ``fit`` reads (from :data:`SIDES`).
    configure: ``options -> config`` (a config dataclass).
    fit: ``(config, side) -> state``.
    score: ``(state, signals) -> float[N]``.
    traceable: ``score`` is pure ``jnp`` (vmapped over stacked checkpoints).
    fit_per_target: ``fit`` reads the target itself (white-box: e.g. Stolen Memories'
      proxies share the target's frozen lower layers), so each checkpoint is fit.
    details: optional ``(config, state, signals) -> (sub-scores {name: float[N]}, fields)``:
      per-layer scores and result fields next to the score. A field ``threshold`` (with
      ``calibration``) is a threshold chosen on attacker-side data, reported as its
      achieved precision/recall/FPR; ``decision_threshold`` the attack's own decision rule.
    score_stack: optional ``(state, signals) -> float[C, N]`` for an attack whose score is
      not traceable but can score C stacked checkpoints in one pass of its own (Nasr et
      al.: gradient features and network fused, vmapped over checkpoints); it reads
      ``signals["models"] = (model, stacked variables, x, y)``.
    score_states: optional ``(config, states, signals) -> (float[C, N], {name: float[C, N]},
      [fields per checkpoint])`` for an attack fit per target (``fit_per_target``): scores
      C stacked checkpoints, each with its own fitted state, in one pass (Stolen Memories:
      every checkpoint's Jacobians against its own proxies in one compiled, microbatched
      pass); it reads ``signals["models"]``.
    report: optional ``(config, state, signals) -> (float[N], sub-scores, fields)`` that
      computes the score and its details together, for attacks whose sub-scores are the
      intermediate results of the score (Stolen Memories' per-layer scores).
  """
  name: str
  family: str
  summary: str
  paper: str
  needs: tuple[str, ...]
  configure: Callable[[Any], Any]
  fit: Callable[[Any, "AttackerSide"], Any]
  score: Callable[[Any, Mapping[str, Any]], Any]
  attacker: tuple[str, ...] = ()
  traceable: bool = True
  fit_per_target: bool = False
  details: Callable[[Any, Any, Mapping[str, Any]], tuple[dict, dict]] | None = None
  report: Callable[[Any, Any, Mapping[str, Any]], tuple[Any, dict, dict]] | None = None
  score_stack: Callable[[Any, Mapping[str, Any]], Any] | None = None
  score_states: Callable[[Any, list, Mapping[str, Any]], tuple[Any, dict, list]] | None = None

  def evaluate(self, config: Any, state: Any, signals: Mapping[str, Any]
               ) -> tuple[Any, dict, dict]:
    """``(scores float[N], sub-scores, fields)`` of one target."""
    if self.report is not None:
      return self.report(config, state, signals)
    subs, fields = self.details(config, state, signals) if self.details else ({}, {})
    return self.score(state, signals), subs, fields

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"attack {self.name!r}: family must be one of {FAMILIES}, "
                       f"got {self.family!r}")
    bad = [s for s in self.needs if s not in SIGNALS]
    if bad:
      raise ValueError(f"attack {self.name!r}: unknown signals {bad}; expected some of "
                       f"{SIGNALS}")
    bad = [s for s in self.attacker if s not in SIDES]
    if bad:
      raise ValueError(f"attack {self.name!r}: unknown attacker-side inputs {bad}; "
                       f"expected some of {SIDES}")


class Lazy(Mapping):
  """A mapping whose values are computed on first access by named providers (so a run
  computes only what the chosen attacks need), then kept."""

  def __init__(self, providers: Mapping[str, Callable[[], Any]], what: str):
    self._providers = dict(providers)
    self._values: dict[str, Any] = {}
    self._what = what

  def __getitem__(self, key: str) -> Any:
    if key not in self._values:
      if key not in self._providers:
        from mia_jax._validation import MiaInputError
        raise MiaInputError(f"{self._what}: {key!r} is not available here (available: "
                            f"{sorted(self._providers)})")
      self._values[key] = self._providers[key]()
    return self._values[key]

  def __iter__(self):
    return iter(self._providers)

  def __len__(self) -> int:
    return len(self._providers)


class AttackerSide(Lazy):
  """What the attacker has before looking at the target's evaluation outputs.

  Keys (each computed, and models trained, only when an attack's ``fit`` asks):

  * ``"reference"``: ``{"scaled_logit": float[M, N, A], "confidence": float[M, N],
    "confidence_z": float[M, Z], "keep": bool[M, N], "discrete": bool}``;
  * ``"shadow"``: ``{"probs": float[S, R, K], "labels": int[R], "keep": bool[S, R]}``;
  * ``"whitebox"``: ``{"model", "target", "aux_x", "aux_y", "target_train_size",
    "train_config", "train_shadow", "seed", "progress", "log", "work_dir"}``.
  """

  def __init__(self, providers: Mapping[str, Callable[[], Any]]):
    super().__init__(providers, "attacker side")


def option(options: Any, name: str, default: Any) -> Any:
  """``options.name`` (or ``options[name]`` for a mapping), else ``default``."""
  if isinstance(options, Mapping):
    return options.get(name, default)
  return getattr(options, name, default)
