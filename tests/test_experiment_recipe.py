"""The recipe cifar10_experiment: issue 27's run list (docs/EXPERIMENT.md) as run groups. Each
run's resolved stages hold the values the plan's table gives its variant, the per-layer targets
fit the model's regularized layers, and a bad argument is one line."""

import pytest

from bmd_jax import models
from bmd_jax.infra import config_files
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.training import run_group_config, stages

# variant: (kurtosis weight, scalar target, WDM weight in step 2), as docs/EXPERIMENT.md's table.
WAVE1 = {"plain": (0.0, 1.8, 0.0), "kurtosis_only": (1.0, 1.8, 0.0), "wdm_only": (0.0, 1.8, 1.0),
         "bdbnn": (1.0, 1.8, 1.0), "bdbnn_target1.2": (1.0, 1.2, 1.0),
         "bdbnn_target1.4": (1.0, 1.4, 1.0), "bdbnn_per_layer": (1.0, 1.8, 1.0)}


def _stages(arg):
  runs = run_group_config.run_configs(config_files.load("cifar10_experiment", arg))
  return {name: {s.name: s.config for s in stages.stage_list(run)} for name, run in runs.items()}


@pytest.mark.parametrize("blocks", [1, 3])
def test_wave1_holds_the_plans_seven_variants(blocks):
  runs = _stages(f"wave1,seeds=2-3,blocks={blocks}")
  assert list(runs) == [f"{v}_s{s}" for s in (2, 3) for v in WAVE1]
  layers = models.kurtosis_layers(models.create_model(runs["bdbnn_s2"]["step2"], 10),
                                  (32, 32, 3), True)
  assert len(layers) == 6 * blocks
  for name, steps in runs.items():
    variant, seed = name.rsplit("_s", 1)
    weight, target, wdm = WAVE1[variant]
    assert [c.seed for c in steps.values()] == [int(seed)] * 2
    assert [c.model.precision for c in steps.values()] == ["binary_activations", "binary"]
    for step, config in steps.items():
      assert (config.loss.kurtosis.weight, config.loss.kurtosis.target) == (weight, target)
      assert config.loss.wdm.weight == (wdm if step == "step2" else 0.0)
      assert config.loss.kd.weight == (0.9 if step == "step2" else 0.0)
      assert config.eval_batch_size == 128 and config.eval_every_epochs == 1.0
      targets = tuple(config.loss.kurtosis.targets)
      if variant != "bdbnn_per_layer":
        assert targets == ()
        continue
      # Lower deeper: step 1 1.4 then 1.2 in the last stage; step 2 1.8, 1.4, 1.2 by stage.
      per_stage = 2 * blocks
      expected = ((1.4,) * 2 * per_stage + (1.2,) * per_stage if step == "step1"
                  else (1.8,) * per_stage + (1.4,) * per_stage + (1.2,) * per_stage)
      assert targets == expected and len(targets) == len(layers)


def test_the_calibration_waves_are_one_stage_with_cross_entropy_alone():
  for wave, precision, t_min in (("irnet", "binary", 1e-3), ("full_precision", "full", 1e-2)):
    runs = _stages(f"{wave},seeds=0-2")
    assert list(runs) == [f"{wave}_s{s}" for s in range(3)]
    for steps in runs.values():
      [(stage, config)] = steps.items()
      assert stage == "train" and config.model.precision == precision
      assert config.estimators.ede_t_min == t_min
      assert {t: config.loss[t].weight for t in ("ce", "kd", "kurtosis", "wdm")} == {
          "ce": 1.0, "kd": 0.0, "kurtosis": 0.0, "wdm": 0.0}
  steps = _stages("standardized,seeds=4")["bdbnn_standardized_s4"]
  assert [c.loss.kurtosis.view for c in steps.values()] == ["standardized"] * 2


@pytest.mark.parametrize("arg, says", [("wave2", "unknown wave 'wave2'"),
                                       ("wave1,seeds=a", "cannot read 'seeds=a'"),
                                       ("wave1,blocks=0", "cannot read 'blocks=0'"),
                                       ("wave1,lr=1", "cannot read 'lr=1'")])
def test_a_bad_argument_is_one_line(arg, says):
  with pytest.raises(ConfigValueError, match=says) as error:
    config_files.load("cifar10_experiment", arg)
  assert "\n" not in str(error.value)


def test_plain_is_the_recipes_baseline():
  """EXPERIMENT.md: 'plain' is bmd_jax/configs/cifar10_baseline.py (no kurtosis, no WDM, output
  distillation kept); each step's loss and model equal the baseline recipe's."""
  plain = _stages("wave1,seeds=0")["plain_s0"]
  baseline = {s.name: s.config for s in stages.stage_list(config_files.load("cifar10_baseline"))}
  assert list(plain) == list(baseline)
  for step, config in plain.items():
    mine, theirs = config.loss.to_dict(), baseline[step].loss.to_dict()
    assert mine["kurtosis"].pop("targets") == () and theirs["kurtosis"].pop("targets") == ()
    assert mine == theirs, step
    assert config.model.to_dict() == baseline[step].model.to_dict(), step
