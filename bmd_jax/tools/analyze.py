"""Weight-distribution analysis of training runs: is the latent distribution bi-modal?

    python -m bmd_jax.tools.analyze --workdir=runs/digits
    python -m bmd_jax.tools.analyze --workdir=runs/plain --workdir=runs/bd_bnn --labels=plain,BD-BNN \
        --out=cmp

For every stage of a run (step 1's teacher and step 2's student in the two-step recipe) it
compares each binary layer's latent weights at the stage's start and end. Given several
workdirs (--workdir repeated), every figure draws each run in its own colour, to compare runs:

- ``<out>/hist_<stage>.png``: per-layer histograms of the weights standardized per output
  channel (what sign() sees under IR-Net's scaling); the end filled (one run) or a solid line,
  the start a dashed line; each subplot's title gives the latents' kurtosis at start and end and
  its configured target, and the standardized view's bimodality coefficient and near-zero
  share;
- ``<out>/kurtosis.png``: per-layer kurtosis at start (hollow) and end (filled) of every stage,
  a subplot per stage, with the configured kurtosis target (``config.loss.kurtosis.target``, a
  float or one value per layer) as a line; a bi-modal +-a distribution has kurtosis 1, a
  uniform one 1.8, a Gaussian 3;
- ``<out>/analysis.json`` and ``<out>/analysis.md``: the table, one row per run, stage and layer:
  kurtosis at start and end (losses.kurtosis), the flip ratio (the share of binary weights
  whose sign differs between start and end, the sign being that of the binary kernel, i.e. of
  the standardized weight under IR-Net's scaling) and the share of weights near zero
  (``|w| < near_zero * std(w)`` of the layer, default 0.1: about 8% for a Gaussian, and fewer
  the more bi-modal the layer); besides, Sarle's bimodality coefficient and the histogram's
  height at 0 over its lower mode, each at start and end, on the raw latents and (keys
  ``standardized_*``) on the standardized weights (bmd_jax/core/bimodality.py defines them all).

A stage's start is what it trained from: the checkpoint its config's ``init_from`` names, or,
without one, the model's initialization from the config's seed (as training makes it).
Its end is the stage's newest checkpoint. ``<out>`` defaults to ``<workdir>/analysis`` for one
workdir and must be given for several.
"""

from __future__ import annotations

import io
import json
import os

import jax
import matplotlib
import numpy as np

from bmd_jax.core import bimodality, layers, losses, objective
from bmd_jax.infra import checkpoint, paths
from bmd_jax import models
from bmd_jax.tools import packed

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top,wrong-import-position


def _latents(params) -> dict[str, np.ndarray]:
  return {k.removesuffix("/" + layers.LATENT_KERNEL): np.asarray(v, np.float32)
          for k, v in losses.binarized_kernels(params).items()}


def kurtosis_targets(config, regularized: list[str]) -> dict[str, float]:
  """{binary layer: kurtosis target} of a stage, paired as training pairs them: `regularized`
  is the model's list of the layers the term covers (models.kurtosis_layers, definition
  order), the targets loss.kurtosis.targets or loss.kurtosis.target; {} when the term is off.
  Real convs the term covers are not plotted, so they are left out here."""
  kurtosis = (config.get("loss") or {}).get("kurtosis") or {}
  if not kurtosis.get("weight"):
    return {}
  target = np.broadcast_to(
      np.asarray(objective.kurtosis_targets(kurtosis, regularized), np.float64),
      (len(regularized),))
  suffix = "/" + layers.LATENT_KERNEL
  # 6 digits give back the config's decimals (1.8, not 1.79999).
  return {p.removesuffix(suffix): float(f"{v:.6g}") for p, v in zip(regularized, target)
          if p.endswith(suffix)}


def stage_weights(workdir: str, stage: str) -> dict:
  """{'config', 'start', 'end', 'end_step', 'start_from', 'start_label', 'targets'} of one
  stage's binary latents."""
  # The newest readable checkpoint: a damaged newest one is passed over, as training does.
  ckpt, _, config, end = checkpoint.read_chosen(workdir, stage, precision=None)
  model, image_shape = models.from_checkpoint(config, end["params"])
  if config.get("init_from"):
    source, start = checkpoint.load_source(config, "init_from", workdir, stage, end)
    start_params = start["params"]
    start_from, start_label = source, f"{config.init_from}'s end"
  else:
    start_params, _ = models.initialized(jax.random.PRNGKey(config.seed), model, image_shape)
    start_from = f"initialization (seed {config.seed})"
    start_label = f"initialization, seed {config.seed}"
  return {"config": config, "start": _latents(start_params), "end": _latents(end["params"]),
          "end_step": ckpt.step, "start_from": start_from, "start_label": start_label,
          "targets": kurtosis_targets(config, models.kurtosis_layers(
              model, image_shape, config.loss.kurtosis.get("include_shortcuts", True)))}


def layer_row(start: np.ndarray, end: np.ndarray, scale_mode: str, near_zero: float) -> dict:
  """One layer's table row: its size, the flip ratio, and at start and end the shape measures
  of bimodality.layer_stats on the raw latents (``kurtosis_*``, ``near_zero_*``,
  ``coefficient_*``, ``zero_density_*``) and on the per-channel standardized weights IR-Net's
  sign() sees (the same names with ``standardized_`` before them)."""
  start_neg, _ = packed.kernel_signs_and_scale(start, scale_mode)
  end_neg, _ = packed.kernel_signs_and_scale(end, scale_mode)
  row = {"params": int(end.size),
         "flip_ratio": float(np.mean(np.asarray(start_neg) != np.asarray(end_neg)))}
  for view, prefix in (("latent", ""), ("standardized", "standardized_")):
    for when, w in (("start", start), ("end", end)):
      stats = bimodality.layer_stats(w, view, near_zero)
      row.update({f"{prefix}{name}_{when}": value for name, value in stats.items()})
  return row



def load_run(workdir: str, label: str) -> dict:
  """{'label', 'workdir', 'stages': {stage: stage_weights}} of a run, stages in its order."""
  return {"label": label, "workdir": workdir,
          "stages": {stage: stage_weights(workdir, stage)
                     for stage in checkpoint.stage_order(workdir)}}


def run_labels(workdirs: list[str], labels: list[str] | None = None) -> list[str]:
  """The given labels, or the workdirs' folder names (their paths where names repeat)."""
  if labels:
    if len(labels) != len(workdirs) or len(set(labels)) != len(labels):
      raise ValueError(f"--labels needs one distinct label per workdir: got {labels} for "
                       f"{workdirs}")
    return list(labels)
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else list(workdirs)


def _kurt(w: np.ndarray) -> float:
  return float(losses.kurtosis(w))


def _colour(i: int):
  return plt.get_cmap("tab10")(i % 10)


def _stage_names(runs: list[dict]) -> list[str]:
  """Every run's stages, in order of first appearance."""
  return list(dict.fromkeys(s for run in runs for s in run["stages"]))


def _runs_with(runs: list[dict], stage: str, layer: str | None = None) -> list[tuple]:
  """(index, run, its stage's weights) of the runs that have `stage` (and `layer`); the index
  in all runs gives a run the same colour in every figure."""
  return [(i, run, run["stages"][stage]) for i, run in enumerate(runs)
          if stage in run["stages"] and (layer is None or layer in run["stages"][stage]["end"])]


def _layer_names(runs: list[dict], stage: str) -> list[str]:
  return list(dict.fromkeys(n for _, _, w in _runs_with(runs, stage) for n in w["end"]))


def _prefix(runs: list[dict], run: dict) -> str:
  """A run's label before its series' names, when there are several runs to tell apart."""
  return f"{run['label']} " if len(runs) > 1 else ""


def _layer_title(layer: str, runs: list[dict], stage: str) -> str:
  """The layer, then per run its latents' kurtosis at start and end (and target, where
  configured), and the standardized view's bimodality coefficient and near-zero share."""
  lines = [layer]
  for _, run, weights in _runs_with(runs, stage, layer):
    kurt = (f"kurtosis {_kurt(weights['start'][layer]):.2f} \u2192 "
            f"{_kurt(weights['end'][layer]):.2f}")
    target = weights["targets"].get(layer)
    if target is not None:
      kurt += f" (target {target:.2f})"
    start, end = (bimodality.layer_stats(weights[when][layer]) for when in ("start", "end"))
    shape = (f"BC {start['coefficient']:.2f} \u2192 {end['coefficient']:.2f}, near 0 "
             f"{start['near_zero']:.1%} \u2192 {end['near_zero']:.1%}")
    who = f"{run['label']}: " if len(runs) > 1 else ""
    lines += [who + kurt, who + shape]
  return "\n".join(lines)


def _layer_histogram(ax, layer: str, runs: list[dict], stage: str) -> None:
  """The weights sign() sees under IR-Net scaling (each output channel standardized): start
  dashed, end solid (and filled for one run), a colour per run, on shared bins."""
  present = _runs_with(runs, stage, layer)
  seen = {(i, when): bimodality.view_of(w[when][layer]).ravel() for i, _, w in present
          for when in ("start", "end")}
  every = np.concatenate(list(seen.values()))
  bins = np.linspace(every.min(), every.max(), 81)
  for i, _, _ in present:
    end, start = seen[i, "end"], seen[i, "start"]
    if len(runs) == 1:
      ax.hist(end, bins=bins, density=True, color=_colour(i), alpha=0.35)
    ax.hist(end, bins=bins, density=True, histtype="step", color=_colour(i), lw=1.2)
    ax.hist(start, bins=bins, density=True, histtype="step", color=_colour(i), lw=0.9, ls="--")
  ax.set_title(_layer_title(layer, runs, stage), fontsize=8)
  ax.set_xlabel("weight standardized per output channel", fontsize=7)
  ax.set_ylabel("density", fontsize=7)
  ax.tick_params(labelsize=7)


def _start_end_handles(runs: list[dict], stage: str) -> list:
  """Legend entries: per run a dashed start line and a solid end line in its colour."""
  handles = []
  for i, run, weights in _runs_with(runs, stage):
    prefix = _prefix(runs, run)
    handles.append(Line2D([], [], color=_colour(i), ls="--",
                          label=f"{prefix}start: {weights['start_label']}"))
    handles.append(Line2D([], [], color=_colour(i),
                          label=f"{prefix}end: step {weights['end_step']}"))
  return handles


def histogram_figure(runs: list[dict], stage: str):
  """A subplot per binary layer of `stage`: its latent weights at start and end of each run."""
  names = _layer_names(runs, stage)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  title_lines = 1 + 2 * len(_runs_with(runs, stage))
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, (2.3 + 0.15 * title_lines) * rows
                                                + 0.9), squeeze=False, layout="constrained")
  for ax, name in zip(axes.flat, names):
    _layer_histogram(ax, name, runs, stage)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  present = _runs_with(runs, stage)
  precisions = sorted({w["config"].model.precision for _, _, w in present})
  who = runs[0]["label"] + ", " if len(runs) == 1 else ""
  fig.suptitle(f"{who}{stage} ({', '.join(precisions)}): weights standardized per output "
               "channel (what sign() sees under IR-Net scaling) at start and end", fontsize=10)
  # Below the plots: a legend above them would overlap the title.
  fig.legend(handles=_start_end_handles(runs, stage), loc="outside lower center", fontsize=8,
             ncol=2 * len(present) if len(present) < 3 else 2)
  return fig


def _target_lines(ax, runs: list[dict], stage: str, layers: list[str]) -> None:
  """The configured targets: one line per distinct set of targets, labelled by its runs."""
  groups = {}
  for i, run, weights in _runs_with(runs, stage):
    if weights["targets"]:
      key = tuple(weights["targets"].get(layer, np.nan) for layer in layers)
      groups.setdefault(key, []).append((i, run["label"]))
  for key, members in groups.items():
    who = " (" + ", ".join(label for _, label in members) + ")" if len(runs) > 1 else ""
    colour = "black" if len(groups) == 1 else _colour(members[0][0])
    style = {"color": colour, "zorder": 1.5}  # under the markers
    values = set(key)
    if len(values) == 1 and not np.isnan(key[0]):
      ax.axhline(key[0], lw=1.2, label=f"kurtosis target {key[0]:g}{who}", **style)
    else:  # per-layer targets: a short line over each layer
      x = np.arange(len(layers))
      ax.hlines(key, x - 0.4, x + 0.4, lw=1.6, label=f"kurtosis target{who}", **style)


def _kurtosis_axes(ax, runs: list[dict], stage: str) -> None:
  """Each run's start (hollow) and end (filled) per layer, side by side, and the targets."""
  layers = _layer_names(runs, stage)
  present = _runs_with(runs, stage)
  x = np.arange(len(layers))
  for k, (i, run, weights) in enumerate(present):
    has = [j for j, layer in enumerate(layers) if layer in weights["end"]]
    xs = x[has] + (k - (len(present) - 1) / 2) * 0.6 / len(present)
    start = [_kurt(weights["start"][layers[j]]) for j in has]
    end = [_kurt(weights["end"][layers[j]]) for j in has]
    ax.vlines(xs, start, end, color=_colour(i), lw=0.8, alpha=0.5)
    ax.plot(xs, start, "o", mfc="none", color=_colour(i), label=f"{_prefix(runs, run)}start")
    ax.plot(xs, end, "s", color=_colour(i), label=f"{_prefix(runs, run)}end")
  _target_lines(ax, runs, stage, layers)
  ax.axhline(3.0, color="grey", lw=0.8, ls=":", label="Gaussian (3)")
  ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="two-point \u00b1a (1)")
  ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
  ax.set_xlim(-0.6, len(layers) - 0.4)
  ax.set_xlabel("binary layer")
  ax.set_ylabel("kurtosis of latent weights")
  ax.set_title(f"{stage}: kurtosis at start and end", fontsize=10)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def kurtosis_figure(runs: list[dict]):
  """A subplot per stage: every layer's kurtosis at start and end of each run, and the target."""
  names = _stage_names(runs)
  layers = [_layer_names(runs, stage) for stage in names]
  # Wide enough for every layer's tick, tall enough for the longest rotated name.
  width = max(6, 0.45 * max(map(len, layers))) + 2.5
  longest = max(len(n) for names_ in layers for n in names_)
  fig, axes = plt.subplots(len(names), 1, squeeze=False, layout="constrained",
                           figsize=(width, len(names) * (2.8 + 0.07 * longest)))
  for ax, stage in zip(axes.flat, names):
    _kurtosis_axes(ax, runs, stage)
  return fig


def _save(fig, path: paths.PathLike, dpi: int) -> str:
  buffer = io.BytesIO()  # matplotlib writes local files only; a URL takes the bytes
  fig.savefig(buffer, dpi=dpi, format="png")
  plt.close(fig)
  paths.resolve(path).write_bytes(buffer.getvalue())
  return str(path)


# The markdown table's columns after run, stage and layer: (heading, row key, format). "std."
# columns are on the per-channel standardized weights (what IR-Net's sign() sees); BC is
# Sarle's bimodality coefficient, "0/mode" the histogram's height at 0 over its lower mode.
COLUMNS = (("params", "params", "d"), ("kurtosis start", "kurtosis_start", ".3f"),
           ("kurtosis end", "kurtosis_end", ".3f"), ("flip ratio", "flip_ratio", ".4f"),
           ("near zero start", "near_zero_start", ".4f"),
           ("near zero end", "near_zero_end", ".4f"),
           ("std. kurtosis end", "standardized_kurtosis_end", ".3f"),
           ("std. near zero end", "standardized_near_zero_end", ".4f"),
           ("std. BC start", "standardized_coefficient_start", ".3f"),
           ("std. BC end", "standardized_coefficient_end", ".3f"),
           ("std. 0/mode end", "standardized_zero_density_end", ".2f"))


def markdown_table(table: list[dict]) -> str:
  several = len({r["run"] for r in table}) > 1
  head = ["run"] * several + ["stage", "layer"] + [heading for heading, _, _ in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table:
    cells = [r["run"]] * several + [r["stage"], r["layer"]] + [
        format(r[key], spec) for _, key, spec in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _stage_info(weights: dict) -> dict:
  config = weights["config"]
  return {"role": "student" if config.get("teacher") else "stage",
          "teacher": config.get("teacher") or None, "precision": config.model.precision,
          "end_step": weights["end_step"], "start_from": weights["start_from"],
          "kurtosis_targets": weights["targets"]}


def analyze(workdirs, out: str | None = None, near_zero: float = 0.1,
            labels: list[str] | None = None, dpi: int = 120) -> dict:
  """Writes the figures and the table of every stage of the runs; returns the table's record.

  `workdirs` is one workdir or a list of them (compared on the same figures).
  """
  workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
  if out is None:
    if len(workdirs) > 1:
      raise ValueError("several workdirs need --out, the folder of the comparison")
    out = paths.resolve(workdirs[0]) / "analysis"
  out = paths.resolve(out)
  out.mkdir(parents=True, exist_ok=True)
  runs = [load_run(w, label) for w, label in zip(workdirs, run_labels(workdirs, labels))]
  table = [{"run": run["label"], "stage": stage, "layer": layer, **layer_row(
      weights["start"][layer], weights["end"][layer], weights["config"].model.scale_mode,
      near_zero)}
           for run in runs for stage, weights in run["stages"].items() for layer in weights["end"]]
  figures = [_save(histogram_figure(runs, stage), out / f"hist_{stage}.png", dpi)
             for stage in _stage_names(runs)]
  figures.append(_save(kurtosis_figure(runs), out / "kurtosis.png", dpi))
  record = {"near_zero": near_zero, "layers": table, "figures": figures,
            "runs": {run["label"]: {"workdir": str(paths.resolve(run["workdir"])), "stages": {
                stage: _stage_info(w) for stage, w in run["stages"].items()}} for run in runs}}
  (out / "analysis.json").write_text(json.dumps(record, indent=1))
  (out / "analysis.md").write_text(markdown_table(table) + "\n")
  return record


def main(argv):
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
  checkpoint.one_line_orbax_errors()  # a damaged checkpoint is reported once, by the fallback
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  record = analyze(f.workdir, f.out, f.near_zero, f.labels, f.dpi)
  print(markdown_table(record["layers"]))
  print("wrote " + ", ".join(record["figures"]))


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top

  from bmd_jax.infra import cli  # pylint: disable=g-import-not-at-top

  # Repeated, not comma-separated: a workdir's name may hold a comma (runs/lr=0.005,bs=64).
  flags.DEFINE_multi_string("workdir", None, "A training run's workdir; repeat the flag "
                            "(--workdir=A --workdir=B) to compare runs on the same figures.")
  flags.DEFINE_list("labels", None, "The runs' names in the figures, one per workdir "
                    "(default: the workdirs' folder names).")
  flags.DEFINE_string("out", None, "Output folder (default: <workdir>/analysis; required for "
                      "several workdirs).")
  flags.DEFINE_float("near_zero", 0.1, "'Near zero' means |w| < near_zero * std(w).")
  flags.DEFINE_integer("dpi", 120, "Resolution of the PNG figures.")
  flags.mark_flags_as_required(["workdir"])
  flags.register_multi_flags_validator(  # before any work, as a bad command line
      ["workdir", "out"], lambda f: len(f["workdir"] or ()) < 2 or f["out"],
      "several --workdir need --out, the folder of the comparison")
  cli.run(main)
