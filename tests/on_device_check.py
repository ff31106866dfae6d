"""Run by tests/test_on_device.py in a subprocess with 8 simulated CPU devices, with grain and
TensorFlow made unimportable: the device input path on a 1-device and an 8-device mesh (the
same batches; a short digits run to the same parameters); prints the differences as JSON."""

import json
import sys
import tempfile

sys.modules["grain"] = None  # importing them now raises ImportError
sys.modules["tensorflow"] = None

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from bmd_jax.training import input_pipeline, sharding, train
from bmd_jax.configs import default


def max_diff(a, b):
  return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))), a, b)))


def run(config, num_devices):
  config.num_devices = num_devices
  with tempfile.TemporaryDirectory() as workdir:
    result = train.train_and_evaluate(config, workdir)["train"]
  return jax.device_get(result["state"]), result["eval"]


def main():
  assert jax.device_count() == 8, jax.devices()
  config = default.get_config()
  config.input_path = "device"
  config.num_train_steps = 12
  config.log_every_steps = 6
  config.eval_every_epochs = 100.0
  datasets = input_pipeline.create_datasets(config)
  batches = {}
  for n in (1, 8):
    mesh = sharding.create_mesh(num_devices=n)
    train_input = input_pipeline.create_train_input(config, datasets, mesh, 0)
    batches[n] = train_input.batch(5)
  state1, eval1 = run(config, 1)
  state8, eval8 = run(config, -1)
  out = {
      "grain_imported": sys.modules.get("grain") is not None,
      "tensorflow_imported": sys.modules.get("tensorflow") is not None,
      "batch_diff": max_diff(batches[1], batches[8]),
      "batch_shards": len({s.device for s in batches[8]["image"].addressable_shards}),
      "loss_1": eval1["eval/loss"], "loss_8": eval8["eval/loss"],
      "eval_1": eval1, "eval_8": eval8,
      "params_diff": max_diff(state1.params, state8.params),
      "stats_diff": max_diff(state1.batch_stats, state8.batch_stats),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
