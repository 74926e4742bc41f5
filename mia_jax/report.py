"""Human-readable report of an audit run: ``report.html`` (self-contained) and ``report.md``.

:func:`write_report` reads what ``mia-jax audit`` left in a run directory
(``results.json``, see ``docs/results_schema.md``, and ``scores.npz``) and writes:

* ``report.html`` -- one file that opens offline: inline CSS, every plot embedded as a
  base64 PNG ``data:`` URI, no external resource or link;
* ``report.md`` -- the same content in Markdown, its plots saved as ``plots/*.png`` beside it
  and referenced relatively;
* ``plots/*.png``.

Every file is written atomically (temporary file + rename). Plots are drawn with
:class:`matplotlib.figure.Figure` on an explicit Agg canvas, so the user's global matplotlib
backend is never touched. Every metric comes from :mod:`mia_jax.metrics` (or from
``results.json``, which the audit computed with it). See ``docs/report.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from mia_jax._io import write_bytes_atomic
from mia_jax._validation import MiaInputError

__all__ = ["write_report", "write_sweep_report", "PLOT_FILES"]

SUPPORTED_SCHEMA_VERSIONS = (1, 2)
# (results.json key, column header) of the TPR-at-low-FPR columns.
TPR_COLUMNS = (("0.1", "TPR@10%"), ("0.01", "TPR@1%"), ("0.001", "TPR@0.1%"),
               ("0.0001", "TPR@0.01%"))
# Every plot the report may draw (file name under plots/ -> what it shows). Only these names
# are ever written or removed under plots/.
PLOT_FILES = {
    "roc.png": "log-log ROC curves of every attack",
    "roc_layers.png": "log-log ROC curves of the white-box attack's per-layer scores",
    "histograms.png": "member / non-member score histograms per attack",
    "pr_whitebox.png": "precision-recall curve of the white-box meta-attack",
    "pr_nasr.png": "precision-recall curve of the Nasr et al. attack",
    "per_class_auc.png": "per-class AUC heatmap",
    "per_class_scatter.png": "per-class AUC vs members of the class",
    "dp.png": "attack accuracy vs epsilon with the DP bounds",
    "privacy_audit.png": "empirical epsilon lower bound of each attack by estimator",
    "timings.png": "seconds per audit stage",
}
WHITEBOX = "stolen-memories"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
_STYLES = ("-", "--", "-.", ":")
_MEMBER_COLOR, _NONMEMBER_COLOR = "#1f77b4", "#ff7f0e"

# Sets document.body.dataset.imagesLoaded = "loaded/total" once the page has loaded, so a
# headless browser can check that every embedded image decoded. Harmless offline.
_IMAGES_LOADED_JS = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
});
"""

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.7em; border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
h3 { font-size: 1.08em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .65em; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 1.6em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
.note { font-size: .9em; color: #555; }
.warn { background: #fff6e0; border-left: 4px solid #e0a000; padding: .4em .8em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


# ---------------------------------------------------------------------------------------------
# Document model: a list of blocks rendered both to HTML and to Markdown.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Plot:
  name: str  # file name under plots/
  caption: str
  png: bytes


@dataclasses.dataclass
class _Block:
  kind: str  # "h1", "h2", "h3", "p", "note", "warn", "table", "plot", "pre"
  text: str = ""
  headers: Sequence[str] = ()
  rows: Sequence[Sequence[Any]] = ()
  plot: _Plot | None = None
  align_numbers: bool = True  # right-align numeric cells (False for key-value tables)


def _streams(r: dict) -> str:
  """How the run's stages drew their seeds (mia_jax.streams), for audits that record it."""
  config = r.get("config")
  if not isinstance(config, dict) or r.get("seed") is None:
    return ""
  return f" ({config.get('seed_streams', 'offsets')} streams)"


def _fmt(v: Any, digits: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    v = float(v)
    if math.isnan(v):
      return "-"
    if math.isinf(v):
      return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"
  return str(v)


def _pct(v: Any) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{100.0 * float(v):.2f}%"


def _is_num(cell: str) -> bool:
  t = cell.rstrip("%s").replace("-", "", 1).replace(".", "", 1).replace("+", "", 1)
  return t.isdigit()


def _render_html(title: str, blocks: Sequence[_Block]) -> str:
  out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>",
         f"<script>{_IMAGES_LOADED_JS}</script>", "</head>", "<body>"]
  for b in blocks:
    if b.kind in ("h1", "h2", "h3"):
      out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
    elif b.kind == "p":
      out.append(f"<p>{html.escape(b.text)}</p>")
    elif b.kind == "note":
      out.append(f'<p class="note">{html.escape(b.text)}</p>')
    elif b.kind == "warn":
      out.append(f'<p class="warn">{html.escape(b.text)}</p>')
    elif b.kind == "pre":
      out.append(f"<pre>{html.escape(b.text)}</pre>")
    elif b.kind == "table":
      out.append("<table>")
      out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in b.headers) + "</tr>")
      for row in b.rows:
        cells = []
        for c in row:
          c = str(c)
          cls = ' class="num"' if b.align_numbers and _is_num(c) else ""
          cells.append(f"<td{cls}>{html.escape(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
      out.append("</table>")
    elif b.kind == "plot":
      p = b.plot
      data = base64.b64encode(p.png).decode("ascii")
      out.append(f'<figure><img src="data:image/png;base64,{data}" '
                 f'alt="{html.escape(PLOT_FILES.get(p.name, p.name), quote=True)}">'
                 f"<figcaption>{html.escape(p.caption)}</figcaption></figure>")
    else:  # pragma: no cover - internal
      raise AssertionError(b.kind)
  out += ["</body>", "</html>", ""]
  return "\n".join(out)


def _md_text(text: Any) -> str:
  """Text for markdown outside code blocks: markdown renders raw HTML, so names that come
  from the data (a dataset called ``<img onerror=...>``) are escaped."""
  return html.escape(str(text), quote=False)


def _md_cell(c: Any) -> str:
  return _md_text(c).replace("|", "\\|").replace("\n", " ")


def _render_md(blocks: Sequence[_Block]) -> str:
  out: list[str] = []
  for b in blocks:
    if b.kind == "h1":
      out += [f"# {_md_text(b.text)}", ""]
    elif b.kind == "h2":
      out += [f"## {_md_text(b.text)}", ""]
    elif b.kind == "h3":
      out += [f"### {_md_text(b.text)}", ""]
    elif b.kind == "p":
      out += [_md_text(b.text), ""]
    elif b.kind == "note":
      out += [f"*{_md_text(b.text)}*", ""]
    elif b.kind == "warn":
      out += [f"> **Note:** {_md_text(b.text)}", ""]
    elif b.kind == "pre":
      out += ["```", b.text, "```", ""]
    elif b.kind == "table":
      out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
      out.append("|" + "|".join("---" for _ in b.headers) + "|")
      for row in b.rows:
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
      out.append("")
    elif b.kind == "plot":
      alt = _md_cell(PLOT_FILES.get(b.plot.name, b.plot.name)).replace("]", "")
      out += [f"![{alt}](plots/{b.plot.name})", "",
              f"*{_md_text(b.plot.caption)}*", ""]
    else:  # pragma: no cover - internal
      raise AssertionError(b.kind)
  return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Loading and validation.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Run:
  run_dir: str
  results: dict
  is_member: np.ndarray | None
  labels: np.ndarray | None
  scores: dict[str, np.ndarray]  # "score:" prefix removed; per-layer keys keep "attack/layer"
  notes: list[str]


def check_dpi(dpi: Any) -> None:
  """Raises MiaInputError unless ``dpi`` is an integer in [20, 600]."""
  if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 20 <= dpi <= 600:
    raise MiaInputError(f"dpi: expected an integer in [20, 600], got {dpi!r}")


def _load_results(run_dir: str | os.PathLike) -> tuple[str, dict]:
  """(absolute path, validated results.json) of an audit run directory."""
  if not isinstance(run_dir, (str, os.PathLike)):
    raise MiaInputError(f"run_dir: expected a path, got {run_dir!r}")
  run_dir = os.path.abspath(os.fspath(run_dir))
  if not os.path.isdir(run_dir):
    raise MiaInputError(f"run_dir: {run_dir} is not a directory (expected an audit run "
                        "directory written by 'mia-jax audit --out DIR')")
  results_path = os.path.join(run_dir, "results.json")
  if not os.path.isfile(results_path):
    raise MiaInputError(f"run_dir: {results_path} not found; is {run_dir} a finished audit run "
                        "('mia-jax audit --out DIR')?")
  try:
    with open(results_path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    raise MiaInputError(f"run_dir: could not read {results_path} ({e})") from e
  if not isinstance(results, dict) or not isinstance(results.get("attacks"), dict):
    raise MiaInputError(f"run_dir: {results_path} has no 'attacks' mapping; expected the "
                        "results.json schema of docs/results_schema.md")
  version = results.get("schema_version")
  if version not in SUPPORTED_SCHEMA_VERSIONS:
    raise MiaInputError(f"run_dir: {results_path} has schema_version {version!r}; this report "
                        f"supports {list(SUPPORTED_SCHEMA_VERSIONS)}")
  return run_dir, results


def _load_run(run_dir: str | os.PathLike) -> _Run:
  run_dir, results = _load_results(run_dir)
  notes: list[str] = []
  scores: dict[str, np.ndarray] = {}
  is_member = labels = None
  scores_path = os.path.join(run_dir, "scores.npz")
  if not os.path.isfile(scores_path):
    notes.append(f"{scores_path} not found: curves, histograms and per-class metrics are "
                 "omitted; the tables come from results.json.")
  else:
    try:
      with np.load(scores_path, allow_pickle=False) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
      raise MiaInputError(f"run_dir: could not read {scores_path} ({e})") from e
    if "is_member" not in arrays:
      raise MiaInputError(f"run_dir: {scores_path} has no 'is_member' array")
    is_member = arrays["is_member"].astype(bool).ravel()
    n = is_member.size
    if is_member.all() or not is_member.any():
      raise MiaInputError(f"run_dir: {scores_path}: is_member must hold both members and "
                          "non-members")
    if "labels" in arrays:
      labels = arrays["labels"].ravel()
      if labels.size != n:
        notes.append(f"scores.npz: labels has {labels.size} entries, is_member {n}: per-class "
                     "metrics omitted.")
        labels = None
    for k, v in arrays.items():
      if not k.startswith("score:"):
        continue
      name, v = k[len("score:"):], np.asarray(v, np.float64).ravel()
      if v.size != n:
        notes.append(f"scores.npz: {k} has {v.size} entries, is_member {n}: skipped.")
      elif not np.all(np.isfinite(v)):
        notes.append(f"scores.npz: {k} holds non-finite values: skipped.")
      else:
        scores[name] = v
  return _Run(run_dir, results, is_member, labels, scores, notes)


def _attack_metrics(run: _Run) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
  """Top-level and per-layer metric summaries: from results.json, else from the scores."""
  from mia_jax.metrics import summarize
  fprs = [float(k) for k, _ in TPR_COLUMNS] + [0.0]

  def from_scores(key):
    return summarize(run.scores[key], run.is_member, fprs)

  top: dict[str, dict] = {}
  layers: dict[str, dict[str, dict]] = {}
  for name, m in run.results["attacks"].items():
    if isinstance(m, dict) and "auc" in m:
      top[name] = m
    elif name in run.scores:
      top[name] = from_scores(name)
    for layer, lm in (m.get("layers") or {}).items() if isinstance(m, dict) else ():
      if isinstance(lm, dict) and "auc" in lm:
        layers.setdefault(name, {})[layer] = lm
  for key in run.scores:
    if "/" in key:
      parent, layer = key.split("/", 1)
      if layer not in layers.get(parent, {}):
        layers.setdefault(parent, {})[layer] = from_scores(key)
    elif key not in top:
      top[key] = from_scores(key)
  return top, layers


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib Figure + Agg canvas; no pyplot, no global backend change).
# ---------------------------------------------------------------------------------------------

def _figure(figsize):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _png(fig, dpi: int) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
  return buf.getvalue()


def _style(i: int) -> dict:
  return {"color": _COLORS[i % len(_COLORS)], "linestyle": _STYLES[(i // len(_COLORS)) % 4]}


def _plot_roc(curves: Sequence[tuple[str, float, np.ndarray, np.ndarray]], n_pos: int,
              n_neg: int, title: str, dpi: int) -> bytes:
  lo = max(1e-4, 1.0 / max(n_neg, 1))
  lo_y = max(1e-4, 1.0 / max(n_pos, 1))
  lo_plot = min(lo, lo_y)
  fig = _figure((9.5, 6.0))
  ax = fig.add_subplot()
  for i, (name, auc, fpr, tpr) in enumerate(curves):
    # Zeros cannot be drawn on log axes: pin them below the visible range so the curve
    # leaves the plot through the bottom / left edge instead of vanishing.
    ax.plot(np.maximum(fpr, lo_plot / 10), np.maximum(tpr, lo_plot / 10),
            lw=2.2 if name == WHITEBOX else 1.5, label=f"{name} (AUC {auc:.3f})", **_style(i))
  grid = np.logspace(np.log10(lo_plot / 10), 0, 200)
  ax.plot(grid, grid, color="0.55", lw=1, linestyle="--", label="chance (TPR = FPR)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(lo_plot, 1.0)
  ax.set_ylim(lo_plot, 1.05)
  ax.axvline(1.0 / n_neg, color="0.8", lw=0.8, linestyle=":")
  ax.set_xlabel("false-positive rate")
  ax.set_ylabel("true-positive rate")
  ax.set_title(title)
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
  return _png(fig, dpi)


def _hist_range(s: np.ndarray) -> tuple[float, float]:
  """Where the bulk of the scores lies: Tukey's far-out fences (3 IQR beyond the quartiles,
  widening the quantiles when the IQR is 0), within [min, max]. Attack scores often have
  tails orders of magnitude longer than their bulk (a loss near 0 for members, -600 for an
  outlier); a min-max range would crush every histogram into one bin."""
  smin, smax = float(s.min()), float(s.max())
  for q in (25.0, 10.0, 5.0, 1.0):
    a, b = np.percentile(s, [q, 100.0 - q])
    if b > a:
      lo, hi = max(smin, a - 3.0 * (b - a)), min(smax, b + 3.0 * (b - a))
      return float(lo), float(hi)
  if smax > smin:
    return smin, smax
  return smin - 0.5, smax + 0.5


def _plot_histograms(items: Sequence[tuple[str, float, np.ndarray]], is_member: np.ndarray,
                     dpi: int) -> bytes:
  n = len(items)
  ncols = min(4, n)
  nrows = math.ceil(n / ncols)
  fig = _figure((3.3 * ncols + 0.4, 2.5 * nrows + 0.6))
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.set_visible(False)
  for ax, (name, auc, s) in zip(axes.ravel(), items):
    lo, hi = _hist_range(s)
    bins = np.linspace(lo, hi, 41)
    c = np.clip(s, lo, hi)
    ax.hist(c[is_member], bins=bins, density=True, histtype="stepfilled", alpha=0.45,
            color=_MEMBER_COLOR, label="members")
    ax.hist(c[~is_member], bins=bins, density=True, histtype="stepfilled", alpha=0.45,
            color=_NONMEMBER_COLOR, label="non-members")
    clipped = (s < lo) | (s > hi)
    extra = f", {clipped.mean():.0%} in edge bins" if clipped.any() else ""
    ax.set_title(f"{name} (AUC {auc:.3f}{extra})", fontsize=9)
    ax.tick_params(labelsize=7.5)
    ax.set_yticks([])
  axes.ravel()[0].set_ylabel("density", fontsize=8)
  handles, labels = axes.ravel()[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=9, frameon=False)
  fig.supxlabel("attack score (higher = more likely member); scores beyond 3 interquartile "
                "ranges of the quartiles are piled into the edge bins", fontsize=8.5)
  return _png(fig, dpi)


def _plot_pr(precision, recall, calibrated: dict | None, prior: float, n_pos: int,
             dpi: int, name: str = WHITEBOX) -> bytes:
  fig = _figure((11.0, 4.4))
  axes = fig.subplots(1, 2)
  point = None
  if calibrated and "precision" in calibrated and "recall" in calibrated:
    point = (float(calibrated["recall"]), float(calibrated["precision"]))
  for ax, logx in zip(axes, (False, True)):
    r = np.maximum(recall, 0.5 / n_pos) if logx else recall
    ax.plot(r, precision, color=_COLORS[0], lw=1.6, label=name)
    ax.axhline(prior, color="0.55", lw=1, linestyle="--", label=f"chance (prior {prior:.2f})")
    if calibrated and calibrated.get("target_precision") is not None:
      ax.axhline(float(calibrated["target_precision"]), color=_COLORS[2], lw=1, linestyle=":",
                 label=f"target precision {float(calibrated['target_precision']):.2f}")
    if point is not None:
      px = max(point[0], 0.5 / n_pos) if logx else point[0]
      ax.plot([px], [point[1]], marker="*", ms=15, color=_COLORS[3], linestyle="none",
              label=(f"calibrated: threshold {_fmt(calibrated.get('threshold'))}, "
                     f"P {point[1]:.3f}, R {point[0]:.3f}"))
    ax.set_ylim(0.0, 1.03)
    if logx:
      ax.set_xscale("log")
      ax.set_xlim(0.5 / n_pos, 1.0)
      ax.set_xlabel("recall (log scale)")
    else:
      ax.set_xlim(0.0, 1.0)
      ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
  axes[0].set_title("precision-recall")
  axes[1].set_title("precision-recall, low recall magnified")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
  return _png(fig, dpi)


def _plot_per_class_heatmap(names: Sequence[str], classes: np.ndarray, auc: np.ndarray,
                            dpi: int) -> bytes:
  from matplotlib.colors import TwoSlopeNorm
  k = classes.size
  width = min(22.0, max(7.0, 0.55 * k + 3.5))
  fig = _figure((width, 0.42 * len(names) + 1.8))
  ax = fig.add_subplot()
  finite = auc[np.isfinite(auc)]
  d = float(np.max(np.abs(finite - 0.5))) if finite.size else 0.5
  d = min(0.5, max(0.05, math.ceil(d * 20) / 20))
  from matplotlib import colormaps
  cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
  im = ax.imshow(np.ma.masked_invalid(auc), aspect="auto", cmap=cmap,
                 norm=TwoSlopeNorm(vcenter=0.5, vmin=0.5 - d, vmax=0.5 + d))
  ax.set_yticks(range(len(names)), names, fontsize=9)
  step = max(1, math.ceil(k / 40))
  ax.set_xticks(range(0, k, step), [str(c) for c in classes[::step]], fontsize=8)
  ax.set_xlabel("class label")
  if k <= 25 and len(names) <= 20:
    for i in range(len(names)):
      for j in range(k):
        if np.isfinite(auc[i, j]):
          dark = abs(auc[i, j] - 0.5) > 0.6 * d
          ax.text(j, i, f"{auc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if dark else "black")
  fig.colorbar(im, ax=ax, label="AUC within the class (0.5 = chance)", shrink=0.9)
  ax.set_title("attack AUC per class (rows sorted by overall AUC; grey: class lacks members "
               "or non-members)", fontsize=10)
  return _png(fig, dpi)


def _plot_per_class_scatter(names: Sequence[str], members_per_class: np.ndarray,
                            auc: np.ndarray, dpi: int) -> bytes:
  fig = _figure((8.5, 5.0))
  ax = fig.add_subplot()
  for i, name in enumerate(names):
    ok = np.isfinite(auc[i])
    label = name
    if ok.sum() > 2 and np.ptp(members_per_class[ok]) > 0 and np.ptp(auc[i][ok]) > 0:
      r = float(np.corrcoef(members_per_class[ok], auc[i][ok])[0, 1])
      label = f"{name} (Pearson r = {r:+.2f})"
    ax.scatter(members_per_class[ok], auc[i][ok], s=28, alpha=0.8, label=label,
               color=_COLORS[i % len(_COLORS)])
  ax.axhline(0.5, color="0.55", lw=1, linestyle="--")
  ax.set_xlabel("members of the class (examples of the class in the target's training set)")
  ax.set_ylabel("attack AUC within the class")
  ax.set_title("per-class leakage vs training examples per class (cf. Shokri et al. 2017, "
               "Fig. 11)", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
  return _png(fig, dpi)


def _plot_timings(stages: Sequence[tuple[str, float]], dpi: int) -> bytes:
  fig = _figure((8.5, 0.34 * len(stages) + 1.3))
  ax = fig.add_subplot()
  names = [s for s, _ in stages][::-1]
  secs = [t for _, t in stages][::-1]
  bars = ax.barh(names, secs, color=_COLORS[0])
  ax.bar_label(bars, labels=[f"{t:.1f}s" for t in secs], padding=3, fontsize=8)
  ax.set_xlabel("seconds")
  ax.set_xlim(0, max(secs) * 1.15 if max(secs) > 0 else 1)
  ax.tick_params(axis="y", labelsize=9)
  ax.set_title(f"wall-clock seconds per stage (total {sum(secs):.1f}s)", fontsize=10)
  ax.grid(True, axis="x", alpha=0.3)
  return _png(fig, dpi)


# ---------------------------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------------------------

def _header(run: _Run) -> list[_Block]:
  r = run.results
  ds, model, tgt = r.get("dataset") or {}, r.get("model") or {}, r.get("target") or {}
  title = f"Membership-inference audit: {ds.get('name', '?')} / {model.get('name', '?')}"
  blocks = [_Block("h1", title),
            _Block("p", f"Run directory: {run.run_dir}. Convention: a higher attack score means "
                        "'more likely a member' of the target's training set.")]
  rows = [("dataset", ds.get("name", "-")),
          ("classes", _fmt(ds.get("num_classes"))),
          ("feature shape", "x".join(str(d) for d in ds.get("feature_shape", [])) or "-"),
          ("members / non-members / auxiliary",
           f"{_fmt(ds.get('num_members'))} / {_fmt(ds.get('num_nonmembers'))} / "
           f"{_fmt(ds.get('num_auxiliary'))}"),
          ("model", model.get("name", "-")),
          ("model spec", json.dumps(model.get("spec", {}), sort_keys=True)),
          ("seed", _fmt(r.get("seed")) + _streams(r))]
  blocks.append(_Block("table", headers=("run", "value"), rows=rows, align_numbers=False))
  if tgt:
    blocks.append(_Block("h2", "Target model"))
    blocks.append(_Block("table", headers=("train accuracy", "test accuracy", "generalization gap"),
                         rows=[(_fmt(tgt.get("train_accuracy"), 4),
                                _fmt(tgt.get("test_accuracy"), 4),
                                _fmt(tgt.get("generalization_gap"), 4))]))
  return blocks


def _intervals(names: Sequence[str], top: dict) -> list[_Block]:
  """The bootstrap confidence intervals of the table above (results.json ``ci``)."""
  have = [a for a in names if isinstance(top[a].get("ci"), dict)]
  if not have:
    return []
  first = top[have[0]]["ci"]

  def span(v):
    return f"[{_fmt(v[0])}, {_fmt(v[1])}]" if isinstance(v, list) and len(v) == 2 else "-"

  rows = [(a, span(top[a]["ci"].get("auc")))
          + tuple(span((top[a]["ci"].get("tpr_at_fpr") or {}).get(k)) for k, _ in TPR_COLUMNS)
          for a in have]
  conf = first.get("confidence")
  return [_Block("table", headers=("attack", "AUC CI") + tuple(f"{h} CI" for _, h in TPR_COLUMNS),
                 rows=rows, align_numbers=False),
          _Block("note", f"{_pct(conf) if conf is not None else ''} confidence intervals: "
                         f"stratified percentile bootstrap over the evaluation examples "
                         f"({first.get('resamples')} resamples); they describe the sampling "
                         "uncertainty of each number on this evaluation set, not the "
                         "variation over training runs.")]


def _attack_descriptions(names: Sequence[str]) -> list[_Block]:
  """What each attack of the run is, from the registry (names it does not know -- a run
  written with an attack registered elsewhere -- are listed without a description)."""
  from mia_jax.attacks import registry
  rows = []
  for name in names:
    try:
      a = registry.get(name)
    except MiaInputError:
      rows.append((name, "", "(not registered here)", ""))
      continue
    rows.append((name, a.family, a.summary, a.paper))
  return [_Block("table", headers=("attack", "family", "what it scores (higher = member)",
                                   "paper"), rows=rows, align_numbers=False)]


def _summary(run: _Run, top: dict, layers: dict) -> list[_Block]:
  blocks = [_Block("h2", "Attacks")]
  if not top:
    return blocks + [_Block("warn", "results.json lists no attack with metrics.")]
  order = sorted(top, key=lambda a: -float(top[a].get("auc", float("nan"))))
  headers = ("attack", "AUC", "balanced acc.", "advantage") + tuple(h for _, h in TPR_COLUMNS)

  def row(label, m):
    t = m.get("tpr_at_fpr") or {}
    return ((label, _fmt(m.get("auc")), _fmt(m.get("balanced_accuracy")),
             _fmt(m.get("advantage"))) + tuple(_pct(t.get(k)) for k, _ in TPR_COLUMNS))

  best = order[0]
  by_tpr = max(order, key=lambda a: float((top[a].get("tpr_at_fpr") or {}).get("0.01", -1)))
  blocks.append(_Block("p", f"Strongest attack by AUC: {best} ({_fmt(top[best].get('auc'))}); "
                            f"by TPR at 1% FPR: {by_tpr} "
                            f"({_pct((top[by_tpr].get('tpr_at_fpr') or {}).get('0.01'))})."))
  blocks.append(_Block("table", headers=headers, rows=[row(a, top[a]) for a in order]))
  blocks += _intervals(order, top)
  blocks += _attack_descriptions(order)
  n_neg = (run.results.get("dataset") or {}).get("num_nonmembers")
  if run.is_member is not None:
    n_neg = int((~run.is_member).sum())
  blocks.append(_Block("note", "Sorted by AUC. Balanced accuracy and advantage (max TPR - FPR) "
                               "are the best over thresholds; TPR@x% is the highest TPR whose "
                               "empirical FPR is at most x%."
                       + (f" With {n_neg} non-members the smallest non-zero FPR is "
                          f"1/{n_neg} = {100.0 / n_neg:.3g}%: TPR at lower FPRs is the TPR at "
                          "zero false positives." if n_neg else "")))
  for parent, lm in layers.items():
    if not lm:
      continue
    blocks.append(_Block("h3", f"{parent}: per-layer scores"))
    lorder = sorted(lm, key=lambda a: -float(lm[a].get("auc", float("nan"))))
    rows = ([row(f"{parent} (meta-attack)", top[parent])] if parent in top else [])
    rows += [row(f"{parent}/{layer}", lm[layer]) for layer in lorder]
    blocks.append(_Block("table", headers=headers, rows=rows))
  return blocks


def _roc_section(run: _Run, top: dict, layers: dict, dpi: int) -> list[_Block]:
  from mia_jax.metrics import roc_curve
  m = run.is_member
  names = [a for a in sorted(top, key=lambda a: -float(top[a].get("auc", 0))) if a in run.scores]
  if m is None or not names:
    return []
  n_pos, n_neg = int(m.sum()), int((~m).sum())
  blocks = [_Block("h2", "ROC curves")]
  curves = []
  for a in names:
    fpr, tpr, _ = roc_curve(run.scores[a], m)
    curves.append((a, float(top[a]["auc"]), fpr, tpr))
  lo = max(1e-4, 1.0 / n_neg)
  png = _plot_roc(curves, n_pos, n_neg, "ROC of every attack (log-log)", dpi)
  blocks.append(_Block("plot", plot=_Plot(
      "roc.png", f"Log-log ROC curves of all {len(curves)} attacks on {n_pos} members and "
      f"{n_neg} non-members. The FPR axis starts at {lo:.2g} (1/{n_neg} non-members, dotted "
      "line, is the smallest non-zero FPR); dashed: chance.", png)))
  for parent, lm in layers.items():
    keys = [(layer, f"{parent}/{layer}") for layer in lm if f"{parent}/{layer}" in run.scores]
    if not keys:
      continue
    lcurves = []
    if parent in run.scores:
      fpr, tpr, _ = roc_curve(run.scores[parent], m)
      lcurves.append((parent, float(top[parent]["auc"]), fpr, tpr))
    for layer, key in sorted(keys, key=lambda lk: -float(lm[lk[0]]["auc"])):
      fpr, tpr, _ = roc_curve(run.scores[key], m)
      lcurves.append((key, float(lm[layer]["auc"]), fpr, tpr))
    png = _plot_roc(lcurves, n_pos, n_neg, f"{parent}: meta-attack and per-layer scores", dpi)
    blocks.append(_Block("plot", plot=_Plot(
        "roc_layers.png", f"Log-log ROC of {parent}'s meta-attack and of each layer's score "
        "on its own.", png)))
    break  # one white-box attack per run
  return blocks


def _hist_section(run: _Run, top: dict, dpi: int) -> list[_Block]:
  names = [a for a in sorted(top, key=lambda a: -float(top[a].get("auc", 0))) if a in run.scores]
  if run.is_member is None or not names:
    return []
  items = [(a, float(top[a]["auc"]), run.scores[a]) for a in names]
  png = _plot_histograms(items, run.is_member, dpi)
  return [_Block("h2", "Score distributions"),
          _Block("plot", plot=_Plot(
              "histograms.png", "Member (blue) vs non-member (orange) score histograms per "
              "attack, each normalized to unit area. The range covers the bulk of the scores "
              "(3 interquartile ranges beyond the quartiles); the rarer scores beyond it are "
              "piled into the edge bins (their share is in each title).", png))]


# Calibrated white-box attacks: (name, heading, plot file).
CALIBRATED = (
    (WHITEBOX, "White-box meta-attack (Stolen Memories): calibrated operating point",
     "pr_whitebox.png"),
    ("nasr", "Nasr et al. learned white-box attack: calibrated operating point", "pr_nasr.png"),
)


def _whitebox_section(run: _Run, top: dict, dpi: int) -> list[_Block]:
  blocks = []
  for name, heading, filename in CALIBRATED:
    blocks += _calibrated_section(run, name, heading, filename, dpi)
  return blocks


def _calibrated_section(run: _Run, name: str, heading: str, filename: str,
                        dpi: int) -> list[_Block]:
  from mia_jax.metrics import precision_recall_curve
  entry = run.results["attacks"].get(name)
  if not isinstance(entry, dict) and name not in run.scores:
    return []
  cal = (entry or {}).get("calibrated") if isinstance(entry, dict) else None
  blocks = [_Block("h2", heading)]
  if cal:
    goal = (f"precision {_fmt(cal.get('target_precision'), 2)}" if cal.get("setting") != "nonmember"
            else f"FPR {_fmt(cal.get('target_fpr'), 4)}")
    blocks.append(_Block("p", f"The threshold was calibrated on the attacker's own data "
                              f"(setting '{cal.get('setting', '?')}') for {goal}; applied to the "
                              "evaluation examples it achieves:"))
    rows = [("threshold", _fmt(cal.get("threshold"), 4)),
            ("precision", _fmt(cal.get("precision"))), ("recall (TPR)", _fmt(cal.get("recall"))),
            ("FPR", _fmt(cal.get("fpr"), 4))]
    for p, v in (cal.get("prior_precision") or {}).items():
      rows.append((f"precision if {float(p):.0%} of the pool were members", _fmt(v)))
    for k in ("layers", "meta_kind", "use_loss", "num_proxies", "proxy_size", "best_epoch",
              "calibration_examples"):
      if k in cal:
        v = cal[k]
        rows.append((k, ", ".join(map(str, v)) if isinstance(v, list) else _fmt(v)))
    blocks.append(_Block("table", headers=("calibrated operating point", "value"), rows=rows,
                         align_numbers=False))
  if run.is_member is not None and name in run.scores:
    m = run.is_member
    precision, recall, _ = precision_recall_curve(run.scores[name], m)
    png = _plot_pr(precision, recall, cal, float(m.mean()), int(m.sum()), dpi, name)
    blocks.append(_Block("plot", plot=_Plot(
        filename, f"Precision-recall curve of {name} on the evaluation examples (right: "
        "recall on a log scale), with the operating point of the threshold calibrated on "
        "attacker data (star).", png)))
  return blocks


def _per_class_auc(run: _Run, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                             np.ndarray]:
  from mia_jax.metrics import roc_auc
  m, y = run.is_member, run.labels
  classes = np.unique(y)
  auc = np.full((len(names), classes.size), np.nan)
  n_mem = np.array([int((m & (y == c)).sum()) for c in classes])
  n_non = np.array([int((~m & (y == c)).sum()) for c in classes])
  for j, c in enumerate(classes):
    sel = y == c
    if n_mem[j] == 0 or n_non[j] == 0:
      continue
    for i, a in enumerate(names):
      auc[i, j] = roc_auc(run.scores[a][sel], m[sel])
  return classes, n_mem, n_non, auc


def _per_class_section(run: _Run, top: dict, dpi: int) -> list[_Block]:
  names = [a for a in sorted(top, key=lambda a: -float(top[a].get("auc", 0))) if a in run.scores]
  if run.is_member is None or run.labels is None or not names:
    return []
  classes, n_mem, n_non, auc = _per_class_auc(run, names)
  if classes.size < 2:
    return []
  blocks = [_Block("h2", "Per-class leakage"),
            _Block("p", "Each attack's AUC restricted to the evaluation examples of one class "
                        "(members and non-members with that label), the view of Shokri et "
                        "al. 2017, Fig. 11: classes with few training examples typically leak "
                        "more.")]
  png = _plot_per_class_heatmap(names, classes, auc, dpi)
  blocks.append(_Block("plot", plot=_Plot("per_class_auc.png",
                                          "Per-class AUC of every attack (red: leaks more).", png)))
  finite_rows = np.isfinite(auc).sum(axis=1) >= 3
  if classes.size >= 3 and np.ptp(n_mem) > 0 and finite_rows.any():
    shown = [i for i in range(len(names)) if finite_rows[i]][:5]
    png = _plot_per_class_scatter([names[i] for i in shown], n_mem, auc[shown], dpi)
    blocks.append(_Block("plot", plot=_Plot(
        "per_class_scatter.png", "Per-class AUC of the strongest attacks against the number of "
        "members of the class (its training examples in the target).", png)))
  shown = names[:4]
  headers = ("class", "members", "non-members") + tuple(f"AUC {a}" for a in shown)
  rows = [(str(c), str(n_mem[j]), str(n_non[j])) + tuple(_fmt(auc[i, j]) for i in range(len(shown)))
          for j, c in enumerate(classes)]
  if classes.size <= 100:
    blocks.append(_Block("table", headers=headers, rows=rows))
  return blocks


def _dp_series(values: Any, eps: list, name: str, notes: list[str]) -> np.ndarray | None:
  """A per-epsilon series: a list aligned with ``epsilon`` or a {str(eps): value} mapping."""
  if isinstance(values, dict):
    lookup = {}
    for k, v in values.items():
      try:
        lookup[float(k)] = v
      except (TypeError, ValueError):
        pass
    values = [lookup.get(e) for e in eps]
  if not isinstance(values, (list, tuple)) or len(values) != len(eps):
    notes.append(f"dp: {name} is not a list aligned with epsilon ({len(eps)} values): skipped.")
    return None
  out = np.array([np.nan if v is None else float(v) for v in values], np.float64)
  return out


def _eps_value(e: Any) -> float:
  if e is None:
    return math.inf
  if isinstance(e, str) and e.strip().lower() in ("inf", "infinity", "none", "no dp"):
    return math.inf
  return float(e)


def _dp_section(run: _Run, dpi: int) -> list[_Block]:
  dp = run.results.get("dp")
  if not isinstance(dp, dict):
    return []
  blocks = [_Block("h2", "Differential privacy: attack accuracy vs epsilon")]
  notes: list[str] = []
  try:
    eps = [_eps_value(e) for e in dp.get("epsilon") or []]
  except (TypeError, ValueError):
    eps = []
  if not eps:
    return blocks + [_Block("warn", "results.json 'dp' has no usable 'epsilon' list.")]
  delta = float(dp.get("delta", 0.0) or 0.0)
  acc = {}
  for name, vals in (dp.get("attack_accuracy") or {}).items():
    s = _dp_series(vals, eps, f"attack_accuracy.{name}", notes)
    if s is not None:
      acc[name] = s
  bounds = {}
  for name, vals in (dp.get("bounds") or {}).items():
    s = _dp_series(vals, eps, f"bounds.{name}", notes)
    if s is not None:
      if "advantage" in name:  # shown as the balanced-prior accuracy (1 + adv) / 2
        s, name = 0.5 * (1.0 + s), f"{name} as accuracy"
      bounds[name] = s
  e = np.asarray(eps)
  fin = np.isfinite(e)
  positive = fin & (e > 0)
  logx = bool(positive.any()) and bool(np.all(e[fin] > 0))
  fig = _figure((9.0, 6.0))
  ax = fig.add_subplot()
  if positive.any():
    lo, hi = float(e[positive].min()), float(e[positive].max())
    grid = (np.logspace(np.log10(lo) - 0.3, np.log10(hi) + 0.3, 300) if logx
            else np.linspace(0.0, hi * 1.1, 300))
    from mia_jax.dp import tight_accuracy_bound, yeom_accuracy_bound
    tight = [tight_accuracy_bound(float(g), delta) for g in grid]
    yeom = [min(1.0, yeom_accuracy_bound(float(g), delta)) for g in grid]
    ax.plot(grid, tight, color="black", lw=1.8,
            label=r"tight bound $(e^\varepsilon + \delta)/(1 + e^\varepsilon)$")
    ax.plot(grid, yeom, color="0.4", lw=1.3, linestyle="--",
            label=r"Yeom et al. bound $(e^\varepsilon + \delta)/2$ (clipped at 1)")
  for i, (name, s) in enumerate(bounds.items()):
    ok = fin & np.isfinite(s)
    ax.plot(e[ok], np.minimum(s[ok], 1.0), marker="xd+^v"[i % 5], ms=7, linestyle="none",
            color=("0.15", "0.5")[i % 2], label=f"{name} (results.json)")
  for i, (name, s) in enumerate(acc.items()):
    st = _style(i)
    ok = fin & np.isfinite(s)
    ax.plot(e[ok], s[ok], marker="o", ms=5, lw=1.5, label=name, **st)
    nodp = ~fin & np.isfinite(s)
    if nodp.any():
      ax.axhline(float(s[nodp][0]), color=st["color"], lw=1, linestyle=(0, (1, 3)),
                 label=f"{name}, no DP")
  ax.axhline(0.5, color="0.6", lw=0.8, linestyle="-.", label="chance")
  if logx:
    ax.set_xscale("log")
  ax.set_ylim(0.45, 1.02)
  ax.set_xlabel("epsilon" + (f" (delta = {delta:g})" if delta else ""))
  ax.set_ylabel("attack accuracy (balanced prior)")
  ax.grid(True, alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
  blocks.append(_Block("plot", plot=_Plot(
      "dp.png", "Membership-inference accuracy (balanced prior) of each attack on targets "
      "trained with DP-SGD at each epsilon, against upper bounds on the accuracy of any attack "
      "on an (epsilon, delta)-DP model: the tight bound (e^eps + delta)/(1 + e^eps), which is "
      "(1 + tanh(eps/2))/2 at delta = 0, and Yeom et al.'s (e^eps + delta)/2. Dotted "
      "horizontal lines: the same attack on the non-private target.",
      _png(fig, dpi))))
  headers = ("epsilon",) + tuple(acc) + tuple(bounds)
  rows = [(_fmt(eps[j], 3),) + tuple(_fmt(s[j]) for s in acc.values())
          + tuple(_fmt(s[j]) for s in bounds.values()) for j in range(len(eps))]
  blocks.append(_Block("table", headers=headers, rows=rows))
  blocks += [_Block("warn", n) for n in notes]
  return blocks


def plot_empirical_epsilon(points: Sequence[tuple[str, float, float]], *, dpi: int = 100,
                           title: str | None = None) -> bytes:
  """PNG of empirical epsilon lower bounds against theoretical epsilon, with the diagonal
  (a valid audit stays on or below it). ``points``: ``(series, theoretical, empirical)``;
  a series is one line (an attack, or attack and estimator). Points without DP
  (theoretical inf) sit at a column of their own on the right, marked "no DP"."""
  series: dict[str, list[tuple[float, float]]] = {}
  for name, theo, emp in points:
    series.setdefault(name, []).append((float(theo), float(emp)))
  fin = [t for _, t, _ in points if math.isfinite(t)]
  has_inf = any(not math.isfinite(t) for _, t, _ in points)
  top_fin = max(fin) if fin else 1.0
  x_inf = top_fin * 1.35 if fin else 1.0
  fig = _figure((8.5, 6.0))
  ax = fig.add_subplot()
  emp_max = max([e for _, _, e in points] + [0.0])
  if fin:
    grid = np.linspace(0.0, top_fin * 1.1, 50)
    ax.plot(grid, grid, color="black", lw=1.2, label="empirical = theoretical")
  for i, (name, pts) in enumerate(series.items()):
    st = _style(i)
    f = sorted(p for p in pts if math.isfinite(p[0]))
    if f:
      ax.plot([p[0] for p in f], [p[1] for p in f], marker="o", ms=5, lw=1.4, label=name, **st)
    inf = [p for p in pts if not math.isfinite(p[0])]
    if inf:
      ax.plot([x_inf] * len(inf), [p[1] for p in inf], marker="s", ms=6, linestyle="none",
              color=st["color"], label=None if f else name)
  if has_inf:
    ax.axvline(x_inf * 0.93 if fin else 0.5, color="0.6", lw=0.8, linestyle=":")
    ticks = [t for t in ax.get_xticks() if 0 <= t <= top_fin * 1.1] if fin else []
    ax.set_xticks(ticks + [x_inf], [f"{t:g}" for t in ticks] + ["no DP"])
  ax.set_ylim(0.0, max(1.0, emp_max * 1.15, (top_fin * 1.1) if fin else 0.0))
  ax.set_xlabel("theoretical epsilon (accountant)")
  ax.set_ylabel("empirical epsilon lower bound")
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(True, alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
  return _png(fig, dpi)


def _plot_audit_bars(values: dict[str, dict[str, float]], estimators: Sequence[str],
                     theoretical: float, dpi: int) -> bytes:
  """Grouped horizontal bars: each attack's lower bound per estimator, and the theoretical
  epsilon as a vertical line (a valid audit stays left of it)."""
  names = list(values)
  fig = _figure((8.5, 1.2 + 0.55 * len(names) * max(1, len(estimators)) ** 0.5))
  ax = fig.add_subplot()
  h = 0.8 / max(1, len(estimators))
  for j, est in enumerate(estimators):
    ys = [i + (j - (len(estimators) - 1) / 2) * h for i in range(len(names))]
    ax.barh(ys, [values[n].get(est, np.nan) for n in names], height=h * 0.9,
            color=_COLORS[j % len(_COLORS)], label=est)
  if math.isfinite(theoretical):
    ax.axvline(theoretical, color="black", lw=1.5, linestyle="--",
               label=f"theoretical epsilon {theoretical:.3g}")
  ax.set_yticks(range(len(names)), names)
  ax.invert_yaxis()
  ax.set_xlabel("empirical epsilon lower bound")
  ax.set_xlim(0.0, max([1.0] + [v * 1.1 for d in values.values() for v in d.values()
                                if np.isfinite(v)]
                       + ([theoretical * 1.1] if math.isfinite(theoretical) else [])))
  ax.grid(True, axis="x", alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8.5, frameon=False)
  return _png(fig, dpi)


OVER_THE_BOUND = ("Empirical epsilon above the theoretical one (the training does not meet "
                  "its guarantee, or the accounting is wrong): ")


def _privacy_audit_section(run: _Run, dpi: int) -> list[_Block]:
  pa = run.results.get("privacy_audit")
  if not isinstance(pa, dict):
    return []
  blocks = [_Block("h2", "Privacy audit: empirical epsilon from canaries")]
  can = pa.get("canaries") or {}
  theo = _eps_value(pa.get("theoretical_epsilon"))
  estimators = [str(e) for e in pa.get("estimators") or []]
  runs = can.get("runs", 1)
  blocks.append(_Block("p", (
      f"{can.get('count', '?')} {can.get('kind', '?')} canaries, each included in the "
      f"target's training with probability 1/2 (included: {can.get('included', '?')}); "
      + ("one training run (the one-run audit of Steinke, Nasr & Jagielski 2023)"
         if runs == 1 else f"{runs} training runs, guesses pooled")
      + f". Lower bounds hold with confidence {_fmt(pa.get('confidence'))} at delta "
      f"{pa.get('delta')}; theoretical epsilon (accountant): "
      + ("none (no DP)" if not math.isfinite(theo) else _fmt(theo, 4)) + ".")))
  attacks = pa.get("attacks") or {}
  rows = []
  bars: dict[str, dict[str, float]] = {}
  for name, entry in attacks.items():
    eps = entry.get("epsilon") or {}
    row = [name, _fmt(entry.get("auc"))]
    for est in estimators:
      v = eps.get(est) or {}
      thr = v.get("threshold")
      row.append(_fmt(v.get("epsilon")) + ("" if thr is None else f" (t={_fmt(thr)})"))
      if v.get("epsilon") is not None:
        bars.setdefault(name, {})[est] = float(v["epsilon"])
    rows.append(row)
  if rows:
    blocks.append(_Block("table", headers=("attack", "AUC on canaries")
                         + tuple(f"epsilon, {e}" for e in estimators), rows=rows))
    blocks.append(_Block("note", "t: the score threshold at and above which a canary was "
                                 "guessed included."))
  if math.isfinite(theo):
    over = [(f"{n} ({est})", e) for n, d in bars.items() for est, e in d.items()
            if e > theo + 1e-9]
    if over:
      blocks.append(_Block("warn", OVER_THE_BOUND
                           + ", ".join(f"{n}: {_fmt(e)}" for n, e in over)))
  if bars:
    blocks.append(_Block("plot", plot=_Plot(
        "privacy_audit.png", "Empirical epsilon lower bound of each attack by estimator"
        + (", and the theoretical epsilon of the training (dashed): an audit of a correct "
           "DP-SGD stays left of it, and the closer it comes the tighter the audit."
           if math.isfinite(theo) else " (the target was trained without DP)."),
        _plot_audit_bars(bars, estimators, theo, dpi))))
  return blocks


def _environment_section(run: _Run, dpi: int) -> list[_Block]:
  r = run.results
  blocks = [_Block("h2", "Environment")]
  dev = r.get("device") or {}
  if dev:
    blocks.append(_Block("p", f"Device: {dev.get('platform', '?')} "
                              f"({dev.get('device_kind', '?')}) x {dev.get('count', '?')}."))
  vers = r.get("versions") or {}
  if vers:
    blocks.append(_Block("table", headers=("package", "version"),
                         rows=[(k, str(v)) for k, v in vers.items()], align_numbers=False))
  timings = []
  for k, v in (r.get("timings") or {}).items():
    try:
      timings.append((str(k), float(v)))
    except (TypeError, ValueError):
      pass
  if timings:
    total = sum(t for _, t in timings)
    blocks.append(_Block("h3", "Timings"))
    rows = [(k, f"{t:.2f}", f"{100 * t / total:.1f}%" if total > 0 else "-") for k, t in timings]
    rows.append(("total", f"{total:.2f}", "100.0%" if total > 0 else "-"))
    blocks.append(_Block("table", headers=("stage", "seconds", "share"), rows=rows))
    blocks.append(_Block("plot", plot=_Plot("timings.png", "Wall-clock seconds per audit stage.",
                                            _plot_timings(timings, dpi))))
  if isinstance(r.get("config"), dict):
    blocks.append(_Block("h3", "Configuration"))
    rows = [(k, json.dumps(v, sort_keys=True)) for k, v in sorted(r["config"].items())]
    blocks.append(_Block("table", headers=("option", "value"), rows=rows, align_numbers=False))
  return blocks


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------

_write_atomic = write_bytes_atomic


def write_report(run_dir: str | os.PathLike, *, dpi: int = 100) -> tuple[str, str]:
  """Writes ``report.html`` and ``report.md`` (with ``plots/*.png``) into an audit run dir.

  Args:
    run_dir: a directory written by ``mia-jax audit --out DIR``: ``results.json`` is
      required; ``scores.npz`` supplies the curves, histograms and per-class metrics (without
      it the report holds the tables only). An optional ``results["dp"]`` mapping
      (``epsilon``: list, ``attack_accuracy``: {attack: list per epsilon}, ``bounds``:
      {name: list per epsilon}, optional ``delta``) adds a DP section.
    dpi: resolution of the plots.

  Returns:
    ``(html_path, md_path)``, absolute paths.

  Raises:
    MiaInputError: ``run_dir`` is not a directory, or its ``results.json`` is missing or
      unreadable, or ``scores.npz`` is malformed.
  """
  check_dpi(dpi)
  run = _load_run(run_dir)
  top, layers = _attack_metrics(run)

  blocks = _header(run)
  blocks += [_Block("warn", n) for n in run.notes]
  blocks += _summary(run, top, layers)
  blocks += _roc_section(run, top, layers, dpi)
  blocks += _hist_section(run, top, dpi)
  blocks += _whitebox_section(run, top, dpi)
  blocks += _per_class_section(run, top, dpi)
  blocks += _dp_section(run, dpi)
  blocks += _privacy_audit_section(run, dpi)
  blocks += _environment_section(run, dpi)

  plots = [b.plot for b in blocks if b.kind == "plot"]
  plot_dir = os.path.join(run.run_dir, "plots")
  for p in plots:
    _write_atomic(os.path.join(plot_dir, p.name), p.png)
  written = {p.name for p in plots}
  for name in PLOT_FILES:  # a plot of an earlier report that no longer applies
    stale = os.path.join(plot_dir, name)
    if name not in written and os.path.isfile(stale):
      os.remove(stale)

  title = blocks[0].text
  html_path = os.path.join(run.run_dir, "report.html")
  md_path = os.path.join(run.run_dir, "report.md")
  _write_atomic(html_path, _render_html(title, blocks).encode("utf-8"))
  _write_atomic(md_path, _render_md(blocks).encode("utf-8"))
  return html_path, md_path


SWEEP_PLOT = "sweep_empirical_epsilon.png"


def write_sweep_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                       dpi: int = 100) -> tuple[str, str]:
  """Writes ``sweep.html`` and ``sweep.md`` (with ``plots/sweep_empirical_epsilon.png``)
  into ``out_dir``: the privacy audits of several runs -- typically one DP-SGD recipe at
  several theoretical epsilons, ``mia-jax audit --dp-epsilon E --canaries N`` each -- in
  one table (every attack and estimator of every run) and one plot of empirical against
  theoretical epsilon with the diagonal (one line per attack, its best estimator per run).

  Args:
    run_dirs: directories of finished audits with canaries (``results.json`` with
      ``privacy_audit``), each given once.
    out_dir: where the sweep page goes (created if needed; the runs are only read).
    dpi: resolution of the plot.

  Returns:
    ``(html_path, md_path)``, absolute paths.

  Raises:
    MiaInputError: no run, a run given twice, a run that is not a finished audit or was
      audited without canaries, or a bad ``dpi``.
  """
  check_dpi(dpi)
  if isinstance(run_dirs, (str, os.PathLike)) or not run_dirs:
    raise MiaInputError(f"run_dirs: expected one or more run directories, got {run_dirs!r}")
  seen: dict[str, str] = {}
  paths, audits = [], []
  for d in run_dirs:  # results.json only: the sweep needs no per-example scores
    path, results = _load_results(d)
    key = os.path.realpath(path)
    if key in seen:
      raise MiaInputError(f"run_dirs: {d} is given twice (as {seen[key]})")
    seen[key] = str(d)
    if not isinstance(results.get("privacy_audit"), dict):
      raise MiaInputError(f"run_dirs: {d} has no privacy audit (audit it with --canaries N)")
    paths.append(path)
    audits.append(results["privacy_audit"])
  names = _short_names(paths)
  order = sorted(range(len(paths)), key=lambda i: (_eps_value(audits[i].get("theoretical_epsilon")),
                                                  names[i]))
  estimators = list(dict.fromkeys(str(e) for a in audits for e in a.get("estimators") or []))

  def setup(a):
    c = a.get("canaries") or {}
    return f"{c.get('kind', '?')}, {c.get('runs', 1)} run{'s' if c.get('runs', 1) != 1 else ''}"

  setups = {setup(a) for a in audits}
  rows, points, over = [], [], []
  for i in order:
    a = audits[i]
    theo = _eps_value(a.get("theoretical_epsilon"))
    can = a.get("canaries") or {}
    for attack, entry in (a.get("attacks") or {}).items():
      eps = entry.get("epsilon") or {}
      values = {e: (eps.get(e) or {}).get("epsilon") for e in estimators}
      rows.append([names[i], f"{can.get('count', '?')} {setup(a)}",
                   "none (no DP)" if not math.isfinite(theo) else _fmt(theo, 4), attack,
                   _fmt(entry.get("auc")), _fmt(entry.get("guesses"))]
                  + [_fmt(values[e]) for e in estimators])
      found = [float(v) for v in values.values() if v is not None]
      if found:
        label = attack if len(setups) == 1 else f"{attack} ({setup(a)})"
        points.append((label, theo, max(found)))
        over += [f"{names[i]} / {attack} ({e}): {_fmt(v)} > {_fmt(theo)}"
                 for e, v in values.items() if v is not None and v > theo + 1e-9]
  confidences = {str(a.get("confidence")) for a in audits}
  deltas = {str(a.get("delta")) for a in audits}
  blocks = [_Block("h1", "Privacy-audit sweep: empirical against theoretical epsilon"),
            _Block("p", f"{len(paths)} audit runs with canaries"
                        + (f" ({next(iter(setups))} canaries)" if len(setups) == 1 else "")
                        + f"; lower bounds at confidence {', '.join(sorted(confidences))} and "
                          f"delta {', '.join(sorted(deltas))}. A valid audit of a correct DP "
                          "training stays on or below the diagonal; the closer it comes, the "
                          "tighter the audit.")]
  if len(confidences) > 1 or len(deltas) > 1:
    blocks.append(_Block("warn", "The runs' bounds hold at different confidences or deltas; "
                                 "compare them with care."))
  if over:
    blocks.append(_Block("warn", OVER_THE_BOUND + "; ".join(over)))
  if points:
    blocks.append(_Block("plot", plot=_Plot(
        SWEEP_PLOT, "Empirical epsilon lower bound (each attack's best estimator per run) "
                    "against the accountant's epsilon, with the diagonal; runs without DP "
                    "sit in the 'no DP' column.",
        plot_empirical_epsilon(points, dpi=dpi))))
  blocks.append(_Block("h2", "Every run, attack and estimator"))
  blocks.append(_Block("table", headers=("run", "canaries", "theoretical epsilon", "attack",
                                         "AUC on canaries", "guesses")
                       + tuple(f"epsilon, {e}" for e in estimators), rows=rows))
  blocks.append(_Block("note", "Runs: " + "; ".join(f"{names[i]} = {paths[i]}"
                                                     for i in order)))
  out = os.path.abspath(os.fspath(out_dir))
  os.makedirs(os.path.join(out, "plots"), exist_ok=True)
  for b in blocks:
    if b.kind == "plot":
      _write_atomic(os.path.join(out, "plots", b.plot.name), b.plot.png)
  html_path, md_path = os.path.join(out, "sweep.html"), os.path.join(out, "sweep.md")
  _write_atomic(html_path, _render_html(blocks[0].text, blocks).encode("utf-8"))
  _write_atomic(md_path, _render_md(blocks).encode("utf-8"))
  return html_path, md_path


def _short_names(paths: Sequence[str]) -> list[str]:
  """The runs' directory names, or their paths relative to the common parent when two
  share a name."""
  base = [os.path.basename(os.path.normpath(p)) for p in paths]
  if len(set(base)) == len(base):
    return base
  common = os.path.commonpath([os.path.abspath(p) for p in paths])
  return [os.path.relpath(os.path.abspath(p), common) for p in paths]
