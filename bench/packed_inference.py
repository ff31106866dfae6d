"""XNOR-popcount (packed) binary layers against the float path, per binary layer shape.

    python bench/packed_inference.py                          # resnet20 and resnet18, batch 1 and 128
    python bench/packed_inference.py --models=resnet20 --batches=1 --out=packed.json

For each distinct binary conv of each model (ResNet-20 at 32x32, ResNet-18 at 224x224), both
paths start from the same float input and end with the same float output:

    float   conv(sign(x), alpha * sign(W)) with lax.conv_general_dilated, the kernel precomputed
            (what a float deployment of the binary model runs; training recomputes alpha too)
    packed  sign(x) packed into uint32 words, patches of words, XOR + population_count against
            the packed kernel, alpha * count (packed.binary_conv_counts; input packing included)

Each is jitted and timed as the median of --reps runs after one warm-up; outputs are checked
equal (to float32 rounding) before timing. Sizes: the layer's kernel as float32 and packed
(packed words; per-channel scales not counted, they are float32 in both).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import bmd_jax
from bmd_jax import models, packed

INPUTS = {"resnet20": (32, 32, 3), "resnet18": (224, 224, 3)}


def _time(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_layer(shape: dict, cout: int, batch: int, reps: int, rng) -> dict:
  h, w, cin = shape["input_shape"]
  kh, kw = shape["kernel_size"]
  strides, padding = shape["strides"], shape["padding"]
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  x = jnp.asarray(rng.normal(size=(batch, h, w, cin)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
  layer = packed.pack_layer(latent, "mean_abs")
  negative, alpha = packed.kernel_signs_and_scale(latent, "mean_abs")
  float_kernel = jnp.where(negative, -1.0, 1.0) * alpha

  @jax.jit
  def float_path(x, kernel):
    return jax.lax.conv_general_dilated(jnp.where(x >= 0, 1.0, -1.0), kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @jax.jit
  def packed_path(x, words, scale):
    counts = packed.binary_conv_counts(x, words, (kh, kw), strides, padding)
    return counts.astype(jnp.float32) * scale

  expected = float_path(x, float_kernel)  # float32 sums of fan-in terms: relative 1e-6 rounding
  np.testing.assert_allclose(packed_path(x, layer["words"], layer["scale"]), expected,
                             rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
  t_float = _time(float_path, x, float_kernel, reps=reps)
  t_packed = _time(packed_path, x, layer["words"], layer["scale"], reps=reps)
  return {"batch": batch, "float_ms": 1e3 * t_float, "packed_ms": 1e3 * t_packed,
          "speedup": t_float / t_packed, "float32_bytes": int(latent.size * 4),
          "packed_bytes": int(layer["words"].size * 4)}


def main():
  bmd_jax.configure_cpu()  # before any JAX computation
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="resnet20,resnet18")
  parser.add_argument("--batches", default="1,128")
  parser.add_argument("--reps", type=int, default=5, help="timed runs per path (batch 1: 4x)")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
             "jax": jax.__version__, "rows": []}
  print("| model | input HxWxCin | kernel, stride | Cout | layers | batch | float ms | "
        "packed ms | speedup | kernel f32 B | packed B | smaller |")
  print("|" + "---|" * 12)
  for name in args.models.split(","):
    model = models.get_model(name, num_classes=10)
    info = packed.binary_modules(model, (1, *INPUTS[name]))
    shapes = {}
    for path, f in info.items():
      key = json.dumps([f["input_shape"], f["kernel_size"], f["strides"], f["padding"]])
      shapes.setdefault(key, (f, []))[1].append(path)
    for f, paths in shapes.values():
      cout = f["features"]
      for batch in (int(b) for b in args.batches.split(",")):
        reps = args.reps * 4 if batch == 1 else args.reps
        row = {"model": name, "input_shape": f["input_shape"], "kernel_size": f["kernel_size"],
               "strides": f["strides"], "cout": cout, "layers": paths,
               **bench_layer(f, cout, batch, reps, rng)}
        results["rows"].append(row)
        h, w, c = row["input_shape"]
        print(f"| {name} | {h}x{w}x{c} | {row['kernel_size'][0]}x{row['kernel_size'][1]}, "
              f"{row['strides']} | {cout} | {len(paths)} | {batch} | {row['float_ms']:.2f} | "
              f"{row['packed_ms']:.2f} | {row['speedup']:.1f}x | {row['float32_bytes']:,} | "
              f"{row['packed_bytes']:,} | {row['float32_bytes'] / row['packed_bytes']:.0f}x |",
              flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(results, fh, indent=1)


if __name__ == "__main__":
  main()
