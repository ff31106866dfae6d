"""The train step and the loop, end to end on the built-in digits."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmd_jax.core import losses
from bmd_jax import models
from bmd_jax.training import train
from bmd_jax.xla_cpu import xla_flags
from step_setup import step_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(config, precision="binary"):
  model, state, batch, step = step_setup(config, precision)
  return model, state, batch, jax.jit(step)


def test_train_step_lowers_loss_on_a_fixed_batch(digits_config):
  _, state, batch, step = _setup(digits_config)
  first = None
  for _ in range(15):
    state, metrics = step(state, batch, None)
    first = float(metrics["train/loss"]) if first is None else first
  _, metrics = step(state, batch, None)
  assert float(metrics["train/loss"]) < 0.5 * first
  assert int(state.step) == 15


def test_binarized_layers_exclude_first_conv_and_classifier(digits_config):
  for name, shape in [("small_cnn", (8, 8, 1)), ("resnet20", (32, 32, 3))]:
    digits_config.model.name = name
    model = train.create_model(digits_config, 10)
    params = models.variable_shapes(model, shape)["params"]  # traced: names and shapes only
    names = list(losses.binarized_kernels(params))
    assert names and not any("stem" in n or "classifier" in n for n in names), names
    assert "stem_conv" in params and "kernel" in params["classifier"]
  # resnet20: 3 stages x 3 blocks x 2 binary convs, option-A shortcuts have no conv.
  assert len(names) == 18


@pytest.mark.slow
def test_teacher_terms_and_teacher_untouched(digits_config):
  digits_config.loss.wdm.weight = 1.0
  digits_config.loss.kd.weight = 1.0
  model, state, batch, step = _setup(digits_config)
  # A random perturbation: softmax_kl is blind to a constant shift of a channel's weights.
  noisy = jax.tree_util.tree_map(
      lambda p: p * (1 + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape)), state.params)
  teacher = {"params": noisy,
             "batch_stats": state.batch_stats}
  before = jax.tree_util.tree_map(np.array, teacher)
  new_state, metrics = step(state, batch, teacher)
  assert float(metrics["train/wdm"]) > 0 and float(metrics["train/kd"]) > 0
  expected = (metrics["train/ce"] + metrics["train/kurtosis"] + metrics["train/wdm"]
              + metrics["train/kd"])
  np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         jax.tree_util.tree_map(np.asarray, teacher))
  # Teacher logits are those of the teacher's own inference forward.
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(teacher, batch["image"])
  assert logits.shape == (digits_config.batch_size, 10)


@pytest.mark.slow
def test_kurtosis_start_epoch_gates_the_term(digits_config):
  digits_config.loss.kurtosis.start_epoch = 1000
  _, state, batch, step = _setup(digits_config)
  _, metrics = step(state, batch, None)
  np.testing.assert_allclose(metrics["train/loss"], metrics["train/ce"], rtol=1e-6)
  assert float(metrics["train/kurtosis"]) > 0


@pytest.mark.slow
def test_weight_decay_reaches_conv_kernels_only(digits_config):
  digits_config.weight_decay = 1.0
  digits_config.optimizer = "sgd"
  _, state, _, _ = _setup(digits_config)
  mask = train._weight_decay_mask(state.params, kernels_only=True)
  assert mask["conv0"]["latent_kernel"] and mask["stem_conv"]["kernel"]
  assert not mask["classifier"]["kernel"] and not mask["bn0"]["scale"]


def test_learning_rate_schedules(digits_config):
  digits_config.num_train_steps = 100
  digits_config.lr_schedule = "cosine"
  fn = train.create_learning_rate_fn(digits_config, 10)
  lr = digits_config.learning_rate
  np.testing.assert_allclose(fn(50), lr * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
  digits_config.lr_schedule = "linear"
  fn = train.create_learning_rate_fn(digits_config, 10)
  np.testing.assert_allclose([fn(0), fn(25), fn(100)], [lr, 0.75 * lr, 0.0], atol=1e-9)
  digits_config.lr_schedule = "step"
  with pytest.raises(ValueError, match="lr_schedule"):
    train.create_learning_rate_fn(digits_config, 10)


@pytest.mark.slow
def test_train_and_evaluate_writes_metrics(digits_config, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="bmd_jax")
  train.train_and_evaluate(digits_config, str(tmp_path))
  # On CPU with a measured jaxlib, the step keeps its binary inputs' barriers (cpu_barriers).
  kept = "keeps this program's" in caplog.text
  assert kept == (jax.default_backend() == "cpu"
                  and xla_flags.measured(xla_flags.installed_jaxlib()))
  events = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  trains = [e for e in events if "train/loss" in e]
  evals = [e for e in events if "eval/accuracy" in e]
  assert [e["step"] for e in trains] == [10, 20, 30]
  for key in ["train/loss", "train/ce", "train/kurtosis", "train/wdm", "train/kd",
              "train/accuracy", "epoch"]:
    assert key in trains[-1]
  assert any(k.startswith("kurtosis/conv") for k in trains[-1])
  assert len(evals) == 1 and 0.0 <= evals[0]["eval/accuracy"] <= 1.0
  assert os.listdir(tmp_path / "tensorboard")


@pytest.mark.slow
def test_cli_runs_without_tensorflow(tmp_path):
  code = ("import sys, runpy; sys.argv = ['main', '--config=configs/default.py', "
          f"'--workdir={tmp_path}', '--config.num_train_steps=5', '--config.log_every_steps=5'];"
          "\ntry:\n  runpy.run_module('bmd_jax.main', run_name='__main__')\n"
          "except SystemExit as e:\n  assert not e.code, e.code\n"
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "eval/accuracy" in open(tmp_path / "metrics.jsonl").read()


def test_cli_rejects_unknown_config_key(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
       f"--workdir={tmp_path}", "--config.no_such_field=1"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "no_such_field" in result.stderr


@pytest.mark.parametrize("per, epoch, expected", [
    ("epoch", 2.7, 0.2),  # IR-Net: t moves at epoch starts only
    ("step", 2.5, 0.25),
    ("step", 12.0, 1.0),  # capped at the end of the schedule
])
def test_estimator_schedule_progress(digits_config, per, epoch, expected):
  digits_config.estimators.schedule_per = per
  progress = train.schedule_progress(digits_config, jnp.float32(epoch), 10.0)
  assert float(progress) == pytest.approx(expected)


def test_estimator_schedule_rejects_unknown_granularity(digits_config):
  digits_config.estimators.schedule_per = "batch"
  with pytest.raises(ValueError, match="schedule_per"):
    train.schedule_progress(digits_config, 1.0, 10.0)


@pytest.mark.slow
def test_rerun_of_a_finished_run_reports_its_evaluation(digits_run, tmp_path):
  config, shared_workdir = digits_run
  workdir = shutil.copytree(shared_workdir, tmp_path / "run")  # the fixture stays untouched
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  final_eval = [e for e in logged if "eval/accuracy" in e][-1]
  results = train.train_and_evaluate(config, workdir)  # every stage already complete
  (stage_result,) = results.values()
  assert stage_result["eval"]["eval/accuracy"] == pytest.approx(final_eval["eval/accuracy"])
  assert stage_result["eval"]["eval/loss"] == pytest.approx(final_eval["eval/loss"], rel=1e-5)
