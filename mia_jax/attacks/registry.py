"""The single list of attacks. The audit, ``mia-jax attack``, the CLI's choices and help,
``docs/attacks.md``'s table and the report all read it.

Adding an attack is one module (an :class:`mia_jax.attacks.base.Attack` with its config
dataclass, ``fit`` and ``score``) plus one line in :data:`_BUILTIN` -- or, for an attack
that lives outside mia-jax, one call to :func:`register`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from mia_jax._validation import MiaInputError
from mia_jax.attacks import gradient_norm, lira, nasr, rmia, shokri, stolen_memories, threshold
from mia_jax.attacks.base import FAMILIES, Attack

_BUILTIN: tuple[Attack, ...] = (
    *threshold.ATTACKS,
    *lira.ATTACKS,
    *rmia.ATTACKS,
    *shokri.ATTACKS,
    *gradient_norm.ATTACKS,
    *stolen_memories.ATTACKS,
    *nasr.ATTACKS,
)

_REGISTRY: dict[str, Attack] = {a.name: a for a in _BUILTIN}


def register(attack: Attack) -> Attack:
  """Adds an attack (its name must be new). Returns it."""
  if not isinstance(attack, Attack):
    raise MiaInputError(f"attack: expected a mia_jax.attacks.base.Attack, got "
                        f"{type(attack).__name__}")
  if attack.name in _REGISTRY:
    raise MiaInputError(f"attack: {attack.name!r} is already registered")
  if "/" in attack.name or "," in attack.name or not attack.name:
    raise MiaInputError(f"attack: a name may not be empty or hold '/' or ',': {attack.name!r}")
  _REGISTRY[attack.name] = attack
  return attack


def unregister(name: str) -> None:
  if name in {a.name for a in _BUILTIN}:
    raise MiaInputError(f"attack: {name!r} is built in")
  _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(attack: Attack) -> Iterator[Attack]:
  """``with registered(attack): ...`` -- registered for the block only."""
  register(attack)
  try:
    yield attack
  finally:
    unregister(attack.name)


def all_attacks() -> tuple[Attack, ...]:
  """Every attack, by family (FAMILIES' order), then in registration order."""
  return tuple(sorted(_REGISTRY.values(), key=lambda a: FAMILIES.index(a.family)))


def names(family: str | None = None) -> tuple[str, ...]:
  return tuple(a.name for a in all_attacks() if family is None or a.family == family)


def get(name: str) -> Attack:
  if name not in _REGISTRY:
    raise MiaInputError(f"attacks: unknown attack {name!r}; expected one of {list(names())}")
  return _REGISTRY[name]


def select(chosen: Sequence[str]) -> tuple[Attack, ...]:
  """The named attacks in registry order (each once), or a named error."""
  chosen = list(dict.fromkeys(chosen))
  unknown = [a for a in chosen if a not in _REGISTRY]
  if unknown or not chosen:
    raise MiaInputError(f"attacks: unknown attack(s) {unknown}; expected some of "
                        f"{list(names())}")
  return tuple(a for a in all_attacks() if a.name in chosen)


def help_text() -> str:
  """One line per attack, for the command line's help."""
  return "; ".join(f"{a.name} ({a.family})" for a in all_attacks())


def markdown_table() -> str:
  """``docs/attacks.md``'s table of every attack (tests keep the file equal to this)."""
  rows = ["| name | family | what it scores (higher = member) | paper | needs |",
          "|---|---|---|---|---|"]
  for a in all_attacks():
    needs = ", ".join(f"`{s}`" for s in a.needs + a.attacker)
    rows.append(f"| `{a.name}` | {a.family} | {a.summary} | {a.paper} | {needs} |")
  return "\n".join(rows)
