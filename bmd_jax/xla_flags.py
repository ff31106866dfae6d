"""XLA:CPU's convolutions: keep them on Eigen, not YNNPACK, before JAX starts its backend.

jaxlib 0.10 hands every CPU convolution to a YNNPACK fusion. For the weight-gradient
convolutions of a small-channel CNN (ResNet-20's 16- and 32-channel layers, batch 128) that
fusion runs at about 2 GFLOP/s: on the 2-core workplace CPU it made a binary ResNet-20 train
step 3x slower and its eval 1.6x slower than with Eigen's convolutions (docs/BENCHMARKS.md,
"Where the time went"). Importing bmd_jax therefore appends

    --xla_cpu_experimental_ynn_fusion_type=individual_dot

to XLA_FLAGS (YNNPACK keeps the matrix products, convolutions go back to Eigen), unless

- XLA_FLAGS already names that flag (your choice wins),
- BMD_JAX_CPU_CONVOLUTIONS=ynn is set (keep jaxlib's default), or
- the installed jaxlib is not a version this was measured on (the flag is experimental: XLA
  aborts on a flag it does not know, so it is never passed to an untested jaxlib).

XLA reads XLA_FLAGS once, when JAX creates its first backend: import bmd_jax before running
anything on JAX (the flag only touches the CPU backend; GPUs and TPUs are unaffected).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from typing import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "individual_dot"
CHOICE_VARIABLE = "BMD_JAX_CPU_CONVOLUTIONS"
CHOICES = ("eigen", "ynn")
# jaxlib versions (major.minor) on which the flag exists and was measured to help.
MEASURED_JAXLIB = ("0.10",)

log = logging.getLogger("bmd_jax")


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def measured(jaxlib_version: str) -> bool:
  """Whether the flag exists in, and was measured on, this jaxlib version."""
  return jaxlib_version.startswith(tuple(v + "." for v in MEASURED_JAXLIB))


def eigen_cpu_convolutions(environ: MutableMapping[str, str] = os.environ,
                           jaxlib_version: str | None = None) -> bool:
  """Appends the flag to environ['XLA_FLAGS'] when it applies; True if it did."""
  choice = environ.get(CHOICE_VARIABLE, "eigen").strip().lower()
  if choice not in CHOICES:
    raise ValueError(f"{CHOICE_VARIABLE}={environ[CHOICE_VARIABLE]!r} is not one of {CHOICES}: "
                     "'eigen' (bmd_jax's default, faster CPU training) or 'ynn' (jaxlib's)")
  flags = environ.get("XLA_FLAGS", "")
  if choice == "ynn" or FLAG in flags:
    return False
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if not measured(version):
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
  return True


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # private, hence the guard: only used for a warning
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def apply_at_import() -> None:
  """What `import bmd_jax` does: set the flag, or say why it cannot take effect."""
  started = _backends_started()
  if eigen_cpu_convolutions() and started:
    log.warning("JAX's backend started before bmd_jax was imported, so %s=%s has no effect; "
                "CPU training can be up to 3x slower. Import bmd_jax first, or set it in "
                "XLA_FLAGS yourself.", FLAG, VALUE)
