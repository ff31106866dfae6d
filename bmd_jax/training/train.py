"""Training and evaluation: the train state, one jitted BD-BNN train step, the loop.

The step combines, as docs/METHOD.md section 5 writes it,

    L = w_CE * CE + w_KD * L_DL + beta * L_WDM + lambda_K * L_K   (loss.<term>.weight)

where L_DL (output distillation) and L_WDM (weight distribution mimicking) need a frozen
teacher, whose forward pass runs inside the same jitted step; its variables are an argument
of the step, not part of the optimized state, so they get no gradient and no update. WDM's
teacher (config.teacher) has the student's architecture; output distillation may instead use
a teacher of any registered architecture and precision (config.distill_teacher), as ReActNet
distils from a real ResNet-34. L_K covers the layers the model lists (models.kurtosis_layers).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from bmd_jax.core import bimodality, losses, objective, quantizers
from bmd_jax.infra import checkpoint, config_checks
from bmd_jax.training import (diagnostics, dispatch, estimator_schedule, evaluation,
                              input_pipeline, loop_schedule, metric_writers, run_group_config,
                              run_record, sharding, step_runner, workdir_lock)
from bmd_jax import models
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.training import stages as stages_lib
# Building a model and its variables is the models' knowledge; the loop uses it.
from bmd_jax.models import create_model, initialized, variable_shapes

log = logging.getLogger("bmd_jax")


class TrainState(train_state.TrainState):
  batch_stats: Any


# --- model, optimizer, schedule --------------------------------------------------

def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Warm-up (optional), then cosine or linear decay to 0 over the run, or constant."""
  total = num_train_steps(config, steps_per_epoch)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  decay_steps = max(1, total - warmup)
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
  elif config.lr_schedule == "linear":
    decay = optax.linear_schedule(config.learning_rate, 0.0, decay_steps)
  elif config.lr_schedule == "constant":
    decay = optax.constant_schedule(config.learning_rate)
  else:
    raise ConfigValueError(f"unknown lr_schedule {config.lr_schedule!r}; "
                           "choose 'cosine', 'linear' or 'constant'")
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def _weight_decay_mask(params, kernels_only: bool):
  """True for the leaves that decay: conv kernels only (rank 4), or every parameter."""
  return jax.tree_util.tree_map(lambda p: (p.ndim == 4) if kernels_only else True, params)


def create_optimizer(config: ml_collections.ConfigDict, learning_rate_fn):
  # L2 added to the gradient before the update, as PyTorch's SGD and Adam do in the recipes.
  decay = optax.add_decayed_weights(
      config.weight_decay,
      mask=functools.partial(_weight_decay_mask, kernels_only=config.weight_decay_kernels_only))
  if config.optimizer == "sgd":
    update = optax.sgd(learning_rate_fn, momentum=config.momentum)
  elif config.optimizer == "adam":
    update = optax.adam(learning_rate_fn)
  else:
    raise ConfigValueError(f"unknown optimizer {config.optimizer!r}; choose 'sgd' or 'adam'")
  return optax.chain(decay, update) if config.weight_decay else update


def create_train_state(rng, config, model, image_shape, learning_rate_fn,
                       params=None, batch_stats=None) -> TrainState:
  """A fresh train state; `params` and `batch_stats` given (e.g. from step 1) replace the init."""
  if params is None or batch_stats is None:
    init_params, init_stats = initialized(rng, model, image_shape)
    params = init_params if params is None else params
    batch_stats = init_stats if batch_stats is None else batch_stats
  _check_same_structure(variable_shapes(model, image_shape)["params"], params, "params")
  return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                           tx=create_optimizer(config, learning_rate_fn))


def _check_same_structure(expected, given, what):
  shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), t)
  if flax.core.unfreeze(shapes(expected)) != flax.core.unfreeze(shapes(given)):
    raise ConfigValueError(f"the given {what} do not match the model's: the tree or shapes differ")


def num_train_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * steps_per_epoch))


# The estimators' traced arguments: shared with the evaluator, so defined beside both.
estimator_args = estimator_schedule.estimator_args
estimators_in_use = estimator_schedule.estimators_in_use
schedule_progress = estimator_schedule.schedule_progress


# --- the steps ----------------------------------------------------------------------

def _accuracy(logits, labels, k: int):
  top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
  return jnp.mean(jnp.any(top == labels[:, None], axis=-1))


def _student_inputs(state: TrainState, batch: dict, teacher, distill_teacher, *, config,
                    steps_per_epoch, total_epochs, teacher_apply=None, distill_apply=None,
                    kurtosis_layers=None, wdm_layers=None):
  """(inputs_fn, estimator arguments): inputs_fn(params) -> (objective.Inputs, new batch
  statistics), the student's training-mode forward pass on the batch beside the frozen
  teachers' outputs."""
  epoch = state.step / steps_per_epoch
  est_args = estimator_args(config, schedule_progress(config, epoch, total_epochs))
  if distill_teacher is None:
    distill_teacher, distill_apply = teacher, teacher_apply
  teacher_logits = None
  if distill_teacher is not None:
    teacher_logits = distill_apply(jax.lax.stop_gradient(distill_teacher), batch["image"],
                                   train=False, estimator_args=est_args)

  def inputs_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        estimator_args=est_args, mutable=["batch_stats"])
    inputs = objective.Inputs(
        params=params, logits=logits, labels=batch["label"], epoch=epoch,
        teacher_params=None if teacher is None else teacher["params"],
        teacher_logits=teacher_logits, kurtosis_layers=kurtosis_layers, wdm_layers=wdm_layers)
    return inputs, updates["batch_stats"]

  return inputs_fn, est_args


def train_step(state: TrainState, batch: dict, teacher: dict | None,
               distill_teacher: dict | None = None, *, config, learning_rate_fn,
               steps_per_epoch: int, total_epochs: float, teacher_apply=None,
               distill_apply=None, kurtosis_layers=None, wdm_layers=None):
  """One optimizer step on a global batch; returns (new state, metrics).

  `teacher` is None or the frozen WDM teacher's variables {'params', 'batch_stats'} (the
  student's architecture), run in inference mode with `teacher_apply`; it also gives the
  distillation targets unless `distill_teacher` (variables of a model of any architecture,
  run with `distill_apply`) is given. `kurtosis_layers`: the parameter paths L_K covers, in
  order (models.kurtosis_layers); `wdm_layers`: those WDM compares (models.wdm_layers); None:
  the binarized layers. Metrics are global-batch means.
  """
  inputs_fn, est_args = _student_inputs(
      state, batch, teacher, distill_teacher, config=config, steps_per_epoch=steps_per_epoch,
      total_epochs=total_epochs, teacher_apply=teacher_apply, distill_apply=distill_apply,
      kurtosis_layers=kurtosis_layers, wdm_layers=wdm_layers)

  def loss_fn(params):
    inputs, new_stats = inputs_fn(params)
    total, parts, extras = objective.objective(config.loss, inputs)
    return total, (inputs.logits, new_stats, parts, extras)

  (loss, (logits, new_stats, parts, extras)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  updates = jax.tree_util.tree_map(jnp.subtract, new_state.params, state.params)
  metrics = {
      "train/loss": loss,
      **{f"train/{k}": v for k, v in parts.items()},
      "train/accuracy": _accuracy(logits, batch["label"], 1),
      "train/top5_accuracy": _accuracy(logits, batch["label"], 5),
      "train/learning_rate": learning_rate_fn(state.step),
      **{f"estimators/{k}": v for k, v in quantizers.scheduled_values(
          est_args, estimators_in_use(config)).items()},
      "norms/params": optax.tree.norm(state.params),
      "norms/grads": optax.tree.norm(grads),
      "norms/updates": optax.tree.norm(updates),
      **extras,
  }
  return new_state, metrics


def term_gradient_norms(state: TrainState, batch: dict, teacher: dict | None,
                        distill_teacher: dict | None = None, *, config, learning_rate_fn=None,
                        **step_options) -> dict:
  """What each loss term does to the weights: `grads/<term>`, the global l2 norm of the
  gradient of weight * term alone (0 for a term out of the total), and `grads/<term>_over_ce`,
  its ratio to cross-entropy's. Arguments as train_step's; the state is not updated. One
  forward pass, one backward pass per term (jax.jacrev), so the loop runs it per log
  interval, not per step (config.log_term_gradients)."""
  del learning_rate_fn  # train_step's argument; nothing is updated here
  inputs_fn, _ = _student_inputs(state, batch, teacher, distill_teacher, config=config,
                                 **step_options)
  per_term = jax.jacrev(lambda p: objective.weighted_terms(config.loss, inputs_fn(p)[0]))(
      state.params)
  norms = {name: optax.tree.norm(grads) for name, grads in per_term.items()}
  ratios = {f"grads/{name}_over_ce": norm / norms["ce"]
            for name, norm in norms.items() if name != "ce" and "ce" in norms}
  return {**{f"grads/{name}": norm for name, norm in norms.items()}, **ratios}


# --- the loop ---------------------------------------------------------------------------

@jax.jit
def binary_weight_stats(params, previous_signs, clip_value):
  """Signs of the latent kernels, the share that flipped since `previous_signs`, and the
  share of latent weights beyond the clip value (those get no STE gradient)."""
  kernels = losses.binarized_kernels(params)
  signs = {k: w >= 0 for k, w in kernels.items()}
  total = sum(w.size for w in kernels.values())
  flipped = sum(jnp.sum(signs[k] != previous_signs[k]) for k in kernels) / total
  beyond = sum(jnp.sum(jnp.abs(w) > clip_value) for w in kernels.values()) / total
  return signs, {"binary/flip_ratio": flipped, "binary/beyond_clip": beyond}


class NonFiniteLossError(FloatingPointError):
  pass


class Preempted(Exception):
  """Raised after SIGTERM (or before config.stop_at_time) once a checkpoint is written;
  cli.py exits 75 on it."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, raised once the in-flight save is settled; its message says what is kept."""


def _check_state_finite(state, step: int) -> None:
  """The loss is computed before the update: the updated state can overflow on its own."""
  if not checkpoint.all_finite(state):
    raise NonFiniteLossError(
        f"the train state after step {step} holds non-finite values (its loss was finite); "
        "not saved. Training stopped. Lower the learning rate or the loss weights.")


def _leave_loop(manager, error: BaseException, workdir: str, stage: str) -> BaseException:
  """The error to raise on a way out of the loop, once the in-flight save is settled: a
  message that says which checkpoint is really kept."""
  if isinstance(error, workdir_lock.WorkdirLostError):
    checkpoint.settle(manager)  # the save under way ends; its failure is not the news
    return error
  kept, save_error = checkpoint.settle(manager)
  directory = checkpoint.stage_directory(workdir, stage)
  if isinstance(error, KeyboardInterrupt) and not isinstance(error, Interrupted):
    return Interrupted(f"interrupted (Ctrl-C): {kept}; run the same command to resume")
  if isinstance(error, NonFiniteLossError):
    return NonFiniteLossError(f"{error} {kept[0].upper()}{kept[1:]}.")
  if save_error is not None or checkpoint.disk_full(error):
    return checkpoint.write_failure(save_error or error, directory)
  return error


@contextlib.contextmanager
def _saves_settled_on_exit(manager, workdir: str, stage: str):
  """Finishes (or, where it fails, abandons) the in-flight save when the loop ends, however it
  ends, and closes the manager; an error leaving the loop then says what is really kept."""
  try:
    yield
    _, save_error = checkpoint.settle(manager)
    if save_error is not None:
      raise save_error
  except BaseException as error:  # pylint: disable=broad-except
    replacement = _leave_loop(manager, error, workdir, stage)
    if replacement is error:
      raise  # unchanged, with its own cause
    raise replacement from (None if isinstance(error, (NonFiniteLossError, Interrupted))
                            else error)
  finally:
    manager.close()


class _SigtermFlag:
  """Remembers a SIGTERM (a TPU pod's preemption notice) until the loop can save."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _teacher_variables(config, stage, workdir, model_for_teacher, image_shape):
  """The frozen WDM teacher's {'params', 'batch_stats'} for a stage, or None without one.

  WDM compares the teacher's and the student's weights layer by layer, so this teacher is
  the student's architecture (at config.teacher_precision); another one is an error.
  """
  if not config.get("teacher"):
    return None
  try:
    return checkpoint.load_source(config, "teacher", workdir, stage,
                                  variable_shapes(model_for_teacher, image_shape))[1]
  except ValueError as e:
    raise ConfigValueError(
        f"stage {stage!r}: config.teacher={config.teacher!r} is the WDM teacher, which must be "
        f"the student's architecture ({config.model.name}): {e}. To distil from a model of "
        "another architecture, set config.distill_teacher (its checkpoint) and "
        "config.distill_teacher_model (its model section) instead") from e


def create_distill_teacher_model(config, num_classes: int) -> flax.linen.Module:
  """The distillation teacher's model: config.distill_teacher_model (any registered name and
  precision) or, when it names none, the student's architecture at config.teacher_precision."""
  fields = dict(config.get("distill_teacher_model") or {})
  if not fields.get("name"):
    return create_model(config, num_classes, config.get("teacher_precision"))
  return models.from_config(fields, num_classes)


def _distill_teacher(config, stage, workdir, num_classes, image_shape):
  """(model, variables) of a separate distillation teacher, or None (config.teacher distils)."""
  named = (config.get("distill_teacher_model") or {}).get("name")
  if not config.get("distill_teacher"):
    if named:
      raise ConfigValueError(f"stage {stage!r}: config.distill_teacher_model names {named!r} but "
                             "config.distill_teacher gives no checkpoint for it; set "
                             "--config.distill_teacher=<stage name or checkpoint folder>")
    return None
  model = create_distill_teacher_model(config, num_classes)
  return model, checkpoint.load_source(config, "distill_teacher", workdir, stage,
                                       variable_shapes(model, image_shape))[1]


def _check_teachers(config, stage):
  """A loss term that needs a teacher has one: an error, not a silently zero term."""
  objective.check_blocks(config.loss)
  wdm_weight, kd_weight = config.loss.wdm.weight, config.loss.kd.weight
  if wdm_weight and not config.get("teacher"):
    hint = (" (config.distill_teacher serves output distillation only)"
            if config.get("distill_teacher") else "")
    raise ConfigValueError(
        f"stage {stage!r}: loss.wdm.weight={wdm_weight} needs a WDM teacher of the "
        "student's architecture in config.teacher" + hint)
  if kd_weight and not (config.get("teacher") or config.get("distill_teacher")):
    raise ConfigValueError(f"stage {stage!r}: loss.kd.weight={kd_weight} needs a teacher: "
                           "config.distill_teacher or config.teacher")


def _read_checked(acc) -> dict[str, float]:
  """The means of the metrics summed in `acc` (one transfer); a non-finite loss in any of
  its steps stops training with that step and its loss terms."""
  host = dispatch.read(acc)
  if host["nonfinite_step"] >= 0:
    _raise_nonfinite(host["nonfinite_step"], host["at_nonfinite"])
  return host["means"]


def _check_no_nonfinite_step(acc) -> None:
  if dispatch.nonfinite_step(acc) >= 0:
    _read_checked(acc)


def _raise_nonfinite(step: int, metrics: dict) -> None:
  parts = {k: v for k, v in metrics.items() if k.startswith("train/")}
  raise NonFiniteLossError(f"non-finite loss at step {step}: {parts}. Training stopped. Lower "
                           "the learning rate or the loss weights.")


def train_stage(config, stage: str, workdir: str, datasets, mesh, writer, lock=None,
                on_resume_checked=None) -> dict:
  """Runs (or resumes) one stage to its last step; returns what it measured. `lock`: the
  workdir's (checked at each dispatch: a run that lost its workdir stops);
  `on_resume_checked()` is called once the stage's checkpoint (if any) passed the config
  check, before anything is written."""
  info = datasets.info
  steps_per_epoch = info.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigValueError(f"batch_size {config.batch_size} is larger than the {info.num_train} "
                           "training examples; lower it")
  total_steps = num_train_steps(config, steps_per_epoch)
  total_epochs = total_steps / steps_per_epoch

  # Input: this host's grain shard (resumable iterator) or batches made on the devices.
  train_input = input_pipeline.create_train_input(config, datasets, mesh, config.seed)
  train_iter = train_input.checkpointable

  # Model, optimizer and the optional frozen teacher.
  model = create_model(config, info.num_classes)
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  init = None
  if config.get("init_from"):
    _, init = checkpoint.load_source(config, "init_from", workdir, stage,
                                     variable_shapes(model, info.image_shape))
  state = create_train_state(jax.random.PRNGKey(config.seed), config, model, info.image_shape,
                             learning_rate_fn, **(init or {}))
  _check_teachers(config, stage)
  teacher_model = create_model(config, info.num_classes, config.get("teacher_precision"))
  teacher = _teacher_variables(config, stage, workdir, teacher_model, info.image_shape)
  distill_model, distill_teacher = (
      _distill_teacher(config, stage, workdir, info.num_classes, info.image_shape)
      or (None, None))
  # The layers L_K covers, in the original's definition order (checked against the targets).
  kurtosis_layers = models.kurtosis_layers(model, info.image_shape,
                                           config.loss.kurtosis.include_shortcuts)
  objective.kurtosis_targets(config.loss.kurtosis, kurtosis_layers)  # a wrong count fails here
  log.info("stage %s: kurtosis term covers %d layers: %s", stage, len(kurtosis_layers),
           ", ".join(kurtosis_layers))
  wdm_layers = None if teacher is None else tuple(models.wdm_layers(
      model, info.image_shape, config.loss.wdm.include_shortcuts))

  # Sharding: batches split over the data axis; the state replicated, or split with
  # config.fsdp; the teachers replicated.
  state_shardings = sharding.state_sharding(state, mesh, config.get("fsdp", False))
  state = sharding.place(state, state_shardings)
  teacher = None if teacher is None else sharding.replicate(teacher, mesh)
  if distill_teacher is not None:
    distill_teacher = sharding.replicate(distill_teacher, mesh)

  # Checkpoint: resume from the newest of this stage, if any.
  manager = checkpoint.create_manager(workdir, stage, config.checkpoint_keep)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state), train_iter,
                                        config)
  if restored is not None:
    state = restored[0]
    log.info("stage %s: resumed from step %d", stage, int(state.step))
  if on_resume_checked is not None:
    on_resume_checked()

  # The update steps, jitted over the mesh (dispatch.py: many steps a dispatch on the device
  # input path); the state and the metric sums are donated.
  step_fn = functools.partial(
      train_step, config=config, learning_rate_fn=learning_rate_fn,
      steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
      teacher_apply=teacher_model.apply, distill_apply=distill_model and distill_model.apply,
      kurtosis_layers=tuple(kurtosis_layers), wdm_layers=wdm_layers)
  runner = step_runner.StepRunner(config, step_fn, train_input, mesh, state_shardings, state,
                                  teacher, distill_teacher, info.image_shape)
  term_norms = None
  if config.get("log_term_gradients", True):
    term_norms = jax.jit(functools.partial(term_gradient_norms, **step_fn.keywords),
                         out_shardings=sharding.replicated_sharding(mesh))
  layer_stats = diagnostics.create(config, sharding.replicated_sharding(mesh))
  evaluate = evaluation.create_evaluator(config, datasets, mesh)
  schedule = loop_schedule.Schedule.from_config(config, steps_per_epoch, total_steps,
                                                runner.max_steps_per_dispatch)

  meta = {"stage": stage, "config": config.to_json()}
  best = dict((restored[1] if restored else {}).get("best_eval") or {})
  signs, _ = binary_weight_stats(state.params, losses_zero_signs(state.params), 1.0)
  first_step = int(state.step)
  log.info("stage %s: %s (%s) for %d steps (%.1f epochs of %d steps), from step %d, %s", stage,
           config.model.name, config.model.precision, total_steps, total_epochs,
           steps_per_epoch, first_step, runner.describe())
  writer.start_stage(stage, config, total_steps, first_step)
  _record_weights(writer, stage, first_step, steps_per_epoch, state.params, kurtosis_layers)
  eval_metrics, acc, done = {}, runner.empty(), first_step
  clock = step_runner.Clock(first_step, config.get("stop_at_time", 0.0))
  # Every way out of the loop (the end, an error, SIGTERM, Ctrl-C) settles the in-flight
  # save first, so the checkpoint a message names is the one on disk.
  with _SigtermFlag() as sigterm, \
       metric_writers.progress_bar(total_steps, first_step, stage) as bar, \
       _saves_settled_on_exit(manager, workdir, stage):
    while done < total_steps:
      if lock is not None:
        lock.check()
      end = schedule.dispatch_end(done)
      state, acc = runner(state, acc, done, end)
      bar.update(end - done)
      done = end
      if schedule.log_due(done):
        summary = _read_checked(acc)
        if layer_stats is not None:  # per layer, on the last step's batch and estimators
          progress = schedule_progress(config, (done - 1) / steps_per_epoch, total_epochs)
          summary.update(jax.device_get(layer_stats(state, runner.last_batch(done), signs,
                                                    progress)))
        signs, weight_stats = binary_weight_stats(state.params, signs,
                                                  config.estimators.ste_clip_value)
        summary.update(jax.device_get(weight_stats))
        if term_norms is not None:
          summary.update(jax.device_get(term_norms(state, runner.last_batch(done), teacher,
                                                   distill_teacher)))
        summary["train/images_per_second"] = clock.rate(done, config.batch_size)
        writer.write(done, done / steps_per_epoch, {"stage": stage, **summary})
        bar.set_postfix(loss=f"{summary['train/loss']:.3f}",
                        acc=f"{summary['train/accuracy']:.3f}")
        acc = runner.empty()
      # Evaluated before the save, so the best accuracy saved with it counts this step.
      if schedule.eval_due(done):
        eval_metrics = _with_best(evaluate(state), best, done / steps_per_epoch)
        writer.write(done, done / steps_per_epoch, {"stage": stage, **eval_metrics})
      stopping = (sigterm.received
                  or clock.stop_before(done, schedule.dispatch_end(done) - done, acc))
      if schedule.save_due(done, clock.minutes_since_save()) or stopping:
        _check_no_nonfinite_step(acc)  # never save a state that came from a non-finite step
        _check_state_finite(state, done)
        wait = stopping or done == total_steps
        checkpoint.save(manager, done, state, train_iter, {**meta, "best_eval": best},
                        wait=wait)
        clock.saved()
        writer.checkpoint_saved(stage, done, str(manager.directory), finished=wait)
        _record_weights(writer, stage, done, steps_per_epoch, state.params, kurtosis_layers)
      if stopping:
        why = "SIGTERM received" if sigterm.received else "the stop time is near"
        raise Preempted(f"{why}: stage {stage} saved at step {done} in "
                        f"{checkpoint.stage_directory(workdir, stage)}; run the same command "
                        "to resume")
  if first_step >= total_steps:
    # A finished stage still reports its final evaluation (e.g. to a rerun of the ablation).
    log.info("stage %s: already complete (step %d); evaluating it", stage, first_step)
    eval_metrics = _with_best(evaluate(state), best, first_step / steps_per_epoch)
  writer.end_stage(stage, int(state.step), eval_metrics,
                   checkpoint.kept_description(str(manager.directory)))
  return {"state": state, "eval": eval_metrics,
          "train_step_compilations": runner.compilations()}


def _record_weights(writer, stage, step, steps_per_epoch, params, layers) -> None:
  """The regularized layers' histograms and bi-modality measures (bimodality.py), at a
  stage's start (so the initial kurtosis is on record) and with each checkpoint."""
  writer.histograms(step, stage, params, layers)
  kernels = losses.kernels_at(params, layers)
  if all(getattr(w, "is_fully_addressable", True) for w in kernels.values()):
    writer.write(step, step / steps_per_epoch,
                 {"stage": stage, **bimodality.layer_report(params, layers)})


def _with_best(eval_metrics: dict, best: dict, epoch: float) -> dict:
  """eval_metrics with the best accuracy so far and its epoch (`best` is updated in place and
  saved with each checkpoint, so a resumed stage remembers it)."""
  if eval_metrics["eval/accuracy"] > best.get("accuracy", -1.0):
    best.update(accuracy=eval_metrics["eval/accuracy"], epoch=epoch)
  return {**eval_metrics, "eval/best_accuracy": best["accuracy"],
          "eval/best_epoch": best["epoch"]}


def losses_zero_signs(params):
  return {k: jnp.ones(w.shape, bool) for k, w in losses.binarized_kernels(params).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: input_pipeline.Datasets | None = None) -> dict:
  """Runs every stage of the config in order (see stages.py); returns each stage's results.

  Resumes automatically from the newest checkpoint in workdir. Raises Preempted after a
  SIGTERM (once the checkpoint is written) and NonFiniteLossError on a non-finite loss.
  `datasets` (from input_pipeline.create_datasets of a config with the same data fields)
  lets several runs share one decoded-image cache; by default they are made from `config`.
  A config with a run list (config.runs) trains its runs side by side in one program
  (run_group.py) and returns {run: {stage: results}}.
  """
  if run_group_config.is_group(config):
    from bmd_jax.training import run_group  # pylint: disable=g-import-not-at-top  (imports train)
    return run_group.train_group(config, workdir, datasets)
  config_checks.check(config)
  mesh = sharding.mesh_from_config(config)
  if datasets is None:
    datasets = input_pipeline.create_datasets(config)
  # One run per workdir: the lock is taken before anything is written. config.json and
  # run_info.json are written once the first stage's checkpoint passed the resume check, so a
  # refused resume leaves the run's own record.
  with workdir_lock.acquire(workdir) as lock:
    writer = metric_writers.MetricWriter(workdir)
    recorded = []

    def record_once():
      if not recorded:
        run_record.write(workdir, config)
        recorded.append(True)

    results = {}
    try:
      for stage in stages_lib.stage_list(config):
        sharding.check_batch_size(stage.config.batch_size, mesh)
        results[stage.name] = train_stage(stage.config, stage.name, workdir, datasets, mesh,
                                          writer, lock, record_once)
    finally:
      writer.close()
  return results
