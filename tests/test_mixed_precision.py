"""config.model.dtype='bfloat16': bfloat16 activations and convolutions, everything kept
across steps (latent weights, optimizer state, batch-norm statistics) and the loss float32."""

import json

import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jax_core

from bmd_jax.training import train
from step_setup import step_setup


def _float32_leaves(tree):
  return {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating)} == {"float32"}


def _conv_operand_dtypes(fn, *args):
  """The operand dtypes of every convolution in fn's jaxpr (nested calls included)."""
  found = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax_core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.slow
def test_bfloat16_steps_lower_the_loss_and_keep_float32_state(digits_config):
  config = digits_config
  config.model.dtype = "bfloat16"
  _, state, batch, step_fn = step_setup(config)
  # Every convolution (stem and binary) runs on bfloat16 operands.
  assert _conv_operand_dtypes(step_fn, state, batch, None) == {("bfloat16", "bfloat16")}
  step = jax.jit(step_fn)
  first = None
  for _ in range(15):
    state, metrics = step(state, batch, None)
    first = float(metrics["train/loss"]) if first is None else first
  _, metrics = step(state, batch, None)
  assert metrics["train/loss"].dtype == jnp.float32
  assert float(metrics["train/loss"]) < 0.5 * first
  assert _float32_leaves(state.params) and _float32_leaves(state.batch_stats)
  assert _float32_leaves(state.opt_state)


@pytest.mark.slow
def test_bfloat16_trains_digits_end_to_end(digits_config, tmp_path):
  digits_config.model.dtype = "bfloat16"
  digits_config.input_path = "device"
  digits_config.num_train_steps = 80
  result = train.train_and_evaluate(digits_config, str(tmp_path))["train"]
  losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "metrics.jsonl")
            if '"train/loss"' in line]
  assert losses[-1] < 0.6 * losses[0]
  assert result["eval"]["eval/accuracy"] > 0.7
  state = result["state"]
  assert _float32_leaves(state.params) and _float32_leaves(state.batch_stats)
