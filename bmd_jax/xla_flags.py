"""XLA:CPU flags for a faster binary train step, set before JAX starts its backend.

jaxlib 0.10 hands every CPU convolution to a YNNPACK fusion. For the weight-gradient
convolutions of a small-channel CNN (ResNet-20's 16- and 32-channel layers, batch 128) that
fusion ran at about 2 GFLOP/s: on 2026-11-26 it made a binary ResNet-20 train step 3x slower
and its eval 1.6x slower than with Eigen's convolutions, on the 2-core workplace CPU. The step
has changed since (conv_grads' chunked weight gradients, channel_sums), and on 2026-11-28 the
two were within the rounds' spread of each other (docs/BENCHMARKS.md, "Eigen or YNNPACK");
the flag stays the measured default. `configure_cpu()` appends

    --xla_cpu_experimental_ynn_fusion_type=individual_dot

to XLA_FLAGS (YNNPACK keeps the matrix products, convolutions go back to Eigen). Importing
bmd_jax changes nothing: the entry points (bmd_jax.main, bench/, hence launch/) call it first
thing, and a notebook calls ``bmd_jax.configure_cpu()`` before its first JAX computation.

BMD_JAX_CPU_FLAGS picks what is set: 'on' (the default: the flag above), 'off' (nothing,
jaxlib's defaults) or 'barriers' (experimental: also

    --xla_disable_hlo_passes=cse_barrier_expander

which keeps the optimization barriers that a `layers.BinaryConv` with
``store_binary_input=True`` (config: ``model.store_binary_input``) puts on its binary input;
see `cpu_barriers_active`). Without them XLA:CPU fuses each weight-gradient
convolution's input transpose with a recomputation of the batch norm, residual, hardtanh and
sign that made that input; with them the ResNet-20 step was 10-16% faster. It is not the
default because XLA:CPU 0.10 then aborts the process (`Check failed: buffer != nullptr` in
HandleOptimizationBarrier) on some programs with barriers of JAX's own inside a nested
computation, e.g. one that uses `losses.wdm_histogram` (tests/test_losses.py).

bmd_jax does not set a flag when

- XLA_FLAGS already names it (your choice wins; each flag is checked on its own), or
- the installed jaxlib is not a version it was measured on (both are experimental or debug
  options: XLA aborts on a flag it does not know, so they never reach an untested jaxlib).

XLA reads XLA_FLAGS once, when JAX creates its first backend: call `configure_cpu()` before
running anything on JAX (importing JAX is fine; computing is not).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from typing import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "individual_dot"
BARRIER_FLAG = "--xla_disable_hlo_passes"
BARRIER_VALUE = "cse_barrier_expander"
CHOICE_VARIABLE = "BMD_JAX_CPU_FLAGS"
CHOICES = ("on", "off", "barriers")
# jaxlib versions (major.minor) on which the flags exist and were measured to help.
MEASURED_JAXLIB = ("0.10",)

log = logging.getLogger("bmd_jax")


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def measured(jaxlib_version: str) -> bool:
  """Whether the flags exist in, and were measured on, this jaxlib version."""
  return jaxlib_version.startswith(tuple(v + "." for v in MEASURED_JAXLIB))


def set_cpu_flags(environ: MutableMapping[str, str] = os.environ,
                  jaxlib_version: str | None = None) -> bool:
  """Appends the flags to environ['XLA_FLAGS'] when they apply; True if it added any."""
  choice = environ.get(CHOICE_VARIABLE, "on").strip().lower()
  if choice not in CHOICES:
    raise ValueError(f"{CHOICE_VARIABLE}={environ[CHOICE_VARIABLE]!r} is not one of {CHOICES}: "
                     "'on' (bmd_jax's default, faster CPU convolutions), 'off' (jaxlib's "
                     "flags) or 'barriers' (also keep optimization barriers; experimental)")
  flags = environ.get("XLA_FLAGS", "")
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if choice == "off" or not measured(version):
    return False
  wanted = [(FLAG, VALUE)] + ([(BARRIER_FLAG, BARRIER_VALUE)] if choice == "barriers" else [])
  added = [f"{name}={value}" for name, value in wanted if name not in flags]
  environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
  return bool(added)


def cpu_barriers_active(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Whether XLA keeps optimization barriers (the pass that strips them is disabled)."""
  return any(BARRIER_VALUE in flag.split("=", 1)[-1].split(",")
             for flag in environ.get("XLA_FLAGS", "").split() if flag.startswith(BARRIER_FLAG))


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # private, hence the guard: only used for a warning
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def configure_cpu() -> bool:
  """Sets bmd_jax's XLA:CPU flags for this process (see the module docstring); True if it added
  any. Call it before the first JAX computation: afterwards it warns that they cannot apply."""
  started = _backends_started()
  added = set_cpu_flags()
  if added and started:
    log.warning("JAX's backend started before bmd_jax.configure_cpu() was called, so %s has "
                "no effect on this process's CPU convolutions. Call it before the first JAX "
                "computation, or set it in XLA_FLAGS yourself.", os.environ["XLA_FLAGS"])
  return added
