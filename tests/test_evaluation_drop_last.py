"""eval/accuracy_drop_last: top-1 over the first floor(N / B) * B examples (IR-Net's test
loader with drop_last), on both input paths, against numpy over the model's logits for the
whole split; eval/accuracy stays the top-1 over every example."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bmd_jax.training import evaluation, input_pipeline, sharding, train
from step_setup import short_digits_config

BATCH = 64  # the digits test split's 360 examples: 5 full batches (320), 40 dropped


def _trained_a_little(config, datasets, steps=15):
  """A state that predicts more than one class (a fresh one may answer one class for all)."""
  model = train.create_model(config, datasets.info.num_classes)
  lr_fn = train.create_learning_rate_fn(config, 20)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model,
                                   datasets.info.image_shape, lr_fn)
  step = jax.jit(lambda s, b: train.train_step(s, b, None, config=config, learning_rate_fn=lr_fn,
                                               steps_per_epoch=20, total_epochs=1.0)[0])
  loader = iter(input_pipeline.create_train_loader(config, datasets.train, 0))
  for _ in range(steps):
    state = step(state, next(loader))
  return state


def _correct_by_numpy(state, config, datasets):
  """Whether each eval example, in the split's order, is predicted right: the model applied
  to the whole split at once, the images normalized here."""
  images = np.stack([datasets.eval[i]["image"] for i in range(len(datasets.eval))])
  labels = np.array([datasets.eval[i]["label"] for i in range(len(datasets.eval))])
  scale = 255.0 if images.dtype == np.uint8 else 1.0
  images = (images / scale - np.array(config.mean)) / np.array(config.std)
  with jax.default_matmul_precision("highest"):
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            images.astype(np.float32), train=False,
                            estimator_args=train.estimator_args(config, 1.0))
  return np.argmax(np.asarray(logits), -1) == labels


@pytest.mark.parametrize("input_path", ["device", "grain"])
def test_drop_last_counts_the_full_batches_only(input_path):
  config = short_digits_config(30, 10, input_path=input_path, eval_batch_size=BATCH)
  datasets = input_pipeline.create_datasets(config)
  state = _trained_a_little(config, datasets)
  correct = _correct_by_numpy(state, config, datasets)
  kept = len(correct) // BATCH * BATCH
  assert (len(correct), kept) == (360, 320)
  assert correct[:kept].mean() != pytest.approx(correct.mean())  # the test can tell them apart
  mesh = sharding.create_mesh(num_devices=1)
  metrics = evaluation.create_evaluator(config, datasets, mesh)(state)
  assert metrics["eval/accuracy"] == pytest.approx(correct.mean(), abs=1e-6)
  assert metrics["eval/accuracy_drop_last"] == pytest.approx(correct[:kept].mean(), abs=1e-6)
  assert metrics["eval/examples_drop_last"] == kept


def test_no_full_batch_gives_no_drop_last_figure():
  totals = {"loss": 3.0, "correct": 2.0, "count": 5.0, "correct_drop_last": 0.0,
            "count_drop_last": 0.0}
  assert evaluation._eval_metrics(totals) == {"eval/loss": 0.6, "eval/accuracy": 0.4}


@pytest.mark.slow
def test_eight_devices_give_the_figures_of_one():
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(tests), tests]),
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  done = subprocess.run([sys.executable, os.path.join(tests, "evaluation_devices_check.py")],
                        env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  for path in ("device", "grain"):
    one, eight = out["figures"][f"{path}_1"], out["figures"][f"{path}_8"]
    assert set(one) == set(eight) == {"eval/loss", "eval/accuracy", "eval/accuracy_drop_last",
                                      "eval/examples_drop_last"}
    # a reduction order that differs may flip an argmax tie, hardly more
    for key in ("eval/accuracy", "eval/accuracy_drop_last"):
      assert eight[key] == pytest.approx(one[key], abs=1 / 320), (path, key)
