"""``%ptt train``'s background run: ``trainer.train()`` on a daemon thread, owned by the session
(``Session.start_job`` / ``Session.job``). Nothing here imports IPython.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingJob:
    """``trainer.train()`` running on a background thread, started by ``%ptt train``."""

    name: str
    trainer: Any
    callback: Any
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    reported: bool = False  # the post_run_cell hook has shown how it ended
    announced: bool = False  # the training thread printed its one-line outcome
    restore: dict[str, Any] = field(default_factory=dict)  # callback options to put back when the run ends
    on_end: Callable[[Any], None] | None = None  # called with the run's Monitor (the session drains its changes)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Run ``trainer.train()`` on a new daemon thread."""
        self.thread = threading.Thread(target=run_job, args=(self,), name=f"ptt_nb-train:{self.name}", daemon=True)
        self.thread.start()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the run to end; True when it has (or never started)."""
        if self.thread is None:
            return True
        self.thread.join(max(0.0, timeout))
        return not self.thread.is_alive()


def job_outcome(job: TrainingJob) -> str:
    """One line: how a background run ended, with its postmortem when it crashed."""
    monitor = getattr(job.callback, "monitor", None)
    run_dir = getattr(job.callback, "run_dir", None)
    step = monitor.step if monitor is not None else "?"
    if job.error is None:
        state = monitor.state if monitor is not None else "finished"
        return f"ptt_nb: {job.name!r} ended at step {step}: {state}; run folder: {run_dir}"
    exc = job.error
    pm = Path(run_dir) / "postmortem.json" if run_dir is not None else None
    where = f"; postmortem: {pm}" if pm is not None and pm.exists() else ""
    return f"ptt_nb: {job.name!r} crashed at step {step}: {type(exc).__name__}: {exc}{where}"


def run_job(job: TrainingJob) -> None:
    """The training thread: ``train()``, then the callback's options put back and the outcome printed."""
    try:
        job.result = job.trainer.train()
    except BaseException as exc:  # noqa: BLE001 - its traceback is shown by the post_run_cell hook
        job.error = exc
    finally:
        for name, value in job.restore.items():  # a later plain trainer.train() behaves as configured
            setattr(job.callback, name, value)
        monitor = getattr(job.callback, "monitor", None)
        if monitor is not None and job.on_end is not None:
            job.on_end(monitor)
        try:  # at once, into whichever cell the kernel shows output for now (the traceback follows at a cell end)
            print(job_outcome(job), file=sys.stderr if job.error is not None else sys.stdout, flush=True)
            job.announced = True
        except Exception:  # noqa: BLE001 - a closed stream must not hide the outcome: the hook prints it then
            pass
