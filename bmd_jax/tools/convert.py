"""Converts the original projects' PyTorch state dicts into bmd_jax checkpoint folders.

    python -m bmd_jax.tools.convert --from=reactnet_resnet18 --state_dict=model_best.pth.tar --out=DIR

``--from`` names the original (SOURCES):

    reactnet_resnet18  liuzechun/ReActNet resnet/{1_step1,2_step2}/birealnet.py birealnet18
                       -> model resnet18, react=True
    reactnet_a         liuzechun/ReActNet mobilenet/{1_step1,2_step2}/reactnet.py reactnet
                       -> model reactnet_a
    irnet_resnet20     htqin/IR-Net CIFAR-10/ResNet20/1w1a/resnet.py resnet20_1w1a
                       -> model resnet20
    torchvision_resnet34  torchvision.models.resnet34, ReActNet's real-valued teacher
                       -> model resnet34_torchvision (for --config.distill_teacher)

DIR becomes a checkpoint folder (``DIR/0/state``, Orbax) that the config fields ``init_from``
and ``teacher`` (``distill_teacher`` for torchvision's ResNet-34) accept, e.g.
``--config.init_from=DIR``, with ``DIR/conversion.json`` saying which model fields to set.
Step-1 state dicts (real-valued convs in place of HardBinaryConv) convert to the same tree:
bmd_jax's parameters do not depend on the precision.

Every tensor is placed by name (conv OIHW -> HWIO, linear (out, in) -> (in, out), batch norm
weight/bias -> params scale/bias and running mean/var -> batch_stats mean/var, ReActNet's
(1, C, 1, 1) shifts and PReLU slopes -> (C,)) and checked against the bmd_jax model's own
variables; an unknown, missing or mis-shaped tensor is an error naming it. Only batch norms'
``num_batches_tracked`` counters are dropped. Widths and the number of classes are read from
the tensors, so narrowed variants of the originals convert too.

Adding an original is one function listing its keys and one SOURCES entry.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import flax
import numpy as np

from bmd_jax.infra import checkpoint, paths
from bmd_jax import models

STEP = 0  # the step folder a converted checkpoint is stored under
# (kind, bmd_jax path); kinds: conv, dense, vector (see _to_bmd_jax).
Target = tuple[str, str]


# --- reading a .pth ------------------------------------------------------------------------

class StateDictError(ValueError):
  """A state dict that cannot be read, or does not fit the original --from names; the message
  names the file or the tensor, and the fix."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a .pth file, or of a .npz holding a state dict (numpy.savez of its tensors,
  read without PyTorch), as numpy arrays (see `tensors_of`). `path` may be a URL (gs://...)."""
  if path.endswith(".npz"):
    return tensors_of(_read(path, _npz_tensors))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "reading a PyTorch .pth file needs PyTorch: pip install -e '.[convert]' (or pip "
        "install torch; the CPU build is enough), or save the state dict where PyTorch is as "
        "numpy.savez('f.npz', **{k: v.numpy() for k, v in state_dict.items()})") from None
  obj = _read(path, lambda f: torch.load(f, map_location="cpu", weights_only=True))
  return tensors_of(_state_dict_of(obj))


def _npz_tensors(source) -> dict[str, np.ndarray]:
  with np.load(source) as archive:
    return {k: archive[k] for k in archive.files}


def _read(path: str, load: Callable[[Any], Any]) -> Any:
  """load(the file at `path`), a file that is not a state dict's named as such."""
  source = io.BytesIO(paths.resolve(path).read_bytes()) if paths.is_url(path) else path
  try:
    return load(source)
  except FileNotFoundError:
    raise
  except Exception as e:  # numpy and PyTorch raise many kinds for a damaged or foreign file
    raise StateDictError(f"the state dict {path} cannot be read ({type(e).__name__}: {e}); "
                         "give a .pth written by torch.save, or a .npz of its tensors") from e


def _state_dict_of(obj: Any) -> Mapping[str, Any]:
  # The originals' trainers save {'state_dict': ..., 'epoch': ..., ...}; a bare state dict too.
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    return obj["state_dict"]
  if isinstance(obj, Mapping):
    return obj
  raise StateDictError(
      f"expected a state dict (a mapping of names to tensors), got {type(obj)}")


def tensors_of(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Names -> float32 arrays: ``module.`` (nn.DataParallel, as both originals train) stripped,
  batch norms' ``num_batches_tracked`` counters left out (bmd_jax keeps none)."""
  keys = list(state_dict)
  strip = bool(keys) and all(k.startswith("module.") for k in keys)
  arrays = {}
  for key, value in state_dict.items():
    name = key[len("module."):] if strip else key
    if name.endswith("num_batches_tracked"):
      continue
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    arrays[name] = value.astype(np.float32)
  return arrays


# --- the originals' keys --------------------------------------------------------------------

def batch_norm(torch_name: str, ours: str) -> dict[str, Target]:
  return {f"{torch_name}.weight": ("vector", f"params/{ours}/scale"),
          f"{torch_name}.bias": ("vector", f"params/{ours}/bias"),
          f"{torch_name}.running_mean": ("vector", f"batch_stats/{ours}/mean"),
          f"{torch_name}.running_var": ("vector", f"batch_stats/{ours}/var")}


def linear(torch_name: str, ours: str) -> dict[str, Target]:
  return {f"{torch_name}.weight": ("dense", f"params/{ours}/kernel"),
          f"{torch_name}.bias": ("vector", f"params/{ours}/bias")}


def rprelu(torch_names: tuple[str, str, str], ours: str) -> dict[str, Target]:
  """ReActNet's LearnableBias, nn.PReLU, LearnableBias -> layers.RPReLU."""
  shift_in, prelu, shift_out = torch_names
  return {f"{shift_in}.bias": ("vector", f"params/{ours}/shift_in"),
          f"{prelu}.weight": ("vector", f"params/{ours}/slope"),
          f"{shift_out}.bias": ("vector", f"params/{ours}/shift_out")}


def binary_conv(sd: Mapping[str, np.ndarray], torch_name: str, ours: str) -> dict[str, Target]:
  """A binary conv's latent weights: HardBinaryConv's ``weight`` (ReActNet's ResNets, IR-Net's
  IRConv2d, the step-1 nn.Conv2d) or ReActNet-A's flat ``weights`` (N, 1)."""
  name = f"{torch_name}.weights" if f"{torch_name}.weights" in sd else f"{torch_name}.weight"
  return {name: ("conv", f"params/{ours}/latent_kernel")}


def _shape(sd, key: str, source: str) -> tuple[int, ...]:
  if key not in sd:
    raise StateDictError(
        f"the state dict has no {key!r}, which {SOURCES[source].original} has: is "
        f"--from={source} the right original? Its first keys: {list(sd)[:6]}")
  return sd[key].shape


def _count(sd, pattern: str) -> int:
  """How many distinct indices fill `pattern`'s group, e.g. r'layer1\\.(\\d+)\\.'."""
  return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def reactnet_resnet18(sd) -> tuple[dict, dict[str, Target]]:
  """ReActNet's BiRealNet: one binary conv a torch block, 4 a layer; bmd_jax's block holds two
  (unit 1 = torch block 2i, unit 2 = block 2i + 1)."""
  widths = tuple(_shape(sd, f"layer{s}.0.bn1.weight", "reactnet_resnet18")[0] for s in range(1, 5))
  fields = {"react": True, "widths": widths,
            "num_classes": _shape(sd, "fc.weight", "reactnet_resnet18")[0]}
  keys = {"conv1.weight": ("conv", "params/stem_conv/kernel"), **batch_norm("bn1", "stem_bn"),
          **linear("fc", "classifier")}
  for stage in range(1, 5):
    for index in range(4):
      torch_block, ours = f"layer{stage}.{index}", f"stage{stage}_block{index // 2}"
      unit = index % 2 + 1
      keys.update({f"{torch_block}.move0.bias": ("vector", f"params/{ours}/rsign{unit}/bias"),
                   **binary_conv(sd, f"{torch_block}.binary_conv", f"{ours}/conv{unit}"),
                   **batch_norm(f"{torch_block}.bn1", f"{ours}/bn{unit}"),
                   **rprelu((f"{torch_block}.move1", f"{torch_block}.prelu",
                             f"{torch_block}.move2"), f"{ours}/rprelu{unit}")})
    if f"layer{stage}.0.downsample.1.weight" in sd:  # AvgPool2d, conv1x1, BatchNorm2d
      keys.update({f"layer{stage}.0.downsample.1.weight":
                   ("conv", f"params/stage{stage}_block0/downsample_conv/kernel"),
                   **batch_norm(f"layer{stage}.0.downsample.2",
                                f"stage{stage}_block0/downsample_bn")})
  return fields, keys


def reactnet_a(sd) -> tuple[dict, dict[str, Target]]:
  """ReActNet's `reactnet`: feature.0 the stem, feature.1.. the blocks."""
  def width(i):  # a block's output channels: its 1x1 BN, or twice the two halves'
    if f"feature.{i}.bn2.weight" in sd:
      return sd[f"feature.{i}.bn2.weight"].shape[0]
    return 2 * _shape(sd, f"feature.{i}.bn2_1.weight", "reactnet_a")[0]

  blocks = _count(sd, r"feature\.(\d+)\.move11\.")
  fields = {"stem_width": _shape(sd, "feature.0.conv1.weight", "reactnet_a")[0],
            "block_widths": tuple(width(i) for i in range(1, blocks + 1)),
            "num_classes": _shape(sd, "fc.weight", "reactnet_a")[0]}
  keys = {"feature.0.conv1.weight": ("conv", "params/stem_conv/kernel"),
          **batch_norm("feature.0.bn1", "stem_bn"), **linear("fc", "classifier")}
  for i in range(1, blocks + 1):
    t, ours = f"feature.{i}", f"block{i:02d}"
    keys.update({f"{t}.move11.bias": ("vector", f"params/{ours}/rsign_3x3/bias"),
                 **binary_conv(sd, f"{t}.binary_3x3", f"{ours}/conv_3x3"),
                 **batch_norm(f"{t}.bn1", f"{ours}/bn_3x3"),
                 **rprelu((f"{t}.move12", f"{t}.prelu1", f"{t}.move13"), f"{ours}/rprelu_3x3"),
                 f"{t}.move21.bias": ("vector", f"params/{ours}/rsign_1x1/bias"),
                 **rprelu((f"{t}.move22", f"{t}.prelu2", f"{t}.move23"), f"{ours}/rprelu_1x1")})
    if f"{t}.bn2.weight" in sd:
      keys.update({**binary_conv(sd, f"{t}.binary_pw", f"{ours}/conv_1x1"),
                   **batch_norm(f"{t}.bn2", f"{ours}/bn_1x1")})
    else:  # the channel-doubling block: two 1x1 convs, concatenated
      for half, suffix in ((1, "a"), (2, "b")):
        keys.update({**binary_conv(sd, f"{t}.binary_pw_down{half}", f"{ours}/conv_1x1_{suffix}"),
                     **batch_norm(f"{t}.bn2_{half}", f"{ours}/bn_1x1_{suffix}")})
  return fields, keys


def irnet_resnet20(sd) -> tuple[dict, dict[str, Target]]:
  """IR-Net's ResNet-20 (1w1a): option-A shortcuts have no parameters; bn2 is the BatchNorm1d."""
  widths = tuple(_shape(sd, f"layer{s}.0.bn1.weight", "irnet_resnet20")[0] for s in range(1, 4))
  blocks = tuple(_count(sd, rf"layer{s}\.(\d+)\.") for s in range(1, 4))
  fields = {"widths": widths, "stage_sizes": blocks,
            "num_classes": _shape(sd, "linear.weight", "irnet_resnet20")[0]}
  keys = {"conv1.weight": ("conv", "params/stem_conv/kernel"), **batch_norm("bn1", "stem_bn"),
          **batch_norm("bn2", "classifier_bn"), **linear("linear", "classifier")}
  for stage in range(1, 4):
    for index in range(blocks[stage - 1]):
      t, ours = f"layer{stage}.{index}", f"stage{stage}_block{index}"
      for conv in (1, 2):
        keys.update({**binary_conv(sd, f"{t}.conv{conv}", f"{ours}/conv{conv}"),
                     **batch_norm(f"{t}.bn{conv}", f"{ours}/bn{conv}")})
  return fields, keys


def torchvision_resnet34(sd) -> tuple[dict, dict[str, Target]]:
  """torchvision's basic-block ResNet: the same names, bar the stem, downsample and fc."""
  stages = _count(sd, r"layer(\d+)\.")
  blocks = tuple(_count(sd, rf"layer{s}\.(\d+)\.") for s in range(1, stages + 1))
  fields = {"stage_sizes": blocks,
            "num_classes": _shape(sd, "fc.weight", "torchvision_resnet34")[0],
            "widths": tuple(_shape(sd, f"layer{s}.0.bn1.weight", "torchvision_resnet34")[0]
                            for s in range(1, stages + 1))}
  keys = {"conv1.weight": ("conv", "params/stem_conv/kernel"), **batch_norm("bn1", "stem_bn"),
          **linear("fc", "classifier")}
  for stage in range(1, stages + 1):
    for index in range(blocks[stage - 1]):
      t, ours = f"layer{stage}.{index}", f"stage{stage}_block{index}"
      for conv in (1, 2):
        keys.update({f"{t}.conv{conv}.weight": ("conv", f"params/{ours}/conv{conv}/kernel"),
                     **batch_norm(f"{t}.bn{conv}", f"{ours}/bn{conv}")})
      if f"{t}.downsample.0.weight" in sd:
        keys.update({f"{t}.downsample.0.weight": ("conv", f"params/{ours}/downsample_conv/kernel"),
                     **batch_norm(f"{t}.downsample.1", f"{ours}/downsample_bn")})
  return fields, keys


@dataclasses.dataclass(frozen=True)
class Source:
  original: str  # where its definition lives
  model: str  # the bmd_jax model it converts to
  keys: Callable[[Mapping[str, np.ndarray]], tuple[dict, dict[str, Target]]]  # (fields, keys)
  config: str  # a recipe that uses this model
  # The config fields that take the folder, and the section that names its model.
  fields: tuple[str, ...] = ("init_from", "teacher")
  section: str = "model"
  image_shape: tuple[int, int, int] = (32, 32, 3)  # any input the model takes: shapes only


SOURCES: dict[str, Source] = {
    "reactnet_resnet18": Source("ReActNet's ResNet-18 (liuzechun/ReActNet resnet/*/birealnet.py)",
                                "resnet18", reactnet_resnet18, "configs/imagenet.py"),
    "reactnet_a": Source("ReActNet-A (liuzechun/ReActNet mobilenet/*/reactnet.py)",
                         "reactnet_a", reactnet_a, "configs/imagenet_reactnet.py"),
    "irnet_resnet20": Source("IR-Net's ResNet-20 (htqin/IR-Net CIFAR-10/ResNet20/1w1a/resnet.py)",
                             "resnet20", irnet_resnet20, "configs/cifar10.py"),
    "torchvision_resnet34": Source("torchvision's ResNet-34 (torchvision.models.resnet34)",
                                   "resnet34_torchvision", torchvision_resnet34,
                                   "configs/imagenet_reactnet_recipe.py", ("distill_teacher",),
                                   "distill_teacher_model"),
}


# --- conversion ------------------------------------------------------------------------------

def _to_bmd_jax(kind: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A torch tensor in bmd_jax's layout, given the shape the model expects (a wrong tensor keeps
  a shape that differs from it, which `convert` reports)."""
  if kind == "conv":  # OIHW -> HWIO; ReActNet-A's HardBinaryConv stores it flat, (O*I*H*W, 1)
    if value.ndim == 2 and value.shape[1] == 1 and len(shape) == 4 \
        and value.size == np.prod(shape):
      h, w, i, o = shape
      value = value.reshape(o, i, h, w)
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  if kind == "dense":
    return value.T
  if value.ndim == 4 and value.shape[0] == value.shape[2] == value.shape[3] == 1:
    return value.reshape(-1)  # ReActNet's LearnableBias, (1, C, 1, 1)
  return value


def expected_shapes(model, image_shape) -> dict[str, tuple[int, ...]]:
  """'params/...' and 'batch_stats/...' paths of `model`'s variables -> shapes (traced only)."""
  variables = models.variable_shapes(model, image_shape)
  flat = flax.traverse_util.flatten_dict({c: v for c, v in variables.items() if v}, sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def convert(source_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """({'params', 'batch_stats'} of the bmd_jax model, its fields) from an original's tensors.

  Every tensor must find its place and every variable of the model must be filled, with equal
  shapes; otherwise a ValueError names the tensor.
  """
  if source_name not in SOURCES:
    raise StateDictError(f"unknown --from={source_name!r}; choose one of {sorted(SOURCES)}")
  source = SOURCES[source_name]
  fields, keys = source.keys(state_dict)
  model = models.get_model(source.model, **fields)
  expected = expected_shapes(model, source.image_shape)
  where = f"bmd_jax's {source.model} ({_describe(fields)})"
  unused = sorted(set(state_dict) - set(keys))
  if unused:
    raise StateDictError(
        f"{len(unused)} tensors of the state dict have no place in {where}, e.g. "
        f"{unused[:4]}: it is not {source.original} as published (another --from, "
        "or a modified architecture, which needs its own entry in convert.SOURCES)")
  missing = sorted(set(keys) - set(state_dict))
  if missing:
    raise StateDictError(
        f"the state dict lacks {len(missing)} tensors of {source.original}, e.g. "
        f"{missing[:4]}: is it a complete state dict, and --from={source_name} right?")
  flat = {}
  for key, (kind, path) in keys.items():
    if path not in expected:
      raise ValueError(f"{key} maps to {path}, which {where} lacks: convert.SOURCES"
                       f"[{source_name!r}] does not match the model (a bug to report)")
    value = _to_bmd_jax(kind, state_dict[key], expected[path])
    if value.shape != expected[path]:
      raise StateDictError(
          f"{key} has shape {state_dict[key].shape}, which does not fit {path} of "
          f"{where}, shape {expected[path]}: the tensor is not the one "
          f"{source.original} defines there (check --from)")
    flat[path] = value
  unfilled = sorted(set(expected) - set(flat))
  if unfilled:
    raise ValueError(f"no tensor fills {unfilled[:4]} of {where}: convert.SOURCES"
                     f"[{source_name!r}] does not match the model (a bug to report)")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), fields


def config_fields(model_name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
  """The ``model`` config fields that select the converted network: its name and the fields
  that differ from the model's defaults (num_classes comes from the data set)."""
  default = models.get_model(model_name)
  return {"name": model_name, **{k: v for k, v in fields.items()
                                 if k != "num_classes" and getattr(default, k) != v}}


def _describe(fields: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in fields.items())


def write(out: str, variables: dict, record: dict) -> None:
  """Writes `variables` as ``out/0/state`` (what checkpoint.load_variables reads) and `record`
  as ``out/conversion.json``."""
  out = paths.resolve(out)  # Orbax wants absolute paths (or URLs)
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"{out} exists and is not empty: give a new folder as --out")
  out.mkdir(parents=True, exist_ok=True)
  checkpoint.write_variables(out, variables, STEP)
  (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")


def convert_file(source_name: str, state_dict_path: str, out: str) -> dict:
  """Reads, converts and writes; returns the record written to conversion.json."""
  variables, fields = convert(source_name, read_state_dict(state_dict_path))
  source = SOURCES[source_name]
  model = config_fields(source.model, fields)
  record = {"from": source_name, "original": source.original,
            "state_dict": os.path.basename(state_dict_path), "model": model,
            "num_classes": int(fields["num_classes"]), "config": source.config,
            "use": " or ".join(f"--config.{field}={out}" for field in source.fields)
                   + f" with config.{source.section}: {_describe(model)}"}
  write(out, variables, record)
  return record


def main(argv):
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # Orbax logs every write at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  record = convert_file(f["from"].value, f.state_dict, f.out)
  print(f"converted {record['original']} ({record['num_classes']} classes) into {f.out}: use it "
        f"as {record['use']} (e.g. {record['config']})")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top

  from bmd_jax.infra import cli  # pylint: disable=g-import-not-at-top

  flags.DEFINE_enum("from", None, sorted(SOURCES), "The original the state dict comes from.")
  flags.DEFINE_string("state_dict", None, "The PyTorch file (.pth, .pth.tar): a state dict, or "
                      "the originals' {'state_dict': ...} checkpoint; or a .npz of its tensors.")
  flags.DEFINE_string("out", None, "The checkpoint folder to create (new or empty).")
  flags.mark_flags_as_required(["from", "state_dict", "out"])
  cli.run(main)
