"""The import arrows between bmd_jax's sub-packages point one way (docs/ARCHITECTURE.md,
issue 28 item 4): the core imports nothing from training, infra or tools; the tools nothing from
training; infra and xla_cpu nothing else of bmd_jax; the core and the models reach the XLA:CPU
speed-ups through the xla_cpu package's names only. Read from the source (every import
statement, including those inside functions), so an arrow added anywhere fails here."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bmd_jax"

# What each part may import from bmd_jax (itself always).
ALLOWED = {
    "core": {"xla_cpu"},
    "xla_cpu": set(),
    "infra": set(),
    "models": {"core", "xla_cpu"},
    "data": {"infra"},
    "configs": {"infra"},
    "training": {"core", "models", "data", "infra", "xla_cpu"},
    "tools": {"core", "models", "data", "infra", "xla_cpu"},
    "pretrained": {"core", "models", "data", "infra", "tools", "xla_cpu"},
}
# Parts whose access to xla_cpu goes through the package's own names (its seam).
THROUGH_SEAM = {"core", "models"}


def _part(module: str) -> str:
  """'bmd_jax.core.layers' -> 'core'; the package's own top-level modules -> ''."""
  parts = module.split(".")
  if len(parts) < 2:
    return ""
  return parts[1] if (PACKAGE / parts[1]).is_dir() else ""


def _imports(path: pathlib.Path):
  """(line, imported module) for each bmd_jax import in the file."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("bmd_jax"):
          yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
        node.module.startswith("bmd_jax"):
      for alias in node.names:  # a name that is a module counts as that module
        inner = pathlib.Path(*node.module.split(".")[1:], alias.name)
        is_module = (PACKAGE / inner).is_dir() or (PACKAGE / inner).with_suffix(".py").is_file()
        yield node.lineno, f"{node.module}.{alias.name}" if is_module else node.module


def _violations():
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    part = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 \
        else ""
    if part not in ALLOWED:
      continue  # main.py and __init__.py: the entry points may reach everything
    for line, module in _imports(path):
      target = _part(module)
      where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
      if target and target != part and target not in ALLOWED[part]:
        found.append(f"{where} ({part} may import {sorted(ALLOWED[part]) or 'nothing'})")
      elif target == "xla_cpu" and part in THROUGH_SEAM and module != "bmd_jax.xla_cpu":
        found.append(f"{where} (the {part} reaches xla_cpu through `from bmd_jax import "
                     "xla_cpu` only)")
  return found


def test_imports_point_one_way():
  assert _violations() == []


def test_every_sub_package_is_ruled_and_says_what_it_may_import():
  packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
  assert packages == set(ALLOWED)
  for name in ("core", "training", "infra", "tools", "xla_cpu"):
    assert "May import" in ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py")
                                                       .read_text()))


@pytest.mark.parametrize("source,expected", [
    ("from bmd_jax.training import train\n", "core may import"),
    ("from bmd_jax.xla_cpu import conv_grads\n", "through `from bmd_jax import xla_cpu`"),
    ("def f():\n  import bmd_jax.tools.export\n", "core may import"),
])
def test_a_wrong_arrow_is_found(tmp_path, monkeypatch, source, expected):
  fake = tmp_path / "bmd_jax"
  for part in ALLOWED:
    (fake / part).mkdir(parents=True)
    (fake / part / "__init__.py").write_text("")
  for module in ("training/train.py", "xla_cpu/conv_grads.py", "tools/export.py"):
    (fake / module).write_text("")
  (fake / "core" / "bad.py").write_text(source)
  monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
  (found,) = _violations()
  assert "bmd_jax/core/bad.py" in found and expected in found
