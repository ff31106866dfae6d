"""A portable export: the packed model as a serialized `jax.export` artifact (StableHLO).

    python -m bmd_jax.tools.export --workdir=runs/digits --out=digits.stablehlo --format=stablehlo

writes ``digits.stablehlo`` (the serialized program, with the packed bits and every other
weight inside it as constants) and ``digits.stablehlo.json`` (what a caller needs to know:
input shape, normalization, classes, the jax version it was made with, the program's sha256).
The program's batch size is symbolic, and it is lowered for CPU, CUDA and TPU. It runs with JAX
alone:

    import jax, numpy as np
    with open("digits.stablehlo", "rb") as f:
      forward = jax.export.deserialize(bytearray(f.read()))
    logits = forward.call(images)  # images: float32 (batch, H, W, C), normalized as the .json says

Its dependency: jax (with jaxlib) at least `MIN_JAX` and the `flatbuffers` package, which
jax.export's (de)serialization imports. The logits equal `export.load(npz).predict(images)`:
the same XNOR-popcount computation (packed.packed_apply), traced once.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp

from bmd_jax.tools import packed
from bmd_jax.infra import paths

FORMAT = "bmd_jax.stablehlo/1"
PLATFORMS = ("cpu", "cuda", "tpu")
# jax.export's serialized artifacts are read by jax releases from 0.4.30 on (its stable API).
MIN_JAX = "0.4.30"


def serialize(exported) -> bytes:
  """The serialized `jax.export` program of a loaded packed export (`export.Exported`)."""
  manifest = exported.manifest
  folded = manifest["folded_batch_norms"]
  variables, model = exported.variables, exported.model
  packed_layers = exported.inference_layers()
  forward = jax.jit(lambda images: packed.packed_apply(model, variables, packed_layers, images,
                                                       folded))
  batch, = jax.export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, *manifest["input_shape"]), jnp.float32)
  return bytes(jax.export.export(forward, platforms=PLATFORMS)(images).serialize())


def description(exported, normalization: dict, program: bytes) -> dict:
  """The sidecar JSON: what the program takes and returns, what it needs to run, and the
  sha256 of the program's file (`program`), against edits and copies gone wrong."""
  manifest = exported.manifest
  return {
      "format": FORMAT,
      "sha256": hashlib.sha256(program).hexdigest(),
      "model": manifest["model"],
      "input": {"shape": ["batch", *manifest["input_shape"]], "dtype": "float32",
                "layout": "NHWC", **normalization},
      "output": {"shape": ["batch", manifest["num_classes"]], "dtype": "float32",
                 "meaning": "logits"},
      "platforms": list(PLATFORMS),
      "requires": {"jax": f">={MIN_JAX}", "flatbuffers": "any"},
      "exported_with": {"jax": jax.__version__},
      "source": manifest["source"],
  }


def write(exported, out: str, normalization: dict) -> dict:
  """Writes `out` (the program) and `out`.json (its description); returns the description."""
  path = paths.resolve(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  program = serialize(exported)
  path.write_bytes(program)
  info = description(exported, normalization, program)
  path.with_name(path.name + ".json").write_text(json.dumps(info, indent=2))
  return info
