"""bmd_jax's default run (the built-in digits) with a model, an estimator and a loss term of
one's own, named by import path. With the folder above custom_parts/ on PYTHONPATH:

    PYTHONPATH=examples python -m bmd_jax.main \
        --config=examples/custom_parts/config.py --workdir=runs/custom

Their options are fields this file adds, so the command line may change them like any other
(``--config.model.width=64``); a field no config file has is still refused.
"""

from bmd_jax.infra import config_files


def get_config():
  config = config_files.load("default.py")  # bmd_jax's configs/default.py

  # The model: an import path in place of a registered name; its own options (width, depth)
  # are fields of the model block, passed to its constructor with the binary fields.
  config.model.name = "custom_parts.net:TinyBinaryNet"
  config.model.width = 32
  config.model.depth = 3

  # The activations' estimator, by import path; its options are fields of `estimators`.
  config.model.input_quantizer = "custom_parts.estimator:NARROWING_STE"
  config.estimators.narrowing_width_start = 2.0
  config.estimators.narrowing_width_end = 1.0
  config.estimators.schedule_per = "step"  # the width moves every step

  # A loss term of one's own: its block names the function, its weight and its options.
  config.loss.outside_clip = {"term": "custom_parts.term:outside_clip", "weight": 0.1,
                              "margin": 1.0}

  config.num_epochs = 10.0
  return config
