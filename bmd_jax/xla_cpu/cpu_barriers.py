"""Optimization barriers kept by XLA:CPU in the train step, where that is safe.

A binary layer with ``store_binary_input`` (``config.model.store_binary_input``, on by default)
puts an optimization barrier on its binarized input in CPU programs. XLA:CPU normally strips
such barriers (its pass ``cse_barrier_expander``), and then fuses each weight-gradient
convolution's input transpose with a recomputation of the batch norm, residual, hardtanh and
sign that made that input. Kept, the weight gradient reads the stored input instead:
ResNet-18's CE and full steps 16% and 27% faster, ResNet-20's gain within noise
(docs/BENCHMARKS.md, "Barriers kept per program").

Keeping them is a per-program compiler option here (`compile_options`), never a process-wide
flag: with ``--xla_disable_hlo_passes=cse_barrier_expander`` in XLA_FLAGS, XLA:CPU 0.10 aborts
the whole process (``Check failed: buffer != nullptr``) on some programs whose barriers sit
inside a loop, e.g. the gradient of two ``lax.map`` loops over ``jax.checkpoint``-ed bodies
(tests/test_cpu_barriers.py). So a program gets the option only when all of these hold:

- it runs on CPU, with a jaxlib version the option was measured on (`xla_flags.measured`);
- ``BMD_JAX_CPU_FLAGS`` is not 'off', and XLA_FLAGS does not already name
  ``--xla_disable_hlo_passes`` (the user's list would be replaced, not extended);
- it has barriers, and none of them is nested: inside a loop, conditional or other region, or
  in a function called from one (`barrier_counts`). Top-level barriers were never seen to
  abort; nested ones did.

Anything else compiles as usual, and its barriers are stripped as before: same values, only the
schedule differs.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, MutableMapping

import jax
from jax._src.lib.mlir import ir  # jaxlib's MLIR bindings, as Lowered.compiler_ir returns

from bmd_jax.xla_cpu import xla_flags

OPTION = "xla_disable_hlo_passes"  # as a per-program option: XLA_FLAGS spells it --OPTION
PASS = "cse_barrier_expander"
BARRIER_OP = "stablehlo.optimization_barrier"

log = logging.getLogger("bmd_jax")


def _operations(op):
  """The ops directly inside op's regions."""
  for region in op.regions:
    for block in region.blocks:
      for child in block.operations:
        yield child.operation


def _always_taken(op) -> bool:
  """A case with one branch: what jax.lax.platform_dependent lowers to for one platform (the
  layers' barriers come that way); XLA inlines it, so its body is not nested."""
  return op.name == "stablehlo.case" and len(op.regions) == 1


def _ops_below(op, nested: bool):
  """(op, nested) for every op below `op`; nested: inside a region that is not always taken."""
  for child in _operations(op):
    yield child, nested
    yield from _ops_below(child, nested or not _always_taken(child))


def barrier_counts(module) -> tuple[int, int]:
  """(top-level, nested) optimization barriers of a StableHLO module (Lowered.compiler_ir()).

  Nested: inside a region of an op (a while's body, a conditional's branch, a reduction's body;
  not a one-branch case, `_always_taken`), or anywhere in a function that such a region calls,
  directly or through other functions.
  """
  own = {}  # function name -> its top-level and nested barriers, its calls (callee, nested)
  for function in _operations(module.operation):
    if function.name != "func.func":
      continue
    counts = {"top": 0, "nested": 0, "calls": []}
    for op, nested in _ops_below(function, False):  # the function's body is top level
      if op.name == BARRIER_OP:
        counts["nested" if nested else "top"] += 1
      elif op.name == "func.call":
        counts["calls"].append((ir.FlatSymbolRefAttr(op.attributes["callee"]).value, nested))
    own[ir.StringAttr(function.attributes["sym_name"]).value] = counts

  # Functions reached from a nested call site, and everything they call, run nested.
  nested_functions = set()
  frontier = [callee for counts in own.values() for callee, nested in counts["calls"] if nested]
  while frontier:
    name = frontier.pop()
    if name in nested_functions or name not in own:
      continue
    nested_functions.add(name)
    frontier.extend(callee for callee, _ in own[name]["calls"])

  top = sum(c["top"] for name, c in own.items() if name not in nested_functions)
  nested = sum(c["nested"] + (c["top"] if name in nested_functions else 0)
               for name, c in own.items())
  return top, nested


def _user_disables_passes(environ: MutableMapping[str, str]) -> bool:
  return any(flag.startswith("--" + OPTION)
             for flag in environ.get("XLA_FLAGS", "").split())


def compile_options(lowered: jax.stages.Lowered, platform: str | None = None,
                    environ: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
  """The compiler options that keep `lowered`'s barriers where that is safe (module docstring),
  else {}. platform: where it runs (default: JAX's default backend)."""
  platform = platform or jax.default_backend()
  choice = environ.get(xla_flags.CHOICE_VARIABLE, "on").strip().lower()
  if (platform != "cpu" or choice == "off" or _user_disables_passes(environ)
      or not xla_flags.measured(xla_flags.installed_jaxlib())):
    return {}
  top, nested = barrier_counts(lowered.compiler_ir("stablehlo"))
  if nested:
    log.info("XLA:CPU strips this program's %d optimization barriers: %d of them sit inside a "
             "loop or conditional, where keeping them can abort XLA:CPU 0.10", top + nested,
             nested)
    return {}
  if not top:
    return {}
  log.info("XLA:CPU keeps this program's %d optimization barriers (xla_cpu/cpu_barriers.py)", top)
  return {OPTION: PASS}


def jit(fun: Callable, platform: str | None = None, **jit_kwargs) -> "Jitted":
  """jax.jit(fun, **jit_kwargs), whose program keeps its barriers where compile_options says so
  (platform: where it runs; default JAX's default backend)."""
  return Jitted(fun, platform, **jit_kwargs)


class Jitted:
  """A jitted function whose program keeps its barriers where compile_options says so.

  The choice is made once, from the program the first call lowers (one extra lowering, no
  extra compilation); later calls use that choice, also for new shapes (the program's
  structure, hence its barriers, does not depend on them).
  """

  def __init__(self, fun: Callable, platform: str | None = None, **jit_kwargs):
    self._fun, self._platform, self._jit_kwargs = fun, platform, jit_kwargs
    self._jitted = None

  def __call__(self, *args):
    if self._jitted is None:
      lowered = jax.jit(self._fun, **self._jit_kwargs).lower(*args)
      options = compile_options(lowered, self._platform)
      self._jitted = jax.jit(self._fun, **self._jit_kwargs, compiler_options=options or None)
    return self._jitted(*args)

  def _cache_size(self) -> int:
    """How many programs it compiled (jax.jit's own count, which train.py reports)."""
    jitted = self._jitted
    return 0 if jitted is None else jitted._cache_size()  # pylint: disable=protected-access
