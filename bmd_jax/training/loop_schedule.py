"""When the loop stops to log, evaluate or save, and so how many steps one dispatch may run.

Checkpoints are saved by policy, not at every epoch end (a CIFAR-10 epoch on a GPU is 3.5 s,
and a save with its checks took 9-14% of it):

- every `checkpoint_every_steps` steps and every `checkpoint_every_epochs` epochs (0: off);
- every `checkpoint_every_minutes` minutes of wall time (0: off), checked where a dispatch ends;
- always at the stage's last step, on SIGTERM and at the stop time (`stop_at_time`).

Orbax has save-decision policies of its own (FixedIntervalPolicy, ContinuousCheckpointing...),
but the loop must know the step-based saves before it dispatches, to end a dispatch there, so
the decision lives here as plain arithmetic on the step.
"""

from __future__ import annotations

import dataclasses
import math


def _next_multiple(step: int, every: int) -> int:
  """The first multiple of `every` after `step` (every <= 0: never)."""
  return (step // every + 1) * every if every > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The steps of one stage at which the loop must be on the host."""

  total_steps: int
  steps_per_epoch: int
  log_every: int
  eval_every: int  # steps
  save_every_steps: int  # <= 0: off
  save_every_epochs: float  # <= 0: off
  save_every_minutes: float  # <= 0: off
  max_steps_per_dispatch: int  # <= 0: up to the next event

  @classmethod
  def from_config(cls, config, steps_per_epoch: int, total_steps: int,
                  max_steps_per_dispatch: int) -> "Schedule":
    return cls(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        log_every=config.log_every_steps,
        eval_every=max(1, int(config.eval_every_epochs * steps_per_epoch)),
        save_every_steps=config.checkpoint_every_steps,
        save_every_epochs=config.get("checkpoint_every_epochs", 1.0),
        save_every_minutes=config.get("checkpoint_every_minutes", 0.0),
        max_steps_per_dispatch=max_steps_per_dispatch)

  def _save_every_epochs_steps(self) -> int:
    if self.save_every_epochs <= 0:
      return 0
    return max(1, int(round(self.save_every_epochs * self.steps_per_epoch)))

  def log_due(self, done: int) -> bool:
    return done % self.log_every == 0 or done == self.total_steps

  def eval_due(self, done: int) -> bool:
    return done % self.eval_every == 0 or done == self.total_steps

  def save_due(self, done: int, minutes_since_save: float) -> bool:
    """Whether the policy saves after step `done` (SIGTERM and the stop time aside)."""
    by_epochs = self._save_every_epochs_steps()
    return (done == self.total_steps
            or (self.save_every_steps > 0 and done % self.save_every_steps == 0)
            or (by_epochs > 0 and done % by_epochs == 0)
            or 0 < self.save_every_minutes <= minutes_since_save)

  def dispatch_end(self, step: int) -> int:
    """Where the dispatch starting at `step` ends: the next step at which anything is logged,
    evaluated or saved by steps, the stage's end, or the dispatch's own limit."""
    candidates = (
        self.total_steps,
        _next_multiple(step, self.log_every),
        _next_multiple(step, self.eval_every),
        _next_multiple(step, self.save_every_steps),
        _next_multiple(step, self._save_every_epochs_steps()),
        step + self.max_steps_per_dispatch if self.max_steps_per_dispatch > 0 else math.inf,
    )
    return int(min(candidates))
