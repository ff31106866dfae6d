"""The estimator seam: a new sign estimator is one registry entry (its function, its traced
arguments and their schedule) plus its settings in the config; the train step hands the
arguments to the layers and logs the scheduled ones of the estimators the model uses."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.core import components, quantizers
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
  from bmd_jax.core import layers

  layer = layers.BinaryDense(3, input_quantizer="gain_sign", precision="binary_activations")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
  variables = layer.init(jax.random.PRNGKey(0), x)

  def input_grad(progress):
    args = quantizers.traced_arguments(digits_config.estimators, progress)
    return jax.grad(lambda x: jnp.sum(layer.apply(variables, x, args) ** 2))(x)

  # Straight through times the gain: d/dx = gain * d/d(sign x), and sign x is the same.
  np.testing.assert_allclose(input_grad(1.0), 3.0 * input_grad(0.0), rtol=1e-6)


# --- an estimator outside the package, named by its import path --------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NARROWING = "custom_parts.estimator:NARROWING_STE"


@pytest.fixture
def example_on_path(monkeypatch):
  """examples/ importable, and this process's imported estimators forgotten afterwards."""
  monkeypatch.syspath_prepend(EXAMPLES)
  monkeypatch.setattr(quantizers, "_IMPORTED", {})


def test_an_estimator_named_by_import_path_gets_its_scheduled_arguments(
    example_on_path, digits_config):
  from custom_parts import estimator

  from bmd_jax.core import layers

  assert quantizers.get_estimator(NARROWING) is estimator.NARROWING_STE
  settings = digits_config.estimators  # without the estimator's own fields: their defaults
  args = quantizers.traced_arguments(settings, 1.0)
  np.testing.assert_allclose(args[NARROWING]["width"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(quantizers.traced_arguments(settings, 0.0)[NARROWING]["width"], 2.0)
  assert quantizers.scheduled_values(args, [NARROWING]) == {
      f"{NARROWING}/width": args[NARROWING]["width"]}
  assert NARROWING not in quantizers.ESTIMATORS  # the registry lists the registered only

  # In a layer: the gradient passes where |x| <= width, as the width moves.
  layer = layers.BinaryDense(2, input_quantizer=NARROWING, precision="binary_activations")
  x = jnp.asarray([[0.5, 1.5, -1.8, 3.0]], jnp.float32)
  variables = layer.init(jax.random.PRNGKey(0), x)
  passes = lambda progress: np.asarray(jax.grad(lambda v: jnp.sum(layer.apply(
      variables, v, quantizers.traced_arguments(settings, progress))))(x) != 0)
  np.testing.assert_array_equal(passes(0.0), [[True, True, True, False]])
  np.testing.assert_array_equal(passes(1.0), [[True, False, False, False]])


def test_a_bare_sign_function_by_path_takes_no_arguments(example_on_path, digits_config):
  entry = quantizers.get_estimator("custom_parts.estimator:narrowing_ste")
  assert entry.sign.__name__ == "narrowing_ste" and entry.scheduled == ()
  assert quantizers.traced_arguments(digits_config.estimators, 0.5)[
      "custom_parts.estimator:narrowing_ste"] == {}


def test_a_wrong_import_path_names_the_fix(example_on_path):
  with pytest.raises(components.ComponentError, match="PYTHONPATH"):
    quantizers.get_estimator("no_such_package.est:sign")
  with pytest.raises(components.ComponentError, match="no attribute 'NOPE'"):
    quantizers.get_estimator("custom_parts.estimator:NOPE")
  with pytest.raises(components.ComponentError, match="neither"):
    quantizers.get_estimator("custom_parts.net:__doc__")
  with pytest.raises(components.ComponentError, match="both parts"):
    quantizers.get_estimator("custom_parts.estimator:")


def test_a_model_checks_its_quantizers_when_it_is_built():
  from bmd_jax import models

  with pytest.raises(ValueError, match=r"unknown quantizer 'nope' \(model.input_quantizer\)"):
    models.from_config({"name": "small_cnn", "input_quantizer": "nope"}, 10)


def test_register_adds_a_name_in_this_process_and_never_shadows(monkeypatch):
  monkeypatch.setattr(quantizers, "ESTIMATORS", dict(quantizers.ESTIMATORS))
  entry = quantizers.register("gain_sign", gain_sign)
  assert quantizers.get_estimator("gain_sign") is entry and entry.sign is gain_sign
  with pytest.raises(ValueError, match="registered already"):
    quantizers.register("ste", gain_sign)
  with pytest.raises(ValueError, match="separator"):
    quantizers.register("my:sign", gain_sign)
