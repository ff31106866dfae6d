"""Issue 27's experiment on CIFAR-10 (docs/EXPERIMENT.md): one wave of runs as one run group
(docs/RUN_GROUPS.md), on cifar10.py's recipe and the device input path.

    python -m bmd_jax.main --config=cifar10_experiment:wave1,seeds=0-1 --workdir=runs/S/wave1_s0-1 \
        --config.num_epochs=25 --config.data_dir=../shared/data/cifar10-jpeg
    bench/gpu_run.sh --group wave1,seeds=0-1 --epochs 25 ...      # the same group in a GPU window

The argument is WAVE[,seeds=A-B or N][,blocks=N]:
- wave1: the seven two-step variants (plain, kurtosis_only, wdm_only, bdbnn, bdbnn_target1.2,
  bdbnn_target1.4, bdbnn_per_layer); 7 runs a seed.
- standardized: bdbnn_standardized (the kurtosis of what sign() sees; `loss.kurtosis.view` is
  not traced, so it is a group of its own).
- irnet: IR-Net 1W1A in one stage, cross-entropy only, EDE from 1e-3 (the calibration run
  against the PyTorch reference, bench/torch_irnet_train.py).
- full_precision: the same network with real weights and activations, one stage.
seeds: a range A-B (both included) or one seed; default 0-1. blocks: ResNet blocks per stage
(default the recipe's 3; dry runs use 1, and the per-layer targets follow it).
"""

import ml_collections

from bmd_jax.configs import _group_runs
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.infra.config_files import load_sibling

WAVES = ("wave1", "standardized", "irnet", "full_precision")


def parse(arg: str) -> tuple[str, tuple[int, ...], int]:
  """(wave, seeds, blocks per stage) from the recipe's argument; one line on a bad one."""
  wave, *options = [part.strip() for part in (arg or "wave1").split(",")]
  seeds, blocks = (0, 1), 3
  for option in options:
    key, _, value = option.partition("=")
    try:
      if key == "seeds":
        first, _, last = value.partition("-")
        seeds = tuple(range(int(first), int(last or first) + 1))
      elif key == "blocks":
        blocks = int(value)
      else:
        raise ValueError
    except ValueError:
      seeds = ()
    if not seeds or blocks < 1 or key not in ("seeds", "blocks"):
      raise ConfigValueError(f"cifar10_experiment: cannot read {option!r} in {arg!r}; the "
                             "argument is WAVE[,seeds=A-B][,blocks=N], e.g. wave1,seeds=0-1")
  if wave not in WAVES:
    raise ConfigValueError(f"cifar10_experiment: unknown wave {wave!r}; choose among "
                           f"{', '.join(WAVES)}")
  return wave, seeds, blocks


def one_stage(config: ml_collections.ConfigDict, precision: str) -> ml_collections.ConfigDict:
  """A single stage 'train' of the recipe's schedule: cross-entropy only."""
  config.stages = "train"
  config.stage_overrides = ml_collections.ConfigDict({"train": {}})
  config.teacher_precision = ""
  config.model.precision = precision
  config.loss.kurtosis.weight = 0.0
  config.loss.wdm.weight = 0.0
  config.loss.kd.weight = 0.0
  return config


def get_config(arg: str = "wave1"):
  wave, seeds, blocks = parse(arg)
  config = load_sibling(__file__, "cifar10.py")
  config.input_path = "device"  # a group's steps make their batches on the device
  config.eval_every_epochs = 1.0  # learning curves: the final and the best epoch
  config.eval_batch_size = 128  # IR-Net's drop_last figure covers 9,984 images
  stage_sizes = (blocks,) * 3
  if blocks != 3:
    config.model.stage_sizes = stage_sizes
  if wave == "wave1":
    # Room in both steps' overrides for bdbnn_per_layer's lists (empty: the scalar target).
    config.stage_overrides.step1.loss = {"kurtosis": {"targets": ()}}
    config.stage_overrides.step2.loss.kurtosis = {"targets": ()}
    variants = _group_runs.first_wave_variants(stage_sizes)
  elif wave == "standardized":
    config.loss.kurtosis.view = "standardized"
    variants = {"bdbnn_standardized": {}}
  elif wave == "irnet":
    one_stage(config, "binary")
    config.estimators.ede_t_min = 1e-3
    variants = {"irnet": {}}
  else:
    one_stage(config, "full")
    variants = {"full_precision": {}}
  config.runs = _group_runs.runs(variants, seeds)
  return config
