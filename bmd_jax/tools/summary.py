"""Model summary: parameters by bit width, memory, binary and float multiply-accumulates.

In the spirit of larq's ``summary()``: one row per layer that holds parameters or does
multiply-accumulates, and totals. Shapes come from tracing the model once (``jax.eval_shape``,
nothing is computed) while ``nn.intercept_methods`` records every layer's input and output.

    from bmd_jax import models
    from bmd_jax.tools import summary
    s = summary.summarize(models.get_model("resnet18", num_classes=1000), (1, 224, 224, 3))
    print(s.table())

or from a config, with ``--config.`` overrides::

    python -m bmd_jax.tools.summary --config=configs/imagenet.py --config.model.precision=binary

What counts as binary (the same text closes the table):

- A **1-bit parameter** is a latent kernel (``latent_kernel``) of a binary conv/dense layer whose
  precision is ``binary``: it is deployed as its sign. Everything else is 32-bit: first conv,
  classifier, real downsample convs, BN scale and bias, learnable shifts and RPReLU slopes, and
  the latent kernels in ``full`` and ``binary_activations`` precision. The per-output-channel
  weight scale is derived from the kernel and folds into the next BN, so it is not counted;
  BN's running mean and variance (``batch_stats``) are not parameters, they fold into BN's
  scale and bias at inference, and are reported apart.
- A **binary MAC** has both operands in {-1, +1}: a binary layer in ``binary`` precision, which
  an XNOR-popcount kernel computes. Every other MAC is a float MAC, including the MACs of
  ``binary_activations`` layers (1-bit inputs times 32-bit weights: multiplication-free, but not
  XNOR-popcount); the footer gives their number apart.
- MACs are those of convolutions (H_out * W_out * kh * kw * C_in / groups * C_out) and dense
  layers (C_in * C_out), per example. BN, activations, shortcut additions and pooling are not
  counted (they are O(activations), not O(activations x fan-in)).
- Memory: 1-bit parameters at 1/8 byte, the others at 4 bytes; against every parameter at 4.

After the assumptions comes the list of layers the kurtosis term regularizes (every conv but the
first, real downsample convs included unless the config's ``loss.kurtosis.include_shortcuts``
is false), in the original's definition order: the order of ``loss.kurtosis.targets``.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from bmd_jax.infra import cli
from bmd_jax.core import layers
from bmd_jax import models

ASSUMPTIONS = (
    "1-bit params: latent kernels of binary layers in 'binary' precision (deployed as signs); "
    "all other params are 32-bit (first conv, classifier, real downsample convs, BN, shifts, "
    "RPReLU, latent kernels in 'full'/'binary_activations'). Weight scales fold into BN; "
    "BN running statistics are not parameters.",
    "Binary MACs: both operands +-1 (binary layers in 'binary' precision). Float MACs: all "
    "others, including 1-bit inputs x 32-bit weights in 'binary_activations' precision.",
    "MACs per example, convs and dense layers only (no BN, activations, additions, pooling).",
    "Memory: 1-bit params at 1 bit, others at 32 bits; float32: every param at 32 bits.",
)

_LAYER_TYPES = (nn.Conv, nn.Dense, layers.BinaryConv, layers.BinaryDense)


@dataclasses.dataclass
class LayerRow:
  """One layer: its path in the parameter tree, parameters by bit width and MACs per example."""

  path: str
  kind: str
  output_shape: tuple[int, ...] = ()
  params_1bit: int = 0
  params_32bit: int = 0
  binary_macs: int = 0
  float_macs: int = 0
  binary_input_macs: int = 0  # float MACs whose input is 1-bit ('binary_activations')

  @property
  def params(self) -> int:
    return self.params_1bit + self.params_32bit

  @property
  def memory_bytes(self) -> float:
    return self.params_1bit / 8 + self.params_32bit * 4

  @property
  def float32_bytes(self) -> int:
    return self.params * 4


def _summed(field: str) -> property:
  return property(lambda self: sum(getattr(row, field) for row in self.rows),
                  doc=f"The rows' {field}, summed.")


@dataclasses.dataclass
class ModelSummary:
  """Per-layer rows in call order, and their totals."""

  name: str
  precision: str
  input_shape: tuple[int, ...]
  rows: list[LayerRow]
  batch_stats: int = 0  # BN running means and variances (not parameters)
  # What the kurtosis term covers, in definition order, and its per-layer targets if any.
  kurtosis_layers: list[str] = dataclasses.field(default_factory=list)
  kurtosis_targets: tuple[float, ...] = ()

  params = _summed("params")
  params_1bit = _summed("params_1bit")
  params_32bit = _summed("params_32bit")
  memory_bytes = _summed("memory_bytes")
  float32_bytes = _summed("float32_bytes")
  binary_macs = _summed("binary_macs")
  float_macs = _summed("float_macs")
  binary_input_macs = _summed("binary_input_macs")

  @property
  def macs(self) -> int:
    return self.binary_macs + self.float_macs

  @property
  def binary_mac_share(self) -> float:
    return self.binary_macs / self.macs if self.macs else 0.0

  def totals(self) -> dict[str, Any]:
    return {
        "params": self.params, "params_1bit": self.params_1bit,
        "params_32bit": self.params_32bit, "memory_bytes": self.memory_bytes,
        "float32_bytes": self.float32_bytes, "binary_macs": self.binary_macs,
        "float_macs": self.float_macs, "binary_input_macs": self.binary_input_macs,
        "binary_mac_share": self.binary_mac_share, "batch_stats": self.batch_stats,
    }

  def table(self) -> str:
    """The per-layer table, totals and the counting assumptions, as text."""
    header = ("Layer", "Type", "Output", "1-bit params", "32-bit params", "Memory KiB",
              "Binary MACs", "Float MACs")
    body = [(r.path, r.kind, "x".join(map(str, r.output_shape)), f"{r.params_1bit:,}",
             f"{r.params_32bit:,}", f"{r.memory_bytes / 1024:,.2f}", f"{r.binary_macs:,}",
             f"{r.float_macs:,}") for r in self.rows]
    total = ("Total", "", "", f"{self.params_1bit:,}", f"{self.params_32bit:,}",
             f"{self.memory_bytes / 1024:,.2f}", f"{self.binary_macs:,}", f"{self.float_macs:,}")
    widths = [max(len(row[i]) for row in [header, total, *body]) for i in range(len(header))]

    def line(row):
      return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(header))
    out = [f"{self.name}  precision={self.precision}  input={'x'.join(map(str, self.input_shape))}",
           rule, line(header), rule, *map(line, body), rule, line(total), rule,
           f"Parameters: {self.params:,} ({self.params_1bit:,} 1-bit, {self.params_32bit:,} "
           f"32-bit); BN running statistics: {self.batch_stats:,}",
           f"Memory: {_human_bytes(self.memory_bytes)} with 1-bit weights, "
           f"{_human_bytes(self.float32_bytes)} in float32 "
           f"({self.float32_bytes / max(self.memory_bytes, 1):.1f}x smaller)",
           f"MACs per example: {self.binary_macs:,} binary, {self.float_macs:,} float; "
           f"binary share {100 * self.binary_mac_share:.2f}%"]
    if self.binary_input_macs:
      out.append(f"  of the float MACs, {self.binary_input_macs:,} have 1-bit inputs and 32-bit "
                 "weights")
    out += [rule, "Assumptions:"]
    out += [textwrap.fill(a, max(len(rule), 60), initial_indent="  - ", subsequent_indent="    ")
            for a in ASSUMPTIONS]
    if self.kurtosis_layers:
      out += [rule, f"Kurtosis term: {len(self.kurtosis_layers)} layers, in definition order "
              "(the order of loss.kurtosis.targets):"]
      targets = self.kurtosis_targets or ("",) * len(self.kurtosis_layers)
      out += [f"  {i:3d}  {path}" + (f"  target {t}" if t != "" else "")
              for i, (path, t) in enumerate(zip(self.kurtosis_layers, targets))]
    return "\n".join(out)


def _human_bytes(n: float) -> str:
  for unit, size in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= size:
      return f"{n / size:,.2f} {unit}"
  return f"{n:,.0f} B"


def _macs(module: nn.Module, x, y) -> int:
  """Multiply-accumulates per example of one conv or dense call, from its actual shapes."""
  out_positions = math.prod(y.shape[1:-1])
  if isinstance(module, (nn.Dense, layers.BinaryDense)):
    return out_positions * x.shape[-1] * y.shape[-1]
  groups = getattr(module, "feature_group_count", 1)
  kernel = module.kernel_size
  kernel = (kernel,) * (x.ndim - 2) if isinstance(kernel, int) else tuple(kernel)
  return out_positions * math.prod(kernel) * (x.shape[-1] // groups) * y.shape[-1]


def _is_binary_layer(module) -> bool:
  return isinstance(module, (layers.BinaryConv, layers.BinaryDense))


def summarize(model: nn.Module, input_shape: Sequence[int], *, name: str | None = None,
              input_dtype=jnp.float32, kurtosis_include_shortcuts: bool = True) -> ModelSummary:
  """Traces ``model`` on an input of ``input_shape`` (NHWC) and counts per layer.

  Args:
    model: a model of ``bmd_jax.models`` (any linen module called as
      ``model(x, train=False)`` works; binary layers are ``layers.BinaryConv``/``BinaryDense``).
    input_shape: the input's shape, batch first; MACs are per example.
    name: the model's name in the table (default: its class name).
    input_dtype: dtype of the traced input.
    kurtosis_include_shortcuts: whether the listed kurtosis layers include shortcut convs.

  Returns:
    A `ModelSummary`: ``rows`` (one `LayerRow` per layer, in call order), totals as
    properties and ``totals()``, and ``table()`` for the formatted text.
  """
  input_shape = tuple(int(d) for d in input_shape)
  batch = input_shape[0]
  calls: dict[str, dict[str, Any]] = {}  # module path -> what its calls did, in call order

  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return y
    module = context.module
    entry = calls.setdefault("/".join(module.path), {
        "kind": type(module).__name__, "binary_weights": False, "binary_inputs": False,
        "macs": 0, "output_shape": ()})
    if hasattr(y, "shape"):
      entry["output_shape"] = tuple(y.shape[1:])
    if isinstance(module, _LAYER_TYPES):
      entry["macs"] += _macs(module, args[0], y)
      if _is_binary_layer(module):
        entry["binary_inputs"] = module.precision != "full"
        entry["binary_weights"] = module.precision == "binary"
    return y

  def init():
    x = jnp.zeros(input_shape, input_dtype)
    return model.init(jax.random.key(0), x, train=False)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(init)

  owned: dict[str, dict[str, int]] = {}
  for path, leaf in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables.get("params", {}))).items():
    owned.setdefault("/".join(path[:-1]), {})[path[-1]] = math.prod(leaf.shape)

  rows = []
  for path, entry in calls.items():
    params = owned.pop(path, {})
    if not params and not entry["macs"]:
      continue  # a container (a block, the model itself) or a parameter-free call
    one_bit = params.get(layers.LATENT_KERNEL, 0) if entry["binary_weights"] else 0
    binary = entry["binary_weights"] and entry["binary_inputs"]
    rows.append(LayerRow(
        path=path or "(model)", kind=entry["kind"], output_shape=entry["output_shape"],
        params_1bit=one_bit, params_32bit=sum(params.values()) - one_bit,
        binary_macs=entry["macs"] // batch if binary else 0,
        float_macs=0 if binary else entry["macs"] // batch,
        binary_input_macs=(entry["macs"] // batch
                           if entry["binary_inputs"] and not binary else 0)))
  for path, params in owned.items():  # parameters of a module that was never called
    rows.append(LayerRow(path=path, kind="(not called)", params_32bit=sum(params.values())))

  batch_stats = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(
      variables.get("batch_stats", {})))
  try:
    kurtosis_layers = models.kurtosis_layers(model, input_shape[1:], kurtosis_include_shortcuts)
  except ValueError:  # a model with no conv besides the first: nothing to regularize
    kurtosis_layers = []
  return ModelSummary(name=name or type(model).__name__,
                      precision=getattr(model, "precision", "?"), input_shape=input_shape,
                      rows=rows, batch_stats=batch_stats, kurtosis_layers=kurtosis_layers)


# --- command line ---------------------------------------------------------------------

# Classes of the data sets the configs name, for a summary without loading the data.
KNOWN_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000,
                     "imagenet": 1000}


def num_classes_of(config) -> int | None:
  """The config's ``num_classes``, else the class count of a known data set it names."""
  if "num_classes" in config:
    return int(config.num_classes)
  dataset = config.get("dataset")
  if dataset == "synthetic" and config.get("synthetic_classes", 0) > 0:
    return int(config.synthetic_classes)
  if dataset in ("tfds", "auto", "synthetic"):  # synthetic: the class count of tfds_name
    dataset = config.get("tfds_name", "").split(":")[0]
  return KNOWN_NUM_CLASSES.get(dataset)


def summarize_config(config, num_classes: int | None = None) -> ModelSummary:
  """The summary of the model a training config describes, on one of its input images."""
  num_classes = num_classes or num_classes_of(config)
  if num_classes is None:
    raise ValueError("cannot tell the number of classes from the config "
                     f"(dataset={config.get('dataset')!r}); pass num_classes (--num_classes=N)")
  model = models.from_config(config.model, num_classes=num_classes)
  shape = (1, config.image_size, config.image_size, config.channels)
  kurtosis = config.get("loss", {}).get("kurtosis") or {}
  result = summarize(model, shape, name=config.model.name,
                     kurtosis_include_shortcuts=kurtosis.get("include_shortcuts", True))
  result.kurtosis_targets = tuple(kurtosis.get("targets", ()))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    print(summarize_config(flags.FLAGS.config, flags.FLAGS.num_classes).table())
  except ValueError as e:
    raise SystemExit(str(e)) from None


if __name__ == "__main__":
  # Flags are defined here, not at import, so that importing this module next to
  # bmd_jax.main (which defines --config too) does not clash.
  config_flags.DEFINE_config_file("config", None, "Training config file (a get_config()).",
                                  lock_config=True)
  flags.DEFINE_integer("num_classes", None,
                       "Classes of the classifier (default: from the config's data set).")
  flags.mark_flags_as_required(["config"])
  cli.run(main)
