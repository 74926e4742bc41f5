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

from mia_jax.pipeline import REPORT_FPRS  # noqa: E402  (one list for every result)


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
  from mia_jax import pipeline
  from mia_jax._validation import check_membership
  from mia_jax.attacks import registry
  from mia_jax.attacks.base import AttackerSide
  from mia_jax.metrics import summarize
  from mia_jax.signals import blackbox_signals
  is_member = check_membership(is_member, n=np.shape(x)[0])
  sig = blackbox_signals(model, stacked, x, y, microbatch_size=microbatch_size, stacked=True,
                         defenses=defenses)
  correct = sig["correctness"] if not defenses else blackbox_signals(
      model, stacked, x, y, microbatch_size=microbatch_size, stacked=True)["correctness"]
  chosen = registry.select(list(attacks)) if attacks else ()
  bad = [a.name for a in chosen if a.family != "threshold"]
  if bad:
    raise MiaInputError(f"attacks: {bad} are not threshold attacks; use attack_run or "
                        "mia_jax.attack_model for them")
  side = AttackerSide({})
  scores = {a.name: pipeline.run_stacked(a, {}, lambda c: side, sig, sig["loss"].shape[0])[0]
            for a in chosen}
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
  from mia_jax.streams import LEGACY_SCHEME
  d = {"seed_streams": LEGACY_SCHEME, **d}  # a run saved before named streams
  try:
    return AuditConfig(**d)
  except TypeError as e:
    raise MiaInputError(f"run: config.json holds unknown options ({e})") from e


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
  from mia_jax.audit import check_or_write_config, prepare, reference_keep
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
    check_or_write_config(rd, config, log)
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

  train_model(setup.model, setup.x, setup.y, config=config.train_config(),
              seed=config.stage_seed("target"),
              indices=setup.split.target_in, progress=progress, description="target",
              checkpoint_dir=os.path.join(out_dir, "train_state"), on_epoch=on_epoch)
  if with_reference:
    from mia_jax.train import train_models
    ev = np.concatenate([setup.split.target_in, setup.split.target_out])
    from mia_jax._io import hash_arrays, write_npz_atomic
    keep = reference_keep(config, ev.size)
    write_npz_atomic(rd.file("reference_keep.npz"), keep=keep)
    keep_hash = hash_arrays(keep)
    ref_dir = rd.file("reference_checkpoints")
    rd.file("reference_train_state")

    def on_ref_epoch(epoch, variables):
      if (epoch + 1) % save_every == 0 or epoch + 1 == config.epochs:
        save_variables(os.path.join(ref_dir, f"epoch-{epoch + 1:06d}"), variables,
                       overwrite=True, metadata={"epoch": epoch + 1, "keep_sha256": keep_hash,
                                                 "num_models": int(keep.shape[0]),
                                                 "model": dict(setup.model.spec)})
        log(f"saved {config.num_reference} reference models after epoch {epoch + 1}")

    train_models(setup.model, setup.x[ev], setup.y[ev], keep, config=config.train_config(),
                 seed=config.stage_seed("reference"), progress=progress,
                 description="reference models",
                 checkpoint_dir=os.path.join(out_dir, "reference_train_state"),
                 on_epoch=on_ref_epoch)
  return list_checkpoints(ckpt_dir)


def _run_side_of(config, setup, stacked, names, ev, ref_dir, microbatch_size, log, shadow):
  """``c -> AttackerSide`` of checkpoint c of a run: the reference models saved after the
  same epoch (their signals for every checkpoint from one vmapped pass over the C x M
  models), and the white-box attacker's auxiliary data and recipe."""
  from mia_jax import pipeline
  from mia_jax.attacks.base import AttackerSide
  from mia_jax.audit import reference_keep
  from mia_jax.train import load_variables
  x, y, model, aux = setup.x, setup.y, setup.model, setup.split.auxiliary
  memo: dict[str, Any] = {}

  def references():
    if "ref" not in memo:
      m = config.num_reference
      like = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), m))
      each = [load_variables(os.path.join(ref_dir, n.split("[")[0]), like=like)[0]
              for n in names]  # reading C checkpoints from disk
      refs = jax.tree.map(lambda *a: np.concatenate(a), *each)  # [C * M] models
      r = pipeline.reference_signals(model, refs, x, y, ev, aux,
                                     microbatch_size=microbatch_size, defenses=config.defenses)
      memo["ref"] = {k: v.reshape(len(names), m, -1) for k, v in r.items()}
      memo["keep"] = reference_keep(config, ev.size)
      log(f"reference signals of {len(names)} x {m} reference models")
    return memo["ref"], memo["keep"]

  def side(c):
    def reference():
      r, keep = references()
      return {**{k: v[c] for k, v in r.items()}, "keep": keep,
              "discrete": bool(config.defenses),
              "fields": {"num_reference": config.num_reference}}

    return AttackerSide({
        "reference": reference, "shadow": shadow,
        "whitebox": lambda: pipeline.whitebox_inputs(
            model, jax.tree.map(lambda a: a[c], stacked), x, y, aux,
            target_train_size=setup.target_size, train_config=config.train_config(),
            seed=config.seed, num_eval=ev.size, log=log)})
  return side


def attack_run(run_dir: str, *, checkpoints: str | None = None,
               attacks: Sequence[str] = ("loss", "confidence", "entropy", "modified_entropy"),
               microbatch_size: int = 1024, log=lambda s: None) -> dict[str, Any]:
  """Attacks every checkpoint of a run written by :func:`train_run` (or any directory of
  checkpoints of the same model, with ``checkpoints``) with ``attacks`` (``["all"]``:
  every registered attack the run allows), writes ``checkpoint_results.json``,
  ``checkpoint_scores.npz`` (per-example scores ``[C, N]`` of every attack) and
  ``checkpoints.png`` into ``run_dir`` and returns the results.

  Every registered attack can run: threshold attacks, LiRA and RMIA (checkpoint c against
  the reference models saved after the same epoch: ``mia-jax train --with-reference``),
  Shokri et al. (shadow models trained on the run's auxiliary data as the audit trains
  them, saved in the run and reused; a synthetic shadow source queries the last
  checkpoint), gradient norms, Stolen Memories and Nasr et al. (the attacker's auxiliary
  data of the run's split). The scores of all checkpoints come from one vmapped, compiled
  call per traceable attack (:func:`mia_jax.pipeline.run_stacked`).
  """
  import time

  from mia_jax import pipeline
  from mia_jax._io import read_json, write_npz_atomic
  from mia_jax.attacks import registry
  from mia_jax.audit import (SCHEMA_VERSION, Stages, device_info, prepare, shadow_side, versions,
                             write_json_atomic)
  from mia_jax.rundir import RunDir, check_out_path
  run_dir = check_out_path(run_dir, "run")
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise MiaInputError(f"run: {run_dir} has no config.json (written by 'mia-jax train')")
  saved = read_json(cfg_path, "run")
  if not isinstance(saved, dict):
    raise MiaInputError(f"run: {cfg_path} is corrupt (not a mapping of options)")
  config = config_from_dict(saved)
  ref_dir = os.path.join(run_dir, "reference_checkpoints")
  if list(attacks) == ["all"]:  # every attack this run allows
    attacks = [a.name for a in registry.all_attacks()
               if "reference" not in a.attacker or os.path.isdir(ref_dir)]
  chosen = registry.select(list(attacks))
  setup = prepare(config)
  t0 = time.perf_counter()
  stacked, names = load_checkpoint_stack(checkpoints or os.path.join(run_dir, "checkpoints"),
                                         setup.model)
  ref_attacks = [a.name for a in chosen if "reference" in a.attacker]
  if ref_attacks:  # every checkpoint needs reference models after the same epoch
    base = [n.split("[")[0] for n in names]
    missing = [n for n in base if not os.path.isdir(os.path.join(ref_dir, n, "state"))]
    if missing:
      raise MiaInputError(
          f"attacks: {ref_attacks} need reference models saved at the same epochs as the "
          f"checkpoints (run 'mia-jax train --with-reference'); {ref_dir} lacks {missing[:3]}")
  log(f"loaded {len(names)} checkpoints in {time.perf_counter() - t0:.1f}s")
  c = len(names)
  ev = np.concatenate([setup.split.target_in, setup.split.target_out])
  is_member = np.r_[np.ones(setup.split.target_in.size, bool),
                    np.zeros(setup.split.target_out.size, bool)]
  xe, ye, aux = setup.x[ev], setup.y[ev], setup.split.auxiliary
  t1 = time.perf_counter()
  metrics, sig = attack_checkpoints(setup.model, stacked, xe, ye, is_member, attacks=(),
                                    microbatch_size=microbatch_size, defenses=config.defenses,
                                    return_signals=True)
  signals = pipeline.checkpoint_signals(setup.model, stacked, sig, setup.x, setup.y, ev, aux,
                                        microbatch_size=microbatch_size,
                                        defenses=config.defenses)
  with RunDir.open(run_dir, command="attack", log=log, refuse_finished=False) as rd:
    from mia_jax.defenses import parse_defenses
    last = jax.tree.map(lambda a: a[-1], stacked)
    work = rd.file("shadow_train_state")  # resumable shadow training, removed when done
    memo: dict[str, Any] = {}

    def shadow():
      if "shadow" not in memo:
        memo["shadow"] = shadow_side(
            config, rd, setup, last, parse_defenses(config.defenses, setup.model.num_classes),
            Stages(log), work, None, log)
      return memo["shadow"]

    side_of = _run_side_of(config, setup, stacked, names, ev, ref_dir, microbatch_size, log,
                           shadow)
    scores: dict[str, np.ndarray] = {}
    for attack in chosen:
      s, subs, fields = pipeline.run_stacked(
          attack, config, side_of, signals, c, per_checkpoint={"reference"}, log=log,
          signals_of=lambda i: {"model": (setup.model, jax.tree.map(lambda a: a[i], stacked),
                                          xe, ye)})
      scores[attack.name] = s
      scores.update({f"{attack.name}/{k}": v for k, v in subs.items()})
      for i, m in enumerate(metrics):
        m["attacks"][attack.name] = pipeline.entry(s[i], {k: v[i] for k, v in subs.items()},
                                                   fields[i], is_member)
    log(f"attacked {c} checkpoints in {time.perf_counter() - t1:.1f}s")
    results = {"schema_version": SCHEMA_VERSION, "config": config.to_dict(),
               "checkpoints": [{"name": n, **m} for n, m in zip(names, metrics)],
               "timings": {"load": t1 - t0, "attack": time.perf_counter() - t1},
               "versions": versions(), "device": device_info()}
    write_npz_atomic(rd.file("checkpoint_scores.npz"), is_member=is_member, labels=ye,
                     names=np.array(names), **{f"checkpoint_score:{k}": v
                                               for k, v in scores.items()})
    write_json_atomic(rd.file("checkpoint_results.json"), results)
    plot_checkpoint_metrics(metrics, names, rd.file("checkpoints.png"))
    import shutil
    shutil.rmtree(work, ignore_errors=True)
  return results
