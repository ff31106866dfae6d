"""Bit-packed binary layers and XNOR-popcount inference.

Packing. A sign is one bit: **bit 1 means -1**, bit 0 means +1 (so sign(0) = +1, as
everywhere in bmd_jax). Bits go along the fan-in into ``uint32`` words, little-endian inside
a word (element ``32 * k + j`` is bit ``j`` of word ``k``); a fan-in that is not a multiple of
32 is padded with 0 bits in the activations and the weights alike, so a padded bit never
differs and never counts.

A conv kernel (HWIO) is packed per kernel position along its input channels: the packed kernel
is ``(cout, kh * kw * ceil(cin / 32))`` words, and an input is packed the same way, per pixel
along its channels, before its patches are gathered (the patches of packed words are 32 times
smaller than those of floats). A channel count that is not a multiple of 32 thus leaves unused
bits in every kernel position's last word (ResNet-20's 16-channel stage uses half of each word).
That is how kernels are stored (pack_kernel, export files). At inference a conv of at most 16
input channels shares words instead (``shares_words``): its input is packed to 16-bit words,
two consecutive kernel positions are read as one uint32, and its columns are paired on the host
(``paired_columns``), so a 3x3 patch is 5 words, not 9.
A dense kernel (in, out) is packed to ``(out, ceil(in / 32))``.

Arithmetic. For +-1 vectors a, b of n elements, ``a . b = n - 2 * popcount(bits(a) XOR
bits(b))``. A conv's zero padding is not a sign: the float path multiplies the weights of a
padded position by 0, whereas a packed padded position holds bit 0 (+1) and adds the weight's
sign. The packed conv therefore subtracts, at each output position, the sum of the weight
signs that fall on padding (an integer computed from the packed kernel), which makes it exact.
The integer result equals the float conv of sign(x) with sign(W) exactly (both are integers
below 2**24); a layer's output is then ``scale * count + shift`` per output channel, with
``scale`` the kernel's alpha (quantizers.binarize_kernel) and ``shift`` its bias, or both
folded with a following batch norm (see export.py).

``packed_apply`` runs a model's own forward pass with every BinaryConv/BinaryDense computed
this way (flax's ``nn.intercept_methods``), so any model of the registry runs packed with no
change to its code.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmd_jax.core import layers, quantizers

WORD_BITS = 32
HALF_BITS = 16  # a conv with at most this many input channels shares words between positions


# --- packing ---------------------------------------------------------------------------------

def num_words(n: int) -> int:
  return -(-n // WORD_BITS)


def pack_bits(negative: jax.Array, word_bits: int = WORD_BITS) -> jax.Array:
  """Packs booleans (True = -1) along the last axis into words of word_bits (32: uint32, 16:
  uint16), zero-padded."""
  dtype = {WORD_BITS: jnp.uint32, HALF_BITS: jnp.uint16}[word_bits]
  n = negative.shape[-1]
  pad = -(-n // word_bits) * word_bits - n
  bits = jnp.pad(negative.astype(dtype), [(0, 0)] * (negative.ndim - 1) + [(0, pad)])
  bits = bits.reshape(*negative.shape[:-1], -1, word_bits)
  weights = jnp.left_shift(dtype(1), jnp.arange(word_bits, dtype=dtype))
  return jnp.sum(bits * weights, axis=-1, dtype=dtype)  # distinct bits: sum == or


def unpack_bits(words: jax.Array, n: int) -> jax.Array:
  """The inverse of pack_bits: booleans (True = -1) of length n along the last axis."""
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = jnp.right_shift(words[..., None], shifts) & jnp.uint32(1)
  return bits.reshape(*words.shape[:-1], -1)[..., :n].astype(bool)


def pack_signs(x: jax.Array) -> jax.Array:
  """Packs sign(x) (sign(0) = +1) along the last axis."""
  return pack_bits(x < 0)


def pack_kernel(signs_negative: jax.Array) -> jax.Array:
  """Packed words of a binary kernel's signs (True = -1): HWIO -> (cout, kh*kw*words(cin)),
  (in, out) -> (out, words(in))."""
  if signs_negative.ndim == 2:
    return pack_bits(signs_negative.T)
  kh, kw, cin, cout = signs_negative.shape
  words = pack_bits(jnp.transpose(signs_negative, (3, 0, 1, 2)))  # (cout, kh, kw, wc)
  return words.reshape(cout, kh * kw * num_words(cin))


def unpack_kernel(words: jax.Array, shape) -> jax.Array:
  """Booleans (True = -1) of the kernel `shape` (HWIO or (in, out)) from pack_kernel's words."""
  if len(shape) == 2:
    return unpack_bits(words, shape[0]).T
  kh, kw, cin, cout = shape
  bits = unpack_bits(words.reshape(cout, kh, kw, num_words(cin)), cin)
  return jnp.transpose(bits, (1, 2, 3, 0))


def kernel_signs_and_scale(latent: jax.Array, scale_mode: str):
  """(negative, alpha) of a latent kernel: the bits of the binary kernel and its per-output-
  channel scale, exactly as quantizers.binarize_kernel forms alpha * sign(W)."""
  latent = jnp.asarray(latent, jnp.float32)
  cout = latent.shape[-1]
  if scale_mode == "none":
    return latent < 0, jnp.ones((cout,), jnp.float32)
  if scale_mode == "mean_abs":
    return latent < 0, quantizers.mean_abs_scale(latent).reshape(cout)
  if scale_mode == "irnet":
    w_hat, scale = quantizers.irnet_standardize(latent)
    return w_hat < 0, scale.reshape(cout)
  raise ValueError(f"unknown scale_mode {scale_mode!r}; choose one of {quantizers.SCALE_MODES}")


# --- XNOR-popcount ---------------------------------------------------------------------------

def kernel_columns(words) -> np.ndarray:
  """pack_kernel's (cout, K) words as the (K, cout) array the XOR-popcount loop reads, made on
  the host: one row per word position, contiguous along the output channels."""
  return np.ascontiguousarray(np.asarray(words, np.uint32).T)


def shares_words(kernel_shape) -> bool:
  """Whether inference puts two kernel positions in each word of a conv kernel (HWIO): its
  input channels fit in half a word, and it has more than one position."""
  return len(kernel_shape) == 4 and kernel_shape[2] <= HALF_BITS and (
      kernel_shape[0] * kernel_shape[1] > 1)


def paired_columns(columns: np.ndarray, positions: int) -> np.ndarray:
  """Columns (positions, cout) of a kernel whose positions use only the low half of their word,
  as (ceil(positions / 2), cout): position 2m in the low half of word m, 2m + 1 in the high."""
  columns = np.asarray(columns, np.uint32)
  if positions % 2:
    columns = np.concatenate([columns, np.zeros_like(columns[:1])])
  return np.ascontiguousarray(columns[0::2] | (columns[1::2] << np.uint32(HALF_BITS)))


def _mismatches(a: jax.Array, columns: jax.Array, chunk: int = 128) -> jax.Array:
  """popcount(a XOR b) summed over words: a (..., K), columns = b.T (K, O) -> (..., O) int32.

  Written as a sum of K elementwise terms over (..., O), one per word, rather than as a
  reduction over K: XLA fuses the terms into one loop vectorized along O, about 8x faster on
  CPU (AVX2) than its reduction over the minor axis (measured in bench/packed_inference.py's
  development). Chunks of `chunk` words bound the size of one fused expression.

  `columns` must come in as an array (kernel_columns), not as a transpose traced in the same
  program: XLA:CPU fuses such a transpose into the loop, which then reads every word with a
  stride of K, and the loop runs 2-5x slower (bench/popcount_loop.py).
  """
  total = None
  for lo in range(0, a.shape[-1], chunk):
    part = None
    for k in range(lo, min(lo + chunk, a.shape[-1])):
      term = jax.lax.population_count(jnp.bitwise_xor(a[..., k, None], columns[k]))
      term = term.astype(jnp.int32)
      part = term if part is None else part + term
    total = part if total is None else total + part
  return total


def binary_dense_counts(x: jax.Array, columns: jax.Array, fan_in: int) -> jax.Array:
  """sign(x) @ sign(W) as int32 from the kernel's columns (kernel_columns): fan_in - 2 *
  popcount(xor)."""
  return fan_in - 2 * _mismatches(jax.lax.optimization_barrier(pack_signs(x)), columns)


def _pads(padding, spatial, window, strides):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(spatial, window, strides, padding)
  return [tuple(p) for p in padding]


def binary_conv_counts(x: jax.Array, columns: jax.Array, kernel_size, strides=1,
                       padding="SAME") -> jax.Array:
  """conv(sign(x), sign(W)) as int32 from packed words (NHWC input, zero padding exact).

  x: (N, H, W, cin) floats; columns: kernel_columns of pack_kernel's words,
  (kh*kw*words(cin), cout).
  """
  n, h, w, cin = x.shape
  kh, kw = kernel_size
  sh, sw = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  (pt, pb), (pl, pr) = _pads(padding, (h, w), (kh, kw), (sh, sw))
  ho = (h + pt + pb - kh) // sh + 1
  wo = (w + pl + pr - kw) // sw + 1
  wc = num_words(cin)
  cout = columns.shape[1]
  positions = kh * kw
  paired = shares_words((kh, kw, cin, cout)) and columns.shape[0] == -(-positions // 2)
  if not paired and columns.shape[0] != positions * wc:
    raise ValueError(f"kernel columns of {columns.shape[0]} words do not fit a {kh}x{kw} conv "
                     f"of {cin} input channels")

  signs = pack_bits(x < 0, HALF_BITS if paired else WORD_BITS)
  words = jnp.pad(signs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # pad: bit 0 = +1
  inside = jnp.pad(jnp.ones((h, w), jnp.int32), ((pt, pb), (pl, pr)))

  def window(a, i, j):  # the (ho, wo) grid of kernel position (i, j)
    return a[..., i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]

  offsets = [(i, j) for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate([window(words, i, j) for i, j in offsets], axis=-1)
  if paired:  # half-words of consecutive positions, read as one word (little-endian)
    patches = jnp.pad(patches, ((0, 0),) * 3 + ((0, positions % 2),))
    patches = jax.lax.bitcast_convert_type(
        patches.reshape(*patches.shape[:-1], -1, 2), jnp.uint32)
  # Materialize the packed patches: fused into the popcount loop, XLA would repack the input's
  # 32 floats of a word once per output channel.
  patches = jax.lax.optimization_barrier(patches)
  counts = kh * kw * cin - 2 * _mismatches(patches, columns)  # (n, ho, wo, cout)

  # Padded positions held +1: subtract the weight signs that landed on them.
  on_padding = jnp.stack([1 - window(inside[..., None], i, j)[..., 0] for i, j in offsets],
                         axis=-1)  # (ho, wo, kh*kw)
  if (pt, pb, pl, pr) != (0, 0, 0, 0):
    if paired:
      halves = jnp.stack([columns & 0xFFFF, columns >> HALF_BITS], axis=1)
      per_position = halves.reshape(-1, 1, cout)[:positions]
    else:
      per_position = columns.reshape(positions, wc, cout)
    negatives = jnp.sum(jax.lax.population_count(per_position), axis=1, dtype=jnp.int32)
    sign_sums = cin - 2 * negatives  # (kh*kw, cout): sum over cin of sign(W)
    counts = counts - jnp.einsum("hwk,ko->hwo", on_padding, sign_sums)
  return counts


# --- a packed layer --------------------------------------------------------------------------

def pack_layer(latent: jax.Array, scale_mode: str, bias: jax.Array | None = None) -> dict:
  """{'words', 'scale', 'shift'} of a binary layer (scale alpha, shift the bias or 0)."""
  negative, alpha = kernel_signs_and_scale(latent, scale_mode)
  cout = latent.shape[-1]
  shift = jnp.zeros((cout,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
  return {"words": pack_kernel(negative), "scale": alpha, "shift": shift}


def inference_layers(packed_layers: Mapping[str, Mapping[str, Any]],
                     kernel_shapes: Mapping[str, Any] | None = None) -> dict:
  """{path: {'columns', 'scale', 'shift'}}: what packed_apply reads, from pack_layer's (or an
  export file's) layers, the kernels' columns made on the host (kernel_columns says why).

  kernel_shapes ({path: latent kernel shape}, optional) lets the convs with at most 16 input
  channels share words, two kernel positions to a word (`shares_words`): ResNet-20's first
  stage then reads 5 words a patch instead of 9. The words stored (export files) stay one
  position to a word either way."""
  layers_out = {}
  for name, layer in packed_layers.items():
    columns = kernel_columns(layer["words"])
    shape = (kernel_shapes or {}).get(name)
    if shape is not None and shares_words(shape):
      columns = paired_columns(columns, shape[0] * shape[1])
    layers_out[name] = {"columns": columns, "scale": np.asarray(layer["scale"], np.float32),
                        "shift": np.asarray(layer["shift"], np.float32)}
  return layers_out


def packed_layer_forward(module: nn.Module, x: jax.Array, layer: Mapping[str, jax.Array]):
  """A BinaryConv/BinaryDense's output computed from its packed layer (inference_layers)."""
  if module.precision != "binary":
    raise ValueError(f"packed inference needs precision 'binary', layer {module.path} has "
                     f"{module.precision!r}")
  if isinstance(module, layers.BinaryConv):
    counts = binary_conv_counts(x, layer["columns"], module.kernel_size, module.strides,
                                module.padding)
  else:
    counts = binary_dense_counts(x, layer["columns"], x.shape[-1])
  y = counts.astype(jnp.float32) * layer["scale"] + layer["shift"]
  return y.astype(module.dtype or x.dtype)


def module_name(module: nn.Module) -> str:
  return "/".join(module.path)


def packed_apply(model: nn.Module, variables: Mapping[str, Any],
                 packed_layers: Mapping[str, Mapping[str, jax.Array]], images: jax.Array,
                 folded_batch_norms: Mapping[str, str] | None = None,
                 layer_forward=packed_layer_forward) -> jax.Array:
  """The model's logits (train=False) with its binary layers computed by XNOR-popcount.

  packed_layers: ``inference_layers({module path: pack_layer(...)})`` for every binary layer;
  their latent kernels need not be in `variables`. folded_batch_norms: ``{batch norm path:
  binary layer path}`` for batch norms already folded into that layer's scale and shift: each
  must take that layer's output as it is, and then passes it through.
  layer_forward(module, x, layer) computes a binary layer from its entry of packed_layers:
  another one (a float conv of the same folded layer, bench/packed_inference.py) runs the
  same model around other arithmetic.
  """
  folded = dict(folded_batch_norms or {})
  outputs = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    name = module_name(module)
    if isinstance(module, (layers.BinaryConv, layers.BinaryDense)):
      if name not in packed_layers:
        raise KeyError(f"no packed weights for binary layer {name}")
      y = layer_forward(module, args[0], packed_layers[name])
      outputs[name] = y
      return y
    if name in folded:
      if args[0] is not outputs.get(folded[name]):
        raise ValueError(f"batch norm {name} was folded into {folded[name]} but does not take "
                         "that layer's output directly")
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return model.apply(variables, images, train=False)


def foldable_batch_norms(model: nn.Module, variables: Mapping[str, Any],
                         input_shape) -> dict[str, tuple[str, float]]:
  """{batch norm path: (binary layer path, its epsilon)} of the batch norms (in inference mode,
  on the last axis) whose input is a binary layer's output as it is; found by tracing the model
  once.

  A batch norm after a pool (VGG-Small pools between conv and BN) is not foldable: max pooling
  does not commute with a negative scale. The folding assumes the binary layer's output has no
  other consumer than that batch norm, true of every registered model (packed_apply's results
  are tested against the float forward on each).
  """
  produced, pairs = {}, {}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return y
    if isinstance(module, (layers.BinaryConv, layers.BinaryDense)):
      produced[id(y)] = (module_name(module), y)  # keep y alive so its id stays unique
    elif (isinstance(module, nn.BatchNorm) and module.use_running_average
          and module.axis == -1 and id(args[0]) in produced
          and produced[id(args[0])][1] is args[0]):
      pairs[module_name(module)] = (produced[id(args[0])][0], float(module.epsilon))
    return y

  def forward(v):
    with nn.intercept_methods(interceptor):
      return model.apply(v, jnp.zeros(input_shape, jnp.float32), train=False)

  jax.eval_shape(forward, variables)
  return pairs


def fold_batch_norm(layer: Mapping[str, jax.Array], bn_params: Mapping[str, Any],
                    bn_stats: Mapping[str, Any], epsilon: float) -> dict:
  """A packed layer whose scale and shift include the batch norm that follows it:
  BN(s * c + t) = (g * s / sqrt(v + eps)) * c + (beta + g * (t - m) / sqrt(v + eps))."""
  inv = jax.lax.rsqrt(jnp.asarray(bn_stats["var"], jnp.float32) + epsilon)
  gamma = jnp.asarray(bn_params.get("scale", 1.0), jnp.float32) * inv
  beta = jnp.asarray(bn_params.get("bias", 0.0), jnp.float32)
  return {"words": layer["words"], "scale": layer["scale"] * gamma,
          "shift": beta + (layer["shift"] - jnp.asarray(bn_stats["mean"], jnp.float32)) * gamma}


def binary_modules(model: nn.Module, input_shape) -> dict[str, dict[str, Any]]:
  """{path: its fields} of the model's BinaryConv/BinaryDense layers, found by tracing init."""
  found = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(
        module, (layers.BinaryConv, layers.BinaryDense)):
      fields = {"kind": type(module).__name__, "precision": module.precision,
                "scale_mode": module.scale_mode, "use_bias": module.use_bias,
                "features": module.features,
                "input_shape": list(args[0].shape[1:])}
      if isinstance(module, layers.BinaryConv):
        fields.update(kernel_size=list(module.kernel_size), strides=module.strides,
                      padding=module.padding)
      found[module_name(module)] = fields
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False)

  jax.eval_shape(init)
  return found


def as_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)
