"""bench/train_step.py compares equal work: its PyTorch twin (bench/torch_reference.py) computes
the loss and gradients of bmd_jax's train step; and the benchmark runs end to end at a tiny size.

Needs torch (the `bench` extra); skipped without it.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[bench])")

from bmd_jax.training import train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import torch_reference as ref  # noqa: E402
import train_step as bench  # noqa: E402


def _perturbed_bn(variables, seed):
  """Random BN scales and biases: at init (bias 0) a binary conv's integer-valued output often
  normalizes to exactly 0, so a block's pre-activation sits exactly on hardtanh's corner, where
  jnp.clip's gradient is 1/2 and PyTorch's hardtanh's is 0; off the corners both agree."""
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "bn" in name and ("'scale'" in name or "'bias'" in name):
      return x + jnp.asarray(rng.uniform(-0.3, 0.3, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(perturb, variables)


def _torch_grad(model, flax_path):
  module = model
  names = flax_path.split("/")
  if names[0].startswith("stage"):
    module = model.blocks
  for name in names[:-1]:
    module = getattr(module, name)
  grad = getattr(module, {"kernel": "weight", "latent_kernel": "weight",
                          "scale": "weight"}.get(names[-1], names[-1])).grad.numpy()
  return grad.transpose(2, 3, 1, 0) if grad.ndim == 4 else grad.T if grad.ndim == 2 else grad


@pytest.mark.slow
def test_torch_twin_has_the_loss_and_gradients_of_the_jax_train_step():
  # ResNet-20's code paths (both shortcut kinds, every estimator and loss) at 1 block a stage.
  config, model, teacher_model, state, teacher, batch, _ = bench.jax_setup(
      "resnet20", image_size=8, batch_size=8, num_classes=10, blocks_per_stage=1)
  state = state.replace(params=_perturbed_bn(state.params, 1), step=1)
  teacher = {"params": _perturbed_bn(teacher["params"], 2), "batch_stats": teacher["batch_stats"]}
  # SGD at lr 1 with no decay: the first update is minus the gradient. steps_per_epoch=1 and
  # total_epochs=2 put the step at progress 0.5, where EDE's gradient is not the identity.
  config.optimizer, config.lr_schedule, config.learning_rate = "sgd", "constant", 1.0
  config.weight_decay = 0.0
  lr_fn = train.create_learning_rate_fn(config, 1)
  state = state.replace(tx=train.create_optimizer(config, lr_fn),
                        opt_state=train.create_optimizer(config, lr_fn).init(state.params))
  step = jax.jit(lambda s, b, t: train.train_step(
      s, b, t, config=config, learning_rate_fn=lr_fn, steps_per_epoch=1, total_epochs=2.0,
      teacher_apply=teacher_model.apply))
  new_state, metrics = step(state, batch, teacher)
  grads = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b),
                                 state.params, new_state.params)

  fields = {k: v for k, v in dict(config.model).items() if k != "name"}
  student = ref.build("resnet20", num_classes=10, **fields)
  ref.load_flax_variables(student, {"params": state.params, "batch_stats": state.batch_stats})
  twin_teacher = ref.build("resnet20", num_classes=10,
                           **{**fields, "precision": config.teacher_precision})
  ref.load_flax_variables(twin_teacher, teacher)
  twin_teacher.eval()
  est = train.estimator_args(config, 0.5)
  est = {"ste": {"clip_value": float(est["ste"]["clip_value"])},
         "ede": {"t": float(est["ede"]["t"]), "k": float(est["ede"]["k"])}}
  assert est["ede"]["k"] > 1.5  # the step ran at progress 0.5, not 0
  ref.set_estimator_args(student, est)
  ref.set_estimator_args(twin_teacher, est)
  student.train()
  images = torch.from_numpy(np.asarray(batch["image"]).transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
  total, _, parts = ref.bdbnn_loss(student, images, labels, twin_teacher,
                                   kurtosis_target=config.loss.kurtosis.target,
                                   wdm_temperature=config.loss.wdm.temperature,
                                   wdm_reduction=config.loss.wdm.reduction,
                                   kurtosis_view=config.loss.kurtosis.view)
  total.backward()

  # WDM's KL is a small difference of sums over every kernel entry (~270k float32 terms), so
  # summation order alone (XLA's vs torch's reductions) moves it by a few 1e-5.
  tolerance = {"ce": 2e-5, "kurtosis": 2e-5, "wdm": 1e-4, "kd": 2e-5}
  for name, rtol in tolerance.items():
    np.testing.assert_allclose(float(parts[name].detach()), float(metrics[f"train/{name}"]),
                               rtol=rtol, err_msg=name)
  np.testing.assert_allclose(float(total.detach()), float(metrics["train/loss"]), rtol=2e-5)
  assert float(parts["wdm"]) > 0 and float(parts["kurtosis"]) > 0

  for path in ("stem_conv/kernel", "stem_bn/bias", "stage1_block0/conv1/latent_kernel",
               "stage2_block0/conv1/latent_kernel", "stage3_block0/bn2/scale",
               "stage3_block0/conv2/latent_kernel", "classifier_bn/scale", "classifier/kernel",
               "classifier/bias"):
    jax_grad = grads
    for key in path.split("/"):
      jax_grad = jax_grad[key]
    torch_grad = _torch_grad(student, path)
    assert np.abs(torch_grad).max() > 0, path
    # Relative to the largest entry: the gradient recovered from the update carries the
    # rounding of w - (w - g).
    np.testing.assert_allclose(jax_grad, torch_grad, rtol=0,
                               atol=2e-3 * np.abs(torch_grad).max(), err_msg=path)


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
  # The CE-only train step and the eval step (the full step is compiled by the test above).
  out = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--models=resnet20",
       "--blocks_per_stage=1", "--image_size=8", "--batch=4", "--steps=1", "--warmup=0",
       "--variants=ce,eval", "--frameworks=jax,torch,jax_xla_defaults", f"--json={out}"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| ce |" in proc.stdout and "jax / torch" in proc.stdout
  assert "jax / jax_xla_defaults" in proc.stdout
  results = json.loads(out.read_text())["results"]["resnet20"]
  for framework in ("jax", "torch", "jax_xla_defaults"):
    variants = results[framework]["variants"]
    assert set(variants) == {"ce", "eval"}
    assert all(v["median_s"] > 0 for v in variants.values())
    assert results[framework]["maxrss_mib"] > 0
  assert results["jax"]["variants"]["ce"]["compile_s"] > 0

