"""Attack many checkpoints at once (for example one per epoch of a training run).

* :func:`load_checkpoint_stack` loads a directory of orbax checkpoints written by
  :func:`mia_jax.train.save_variables` (sorted by name) -- or one checkpoint that already
  holds a stack -- and stacks them on a leading axis C.
* :func:`attack_checkpoints` computes the black-box signals of all C checkpoints in one
  vmapped, compiled, microbatched pass and scores every threshold attack on each.
* :func:`attack_run` adds LiRA and RMIA per checkpoint when the run also saved reference
  models at the same epochs (``mia-jax train --with-reference``): checkpoint c is
  compared with the reference models after the same number of epochs.
* :func:`plot_checkpoint_metrics` plots AUC and TPR at 0.1% FPR against checkpoint index.

``mia-jax train --save-every K`` writes such a run; ``mia-jax attack --run DIR`` attacks it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from mia_jax._validation import MiaInputError
from mia_jax.models.base import LayeredModel, Variables, stack_variables

REPORT_FPRS = (0.1, 0.01, 0.001, 0.0001, 0.0)


def list_checkpoints(path: str | os.PathLike) -> list[str]:
  """Checkpoint directories (those holding a ``state`` folder) in ``path``, sorted by name."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise MiaInputError(f"checkpoints: {path} is not a directory")
  names = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n, "state")))
  if not names:
    raise MiaInputError(f"checkpoints: {path} holds no mia-jax checkpoints (sub-directories "
                        "written by save_variables)")
  return [os.path.join(path, n) for n in names]


def load_checkpoint_stack(path: str | os.PathLike, model: LayeredModel
                          ) -> tuple[Variables, list[str]]:
  """Loads C checkpoints as one stacked variables pytree (leading axis C).

  Args:
    path: a directory of checkpoints (one per epoch, say), or one checkpoint whose leaves
      already carry a leading model axis.
    model: the architecture; every checkpoint must match its variables' structure and shapes.
  Returns:
    (stacked variables, checkpoint names).
  Raises:
    MiaInputError: empty directory, or a checkpoint whose structure/shapes differ, naming it.
  """
  from mia_jax.train import load_variables
  path = os.fspath(path)
  like = jax.eval_shape(model.init, jax.random.key(0))
  if os.path.isdir(os.path.join(path, "state")):  # one checkpoint holding a stack
    variables, _ = load_variables(path)
    ref = jax.tree.structure(like)
    if jax.tree.structure(variables) != ref:
      raise MiaInputError(f"checkpoints: {path} does not hold variables of model {model.name!r}")
    sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(variables)}
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(like)):
      if tuple(np.shape(got)[1:]) != tuple(want.shape):
        raise MiaInputError(f"checkpoints: {path} is not a stack of model {model.name!r} "
                            f"variables (leaf {np.shape(got)} vs {want.shape})")
    if len(sizes) != 1:
      raise MiaInputError(f"checkpoints: {path} leaves have different leading sizes {sizes}")
    return variables, [f"{os.path.basename(path)}[{i}]" for i in range(sizes.pop())]
  trees, names = [], []
  for ckpt in list_checkpoints(path):
    try:
      v, _ = load_variables(ckpt, like=like)
    except MiaInputError as e:
      raise MiaInputError(f"checkpoints: {os.path.basename(ckpt)} differs from the model's "
                          f"structure or shapes: {e}") from e
    trees.append(v)
    names.append(os.path.basename(ckpt))
  return stack_variables(trees), names


REFERENCE_ATTACKS = ("lira", "lira-offline", "lira-fixed-variance", "rmia", "rmia-offline")


def attack_checkpoints(model: LayeredModel, stacked: Variables, x, y, is_member, *,
                       attacks: Sequence[str] = ("loss", "confidence", "entropy",
                                                 "modified_entropy"),
                       microbatch_size: int = 1024, defenses=(), return_signals: bool = False
                       ) -> list[dict[str, Any]]:
  """Threshold attacks on every checkpoint of a stack.

  Args:
    model: the architecture; stacked: variables with leading axis C.
    x, y: the evaluation examples; is_member: bool[N] ground truth.
    attacks: names from :data:`mia_jax.attacks.threshold.THRESHOLD_ATTACKS`.
    microbatch_size: examples per compiled chunk (memory bound: C x microbatch_size).
    defenses: prediction-API defenses the attacks see (see :mod:`mia_jax.defenses`).
    return_signals: also return the signals dict ([C, N] arrays).
  Returns:
    One dict per checkpoint: {"train_accuracy", "test_accuracy", "attacks": {name: metrics}}
    (and the signals, with ``return_signals``).
  """
  from mia_jax._validation import check_membership
  from mia_jax.attacks.threshold import threshold_scores
  from mia_jax.metrics import summarize
  from mia_jax.signals import blackbox_signals
  is_member = check_membership(is_member, n=np.shape(x)[0])
  sig = blackbox_signals(model, stacked, x, y, microbatch_size=microbatch_size, stacked=True,
                         defenses=defenses)
  correct = sig["correct"] if not defenses else blackbox_signals(
      model, stacked, x, y, microbatch_size=microbatch_size, stacked=True)["correct"]
  scores = threshold_scores(sig, attacks)
  out = []
  for c in range(sig["loss"].shape[0]):
    out.append({
        "train_accuracy": float(correct[c][is_member].mean()),
        "test_accuracy": float(correct[c][~is_member].mean()),
        "attacks": {a: summarize(s[c], is_member, REPORT_FPRS) for a, s in scores.items()},
    })
  return (out, sig) if return_signals else out


def plot_checkpoint_metrics(metrics: list[dict], names: Sequence[str], path: str) -> None:
  """AUC and TPR at 0.1% FPR of every attack against checkpoint index (PNG)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 4))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 3)
  idx = np.arange(len(metrics))
  for attack in metrics[0]["attacks"]:
    axes[0].plot(idx, [m["attacks"][attack]["auc"] for m in metrics], marker="o", label=attack)
    axes[1].plot(idx, [m["attacks"][attack]["tpr_at_fpr"]["0.001"] for m in metrics], marker="o",
                 label=attack)
  axes[2].plot(idx, [m["train_accuracy"] for m in metrics], marker="o", label="train (members)")
  axes[2].plot(idx, [m["test_accuracy"] for m in metrics], marker="o", label="test (non-members)")
  for ax, title in zip(axes, ("AUC", "TPR at 0.1% FPR", "accuracy")):
    ax.set_title(title)
    ax.set_xlabel("checkpoint index")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{len(metrics)} checkpoints ({names[0]} ... {names[-1]})")
  fig.tight_layout()
  import io

  from mia_jax._io import write_bytes_atomic
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  write_bytes_atomic(path, buf.getvalue())


def config_from_dict(d: dict):
  """AuditConfig from a saved ``config.json`` (lists back to tuples)."""
  from mia_jax.audit import AuditConfig
  d = dict(d)
  try:
    return AuditConfig(**d)
  except TypeError as e:
    raise MiaInputError(f"run: config.json holds unknown options ({e})") from e


def _reference_attacks_per_checkpoint(config, setup, stacked, names, sig, ev, is_member,
                                      ref_attacks, ref_dir, metrics, microbatch_size, log):
  """LiRA / RMIA on checkpoint c against the reference models saved after the same epoch."""
  from mia_jax.audit import reference_attacks, reference_keep
  from mia_jax.metrics import summarize
  from mia_jax.signals import blackbox_signals
  from mia_jax.train import load_variables
  keep = reference_keep(config, ev.size)
  like = jax.eval_shape(jax.vmap(setup.model.init),
                        jax.random.split(jax.random.key(0), config.num_reference))
  aux = setup.split.auxiliary
  tgt_z = blackbox_signals(setup.model, stacked, setup.x[aux], setup.y[aux], stacked=True,
                           microbatch_size=microbatch_size, defenses=config.defenses)["confidence"]
  pool = np.concatenate([ev, aux])
  for c, name in enumerate(names):
    refs, _ = load_variables(os.path.join(ref_dir, name.split("[")[0]), like=like)
    r = blackbox_signals(setup.model, refs, setup.x[pool], setup.y[pool], stacked=True,
                         microbatch_size=microbatch_size, defenses=config.defenses)
    ne = ev.size
    runs = reference_attacks(sig["scaled_logit"][c], r["scaled_logit"][:, :ne],
                             sig["confidence"][c], tgt_z[c], r["confidence"][:, :ne],
                             r["confidence"][:, ne:], keep,
                             rmia_offline_a=config.rmia_offline_a, discrete=bool(config.defenses))
    for a in ref_attacks:
      metrics[c]["attacks"][a] = summarize(np.asarray(runs[a](), np.float64), is_member,
                                           REPORT_FPRS)
      metrics[c]["attacks"][a]["num_reference"] = config.num_reference
    log(f"{name}: {', '.join(ref_attacks)} with {config.num_reference} reference models")


# White-box attacks that need nothing but each checkpoint's weights (no proxies or shadows).
CHECKPOINT_WHITEBOX = ("gradient-norm",)


def _gradient_norms_per_checkpoint(model, stacked, x, y, is_member, metrics, microbatch_size):
  """The ``gradient-norm`` attack (total and per stage) on every checkpoint, from one
  compiled pass vmapped over the stack; entries as in the audit's results."""
  from mia_jax.metrics import summarize
  from mia_jax.whitebox import gradient_norms
  norms = gradient_norms(model, stacked, x, y, microbatch_size=microbatch_size, stacked=True)
  for c, m in enumerate(metrics):
    entry = summarize(-norms["total"][c].astype(np.float64), is_member, REPORT_FPRS)
    entry["layers"] = {stage: summarize(-n[c].astype(np.float64), is_member, REPORT_FPRS)
                       for stage, n in norms.items() if stage != "total"}
    m["attacks"]["gradient-norm"] = entry


def train_run(config, out_dir: str, *, save_every: int = 1, with_reference: bool = False,
              progress=None, log=lambda s: None) -> list[str]:
  """Trains the target of ``config`` (same data split as ``mia-jax audit``) and saves a
  checkpoint every ``save_every`` epochs into ``out_dir/checkpoints/epoch-XXXXXX``.

  With ``with_reference``, also trains ``config.num_reference`` reference models exactly
  as the audit does (same keep matrix, data and seeds) and saves their stack at the same
  epochs into ``out_dir/reference_checkpoints/epoch-XXXXXX``, for LiRA and RMIA per
  checkpoint.

  Resumable: an interrupted run continues from its last epoch when called again.
  Returns the target's checkpoint paths.
  """
  from mia_jax._io import hash_arrays
  from mia_jax._validation import check_positive_int
  from mia_jax.audit import _check_or_write_config, prepare, reference_keep
  from mia_jax.rundir import RunDir, check_out_path
  from mia_jax.train import log_to
  check_positive_int(save_every, "save_every")
  if config.uses_dp:
    raise MiaInputError("dp_epsilon/noise_multiplier: 'mia-jax train' saves per-epoch "
                        "checkpoints of non-private training only; audit DP models with "
                        "'mia-jax audit'")
  out_dir = check_out_path(out_dir)
  setup = prepare(config)
  with RunDir.open(out_dir, command="train", log=log, refuse_finished=False) as rd, \
       log_to(log):
    _check_or_write_config(rd, config, log)
    rd.check_data(hash_arrays(setup.x, setup.y), f"dataset {config.dataset!r}")
    paths = _train_run(config, rd, setup, save_every, with_reference, progress, log,
                       reference_keep)
    rd.mark_finished()
    return paths


def _train_run(config, rd, setup, save_every, with_reference, progress, log, reference_keep):
  from mia_jax.train import save_variables, train_model
  out_dir = rd.path
  ckpt_dir = rd.file("checkpoints")
  rd.file("train_state")

  def on_epoch(epoch, variables):
    if (epoch + 1) % save_every == 0 or epoch + 1 == config.epochs:
      save_variables(os.path.join(ckpt_dir, f"epoch-{epoch + 1:06d}"), variables, overwrite=True,
                     metadata={"epoch": epoch + 1, "model": dict(setup.model.spec)})
      log(f"saved checkpoint after epoch {epoch + 1}")

  train_model(setup.model, setup.x, setup.y, config=config.train_config(), seed=config.seed,
              indices=setup.split.target_in, progress=progress, description="target",
              checkpoint_dir=os.path.join(out_dir, "train_state"), on_epoch=on_epoch)
  if with_reference:
    from mia_jax.train import train_models
    ev = np.concatenate([setup.split.target_in, setup.split.target_out])
    keep = reference_keep(config, ev.size)
    ref_dir = rd.file("reference_checkpoints")
    rd.file("reference_train_state")

    def on_ref_epoch(epoch, variables):
      if (epoch + 1) % save_every == 0 or epoch + 1 == config.epochs:
        save_variables(os.path.join(ref_dir, f"epoch-{epoch + 1:06d}"), variables,
                       overwrite=True, metadata={"epoch": epoch + 1, "keep": keep.tolist(),
                                                 "model": dict(setup.model.spec)})
        log(f"saved {config.num_reference} reference models after epoch {epoch + 1}")

    train_models(setup.model, setup.x[ev], setup.y[ev], keep, config=config.train_config(),
                 seed=config.seed + 1, progress=progress, description="reference models",
                 checkpoint_dir=os.path.join(out_dir, "reference_train_state"),
                 on_epoch=on_ref_epoch)
  return list_checkpoints(ckpt_dir)


def attack_run(run_dir: str, *, checkpoints: str | None = None,
               attacks: Sequence[str] = ("loss", "confidence", "entropy", "modified_entropy"),
               microbatch_size: int = 1024, log=lambda s: None) -> dict[str, Any]:
  """Attacks every checkpoint of a run written by :func:`train_run` (or any directory of
  checkpoints of the same model, with ``checkpoints``), writes ``checkpoint_results.json``
  and ``checkpoints.png`` into ``run_dir`` and returns the results."""
  import time

  from mia_jax._io import read_json
  from mia_jax.audit import SCHEMA_VERSION, device_info, prepare, versions, write_json_atomic
  from mia_jax.rundir import RunDir, check_out_path
  run_dir = check_out_path(run_dir, "run")
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise MiaInputError(f"run: {run_dir} has no config.json (written by 'mia-jax train')")
  saved = read_json(cfg_path, "run")
  if not isinstance(saved, dict):
    raise MiaInputError(f"run: {cfg_path} is corrupt (not a mapping of options)")
  config = config_from_dict(saved)
  from mia_jax.attacks.threshold import THRESHOLD_ATTACKS
  attacks = tuple(attacks)
  known = sorted(THRESHOLD_ATTACKS) + list(REFERENCE_ATTACKS) + list(CHECKPOINT_WHITEBOX)
  unknown = [a for a in attacks if a not in known]
  if unknown or not attacks:
    raise MiaInputError(f"attacks: unknown attack(s) {unknown}; expected some of {known}")
  setup = prepare(config)
  t0 = time.perf_counter()
  stacked, names = load_checkpoint_stack(checkpoints or os.path.join(run_dir, "checkpoints"),
                                         setup.model)
  ref_attacks = [a for a in attacks if a in REFERENCE_ATTACKS]
  ref_dir = os.path.join(run_dir, "reference_checkpoints")
  if ref_attacks:  # every checkpoint needs reference models after the same epoch
    base = [n.split("[")[0] for n in names]
    missing = [n for n in base if not os.path.isdir(os.path.join(ref_dir, n, "state"))]
    if missing:
      raise MiaInputError(
          f"attacks: {ref_attacks} need reference models saved at the same epochs as the "
          f"checkpoints (run 'mia-jax train --with-reference'); {ref_dir} lacks {missing[:3]}")
  log(f"loaded {len(names)} checkpoints in {time.perf_counter() - t0:.1f}s")
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  is_member = np.r_[np.ones(setup.split.target_in.size, bool),
                    np.zeros(setup.split.target_out.size, bool)]
  t1 = time.perf_counter()
  thr = [a for a in attacks if a in THRESHOLD_ATTACKS]
  metrics, sig = attack_checkpoints(setup.model, stacked, setup.x[ev], setup.y[ev], is_member,
                                    attacks=thr, microbatch_size=microbatch_size,
                                    defenses=config.defenses, return_signals=True)
  if ref_attacks:
    _reference_attacks_per_checkpoint(config, setup, stacked, names, sig, ev, is_member,
                                      ref_attacks, ref_dir, metrics, microbatch_size, log)
  if "gradient-norm" in attacks:
    _gradient_norms_per_checkpoint(setup.model, stacked, setup.x[ev], setup.y[ev], is_member,
                                   metrics, min(microbatch_size, 256))
  for m in metrics:  # the requested order
    m["attacks"] = {a: m["attacks"][a] for a in attacks}
  log(f"attacked {len(names)} checkpoints in {time.perf_counter() - t1:.1f}s")
  results = {"schema_version": SCHEMA_VERSION, "config": config.to_dict(),
             "checkpoints": [{"name": n, **m} for n, m in zip(names, metrics)],
             "timings": {"load": t1 - t0, "attack": time.perf_counter() - t1},
             "versions": versions(), "device": device_info()}
  with RunDir.open(run_dir, command="attack", log=log, refuse_finished=False) as rd:
    write_json_atomic(rd.file("checkpoint_results.json"), results)
    plot_checkpoint_metrics(metrics, names, rd.file("checkpoints.png"))
  return results
