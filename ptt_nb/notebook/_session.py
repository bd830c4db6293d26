"""The kernel-wide registry behind ``%ptt``: which run is current (live, watched or replayed), its dashboard,
the background training job, the watcher, and the rules added with ``%%ptt`` in this session.

Changing a run's rule engine while another thread feeds it (``%ptt train`` or ``%ptt watch``) is done on the
feeding thread: ``submit`` queues the change and a sink applies it when the next log point arrives, just
before the engine evaluates it, so the engine is never modified in the middle of an evaluation. A run nobody
feeds any more is changed at once. Nothing here imports torch, transformers or IPython.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptt_nb.events import Event, Metrics, RunEnd, RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._training_job import TrainingJob
from ptt_nb.rules._engine import Rule

log = logging.getLogger("ptt_nb")


class Applier:
    """Applies queued changes to one Monitor on the thread that feeds it (a Monitor sink)."""

    def __init__(self, monitor: Monitor, feeder: threading.Thread | None, *, until_end: bool = True) -> None:
        self.monitor = monitor
        self.feeder = feeder
        self.until_end = until_end  # a callback's run stops being fed at its RunEnd; a watcher may resume
        self.lock = threading.Lock()
        self.pending: list[tuple[str, Callable[[], Any]]] = []
        self.errors: list[str] = []
        self.on_start: Callable[[], Any] | None = None  # run once at the first run_start (watched runs)

    def live(self) -> bool:
        """Another thread is feeding this monitor right now."""
        feeder = self.feeder
        if feeder is None or feeder is threading.current_thread() or not feeder.is_alive():
            return False
        return not (self.until_end and self.monitor.end_event is not None)

    def submit(self, label: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` now (True) or queue it for the feeding thread's next log point (False)."""
        with self.lock:
            if self.live():
                self.pending.append((label, fn))
                return False
        fn()
        return True

    def drain(self) -> None:
        with self.lock:
            ops, self.pending = self.pending, []
            for label, fn in ops:
                try:
                    fn()
                except Exception as exc:  # a failed change must never break the training thread
                    message = f"ptt_nb: {label} failed: {type(exc).__name__}: {exc}"
                    self.errors.append(message)
                    log.warning(message)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStart) and self.on_start is not None:
            on_start, self.on_start = self.on_start, None
            self.pending.insert(0, ("add this session's rules", on_start))
            self.drain()
        elif isinstance(event, (Metrics, RunEnd)) and self.pending:
            self.drain()


@dataclass
class RuleSource:
    """A rule added in this session; ``make`` builds a fresh instance (rules keep per-run state)."""

    id: str
    make: Callable[[], Rule]
    text: str = ""


class Session:
    """What ``%ptt`` knows. One instance per process (``SESSION``); all fields are optional."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.monitor: Monitor | None = None
        self.source = ""  # "live", "watch" or "replay"
        self.callback: Any = None
        self.dashboard: Any = None
        self.job: TrainingJob | None = None
        self.watcher: Any = None
        self.rules: dict[str, RuleSource] = {}
        self.registered = threading.Condition(self.lock)
        self.generation = 0
        self._appliers: weakref.WeakKeyDictionary[Monitor, Applier] = weakref.WeakKeyDictionary()

    # -- which run is current ---------------------------------------------------------------------------------
    def set_current(self, monitor: Monitor, source: str, *, callback: Any = None, dashboard: Any = None,
                    feeder: threading.Thread | None = None) -> Applier:
        with self.lock:
            self.monitor = monitor
            self.source = source
            self.callback = callback
            self.dashboard = dashboard
            applier = self._appliers.get(monitor)
            if applier is None:
                applier = Applier(monitor, feeder, until_end=source != "watch")
                self._appliers[monitor] = applier
                monitor.subscribe(applier)
            self.generation += 1
            self.registered.notify_all()
            return applier

    def applier(self, monitor: Monitor) -> Applier:
        with self.lock:
            applier = self._appliers.get(monitor)
            if applier is None:
                applier = Applier(monitor, None)
                self._appliers[monitor] = applier
            return applier

    def live(self, monitor: Monitor | None = None) -> bool:
        monitor = monitor or self.monitor
        return monitor is not None and self.applier(monitor).live()

    # -- the background training job (``%ptt train``) ----------------------------------------------------------
    def start_job(self, name: str, trainer: Any, callback: Any, restore: dict[str, Any]) -> TrainingJob:
        """Start ``trainer.train()`` on a background thread as this session's job; when it ends, changes queued for
        its run are applied."""
        job = TrainingJob(name=name, trainer=trainer, callback=callback, restore=restore,
                          on_end=lambda monitor: self.applier(monitor).drain())
        self.job = job
        job.start()
        return job

    def wait_job(self, timeout: float = 60.0) -> bool:
        """Block until the background training ends (True), or ``timeout`` seconds."""
        job = self.job
        return True if job is None else job.wait(timeout)

    # -- rules added with %%ptt -------------------------------------------------------------------------------
    def remember_rule(self, source: RuleSource) -> None:
        with self.lock:
            self.rules[source.id] = source

    def add_session_rules(self, monitor: Monitor) -> list[str]:
        """Give a newly started run the rules added earlier in this session (fresh instances)."""
        added = []
        for source in list(self.rules.values()):
            try:
                monitor.add_rule(source.make())
                added.append(source.id)
            except Exception as exc:  # a stale session rule must not stop a new run from starting
                monitor.warn(f"ptt_nb: session rule {source.id!r} was not added: {type(exc).__name__}: {exc}")
        return added


SESSION = Session()


def register_run(callback: Any) -> None:
    """Called by ``DiagnosticsCallback.on_train_begin`` (after the Monitor has started) on the training thread.

    Makes the run current for ``%ptt`` and gives it the rules added with ``%%ptt`` in this session.
    """
    monitor = getattr(callback, "monitor", None)
    if monitor is None:
        return
    SESSION.add_session_rules(monitor)
    SESSION.set_current(monitor, "live", callback=callback, dashboard=getattr(callback, "widget", None),
                        feeder=threading.current_thread())


def wait_for_run(after_generation: int, timeout: float, stop_waiting: Callable[[], bool] = lambda: False) -> bool:
    """Block until a run newer than ``after_generation`` registers (True) or ``timeout``/``stop_waiting``."""
    import time

    deadline = time.monotonic() + timeout
    with SESSION.registered:
        while SESSION.generation <= after_generation:
            left = deadline - time.monotonic()
            if left <= 0 or stop_waiting():
                return False
            SESSION.registered.wait(min(left, 0.05))
        return True


def wait_job(timeout: float = 60.0) -> bool:
    """Block until the background training started by ``%ptt train`` ends (for scripts and tests)."""
    return SESSION.wait_job(timeout)
