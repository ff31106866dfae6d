"""Run by tests/test_evaluation_drop_last.py in a subprocess with 8 simulated CPU devices: the
evaluator's figures for one state on a 1-device and an 8-device mesh, on both input paths;
prints them as JSON."""

import json

import jax

from bmd_jax.training import evaluation, input_pipeline, sharding
from step_setup import short_digits_config
from test_evaluation_drop_last import BATCH, _trained_a_little

if __name__ == "__main__":
  figures = {}
  for path in ("device", "grain"):
    config = short_digits_config(30, 10, input_path=path, eval_batch_size=BATCH)
    datasets = input_pipeline.create_datasets(config)
    state = jax.device_get(_trained_a_little(config, datasets))
    for devices in (1, 8):
      mesh = sharding.create_mesh(num_devices=devices)
      figures[f"{path}_{devices}"] = evaluation.create_evaluator(config, datasets, mesh)(
          sharding.replicate(state, mesh))
  print(json.dumps({"devices": jax.device_count(), "figures": figures}))
