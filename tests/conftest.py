"""Shared test fixtures."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The tests run with the XLA:CPU flags that bmd_jax's entry points set (and so do the
# subprocesses they start, which inherit the environment).
import bmd_jax  # noqa: E402

bmd_jax.configure_cpu()


@pytest.fixture
def digits_config():
  """configs/default.py shrunk to a few steps, for end-to-end tests."""
  from configs import default

  config = default.get_config()
  config.num_train_steps = 30
  config.log_every_steps = 10
  config.eval_every_epochs = 100.0
  return config


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  """(config, workdir) of a 12-step digits run with its checkpoint, shared by the tests that
  read a trained run (export, analyze)."""
  from bmd_jax import train
  from configs import default

  config = default.get_config()
  config.num_train_steps = 12
  config.log_every_steps = 6
  config.eval_every_epochs = 100.0
  workdir = str(tmp_path_factory.mktemp("digits_run"))
  train.train_and_evaluate(config, workdir)
  return config, workdir
