"""What `pip install -e .` alone gives: every third-party module that bmd_jax imports is a
declared dependency (not one that only the test extra brings), and configs are found by
path or short name from any working directory (tests/test_config_names.py holds the rest)."""

import ast
import configparser
import importlib.metadata
import pathlib
import re
import subprocess
import sys

import pytest

from bmd_jax.infra import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


# Modules that one tool imports only when used, saying which extra to install where they are
# missing (bmd_jax.tools.convert reads PyTorch files): module -> that extra.
# Imported where present only: torch by the converter, scipy by tools/welch.py (without it the
# t quantile is found by bisection).
OPTIONAL = {"torch": "convert", "scipy": "test"}


def _declared_requirements(extra: str | None = None) -> set[str]:
  """install_requires, or the given extra of setup.cfg, as normalized distribution names."""
  setup = configparser.ConfigParser()
  setup.read(REPO / "setup.cfg")
  text = (setup["options.extras_require"][extra] if extra
          else setup["options"]["install_requires"])
  lines = [line.strip() for line in text.strip().splitlines()]
  return {_normalized(re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0])
          for line in lines if line and not line.startswith("#")}


def _imported_top_level_modules() -> set[str]:
  modules = set()
  for path in (REPO / "bmd_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        modules |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        modules.add(node.module.split(".")[0])
  return {m for m in modules if m not in sys.stdlib_module_names and m != "bmd_jax"}


def test_every_imported_module_is_a_declared_dependency():
  distributions = importlib.metadata.packages_distributions()
  declared = _declared_requirements()
  undeclared = {}
  for module in sorted(_imported_top_level_modules()):
    names = {_normalized(d) for d in distributions.get(module, [module])}
    if module in OPTIONAL and names & _declared_requirements(OPTIONAL[module]):
      continue
    if not names & declared:
      undeclared[module] = sorted(names)
  assert not undeclared, f"imported by bmd_jax but not in install_requires: {undeclared}"


def test_config_found_from_any_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_files.load("configs/cifar10.py")
  assert config.model.name == "resnet20"
  assert config_files.resolve("configs/default.py") == REPO / "bmd_jax" / "configs" / "default.py"


def test_missing_config_says_where_configs_are(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    config_files.resolve("configs/no_such_recipe.py")
  message = str(error.value)
  assert "no_such_recipe.py" in message and str(REPO / "bmd_jax" / "configs") in message
  assert "cifar10, " in message  # the recipes are listed by name


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "bmd_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_main_help_names_the_configs_and_how_to_list_fields(tmp_path):
  result = _main("--help", cwd=tmp_path)
  text = " ".join((result.stdout + result.stderr).split())
  assert "cifar10," in text and "imagenet_bdbnn," in text and "--print_config" in text


def test_main_finds_configs_from_another_folder_and_prints_them(tmp_path):
  result = _main("--config=configs/cifar10.py", "--config.batch_size=64", "--print_config",
                 cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "batch_size: 64" in result.stdout and "name: resnet20" in result.stdout
  missing = _main("--config=configs/no_such_recipe.py", f"--workdir={tmp_path}/w", cwd=tmp_path)
  assert missing.returncode == 2 and "cifar10, " in missing.stderr
  assert "Traceback" not in missing.stderr


def test_tools_import_no_training_code():
  code = ("import sys\n"
          "import bmd_jax.tools.export, bmd_jax.tools.analyze, bmd_jax.tools.summary, bmd_jax.tools.convert\n"
          "import bmd_jax.tools.portable_export\n"
          "print(sorted(m for m in sys.modules if m in ('bmd_jax.training.train',"
          " 'bmd_jax.training.input_pipeline')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
  assert result.stdout.strip().splitlines()[-1] == "[]"
