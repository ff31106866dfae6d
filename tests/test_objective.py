"""The objective seam: the total is the weighted sum of the named terms, computed from the loss
config alone (independently here), every term's options reach it, and a made-up term is one
registry entry plus its config block."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bmd_jax.core import losses, objective
from bmd_jax.training import metric_writers


def _inputs(seed=0, teacher=True):
  rng = np.random.default_rng(seed)
  params = {"conv1": {"latent_kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)},
            "conv2": {"latent_kernel": jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)}}
  teacher_params = jax.tree_util.tree_map(lambda w: 0.5 * w + 0.1, params)
  logits = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  return objective.Inputs(
      params=params, logits=logits, labels=jnp.arange(6) % 5, epoch=3.0,
      teacher_params=teacher_params if teacher else None,
      teacher_logits=jnp.asarray(rng.standard_normal((6, 5)), jnp.float32) if teacher else None)


def _loss_config(**blocks):
  """configs/default.py's loss config with some of each term's fields changed."""
  from bmd_jax.configs import default

  config = default.get_config().loss
  config.update(blocks)  # merges each block's fields
  return config


def _reference_kurtosis(w):
  w = np.asarray(w, np.float64).ravel()
  c = w - w.mean()
  return np.mean(c ** 4) / (np.sum(c ** 2) / (w.size - 1)) ** 2


def test_total_is_the_weighted_sum_of_independently_computed_terms():
  cfg = _loss_config(ce={"weight": 0.7}, kurtosis={"weight": 0.3, "target": 1.5},
                     wdm={"weight": 2.0, "form": "released"}, kd={"weight": 0.9})
  inputs = _inputs()
  total, parts, extras = objective.objective(cfg, inputs)
  ce = float(optax.softmax_cross_entropy_with_integer_labels(inputs.logits, inputs.labels).mean())
  kurt = np.mean([(_reference_kurtosis(layer["latent_kernel"]) - 1.5) ** 2
                  for layer in inputs.params.values()])
  soft = np.asarray(jax.nn.softmax(inputs.teacher_logits))
  kd = float(np.mean(-np.sum(soft * np.asarray(jax.nn.log_softmax(inputs.logits)), -1)))
  wdm = float(losses.wdm_loss(inputs.teacher_params, inputs.params, "released"))
  np.testing.assert_allclose([parts["ce"], parts["kurtosis"], parts["kd"]], [ce, kurt, kd],
                             rtol=1e-5)
  np.testing.assert_allclose(total, 0.7 * ce + 0.3 * kurt + 2.0 * wdm + 0.9 * kd, rtol=1e-5)
  assert set(extras) == {"kurtosis/conv1/latent_kernel", "kurtosis/conv2/latent_kernel"}


def test_terms_without_a_teacher_are_zero_and_out_of_the_total():
  cfg = _loss_config(wdm={"weight": 5.0}, kd={"weight": 5.0})
  total, parts, _ = objective.objective(cfg, _inputs(teacher=False))
  assert float(parts["wdm"]) == 0.0 and float(parts["kd"]) == 0.0
  np.testing.assert_allclose(total, parts["ce"] + parts["kurtosis"], rtol=1e-6)


def test_kurtosis_joins_the_total_at_its_start_epoch():
  cfg = _loss_config(kurtosis={"start_epoch": 4})
  total, parts, _ = objective.objective(cfg, _inputs())  # epoch 3
  np.testing.assert_allclose(total, parts["ce"], rtol=1e-6)


@pytest.mark.parametrize("bins, bandwidth", [(16, 0.0), (64, 0.05)])
def test_histogram_wdm_options_reach_the_form(bins, bandwidth):
  cfg = _loss_config(wdm={"weight": 1.0, "form": "histogram", "bins": bins,
                          "bandwidth": bandwidth})
  inputs = _inputs()
  _, parts, _ = objective.objective(cfg, inputs)
  teacher = losses.binarized_kernels(inputs.teacher_params, include_shortcuts=False)
  student = losses.binarized_kernels(inputs.params, include_shortcuts=False)
  expected = losses.wdm_histogram(teacher, student, bins=bins, bandwidth=bandwidth or None)
  np.testing.assert_allclose(parts["wdm"], expected, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["channel_mean", "channel_sum", "weight_sum"])
def test_softmax_kl_reduction_reaches_the_form(reduction):
  cfg = _loss_config(wdm={"weight": 1.0, "reduction": reduction, "temperature": 2.0})
  inputs = _inputs()
  _, parts, _ = objective.objective(cfg, inputs)
  teacher = losses.binarized_kernels(inputs.teacher_params, include_shortcuts=False)
  student = losses.binarized_kernels(inputs.params, include_shortcuts=False)
  # Both layers have 8 output channels: channel_sum is 8 channel means, weight_sum N of them.
  factors = {"channel_mean": 1.0, "channel_sum": 8.0, "weight_sum": None}
  per_layer = {n: losses.wdm_softmax_kl({n: teacher[n]}, {n: student[n]}, 2.0)
               for n in teacher}
  scale = {n: factors[reduction] or teacher[n].size for n in teacher}
  np.testing.assert_allclose(parts["wdm"], sum(scale[n] * per_layer[n] for n in teacher),
                             rtol=1e-5)


def test_a_stored_wdm_block_without_a_reduction_reads_as_the_legacy_one():
  # Configs written before loss.wdm.reduction existed resume with what their run used.
  legacy = ml_collections.ConfigDict({"wdm": {"weight": 1.0, "form": "softmax_kl"}})
  explicit = _loss_config(wdm={"weight": 1.0, "reduction": "channel_mean"})
  _, old, _ = objective.objective(legacy, _inputs())
  _, new, _ = objective.objective(explicit, _inputs())
  assert float(old["wdm"]) == float(new["wdm"])
  assert _loss_config().wdm.reduction == losses.WDM_LEGACY_REDUCTION == "channel_mean"


def test_kurtosis_view_reaches_the_term():
  inputs = _inputs()
  cfg = _loss_config(kurtosis={"weight": 1.0, "view": "standardized", "target": 1.5})
  _, parts, extras = objective.objective(cfg, inputs)
  kurts = [_reference_kurtosis(_standardized(layer["latent_kernel"]))
           for layer in inputs.params.values()]
  np.testing.assert_allclose(parts["kurtosis"], np.mean((np.array(kurts) - 1.5) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(extras["kurtosis/conv1/latent_kernel"], kurts[0], rtol=1e-5)


def _standardized(w):
  w = np.asarray(w, np.float64)
  flat = w.reshape(-1, w.shape[-1])
  return (flat - flat.mean(0)) / flat.std(0, ddof=1)


def test_a_made_up_term_is_one_entry_and_a_block(monkeypatch):
  def logit_norm(cfg, inputs):
    return jnp.mean(inputs.logits ** 2) * cfg.get("scale", 1.0), {}

  monkeypatch.setitem(objective.TERMS, "logit_norm", objective.Term(logit_norm))
  cfg = ml_collections.ConfigDict({"ce": {"weight": 1.0},
                                   "logit_norm": {"weight": 0.5, "scale": 2.0}})
  inputs = _inputs(teacher=False)
  total, parts, _ = objective.objective(cfg, inputs)
  expected_norm = 2.0 * float(jnp.mean(inputs.logits ** 2))
  np.testing.assert_allclose(parts["logit_norm"], expected_norm, rtol=1e-6)
  np.testing.assert_allclose(total, parts["ce"] + 0.5 * expected_norm, rtol=1e-6)
  line = metric_writers._console_line(3, 0.5, {"train/loss": 1.0, "train/logit_norm": 0.25})
  assert line.endswith("loss=1 logit_norm=0.25"), line  # the console shows it too


def test_a_term_named_by_import_path_shows_on_the_console(tmp_path, caplog, monkeypatch):
  """A loss block with its own `term` (loss.<name>.term = 'package.module:attribute') is
  logged to the console line with the built-in terms, not only to the files."""
  import logging
  import os
  monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "examples"))
  config = ml_collections.ConfigDict({"loss": {
      "ce": {"weight": 1.0},
      "outside_clip": {"term": "custom_parts.term:outside_clip", "weight": 0.1}}})
  writer = metric_writers.MetricWriter(str(tmp_path), console=True)
  writer.start_stage("train", config, 10, 0)
  with caplog.at_level(logging.INFO, logger="bmd_jax"):
    writer.write(5, 0.5, {"stage": "train", "train/loss": 1.0, "train/ce": 0.75,
                          "train/outside_clip": 0.125})
  writer.close()
  assert "loss=1 ce=0.75 outside_clip=0.125" in caplog.text, caplog.text
