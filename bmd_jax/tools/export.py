"""Export a trained BNN as deployable bits, and run the export with XNOR-popcount inference.

    python -m bmd_jax.tools.export --workdir=runs/digits --out=digits.npz
    python -m bmd_jax.tools.export --workdir=runs/digits --out=digits.stablehlo --format=stablehlo

The second writes a program that runs with JAX alone (portable_export.py). The first reads
the newest checkpoint of the workdir's last binary-precision stage (the newest readable one:
a damaged newer one, unreadable or unlike its checksums, is skipped with a warning, as
training skips it) and writes one ``.npz``:

- ``packed/<layer>/words``: every binary layer's kernel signs, bit-packed along the fan-in
  (bit 1 = -1; layout in packed.py), as uint32;
- ``packed/<layer>/scale``, ``packed/<layer>/shift``: the layer's per-output-channel affine on
  its integer XNOR-popcount result: alpha (the kernel's scale, quantizers.binarize_kernel) and
  its bias, with the batch norm that follows the layer folded in where there is one that takes
  the layer's output as it is (packed.foldable_batch_norms; VGG-Small's pool sits between, so
  its batch norms stay separate);
- ``params/...``, ``batch_stats/...``: the full-precision variables (first conv, classifier,
  real shortcuts, batch norms not folded, RPReLU/shift parameters) as float32;
- ``manifest``: JSON with the model name and fields, the number of classes and input shape, the
  precision and shape of every layer, which batch norms were folded, the source stage and step,
  its config (paths of the training machine left out), every array's shape, dtype and sha256,
  and the sizes (exported file against the float32 checkpoint). docs/EXPORT_FORMAT.md
  describes the file for readers without JAX.

``load(path)`` checks every array against the manifest, content hash included, and rebuilds
the model from it; ``Exported.predict(images)`` returns its
logits computed by packed.packed_apply. They equal the float forward pass of the binary model
up to float32 rounding outside the binary layers (inside, the counts are integer-exact).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
import os
import zipfile
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from bmd_jax.infra import checkpoint, config_files, paths
from bmd_jax.core import layers
from bmd_jax import models
from bmd_jax.tools import packed

log = logging.getLogger("bmd_jax")

FORMAT = "bmd_jax.tools.packed/1"
BIT_CONVENTION = ("bit 1 = -1, bit 0 = +1 (sign(0) = +1); little-endian in uint32 words along "
                  "the fan-in; conv kernels (cout, kh*kw*ceil(cin/32)), per kernel position along "
                  "cin; dense kernels (out, ceil(in/32)); padded bits 0 in kernel and input")


def _nbytes(tree) -> int:
  return sum(int(np.asarray(x).nbytes) for x in jax.tree_util.tree_leaves(tree))


def _directory_bytes(path: str) -> int:
  if paths.is_url(path):  # os.walk cannot list a bucket; a state folder holds few files
    return sum(f.stat().length for f in _files_under(epath.Path(path)))
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _files_under(path: epath.Path):
  for folder in path.iterdir():
    if folder.is_dir():
      yield from _files_under(folder)
    else:
      yield folder


class NotExportableError(ValueError):
  """A model that export cannot pack: a layer not in binary precision."""


# --- packing a model --------------------------------------------------------------------------

def pack_model(model, variables: dict, input_shape, fold_batch_norm: bool = True):
  """(packed layers, remaining float variables, folded {bn: layer}, layer info) of a model.

  input_shape is one example's (H, W, C).
  """
  shape = (1, *input_shape)
  info = packed.binary_modules(model, shape)
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
  stats = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables.get("batch_stats", {})), sep="/")
  foldable = packed.foldable_batch_norms(model, variables, shape) if fold_batch_norm else {}
  folded = {bn: layer for bn, (layer, _) in foldable.items()}
  by_layer = {layer: bn for bn, layer in folded.items()}
  layers_out = {}
  for name, fields in info.items():
    if fields["precision"] != "binary":
      raise NotExportableError(f"layer {name} is in precision {fields['precision']!r}; export "
                               "packs binary-precision models (step 2 of the recipe)")
    latent = params.pop(f"{name}/{layers.LATENT_KERNEL}")
    bias = params.pop(f"{name}/bias", None)
    layer = packed.pack_layer(latent, fields["scale_mode"], bias)
    if name in by_layer:
      bn = by_layer[name]
      bn_params = {k: params.pop(f"{bn}/{k}") for k in ("scale", "bias") if f"{bn}/{k}" in params}
      bn_stats = {k: stats.pop(f"{bn}/{k}") for k in ("mean", "var")}
      layer = packed.fold_batch_norm(layer, bn_params, bn_stats, foldable[bn][1])
    layers_out[name] = packed.as_numpy(layer)
    fields.update(latent_shape=list(latent.shape), words_shape=list(layer["words"].shape),
                  folded_batch_norm=by_layer.get(name))
  remaining = {"params": flax.traverse_util.unflatten_dict(params, sep="/"),
               "batch_stats": flax.traverse_util.unflatten_dict(stats, sep="/")}
  return layers_out, packed.as_numpy(remaining), folded, info


# --- the export file ---------------------------------------------------------------------------

def export(workdir: str, out: str, stage: str | None = None, step: int | None = None,
           fold_batch_norm: bool = True) -> dict:
  """Writes the packed export of a checkpoint to `out` (.npz); returns its manifest."""
  _check_out(out)  # before the work, not after it
  ckpt, stage_name, config, variables = checkpoint.read_chosen(workdir, stage, step)
  model, input_shape = models.from_checkpoint(config, variables["params"])
  layers_out, remaining, folded, info = pack_model(model, variables, input_shape,
                                                   fold_batch_norm)

  arrays = {}
  for name, layer in layers_out.items():
    for key, value in layer.items():
      arrays[f"packed/{name}/{key}"] = value
  for collection in ("params", "batch_stats"):
    for key, value in flax.traverse_util.flatten_dict(remaining[collection], sep="/").items():
      arrays[f"{collection}/{key}"] = np.asarray(value, np.float32)

  latent_bytes = sum(math.prod(f["latent_shape"]) * 4 for f in info.values())
  words_bytes = sum(layer["words"].nbytes for layer in layers_out.values())
  affine_bytes = sum(layer["scale"].nbytes + layer["shift"].nbytes
                     for layer in layers_out.values())
  manifest = {
      "format": FORMAT,
      "bit_convention": BIT_CONVENTION,
      "model": config.model.name,
      "model_fields": config.model.to_dict(),
      "num_classes": int(model.num_classes),
      "input_shape": list(input_shape),
      "source": {"stage": stage_name, "step": ckpt.step},
      "config": _without_local_paths(config).to_json(),
      "binary_layers": info,
      "folded_batch_norms": folded,
      "full_precision": {k: {"shape": list(v.shape), "precision": "float32"}
                         for k, v in arrays.items() if not k.startswith("packed/")},
      # Every array's shape, dtype and content hash: load checks the file against them.
      "arrays": {k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.name,
                     "sha256": checkpoint.array_sha256(v)} for k, v in arrays.items()},
      "sizes": {
          "binary_weights_float32_bytes": latent_bytes,
          "binary_weights_packed_bytes": words_bytes,
          "binary_scale_shift_bytes": affine_bytes,
          "checkpoint_variables_float32_bytes": _nbytes(variables),
          "checkpoint_state_dir_bytes": _directory_bytes(str(epath.Path(ckpt.path) / "state")),
      },
  }
  path = paths.resolve(out if out.endswith(".npz") else out + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()  # np.savez wants a local file or a seekable stream; a URL has neither
  np.savez(buffer, manifest=np.array(json.dumps(manifest)), **arrays)
  path.write_bytes(buffer.getvalue())
  manifest["sizes"]["export_file_bytes"] = len(buffer.getvalue())
  return manifest


# Config fields that may hold a path on the training machine; an export is shared, so they
# are left out of its manifest (a stage name such as 'step1' stays).
LOCAL_PATH_FIELDS = ("data_dir", "init_from", "teacher")


def _without_local_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  sections = [config, *config.get("stage_overrides", {}).values()]
  for section in sections:
    for field in LOCAL_PATH_FIELDS:
      value = section.get(field)
      if field == "data_dir" and value or isinstance(value, str) and os.sep in value:
        section[field] = "<local path left out of the export>"
  return config


def normalization(manifest: dict) -> dict:
  """How images are prepared for the model, from the training config of an export."""
  config = json.loads(manifest["config"])
  # scikit-learn's digits hold counts 0-16, not 8-bit pixels (data/digits.py divides by 16).
  scale = ("pixel values / 16 (to [0, 1])" if config.get("dataset") == "digits"
           else "pixel values / 255 (to [0, 1])")
  return {"scale": scale, "mean": list(config["mean"]), "std": list(config["std"]),
          "then": "(x - mean) / std per channel"}


def _check_out(out: str) -> None:
  """`out`'s folder must be a folder or creatable: no file along its path."""
  probe = paths.blocking_file(paths.resolve(out).parent)
  if probe is not None:
    raise NotADirectoryError(f"--out {out}: {probe} is a file, so the export cannot be written "
                             "under it; give a path in a folder")


@dataclasses.dataclass
class Exported:
  """A loaded export: the model (its own code), packed layers and float variables."""

  manifest: dict
  model: Any
  packed_layers: dict
  variables: dict

  @functools.cached_property
  def _forward(self):
    folded = self.manifest["folded_batch_norms"]
    return jax.jit(lambda v, p, x: packed.packed_apply(self.model, v, p, x, folded))

  @functools.cached_property
  def _device_arrays(self):
    # Put once: numpy arguments of a jitted function are copied to the device on every call
    # (0.2 ms of ResNet-20's 1.8 ms at batch 1 on CPU, bench/packed_inference.py).
    return jax.device_put((self.variables, self.inference_layers()))

  def inference_layers(self) -> dict:
    """packed.inference_layers of this export, given its kernels' shapes (shared words)."""
    shapes = {name: fields.get("latent_shape")
              for name, fields in self.manifest["binary_layers"].items()}
    return packed.inference_layers(self.packed_layers, shapes)

  def predict(self, images) -> jax.Array:
    """Logits of NHWC images (normalized as in training) by XNOR-popcount inference."""
    variables, packed_layers = self._device_arrays
    return self._forward(variables, packed_layers, jnp.asarray(images, jnp.float32))


class ExportFileError(ValueError):
  """An export file that is damaged or disagrees with its manifest; names the file and key."""


def _expected_arrays(manifest: dict) -> dict[str, dict]:
  """{key: {'shape', 'dtype'}} the manifest promises. Exports written before the 'arrays'
  table are checked on what their manifest does say: the float arrays' shapes and the
  packed words' shapes, and that each binary layer has its scale and shift."""
  if "arrays" in manifest:
    return manifest["arrays"]
  expected = {k: {"shape": v["shape"], "dtype": "float32"}
              for k, v in manifest["full_precision"].items()}
  for name, fields in manifest["binary_layers"].items():
    expected[f"packed/{name}/words"] = {"shape": fields["words_shape"], "dtype": "uint32"}
    expected[f"packed/{name}/scale"] = expected[f"packed/{name}/shift"] = {}
  return expected


def _read_manifest(path: str, data) -> dict:
  if "manifest" not in data.files:
    raise ExportFileError(f"{path} has no manifest: it is not a bmd_jax export")
  try:
    manifest = json.loads(str(data["manifest"]))
  except ValueError as e:
    raise ExportFileError(f"{path}: the manifest is not valid JSON ({e}); re-export the "
                          "checkpoint") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else None
    raise ExportFileError(f"{path} is not a bmd_jax packed export (manifest format {found!r}, "
                          f"expected {FORMAT!r})")
  missing = [k for k in ("config", "num_classes", "binary_layers", "folded_batch_norms",
                         "full_precision") if k not in manifest]
  if missing:
    raise ExportFileError(f"{path}: the manifest lacks {missing}; re-export the checkpoint")
  return manifest


def _read_arrays(path: str, data, expected: dict) -> dict:
  """The file's arrays, each checked against the manifest's shape and dtype."""
  files = set(data.files) - {"manifest"}
  if set(expected) - files:
    raise ExportFileError(f"{path} lacks arrays its manifest lists: "
                          f"{sorted(set(expected) - files)[:3]}; the file is incomplete")
  if files - set(expected):
    raise ExportFileError(f"{path} holds arrays its manifest does not list: "
                          f"{sorted(files - set(expected))[:3]}")
  arrays = {}
  for key, want in expected.items():
    try:
      value = data[key]
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
      raise ExportFileError(f"{path}: array {key} cannot be read ({e}); the file is damaged, "
                            "re-export it") from None
    if "shape" in want and list(value.shape) != list(want["shape"]):
      raise ExportFileError(f"{path}: array {key} has shape {list(value.shape)}, the manifest "
                            f"says {want['shape']}; the file is damaged, re-export it")
    if "dtype" in want and value.dtype.name != want["dtype"]:
      raise ExportFileError(f"{path}: array {key} has dtype {value.dtype.name}, the manifest "
                            f"says {want['dtype']}; the file is damaged, re-export it")
    if "sha256" in want and checkpoint.array_sha256(value) != want["sha256"]:
      raise ExportFileError(f"{path}: array {key} differs from the sha256 its manifest records "
                            "(it was changed after the export); re-export the checkpoint")
    arrays[key] = value
  return arrays


def _check_hashes_recorded(path: str, expected: dict) -> None:
  """Exports written before the content hashes (2026-12) load unverified, with a warning: the
  zip's CRC still catches accidental damage. One that records some hashes but not all was
  edited: refused."""
  unhashed = sorted(k for k, want in expected.items() if "sha256" not in want)
  if not unhashed:
    return
  if len(unhashed) < len(expected):
    raise ExportFileError(f"{path}: the manifest records no sha256 for array {unhashed[0]}, "
                          "though it does for others; the file was edited, re-export it")
  log.warning(
      "%s records no content hashes (written before exports held them): loaded unverified; "
      "re-export the checkpoint to have its arrays checked", path)


def load(path: str) -> Exported:
  """The export at `path`, every array checked against the manifest (no pickle is read)."""
  try:
    data = np.load(io.BytesIO(paths.resolve(path).read_bytes()))
  except (zipfile.BadZipFile, EOFError, ValueError) as e:
    raise ExportFileError(f"{path} is not a readable export ({type(e).__name__}: {e}); it is "
                          "empty, truncated or of another kind: re-export it") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ExportFileError(f"{path} holds one array, not an export (.npz with a manifest)")
  with data:
    manifest = _read_manifest(path, data)
    expected = _expected_arrays(manifest)
    _check_hashes_recorded(path, expected)
    arrays = _read_arrays(path, data, expected)
  grouped = {"packed": {}, "params": {}, "batch_stats": {}}
  for key, value in arrays.items():
    collection, rest = key.split("/", 1)
    grouped[collection][rest] = value
  packed_layers = {}
  for key, value in grouped["packed"].items():
    name, field = key.rsplit("/", 1)
    packed_layers.setdefault(name, {})[field] = value
  variables = {c: flax.traverse_util.unflatten_dict(grouped[c], sep="/")
               for c in ("params", "batch_stats")}
  config = ml_collections.ConfigDict(config_files.upgraded(json.loads(manifest["config"])))
  model = models.create_model(config, manifest["num_classes"])
  return Exported(manifest, model, packed_layers, variables)


def describe_sizes(sizes: dict) -> str:
  b = sizes
  binary_ratio = b["binary_weights_float32_bytes"] / max(1, b["binary_weights_packed_bytes"])
  return "\n".join([
      f"binary weights: {b['binary_weights_float32_bytes']:,} B float32 -> "
      f"{b['binary_weights_packed_bytes']:,} B packed ({binary_ratio:.1f}x smaller; "
      f"+{b['binary_scale_shift_bytes']:,} B of per-channel scale/shift)",
      f"export file: {b.get('export_file_bytes', 0):,} B; checkpoint variables in float32: "
      f"{b['checkpoint_variables_float32_bytes']:,} B "
      f"({b['checkpoint_variables_float32_bytes'] / max(1, b.get('export_file_bytes', 1)):.1f}x"
      f"); checkpoint state folder (with optimizer state): {b['checkpoint_state_dir_bytes']:,} B",
  ])


def main(argv):
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
  checkpoint.one_line_orbax_errors()  # a damaged checkpoint is reported once, by the fallback
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  # A path or step given wrong, a damaged workdir: cli.run's boundary makes them one line.
  if f.format == "stablehlo":
    _export_stablehlo(f)
    return
  manifest = export(f.workdir, f.out, f.stage, f.step, f.fold_batch_norm)
  src = manifest["source"]
  print(f"exported {manifest['model']} ({len(manifest['binary_layers'])} binary layers, "
        f"{len(manifest['folded_batch_norms'])} batch norms folded) from stage {src['stage']} "
        f"step {src['step']} to {f.out}")
  print(describe_sizes(manifest["sizes"]))


def _export_stablehlo(f) -> None:
  """The packed export traced into a serialized jax.export program (portable_export.py)."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from bmd_jax.tools import portable_export  # pylint: disable=g-import-not-at-top

  _check_out(f.out)
  with tempfile.TemporaryDirectory() as tmp:
    npz = os.path.join(tmp, "packed.npz")
    export(f.workdir, npz, f.stage, f.step, f.fold_batch_norm)
    exported = load(npz)
  info = portable_export.write(exported, f.out, normalization(exported.manifest))
  print(f"exported {info['model']} from stage {info['source']['stage']} step "
        f"{info['source']['step']} to {f.out} (jax.export program, symbolic batch, "
        f"{', '.join(info['platforms'])}) and {f.out}.json")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top

  from bmd_jax.infra import cli  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("out", None, "The export file to write (.npz, or the program's file "
                      "with --format=stablehlo).")
  flags.DEFINE_enum("format", "npz", ["npz", "stablehlo"],
                    "npz: packed bits, read by export.load (or any npz reader; "
                    "docs/EXPORT_FORMAT.md); stablehlo: a serialized jax.export program that "
                    "runs with JAX alone (bmd_jax/tools/portable_export.py).")
  flags.DEFINE_string("stage", None, "Stage to export (default: the last binary-precision one).")
  flags.DEFINE_integer("step", None, "Step to export (default: the stage's newest).")
  flags.DEFINE_bool("fold_batch_norm", True, "Fold batch norms into the binary layers' affine.")
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
