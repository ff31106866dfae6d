"""Where metrics go: metrics.jsonl in the workdir, the console, TensorBoard event files.

Only process 0 writes (every process computes the same global metrics). TensorBoard files
are written with tensorboardX, so no TensorFlow import is needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Mapping

import jax

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


# The console shows these, in this order; every metric goes to the files.
CONSOLE_KEYS = ("train/loss", "train/ce", "train/kurtosis", "train/wdm", "train/kd",
                "train/accuracy", "train/learning_rate", "binary/flip_ratio",
                "train/images_per_second", "eval/loss", "eval/accuracy")


def _console_line(step: int, epoch: float, metrics: Mapping[str, float]) -> str:
  parts = [f"{k.split('/')[-1] if k.startswith('train/') else k}={metrics[k]:.4g}"
           for k in CONSOLE_KEYS if k in metrics]
  return f"step {step} (epoch {epoch:.2f}): " + " ".join(parts)


class MetricWriter:
  """Writes one event (step, epoch, scalars) to every sink; a no-op on processes other than 0."""

  def __init__(self, workdir: str, tensorboard: bool = True, console: bool = True):
    self.active = jax.process_index() == 0
    self.console = console
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # e.g. an offline GPU machine without it: metrics.jsonl still has all
        log.warning("tensorboardX is not installed: no TensorBoard event files "
                    "(metrics.jsonl and the console still get every metric)")
      else:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, epoch: float, metrics: Mapping[str, float]) -> None:
    if not self.active:
      return
    labels = {k: v for k, v in metrics.items() if isinstance(v, str)}  # e.g. the stage
    scalars = {k: float(v) for k, v in metrics.items() if k not in labels}
    record = {"step": int(step), "epoch": round(float(epoch), 4), **labels}
    # JSON has no NaN/inf; write them as strings so the line stays valid JSON.
    record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
    if self.console:
      prefix = "".join(f"[{v}] " for v in labels.values())
      log.info(prefix + _console_line(step, epoch, scalars))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
