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

BMD_JAX_CPU_FLAGS picks what is set: 'on' (the default: the flag above) or 'off' (nothing,
jaxlib's defaults; also no per-program options, see cpu_barriers.py). 'barriers' is accepted as
'on', with a warning: it used to add ``--xla_disable_hlo_passes=cse_barrier_expander`` to
XLA_FLAGS for the whole process, which could abort XLA:CPU 0.10 on some programs; the train
step now keeps its barriers as a per-program option where that is safe (cpu_barriers.py).

bmd_jax does not set a flag when

- XLA_FLAGS already names it (your choice wins), or
- the installed jaxlib is not a version it was measured on (it is an experimental option: XLA
  aborts on a flag it does not know, so it never reaches an untested jaxlib).

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
CHOICE_VARIABLE = "BMD_JAX_CPU_FLAGS"
CHOICES = ("on", "off")
RETIRED_CHOICE = "barriers"  # now the per-program option of cpu_barriers.py
# jaxlib versions (major.minor) on which the flag (and cpu_barriers' option) exist and were
# measured to help.
MEASURED_JAXLIB = ("0.10",)

log = logging.getLogger("bmd_jax")


def installed_jaxlib() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def measured(jaxlib_version: str) -> bool:
  """Whether the flag and cpu_barriers' option exist in, and were measured on, this jaxlib."""
  return jaxlib_version.startswith(tuple(v + "." for v in MEASURED_JAXLIB))


def set_cpu_flags(environ: MutableMapping[str, str] = os.environ,
                  jaxlib_version: str | None = None) -> bool:
  """Appends the flag to environ['XLA_FLAGS'] when it applies; True if it did."""
  choice = environ.get(CHOICE_VARIABLE, "on").strip().lower()
  if choice == RETIRED_CHOICE:
    log.warning("%s=barriers is retired and now means 'on': the train step keeps its "
                "optimization barriers per program, where that is safe (xla_cpu/cpu_barriers.py)",
                CHOICE_VARIABLE)
    choice = "on"
  if choice not in CHOICES:
    raise ValueError(f"{CHOICE_VARIABLE}={environ[CHOICE_VARIABLE]!r} is not one of {CHOICES}: "
                     "'on' (bmd_jax's default, faster CPU convolutions) or 'off' (jaxlib's "
                     "flags)")
  flags = environ.get("XLA_FLAGS", "")
  version = installed_jaxlib() if jaxlib_version is None else jaxlib_version
  if choice == "off" or not measured(version) or FLAG in flags:
    return False
  environ["XLA_FLAGS"] = " ".join([flags, f"{FLAG}={VALUE}"]).strip()
  return True


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
