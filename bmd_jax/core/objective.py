"""The training objective, composed from the loss config: a weighted sum of named terms.

    L = sum over terms of  loss.<term>.weight * term   (docs/METHOD.md section 5)

Each term is one entry of `TERMS`: a pure function of the step's inputs (`Inputs`) and its own
config block ``loss.<term>`` (its weight and options), returning its value and any extra
metrics (the kurtosis of each layer), or None where it does not apply (no teacher).
`objective` returns the total and every term by name, which the train step logs as
``train/<term>``; it adds nothing of its own. A new term is one function here (on a pure loss
in losses.py) plus its block ``loss.<term> = {"weight": ..., <options>}`` in the config; a
term outside the package is named in its block by its import path, ``loss.<name>.term =
"package.module:attribute"`` (`terms`, docs/EXTENDING.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bmd_jax.core import components, losses

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the terms may read. Teacher fields are None without a teacher."""

  params: Any
  logits: Array
  labels: Array
  epoch: Any = 0.0
  teacher_params: Any = None  # the WDM teacher's params (the student's architecture)
  teacher_logits: Array | None = None  # the distillation teacher's logits
  kurtosis_layers: Sequence[str] | None = None  # models.kurtosis_layers; None: binarized ones
  wdm_layers: Sequence[str] | None = None  # models.wdm_layers; None: binarized ones


TermResult = tuple[Array, dict[str, Array]] | None


def kurtosis_targets(kurtosis_cfg: Mapping, layers: Sequence[str] | None):
  """loss.kurtosis.targets (one per layer, in the order of `layers`) if given, else the
  scalar loss.kurtosis.target for every layer; a wrong count names the expected one."""
  targets = tuple(kurtosis_cfg.get("targets") or ())
  if not targets:
    return kurtosis_cfg.get("target", 1.8)
  if layers is not None and len(targets) != len(layers):
    raise ValueError(
        f"loss.kurtosis.targets has {len(targets)} entries but the model regularizes "
        f"{len(layers)} layers: give {len(layers)} targets, in this order: {list(layers)} "
        "(loss.kurtosis.include_shortcuts changes the list), or () to use "
        "loss.kurtosis.target for every layer")
  return targets


def _cross_entropy(cfg, inputs: Inputs) -> TermResult:
  return losses.cross_entropy(inputs.logits, inputs.labels), {}


def _kurtosis(cfg, inputs: Inputs) -> TermResult:
  value, per_layer = losses.kurtosis_loss(
      inputs.params, kurtosis_targets(cfg, inputs.kurtosis_layers), cfg.get("mode", "avg"),
      cfg.get("include_shortcuts", True), layers=inputs.kurtosis_layers,
      view=cfg.get("view", "latent"))
  return value, {f"kurtosis/{k}": v for k, v in per_layer.items()}


def _kurtosis_active(cfg, inputs: Inputs) -> Array:
  # The term joins the total from loss.kurtosis.start_epoch on (the release's --kurtepoch).
  return (jnp.asarray(inputs.epoch) >= cfg.get("start_epoch", 0)).astype(jnp.float32)


def wdm_options(wdm_cfg) -> dict:
  """The options of the configured WDM form, from the loss.wdm block."""
  form = wdm_cfg.get("form", "softmax_kl")
  if form == "softmax_kl":
    # A stored config without the field was written before it existed: its run used the
    # legacy reduction, and keeps it.
    return {"temperature": wdm_cfg.get("temperature", 4.0),
            "reduction": wdm_cfg.get("reduction", losses.WDM_LEGACY_REDUCTION)}
  if form == "histogram":
    return {"bins": wdm_cfg.get("bins", 64), "bandwidth": wdm_cfg.get("bandwidth", 0.0) or None}
  return {}


def _wdm(cfg, inputs: Inputs) -> TermResult:
  if inputs.teacher_params is None:
    return None
  value = losses.wdm_loss(
      jax.lax.stop_gradient(inputs.teacher_params), inputs.params, cfg.get("form", "softmax_kl"),
      include_shortcuts=cfg.get("include_shortcuts", False), layers=inputs.wdm_layers,
      **wdm_options(cfg))
  return value, {}


def _distillation(cfg, inputs: Inputs) -> TermResult:
  if inputs.teacher_logits is None:
    return None
  return losses.distillation_loss(inputs.logits, inputs.teacher_logits), {}


def _always(cfg, inputs: Inputs) -> float:
  return 1.0


@dataclasses.dataclass(frozen=True)
class Term:
  value: Callable[[Mapping, Inputs], TermResult]
  active: Callable[[Mapping, Inputs], Any] = _always  # multiplies the weight


# Term name -> its entry; its config block is loss.<name>, whose weight is 0 when absent.
TERMS: dict[str, Term] = {
    "ce": Term(_cross_entropy),
    "kurtosis": Term(_kurtosis, _kurtosis_active),
    "wdm": Term(_wdm),
    "kd": Term(_distillation),
}
# The block field that names a user's term by its import path (components.py): a config key
# cannot hold the path, so loss.<name>.term = "package.module:attribute" says where it is.
TERM_FIELD = "term"


def register(name: str, term: Term | Callable[[Mapping, Inputs], TermResult],
             replace: bool = False) -> Term:
  """Registers a term in this process (a notebook's way; a config read by other processes
  names it in its block, loss.<name>.term = "package.module:attribute"). A bare function is
  a term that is always active. Returns the entry."""
  return components.register(TERMS, name, as_term(term, name), "loss term", replace)


def as_term(found, name: str) -> Term:
  """A `Term` as it is, a bare value function (cfg, inputs) -> TermResult as an always active
  one."""
  if isinstance(found, Term):
    return found
  if callable(found):
    return Term(found)
  raise components.ComponentError(
      f"loss.{name}.{TERM_FIELD} names {found!r}, neither an objective.Term nor a function "
      "(cfg, inputs) -> (value, metrics) or None")


def terms(loss_cfg: Mapping) -> dict[str, Term]:
  """The terms of a loss config: every registered one, then each block that names its own
  term by import path (loss.<name>.term), in the config's order."""
  found = dict(TERMS)
  for name, block in loss_cfg.items():
    path = block.get(TERM_FIELD) if hasattr(block, "get") else None
    if path is None:
      continue
    if name in TERMS:
      raise ValueError(f"loss.{name}.{TERM_FIELD}={path!r}: {name!r} is bmd_jax's own term; "
                       f"give yours a block of another name (loss.my_{name}.{TERM_FIELD})")
    if not components.is_import_path(path):
      raise components.ComponentError(
          f"loss.{name}.{TERM_FIELD}={path!r}: give the import path of the term's function, "
          "'package.module:attribute'")
    found[name] = as_term(components.resolve(path, f"loss.{name}.{TERM_FIELD}"), name)
  return found


def objective(loss_cfg: Mapping, inputs: Inputs) -> tuple[Array, dict[str, Array],
                                                           dict[str, Array]]:
  """(total, {term: value}, extra metrics). A term that does not apply is 0 in the parts and
  absent from the total; every applicable term is computed (and logged) even at weight 0."""
  total = jnp.zeros((), jnp.float32)
  parts, extras = {}, {}
  for name, (value, more, weighted) in _evaluated(loss_cfg, inputs).items():
    parts[name] = value
    extras.update(more)
    if weighted is not None:
      total = total + weighted
  return total, parts, extras


def weighted_terms(loss_cfg: Mapping, inputs: Inputs) -> dict[str, Array]:
  """Each term as it enters the total: weight * active * value (0 where it does not apply or
  weighs 0). Their gradients, one by one, show what each term does (train.py's grads/)."""
  return {name: jnp.zeros((), jnp.float32) if weighted is None else weighted
          for name, (_, _, weighted) in _evaluated(loss_cfg, inputs).items()}


def _evaluated(loss_cfg: Mapping, inputs: Inputs) -> dict[str, tuple]:
  """{term: (value, extra metrics, weighted value or None where it is out of the total)}."""
  check_blocks(loss_cfg)
  evaluated = {}
  for name, term in terms(loss_cfg).items():
    cfg = loss_cfg.get(name) or {}
    result = term.value(cfg, inputs)
    if result is None:
      evaluated[name] = (jnp.zeros((), jnp.float32), {}, None)
      continue
    value, more = result
    weight = cfg.get("weight", 0.0)
    evaluated[name] = (value, more, weight * term.active(cfg, inputs) * value
                       if _in_total(weight) else None)
  return evaluated


def _in_total(weight) -> bool:
  """A weight of 0 drops its term at trace time; an array weight (traced: the runs of a
  group, run_group_step.py) keeps it, since it is 0 in some runs only."""
  return isinstance(weight, jax.Array) or bool(weight)


def check_blocks(loss_cfg: Mapping) -> None:
  """Every entry of the loss config is the block of a term in TERMS or of a term named by its
  import path (loss.<name>.term): a misspelt or old-style field (loss.kurtosis_weight, before
  2026-11-28) is an error, not a term silently left out; so is a path that does not import."""
  known = terms(loss_cfg)
  for name, block in loss_cfg.items():
    if name not in known or not hasattr(block, "get"):  # a dict or a ConfigDict
      raise ValueError(
          f"loss.{name}: the loss config holds one block per term, loss.<term>.<option> "
          f"with a term of {sorted(TERMS)} (e.g. loss.kurtosis.weight, loss.wdm.form), or a "
          f"term of your own named by its import path: loss.{name}.{TERM_FIELD} = "
          "'package.module:attribute'")
