"""Prediction-API defenses of Shokri et al. (2017), Section VI: what the API reveals.

Each defense is a pure function on the last axis that broadcasts over leading axes
(models, examples), so it can sit inside a jitted query function:

* :func:`temperature` -- ``softmax(logits / t)`` (acts on **logits**; large t flattens).
* :func:`top_k` -- keep the k largest probabilities and zero the others. As in the
  paper's "restrict the prediction vector to the top k classes", the kept values are
  the model's own probabilities, **not renormalized** (pass ``renormalize=True`` to
  rescale them to sum to 1). Ties are broken by ``jax.lax.top_k`` (lower index
  first), so exactly k entries are kept.
* :func:`round_probs` -- round to ``decimals`` decimal places (``jnp.round``: ties to
  even).
* :func:`label_only` -- the one-hot vector of the argmax (lower index on ties).

Specs are strings ``"temperature=20"``, ``"top-k=3"``, ``"round=2"``, ``"label-only"``
(or :class:`Defense` values). :func:`apply_defenses` turns logits into the probability
vector the API returns: temperature specs (which act on logits) must come first, then
softmax, then the probability defenses **in the given order** (order matters, e.g.
rounding then label-only differs from label-only then rounding).

The L2-regularization defense is ``TrainConfig(weight_decay=...)`` in
:mod:`mia_jax.train`.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import MiaInputError

NAMES = ("temperature", "top-k", "round", "label-only")

__all__ = ["Defense", "NAMES", "apply_defenses", "label_only", "parse_defense",
           "parse_defenses", "round_probs", "temperature", "top_k"]


def _num_classes(a, name: str) -> int:
  shape = jnp.shape(a)
  if len(shape) < 1 or shape[-1] < 1:
    raise MiaInputError(f"{name}: expected an array [..., K] with K >= 1, got shape {shape}")
  return int(shape[-1])


def _check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise MiaInputError(f"{name}: expected an integer, got {value!r}")
  if value < minimum or (maximum is not None and value > maximum):
    rng = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    raise MiaInputError(f"{name}: expected an integer {rng}, got {value}")
  return int(value)


def _check_temperature(t, name: str = "t") -> float:
  try:
    v = float(t)
  except (TypeError, ValueError) as e:
    raise MiaInputError(f"{name}: expected a positive number, got {t!r}") from e
  if isinstance(t, bool) or not (np.isfinite(v) and v > 0):
    raise MiaInputError(f"{name}: expected a finite temperature > 0, got {t!r}")
  return v


def temperature(logits: jax.Array, t: float) -> jax.Array:
  """Softmax at temperature t: ``softmax(logits / t)``, float[..., K].

  Raises:
    MiaInputError: ``t`` not a finite number > 0.
  """
  t = _check_temperature(t)
  _num_classes(logits, "logits")
  return jax.nn.softmax(logits / t, axis=-1)


def top_k(probs: jax.Array, k: int, *, renormalize: bool = False) -> jax.Array:
  """Keeps the k largest entries of the last axis and zeroes the rest.

  Args:
    probs: float[..., K] probability vectors.
    k: number of entries kept, 1 <= k <= K.
    renormalize: rescale the kept entries to sum to 1 (default: keep the raw values,
      as the paper's API does).

  Returns:
    float[..., K] with exactly k nonzero-able entries (the rest exactly 0).

  Raises:
    MiaInputError: ``k`` outside ``1..K``.
  """
  num_classes = _num_classes(probs, "probs")
  k = _check_int(k, "k", 1, num_classes)
  _, idx = jax.lax.top_k(probs, k)
  keep = jnp.any(jax.nn.one_hot(idx, num_classes, dtype=bool), axis=-2)
  out = jnp.where(keep, probs, jnp.zeros_like(probs))
  if renormalize:
    out = out / jnp.sum(out, axis=-1, keepdims=True)
  return out


def round_probs(probs: jax.Array, decimals: int) -> jax.Array:
  """Rounds to ``decimals`` decimal places (``jnp.round``, ties to even).

  Raises:
    MiaInputError: ``decimals`` not an integer >= 0.
  """
  decimals = _check_int(decimals, "decimals", 0)
  _num_classes(probs, "probs")
  return jnp.round(probs, decimals)


def label_only(probs: jax.Array) -> jax.Array:
  """One-hot vector of the argmax, float[..., K] (lower index first on ties)."""
  num_classes = _num_classes(probs, "probs")
  return jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes, dtype=jnp.result_type(probs))


class Defense(NamedTuple):
  """One parsed defense: ``name`` in :data:`NAMES`, ``value`` its parameter (None for
  "label-only")."""
  name: str
  value: float | int | None = None

  def __str__(self) -> str:
    if self.value is None:
      return self.name
    return f"{self.name}={self.value:g}" if isinstance(self.value, float) else \
        f"{self.name}={self.value}"


def parse_defense(spec: str | Defense, name: str = "defense") -> Defense:
  """Parses ``"top-k=3"``, ``"round=2"``, ``"temperature=20"`` or ``"label-only"``.

  Values are validated here (k >= 1, decimals >= 0, t > 0); ``k <= K`` is checked by
  :func:`apply_defenses`, which knows K.

  Raises:
    MiaInputError: unknown name, missing/extra/malformed value.
  """
  if isinstance(spec, Defense):
    text = str(spec)
  elif isinstance(spec, str):
    text = spec
  else:
    raise MiaInputError(f"{name}: expected a string such as 'top-k=3', got {spec!r}")
  head, sep, value = text.strip().partition("=")
  head = head.strip().lower()
  value = value.strip()
  if head not in NAMES:
    raise MiaInputError(f"{name}: unknown defense {head!r} in {text!r}; expected one of "
                        f"{NAMES} ('top-k=3', 'round=2', 'temperature=20', 'label-only')")
  if head == "label-only":
    if sep:
      raise MiaInputError(f"{name}: 'label-only' takes no value, got {text!r}")
    return Defense("label-only")
  if not sep or not value:
    raise MiaInputError(f"{name}: {head!r} needs a value, e.g. '{head}=2', got {text!r}")
  if head == "temperature":
    try:
      t = float(value)
    except ValueError as e:
      raise MiaInputError(f"{name}: temperature must be a number, got {value!r}") from e
    return Defense("temperature", _check_temperature(t, f"{name} (temperature)"))
  try:
    v = int(value)
  except ValueError as e:
    raise MiaInputError(f"{name}: {head} must be an integer, got {value!r}") from e
  if head == "top-k":
    return Defense("top-k", _check_int(v, f"{name} (top-k)", 1))
  return Defense("round", _check_int(v, f"{name} (round)", 0))


def parse_defenses(specs: Iterable[str | Defense] | str | None,
                   num_classes: int | None = None) -> tuple[Defense, ...]:
  """Parses a sequence of specs and checks their order (temperature first).

  Args:
    specs: defense specs (a single string is one spec); None or () for none.
    num_classes: K, to check ``top-k <= K`` (skipped when None).

  Returns:
    The parsed defenses in order.

  Raises:
    MiaInputError: a bad spec, a temperature after a probability defense, or k > K.
  """
  if specs is None:
    return ()
  if isinstance(specs, (str, Defense)):
    specs = (specs,)
  try:
    specs = tuple(specs)
  except TypeError as e:
    raise MiaInputError(f"defenses: expected a sequence of specs, got {specs!r}") from e
  parsed = tuple(parse_defense(s, f"defenses[{i}]") for i, s in enumerate(specs))
  seen_prob = False
  for i, d in enumerate(parsed):
    if d.name == "temperature" and seen_prob:
      raise MiaInputError(
          f"defenses[{i}]: temperature acts on logits and must come before the probability "
          f"defenses (top-k, round, label-only); got order {[str(d) for d in parsed]}")
    seen_prob |= d.name != "temperature"
    if d.name == "top-k" and num_classes is not None and d.value > num_classes:
      raise MiaInputError(f"defenses[{i}]: top-k needs 1 <= k <= K={num_classes}, got "
                          f"k={d.value}")
  return parsed


def apply_defenses(logits: jax.Array, specs: Iterable[str | Defense] | str | None = ()
                   ) -> jax.Array:
  """The probability vector a defended API returns for ``logits`` float[..., K].

  Temperature specs scale the logits (their product is the effective temperature),
  then softmax, then each probability defense in order. No specs: plain softmax.
  Traceable (usable inside ``jit``); specs are validated on the host first.

  Raises:
    MiaInputError: see :func:`parse_defenses`.
  """
  num_classes = _num_classes(logits, "logits")
  parsed = parse_defenses(specs, num_classes)
  z = logits
  for d in parsed:
    if d.name == "temperature":
      z = z / d.value
  p = jax.nn.softmax(z, axis=-1)
  for d in parsed:
    if d.name == "top-k":
      p = top_k(p, d.value)
    elif d.name == "round":
      p = round_probs(p, d.value)
    elif d.name == "label-only":
      p = label_only(p)
  return p
