"""K runs in one program (training/run_group*.py): equal to the same runs trained one by one,
on 1 and 8 simulated devices; the run list's refusals; a run's folder read by analyze and
export as a single run's; resume after a kill left the runs at different steps.

Tolerances: the group's step is each run's step under vmap, whose batched convolutions sum
in another order, and its hyperparameters are traced values instead of constants: equal to
float rounding. Measured on 2 SGD steps a stage (run_group_check.py, 2026-12-06, 1 and 8
devices): parameters within 2e-7, batch statistics 4e-6, logged metrics 5e-5 (train/wdm, a
small difference of large sums; relative above 1, absolute below), while the two runs'
parameters differ by 1.2. Resume is bit for bit: the same program runs the same steps.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bmd_jax.core import losses
from bmd_jax.infra import checkpoint, config_files
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.tools import analyze, export
from bmd_jax.training import run_group_config, run_group_step, train
from bmd_jax.training import stages as stages_lib
from run_group_check import group_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS_ATOL, STATS_ATOL, METRICS_TOL = 1e-5, 3e-5, 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_group_equals_the_runs_one_by_one(devices, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "run_group_check.py"),
                         str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == devices
  # Each run's batch of 64 is split over the data axis: 64 / devices rows a device.
  assert out["batch_shards"] == [[2, 64 // devices, 8, 8, 1]]
  if devices > 1:  # (one device's program has no axis to name)
    assert out["batch_spec"] in ("PartitionSpec(None, 'data')", "P(None, 'data')")
  assert out["between_runs"] > 1000 * PARAMS_ATOL
  for name, run in out["runs"].items():
    assert run["metrics"][0] < METRICS_TOL, (name, run["metrics"])
    for stage in ("step1", "step2"):
      assert run[stage]["params"] < PARAMS_ATOL, (name, stage, run[stage])
      assert run[stage]["batch_stats"] < STATS_ATOL, (name, stage, run[stage])


# --- the run list --------------------------------------------------------------------------

def test_an_override_of_an_untraced_field_is_refused_naming_it_and_the_run():
  config = group_config()
  config.runs = ({"name": "a", "overrides": {}},
                 {"name": "b", "overrides": {"model.name": "vgg_small"}})
  with pytest.raises(ConfigValueError, match=r"run 'b' overrides model\.name, which runs of "
                     "one group may not change"):
    run_group_config.run_configs(config)


@pytest.mark.parametrize("runs, message", [
    (({"name": "a"}, {"name": "a"}), "names run 'a' twice"),
    (({"name": "a/b"},), r"needs a 'name' usable as a folder name"),
    (({"name": "a", "overrides": {"loss.nope.weight": 1.0}},), r"loss\.nope\.weight=1\.0 does "
     "not fit the config"),
    (({"name": "a", "seeds": 1},), r"holds \['seeds'\]"),
])
def test_bad_run_entries_are_refused(runs, message):
  config = group_config()
  config.runs = runs
  with pytest.raises(ConfigValueError, match=message):
    run_group_config.run_configs(config)


def test_traced_fields_also_under_a_stage():
  assert run_group_config.traced_field("stage_overrides.step2.loss.wdm.weight")
  assert run_group_config.traced_field("loss.my_term.weight")
  assert not run_group_config.traced_field("stage_overrides.step2.init_from")
  assert not run_group_config.traced_field("learning_rate_schedule")


def test_each_run_config_is_a_single_runs_config():
  runs = run_group_config.run_configs(group_config())
  other = runs["other"]
  assert "runs" not in other and other.seed == 1 and other.learning_rate == 0.02
  assert other.stage_overrides.step2.loss.wdm.weight == 0.0
  assert runs["bdbnn"].stage_overrides.step2.loss.wdm.weight == 1.0


def test_a_group_needs_the_device_input_path(tmp_path):
  config = group_config()
  config.input_path = "grain"
  with pytest.raises(ConfigValueError, match="input_path=device"):
    train.train_and_evaluate(config, str(tmp_path))


def test_traced_values_drop_a_term_no_run_weighs_and_spread_per_layer_targets():
  configs = list(run_group_config.run_configs(group_config()).values())
  layers = ("a", "b", "c")
  configs[1].loss.kurtosis.targets = (1.2, 1.4, 1.6)
  values = run_group_step.traced_values(configs, layers)
  assert "loss.wdm.weight" not in values  # 0 in both runs (outside step 2): dropped
  np.testing.assert_array_equal(values["seed"], [0, 1])
  np.testing.assert_allclose(values["loss.kurtosis.target"], [[1.8] * 3, [1.2, 1.4, 1.6]])
  np.testing.assert_allclose(values["learning_rate"], [0.05, 0.02])


# --- a group's folders, and resume ---------------------------------------------------------

@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
  """Two runs over both steps, 4 steps a stage, a checkpoint every 2."""
  workdir = str(tmp_path_factory.mktemp("group"))
  config = group_config(steps=4)
  config.checkpoint_every_steps = 2
  results = train.train_and_evaluate(config, workdir)
  return config, workdir, results


@pytest.mark.slow
def test_a_runs_folder_reads_in_analyze_and_export(group_run, tmp_path):
  _, workdir, _ = group_run
  folder = os.path.join(workdir, "other")
  with open(os.path.join(folder, "config.json")) as f:
    assert json.load(f)["seed"] == 1
  record = analyze.analyze(folder, out=str(tmp_path / "analysis"))
  assert {row["stage"] for row in record["layers"]} == {"step1", "step2"}
  manifest = export.export(folder, str(tmp_path / "other.npz"))
  assert manifest["source"] == {"stage": "step2", "step": 4}
  assert json.loads(manifest["config"])["seed"] == 1


@pytest.mark.slow
def test_each_run_logs_its_own_per_layer_diagnostics(group_run):
  _, workdir, results = group_run
  for name in ("bdbnn", "other"):
    with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
      logged = [json.loads(line) for line in f if '"binary/flip_ratio"' in line]
    sizes = {f"layers/{path.rsplit('/', 1)[0]}/flip_ratio": np.size(w) for path, w in
             losses.binarized_kernels(results[name]["step2"]["state"].params).items()}
    # Step 1 binarizes activations only: its lines have no weight saturation.
    assert logged and all(f"{k.rsplit('/', 1)[0]}/weight_saturation" in line
                          for line in logged if line["stage"] == "step2" for k in sizes)
    for line in logged:  # the run's own flips: their size-weighted mean is its whole share
      whole = sum(line[k] * n for k, n in sizes.items()) / sum(sizes.values())
      assert whole == pytest.approx(line["binary/flip_ratio"], abs=1e-6)


@pytest.mark.slow
def test_resume_after_a_kill_that_left_the_runs_apart_is_exact(group_run, tmp_path):
  config, workdir, results = group_run
  copy = str(tmp_path / "group")
  shutil.copytree(workdir, copy)
  # Killed in step 2 after step 2's saves, once run 'bdbnn' had saved step 4 but 'other' not.
  shutil.rmtree(checkpoint.stage_directory(os.path.join(copy, "other"), "step2") / "4")
  resumed = train.train_and_evaluate(config, copy)
  for name in ("bdbnn", "other"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[name]["step2"]["state"].params,
                           results[name]["step2"]["state"].params)
    assert checkpoint.finished_steps(
        checkpoint.stage_directory(os.path.join(copy, name), "step2")) == [2, 4]
  # The run that was ahead keeps its newer checkpoint, moved aside, not deleted.
  assert (checkpoint.stage_directory(os.path.join(copy, "bdbnn"), "step2") / "4.ahead").is_dir()


def _listing(folder):
  return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("removed, expected", [
    # checkpoint_keep=1 and a kill between the runs' saves: no step common to both runs.
    ({"bdbnn": ["2"], "other": ["4"]}, "bdbnn kept none at step 2"),
    # A run with no checkpoint of the stage beside one that has them (a run added later).
    ({"other": ["2", "4"]}, "run(s) other have no checkpoint while bdbnn do"),
])
def test_a_group_whose_runs_share_no_step_is_refused_and_nothing_moves(group_run, tmp_path,
                                                                       removed, expected):
  config, workdir, _ = group_run
  copy = str(tmp_path / "group")
  shutil.copytree(workdir, copy)
  for name, steps in removed.items():
    for step in steps:
      shutil.rmtree(checkpoint.stage_directory(os.path.join(copy, name), "step2") / step)
  before = _listing(os.path.join(copy, "bdbnn", "checkpoints"))
  with pytest.raises(ConfigValueError, match=re.escape(expected)):
    train.train_and_evaluate(config, copy)
  assert _listing(os.path.join(copy, "bdbnn", "checkpoints")) == before


@pytest.mark.parametrize("recipe, count", [("cifar10_group.py", 8), ("digits_group.py", 4)])
def test_the_group_recipes_runs_are_bdbnn_and_its_ablations(recipe, count):
  config = config_files.load(os.path.join(REPO, "bmd_jax", "configs", recipe))
  runs = run_group_config.run_configs(config)
  assert len(runs) == count and config.input_path == "device"
  weights = {name: [(s.config.loss.kurtosis.weight, s.config.loss.wdm.weight,
                     s.config.loss.kd.weight) for s in stages_lib.stage_list(run)]
             for name, run in runs.items()}
  assert weights["bdbnn_s0"] == [(1.0, 0.0, 0.0), (1.0, 1.0, 0.9)]
  assert weights["kurtosis_only_s0"] == [(1.0, 0.0, 0.0), (1.0, 0.0, 0.9)]
  assert weights["wdm_only_s0"] == [(0.0, 0.0, 0.0), (0.0, 1.0, 0.9)]
  assert weights["plain_s0"] == [(0.0, 0.0, 0.0), (0.0, 0.0, 0.9)]


def test_the_group_loop_stops_after_the_first_nonfinite_loss_of_any_run():
  losses = jax.numpy.asarray([[1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 3.0, 4.0]])
  toy_step = lambda state, batch, teacher, distill, values: (state + 1, {"train/loss": batch})
  run = jax.jit(run_group_step.group_device_steps(
      toy_step, lambda split, step, seeds: split[:, step]))
  acc = run_group_step.empty_accumulators({"train/loss": None}, 2)
  state, acc = run(jax.numpy.zeros(2), acc, losses, None, None, {"seed": np.arange(2)}, 0, 4)
  np.testing.assert_array_equal(state, [2, 2])  # no run trained past step 2
  np.testing.assert_array_equal(acc["nonfinite_step"], [-1, 2])
  np.testing.assert_array_equal(acc["sums"]["train/loss"][0], 3.0)


@pytest.mark.slow
def test_a_group_stopped_at_its_stop_time_resumes_exactly(group_run, tmp_path):
  config, _, results = group_run
  config = config.copy_and_resolve_references()
  config.stop_at_time = 1.0  # long past: stop after the first dispatch
  with pytest.raises(train.Preempted, match="stage step1 of runs bdbnn, other saved at step 1"):
    train.train_and_evaluate(config, str(tmp_path))
  config.stop_at_time = 0.0
  resumed = train.train_and_evaluate(config, str(tmp_path))
  for name in ("bdbnn", "other"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[name]["step2"]["state"].params,
                           results[name]["step2"]["state"].params)
