"""The device-resident input path (data/on_device.py): the recipe's augmentation, epochs that
visit every example once, exact resume, 8 devices equal to 1, no grain import."""

import functools
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bmd_jax.infra import checkpoint
from bmd_jax.training import sharding
from bmd_jax.data import on_device, transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, PAD = 32, 4


def coordinate_images(count):
  """Images whose channel 0 is row + 1 and channel 1 is column + 1 (0 only in the padding),
  so an augmented image tells its crop offsets and whether it was flipped."""
  rows, cols = np.meshgrid(np.arange(SIZE) + 1, np.arange(SIZE) + 1, indexing="ij")
  image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
  return np.repeat(image[None], count, 0)


def offsets_and_flips(out):
  """(top, left, flipped) of each augmented coordinate image, read at its center pixel: output
  (16, 16) is padded (top + 16, left + 16), or left + 15 when flipped."""
  out = np.asarray(out).astype(int)
  flipped = out[:, 16, 17, 1] < out[:, 16, 16, 1]
  top = out[:, 16, 16, 0] - 1 - 16 + PAD
  left = out[:, 16, 16, 1] - 1 - np.where(flipped, 15, 16) + PAD
  return top, left, flipped


def test_crop_and_flip_equals_the_grain_recipe_for_the_same_draws():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
  expected = transforms.CifarAugment(SIZE).random_map(
      {"image": images, "label": np.arange(64)}, np.random.default_rng(7))["image"]
  draws = np.random.default_rng(7)  # CifarAugment's draws, in its order
  top, left = draws.integers(0, 2 * PAD + 1, size=(2, 64))
  flip = draws.random(64) < 0.5
  out = on_device.crop_and_flip(images, top, left, flip, PAD)
  np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.slow  # over 3.5 s on 2 cores: the fast tier stays under 3 minutes
def test_offsets_uniform_half_flipped_as_on_the_grain_path():
  count = 20000
  images = coordinate_images(count)
  device = offsets_and_flips(on_device.cifar_augment(jax.random.PRNGKey(3), images))
  grain_out = transforms.CifarAugment(SIZE).random_map(
      {"image": images, "label": np.zeros(count)}, np.random.default_rng(3))["image"]
  host = offsets_and_flips(grain_out)
  for top, left, flipped in (device, host):
    for offset in (top, left):
      assert offset.min() == 0 and offset.max() == 2 * PAD
      frequency = np.bincount(offset, minlength=9) / count
      # 1/9 each; binomial std at 20000 draws is 0.0022: 5 sigma
      np.testing.assert_allclose(frequency, 1 / 9, atol=0.011)
    assert abs(flipped.mean() - 0.5) < 0.018
    assert abs(np.corrcoef(top, left)[0, 1]) < 0.04  # drawn independently
  for d, h in zip(device, host):
    np.testing.assert_allclose(np.bincount(d.astype(int)) / count,
                               np.bincount(h.astype(int)) / count, atol=0.016)


def test_normalize_equals_the_grain_path():
  images = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
  mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
  expected = transforms.Normalize(mean, std).map({"image": images, "label": 0})["image"]
  out = jax.jit(lambda x: on_device.normalize(x, mean, std))(images)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_each_epoch_visits_every_example_once_and_drops_the_remainder():
  count, batch = 1000, 64  # 15 full batches, 40 examples left out each epoch
  per_epoch = count // batch
  epochs = []
  for epoch in range(3):
    seen = np.concatenate([np.asarray(on_device.batch_indices(5, epoch * per_epoch + i, count,
                                                              batch))
                           for i in range(per_epoch)])
    assert len(seen) == per_epoch * batch and len(np.unique(seen)) == len(seen)
    assert seen.min() >= 0 and seen.max() < count
    epochs.append(seen)
  assert not np.array_equal(epochs[0], epochs[1])  # a new order every epoch
  assert len(set(np.setdiff1d(np.arange(count), epochs[0]))) == count - per_epoch * batch


def test_batches_depend_on_seed_and_step_only():
  mesh = sharding.create_mesh(num_devices=1)
  split = on_device.upload(coordinate_images(100), np.arange(100), mesh)
  make = lambda seed: on_device.DeviceTrainInput(split, mesh, seed=seed, batch_size=10,
                                                 augment="cifar", mean=(0.5,), std=(0.5,))
  a, b, other = make(1), make(1), make(2)
  for step in (0, 7, 23):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.batch(step), b.batch(step))
  assert not np.array_equal(a.batch(3)["label"], other.batch(3)["label"])
  assert not np.array_equal(a.batch(3)["label"], a.batch(4)["label"])


def test_eval_batches_cover_the_split_once_in_order():
  mesh = sharding.create_mesh(num_devices=1)
  images = np.random.default_rng(0).random((25, 2, 2, 1)).astype(np.float32)
  split = on_device.upload(images, np.arange(25), mesh, multiple=8)
  batches = [on_device.eval_batch(split, i, batch_size=8, mean=(0.0,), std=(1.0,))
             for i in range(4)]  # ceil(25 / 8)
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  np.testing.assert_array_equal(labels[mask], np.arange(25))
  assert mask.sum() == 25
  np.testing.assert_array_equal(np.concatenate([np.asarray(b["image"]) for b in batches])[:25],
                                images)


def test_imagenet_augmentation_is_refused_on_the_device_path():
  from bmd_jax.training import input_pipeline
  from bmd_jax.configs import default
  config = default.get_config()
  config.input_path, config.augment = "device", "imagenet"
  with pytest.raises(ValueError, match="input_path='grain'"):
    input_pipeline.create_datasets(config)
  config.input_path = "tape"
  with pytest.raises(ValueError, match="unknown input_path"):
    input_pipeline.create_datasets(config)


def _cli(workdir, steps=120, steps_per_dispatch=0):
  return [sys.executable, "-m", "bmd_jax.main", "--config=configs/default.py",
          f"--workdir={workdir}", f"--config.num_train_steps={steps}",
          "--config.input_path=device", "--config.checkpoint_every_steps=5",
          "--config.log_every_steps=5", "--config.eval_every_epochs=100",
          f"--config.steps_per_dispatch={steps_per_dispatch}"]


def _params(workdir, step):
  return checkpoint.read_state(
      os.path.join(workdir, "checkpoints", "train", str(step), "state"))["params"]


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_dispatch", [0, 3])  # CPU: one step; 3: the looped program
def test_resume_after_sigkill_is_exact_on_the_device_path(tmp_path, steps_per_dispatch):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  env = dict(os.environ, PYTHONPATH=REPO)
  cli = functools.partial(_cli, steps=120 if steps_per_dispatch == 0 else 40,
                          steps_per_dispatch=steps_per_dispatch)
  subprocess.run(cli(straight), cwd=REPO, env=env, check=True, capture_output=True,
                 timeout=600)
  proc = subprocess.Popen(cli(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = os.path.join(killed, "checkpoints", "train", "10")
  deadline = time.time() + 240
  while not os.path.isdir(ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.kill()
  proc.wait()
  last = cli.keywords["steps"]
  assert not os.path.isdir(os.path.join(killed, "checkpoints", "train", str(last)))
  result = subprocess.run(cli(killed), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed from step" in result.stderr
  jax.tree_util.tree_map(np.testing.assert_array_equal, _params(straight, last),
                         _params(killed, last))


@pytest.mark.slow
def test_eight_devices_match_one_without_grain():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "on_device_check.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["grain_imported"] is False and out["tensorflow_imported"] is False
  assert out["batch_diff"] == 0.0  # data movement and elementwise maths only
  assert out["batch_shards"] == 8
  np.testing.assert_allclose(out["loss_1"], out["loss_8"], rtol=1e-5)
  assert out["params_diff"] < 1e-4  # Adam steps of lr 5e-3; see test_sharding.py
  assert out["stats_diff"] < 1e-4
  assert out["eval_1"]["eval/accuracy"] == pytest.approx(out["eval_8"]["eval/accuracy"],
                                                          abs=2 / 360)
