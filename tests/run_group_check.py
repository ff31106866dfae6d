"""Run by tests/test_run_group.py in a subprocess (XLA_FLAGS gives it 1 or 8 CPU devices): two
runs of configs/digits_group.py's kind that differ in every traced field, over both BD-BNN
steps, trained as one group and then one by one; prints the largest differences as JSON."""

import json
import sys
import tempfile

import jax
import numpy as np

from bmd_jax.configs import digits_group
from bmd_jax.training import input_pipeline, run_group_config, run_group_step, sharding, train

OTHER = {"seed": 1, "learning_rate": 0.02, "loss.kurtosis.target": 1.5,
         "estimators.ede_t_min": 1e-3, "stage_overrides.step2.loss.wdm.weight": 0.0,
         "stage_overrides.step2.loss.kd.weight": 0.5}


def group_config(steps: int = 2):
  """Two runs, `steps` steps a stage; SGD, whose update is proportional to the gradient
  (Adam's division by |g| would turn a rounding-level change of a near-zero gradient into a
  whole step: tests/test_sharding.py)."""
  config = digits_group.get_config()
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.eval_every_epochs = 100.0
  config.checkpoint_every_epochs = 0.0
  config.optimizer = "sgd"
  config.learning_rate = 0.05
  config.runs = ({"name": "bdbnn", "overrides": {}}, {"name": "other", "overrides": OTHER})
  return config


def train_lines(folder: str) -> list[dict]:
  with open(f"{folder}/metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  return [{k: v for k, v in line.items() if k.startswith(("train/", "grads/", "kurtosis/"))
           and "images_per_second" not in k} for line in lines if "train/loss" in line]


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def worst_metric(a: list[dict], b: list[dict]) -> tuple[float, str]:
  """The largest difference of a logged metric, relative above 1 and absolute below (WDM's
  value is a small difference of large sums), and its name."""
  assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b)), (a, b)
  return max((abs(x[k] - y[k]) / max(abs(y[k]), 1.0), k) for x, y in zip(a, b) for k in x)


def main(workdir: str):
  config = group_config()
  group = train.train_and_evaluate(config, f"{workdir}/group")
  out = {"devices": jax.device_count(), "runs": {}}
  for name, run_config in run_group_config.run_configs(config).items():
    single = train.train_and_evaluate(run_config, f"{workdir}/{name}")
    out["runs"][name] = {
        stage: {"params": max_diff(group[name][stage]["state"].params, result["state"].params),
                "batch_stats": max_diff(group[name][stage]["state"].batch_stats,
                                        result["state"].batch_stats)}
        for stage, result in single.items()}
    out["runs"][name]["metrics"] = worst_metric(train_lines(f"{workdir}/group/{name}"),
                                                train_lines(f"{workdir}/{name}"))
  # Each run's batch is split over the mesh's data axis.
  mesh = sharding.mesh_from_config(config)
  batches = jax.jit(run_group_step.group_batches(config, mesh))(
      input_pipeline.create_train_input(config, input_pipeline.create_datasets(config), mesh,
                                        0).split, 0, np.arange(2, dtype=np.int32))
  out["batch_spec"] = str(batches["image"].sharding.spec)
  out["batch_shards"] = sorted({s.data.shape for s in batches["image"].addressable_shards})
  # The runs really differ (the group did not train one of them twice).
  out["between_runs"] = max_diff(group["bdbnn"]["step2"]["state"].params,
                                 group["other"]["step2"]["state"].params)
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
