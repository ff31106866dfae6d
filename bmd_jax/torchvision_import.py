"""torchvision ResNet weights as a bmd_jax teacher checkpoint (ReActNet's real ResNet-34).

ReActNet distils from ``torchvision.models.resnet34(pretrained=True)``. bmd_jax loads teachers
from checkpoints, so the weights cross over once, as a NumPy archive of the state dict (no
PyTorch needed here). In PyTorch:

    sd = torchvision.models.resnet34(weights="IMAGENET1K_V1").state_dict()
    numpy.savez("resnet34.npz", **{k: v.numpy() for k, v in sd.items()})

then

    python -m bmd_jax.torchvision_import --npz=resnet34.npz --out=teachers/resnet34
    python -m bmd_jax.main --config=configs/imagenet_reactnet_recipe.py \
        --config.distill_teacher=teachers/resnet34 ...

Names map onto ``models/resnet_torchvision.py``'s (conv1 -> stem_conv, layerN.i ->
stageN_block<i>, downsample.0/.1 -> downsample_conv/_bn, fc -> classifier); conv kernels go
from PyTorch's OIHW to Flax's HWIO, the classifier's from (out, in) to (in, out).
"""

from __future__ import annotations

import os
import re

import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv1|conv2|bn1|bn2|downsample\.0|downsample\.1)\.(\w+)")


def _module_name(torch_name: str) -> tuple[str, ...]:
  """The Flax module path of a torchvision module name ('' where it has no counterpart)."""
  if torch_name in ("conv1", "bn1", "fc"):
    return ({"conv1": "stem_conv", "bn1": "stem_bn", "fc": "classifier"}[torch_name],)
  stage, block, layer = torch_name.split(".", 2)
  layer = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(layer, layer)
  return (f"stage{stage.removeprefix('layer')}_block{block}", layer)


def resnet_variables(state_dict: dict[str, np.ndarray]) -> dict:
  """{'params', 'batch_stats'} of ``resnet34_torchvision`` (any depth) from a torchvision
  ResNet state dict of basic blocks."""
  variables = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    value = np.asarray(value, np.float32)
    torch_name, field = key.rsplit(".", 1)
    if field == "num_batches_tracked":
      continue
    if not (torch_name in ("conv1", "bn1", "fc") or _BLOCK.fullmatch(key)):
      raise ValueError(f"{key!r} is not a parameter of a torchvision basic-block ResNet")
    path = _module_name(torch_name)
    if value.ndim == 4:  # conv weight, OIHW -> HWIO
      collection, name, value = "params", "kernel", value.transpose(2, 3, 1, 0)
    elif torch_name == "fc":
      collection, name = "params", {"weight": "kernel", "bias": "bias"}[field]
      value = value.T if field == "weight" else value
    else:
      collection, name = _BN[field]
    node = variables[collection]
    for part in path:
      node = node.setdefault(part, {})
    node[name] = value
  return variables


def save_teacher(variables: dict, folder: str, step: int = 0) -> str:
  """Writes ``variables`` where a teacher is read from (``<folder>/<step>/state``)."""
  folder = os.path.abspath(folder)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(folder, str(step), "state"), variables)
  checkpointer.wait_until_finished()
  return folder


def main(argv):
  del argv
  with np.load(flags.FLAGS.npz) as archive:
    variables = resnet_variables(dict(archive))
  print(f"teacher checkpoint written to {save_teacher(variables, flags.FLAGS.out)}")


if __name__ == "__main__":
  flags.DEFINE_string("npz", None, "torchvision ResNet state dict saved with numpy.savez")
  flags.DEFINE_string("out", None, "checkpoint folder to write (--config.distill_teacher)")
  flags.mark_flags_as_required(["npz", "out"])
  app.run(main)
