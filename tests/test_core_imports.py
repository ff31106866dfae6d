"""The core a researcher imports (quantizers, layers, losses, objective, bimodality) needs
jax, flax, optax and numpy alone (issue 28, item 3): in a fresh interpreter, an import that
bmd_jax's own code makes of anything else fails, and the core still imports and computes."""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r'''
import importlib.abc, sys
# Any import made by bmd_jax's own code must be one of these or the standard library; what
# jax, flax and optax import for themselves is theirs to need.
ALLOWED = {"jax", "jaxlib", "flax", "optax", "numpy", "bmd_jax", "__future__"}

def importer():
  frame = sys._getframe(2)
  while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
    frame = frame.f_back
  return "" if frame is None else frame.f_globals.get("__name__", "")

class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    top = name.split(".")[0]
    if (importer().startswith("bmd_jax") and top not in ALLOWED
        and top not in sys.stdlib_module_names):
      raise ImportError(f"bmd_jax's core imports {name}")
    return None

sys.meta_path.insert(0, Block())
import jax.numpy as jnp
from bmd_jax.core import bimodality, layers, losses, objective, quantizers
w = jnp.linspace(-1.0, 1.0, 64).reshape(4, 4, 2, 2)
print(float(losses.kurtosis(w)), quantizers.ste_sign(jnp.zeros(3)).tolist())
blocked = sorted(m for m in ("orbax", "grain", "tensorflow_datasets", "ml_collections",
                             "sklearn", "PIL", "torch") if m in sys.modules)
print(",".join(blocked) or "-")
'''


def test_the_core_imports_with_jax_flax_optax_and_numpy_alone():
  result = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-3000:]
  values, loaded = result.stdout.strip().splitlines()[-2:]
  kurtosis, signs = values.split(maxsplit=1)
  w = np.linspace(-1.0, 1.0, 64)  # the release's estimator: std with ddof=1 (losses.kurtosis)
  assert float(kurtosis) == pytest.approx(np.mean((w - w.mean()) ** 4) / np.var(w, ddof=1) ** 2,
                                          rel=1e-5)
  assert signs.strip() == "[1.0, 1.0, 1.0]"  # sign(0) = +1
  assert loaded == "-", f"the core pulled in {loaded}"
