"""bmd_jax's XLA:CPU convolution flag: when it is set, that a user's choice wins, and that
convolutions and their gradients are the same with and without it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTING = f"{xla_flags.FLAG}={xla_flags.VALUE}"


def test_flag_appended_to_existing_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.eigen_cpu_convolutions(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {SETTING}"
  assert not xla_flags.eigen_cpu_convolutions(env, jaxlib_version="0.10.2")  # once only


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": f"{xla_flags.FLAG}=individual_dot,individual_convolution"},  # user's flag
    {xla_flags.CHOICE_VARIABLE: "ynn"},  # jaxlib's default kept
])
def test_users_choice_wins(env):
  before = dict(env)
  assert not xla_flags.eigen_cpu_convolutions(env, jaxlib_version="0.10.2")
  assert env == before


@pytest.mark.parametrize("version", ["0.9.1", "0.11.0", ""])
def test_unmeasured_jaxlib_gets_no_flag(version):
  # XLA aborts on a flag it does not know: never pass it to a jaxlib it was not checked on.
  env = {}
  assert not xla_flags.eigen_cpu_convolutions(env, jaxlib_version=version)
  assert "XLA_FLAGS" not in env


def test_bad_choice_names_the_variable():
  with pytest.raises(ValueError, match=xla_flags.CHOICE_VARIABLE):
    xla_flags.eigen_cpu_convolutions({xla_flags.CHOICE_VARIABLE: "fast"}, "0.10.2")


_CONV_GRADIENTS = r"""
import json, os, sys
import bmd_jax
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
x = jnp.sign(jnp.asarray(rng.standard_normal((8, 12, 12, 16)), jnp.float32))
w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
def loss(x, w):
  y = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.tanh(y))
value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "value": float(value),
                  "dx": np.asarray(grads[0]).ravel().tolist(),
                  "dw": np.asarray(grads[1]).ravel().tolist()}))
"""


def _run(choice):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env[xla_flags.CHOICE_VARIABLE] = choice
  out = subprocess.run([sys.executable, "-c", _CONV_GRADIENTS], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


MEASURED = xla_flags.measured(xla_flags._jaxlib_version())


@pytest.mark.skipif(not MEASURED, reason="flag not used on this jaxlib")
def test_import_sets_flag_and_convolutions_agree():
  eigen, ynn = _run("eigen"), _run("ynn")
  assert SETTING in eigen["flags"] and xla_flags.FLAG not in ynn["flags"]
  np.testing.assert_allclose(eigen["value"], ynn["value"], rtol=1e-5)
  for grad in ("dx", "dw"):
    scale = np.max(np.abs(ynn[grad]))
    np.testing.assert_allclose(eigen[grad], ynn[grad], atol=1e-5 * scale)


def test_warns_when_jax_started_first():
  code = ("import jax; jax.devices(); import logging; logging.basicConfig(); "
          "import bmd_jax")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.CHOICE_VARIABLE)}
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
  assert ("has no effect" in out.stderr) == MEASURED
