"""Every registered architecture at reduced widths (same layers and layout, fewer channels),
with an input shape small enough for CPU tests, and random variables for them without compiling
an init."""

import jax
import jax.numpy as jnp
import numpy as np

NARROW_RESNET = (8, 16, 32, 64)
NARROW_VGG = (16, 16, 32, 32, 64, 64)
NARROW_REACTNET = dict(stem_width=4, block_widths=(8, 16, 16, 32, 32) + (64,) * 6 + (128,) * 2)

# case -> (registered name, kwargs of the narrow test model, input shape)
CASES = {
    "small_cnn": ("small_cnn", {}, (2, 8, 8, 1)),
    "resnet20": ("resnet20", {}, (2, 32, 32, 3)),
    "resnet18_cifar": ("resnet18_cifar", {"widths": NARROW_RESNET}, (2, 32, 32, 3)),
    "vgg_small": ("vgg_small", {"widths": NARROW_VGG}, (2, 32, 32, 3)),
    "resnet18": ("resnet18", {"widths": NARROW_RESNET, "react": True}, (2, 64, 64, 3)),
    "resnet34": ("resnet34", {"widths": NARROW_RESNET, "react": False}, (2, 64, 64, 3)),
    "reactnet_a": ("reactnet_a", NARROW_REACTNET, (2, 64, 64, 3)),
}

# XLA:CPU compiles every fusion through LLVM, seconds per model on a 2-core machine; test
# models run once on tiny inputs, so the cheapest code generation is best (about 3x less
# compile time than the defaults).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}


def abstract_variables(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def initial_variables(model, shape, seed=0):
  """Variables of `model` with random values, without compiling an init for every model.

  The model's own ``init`` runs traced (``jax.eval_shape``) for the tree and its shapes; the
  values are He-normal kernels and random but plausible biases, shifts, slopes and BN
  statistics (nonzero, unlike a fresh init, so every learnable shift is exercised).
  Compiling each model's init would cost as much as its train step on this CPU.
  """
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = path[-1].key
    if name in ("kernel", "latent_kernel"):
      return rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    if name == "slope":
      return rng.uniform(0.1, 0.4, leaf.shape)
    return 0.1 * rng.standard_normal(leaf.shape)  # biases, shifts, means

  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(value(p, leaf), leaf.dtype), abstract_variables(model, shape))
