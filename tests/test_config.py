"""Config files: every key has a CLI option and a doc entry, YAML == flags, flags win."""

import argparse
import os

import pytest
import yaml

from mia_jax import cli
from mia_jax._validation import MiaInputError
from mia_jax.audit import AuditConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A non-default value for every key, and the command-line spelling of the same value.
VALUES = {
    "dataset": ("gaussian_nb", ["--dataset", "gaussian_nb"]),
    "dataset_options": ({"num_features": 30, "separation": 2.0},
                        ["-D", "num_features=30", "-D", "separation=2.0"]),
    "model": ("small_cnn", ["--model", "small_cnn"]),
    "model_options": ({"channels": [4, 8], "hidden": 16}, ["-M", "channels=[4, 8]", "-M", "hidden=16"]),
    "target_size": (123, ["--target-size", "123"]),
    "optimizer": ("momentum", ["--optimizer", "momentum"]),
    "learning_rate": (0.05, ["--learning-rate", "0.05"]),
    "epochs": (7, ["--epochs", "7"]),
    "batch_size": (16, ["--batch-size", "16"]),
    "weight_decay": (0.001, ["--weight-decay", "0.001"]),
    "attacks": (["loss", "lira"], ["--attacks", "loss,lira"]),
    "layers": (["input", "conv_0"], ["--layers", "input,conv_0"]),
    "gradient_layers": (["fc", "logits"], ["--gradient-layers", "fc,logits"]),
    "num_proxies": (3, ["--num-proxies", "3"]),
    "path_steps": (8, ["--path-steps", "8"]),
    "whitebox_setting": ("nonmember", ["--whitebox-setting", "nonmember"]),
    "target_precision": (0.75, ["--target-precision", "0.75"]),
    "target_fpr": (0.05, ["--target-fpr", "0.05"]),
    "num_reference": (12, ["--num-reference", "12"]),
    "num_shadow": (2, ["--num-shadow", "2"]),
    "rmia_offline_a": (0.5, ["--rmia-offline-a", "0.5"]),
    "defenses": (["top-k=3", "round=2"], ["--defense", "top-k=3", "--defense", "round=2"]),
    "dp_epsilon": (2.0, ["--dp-epsilon", "2"]),
    "noise_multiplier": (1.1, ["--noise-multiplier", "1.1"]),
    "clip_norm": (0.5, ["--clip-norm", "0.5"]),
    "delta": (1e-6, ["--delta", "1e-6"]),
    "shadow_source": ("noisy", ["--shadow-source", "noisy"]),
    "shadow_noise": (0.2, ["--shadow-noise", "0.2"]),
    "lira_augmentations": ("flip", ["--lira-augmentations", "flip"]),
    "seed": (9, ["--seed", "9"]),
    "seed_streams": ("offsets", ["--seed-streams", "offsets"]),
    "microbatch_size": (64, ["--microbatch-size", "64"]),
    "bootstrap_resamples": (50, ["--bootstrap-resamples", "50"]),
    "confidence": (0.9, ["--confidence", "0.9"]),
    "canaries": (20, ["--canaries", "20"]),
    "canary_kind": ("ood", ["--canary-kind", "ood"]),
    "canary_runs": (3, ["--canary-runs", "3"], {"canaries": 20}),
    "estimators": (["one-run"], ["--estimators", "one-run"], {"canaries": 20}),
    "out": ("runs/x", ["--out", "runs/x"]),
    "overwrite": (True, ["--overwrite"]),
    "quiet": (True, ["--quiet"]),
    "report": (False, ["--no-report"]),
}


def _audit_parser():
  p = cli.build_parser()
  sub = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)][0]
  return p, sub.choices["audit"]


def _options(argv):
  p, _ = _audit_parser()
  return cli.audit_options(p.parse_args(["audit", *argv]))


def test_every_key_has_an_option_a_test_value_and_docs():
  _, audit = _audit_parser()
  dests = {a.dest for a in audit._actions} - {"help", "config"}
  assert dests == set(cli.config_keys())
  assert set(VALUES) == set(cli.config_keys())
  doc = open(os.path.join(ROOT, "docs", "config.md")).read()
  for key in cli.config_keys():
    assert f"| `{key}` |" in doc, key


@pytest.mark.parametrize("key", sorted(VALUES))
def test_yaml_key_equals_command_line_option(tmp_path, key):
  value, argv, *needs = VALUES[key]
  needs = needs[0] if needs else {}  # options this one is only valid with
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump({key: value, **needs}))
  from_file = _options(["--config", str(path)])
  from_flags = _options(argv + [a for k, v in needs.items()
                                for a in (f"--{k.replace('_', '-')}", str(v))])
  assert from_file == from_flags
  default_cfg, default_run = _options([])
  assert from_file != (default_cfg, default_run)  # the value really changed something


def test_command_line_overrides_file_and_options_merge(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump({"epochs": 5, "seed": 3,
                                  "dataset_options": {"num_features": 10, "num_train": 100}}))
  cfg, _ = _options(["--config", str(path), "--epochs", "9", "-D", "num_features=20"])
  assert cfg.epochs == 9 and cfg.seed == 3
  assert cfg.dataset_options == {"num_features": 20, "num_train": 100}


def test_effective_config_round_trips_through_to_dict(tmp_path):
  cfg, _ = _options(["--epochs", "3", "--attacks", "loss,rmia", "--layers", "input"])
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(cfg.to_dict()))
  assert _options(["--config", str(path)])[0] == cfg


@pytest.mark.parametrize("content,needle", [
    ({"epochz": 3}, "epochz"),
    ({"dataset_options": [1, 2]}, "dataset_options"),
    ([1, 2, 3], "mapping"),
])
def test_bad_config_files(tmp_path, content, needle):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(content))
  with pytest.raises(MiaInputError, match=needle):
    _options(["--config", str(path)])


def test_missing_config_file():
  with pytest.raises(MiaInputError, match="--config"):
    _options(["--config", "/nonexistent/audit.yaml"])


def test_example_configs_parse():
  folder = os.path.join(ROOT, "experiments", "configs")
  names = sorted(os.listdir(folder))
  assert names
  for name in names:
    cfg, run = _options(["--config", os.path.join(folder, name)])
    assert isinstance(cfg, AuditConfig) and run["out"].startswith("runs/")
