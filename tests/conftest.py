"""Shared test fixtures."""

import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The tests run with the XLA:CPU flags that bmd_jax's entry points set (and so do the
# subprocesses they start, which inherit the environment).
import bmd_jax  # noqa: E402

bmd_jax.configure_cpu()

# The test process and the subprocesses it starts (`python -m bmd_jax.main`, launch/, bench/)
# share one XLA compilation cache for the session: a program that an earlier test compiled
# (the digits config's train and eval steps, most often: every train_and_evaluate builds its
# step functions anew) is loaded instead of compiled. A subprocess's run saved about 9 s on 2
# cores; in the test process the fast tier showed no measurable change. It holds executables
# keyed by their program, compile options and XLA flags, so what a test asserts is unchanged.
# Under pytest-xdist the controlling process sets it before it starts the workers, which
# inherit it: every worker and subprocess shares it. A cache set by the caller wins;
# BMD_JAX_TEST_XLA_CACHE=0 turns it off.
import jax  # noqa: E402

_XLA_CACHE = None
if (os.environ.get("BMD_JAX_TEST_XLA_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  _XLA_CACHE = tempfile.mkdtemp(prefix="bmd_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)  # jax read the variables already
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  if _XLA_CACHE:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.fixture
def digits_config():
  """configs/default.py shrunk to a few steps, for end-to-end tests."""
  from step_setup import short_digits_config
  return short_digits_config(30, 10)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  """(config, workdir) of a 12-step digits run with its checkpoint, shared by the tests that
  read a trained run (export, analyze)."""
  from bmd_jax.training import train
  from step_setup import short_digits_config

  config = short_digits_config(12, 6)
  workdir = str(tmp_path_factory.mktemp("digits_run"))
  train.train_and_evaluate(config, workdir)
  return config, workdir
