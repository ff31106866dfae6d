"""Naming a component (model, sign estimator, loss term) so that any process can find it again.

A registry (``models.MODELS``, ``quantizers.ESTIMATORS``, ``objective.TERMS``) holds bmd_jax's
own components by name; ``register`` adds one in-process (a notebook). A registration lives as
long as its process, but a run's stored config is read again later by other processes (export,
analyze, summary, a teacher's checkpoint, a resumed run), so a config names a user's component
by its *import path*, ``package.module:attribute``, which every process imports when it meets
it. ``lookup`` is the one place where a name is turned into a component: a registered name
first, then an import path. docs/EXTENDING.md shows the whole seam.

Only the standard library is imported here: the core stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

SEPARATOR = ":"


class ComponentError(ValueError):
  """A config names a component that is neither registered nor importable, or is not that
  kind of component; the message names the name, the choices and the fix."""


def is_import_path(name: Any) -> bool:
  """Whether `name` is an import path ``package.module:attribute`` (registered names never hold
  the separator, see `register`)."""
  return isinstance(name, str) and SEPARATOR in name


def resolve(path: str, what: str) -> Any:
  """The object an import path ``package.module:attribute`` names (the attribute may be
  dotted: ``module:Class.method``). `what` says what it is for in an error (``model.name``).

  A module that cannot be found is a user's error naming the fix (the folder that holds it on
  PYTHONPATH); an error raised while the module runs is the module's own, and propagates.
  """
  module_name, _, attribute = path.partition(SEPARATOR)
  if not module_name or not attribute:
    raise ComponentError(
        f"{what}={path!r}: an import path is 'package.module:attribute', both parts given")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Only the named module (or a package above it) missing is a wrong path; a module that
    # imports something missing is broken in its own way, and says so itself.
    if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
      raise
    raise ComponentError(
        f"{what}={path!r}: cannot import {module_name!r}. Put the folder that holds it on "
        "PYTHONPATH (or install its package) for every command that reads this run: "
        "training, export, analyze, summary") from None
  found = module
  for part in attribute.split("."):
    try:
      found = getattr(found, part)
    except AttributeError:
      raise ComponentError(
          f"{what}={path!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has "
          f"no attribute {attribute!r}") from None
  return found


def lookup(registry: Mapping[str, Any], name: str, kind: str, what: str | None = None) -> Any:
  """`registry[name]`, or the object at `name` when it is an import path (not registered: a
  path is imported wherever it is met, so stored configs need no registration). `kind` names
  the registry in an error ('model'), `what` the config field that gave the name."""
  if isinstance(name, str) and name in registry:
    return registry[name]
  if is_import_path(name):
    return resolve(name, what or kind)
  where = f" ({what})" if what else ""
  raise ComponentError(
      f"unknown {kind} {name!r}{where}; choose one of {sorted(registry)}, or name your own by "
      "its import path 'package.module:attribute' (docs/EXTENDING.md)")


def register(registry: MutableMapping[str, Any], name: str, entry: Any, what: str,
             replace: bool = False) -> Any:
  """Adds `entry` to `registry` as `name` in this process only (a config that other processes
  read names it by its import path instead). An existing name is refused unless `replace`, so
  a built-in is never shadowed by accident. Returns `entry`."""
  if not isinstance(name, str) or not name or SEPARATOR in name:
    raise ValueError(f"{what} name {name!r}: a non-empty string without {SEPARATOR!r} (that "
                     "separator marks import paths)")
  if name in registry and not replace:
    raise ValueError(f"{what} {name!r} is registered already; pass replace=True to replace it")
  registry[name] = entry
  return entry
