"""Finding and loading config files, so variants build on a single source of truth.

Config files are loaded by path (``--config=configs/x.py``), not as a package, so a variant
finds its base next to itself: ``config = load_sibling(__file__, "cifar10.py")``. A path
that does not exist from the working directory is looked up in the package's recipes
(bmd_jax/configs/), so ``configs/cifar10.py`` works from anywhere.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import ml_collections

# The recipes shipped in the package (bmd_jax/configs/).
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def available() -> list[str]:
  """The recipes in bmd_jax/configs/, by file name."""
  if not CONFIG_DIR.is_dir():
    return []
  return sorted(p.name for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve(path: str | pathlib.Path) -> pathlib.Path:
  """`path` itself when it exists, else the same file among the package's recipes."""
  given = pathlib.Path(path)
  if given.is_file():
    return given
  in_checkout = CONFIG_DIR / given.name
  if given.parent.name in ("configs", "") and in_checkout.is_file():
    return in_checkout
  raise FileNotFoundError(
      f"config file {str(path)!r} does not exist (working directory {pathlib.Path.cwd()}); "
      f"bmd_jax's configs are in {CONFIG_DIR}: {', '.join(available()) or 'none found'}")


def load(path: str | pathlib.Path, *variant: str) -> ml_collections.ConfigDict:
  """get_config(*variant) of the config file at `path` (see `resolve`); a variant is what
  ``--config=PATH:VARIANT`` passes."""
  return _get_config(resolve(path), *variant)


def load_sibling(this_file: str, name: str) -> ml_collections.ConfigDict:
  """get_config() of the config file `name` in the folder of `this_file`."""
  path = pathlib.Path(this_file).with_name(name)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  return _get_config(path)


def _get_config(path: pathlib.Path, *variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"bmd_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*variant)


def without_bd_bnn_terms(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ablation baseline of a recipe: no kurtosis term and no WDM in any stage.

  Output distillation, where the recipe has it, stays, so a difference in accuracy is the
  two BD-BNN terms' doing.
  """
  config.loss.kurtosis.weight = 0.0
  config.loss.wdm.weight = 0.0
  for stage in config.stage_overrides.values():
    if "loss" in stage:
      stage.loss.wdm = {**stage.loss.get("wdm", {}), "weight": 0.0}
      stage.loss.kurtosis = {**stage.loss.get("kurtosis", {}), "weight": 0.0}
  return config


def use_two_steps(config: ml_collections.ConfigDict, step2_loss: dict,
                  **step2_fields) -> ml_collections.ConfigDict:
  """BD-BNN's two steps (docs/METHOD.md section 6) on the config's schedule.

  Step 1: binary activations, real weights. Step 2: binary, initialized from step 1, which is
  also its frozen teacher; `step2_loss` and `step2_fields` are step 2's own overrides.
  """
  config.stages = "step1,step2"
  config.teacher_precision = "binary_activations"  # the teacher is step 1's network
  config.stage_overrides = ml_collections.ConfigDict({
      "step1": {"model": {"precision": "binary_activations"}},
      "step2": {"model": {"precision": "binary"}, "init_from": "step1", "teacher": "step1",
                "loss": step2_loss, **step2_fields},
  })
  return config


def upgraded(stored: dict) -> dict:
  """A stored config (a checkpoint's or an export's, as JSON) in today's loss layout, so that
  old checkpoints stay readable and comparable: configs written before 2026-11-28 held flat
  fields ``loss.<term>_<option>`` (``loss.kurtosis_weight``), today's hold one block per term
  (``loss.kurtosis.weight``). Applies to the top-level loss and to each stage's overrides."""
  stored = copy.deepcopy(stored)
  sections = [stored] + [stored["stage_overrides"][name] for name in stored.get(
      "stage_overrides") or {}]
  for section in sections:
    if isinstance(section.get("loss"), dict):
      section["loss"] = _nested(section["loss"])
  _with_added_options(stored.get("loss"))
  return stored


# Loss options added since configs were first stored, with the value every run before them
# used (2026-12-06: loss.wdm.reduction, loss.kurtosis.view). A stored config without one is
# read as that value, so the resume check compares it instead of skipping a field only one
# side has: an old run is never silently continued under a new default.
ADDED_LOSS_OPTIONS = {"wdm": {"reduction": "channel_mean"}, "kurtosis": {"view": "latent"}}


def _with_added_options(loss) -> None:
  # The top-level loss only: it holds every option; stage overrides change some of them.
  if not isinstance(loss, dict):
    return
  for term, options in ADDED_LOSS_OPTIONS.items():
    if isinstance(loss.get(term), dict):
      for option, value in options.items():
        loss[term].setdefault(option, value)


def _nested(loss: dict) -> dict:
  # Every old field was <term>_<option>, and no term name has an underscore.
  blocks = {}
  for key, value in loss.items():
    if isinstance(value, dict):
      blocks.setdefault(key, {}).update(value)
    else:
      term, _, option = key.partition("_")
      blocks.setdefault(term, {})[option] = value
  return blocks


def renamed_loss_field(field: str) -> str | None:
  """Today's name of an old flat loss field given on a command line (``loss.kd_weight`` ->
  ``loss.kd.weight``, also under ``stage_overrides.<stage>.``), or None."""
  head, dot, name = field.rpartition(".")
  if not (head == "loss" or head.endswith(".loss")) or "_" not in name:
    return None
  term, _, option = name.partition("_")
  return f"{head}{dot}{term}.{option}"
