"""Shadow-model attack of Shokri et al., "Membership Inference Attacks Against Machine
Learning Models" (IEEE S&P 2017).

The attacker trains S shadow models that imitate the target on data it controls
(:func:`shadow_data`), so it knows which records each shadow model trained on
(``keep[s, i]``). Every shadow model's prediction vector on its own training records
("in") and on held-out records ("out") becomes a labelled example for an attack model
that tells "in" from "out" (:func:`attack_training_set`). As in the paper, one attack
model per class is trained by default (``per_class=True``): a record is routed to the
attack model of its true label, both when fitting and when scoring. All K class models
are fitted at once by :func:`mia_jax.attacks._classifier.fit_binary_groups` (``vmap``
over a class axis, with per-class masks since classes have different sizes).

Attack features of a prediction vector ``p`` (float[K]):

* ``feature="raw"`` -- ``p`` itself (the paper's choice for per-class models);
* ``feature="sorted"`` -- ``p`` sorted in decreasing order (label-agnostic; the usual
  choice for a single class-agnostic model, ``per_class=False``);
* ``log_probs=True`` -- ``log(max(p, 1e-12))`` of either.

:func:`score_shokri` returns the attack models' member **logits** (higher = member).
Typical use::

    probs_s = predict_probs(model, shadow_vars, x_shadow, stacked=True)   # [S, N, K]
    state = fit_shokri(probs_s, y_shadow, keep)
    scores = score_shokri(state, predict_probs(model, target_vars, x), y)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import (MiaInputError, as_array, check_finite, check_in_range,
                                 check_labels, check_positive_int)
from mia_jax.attacks import _classifier
from mia_jax.defenses import apply_defenses, parse_defenses
from mia_jax.models.base import LayeredModel, Variables
from mia_jax.signals import predict_logits
from mia_jax.streams import stage_seed

FEATURES = ("raw", "sorted")
SOURCES = ("real", "noisy", "marginals", "synthetic")
LOG_FLOOR = 1e-12

__all__ = ["AttackSet", "FEATURES", "SOURCES", "ShadowData", "ShokriConfig", "ShokriState",
           "attack_features", "attack_training_set", "fit_shokri", "predict_probs",
           "score_shokri", "shadow_data"]


# -- prediction API ------------------------------------------------------------------------

def predict_probs(model: LayeredModel, variables: Variables, x, *, defenses=(),
                  stacked: bool = False, microbatch_size: int = 1024) -> np.ndarray:
  """What a (defended) prediction API returns: float[N, K], or float[M, N, K] if stacked.

  Args:
    model: the architecture.
    variables: one model's variables, or M stacked (``stacked=True``).
    x: float[N, *input_shape].
    defenses: specs for :func:`mia_jax.defenses.apply_defenses` (e.g. ``("top-k=3",)``);
      the attacker should query its shadow models through the same API as the target.
    stacked: whether ``variables`` holds M models.
    microbatch_size: examples per compiled chunk.
  """
  specs = parse_defenses(defenses, model.num_classes)
  logits = predict_logits(model, variables, x, microbatch_size=microbatch_size, stacked=stacked)
  return np.asarray(_defended(jnp.asarray(logits), specs))


_defended = jax.jit(apply_defenses, static_argnums=1)


# -- attack features and training set -------------------------------------------------------

def attack_features(probs: jax.Array, feature: str = "raw", log_probs: bool = False) -> jax.Array:
  """Attack-model input of prediction vectors float[..., K] (see module docstring)."""
  if feature not in FEATURES:
    raise MiaInputError(f"feature: expected one of {FEATURES}, got {feature!r}")
  f = -jnp.sort(-probs, axis=-1) if feature == "sorted" else probs
  return jnp.log(jnp.maximum(f, LOG_FLOOR)) if log_probs else f


_features = jax.jit(attack_features, static_argnums=(1, 2))


class AttackSet(NamedTuple):
  """Attack-model training records (host NumPy).

  Attributes:
    probs: float32[R, K] shadow prediction vectors.
    labels: int32[R] true class of each record.
    is_member: bool[R] whether the shadow model trained on the record.
    shadow: int32[R] which shadow model produced the vector.
    index: int64[R] the record's row in the shadow data.
  """
  probs: np.ndarray
  labels: np.ndarray
  is_member: np.ndarray
  shadow: np.ndarray
  index: np.ndarray


def _check_probs(probs, name: str, ndim: int) -> np.ndarray:
  arr = as_array(probs, name)
  if arr.ndim != ndim:
    shape = "[S, N, K]" if ndim == 3 else "[N, K]"
    raise MiaInputError(f"{name}: expected probability vectors float{shape}, got shape "
                        f"{arr.shape}")
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise MiaInputError(f"{name}: expected real values, got dtype={arr.dtype}")
  arr = arr.astype(np.float32)
  check_finite(arr, name)
  if arr.shape[-1] < 2:
    raise MiaInputError(f"{name}: expected K >= 2 classes on the last axis, got {arr.shape}")
  if arr.size and (arr.min() < 0 or arr.max() > 1 + 1e-6):
    raise MiaInputError(f"{name}: expected probabilities in [0, 1], got range "
                        f"[{arr.min()}, {arr.max()}] (pass softmax outputs, not logits)")
  return arr


def _check_keep(keep, shape: tuple[int, int]) -> np.ndarray:
  arr = as_array(keep, "keep")
  if arr.shape != shape:
    raise MiaInputError(f"keep: expected bool{list(shape)} (shadow models x records) to match "
                        f"shadow_probs, got shape {arr.shape}")
  if arr.dtype != bool:
    if not (np.issubdtype(arr.dtype, np.integer) and np.all(np.isin(arr, (0, 1)))):
      raise MiaInputError(f"keep: expected booleans (or 0/1), got dtype={arr.dtype}")
    arr = arr.astype(bool)
  return arr


def _attack_set(probs: np.ndarray, labels: np.ndarray, keep: np.ndarray, balance: bool,
                seed: int) -> AttackSet:
  rng = np.random.default_rng(seed)
  s_idx, r_idx = [], []
  for s in range(keep.shape[0]):  # Loop over shadow models (few), not examples.
    ins, outs = np.flatnonzero(keep[s]), np.flatnonzero(~keep[s])
    if balance:
      m = min(ins.size, outs.size)
      ins = np.sort(rng.choice(ins, m, replace=False))
      outs = np.sort(rng.choice(outs, m, replace=False))
    rows = np.concatenate([ins, outs])
    s_idx.append(np.full(rows.size, s, np.int32))
    r_idx.append(rows)
  s_idx, r_idx = np.concatenate(s_idx), np.concatenate(r_idx).astype(np.int64)
  return AttackSet(probs[s_idx, r_idx], labels[r_idx], keep[s_idx, r_idx], s_idx, r_idx)


def attack_training_set(shadow_probs, labels, keep, *, balance: bool = True,
                        seed: int = 0) -> AttackSet:
  """Builds the attack models' training records from S shadow models.

  Args:
    shadow_probs: float[S, N, K], shadow model s's prediction vectors on the shadow data.
    labels: int[N] true classes of the shadow data.
    keep: bool[S, N]; ``keep[s, i]`` = shadow model s trained on record i ("in").
    balance: per shadow model, subsample the larger of its in/out sets to the size of
      the smaller (uniformly, seeded), as in the paper's equal-size splits.
    seed: seed of the subsampling.

  Returns:
    :class:`AttackSet` (records of shadow 0, then shadow 1, ...).
  """
  probs = _check_probs(shadow_probs, "shadow_probs", 3)
  s, n, k = probs.shape
  y = check_labels(labels, k, "labels")
  if y.shape[0] != n:
    raise MiaInputError(f"labels: expected {n} labels (records of shadow_probs), got {y.shape[0]}")
  keep = _check_keep(keep, (s, n))
  seed = check_positive_int(seed, "seed", minimum=0)
  out = _attack_set(probs, y, keep, bool(balance), seed)
  if out.is_member.all() or not out.is_member.any():
    raise MiaInputError("keep: the attack training set needs both in and out records; every "
                        "shadow model has only one kind (check keep)")
  return out


# -- per-class grouping ---------------------------------------------------------------------

def _group_rows(labels: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows of each group padded to the largest: (rows int64[G, M], mask bool[G, M])."""
  counts = np.bincount(labels, minlength=num_groups)
  width = max(int(counts.max()) if counts.size else 0, 1)
  order = np.argsort(labels, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  sorted_labels = labels[order]
  rank = np.arange(labels.size) - starts[sorted_labels]
  rows = np.zeros((num_groups, width), np.int64)
  mask = np.zeros((num_groups, width), bool)
  rows[sorted_labels, rank] = order
  mask[sorted_labels, rank] = True
  return rows, mask


# -- fit / score ------------------------------------------------------------------------------

@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ShokriConfig:
  """Static settings of a fitted attack (no array leaves)."""
  kind: str
  hidden: int
  feature: str
  log_probs: bool
  per_class: bool
  num_classes: int


class ShokriState(NamedTuple):
  """Fitted Shokri attack.

  Attributes:
    params: attack-model parameters; every leaf has a leading class axis K when
      ``config.per_class`` (model c scores records of class c).
    config: :class:`ShokriConfig` (static).
  """
  params: Any
  config: ShokriConfig


def fit_shokri(shadow_probs, labels, keep, *, per_class: bool = True, kind: str = "logistic",
               feature: str = "raw", log_probs: bool = False, hidden: int = 64,
               steps: int = 500, learning_rate: float = 0.05, l2: float = 0.0,
               balance: bool = True, seed: int = 0) -> ShokriState:
  """Fits the attack model(s) on shadow models' predictions.

  Args:
    shadow_probs: float[S, N, K] prediction vectors of S shadow models on N records.
    labels: int[N] true classes.
    keep: bool[S, N], ``keep[s, i]`` = shadow model s trained on record i.
    per_class: one attack model per class (routing by true label), else one model.
    kind: attack model, "logistic" or "mlp".
    feature: "raw" or "sorted" prediction vector.
    log_probs: use log-probabilities.
    hidden, steps, learning_rate, l2: attack-model training (see
      :func:`mia_jax.attacks._classifier.fit_binary`).
    balance: balance in/out per shadow model (:func:`attack_training_set`), and weigh
      in/out equally in each attack model's loss.
    seed: subsampling and initialization seed.

  Returns:
    :class:`ShokriState`.

  Raises:
    MiaInputError: a bad argument, or (per_class) a class without both in and out
      records among the attack training records.
  """
  if feature not in FEATURES:
    raise MiaInputError(f"feature: expected one of {FEATURES}, got {feature!r}")
  hidden, steps, learning_rate, l2, seed = _classifier.check_hyper(
      kind, hidden, steps, learning_rate, l2, seed)
  data = attack_training_set(shadow_probs, labels, keep, balance=balance, seed=seed)
  num_classes = data.probs.shape[1]
  opts = dict(kind=kind, hidden=hidden, steps=steps, learning_rate=learning_rate, l2=l2,
              balance=bool(balance), seed=seed)
  config = ShokriConfig(kind, hidden, feature, bool(log_probs), bool(per_class), num_classes)
  if per_class:  # Every class needs in and out records: checked before any compute.
    rows, mask = _group_rows(data.labels, num_classes)
    member = data.is_member[rows] & mask
    n_in, n_out = member.sum(1), (~data.is_member[rows] & mask).sum(1)
    bad = np.flatnonzero((n_in == 0) | (n_out == 0))
    if bad.size:
      raise MiaInputError(
          f"labels: class(es) {bad[:5].tolist()} have no in or no out shadow records "
          f"(in={n_in[bad[:5]].tolist()}, out={n_out[bad[:5]].tolist()}); per-class attack "
          f"models need both; add shadow data for them or use per_class=False")
  feats = np.asarray(_features(jnp.asarray(data.probs), feature, bool(log_probs)))
  if not per_class:
    return ShokriState(_classifier.fit_binary(feats, data.is_member, **opts), config)
  params = _classifier.fit_binary_groups(feats[rows], member, mask, **opts)
  return ShokriState(params, config)


def score_shokri(state: ShokriState, probs, labels) -> np.ndarray:
  """Membership scores float[N] (attack logits; higher = more likely member).

  Args:
    state: from :func:`fit_shokri`.
    probs: float[N, K] the target's prediction vectors (through the same defended API).
    labels: int[N] true classes (route each record to its class's attack model).
  """
  if not isinstance(state, ShokriState):
    raise MiaInputError(f"state: expected a ShokriState from fit_shokri, got "
                        f"{type(state).__name__}")
  cfg = state.config
  p = _check_probs(probs, "probs", 2)
  if p.shape[1] != cfg.num_classes:
    raise MiaInputError(f"probs: expected K={cfg.num_classes} classes (as the shadow models), "
                        f"got {p.shape[1]}")
  y = check_labels(labels, cfg.num_classes, "labels")
  if y.shape[0] != p.shape[0]:
    raise MiaInputError(f"labels: expected {p.shape[0]} labels to match probs, got {y.shape[0]}")
  if p.shape[0] == 0:
    return np.zeros(0, np.float32)
  feats = np.asarray(_features(jnp.asarray(p), cfg.feature, cfg.log_probs))
  if not cfg.per_class:
    return np.asarray(_classifier.predict_binary(cfg.kind, state.params, feats))
  rows, mask = _group_rows(y, cfg.num_classes)
  pred = np.asarray(_classifier.predict_binary_groups(cfg.kind, state.params, feats[rows]))
  out = np.zeros(p.shape[0], np.float32)
  out[rows[mask]] = pred[mask]
  return out


# -- shadow data ------------------------------------------------------------------------------

class ShadowData(NamedTuple):
  """Attacker's data for training shadow models: x float32[M, D], y int32[M].

  For source "synthetic", ``queries`` int32[M] holds the target queries spent on each
  emitted record and ``attempted`` the number of records searched for; else None.
  """
  x: np.ndarray
  y: np.ndarray
  queries: np.ndarray | None = None
  attempted: int | None = None


def _check_xy(x, y, source: str) -> tuple[np.ndarray, np.ndarray]:
  if x is None or y is None:
    raise MiaInputError(f"x: source {source!r} needs records x float[N, D] and labels y int[N]")
  x = as_array(x, "x")
  if x.ndim != 2 or x.shape[0] == 0:
    raise MiaInputError(f"x: expected a non-empty float[N, D] array, got shape {x.shape}")
  x = x.astype(np.float32)
  check_finite(x, "x")
  y = check_labels(y, np.iinfo(np.int32).max, "y")
  if y.shape[0] != x.shape[0]:
    raise MiaInputError(f"y: expected {x.shape[0]} labels to match x, got {y.shape[0]}")
  return x, y


def _marginal_sample(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, labels: np.ndarray,
                     class_conditional: bool) -> np.ndarray:
  """Each feature of each new record drawn independently from its empirical marginal
  (within the record's class when ``class_conditional``)."""
  m, d = labels.size, x.shape[1]
  u = rng.random((m, d))
  if not class_conditional:
    pick = np.minimum((u * x.shape[0]).astype(np.int64), x.shape[0] - 1)
    return x[pick, np.arange(d)]
  order = np.argsort(y, kind="stable")
  counts = np.bincount(y, minlength=labels.max() + 1)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  n_c = counts[labels][:, None]
  pick = starts[labels][:, None] + np.minimum((u * n_c).astype(np.int64), n_c - 1)
  return x[order[pick], np.arange(d)]


def shadow_data(source: str, *, num_records: int, seed: int = 0, x=None, y=None,
                noise: float = 0.1, binary: bool | None = None, class_conditional: bool = True,
                query_fn: Callable | None = None, num_features: int | None = None,
                synthesis_options: Mapping[str, Any] | None = None) -> ShadowData:
  """Data for the shadow models, from one of the paper's sources.

  Args:
    source: one of :data:`SOURCES`:

      * "real" -- ``num_records`` rows drawn without replacement from the given real
        records ``(x, y)`` (which should be disjoint from the target's training data);
      * "noisy" -- rows of ``(x, y)`` (without replacement when ``num_records <= N``),
        perturbed: for binary features exactly ``round(noise * D)`` randomly chosen
        features per record are flipped; for real-valued features Gaussian noise with
        std ``noise * std_j`` (feature j's std in x) is added. Labels are kept;
      * "marginals" -- labels drawn from y's empirical distribution, then every
        feature independently from its empirical marginal in x (within the record's
        class when ``class_conditional``);
      * "synthetic" -- model-based synthesis (:func:`mia_jax.synthesis.synthesize`)
        querying ``query_fn``, with classes ``arange(num_records) % K``; only the
        records it emitted are returned (so possibly fewer than ``num_records``).
    num_records: records to produce (attempt, for "synthetic").
    seed: NumPy seed (real/noisy/marginals) or ``jax.random.key(seed)`` (synthetic).
    x, y: attacker's records float[N, D] and labels int[N] (real/noisy/marginals).
    noise: flip fraction (binary) or relative noise std (real-valued), in [0, 1].
    binary: whether x is binary (default: detect, all values in {0, 1}).
    class_conditional: for "marginals", sample each class's features from that class.
    query_fn: for "synthetic": traceable ``float[B, D] -> probs float[B, K]``.
    num_features: for "synthetic": D (default ``x.shape[1]`` when x is given).
    synthesis_options: for "synthetic": keyword arguments of
      :func:`mia_jax.synthesis.synthesize` (k_max, k_min, conf_min, rej_max, max_iters,
      feature_sampler); ``k_max`` defaults to ``ceil(D / 2)``.

  Returns:
    :class:`ShadowData` (x float32[M, D], y int32[M]).

  Raises:
    MiaInputError: a bad argument, named in the message.
  """
  if source not in SOURCES:
    raise MiaInputError(f"source: expected one of {SOURCES}, got {source!r}")
  num_records = check_positive_int(num_records, "num_records")
  seed = check_positive_int(seed, "seed", minimum=0)
  if source == "synthetic":
    return _synthetic(query_fn, num_records, seed, x, num_features, synthesis_options)
  x, y = _check_xy(x, y, source)
  noise = check_in_range(noise, "noise", 0.0, 1.0)
  rng = np.random.default_rng(seed)
  n, d = x.shape
  if source == "real":
    if num_records > n:
      raise MiaInputError(f"num_records: source 'real' draws without replacement from the "
                          f"{n} given records, got {num_records}")
    idx = rng.choice(n, num_records, replace=False)
    return ShadowData(x[idx], y[idx])
  if source == "marginals":
    labels = y[rng.integers(0, n, num_records)]
    return ShadowData(_marginal_sample(rng, x, y, labels, bool(class_conditional))
                      .astype(np.float32), labels)
  # noisy
  idx = rng.choice(n, num_records, replace=num_records > n)
  xs, ys = x[idx].copy(), y[idx]
  is_binary = bool(np.all((x == 0) | (x == 1))) if binary is None else bool(binary)
  if is_binary:
    if not np.all((x == 0) | (x == 1)):
      raise MiaInputError("binary: binary=True but x has values other than 0 and 1")
    n_flip = int(round(noise * d))
    if n_flip:
      ranks = np.argsort(rng.random((num_records, d)), axis=1)[:, :n_flip]
      rows = np.arange(num_records)[:, None]
      xs[rows, ranks] = 1.0 - xs[rows, ranks]
  else:
    xs = xs + rng.normal(size=xs.shape).astype(np.float32) * (noise * x.std(0))
  return ShadowData(xs.astype(np.float32), ys)


def _synthetic(query_fn, num_records, seed, x, num_features, options) -> ShadowData:
  from mia_jax.synthesis import synthesize  # noqa: PLC0415 - keeps module import light.
  if query_fn is None:
    raise MiaInputError("query_fn: source 'synthetic' needs the target's query function "
                        "float[B, D] -> probs float[B, K]")
  if num_features is None:
    if x is None:
      raise MiaInputError("num_features: source 'synthetic' needs num_features (or x)")
    num_features = as_array(x, "x").shape[-1]
  num_features = check_positive_int(num_features, "num_features")
  if not callable(query_fn):
    raise MiaInputError(f"query_fn: expected a callable, got {query_fn!r}")
  try:
    out = jax.eval_shape(query_fn, jax.ShapeDtypeStruct((1, num_features), jnp.float32))
    num_classes = int(out.shape[-1])
  except Exception as e:  # noqa: BLE001 - re-raised with the argument's name.
    raise MiaInputError(f"query_fn: failed on float32[1, {num_features}] ({e})") from e
  options = dict(options or {})
  options.setdefault("k_max", math.ceil(num_features / 2))
  reserved = {"num_records", "num_features", "classes", "key"} & set(options)
  if reserved:
    raise MiaInputError(f"synthesis_options: {sorted(reserved)} are set by shadow_data")
  classes = np.arange(num_records) % num_classes
  try:
    res = synthesize(query_fn, num_records=num_records, num_features=num_features,
                     classes=classes, key=jax.random.key(seed), **options)
  except TypeError as e:
    raise MiaInputError(f"synthesis_options: {e}") from e
  return ShadowData(res.records[res.success], res.labels[res.success],
                    res.queries[res.success], int(num_records))


# -- the registry's shape (mia_jax.attacks.base): fit(config, side) -> state, score ----------

from mia_jax.attacks.base import Attack, option  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ShokriAttackConfig:
  """The attack models' settings (see :func:`fit_shokri`). ``per_class=None``: one attack
  model per class when every class has in and out shadow records, else one class-agnostic
  model (reported as ``per_class: false``)."""
  per_class: bool | None = None
  kind: str = "logistic"
  feature: str = "raw"
  log_probs: bool = False
  seed: int = 0


def fit_attack(config: ShokriAttackConfig, side) -> dict:
  """Fits the attack model(s) on ``side["shadow"]``: the shadow models' (defended) prediction
  vectors ``probs [S, R, K]``, the records' ``labels [R]`` and ``keep [S, R]``."""
  sh = side["shadow"]
  labels, keep = np.asarray(sh["labels"]), np.asarray(sh["keep"], bool)
  num_classes = np.shape(sh["probs"])[-1]
  uncovered = []
  per_class = config.per_class
  if per_class is None:
    counts_in = np.stack([np.bincount(labels[k], minlength=num_classes) for k in keep])
    counts_out = np.stack([np.bincount(labels[~k], minlength=num_classes) for k in keep])
    uncovered = np.flatnonzero((counts_in.sum(0) == 0) | (counts_out.sum(0) == 0)).tolist()
    per_class = not uncovered
    if uncovered and sh.get("log"):
      sh["log"](f"shokri: classes {uncovered} have no in or no out shadow records; "
                "fitting one class-agnostic attack model")
  state = fit_shokri(sh["probs"], labels, keep, per_class=per_class, kind=config.kind,
                     feature=config.feature, log_probs=config.log_probs, seed=config.seed)
  return {"shokri": state, "uncovered": uncovered}


def score_attack(state: dict, signals) -> jax.Array:
  """Pure: every class's attack model scores every record ([K, N] logits, at most K times
  the work of routing, in no more memory than the inputs), and each record keeps its own
  class's (``per_class``) -- :func:`score_shokri` with the routing done by a gather."""
  st = state["shokri"]
  cfg = st.config
  feats = _features(jnp.asarray(signals["probs"], jnp.float32), cfg.feature, cfg.log_probs)
  one = jax.vmap(lambda p, f: _classifier.binary_logit(cfg.kind, p, f), in_axes=(None, 0))
  if not cfg.per_class:
    return one(st.params, feats)
  every = jax.vmap(one, in_axes=(0, None))(st.params, feats)  # [K, N]
  labels = jnp.asarray(signals["labels"], jnp.int32)
  return jnp.take_along_axis(every, labels[None], axis=0)[0]


def _details(config, state, signals):
  fields = {"per_class": bool(state["shokri"].config.per_class), "decision_threshold": 0.0}
  if state["uncovered"]:
    fields["classes_without_shadow_records"] = list(state["uncovered"])
  return {}, fields


ATTACK = Attack(
    name="shokri", family="shadow",
    summary="attack model(s) trained on shadow models' in/out prediction vectors",
    paper="Shokri et al., S&P 2017", needs=("probs", "labels"), attacker=("shadow",),
    configure=lambda o: ShokriAttackConfig(seed=stage_seed(
        int(option(o, "seed", 0)), "shokri-attack", option(o, "seed_streams", "named"))),
    fit=fit_attack, score=score_attack, details=_details)
ATTACKS = (ATTACK,)
