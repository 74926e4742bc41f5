"""Problem sizes: named presets, overridable key by key with ``--sizes key=value``.

``full`` is meant for an accelerator (the H100 targets); ``small`` finishes in a few
minutes on a 2-core CPU; ``smoke`` runs every code path in well under a minute so the
benchmark code cannot rot (CI runs it through tests/test_bench.py).
"""

from __future__ import annotations

from typing import Any

# Per-key meaning (all counts are integers; lists are comma-separated on the command line).
DOC = {
    "wb_models": "white-box models: mlp, small_cnn, resnet",
    "wb_arch": "paper (MLP 784-1024-1024-10, CNN conv32-conv64-fc128, ResNet 16-32-64) or tiny",
    "wb_variants": ("rows (jacobian_rows), scores (layer_scores, 1 proxy), gradients (Nasr "
                    "et al. features)"),
    "wb_n": "white-box examples N",
    "wb_mb": "white-box microbatch size",
    "wb_naive": "examples in the timed per-example jacrev loop (extrapolated to N)",
    "train_m": "numbers of models M trained at once",
    "train_n": "training examples per model",
    "train_epochs": "epochs",
    "train_batch": "batch size",
    "train_seq_cap": "largest M trained one after another (above it: extrapolated)",
    "ckpt_c": "numbers of stacked checkpoints C",
    "ckpt_n": "examples N per checkpoint",
    "ckpt_mb": "microbatch size of the checkpoint passes",
    "warmup": "untimed warm-up calls",
    "reps": "timed repetitions (median and IQR reported)",
    "peak_matmul_n": "n of the n x n matmul that measures peak FLOP/s",
    "peak_copy_mb": "MiB of the elementwise copy that measures peak bytes/s",
}

PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        wb_models=["mlp", "small_cnn", "resnet"], wb_arch="paper",
        wb_variants=["rows", "scores", "gradients"],
        wb_n=65536, wb_mb=4096, wb_naive=32,
        train_m=[1, 8, 64, 256], train_n=2000, train_epochs=5, train_batch=128,
        train_seq_cap=64,
        ckpt_c=[1, 4, 16, 64, 256], ckpt_n=4096, ckpt_mb=1024,
        warmup=1, reps=5, peak_matmul_n=8192, peak_copy_mb=1024),
    "small": dict(
        wb_models=["mlp", "small_cnn", "resnet"], wb_arch="paper",
        wb_variants=["rows", "scores", "gradients"],
        wb_n=256, wb_mb=128, wb_naive=16,
        train_m=[1, 8, 32], train_n=1000, train_epochs=3, train_batch=128, train_seq_cap=32,
        ckpt_c=[1, 4, 16, 64], ckpt_n=512, ckpt_mb=256,
        warmup=1, reps=3, peak_matmul_n=2048, peak_copy_mb=256),
    "smoke": dict(
        wb_models=["mlp", "small_cnn", "resnet"], wb_arch="tiny",
        wb_variants=["rows", "scores", "gradients"],
        wb_n=16, wb_mb=8, wb_naive=2,
        train_m=[2], train_n=256, train_epochs=1, train_batch=128, train_seq_cap=1,
        ckpt_c=[1, 2], ckpt_n=16, ckpt_mb=8,
        warmup=1, reps=2, peak_matmul_n=256, peak_copy_mb=8),
}

_LISTS = {"wb_models", "wb_variants", "train_m", "ckpt_c"}
_STRINGS = {"wb_models", "wb_variants"}
_STRING_SCALARS = {"wb_arch"}


def parse_overrides(items) -> dict[str, Any]:
  """["key=value", ...] -> {key: value}; list keys take comma-separated values."""
  out: dict[str, Any] = {}
  for item in items or ():
    for part in item.split():
      if "=" not in part:
        raise ValueError(f"--sizes: expected key=value, got {part!r}")
      key, value = part.split("=", 1)
      if key not in DOC:
        raise ValueError(f"--sizes: unknown key {key!r}; known keys: {sorted(DOC)}")
      if key in _LISTS:
        vals = [v for v in value.split(",") if v]
        out[key] = vals if key in _STRINGS else [int(v) for v in vals]
      elif key in _STRING_SCALARS:
        out[key] = value
      else:
        out[key] = int(value)
  return out


def resolve(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
  if preset not in PRESETS:
    raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {preset!r}")
  sizes = dict(PRESETS[preset])
  sizes.update(overrides)
  return sizes
