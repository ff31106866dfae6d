"""Per binary layer diagnostics (issue 28 item 5): each estimator's saturation against its
analytic slope, a layer's recorded saturation against numpy on the inputs it saw, and the
per-layer flip ratios and weight saturations of a network against numpy on its weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bmd_jax import models
from bmd_jax.configs import default
from bmd_jax.core import layers, losses, quantizers, saturation
from bmd_jax.training import diagnostics, train

X = np.linspace(-3.0, 3.0, 601, dtype=np.float32)


@pytest.mark.parametrize("sign,kwargs,analytic", [
    (quantizers.ste_sign, {"clip_value": 1.3}, lambda x: (np.abs(x) <= 1.3) * 1.0),
    (quantizers.approx_sign, {}, lambda x: np.maximum(2 - 2 * np.abs(x), 0.0)),
    (quantizers.ede_sign, {"t": 4.0, "k": 0.5},
     lambda x: 0.5 * 4.0 * (1 - np.tanh(4.0 * x) ** 2)),
])
def test_slope_and_saturation_follow_each_estimators_backward(sign, kwargs, analytic):
  np.testing.assert_allclose(saturation.slope(sign, jnp.asarray(X), **kwargs), analytic(X),
                             rtol=1e-5, atol=1e-6)
  expected = np.mean(analytic(X) < 0.01 * analytic(np.zeros(1))[0])
  assert float(saturation.saturated_share(sign, jnp.asarray(X), **kwargs)) == \
      pytest.approx(expected)


def test_ede_saturates_more_as_t_grows():
  shares = [float(saturation.saturated_share(quantizers.ede_sign, jnp.asarray(X), t=t, k=1.0))
            for t in (0.5, 2.0, 8.0)]
  assert shares[0] < shares[1] < shares[2]


def test_a_layer_records_its_inputs_and_weights_saturation_only_when_asked():
  layer = layers.BinaryDense(5, input_quantizer="ste", kernel_quantizer="ede",
                             scale_mode="irnet")
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 7)) * 1.5
  variables = layer.init(jax.random.PRNGKey(1), x)
  args = {"ste": {"clip_value": 1.0}, "ede": {"t": 3.0, "k": 1.0 / 3.0}}
  y, found = layer.apply(variables, x, estimator_args=args, mutable=["intermediates"])
  np.testing.assert_array_equal(y, layer.apply(variables, x, estimator_args=args))
  recorded = found["intermediates"]
  assert float(recorded["input_saturation"][0]) == pytest.approx(np.mean(np.abs(x) > 1.0))
  w = np.asarray(variables["params"]["latent_kernel"], np.float64)
  w_hat = (w - w.mean(0)) / w.std(0, ddof=1)  # IR-Net's standardization per output channel
  ede_slope = 1 - np.tanh(3.0 * w_hat) ** 2  # k t = 1
  assert float(recorded["weight_saturation"][0]) == pytest.approx(np.mean(ede_slope < 0.01),
                                                                 abs=1e-6)
  assert "intermediates" not in layer.apply(variables, x, estimator_args=args,
                                            mutable=["batch_stats"])[1]


def test_layer_diagnostics_of_a_network_against_numpy():
  config = default.get_config()
  config.model.kernel_quantizer = "ede"
  model = models.create_model(config, 10)
  params, batch_stats = models.initialized(jax.random.PRNGKey(0), model, (8, 8, 1))
  state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                                  batch_stats=batch_stats)
  kernels = losses.binarized_kernels(params)
  rng = np.random.default_rng(0)
  previous = {k: np.where(rng.random(w.shape) < 0.25, w < 0, w >= 0) for k, w in kernels.items()}
  batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 1))}
  progress = 0.5
  metrics = diagnostics.create(config, jax.sharding.SingleDeviceSharding(jax.devices()[0]))(
      state, batch, previous, progress)
  t, k = quantizers.ede_schedule(progress, config.estimators.ede_t_min,
                                 config.estimators.ede_t_max)
  for path, w in kernels.items():
    name = path.rsplit("/", 1)[0]
    w = np.asarray(w)
    assert float(metrics[f"layers/{name}/flip_ratio"]) == pytest.approx(
        np.mean((w >= 0) != previous[path]))
    slope = float(k) * float(t) * (1 - np.tanh(float(t) * w) ** 2)  # mean_abs: sign sees w
    assert float(metrics[f"layers/{name}/weight_saturation"]) == pytest.approx(
        np.mean(slope < 0.01 * float(k) * float(t)), abs=1e-6)
  inputs = [key for key in metrics if key.endswith("/input_saturation")]
  assert inputs and all(0.0 <= float(metrics[key]) <= 1.0 for key in inputs)


def test_diagnostics_can_be_turned_off():
  config = default.get_config()
  config.log_layer_diagnostics = False
  assert diagnostics.create(config, None) is None


def test_the_loop_logs_each_layers_figures_consistent_with_the_whole_network(digits_run):
  import json
  import os
  _, workdir = digits_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f if '"binary/flip_ratio"' in line]
  assert logged
  params = None
  for record in logged:
    layer_flips = {k: v for k, v in record.items() if k.endswith("/flip_ratio")
                   and k.startswith("layers/")}
    if params is None:
      from bmd_jax.infra import checkpoint
      params = checkpoint.read_variables(checkpoint.choose_checkpoint(workdir))["params"]
      sizes = {f"layers/{path.rsplit('/', 1)[0]}/flip_ratio": np.size(w)
               for path, w in losses.binarized_kernels(params).items()}
    assert set(layer_flips) == set(sizes)
    assert all(f"{k.rsplit('/', 1)[0]}/weight_saturation" in record for k in sizes)
    # The whole network's share is the layers' shares weighted by their sizes.
    whole = sum(layer_flips[k] * sizes[k] for k in sizes) / sum(sizes.values())
    assert whole == pytest.approx(record["binary/flip_ratio"], abs=1e-6)
