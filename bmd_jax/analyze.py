"""Weight-distribution analysis of a training run: is the latent distribution bi-modal?

    python -m bmd_jax.analyze --workdir=runs/digits

For every stage of the run (step 1's teacher and step 2's student in the two-step recipe) it
compares each binary layer's latent weights at the stage's start and end:

- ``<out>/hist_<stage>.png``: per-layer histograms, start and end overlaid;
- ``<out>/kurtosis.png``: per-layer kurtosis at start and end of every stage (the kurtosis term
  pushes it towards its target, 1.8 by default; a bi-modal +-a distribution has kurtosis 1,
  a Gaussian 3);
- ``<out>/analysis.json`` and ``<out>/analysis.md``: the table, one row per stage and layer:
  kurtosis at start and end (losses.kurtosis), the flip ratio (the share of binary weights
  whose sign differs between start and end, the sign being that of the binary kernel, i.e. of
  the standardized weight under IR-Net's scaling) and the share of weights near zero
  (``|w| < near_zero * std(w)`` of the layer, default 0.1: about 8% for a Gaussian, and fewer
  the more bi-modal the layer).

A stage's start is what it trained from: the checkpoint its config's ``init_from`` names, or,
without one, the model's initialization from the config's seed (as train.train_stage makes it).
``<out>`` defaults to ``<workdir>/analysis``.
"""

from __future__ import annotations

import json
import os

import jax
import matplotlib
import numpy as np

from bmd_jax import checkpoint, export, layers, losses, packed, stages, train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def _latents(params) -> dict[str, np.ndarray]:
  return {k.removesuffix("/" + layers.LATENT_KERNEL): np.asarray(v, np.float32)
          for k, v in losses.binarized_kernels(params).items()}


def stage_weights(workdir: str, stage: str) -> dict:
  """{'config', 'start', 'end', 'end_step', 'start_from'} of one stage's binary latents."""
  ckpt = export.list_checkpoints(workdir)[stage][-1]
  _, config = export.read_meta(ckpt)
  end = export.read_variables(ckpt)
  model, image_shape = export.model_of(config, end["params"])
  if config.get("init_from"):
    source = stages.checkpoint_source(config.init_from, workdir, stage, "initial weights")
    start_params = checkpoint.load_variables(source, end)["params"]
    start_from = source
  else:
    start_params, _ = train.initialized(jax.random.PRNGKey(config.seed), model, image_shape)
    start_from = f"initialization (seed {config.seed})"
  return {"config": config, "start": _latents(start_params), "end": _latents(end["params"]),
          "end_step": ckpt.step, "start_from": start_from}


def layer_row(start: np.ndarray, end: np.ndarray, scale_mode: str, near_zero: float) -> dict:
  start_neg, _ = packed.kernel_signs_and_scale(start, scale_mode)
  end_neg, _ = packed.kernel_signs_and_scale(end, scale_mode)

  def near(w):
    return float(np.mean(np.abs(w) < near_zero * np.std(w)))

  return {
      "params": int(end.size),
      "kurtosis_start": float(losses.kurtosis(start)),
      "kurtosis_end": float(losses.kurtosis(end)),
      "flip_ratio": float(np.mean(np.asarray(start_neg) != np.asarray(end_neg))),
      "near_zero_start": near(start),
      "near_zero_end": near(end),
  }


def _histograms(weights: dict, title: str, path: str) -> None:
  names = list(weights["end"])
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    start, end = weights["start"][name].ravel(), weights["end"][name].ravel()
    bins = np.linspace(min(start.min(), end.min()), max(start.max(), end.max()), 81)
    ax.hist(start, bins=bins, alpha=0.5, density=True, label="start")
    ax.hist(end, bins=bins, alpha=0.5, density=True, label="end")
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _kurtosis_plot(table: list[dict], path: str) -> None:
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(table)), 3.5))
  labels = [f"{r['stage']}/{r['layer']}" for r in table]
  x = np.arange(len(table))
  ax.plot(x, [r["kurtosis_start"] for r in table], "o", label="start")
  ax.plot(x, [r["kurtosis_end"] for r in table], "s", label="end")
  ax.axhline(3.0, color="grey", lw=0.8, ls=":", label="Gaussian (3)")
  ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="two-point +-a (1)")
  ax.set_xticks(x, labels, rotation=90, fontsize=6)
  ax.set_ylabel("kurtosis")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def markdown_table(table: list[dict]) -> str:
  lines = ["| stage | layer | params | kurtosis start | kurtosis end | flip ratio | "
           "near zero start | near zero end |", "|" + "---|" * 8]
  for r in table:
    lines.append(f"| {r['stage']} | {r['layer']} | {r['params']} | {r['kurtosis_start']:.3f} | "
                 f"{r['kurtosis_end']:.3f} | {r['flip_ratio']:.4f} | {r['near_zero_start']:.4f}"
                 f" | {r['near_zero_end']:.4f} |")
  return "\n".join(lines)


def analyze(workdir: str, out: str | None = None, near_zero: float = 0.1) -> dict:
  """Writes the figures and the table of every stage of a run; returns the table's record."""
  out = out or os.path.join(workdir, "analysis")
  os.makedirs(out, exist_ok=True)
  table, stages_info, figures = [], {}, []
  for stage in export.stage_order(workdir):
    weights = stage_weights(workdir, stage)
    config = weights["config"]
    role = "student" if config.get("teacher") else "stage"
    stages_info[stage] = {"role": role, "teacher": config.get("teacher") or None,
                          "precision": config.model.precision, "end_step": weights["end_step"],
                          "start_from": weights["start_from"]}
    for layer in weights["end"]:
      table.append({"stage": stage, "layer": layer, **layer_row(
          weights["start"][layer], weights["end"][layer], config.model.scale_mode, near_zero)})
    path = os.path.join(out, f"hist_{stage}.png")
    _histograms(weights, f"{stage} ({config.model.precision}): latent weights at start and "
                f"end (step {weights['end_step']})", path)
    figures.append(path)
  path = os.path.join(out, "kurtosis.png")
  _kurtosis_plot(table, path)
  figures.append(path)
  record = {"workdir": os.path.abspath(workdir), "near_zero": near_zero, "stages": stages_info,
            "layers": table, "figures": figures}
  with open(os.path.join(out, "analysis.json"), "w") as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(out, "analysis.md"), "w") as f:
    f.write(markdown_table(table) + "\n")
  return record


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  record = analyze(f.workdir, f.out, f.near_zero)
  print(markdown_table(record["layers"]))
  print("wrote " + ", ".join(record["figures"]))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("out", None, "Output folder (default: <workdir>/analysis).")
  flags.DEFINE_float("near_zero", 0.1, "'Near zero' means |w| < near_zero * std(w).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
