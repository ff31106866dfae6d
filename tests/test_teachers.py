"""Teachers: output distillation from a model of another architecture and precision (ReActNet's
real ResNet-34), separate from WDM's teacher, which must be the student's architecture."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from narrow_models import FAST_COMPILE

from bmd_jax.core import losses

# The same blocks at one block a stage and a few channels: cheap to compile on a CPU.
from bmd_jax import models
from bmd_jax.training import train
NARROW_TORCHVISION = {"widths": (4, 8, 8, 8), "stage_sizes": (1, 1, 1, 1)}


def random_variables(model, shape, seed=0):
  """Variables of `model` drawn at random from their traced shapes (nothing compiled)."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    x = 0.5 * rng.standard_normal(s.shape)
    is_variance = jax.tree_util.keystr(path).endswith("['var']")
    return (np.abs(x) + 0.5 if is_variance else x).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(draw, train.variable_shapes(model, shape))


def test_resnet34_torchvision_has_torchvisions_parameter_count():
  # torchvision.models.resnet34(): 21,797,672 parameters at 1000 classes.
  shapes = train.variable_shapes(models.get_model("resnet34_torchvision", num_classes=1000),
                                 (224, 224, 3))
  assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(shapes["params"])) == (
      21_797_672)
  assert not any("latent_kernel" in jax.tree_util.keystr(k)
                 for k, _ in jax.tree_util.tree_leaves_with_path(shapes["params"]))
  block = shapes["params"]["stage2_block0"]
  assert block["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
  with pytest.raises(ValueError, match="precision"):
    train.variable_shapes(models.get_model("resnet34_torchvision", precision="binary"),
                          (32, 32, 3))


def _student_setup(config):
  config.loss.ce.weight = 0.0
  config.loss.kd.weight = 1.0
  config.loss.kurtosis.weight = 0.0
  model = train.create_model(config, 10)
  lr_fn = train.create_learning_rate_fn(config, 20)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model, (8, 8, 1), lr_fn,
                                   **random_variables(model, (8, 8, 1), seed=2))
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((4, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 4).astype(np.int32)}
  return model, state, batch, lr_fn


@pytest.mark.slow  # over 3.5 s on 2 cores: the fast tier stays under 3 minutes
def test_distillation_teacher_of_another_architecture_in_the_jitted_step(digits_config):
  digits_config.distill_teacher_model = {"name": "resnet34_torchvision", "precision": "full",
                                         **NARROW_TORCHVISION}
  model, state, batch, lr_fn = _student_setup(digits_config)
  teacher_model = train.create_distill_teacher_model(digits_config, 10)
  assert type(teacher_model).__name__ == "TorchvisionResNet"
  teacher = random_variables(teacher_model, (8, 8, 1), seed=1)
  step = functools.partial(
      train.train_step, config=digits_config, learning_rate_fn=lr_fn, steps_per_epoch=20,
      total_epochs=5.0, distill_apply=teacher_model.apply,
      kurtosis_layers=tuple(models.kurtosis_layers(model, (8, 8, 1))))

  # One compiled program: the step, and the gradient of its loss with respect to the teacher.
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step_and_teacher_grads(state, batch, teacher):
    loss_of_teacher = lambda t: step(state, batch, None, t)[1]["train/loss"]
    return step(state, batch, None, teacher), jax.grad(loss_of_teacher)(teacher)

  before = jax.tree_util.tree_map(np.array, teacher)
  (new_state, metrics), teacher_grads = step_and_teacher_grads(state, batch, teacher)

  # L_DL against the teacher's inference logits, computed here on its own.
  est = train.estimator_args(digits_config, 0.0)
  student_logits, _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                              compiler_options=FAST_COMPILE)(
      {"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
      estimator_args=est)
  teacher_logits = jax.jit(functools.partial(teacher_model.apply, train=False),
                           compiler_options=FAST_COMPILE)(teacher, batch["image"])
  expected = losses.distillation_loss(student_logits, teacher_logits)
  assert np.isfinite(expected) and float(expected) > 0
  np.testing.assert_allclose(metrics["train/kd"], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/loss"], metrics["train/kd"], rtol=1e-6)
  assert float(metrics["train/wdm"]) == 0.0
  assert int(new_state.step) == 1
  # The teacher is untouched and receives no gradient through the loss.
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         jax.tree_util.tree_map(np.asarray, teacher))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(teacher_grads))


def test_wdm_teacher_of_another_architecture_in_the_step_is_an_error(digits_config):
  digits_config.loss.wdm.weight = 1.0
  digits_config.model.width = 64
  model, state, batch, lr_fn = _student_setup(digits_config)
  other = train.create_model(digits_config, 10, "binary_activations").clone(width=32)
  step = jax.jit(functools.partial(train.train_step, config=digits_config,
                                   learning_rate_fn=lr_fn, steps_per_epoch=20, total_epochs=5.0,
                                   teacher_apply=other.apply))
  with pytest.raises(ValueError, match="WDM.*shape"):  # raised while tracing
    step(state, batch, random_variables(other, (8, 8, 1)))


def _save_variables(folder, model, shape, seed=0):
  """A checkpoint folder as training writes one (<folder>/<step>/state) with `model`'s
  variables; returns (folder, variables)."""
  variables = random_variables(model, shape, seed)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(folder / "7" / "state", variables)
  checkpointer.wait_until_finished()
  return str(folder), variables


def test_wdm_teacher_checkpoint_of_another_architecture_is_a_clear_error(digits_config,
                                                                         tmp_path):
  other = models.get_model("resnet34_torchvision", num_classes=10, **NARROW_TORCHVISION)
  digits_config.teacher, _ = _save_variables(tmp_path / "resnet34", other, (8, 8, 1))
  student_arch = train.create_model(digits_config, 10, "binary_activations")
  with pytest.raises(ValueError, match=r"WDM teacher.*student's architecture \(small_cnn\)"
                                       r".*distill_teacher"):
    train._teacher_variables(digits_config, "step2", str(tmp_path), student_arch, (8, 8, 1))


def test_distillation_teacher_loads_from_a_checkpoint(digits_config, tmp_path):
  digits_config.distill_teacher_model = {"name": "resnet34_torchvision", "precision": "full",
                                         **NARROW_TORCHVISION}
  teacher_model = train.create_distill_teacher_model(digits_config, 10)
  digits_config.distill_teacher, saved = _save_variables(tmp_path / "resnet34", teacher_model,
                                                         (8, 8, 1))
  model, variables = train._distill_teacher(digits_config, "step1", str(tmp_path), 10, (8, 8, 1))
  assert type(model).__name__ == "TorchvisionResNet" and model.stage_sizes == (1, 1, 1, 1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, saved)


def test_teacher_settings_are_checked_before_training(digits_config):
  digits_config.distill_teacher_model.name = "resnet34_torchvision"
  with pytest.raises(ValueError, match="distill_teacher gives no checkpoint"):
    train._distill_teacher(digits_config, "step1", "/nonexistent", 10, (8, 8, 1))
  digits_config.distill_teacher = "some/folder"
  digits_config.loss.wdm.weight = 1.0
  with pytest.raises(ValueError, match=r"wdm.weight=1.0 needs a WDM teacher of the student's "
                                       r"architecture in config.teacher.*distillation only"):
    train._check_teachers(digits_config, "step1")
  digits_config.loss.wdm.weight = 0.0
  digits_config.distill_teacher = ""
  digits_config.loss.kd.weight = 0.9
  with pytest.raises(ValueError, match="kd.weight=0.9 needs a teacher"):
    train._check_teachers(digits_config, "step1")


@pytest.mark.slow
def test_a_run_distils_from_a_checkpoint_of_another_architecture(digits_config, tmp_path):
  digits_config.num_train_steps = 4
  digits_config.log_every_steps = 2
  digits_config.loss.kd.weight = 1.0
  digits_config.distill_teacher_model = {"name": "resnet34_torchvision", "precision": "full",
                                         **NARROW_TORCHVISION}
  teacher_model = train.create_distill_teacher_model(digits_config, 10)
  digits_config.distill_teacher, _ = _save_variables(tmp_path / "resnet34", teacher_model,
                                                     (8, 8, 1))
  train.train_and_evaluate(digits_config, str(tmp_path / "run"))
  events = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  trains = [e for e in events if "train/kd" in e]
  assert len(trains) == 2 and all(e["train/kd"] > 0 and e["train/wdm"] == 0 for e in trains)
  # The kurtosis term covers the model's list: small_cnn's three binary convs.
  assert sorted(k for k in trains[-1] if k.startswith("kurtosis/")) == [
      f"kurtosis/conv{i}/latent_kernel" for i in range(3)]
