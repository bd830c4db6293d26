"""Follow a run folder that another process is writing (a script, ``accelerate launch``, ``torchrun``) into a
Monitor, live, on a background thread.

Polling, not file-system notifications: one ``open``+``read`` of the new bytes every ``interval`` seconds
(0.2 s by default, i.e. 5 Hz, the widget's batch rate) costs next to nothing, and works on the network file
systems (NFS, Lustre, sshfs) where training runs write and where inotify (``watchfiles``) sees no remote
writes. ``_reader.Follower`` consumes complete lines only, so a half-written last line is read once it is
complete: no event is missed or read twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptt_nb._layout import EVENTS_FILE, find_run_dir
from ptt_nb.events import Event, RunEnd
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sources._reader import Follower

log = logging.getLogger("ptt_nb")

DEFAULT_INTERVAL = 0.2


def followed_run_monitor() -> Monitor:
    """A Monitor for a watched run: the writer's alerts are taken as recorded (its own rules already ran);
    only rules added here (``%%ptt``) are evaluated on the incoming metrics."""
    return Monitor(select=[], evaluate=True)


class Watcher:
    """Feeds ``monitor`` with the events appended to a run folder. ``start()`` runs it on a daemon thread;
    ``poll_once()`` is the same work done synchronously (tests, scripts)."""

    def __init__(self, path: str | os.PathLike[str], *, monitor: Monitor | None = None,
                 interval: float = DEFAULT_INTERVAL, on_tick: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.monitor = monitor if monitor is not None else followed_run_monitor()
        self.interval = interval
        self.on_tick = on_tick
        self.run_dir: Path | None = None
        self.follower: Follower | None = None
        self.events = 0
        self.error: str | None = None
        self.ended = threading.Event()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _follow(self) -> Follower | None:
        if self.follower is None:
            run_dir = find_run_dir(self.path)
            if run_dir is None:
                return None
            self.run_dir = run_dir
            self.monitor.run_dir = run_dir
            self.follower = Follower(run_dir)
        return self.follower

    def poll_once(self) -> list[Event]:
        """Read and apply what was appended since the last poll; returns those events."""
        follower = self._follow()
        if follower is None:
            return []
        events = follower.poll()
        for problem in follower.problems:
            self.monitor.warn(problem)
        follower.problems.clear()
        for event in events:
            self.monitor.apply(event)
            if isinstance(event, RunEnd):
                self.ended.set()
            elif event.kind == "run_start":
                self.ended.clear()  # a resumed segment
        self.events += len(events)
        return events

    def start(self) -> Watcher:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=f"ptt_nb-watch:{self.path.name}", daemon=True)
            self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                if self.on_tick is not None:
                    self.on_tick()
            except Exception as exc:  # report it where %ptt status can show it; stop following
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("ptt_nb: stopped watching %s: %s", self.path, self.error)
                return
            self._stop.wait(self.interval)
        try:
            self.poll_once()  # whatever arrived before the stop
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait_until_ended(self, timeout: float) -> bool:
        """Block until the watched run's ``run_end`` arrives (True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        while not self.ended.wait(0.05):
            if time.monotonic() > deadline or (self.thread is not None and not self.thread.is_alive()):
                return self.ended.is_set()
        return True

    def describe(self) -> str:
        where = self.run_dir or f"{self.path} (waiting for {EVENTS_FILE})"
        state = "following" if self.running else "stopped"
        extra = f"; error: {self.error}" if self.error else ""
        return f"{state} {where}: {self.events} events{extra}"


def watch(run_dir: str | os.PathLike[str], *, show: bool | None = None, interval: float = 0.2) -> Any:
    """Follow a run folder that child processes write (``notebook_launcher``, a ``torchrun`` in a terminal).

    ``run_dir`` is the folder given to ``DiagnosticsCallback(run_dir=...)``, or its parent (the newest run in
    it is followed, and a run that does not exist yet is waited for). In a notebook the dashboard is shown.
    Returns the ``Watcher``; ``.monitor`` holds the live state and ``.stop()`` ends the following.
    """
    watcher = Watcher(run_dir, interval=interval).start()
    if show is None:
        from ptt_nb.sources._environment import in_notebook

        show = in_notebook()
    if show:
        try:
            from ptt_nb.notebook._widget import show as show_dashboard

            watcher.dashboard = show_dashboard(watcher.monitor)  # type: ignore[attr-defined]
        except ImportError as exc:
            log.warning("ptt_nb: no dashboard (%s); the watcher still follows %s", exc, run_dir)
    return watcher
