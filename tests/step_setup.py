"""One train step's pieces on the digits config, shared by the tests that run a step."""

import functools

import jax

from bmd_jax import input_pipeline, train


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
