"""Finding and loading config files, so variants build on a single source of truth.

``--config`` names a config file by path (``--config=my_config.py``) or one of the recipes
shipped in the package, bmd_jax/configs/, by its short name (``--config=cifar10``; also
``cifar10.py`` or ``configs/cifar10.py``), from any working directory and from a wheel install.
A path that exists wins over a recipe of the same name. ``NAME:ARG`` passes ARG to the file's
``get_config`` (``--config=imagenet_bdbnn:diffkurt``), as ml_collections does for paths.

Config files are loaded by path, not imported as modules, so a variant finds its base next to
itself: ``config = load_sibling(__file__, "cifar10.py")``.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import pathlib

import ml_collections

# The recipes: config files inside the package, so that a wheel install has them too.
RECIPE_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def recipes() -> list[str]:
  """The recipes' short names, as ``--config=NAME`` takes them."""
  return sorted(p.stem for p in RECIPE_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve(path: str | pathlib.Path) -> pathlib.Path:
  """The config file that `path` names: the path itself when it is a file, else the recipe of
  that name (``cifar10``, ``cifar10.py``, ``configs/cifar10.py`` or
  ``bmd_jax/configs/cifar10.py``)."""
  given = pathlib.Path(path)
  if given.is_file():
    return given
  # Old commands name the recipes by their path in a checkout: configs/ or bmd_jax/configs/.
  if (given.suffix in ("", ".py") and given.parent.name in ("configs", "")
      and given.stem in recipes()):
    return RECIPE_DIR / f"{given.stem}.py"
  raise FileNotFoundError(
      f"config {str(path)!r} is neither a file (working directory {pathlib.Path.cwd()}) nor a "
      f"recipe: give a path, or one of {', '.join(recipes()) or 'none found'} "
      f"(--config=NAME or NAME:ARG; the recipes are in {RECIPE_DIR})")


def load(path: str | pathlib.Path, *variant: str) -> ml_collections.ConfigDict:
  """get_config(*variant) of the config file or recipe that `path` names (see `resolve`); a
  variant is what ``--config=NAME:VARIANT`` passes."""
  return _get_config(resolve(path), *variant)


def load_sibling(this_file: str, name: str) -> ml_collections.ConfigDict:
  """get_config() of the config file `name` in the folder of `this_file`."""
  path = pathlib.Path(this_file).with_name(name)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  return _get_config(path)


def _get_config(path: pathlib.Path, *variant: str) -> ml_collections.ConfigDict:
  # Python source whatever the file's suffix, as ml_collections' --config loads it.
  name = f"bmd_jax_config_{path.stem}"
  spec = importlib.util.spec_from_file_location(
      name, path, loader=importlib.machinery.SourceFileLoader(name, str(path)))
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
