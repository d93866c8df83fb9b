"""The one loop over a training's steps. A lone run (``train.TrainingLoop``) and a fused group
(``group.FusedLoop``) are both steppers: they differ in what a step and a boundary do, never in
when a boundary comes or in how the loop begins and ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from debiaslab.methods.base import StagePlan


class Stepper(Protocol):
    """What ``run_steps`` drives. ``plan``, ``start`` and ``seconds_before``: the stages, the step
    the session starts from and the training seconds of the sessions before (a group's runs share
    the first two and report the lead run's seconds); ``active``: false once no run is left."""

    plan: StagePlan
    start: int
    seconds_before: float
    active: object

    def open(self, progress_desc: str | None, t_loop: float) -> None:
        """Open the progress bars and put the models in training mode; the session's training
        seconds (its checkpoints record them) count from ``t_loop``."""

    def step(self, step: int, k: int) -> None:
        """Training step ``step`` (0-based), of stage ``k``."""

    def at_boundary(self, done: int, k: int) -> bool:
        """Whether anything reads the device after step ``done``."""

    def boundary(self, done: int, k: int) -> int:
        """Log, evaluate, select, end a stage, save; returns the stage of the next step."""

    def close(self) -> None:
        """Close the progress bars and the loggers."""


def run_steps(stepper: Stepper, progress_desc: str | None = None) -> float:
    """Step from ``stepper.start`` to the end of its plan, with a boundary wherever its cadence
    calls one; returns the training seconds of every session, this one and those before it."""
    t_loop = time.time()
    stepper.open(progress_desc, t_loop)
    try:
        k = stepper.plan.index(stepper.start)
        for step in range(stepper.start, stepper.plan.total):
            if not stepper.active:
                break  # every run of a group failed
            stepper.step(step, k)
            done = step + 1
            if stepper.at_boundary(done, k):
                k = stepper.boundary(done, k)
    finally:
        stepper.close()
    return stepper.seconds_before + time.time() - t_loop
