"""The digits config shrunk, and one train step's pieces on it: shared by the tests."""

import functools

import jax

from bmd_jax.training import input_pipeline, train


def short_digits_config(steps: int, log_every: int, **fields):
  """configs/default.py (the built-in digits) shrunk to `steps` steps, no evaluation before
  the end; `fields` set other top-level fields (checkpoint_every_steps, ...)."""
  from bmd_jax.configs import default

  config = default.get_config()
  config.num_train_steps = steps
  config.log_every_steps = log_every
  config.eval_every_epochs = 100.0
  config.update(fields)
  return config


def step_setup(config, precision=None, total_epochs=5.0):
  """(model, fresh train state, the first training batch, the unjitted train step) with 20
  steps an epoch; the model in config.model.precision unless `precision` is given."""
  datasets = input_pipeline.create_datasets(config)
  model = train.create_model(config, datasets.info.num_classes, precision)
  lr_fn = train.create_learning_rate_fn(config, 20)
  state = train.create_train_state(jax.random.PRNGKey(0), config, model,
                                   datasets.info.image_shape, lr_fn)
  batch = next(iter(input_pipeline.create_train_loader(config, datasets.train, 0)))
  step = functools.partial(train.train_step, config=config, learning_rate_fn=lr_fn,
                           steps_per_epoch=20, total_epochs=total_epochs,
                           teacher_apply=model.apply)
  return model, state, batch, step
