"""How strong is WDM next to cross-entropy? Gradient norms on a fixed batch (issue 27).

    python bench/wdm_strength.py                         # synthetic batch
    python bench/wdm_strength.py --data_dir=/work/shared/data/cifar10-jpeg

The CIFAR-10 recipe's binary ResNet-20 (bmd_jax/configs/cifar10.py; --model for another) at its
initialization is the teacher; the student is the teacher with Gaussian noise of `rel` times
each layer's standard deviation added to every latent weight (at the start of step 2 student
and teacher are equal and WDM's gradient is zero; during the step they drift apart). For each
WDM reduction it prints ||grad WDM|| / ||grad CE||, both over the latent kernels WDM compares,
at EDE progress 0, 0.5 and 1 (EDE's t changes CE's gradient, not WDM's). docs/METHOD.md
section 4 cites it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bmd_jax.core import losses  # noqa: E402  pylint: disable=wrong-import-position
from bmd_jax import models
from bmd_jax.training import train


def recipe():
  from bmd_jax.configs import cifar10  # pylint: disable=import-outside-toplevel
  return cifar10.get_config()


def fixed_batch(config, batch_size: int, data_dir: str | None, seed: int = 0):
  """(images NHWC normalized, labels): the first images of each class folder, or noise."""
  if not data_dir:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch_size, 32, 32, 3)).astype(np.float32),
            np.arange(batch_size) % 10)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  train_dir = pathlib.Path(data_dir) / "train"
  classes = sorted(os.listdir(train_dir))
  files = [(c, sorted((train_dir / name).iterdir())) for c, name in enumerate(classes)]
  pairs = [(label, paths[i]) for i in range(batch_size) for label, paths in files]
  pairs = pairs[:batch_size]
  images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255
                     for _, p in pairs])
  images = (images - np.asarray(config.mean)) / np.asarray(config.std)
  return images.astype(np.float32), np.asarray([label for label, _ in pairs])


def perturbed(params, layers, rel: float, seed: int = 1):
  """The params with N(0, (rel * std of the layer)^2) noise added to each latent kernel."""
  flat = losses.kernels_at(params, layers)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(layers))
  noisy = {p: w + rel * jnp.std(w) * jax.random.normal(k, w.shape)
           for (p, w), k in zip(flat.items(), keys)}
  return _replaced(params, noisy)


def _replaced(params, kernels):
  def swap(path, leaf):
    name = "/".join(losses._key_name(k) for k in path)  # pylint: disable=protected-access
    return kernels.get(name, leaf)
  return jax.tree_util.tree_map_with_path(swap, params)


def ce_gradients(model, variables, batch, config, progress: float, layers):
  est = train.estimator_args(config, progress)

  def ce(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                            batch[0], train=True, estimator_args=est, mutable=["batch_stats"])
    return losses.cross_entropy(logits, batch[1])
  return losses.kernels_at(jax.grad(ce)(variables["params"]), layers)


def wdm_gradients(teacher, student, layers, reduction: str, temperature: float):
  def wdm(params):
    return losses.wdm_loss(teacher, params, "softmax_kl", layers=layers,
                           temperature=temperature, reduction=reduction)
  return losses.kernels_at(jax.grad(wdm)(student), layers)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--rel", default="0.1,0.3,1.0")
  parser.add_argument("--progress", default="0,0.5,1")
  parser.add_argument("--model", default="resnet20", help="a CIFAR model: vgg_small, ...")
  args = parser.parse_args()
  config = recipe()
  config.model.name = args.model
  model = models.from_config(config.model, 10, precision="binary")
  params, batch_stats = models.initialized(jax.random.PRNGKey(0), model, (32, 32, 3))
  layers = models.wdm_layers(model, (32, 32, 3))
  batch = fixed_batch(config, args.batch_size, args.data_dir)
  temperature = config.loss.wdm.temperature
  print(f"{args.model}, data: {args.data_dir or 'synthetic N(0,1) images'}, batch "
        f"{args.batch_size}, {len(layers)} WDM layers, T = {temperature}")
  print("| rel | progress | ||g_CE|| | reduction | ||g_WDM|| | ratio |")
  print("|---|---|---|---|---|---|")
  for rel in (float(r) for r in args.rel.split(",")):
    student = perturbed(params, layers, rel)
    for progress in (float(p) for p in args.progress.split(",")):
      g_ce = optax.tree.norm(ce_gradients(
          model, {"params": student, "batch_stats": batch_stats}, batch, config, progress,
          layers))
      for reduction in losses.WDM_REDUCTIONS:
        g_wdm = optax.tree.norm(wdm_gradients(params, student, layers, reduction, temperature))
        print(f"| {rel:g} | {progress:g} | {float(g_ce):.3g} | {reduction} | "
              f"{float(g_wdm):.3g} | {float(g_wdm / g_ce):.3g} |")


if __name__ == "__main__":
  main()
