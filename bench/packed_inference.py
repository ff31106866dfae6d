"""XNOR-popcount (packed) binary layers against the float path, per layer or whole models.

    python bench/packed_inference.py                          # resnet20 and resnet18, batch 1 and 128
    python bench/packed_inference.py --models=resnet20 --batches=1 --out=packed.json

For each distinct binary conv of each model (ResNet-20 at 32x32, ResNet-18 at 224x224), both
paths start from the same float input and end with the same float output:

    float   conv(sign(x), alpha * sign(W)) with lax.conv_general_dilated, the kernel precomputed
            (what a float deployment of the binary model runs; training recomputes alpha too)
    packed  sign(x) packed into uint32 words, patches of words, XOR + population_count against
            the packed kernel, alpha * count (packed.binary_conv_counts; input packing included)

Each is jitted; outputs are checked equal (to float32 rounding) before timing. The two paths
alternate over --rounds rounds, each the median of its --reps runs in a round (4x at batch 1,
fewer where a round would pass --max_round_s); the speed-up is the median of the per-round
ratios float / packed. Sizes: the layer's kernel as float32 and packed
(packed words; per-channel scales not counted, they are float32 in both).

    python bench/packed_inference.py --whole_model --out=packed_whole.json

--whole_model times whole models instead (ResNet-20 at 32x32x3, 10 classes; ResNet-18 at
224x224x3, 1000 classes; random init, running means and variances moved away from the init so
that folding them matters), four jitted forwards of the same images:

    packed        export.Exported(...).predict: the export's inference (XNOR-popcount layers,
                  batch norms folded into their scale and shift). The Exported is built from
                  export.pack_model's output as export.load builds it from a file (same model,
                  packed layers, float variables and folded batch norms), so predict runs the
                  code of a loaded export without a training workdir to export from.
    float         model.apply(train=False) of the binary model with every latent kernel
                  replaced by alpha * sign(W), precomputed (precision 'binary_activations'
                  then binarizes the input only), batch norms in inference mode.
    float_folded  the same model with each binary layer computed as conv(sign(x), sign(W)) *
                  scale + shift from the packed layer's signs, folded scale and shift: the
                  packed arithmetic in float, the batch norms folded alike.
    packed_unshared  packed with one kernel position a word in every conv, as before shared
                  words (packed.shares_words): what sharing gains (ResNet-20's 16-channel convs).

packed is checked equal to float_folded (to float32 rounding relative to the logits' scale,
and the same argmax) before timing, and to float at batch 1 (check_equal says why not at
larger batches; the difference is reported). Timing alternates the four paths over --rounds
rounds; in a round each path is the median of its reps (--reps, 4x at batch 1, cut so that one
path's round takes about --max_round_s). Per-round ratios float / packed and their median are
reported, and the ratio of each path's fastest round, with the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

import bmd_jax
from bmd_jax.tools import export, packed
from bmd_jax.core import layers
from bmd_jax import models

INPUTS = {"resnet20": (32, 32, 3), "resnet18": (224, 224, 3)}
CLASSES = {"resnet20": 10, "resnet18": 1000}


def _pair(strides):
  return (strides,) * 2 if isinstance(strides, int) else tuple(strides)


def _time(fn, *args, reps: int, warm: bool = True) -> float:
  if warm:
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_layer(shape: dict, cout: int, batch: int, reps: int, rounds: int,
                max_round_s: float, rng) -> dict:
  h, w, cin = shape["input_shape"]
  kh, kw = shape["kernel_size"]
  strides, padding = _pair(shape["strides"]), shape["padding"]
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  x = jnp.asarray(rng.normal(size=(batch, h, w, cin)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
  layer = packed.pack_layer(latent, "mean_abs")
  # As Exported.predict reads it: shared words where the kernel's shape allows.
  columns = packed.inference_layers({"layer": layer}, {"layer": latent.shape})["layer"]["columns"]
  negative, alpha = packed.kernel_signs_and_scale(latent, "mean_abs")
  float_kernel = jnp.where(negative, -1.0, 1.0) * alpha

  @jax.jit
  def float_path(x, kernel):
    return jax.lax.conv_general_dilated(jnp.where(x >= 0, 1.0, -1.0), kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @jax.jit
  def packed_path(x, columns, scale):
    counts = packed.binary_conv_counts(x, columns, (kh, kw), strides, padding)
    return counts.astype(jnp.float32) * scale

  expected = float_path(x, float_kernel)  # float32 sums of fan-in terms: relative 1e-6 rounding
  np.testing.assert_allclose(packed_path(x, columns, layer["scale"]), expected,
                             rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
  paths = {"float": lambda x: float_path(x, float_kernel),
           "packed": lambda x: packed_path(x, columns, layer["scale"])}
  timing = timed_rounds(paths, x, reps, rounds, max_round_s)
  seconds = timing["seconds"]
  ratios = [f / p for f, p in zip(seconds["float"], seconds["packed"])]
  return {"batch": batch, "rounds": rounds, "reps_per_round": timing["reps"],
          "float_ms_per_round": [1e3 * t for t in seconds["float"]],
          "packed_ms_per_round": [1e3 * t for t in seconds["packed"]],
          "float_ms": 1e3 * statistics.median(seconds["float"]),
          "packed_ms": 1e3 * statistics.median(seconds["packed"]),
          "speedup_per_round": ratios, "speedup": statistics.median(ratios),
          "float32_bytes": int(latent.size * 4), "packed_bytes": int(layer["words"].size * 4)}


def layer_rows(name: str, batches, reps: int, rounds: int, max_round_s: float,
               rng) -> list[dict]:
  """One row per distinct binary conv shape of the model and batch size."""
  model = models.get_model(name, num_classes=10)
  info = packed.binary_modules(model, (1, *INPUTS[name]))
  shapes = {}
  for path, f in info.items():
    key = json.dumps([f["input_shape"], f["kernel_size"], f["strides"], f["padding"]])
    shapes.setdefault(key, (f, []))[1].append(path)
  rows = []
  for f, paths in shapes.values():
    cout = f["features"]
    for batch in batches:
      row = {"model": name, "input_shape": f["input_shape"], "kernel_size": f["kernel_size"],
             "strides": f["strides"], "cout": cout, "layers": paths,
             **bench_layer(f, cout, batch, reps * 4 if batch == 1 else reps, rounds,
                           max_round_s, rng)}
      rows.append(row)
      h, w, c = row["input_shape"]
      print(f"| {name} | {h}x{w}x{c} | {row['kernel_size'][0]}x{row['kernel_size'][1]}, "
            f"{row['strides']} | {cout} | {len(paths)} | {batch} | {row['float_ms']:.2f} | "
            f"{row['packed_ms']:.2f} | "
            f"{', '.join(f'{r:.1f}' for r in row['speedup_per_round'])} | "
            f"{row['speedup']:.1f}x | {row['float32_bytes']:,} | "
            f"{row['packed_bytes']:,} | {row['float32_bytes'] / row['packed_bytes']:.0f}x |",
            flush=True)
  return rows


# --- whole models ----------------------------------------------------------------------------

def moved_running_stats(stats, rng):
  """Running means and variances away from the init (0 and 1): folded, they change the
  layers' scale and shift, so the comparison covers the folding."""
  return jax.tree_util.tree_map(
      lambda a: a + jnp.asarray(np.abs(rng.normal(size=a.shape)) * 0.5, a.dtype), stats)


def packed_predictor(model, variables: dict, input_shape) -> export.Exported:
  """What export.load returns for an export of these variables (see the module docstring)."""
  layers_out, remaining, folded, info = export.pack_model(model, variables, input_shape)
  manifest = {"folded_batch_norms": folded, "binary_layers": info}
  return export.Exported(manifest, model, layers_out, remaining)


def float_forward(model, variables: dict, info: dict):
  """x -> model.apply(train=False) with alpha * sign(W) precomputed for every binary layer."""
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
  for name, fields in info.items():
    key = f"{name}/{layers.LATENT_KERNEL}"
    negative, alpha = packed.kernel_signs_and_scale(params[key], fields["scale_mode"])
    params[key] = jnp.where(negative, -1.0, 1.0) * alpha
  binarized = {**variables, "params": flax.traverse_util.unflatten_dict(params, sep="/")}
  # 'binary_activations' binarizes the input and uses the kernel as given: the binary forward.
  float_model = model.clone(precision="binary_activations")
  apply = jax.jit(lambda v, x: float_model.apply(v, x, train=False))
  return lambda x: apply(binarized, x)


def float_layer_forward(module, x, layer):
  """conv(sign(x), sign(W)) * scale + shift (or the dense twin): the float arithmetic of
  packed.packed_layer_forward, whose integer count this conv computes in float32."""
  x = jnp.where(x >= 0, 1.0, -1.0)
  if isinstance(module, layers.BinaryConv):
    y = jax.lax.conv_general_dilated(x, layer["signs"], _pair(module.strides), module.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  else:
    y = x @ layer["signs"]
  return y * layer["scale"] + layer["shift"]


def folded_float_forward(predictor: export.Exported):
  """x -> the predictor's model with its folded layers computed in float arithmetic."""
  float_layers = {}
  for name, layer in predictor.packed_layers.items():
    shape = predictor.manifest["binary_layers"][name]["latent_shape"]
    negative = packed.unpack_kernel(jnp.asarray(layer["words"]), shape)
    float_layers[name] = {"signs": jnp.where(negative, -1.0, 1.0),
                          "scale": jnp.asarray(layer["scale"]),
                          "shift": jnp.asarray(layer["shift"])}
  folded = predictor.manifest["folded_batch_norms"]
  apply = jax.jit(lambda v, p, x: packed.packed_apply(predictor.model, v, p, x, folded,
                                                      float_layer_forward))
  return lambda x: apply(predictor.variables, float_layers, x)


def compare(out, reference) -> tuple[float, float]:
  """(max |difference| relative to the reference logits' scale, share of equal argmax)."""
  out, reference = np.asarray(out), np.asarray(reference)
  scale = float(np.max(np.abs(reference)))
  relative = float(np.max(np.abs(out - reference))) / (1 + scale)
  return relative, float(np.mean(out.argmax(-1) == reference.argmax(-1)))


def check_equal(outputs: dict) -> dict:
  """packed against float_folded, which does the same arithmetic in float (the counts are
  exact integers in both): equal to float32 rounding, 1e-4 of the logits' scale, same classes;
  packed_unshared against packed alike (both integer counts).

  float (model.apply, batch norms unfolded) rounds its pre-activations differently, so a
  value within rounding of 0 can binarize the other way in the next layer: rare enough at
  batch 1 (held to the same bound), but ResNet-18 at batch 128 binarizes some 2e8 values and a
  few flip. Its difference and share of equal classes are reported, and held to 1e-4 at batch 1.
  """
  checked = {}
  for path, reference, strict in (("packed", "float_folded", True),
                                  ("packed", "float", len(outputs["float"]) == 1),
                                  ("packed_unshared", "packed", True)):
    relative, same_class = compare(outputs[path], outputs[reference])
    if strict and (relative > 1e-4 or same_class < 1):
      raise AssertionError(f"{path} differs from {reference}: max |difference| {relative:.2e} "
                           f"of the logits' scale, {same_class:.0%} of the same class")
    checked[f"{path}_vs_{reference}"] = {"max_difference_relative": relative,
                                         "same_class": same_class}
  return checked


def timed_rounds(paths: dict, x, reps: int, rounds: int, max_round_s: float) -> dict:
  """{'reps': reps per round, 'seconds': {path: [median of each round]}}, the paths
  alternating within every round."""
  first = {}
  for path, fn in paths.items():  # warm-up (compilation) before any timing
    jax.block_until_ready(fn(x))
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    first[path] = time.perf_counter() - start
  reps = max(1, min(reps, int(max_round_s / max(first.values()))))
  times = {path: [] for path in paths}
  for _ in range(rounds):
    for path, fn in paths.items():
      times[path].append(_time(fn, x, reps=reps, warm=False))
  return {"reps": reps, "seconds": times}


def bench_whole_model(name: str, batch: int, reps: int, rounds: int, max_round_s: float, rng,
                      model_kwargs=None) -> dict:
  model = models.get_model(name, num_classes=CLASSES[name], **(model_kwargs or {}))
  params, stats = models.initialized(jax.random.key(0), model, INPUTS[name])
  variables = {"params": params, "batch_stats": moved_running_stats(stats, rng)}
  predictor = packed_predictor(model, variables, INPUTS[name])
  # The same packed forward with one kernel position a word everywhere (no shared words).
  unshared = jax.device_put((predictor._device_arrays[0],  # pylint: disable=protected-access
                             packed.inference_layers(predictor.packed_layers)))
  paths = {"float": float_forward(model, variables, predictor.manifest["binary_layers"]),
           "float_folded": folded_float_forward(predictor), "packed": predictor.predict,
           "packed_unshared": lambda x: predictor._forward(  # pylint: disable=protected-access
               *unshared, x)}
  x = jnp.asarray(rng.normal(size=(batch, *INPUTS[name])), jnp.float32)
  checked = check_equal({path: fn(x) for path, fn in paths.items()})
  timing = timed_rounds(paths, x, reps, rounds, max_round_s)
  seconds = timing["seconds"]
  row = {"model": name, "model_kwargs": model_kwargs or {}, "input_shape": list(INPUTS[name]),
         "num_classes": CLASSES[name], "batch": batch, "rounds": rounds,
         "reps_per_round": timing["reps"], "outputs_checked_equal": True, "checks": checked,
         **{f"{path}_ms_per_round": [1e3 * t for t in ts] for path, ts in seconds.items()}}
  for path in ("float", "float_folded", "packed_unshared"):
    ratios = [f / p for f, p in zip(seconds[path], seconds["packed"])]
    row[f"{path}_over_packed_per_round"] = ratios
    row[f"{path}_over_packed_median"] = statistics.median(ratios)
    # Other jobs only add time: the fastest rounds' ratio is the least disturbed estimate.
    row[f"{path}_over_packed_best"] = min(seconds[path]) / min(seconds["packed"])
  return row


def whole_model_rows(names, batches, reps, rounds, max_round_s, rng, model_kwargs) -> list:
  print("| model | batch | float ms | float folded ms | packed ms | float/packed per round | "
        "median | best | float folded/packed median | unshared/packed per round |")
  print("|" + "---|" * 10)
  rows = []
  for name in names:
    for batch in batches:
      row = bench_whole_model(name, batch, reps * 4 if batch == 1 else reps, rounds,
                              max_round_s, rng, model_kwargs)
      rows.append(row)
      ms = {p: statistics.median(row[f"{p}_ms_per_round"])
            for p in ("float", "float_folded", "packed")}
      per_round = ", ".join(f"{r:.2f}" for r in row["float_over_packed_per_round"])
      print(f"| {name} | {batch} | {ms['float']:.2f} | {ms['float_folded']:.2f} | "
            f"{ms['packed']:.2f} | {per_round} | {row['float_over_packed_median']:.2f}x | "
            f"{row['float_over_packed_best']:.2f}x | "
            f"{row['float_folded_over_packed_median']:.2f}x | "
            + ", ".join(f"{r:.2f}" for r in row["packed_unshared_over_packed_per_round"])
            + " |", flush=True)
  return rows


def main(argv=None):
  bmd_jax.configure_cpu()  # before any JAX computation
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="resnet20,resnet18")
  parser.add_argument("--batches", default="1,128")
  parser.add_argument("--reps", type=int, default=5, help="timed runs per path (batch 1: 4x)")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  parser.add_argument("--whole_model", action="store_true",
                      help="time whole models (packed predict against the float forward)")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
  parser.add_argument("--max_round_s", type=float, default=20.0,
                      help="fewer reps where one path's round would take longer")
  parser.add_argument("--model_kwargs", default="{}",
                      help="--whole_model: JSON of model fields, e.g. '{\"react\": true}'")
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  names = args.models.split(",")
  batches = [int(b) for b in args.batches.split(",")]
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                        f"{jax.devices()[0].device_kind}",
             "jax": jax.__version__,
             "command": shlex.join(["python", *sys.argv] if argv is None else
                                   ["python", "bench/packed_inference.py", *argv]),
             "load_average_before": list(os.getloadavg())}
  if args.whole_model:
    results["rows"] = whole_model_rows(names, batches, args.reps, args.rounds, args.max_round_s,
                                       rng, json.loads(args.model_kwargs))
  else:
    print("| model | input HxWxCin | kernel, stride | Cout | layers | batch | float ms | "
          "packed ms | speedup per round | median | kernel f32 B | packed B | smaller |")
    print("|" + "---|" * 13)
    results["rows"] = [row for name in names
                       for row in layer_rows(name, batches, args.reps, args.rounds,
                                             args.max_round_s, rng)]
  results["load_average_after"] = list(os.getloadavg())
  print(f"load average before {results['load_average_before']}, after "
        f"{results['load_average_after']}")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(results, fh, indent=1)
  return results


if __name__ == "__main__":
  main()
