"""SIGTERM as a resumable stop: a time budget's stop, a scheduler's pre-emption or a sweep passing
either on ends a run like an interrupt (marked FAILED, resumable) instead of vanishing, after a
checkpoint at the step it is at where its steps have begun. The loop (``train.TrainingLoop``) and
a fused group's (``group.FusedLoop``) read ``Stop`` at their boundaries."""

from __future__ import annotations

import contextlib

from debiaslab.io import defer_exit


class Stop:
    """SIGTERM while a loop steps: the loop saves a full checkpoint at the step it is at and exits
    143, so the resumed run loses none of its steps. Before the steps (reading data, building,
    capturing) there is nothing new to save and the exit is at once; so is a second SIGTERM."""

    stepping = False  # a loop has begun its steps (``TrainingLoop.open_bar``)
    requested = False  # SIGTERM came while it stepped
    # taken up at the lead's next ``at_boundary``, so that every run of a fused group saves at
    # that one boundary, even when SIGTERM comes between two runs' boundaries
    stopping = False
    saved = False  # the stop's checkpoints are written

    @classmethod
    def reset(cls) -> None:
        cls.stepping = cls.requested = cls.stopping = cls.saved = False


@contextlib.contextmanager
def sigterm_as_exit():
    """SIGTERM ends the block as a ``SystemExit(143)``, after a checkpoint at the current step
    where the steps have begun (``Stop``); a handler only the main thread can install, so
    elsewhere the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if Stop.stepping and not Stop.requested:
            Stop.requested = True  # the loop saves and exits at its next step (at_boundary)
            return
        if not defer_exit(128 + signum):  # a checkpoint being written ends first
            raise SystemExit(128 + signum)

    Stop.reset()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        Stop.reset()
