"""Where metrics go: metrics.jsonl in the workdir, the console, TensorBoard event files.

Only process 0 writes (every process computes the same global metrics). TensorBoard files
are written with tensorboardX, so no TensorFlow import is needed: one run per stage
(<workdir>/tensorboard/<stage>), with the stage's config as hparams and histograms of the
regularized layers' latent weights. On a terminal a tqdm bar shows progress and log lines are
written around it; elsewhere (SLURM, nohup, a pod's log) each line says how far the stage is
and its ETA.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Mapping, Sequence

import jax
import numpy as np
import tqdm
from tqdm.contrib import logging as tqdm_logging

from bmd_jax.core import objective
from bmd_jax.infra import paths

log = logging.getLogger("bmd_jax")


def console_logging() -> None:
  """Command lines' logging: bmd_jax's progress lines at INFO on stderr, the libraries' (Orbax
  logs every save through absl) only from WARNING."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  log.setLevel(logging.INFO)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.addHandler(handler)
  log.propagate = False


def console_keys(terms=()) -> tuple[str, ...]:
  """The metrics the console shows, in this order (every metric goes to the files): the loss,
  each term of the objective (objective.TERMS, so a new term shows without an edit here, then
  `terms`: those a run's loss config names by import path), and the rest."""
  names = dict.fromkeys([*objective.TERMS, *terms])
  return ("train/loss", *(f"train/{name}" for name in names), "train/accuracy",
          "train/learning_rate", "binary/flip_ratio", "train/images_per_second", "eval/loss",
          "eval/accuracy")


def interactive() -> bool:
  """A person watches a terminal: the progress bar shows there (process 0 only)."""
  return sys.stderr.isatty() and jax.process_index() == 0


def _console_loggers() -> list[logging.Logger]:
  """The loggers that print bmd_jax's lines to the console (tqdm must write those)."""
  def prints(logger):
    return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
               for h in logger.handlers)
  return [logger for logger in (log, logging.root) if prints(logger)]


@contextlib.contextmanager
def progress_bar(total: int, initial: int, stage: str):
  """A tqdm bar on an interactive terminal, with log lines written above it rather than into
  it; disabled elsewhere, where the log lines carry percent done and ETA instead."""
  shown = interactive()
  with contextlib.ExitStack() as stack:
    bar = stack.enter_context(tqdm.tqdm(total=total, initial=initial, desc=stage,
                                        disable=not shown, dynamic_ncols=True))
    if shown:
      stack.enter_context(tqdm_logging.logging_redirect_tqdm(loggers=_console_loggers()))
    yield bar


class StageProgress:
  """Percent done and ETA of a stage. The pace is measured from the first logged step on:
  the steps before it paid for compilation, which the remaining ones will not."""

  def __init__(self, total_steps: int, first_step: int):
    self.total = total_steps
    self._start = (first_step, time.time())
    self._first_event = None

  def describe(self, step: int) -> str:
    now = time.time()
    if self._first_event is None:
      self._first_event = (step, now)
    since = self._first_event if step > self._first_event[0] else self._start
    percent = 100.0 * step / max(self.total, 1)
    if step >= self.total:
      eta = "done"
    elif step > since[0]:
      seconds = (self.total - step) * (now - since[1]) / (step - since[0])
      eta = "ETA " + str(datetime.timedelta(seconds=round(seconds)))
    else:
      eta = "ETA unknown"
    return f"step {step}/{self.total} ({percent:.1f}%, {eta},"


def _console_line(step: int, epoch: float, metrics: Mapping[str, float],
                  progress: StageProgress | None = None, terms=()) -> str:
  parts = [f"{k.split('/')[-1] if k.startswith('train/') else k}={metrics[k]:.4g}"
           for k in console_keys(terms) if k in metrics]
  where = f"step {step} (" if progress is None else progress.describe(step) + " "
  where += f"epoch {epoch:.2f})"
  return f"{where}: " + " ".join(parts)


def _hparams(config, stage: str) -> dict:
  """The stage's config as flat TensorBoard hparams: numbers, strings and booleans as they
  are, anything else (tuples, None) as its text. stage_overrides is left out: the stage's
  config has its own already applied, and the others' would only crowd the table."""
  flat = {"stage": stage}
  def visit(prefix, value):
    if hasattr(value, "items"):
      for k, v in value.items():
        visit(f"{prefix}{k}.", v)
    else:
      kept = isinstance(value, (bool, int, float, str))
      flat[prefix[:-1]] = value if kept else str(value)
  fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  fields.pop("stage_overrides", None)
  visit("", fields)
  return flat


# The metrics the HParams dashboard shows beside each stage's config.
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "train/loss", "train/accuracy")


class _JsonLines:
  """metrics.jsonl: appended line by line on a local disk; on an object store (gs://), which
  cannot append, kept in memory and the whole file rewritten at each event (a few thousand
  short lines at most).

  A run killed while writing leaves a partial last line: it is cut on opening, so the next
  record starts a line of its own.
  """

  def __init__(self, path):
    self._path = path
    self._remote = paths.is_url(path)
    if self._remote:
      self._data = path.read_bytes() if path.exists() else b""
      self._file = None
    else:
      self._data = None
      self._file = open(path, "a", buffering=1)
    self._cut(_complete_length(self._read()), "a partial last line (a run killed mid-write)")

  def _read(self) -> bytes:
    if self._remote:
      return self._data
    self._file.flush()
    with open(self._path, "rb") as f:
      return f.read()

  def _cut(self, length: int, what: str) -> None:
    """Cuts the file to its first `length` bytes, logging `what` went, if anything did."""
    data = self._read()
    if length >= len(data):
      return
    if self._remote:
      self._data = data[:length]
      self._path.write_bytes(self._data)
    else:  # appends (O_APPEND) go on at the new end
      os.truncate(self._path, length)
    log.warning("%s: dropped %s", self._path, what)

  def resume(self, stage: str, step: int) -> None:
    """Drops the records that a run resuming `stage` at `step` writes again: those of the stage
    past the step, and everything after the first of them (a later stage's records, when this
    stage resumes before its end). They came from a run stopped before its next checkpoint;
    the resumed run recomputes those steps, so each step appears once, and none is lost."""
    data = self._read()
    length = _resumed_length(data, stage, step)
    dropped = data[length:].count(b"\n")
    self._cut(length, f"{dropped} records past step {step} of stage {stage} (written after the "
              "checkpoint this run resumes from)")

  def write(self, line: str) -> None:
    if self._remote:
      self._data += line.encode()
      self._path.write_bytes(self._data)
    else:
      self._file.write(line)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _complete_length(data: bytes) -> int:
  """The length of `data`'s complete lines (up to its last newline)."""
  return data.rfind(b"\n") + 1


def _resumed_length(data: bytes, stage: str, step: int) -> int:
  """The length of metrics.jsonl's lines before its first record of `stage` past `step`."""
  length = 0
  for line in data[:_complete_length(data)].split(b"\n")[:-1]:
    try:
      record = json.loads(line)
    except ValueError:  # a damaged line (e.g. glued by an older version): not ours to judge
      record = None
    if isinstance(record, dict) and record.get("stage", "") == stage:
      if isinstance(record.get("step"), int) and record["step"] > step:
        break
    length += len(line) + 1
  return length


def _mirror(local_dir: str, remote) -> None:
  """Copies TensorBoard's event files from their local folder to the URL workdir (tensorboardX
  writes local files; an object store holds whole files, so they are copied as they grow)."""
  for root, _, files in os.walk(local_dir):
    for name in files:
      source = os.path.join(root, name)
      target = remote / os.path.relpath(source, local_dir)
      target.parent.mkdir(parents=True, exist_ok=True)
      with open(source, "rb") as f:
        target.write_bytes(f.read())


class MetricWriter:
  """Writes one event (step, epoch, scalars) to every sink; a no-op on processes other than 0.

  `start_stage` opens the stage's TensorBoard run and its progress clock; events labelled
  with that stage go there.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, console: bool = True):
    self.active = jax.process_index() == 0
    self.console = console
    self.workdir = workdir
    self._jsonl = None
    self._summary_writer = None
    self._tb = {}  # stage -> its SummaryWriter
    self._progress = {}  # stage -> StageProgress
    self._terms = {}  # stage -> the loss terms its config adds by import path
    self._warned_histograms = False
    if not self.active:
      return
    root = paths.resolve(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self._jsonl = _JsonLines(root / "metrics.jsonl")
    # TensorBoard's events: in the workdir, or, for a URL workdir, in a local folder mirrored
    # there at each stage's end and at close.
    self._tb_root = (tempfile.mkdtemp(prefix="bmd_jax_tb_") if paths.is_url(root)
                     else os.fspath(root / "tensorboard"))
    self._tb_remote = root / "tensorboard" if paths.is_url(root) else None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # e.g. an offline GPU machine without it: metrics.jsonl still has all
        log.warning("tensorboardX is not installed: no TensorBoard event files "
                    "(metrics.jsonl and the console still get every metric)")
      else:
        self._summary_writer = SummaryWriter

  def _stage_tb(self, stage: str, first_step: int | None = None):
    """The stage's TensorBoard run, <workdir>/tensorboard/<stage>: each stage counts its own
    steps from 0, so stages sharing one run would draw over each other.

    Opened at `first_step`, the run's events past that step in earlier files (written by a run
    stopped before its next checkpoint) are hidden from TensorBoard (purge_step), as
    metrics.jsonl drops them. Those of the step itself stay: they were written before its
    checkpoint, and the resumed run does not write its scalars again (its histograms, yes).
    """
    if self._summary_writer is None:
      return None
    if stage not in self._tb:
      purge = None if first_step is None else first_step + 1
      self._tb[stage] = self._summary_writer(os.path.join(self._tb_root, stage),
                                             purge_step=purge)
    return self._tb[stage]

  def start_stage(self, stage: str, config, total_steps: int, first_step: int) -> None:
    """Starts the stage's progress clock and records its config as TensorBoard hparams.
    `first_step` is the step the stage resumes from: records past it are dropped (see
    _JsonLines.resume and _stage_tb)."""
    if not self.active:
      return
    self._progress[stage] = StageProgress(total_steps, first_step)
    self._terms[stage] = tuple(objective.terms(config.get("loss", {})))
    self._jsonl.resume(stage, first_step)
    tb = self._stage_tb(stage, first_step)
    if tb is not None:
      from tensorboardX.summary import hparams
      experiment, session_start, _ = hparams(_hparams(config, stage),
                                             dict.fromkeys(HPARAM_METRICS, 0.0))
      tb.file_writer.add_summary(experiment, first_step)
      tb.file_writer.add_summary(session_start, first_step)

  def write(self, step: int, epoch: float, metrics: Mapping[str, float]) -> None:
    if not self.active:
      return
    labels = {k: v for k, v in metrics.items() if isinstance(v, str)}  # e.g. the stage
    scalars = {k: float(v) for k, v in metrics.items() if k not in labels}
    record = {"step": int(step), "epoch": round(float(epoch), 4), **labels}
    # JSON has no NaN/inf; write them as strings so the line stays valid JSON.
    record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    stage = labels.get("stage", "")
    tb = self._stage_tb(stage)
    if tb is not None:
      for k, v in scalars.items():
        tb.add_scalar(k, v, int(step))
    terms = self._terms.get(stage, ())
    if self.console and any(k in scalars for k in console_keys(terms)):  # else: files only
      prefix = "".join(f"[{v}] " for v in labels.values())
      # On a terminal the bar shows progress; a log file needs it in the line itself.
      progress = None if interactive() else self._progress.get(stage)
      log.info(prefix + _console_line(step, epoch, scalars, progress, terms))

  def histograms(self, step: int, stage: str, params, paths: Sequence[str]) -> None:
    """Histograms of the latent weights at `paths` (the regularized layers): how their
    distribution turns bi-modal over training, BD-BNN's central picture."""
    tb = self._stage_tb(stage) if self.active else None
    if tb is None:
      return
    from bmd_jax.core import losses  # pylint: disable=import-outside-toplevel
    for path, weights in losses.kernels_at(params, paths).items():
      values = _on_host(weights)
      if values is None:
        self._warn_not_addressable()
        continue
      tb.add_histogram(f"latent_weights/{path}", values.ravel(), int(step))

  def _warn_not_addressable(self) -> None:
    if not self._warned_histograms:
      self._warned_histograms = True
      log.warning("latent-weight histograms skipped for layers split over several hosts "
                  "(config.fsdp): process 0 holds only part of them")

  def checkpoint_saved(self, stage: str, step: int, directory: str, finished: bool) -> None:
    """A line once a save is issued; `finished` only when the save has been waited for."""
    if self.active and self.console:
      how = "saved" if finished else "save started (asynchronous)"
      log.info("[%s] checkpoint of step %d %s in %s", stage, step, how, directory)

  def end_stage(self, stage: str, step: int, eval_metrics: Mapping[str, float],
                kept: str) -> None:
    """The stage's closing line (its final evaluation, the checkpoint kept) and, in
    TensorBoard, the end of its hparams session."""
    if not self.active:
      return
    if self.console:
      final = " ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()) or "no evaluation"
      log.info("[%s] stage finished at step %d: %s; %s", stage, step, final, kept)
    tb = self._stage_tb(stage)
    if tb is not None:
      from tensorboardX.summary import hparams
      _, _, session_end = hparams({}, {})
      tb.file_writer.add_summary(session_end, int(step))
      tb.flush()
      self._mirror_tensorboard()

  def _mirror_tensorboard(self) -> None:
    if self._tb_remote is not None:
      _mirror(self._tb_root, self._tb_remote)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    for tb in self._tb.values():
      tb.close()
    if self._tb:
      self._mirror_tensorboard()
    self._tb = {}


def _on_host(array) -> np.ndarray | None:
  """The whole array as numpy on this host, or None where this host holds only a part."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    if not array.is_fully_replicated:
      return None
    array = array.addressable_data(0)  # any local copy of a replicated array is the whole
  return np.asarray(jax.device_get(array), np.float32)
