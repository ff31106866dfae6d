"""The estimator seam: a new sign estimator is one registry entry (its function, its traced
arguments and their schedule) plus its settings in the config; the train step hands the
arguments to the layers and logs the scheduled ones of the estimators the model uses."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax import quantizers
from step_setup import step_setup


@jax.custom_vjp
def _gain_sign(x, gain):
  return quantizers.binarize(x)


def _gain_fwd(x, gain):
  return quantizers.binarize(x), gain


def _gain_bwd(gain, g):
  return g * gain, jnp.zeros_like(gain)


_gain_sign.defvjp(_gain_fwd, _gain_bwd)


def gain_sign(x, gain=1.0):  # a default, as every estimator's: init runs without arguments
  return _gain_sign(x, gain)


@pytest.fixture
def made_up_estimator(monkeypatch):
  """'gain_sign': straight-through times a gain that grows from 1 to 3 over training."""
  entry = quantizers.Estimator(
      gain_sign, lambda settings, progress: {"gain": 1.0 + 2.0 * jnp.asarray(progress)},
      scheduled=("gain",))
  monkeypatch.setitem(quantizers.ESTIMATORS, "gain_sign", entry)


def test_traced_arguments_follow_each_entry(digits_config):
  settings = digits_config.estimators
  args = quantizers.traced_arguments(settings, 0.5)
  t, k = quantizers.ede_schedule(0.5, settings.ede_t_min, settings.ede_t_max)
  assert args["ede"] == {"t": t, "k": k}
  assert args["ste"] == {"clip_value": settings.ste_clip_value}
  assert args["approx_sign"] == {}
  assert quantizers.scheduled_values(args, ["ste", "ede", "ede"]) == {"ede/t": t, "ede/k": k}


@pytest.mark.slow
def test_made_up_estimator_trains_with_its_schedule_and_only_it_is_logged(
    digits_config, made_up_estimator):
  config = digits_config
  config.model.input_quantizer = "gain_sign"
  config.estimators.schedule_per = "step"
  _, state, batch, step = step_setup(config, total_epochs=2.0)  # 40 steps in all
  step = jax.jit(step)
  _, metrics = step(state, batch, None)
  assert "estimators/gain_sign/gain" in metrics
  assert not any("ede" in key for key in metrics)  # no layer uses EDE: nothing logged for it
  np.testing.assert_allclose(metrics["estimators/gain_sign/gain"], 1.0)  # progress 0

  at_end = step(state.replace(step=40), batch, None)[1]
  np.testing.assert_allclose(at_end["estimators/gain_sign/gain"], 3.0, rtol=1e-6)


def test_made_up_estimator_gets_its_arguments_in_a_layer(made_up_estimator, digits_config):
  from bmd_jax import layers

  layer = layers.BinaryDense(3, input_quantizer="gain_sign", precision="binary_activations")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
  variables = layer.init(jax.random.PRNGKey(0), x)

  def input_grad(progress):
    args = quantizers.traced_arguments(digits_config.estimators, progress)
    return jax.grad(lambda x: jnp.sum(layer.apply(variables, x, args) ** 2))(x)

  # Straight through times the gain: d/dx = gain * d/d(sign x), and sign x is the same.
  np.testing.assert_allclose(input_grad(1.0), 3.0 * input_grad(0.0), rtol=1e-6)
