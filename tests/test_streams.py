"""Named random streams (mia_jax.streams): every stage of a run draws from a stream named
after it; runs made before named streams keep their offset seeds."""

import dataclasses
import itertools
import json

import numpy as np
import pytest

from mia_jax import audit, streams
from mia_jax._validation import MiaInputError

# The seeds each stage had before named streams, written out independently of the
# library's table (the expressions the code used at each call site).
OLD_OFFSETS = {
    "split": lambda s: s, "target": lambda s: s, "reference": lambda s: s + 1,
    "reference-keep": lambda s: s + 17, "shadow": lambda s: s + 2,
    "shadow-keep": lambda s: s + 23, "shadow-data": lambda s: s + 29,
    "shokri-attack": lambda s: s, "bootstrap": lambda s: s,
    "whitebox-partition": lambda s: s, "whitebox-shadow": lambda s: (s, 7919),
    "target-proxies": lambda s: s + 1, "shadow-proxies": lambda s: s + 2,
    "meta-attack": lambda s: s, "nasr-network": lambda s: s,
}


def test_offsets_scheme_gives_the_seeds_runs_had_before():
  assert set(OLD_OFFSETS) == set(streams.STAGES)
  for seed in (0, 1, 7, 2**31):
    for name, old in OLD_OFFSETS.items():
      assert streams.stage_seed(seed, name, "offsets") == old(seed), name
    assert streams.part_seed(seed, 3, "offsets") == seed * 1009 + 3


def test_named_streams_are_deterministic_and_distinct():
  seeds = range(12)
  drawn = {(s, n): streams.stage_seed(s, n) for s in seeds for n in streams.STAGES}
  assert drawn == {(s, n): streams.stage_seed(s, n, "named") for s, n in drawn}
  assert all(isinstance(v, int) and 0 <= v < 2**32 for v in drawn.values())
  # no two (run seed, stage) pairs share a stream, across runs too
  assert len(set(drawn.values())) == len(drawn)
  parts = {streams.part_seed(v, i) for v in list(drawn.values())[:20] for i in range(4)}
  assert len(parts) == 80


def test_offsets_made_stages_of_neighbouring_seeds_collide_named_streams_do_not():
  """The reason for named streams: with offsets, run seed 0's shadow models (seed + 2)
  drew exactly what run seed 1's reference models (seed + 1) drew."""
  def clashes(scheme):
    seen = {}
    for s, n in itertools.product(range(30), ("reference", "shadow", "shadow-keep",
                                              "reference-keep", "shadow-data")):
      seen.setdefault(streams.stage_seed(s, n, scheme), set()).add((s, n))
    return [v for v in seen.values() if len(v) > 1]
  assert {(0, "shadow"), (1, "reference")} in clashes("offsets")
  assert clashes("named") == []


def test_bad_stage_or_scheme_is_refused():
  with pytest.raises(MiaInputError, match="unknown stage 'refernce'"):
    streams.stage_seed(0, "refernce")
  with pytest.raises(MiaInputError, match="seed_streams"):
    streams.stage_seed(0, "reference", "legacy")
  with pytest.raises(MiaInputError, match="seed_streams"):
    audit.AuditConfig(seed_streams="legacy")


def test_the_scheme_changes_what_a_run_draws():
  named = audit.AuditConfig(dataset="purchase_like", target_size=100, seed=4)
  offsets = audit.AuditConfig(dataset="purchase_like", target_size=100, seed=4,
                              seed_streams="offsets")
  assert named.stage_seed("reference") != offsets.stage_seed("reference") == 5
  a, b = audit.prepare(named).split, audit.prepare(offsets).split
  assert not np.array_equal(a.target_in, b.target_in)
  assert np.array_equal(audit.prepare(named).split.target_in, a.target_in)  # same seed, same split
  ka, kb = audit.reference_keep(named, 200), audit.reference_keep(offsets, 200)
  assert not np.array_equal(ka, kb)
  assert np.array_equal(kb.sum(0), ka.sum(0))  # both balanced: IN for half the models


def _older_config(tmp_path, **changes):
  cfg = audit.AuditConfig(dataset="purchase_like", epochs=1, attacks=("loss",), target_size=50,
                          bootstrap_resamples=0, **changes)
  older = cfg.to_dict()
  del older["seed_streams"]  # as written before named streams
  run = tmp_path / "r"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(older))
  return run


def test_a_run_made_before_named_streams_resumes_only_with_its_offsets(tmp_path):
  run = _older_config(tmp_path)
  new = audit.AuditConfig(dataset="purchase_like", epochs=1, attacks=("loss",), target_size=50,
                          bootstrap_resamples=0)
  with pytest.raises(MiaInputError, match="--seed-streams offsets"):
    audit.run_audit(new, str(run))
  import dataclasses
  res = audit.run_audit(dataclasses.replace(new, seed_streams="offsets"), str(run))
  assert res["config"]["seed_streams"] == "offsets"
  from mia_jax.report import write_report
  write_report(str(run))
  assert "| seed | 0 (offsets streams) |" in (run / "report.md").read_text()
  assert audit.saved_config({"epochs": 3})["seed_streams"] == "offsets"


def test_a_checkpoint_run_made_before_named_streams_reads_back_with_offsets():
  from mia_jax.checkpoints import config_from_dict
  d = audit.AuditConfig(attacks=("loss",)).to_dict()
  del d["seed_streams"]
  assert config_from_dict(d).seed_streams == "offsets"
  assert config_from_dict({**d, "seed_streams": "named"}).seed_streams == "named"


def test_white_box_attack_streams_on_a_users_linen_model():
  """On a plain flax.linen model (from_linen): Stolen Memories with the same seed and scheme
  gives the same attacker; the two schemes draw different proxies; and "offsets" draws
  exactly the seeds the attack used before named streams (layer i's proxies:
  (seed + 1) * 1009 + i)."""
  import flax.linen as nn
  import jax

  from mia_jax.attacks import stolen_memories as sm
  from mia_jax.models import from_linen
  from mia_jax.train import TrainConfig, train_model, train_models

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(features=8)(x.reshape((x.shape[0], -1))))
      return nn.Dense(features=3)(x)

  model = from_linen(MLP(), input_shape=(5,), num_classes=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(240, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
  tcfg = TrainConfig(epochs=2, batch_size=32)
  target = train_model(model, x[:40], y[:40], config=tcfg, seed=0).variables
  cfg = sm.StolenMemoriesConfig(layers=(sm.default_layers(model)[-1],))

  def fit(scheme):
    return sm.fit_attacker(model, target, x[40:], y[40:], target_train_size=40, config=cfg,
                           train_config=tcfg, seed=5, seed_streams=scheme)

  def proxy_leaves(state):
    return jax.tree.leaves(state.proxies.variables)

  a, b, old = fit("named"), fit("named"), fit("offsets")
  for u, v in zip(proxy_leaves(a), proxy_leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  assert a.threshold == b.threshold
  assert any(not np.array_equal(np.asarray(u), np.asarray(v))
             for u, v in zip(proxy_leaves(a), proxy_leaves(old)))
  # The legacy proxies, rebuilt by hand from the old expressions.
  parts = sm.partition_attacker_data(200, target_train_size=40, setting="shadow", seed=5)
  size = min(40, parts.proxy.size)
  want_cfg = dataclasses.replace(cfg, proxy_size=size,
                                 num_proxies=max(1, min(cfg.num_proxies, parts.proxy.size // size)))
  px, py = x[40:][parts.proxy], y[40:][parts.proxy]
  layer = cfg.layers[0]
  feats = sm.layer_features(model, target, px, layer)
  keep = sm._proxy_keep(px.shape[0], want_cfg, np.random.default_rng(5 + 1))
  want = train_models(model.upper(layer), feats, py, keep, config=tcfg,
                      seed=(5 + 1) * 1009 + 0).variables
  if hasattr(model, "freeze_below"):
    want = model.freeze_below(layer, want, target)
  for u, v in zip(jax.tree.leaves(old.proxies.variables[layer]), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
