"""Each loss term's gradient norm (train.term_gradient_norms, logged as grads/<term>): the
norm of jax.grad of that weighted term alone, computed here from the pure losses."""

import jax
import numpy as np
import optax
import pytest

from bmd_jax.core import losses, objective
from bmd_jax.training import train
from step_setup import short_digits_config, step_setup


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree_util.tree_leaves(tree))))


def test_each_terms_norm_is_the_gradient_of_that_term_alone():
  config = short_digits_config(30, 10)
  config.loss.kurtosis.weight = 0.7
  config.loss.wdm.weight, config.loss.kd.weight = 2.0, 0.5
  model, state, batch, step = step_setup(config)
  # A teacher whose weights differ from the student's (equal ones give WDM no gradient).
  teacher = {"params": jax.tree_util.tree_map(lambda w: 0.8 * w + 0.01, state.params),
             "batch_stats": state.batch_stats}
  got = jax.jit(lambda s, b, t: train.term_gradient_norms(s, b, t, **step.keywords))(
      state, batch, teacher)

  est_args = train.estimator_args(config, 0.0)
  forward = lambda variables: model.apply(variables, batch["image"], train=True,
                                          estimator_args=est_args, mutable=["batch_stats"])[0]
  teacher_logits = model.apply(teacher, batch["image"], train=False, estimator_args=est_args)

  def ce(params):
    logits = forward({"params": params, "batch_stats": state.batch_stats})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def kd(params):
    logits = forward({"params": params, "batch_stats": state.batch_stats})
    return config.loss.kd.weight * losses.distillation_loss(logits, teacher_logits)

  def kurtosis(params):
    value, _ = losses.kurtosis_loss(params, config.loss.kurtosis.target)
    return config.loss.kurtosis.weight * value

  def wdm(params):
    inputs = objective.Inputs(params=params, logits=None, labels=None,
                              teacher_params=teacher["params"])
    return config.loss.wdm.weight * objective.TERMS["wdm"].value(config.loss.wdm, inputs)[0]

  expected = {name: _norm(jax.grad(fn)(state.params))
              for name, fn in [("ce", ce), ("kd", kd), ("kurtosis", kurtosis), ("wdm", wdm)]}
  for name, value in expected.items():
    assert value > 0, name  # every term acts here, so the comparison means something
    assert float(got[f"grads/{name}"]) == pytest.approx(value, rel=1e-4), name
    if name != "ce":
      assert float(got[f"grads/{name}_over_ce"]) == pytest.approx(value / expected["ce"],
                                                                   rel=1e-4)


def test_a_term_out_of_the_total_has_no_gradient():
  config = short_digits_config(30, 10)
  config.loss.kurtosis.weight = 0.0
  _, state, batch, step = step_setup(config)
  got = train.term_gradient_norms(state, batch, None, **step.keywords)
  assert float(got["grads/kurtosis"]) == 0.0 and float(got["grads/wdm"]) == 0.0
  assert float(got["grads/ce"]) > 0
