"""--config names a recipe short (``cifar10``, ``imagenet_bdbnn:diffkurt``) or a file by path;
a path that exists wins, and a name that is neither is one line listing the recipes."""

import pathlib
import subprocess
import sys

import pytest

from bmd_jax.infra import cli, config_files

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "bmd_jax" / "configs"
# A config of one's own: not a recipe, so what it prints says which file was loaded.
OWN_CONFIG = ("import ml_collections\n"
              "def get_config(arg='none'):\n"
              "  return ml_collections.ConfigDict({'own': arg})\n")


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "bmd_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_the_recipes_are_the_files_in_bmd_jax_configs():
  files = {p.stem for p in RECIPES.glob("*.py")}
  assert {"default", "cifar10", "imagenet_bdbnn"} <= set(config_files.recipes())
  assert set(config_files.recipes()) == {n for n in files if not n.startswith("_")}


@pytest.mark.parametrize("name", ["cifar10", "cifar10.py", "configs/cifar10.py",
                                  "bmd_jax/configs/cifar10.py"])
def test_a_recipe_is_found_by_name_from_any_folder(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve(name) == RECIPES / "cifar10.py"


@pytest.mark.parametrize("name", ["cifar10", "configs/cifar10.py"])
def test_a_path_that_exists_wins_over_a_recipe(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
  (tmp_path / name).write_text(OWN_CONFIG)
  assert config_files.resolve(name) == pathlib.Path(name)
  assert config_files.load(name, "mine").own == "mine"


@pytest.mark.parametrize("name", ["no_such_recipe", "__init__", "_group_runs", "cifar10.txt",
                                  "elsewhere/cifar10.py"])
def test_neither_a_file_nor_a_recipe_is_refused(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="neither a file") as error:
    config_files.resolve(name)
  assert ", ".join(config_files.recipes()) in str(error.value)


def test_the_argument_after_the_colon_reaches_get_config(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  found = cli._config_found("--config=imagenet_bdbnn:diffkurt")  # pylint: disable=protected-access
  assert found == f"--config={RECIPES / 'imagenet_bdbnn.py'}:diffkurt"
  plain, diffkurt = (config_files.load("imagenet_bdbnn", *v) for v in ((), ("diffkurt",)))
  assert len(diffkurt.stage_overrides.step1.loss.kurtosis.targets) == 19  # the release's list
  assert plain.to_dict() != diffkurt.to_dict()


@pytest.mark.parametrize("spelled", [("--config=imagenet_bdbnn:diffkurt",),
                                     ("--config", "imagenet_bdbnn:diffkurt")])
def test_main_prints_a_recipe_named_short_with_its_argument(tmp_path, spelled):
  result = _main(*spelled, "--config.batch_size=64", "--print_config", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  expected = config_files.load(RECIPES / "imagenet_bdbnn.py", "diffkurt")
  expected.batch_size = 64
  assert result.stdout.strip() == str(expected).strip()


def test_main_refuses_an_unknown_name_in_one_line_listing_the_recipes(tmp_path):
  result = _main("--config=cifar100", f"--workdir={tmp_path}/w", cwd=tmp_path)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  line, = result.stderr.strip().splitlines()[-1:]
  assert "'cifar100' is neither a file" in line
  assert all(name in line for name in config_files.recipes())
