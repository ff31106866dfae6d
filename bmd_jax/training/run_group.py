"""K runs trained side by side in one program (config.runs; docs/RUN_GROUPS.md).

The runs of the list (run_group_config.py) share the model, data, schedule and stages and
differ in traced values (run_group_step.py). Each stage stacks the runs' train states on a
leading run axis and dispatches their steps together; everything else is per run and as for
a single run (train.train_stage): each run's folder <workdir>/<run>/ gets its own config.json,
run_info.json, metrics.jsonl, TensorBoard files and checkpoints/<stage>/, so the tools read
one run's folder as they read any run. <workdir>/run_group.json lists the runs.

The loop shares train.py's helpers (teachers, records, saves settled on every way out). A
run's step 2 starts from, and is taught by, that run's own step 1. Resume stacks each
run's newest checkpoint; where a kill left the runs at different steps, the newer
checkpoints of the runs ahead are moved aside (<step>.ahead) and the group resumes from the
newest step every run has (the batches are a function of (seed, step), so the steps it
repeats come out the same; bit for bit on CPU); where there is none, it is refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging

import jax
import numpy as np

from bmd_jax import models
from bmd_jax.core import objective
from bmd_jax.data import on_device
from bmd_jax.infra import checkpoint, config_checks, paths
from bmd_jax.infra.config_checks import ConfigValueError
from bmd_jax.models import create_model, variable_shapes
from bmd_jax.training import (dispatch, evaluation, input_pipeline, loop_schedule, metric_writers,
                              run_group_config, run_group_step, run_record, sharding,
                              step_runner, train, workdir_lock)
from bmd_jax.training import stages as stages_lib

log = logging.getLogger("bmd_jax")
GROUP_FILE = "run_group.json"


def train_group(config, workdir: str, datasets=None) -> dict:
  """Trains the runs of config.runs, every stage in order; returns {run: {stage: results}}
  (results as train.train_stage's). Resumes, stops on SIGTERM or a non-finite loss as a
  single run does; the error names the run."""
  config_checks.check(config)
  runs = run_group_config.run_configs(config)
  if config.get("input_path", "grain") != "device" or config.get("fsdp", False):
    raise ConfigValueError("config.runs trains the runs in one program on the device input "
                           "path: set --config.input_path=device (and fsdp=False)")
  mesh = sharding.mesh_from_config(config)
  datasets = datasets or input_pipeline.create_datasets(config)
  folders = {name: str(paths.resolve(workdir) / name) for name in runs}
  results = {name: {} for name in runs}
  with contextlib.ExitStack() as stack:
    locks = [stack.enter_context(workdir_lock.acquire(workdir))]
    locks += [stack.enter_context(workdir_lock.acquire(folder)) for folder in folders.values()]
    writers = {name: metric_writers.MetricWriter(folders[name]) for name in runs}
    for writer in writers.values():
      stack.callback(writer.close)

    recorded = []

    def record_once():  # at every start, once the first stage's resume check passed
      if recorded:
        return
      for name, run in runs.items():
        run_record.write(folders[name], run)
      if jax.process_index() == 0:
        (paths.resolve(workdir) / GROUP_FILE).write_text(json.dumps(
            {"runs": list(runs), "traced_fields": run_group_config.TRACED_FIELDS}, indent=2))
      recorded.append(True)

    stage_lists = {name: stages_lib.stage_list(run) for name, run in runs.items()}
    for index, stage in enumerate(stage_lists[next(iter(runs))]):
      sharding.check_batch_size(stage.config.batch_size, mesh)
      configs = {name: stages[index].config for name, stages in stage_lists.items()}
      stage_results = _train_group_stage(configs, stage.name, folders, datasets, mesh,
                                         writers, locks, record_once)
      for name, result in stage_results.items():
        results[name][stage.name] = result
  return results


def _initial_state(config, stage, folder, model, image_shape, steps_per_epoch):
  """A run's fresh state: from its seed, or its init_from (its own earlier stage)."""
  init = None
  if config.get("init_from"):
    _, init = checkpoint.load_source(config, "init_from", folder, stage,
                                     variable_shapes(model, image_shape))
  learning_rate_fn = train.create_learning_rate_fn(config, steps_per_epoch)
  return train.create_train_state(jax.random.PRNGKey(config.seed), config, model, image_shape,
                                  learning_rate_fn, **(init or {}))


def _teachers(configs, stage, folders, info):
  """(teacher model, stacked WDM teachers or None, distillation model, stacked distillation
  teachers or None): each run's own (e.g. its step 1)."""
  first = next(iter(configs.values()))
  teacher_model = create_model(first, info.num_classes, first.get("teacher_precision"))
  teachers, distills, distill_model = [], [], None
  for name, config in configs.items():
    train._check_teachers(config, stage)
    teachers.append(train._teacher_variables(config, stage, folders[name], teacher_model,
                                            info.image_shape))
    found = train._distill_teacher(config, stage, folders[name], info.num_classes,
                                  info.image_shape)
    distill_model, distill = found or (None, None)
    distills.append(distill)
  stacked = lambda trees: None if trees[0] is None else run_group_step.stack(trees)
  return teacher_model, stacked(teachers), distill_model, stacked(distills)


def _restore(managers: dict, states: dict, configs: dict, stage: str):
  """{run: (state, meta) or None}, every run at the same step (see the module's docstring).

  A kill between the runs' saves can leave some runs one save ahead: their newer checkpoints
  are moved aside to <step>.ahead (kept, not deleted) and every run resumes at the newest step
  all of them have. Where no such step exists (checkpoint_keep=1, or a run with none while
  others have some: a run added to a group that has trained), nothing is moved and the group
  is refused in one line."""
  restored = {name: checkpoint.restore_latest(managers[name], checkpoint.abstract_like(
      states[name]), None, configs[name]) for name in managers}
  steps = {name: int(found[0].step) if found else None for name, found in restored.items()}
  if all(step is None for step in steps.values()):
    return restored
  fresh = [name for name, step in steps.items() if step is None]
  if fresh:
    raise ConfigValueError(
        f"run group, stage {stage}: run(s) {', '.join(fresh)} have no checkpoint while "
        f"{', '.join(n for n in steps if n not in fresh)} do: a group resumes only where every "
        "run has one. Train the new runs as a group of their own (another --workdir), or "
        "remove the others' checkpoints of this stage to train it afresh")
  common = min(steps.values())
  ahead = [name for name, step in steps.items() if step > common]
  cannot = [name for name in ahead if common not in managers[name].all_steps()]
  if cannot:
    raise ConfigValueError(
        f"run group, stage {stage}: the runs' newest checkpoints are at steps "
        f"{', '.join(f'{n} {s}' for n, s in steps.items())}, and {', '.join(cannot)} kept "
        f"none at step {common} (checkpoint_keep={configs[cannot[0]].checkpoint_keep}), so no "
        "step is common to all runs; nothing was changed. Resume these runs one by one from "
        "their own folders, or train the group afresh in another --workdir")
  for name in ahead:
    checkpoint.set_aside_after(managers[name], common, "ahead",
                               f"run {name} was saved past step {common}, where the group "
                               "resumes (the other runs were not)")
    restored[name] = checkpoint.restore_latest(managers[name], checkpoint.abstract_like(
        states[name]), None, configs[name])
    got = int(restored[name][0].step) if restored[name] else None
    if got != common:  # its checkpoint at `common` was damaged and set aside
      raise checkpoint.CheckpointDamagedError(
          f"run group, stage {stage}: run {name}'s checkpoint at step {common}, where the "
          f"group resumes, could not be read (its newest readable is {got}); its newer "
          f"checkpoints are kept as <step>.ahead in {managers[name].directory}")
  return restored


def _train_group_stage(configs: dict, stage: str, folders: dict, datasets, mesh, writers,
                       locks, on_resume_checked) -> dict:
  """One stage of every run, side by side; {run: {'state', 'eval'}}."""
  names = list(configs)
  first = configs[names[0]]
  info = datasets.info
  steps_per_epoch = info.num_train // first.batch_size
  total_steps = train.num_train_steps(first, steps_per_epoch)
  total_epochs = total_steps / steps_per_epoch
  model = create_model(first, info.num_classes)
  states = {name: _initial_state(configs[name], stage, folders[name], model, info.image_shape,
                                 steps_per_epoch) for name in names}
  teacher_model, teachers, distill_model, distills = _teachers(configs, stage, folders, info)
  kurtosis_layers = tuple(models.kurtosis_layers(model, info.image_shape,
                                                 first.loss.kurtosis.include_shortcuts))
  wdm_layers = None if teachers is None else tuple(models.wdm_layers(
      model, info.image_shape, first.loss.wdm.include_shortcuts))
  values = run_group_step.traced_values(list(configs.values()), kurtosis_layers)

  # Checkpoints: one manager per run folder; resume at the runs' common step.
  managers = {name: checkpoint.create_manager(folders[name], stage, first.checkpoint_keep)
              for name in names}
  restored = _restore(managers, states, configs, stage)
  states = {name: found[0] if found else states[name] for name, found in restored.items()}
  on_resume_checked()

  # The program: every run's step under its values, the states stacked and replicated (the
  # data axis splits each run's batch).
  replicated = sharding.replicated_sharding(mesh)
  stacked = sharding.replicate(run_group_step.stack_states([states[n] for n in names]), mesh)
  teachers, distills, values = (None if t is None else sharding.replicate(t, mesh)
                                for t in (teachers, distills, values))
  step_options = dict(steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
                      teacher_apply=teacher_model.apply,
                      distill_apply=distill_model and distill_model.apply,
                      kurtosis_layers=kurtosis_layers, wdm_layers=wdm_layers)
  limit = step_runner.dispatch_limit(first, mesh.devices.flat[0].platform)
  program, step_fn, batches_fn = run_group_step.compiled_group_steps(
      first, mesh, limit != 1, **step_options)
  split = on_device.upload_source(datasets.train, mesh)
  metric_shapes = jax.eval_shape(step_fn, stacked, jax.eval_shape(
      batches_fn, split, 0, values["seed"]), teachers, distills, values)[1]
  empty = lambda: jax.device_put(
      run_group_step.empty_accumulators(metric_shapes, len(names)), replicated)
  term_norms = None
  if first.get("log_term_gradients", True):
    term_norms = jax.jit(run_group_step.group_term_gradient_norms(first, **step_options),
                         out_shardings=replicated)
  layer_stats = None
  if first.get("log_layer_diagnostics", True):
    layer_stats = jax.jit(run_group_step.group_layer_diagnostics(first),
                          out_shardings=replicated)
  # Evaluation reads no traced value (the estimators' forward is sign()): one evaluator.
  evaluate = evaluation.create_evaluator(first, datasets, mesh)
  schedule = loop_schedule.Schedule.from_config(first, steps_per_epoch, total_steps, limit)

  first_step = int(stacked.step[0])
  best = {name: dict((found[1] if found else {}).get("best_eval") or {})
          for name, found in restored.items()}
  signs = {name: train.binary_weight_stats(
      states[name].params, train.losses_zero_signs(states[name].params), 1.0)[0]
           for name in names}
  log.info("stage %s: %d runs in one program (%s), %s (%s) for %d steps, from step %d", stage,
           len(names), ", ".join(names), first.model.name, first.model.precision, total_steps,
           first_step)
  for name in names:
    writers[name].start_stage(stage, configs[name], total_steps, first_step)
    train._record_weights(writers[name], stage, first_step, steps_per_epoch,
                          states[name].params, kurtosis_layers)
  eval_metrics = {name: {} for name in names}
  acc, done = empty(), first_step
  clock = step_runner.Clock(first_step, first.get("stop_at_time", 0.0))
  with contextlib.ExitStack() as exits:
    sigterm = exits.enter_context(train._SigtermFlag())
    bar = exits.enter_context(metric_writers.progress_bar(total_steps, first_step, stage))
    for name in names:
      exits.enter_context(train._saves_settled_on_exit(managers[name], folders[name], stage))
    while done < total_steps:
      for lock in locks:
        lock.check()
      end = schedule.dispatch_end(done)
      stacked, acc = program(stacked, acc, split, teachers, distills, values, np.int32(done),
                             np.int32(end - done))
      bar.update(end - done)
      done = end
      epoch = done / steps_per_epoch
      if schedule.log_due(done):
        summaries = _read_checked(acc, names)
        last_batches = batches_fn(split, done - 1, values["seed"])
        if term_norms is not None:
          norms = jax.device_get(term_norms(stacked, last_batches, teachers, distills, values))
        if layer_stats is not None:  # per layer, on each run's last batch and estimators
          per_layer = jax.device_get(layer_stats(
              stacked, last_batches, run_group_step.stack([signs[n] for n in names]),
              train.schedule_progress(first, (done - 1) / steps_per_epoch, total_epochs),
              values))
        rate = clock.rate(done, first.batch_size)
        for index, name in enumerate(names):
          params = run_group_step.unstack(stacked.params, index)
          signs[name], weight_stats = train.binary_weight_stats(
              params, signs[name], first.estimators.ste_clip_value)
          summary = {**summaries[name], **jax.device_get(weight_stats),
                     "train/images_per_second": rate,
                     "train/images_per_second_all_runs": rate * len(names)}
          if term_norms is not None:
            summary.update(run_group_step.unstack(norms, index))
          if layer_stats is not None:
            summary.update(run_group_step.unstack(per_layer, index))
          writers[name].write(done, epoch, {"run": name, "stage": stage, **summary})
        acc = empty()
      if schedule.eval_due(done):
        for index, name in enumerate(names):
          eval_metrics[name] = train._with_best(
              evaluate(run_group_step.unstack(stacked, index)), best[name], epoch)
          writers[name].write(done, epoch, {"run": name, "stage": stage, **eval_metrics[name]})
      stopping = (sigterm.received
                  or clock.stop_before(done, schedule.dispatch_end(done) - done, acc))
      if schedule.save_due(done, clock.minutes_since_save()) or stopping:
        _read_checked(acc, names)  # never save a state that came from a non-finite step
        wait = stopping or done == total_steps
        for index, name in enumerate(names):
          state = run_group_step.unstack(stacked, index)
          train._check_state_finite(state, done)
          checkpoint.save(managers[name], done, state, None,
                          {"stage": stage, "config": configs[name].to_json(),
                           "best_eval": best[name]}, wait=wait)
          writers[name].checkpoint_saved(stage, done, str(managers[name].directory),
                                         finished=wait)
          train._record_weights(writers[name], stage, done, steps_per_epoch, state.params,
                                kurtosis_layers)
        clock.saved()
      if stopping:
        why = "SIGTERM received" if sigterm.received else "the stop time is near"
        raise train.Preempted(f"{why}: stage {stage} of runs {', '.join(names)} saved at step "
                              f"{done} in their folders; run the same command to resume")
  results = {}
  for index, name in enumerate(names):
    state = run_group_step.unstack(stacked, index)
    if first_step >= total_steps:
      eval_metrics[name] = train._with_best(evaluate(state), best[name], done / steps_per_epoch)
    writers[name].end_stage(stage, done, eval_metrics[name],
                            checkpoint.kept_description(str(managers[name].directory)))
    results[name] = {"state": state, "eval": eval_metrics[name]}
  return results


def _read_checked(acc, names) -> dict[str, dict[str, float]]:
  """Each run's metric means (one transfer for all); a non-finite loss in any run stops the
  group with that run, its step and its loss terms."""
  host = jax.device_get(acc)
  summaries = {}
  for index, name in enumerate(names):
    read = dispatch.read(run_group_step.unstack(host, index))
    if read["nonfinite_step"] >= 0:
      try:
        train._raise_nonfinite(read["nonfinite_step"], read["at_nonfinite"])
      except train.NonFiniteLossError as error:
        raise train.NonFiniteLossError(f"run {name}: {error}") from None
    summaries[name] = read["means"]
  return summaries
