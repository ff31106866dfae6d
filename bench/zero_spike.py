"""Which latent weights sit in the spike at zero of an end-of-training histogram, and why.

    python -m bmd_jax.main --config=default --workdir=/tmp/x
    python bench/zero_spike.py --workdir=/tmp/x

Reads a stage's kept checkpoints (the params, and the last one's Adam moments; keep many with
--config.checkpoint_every_steps=22 --config.checkpoint_keep=40) and the initialization (the
config's seed). The spike is the weights with |w| < `--width` times the layer's std; the
script compares them with the rest: how much more of them than the density just beside zero
predicts, where they started, how often they changed sign from checkpoint to checkpoint, their
gradients' size (Adam's sqrt(nu)) and consistency (|mu| / sqrt(nu)), whether the update points
back to zero, and whether they crowd into a few input or output channels.
docs/METHOD.md section 3 cites the result.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bmd_jax.infra import checkpoint  # noqa: E402  pylint: disable=wrong-import-position
from bmd_jax.core import losses
from bmd_jax import models


def kernels(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float64) for k, v in losses.binarized_kernels(tree).items()}


def channel_crowding(mask: np.ndarray, axis: int) -> float:
  """The share of the spike held by the 10% of channels (along `axis`) that hold most of it."""
  counts = np.sort(mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis)))[::-1]
  top = max(1, len(counts) // 10)
  return float(counts[:top].sum() / max(counts.sum(), 1))


def layer_lines(name, w, history, init, mu, nu, width):
  std = w.std()
  spike = np.abs(w) < width * std
  rest = ~spike
  band = (np.abs(w) >= 2 * width * std) & (np.abs(w) < 6 * width * std)
  # A smooth density would put as many weights per unit width in the spike as in the band.
  excess = spike.mean() / (band.mean() / 4)
  # Sign changes of each weight between consecutive kept checkpoints, over the whole history.
  changes = sum((np.sign(a) != np.sign(b)).astype(int) for a, b in zip(history[:-1], history[1:]))
  rms = np.sqrt(nu)
  consistency = np.abs(mu) / (rms + 1e-30)
  toward_zero = (-mu * w) < 0  # Adam's step -mu/sqrt(nu) has the sign opposite to w's
  return [
      f"{name}: {w.size} weights, std {std:.4g}; spike |w| < {width:g} std: {spike.mean():.2%} "
      f"of the layer, {excess:.1f}x what the density beside zero predicts; "
      f"max |w| in it {np.abs(w[spike]).max() if spike.any() else 0:.2g}",
      f"  at init: median |w|/std spike {np.median(np.abs(init[spike])) / init.std():.2f}, "
      f"all {np.median(np.abs(init)) / init.std():.2f}; within 0.1 std of zero: spike "
      f"{np.mean(np.abs(init[spike]) < 0.1 * init.std()):.1%}, all "
      f"{np.mean(np.abs(init) < 0.1 * init.std()):.1%}; moved since (median |w - w_init| / "
      f"std): spike {np.median(np.abs(w - init)[spike]) / std:.2f}, rest "
      f"{np.median(np.abs(w - init)[rest]) / std:.2f}",
      f"  sign changes over {len(history) - 1} checkpoint intervals, mean per weight: spike "
      f"{changes[spike].mean():.2f}, rest {changes[rest].mean():.2f}; share with 3 or more: "
      f"spike {np.mean(changes[spike] >= 3):.1%}, rest {np.mean(changes[rest] >= 3):.1%}",
      f"  gradient RMS (sqrt nu), median: spike {np.median(rms[spike]):.3g}, rest "
      f"{np.median(rms[rest]):.3g}; |mu|/sqrt(nu) median: spike "
      f"{np.median(consistency[spike]):.3f}, rest {np.median(consistency[rest]):.3f}",
      f"  the update points back to zero: spike {toward_zero[spike].mean():.1%}, rest "
      f"{toward_zero[rest].mean():.1%}",
      f"  share of the spike in its top 10% input channels "
      f"{channel_crowding(spike, w.ndim - 2):.1%}, output channels "
      f"{channel_crowding(spike, w.ndim - 1):.1%} (10% if spread evenly)",
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--stage", default=None)
  parser.add_argument("--width", type=float, default=0.02, help="spike: |w| < width * std")
  args = parser.parse_args()
  stage = args.stage or checkpoint.stage_order(args.workdir)[-1]
  ckpts = checkpoint.list_checkpoints(args.workdir)[stage]
  states = [checkpoint.read_state(f"{c.path}/state") for c in ckpts]
  _, config = checkpoint.read_meta(ckpts[-1])
  model, image_shape = models.from_checkpoint(config, states[-1]["params"])
  init = kernels(models.initialized(jax.random.PRNGKey(config.seed), model, image_shape)[0])
  adam = states[-1]["opt_state"][0]
  print(f"{args.workdir} stage {stage}, checkpoints {[c.step for c in ckpts]}, "
        f"optimizer {config.optimizer} lr {config.learning_rate} weight decay "
        f"{config.weight_decay}, scale_mode {config.model.scale_mode}, kernel estimator "
        f"{config.model.kernel_quantizer}")
  history = [kernels(s["params"]) for s in states]
  mu, nu = kernels(adam["mu"]), kernels(adam["nu"])
  for name, w in history[-1].items():
    print("\n".join(layer_lines(name, w, [h[name] for h in history], init[name], mu[name],
                                nu[name], args.width)))


if __name__ == "__main__":
  main()
