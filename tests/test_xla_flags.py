"""bmd_jax's XLA:CPU flags: when they are set, that a user's choice wins, and that
convolutions, binary layers and their gradients are the same with and without them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax.xla_cpu import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTING = f"{xla_flags.FLAG}={xla_flags.VALUE}"


def test_convolution_flag_appended_to_existing_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.set_cpu_flags(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {SETTING}"
  assert not xla_flags.set_cpu_flags(env, jaxlib_version="0.10.2")  # once only


def test_the_retired_barriers_choice_warns_and_means_on(caplog):
  # It used to disable a pass for the whole process; cpu_barriers now does it per program.
  env = {xla_flags.CHOICE_VARIABLE: "barriers"}
  assert xla_flags.set_cpu_flags(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == SETTING
  assert "retired" in caplog.text


def test_users_own_flag_wins():
  env = {"XLA_FLAGS": f"{xla_flags.FLAG}=individual_dot,individual_convolution"}
  assert not xla_flags.set_cpu_flags(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == f"{xla_flags.FLAG}=individual_dot,individual_convolution"


def test_an_unknown_choice_is_an_error():
  with pytest.raises(ValueError, match="'on'.*'off'"):
    xla_flags.set_cpu_flags({xla_flags.CHOICE_VARIABLE: "fast"}, jaxlib_version="0.10.2")


def test_off_keeps_jaxlibs_flags():
  env = {xla_flags.CHOICE_VARIABLE: "off"}
  assert not xla_flags.set_cpu_flags(env, jaxlib_version="0.10.2")
  assert "XLA_FLAGS" not in env


@pytest.mark.parametrize("version", ["0.9.1", "0.11.0", ""])
def test_unmeasured_jaxlib_gets_no_flag(version):
  # XLA aborts on a flag it does not know: never pass it to a jaxlib it was not checked on.
  env = {}
  assert not xla_flags.set_cpu_flags(env, jaxlib_version=version)
  assert "XLA_FLAGS" not in env


def test_bad_choice_names_the_variable():
  with pytest.raises(ValueError, match=xla_flags.CHOICE_VARIABLE):
    xla_flags.set_cpu_flags({xla_flags.CHOICE_VARIABLE: "fast"}, "0.10.2")


_CONV_GRADIENTS = r"""
import json, os, sys
import bmd_jax
bmd_jax.configure_cpu()
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


def _run(choice):  # "on" or "off"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env[xla_flags.CHOICE_VARIABLE] = choice
  out = subprocess.run([sys.executable, "-c", _CONV_GRADIENTS], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


MEASURED = xla_flags.measured(xla_flags.installed_jaxlib())


@pytest.mark.skipif(not MEASURED, reason="flag not used on this jaxlib")
def test_configure_cpu_sets_flag_and_convolutions_agree():
  on, off = _run("on"), _run("off")
  assert SETTING in on["flags"]
  assert xla_flags.FLAG not in off["flags"]
  np.testing.assert_allclose(on["value"], off["value"], rtol=1e-5)
  for grad in ("dx", "dw"):
    scale = np.max(np.abs(off[grad]))
    np.testing.assert_allclose(on[grad], off[grad], atol=1e-5 * scale)


def test_warns_when_jax_started_first():
  code = ("import jax; jax.devices(); import logging; logging.basicConfig(); "
          "import bmd_jax; bmd_jax.configure_cpu()")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.CHOICE_VARIABLE)}
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
  assert ("has no effect" in out.stderr) == MEASURED


_IMPORT = r"""
import importlib, json, os, pkgutil, sys
for name in sys.argv[1:]:  # third-party libraries imported first: grain sets TF variables
  importlib.import_module(name)
before = dict(os.environ)
import bmd_jax
from bmd_jax.core import layers, losses, quantizers
from bmd_jax import models
pure = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
for module in pkgutil.walk_packages(bmd_jax.__path__, "bmd_jax."):
  importlib.import_module(module.name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"pure": pure, "all": changed}))
"""


def _changed_by_import(*first):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.CHOICE_VARIABLE)}
  out = subprocess.run([sys.executable, "-c", _IMPORT, *first], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over 3.5 s on 2 cores: the fast tier stays under 3 minutes
def test_importing_bmd_jax_leaves_the_environment_as_it_was():
  # The notebook's pieces from a clean start; every module once the libraries are in (grain
  # and orbax set TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY when they are imported).
  assert _changed_by_import()["pure"] == []
  assert _changed_by_import("jax", "grain", "orbax.checkpoint", "tensorflow_datasets") == {
      "pure": [], "all": []}
