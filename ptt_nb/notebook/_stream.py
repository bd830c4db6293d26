"""Monitor events → widget protocol messages (js/PROTOCOL.md), batched at most ~10 times per second.

The sink on the training hot path only sets a flag (metrics) or appends to a deque (rarer events); a flush
thread turns what changed into one ``data`` message with binary columnar buffers (float64 little-endian
steps and values per series). The full history stays in ``Monitor.history``: a view that (re)opens says
"ready" and gets ``init`` plus a min/max-decimated ``replace`` of every series, a zoom gets the visible range
re-decimated. Nothing here imports IPython or anywidget, so it is unit-testable with a plain ``send``.

Thread safety: the history is appended on the training thread and read here. A series is read by taking its
length first, then its arrays: growth copies the prefix into new arrays and appends write past the length,
so the prefix read is consistent (a rare in-place compaction is detected by ``Series.compacted``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ptt_nb.events import Alert, Metrics, RankStats, RunEnd, RunStart, json_safe
from ptt_nb.monitor._decimate import decimate_range, minmax_decimate
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._messages import (  # noqa: F401 - re-exported: the stream's message builders
    BACKTEST_MAX_MARKERS,
    BACKTEST_MESSAGE_CHARS,
    PROTOCOL_STATES,
    RANK_INTERVALS,
    STRAGGLER_RULE,
    alert_message,
    backtest_entry,
    rank_block,
    run_message,
    samples_per_s,
    status_message,
    straggler_ranks,
    stragglers,
)
from ptt_nb.notebook._protocol import AlertMsg, BacktestMsg, DataMsg, InitMsg, PanelSpec, SeriesEntry
from ptt_nb.rules._backtest import BacktestResult

log = logging.getLogger("ptt_nb")

BASELINE_PREFIX = "baseline:"  # a SeriesEntry split for the baseline's copy of a series (js/src/panels.js)
Send = Callable[[dict[str, Any], list[bytes]], None]

def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


class Stream:
    """A Monitor sink that sends protocol messages through ``send(content, buffers)`` from its own thread.

    Call ``handle(msg)`` with each message from the front-end (any thread); ``start()`` the flush thread,
    ``close()`` to detach. ``flush()`` may also be called directly (tests, end of run).
    """

    def __init__(self, monitor: Monitor, send: Send, *, interval: float = 0.1, max_points: int = 2000,
                 replay: bool = False, auto_ready_after: float | None = None) -> None:
        self.monitor = monitor
        self._send = send
        self.interval = interval
        self.max_points = max_points
        self.replay = replay
        self._events: deque[Any] = deque()
        self._requests: deque[dict[str, Any]] = deque()
        self._dirty = True
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one flush at a time
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sent: dict[tuple[str, str], tuple[int, int]] = {}  # (split, key) → (points sent, compacted)
        # rule id → Backtest object: markers of %%ptt backtests, display only (never in monitor.alerts). Replaced
        # as a whole dict (copy on write) by the kernel thread, read by the flush thread.
        self._backtest: dict[str, BacktestMsg] = {}
        self._backtest_changed = False
        self._panels_sig: str | None = None
        self._series: list[tuple[str, str]] = []
        self.ready = False  # a view asked for data (or we assumed one after auto_ready_after seconds)
        self.ready_via: str | None = None  # how the first init went out: "view" (its "ready") or "auto"
        self._displayed_at: float | None = None
        self._auto_ready_after = auto_ready_after
        self._last_flush = 0.0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.errors: list[str] = []
        self._unsubscribe = monitor.subscribe(self)

    # -- hot path (training thread): a flag or one deque append -----------------------------------------
    def __call__(self, event: Any) -> None:
        if event.__class__ is Metrics:
            self._dirty = True
        else:
            self._events.append(event)

    # -- from the front-end (any thread: with subshell routing, the kernel's subshell thread) -------------
    def handle(self, msg: dict[str, Any]) -> None:
        """Queue a request from the view; the flush thread answers it (so this returns at once)."""
        if isinstance(msg, dict) and msg.get("type") in ("ready", "zoom", "mute"):
            self._requests.append(msg)
            self._wake.set()

    def set_backtest(self, rule_id: str, backtest: BacktestResult | Iterable[Any]) -> None:
        """Show a backtest (a ``BacktestResult``, or its marker alerts: ``BacktestResult.from_alerts``) as markers of
        ``rule_id``, replacing that rule's earlier ones; no episode clears them. Display only: nothing reaches the
        Monitor (they did not happen)."""
        if not isinstance(backtest, BacktestResult):
            backtest = BacktestResult.from_alerts(rule_id, backtest)
        entry = backtest_entry(backtest)
        markers = dict(self._backtest)
        if entry is None:
            markers.pop(rule_id, None)
        else:
            entry["rule"] = str(rule_id)
            markers[rule_id] = entry
        self._backtest = markers
        self._backtest_changed = True
        self._wake.set()

    def clear_backtest(self, rule_id: str | None = None) -> None:
        """Remove one rule's backtest markers (all rules' when ``rule_id`` is None)."""
        if rule_id is None:
            self._backtest = {}
            self._backtest_changed = True
            self._wake.set()
        elif rule_id in self._backtest:
            self.set_backtest(rule_id, [])

    @property
    def backtest(self) -> list[BacktestMsg]:
        """The backtest markers a view currently gets (one Backtest object per rule)."""
        return list(self._backtest.values())

    def expect_view(self) -> None:
        """The widget was just displayed: if no "ready" arrives in time (comm messages held back while a cell
        blocks, e.g. no kernel subshells), send init anyway after ``auto_ready_after`` seconds."""
        self._displayed_at = time.monotonic()

    # -- thread -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ptt_nb-widget-flush", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._unsubscribe()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _active(self) -> bool:
        return self.monitor.run is not None and self.monitor.end_event is None

    def _loop(self) -> None:
        while not self._closed:
            waiting_view = self._displayed_at is not None and not self.ready
            self._wake.wait(self.interval if self._active() or waiting_view or self._dirty else 0.5)
            self._wake.clear()
            if self._closed:
                break
            wait = self._last_flush + self.interval - time.monotonic()
            if wait > 0:  # at most one batch per interval, requests included
                time.sleep(wait)
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the dashboard must never take training down
                message = f"{type(exc).__name__}: {exc}"
                if message not in self.errors:
                    self.errors.append(message)
                    log.warning("ptt_nb: dashboard update failed (%s)", message, exc_info=True)

    # -- building messages --------------------------------------------------------------------------------
    def _emit(self, content: InitMsg | DataMsg, buffers: list[bytes] | None = None) -> None:
        buffers = buffers or []
        self._send(dict(content), buffers)
        self.sent_messages += 1
        self.sent_bytes += sum(len(b) for b in buffers)

    def _panels(self) -> list[PanelSpec]:
        for _ in range(5):  # the training thread may add a key while we iterate the history's dict
            try:
                return self.monitor.panels()
            except RuntimeError:
                time.sleep(0.001)
        return self.monitor.panels()

    def _muted(self, rule: str) -> bool:
        state = self.monitor.engine.states.get(rule) if hasattr(self.monitor.engine, "states") else None
        return bool(getattr(state, "muted", False))

    def _alerts(self, alerts: list[Alert]) -> list[AlertMsg]:
        return [alert_message(a, self._muted(a.rule)) for a in alerts]

    def _read(self, key: str, split: str) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        series = self.monitor.history.get(key, split)
        if series is None:
            return None
        n = series.n
        compacted = series.compacted
        return series.steps[:n], series.values[:n], n, compacted

    def init_message(self) -> InitMsg:
        monitor = self.monitor
        return {
            "type": "init",
            "run": run_message(monitor),
            "panels": json_safe(self._panels()),
            "status": status_message(monitor, self.replay),
            "alerts": self._alerts(list(monitor.alerts)),
            "ranks": rank_block(monitor),
            "backtest": self.backtest,
        }

    def _set_panels(self, panels: list[PanelSpec]) -> None:
        seen: list[tuple[str, str]] = []
        for panel in panels:
            for s in panel.get("series", []):
                pair = (s.get("split", "train"), s["key"])
                if pair not in seen:
                    seen.append(pair)
        self._series = seen
        self._panels_sig = _signature(panels)

    def send_init(self) -> None:
        """``init`` then a decimated ``replace`` of every series: rebuilds any view from Python's state."""
        self._events.clear()
        self._dirty = False
        self._backtest_changed = False  # before the read: a change racing with it is sent again next flush
        init = self.init_message()
        self._set_panels(init["panels"])
        self._emit(init)
        entries: list[SeriesEntry] = []
        buffers: list[bytes] = []
        for split, key in self._series:
            got = self._read(key, split)
            if got is None:
                continue
            steps, values, n, compacted = got
            s, v = minmax_decimate(steps, values, max(1, self.max_points // 2))
            entries.append({"panel": None, "key": key, "split": split, "mode": "replace", "n": int(s.shape[0])})
            buffers += [_f64(s), _f64(v)]
            self._sent[(split, key)] = (n, compacted)
        self._baseline_entries(entries, buffers)
        self._emit(DataMsg(type="data", series=entries, alerts=[], status=None), buffers)
        self.ready = True

    def _baseline_entries(self, entries: list[SeriesEntry], buffers: list[bytes]) -> None:
        """The baseline run's series beside each plotted one (split ``baseline:<split>``, x in this run's steps):
        sent whole with every init, the baseline does not change."""
        baseline = self.monitor.baseline
        if baseline is None:
            return
        for split, key in self._series:
            b = baseline.series.get((key, split))
            if b is None:
                continue
            x, v = minmax_decimate(b.steps * baseline.scale, b.values, max(1, self.max_points // 2))
            entries.append({"panel": None, "key": key, "split": BASELINE_PREFIX + split, "mode": "replace",
                            "n": int(x.shape[0])})
            buffers += [_f64(x), _f64(v)]

    def zoom(self, panel_id: str, x0: float | None, x1: float | None) -> None:
        """Answer a zoom: that panel's series re-decimated to [x0, x1] (None: the whole run)."""
        panel = next((p for p in self._panels() if p.get("id") == panel_id), None)
        if panel is None:
            return
        entries: list[SeriesEntry] = []
        buffers: list[bytes] = []
        for s in panel.get("series", []):
            split = s.get("split", "train")
            got = self._read(s["key"], split)
            if got is None:
                continue
            steps, values, _n, _c = got
            st, va = decimate_range(steps, values, _finite_or_none(x0), _finite_or_none(x1), self.max_points)
            entries.append({"panel": panel_id, "key": s["key"], "split": split, "mode": "replace",
                            "n": int(st.shape[0])})
            buffers += [_f64(st), _f64(va)]
        if entries:
            self._emit(DataMsg(type="data", series=entries, alerts=[], status=None), buffers)

    def flush(self) -> None:
        """Answer queued requests, then send one ``data`` message with everything new since the last flush."""
        with self._lock:
            self._last_flush = time.monotonic()
            self._flush()

    def _flush(self) -> None:
        monitor = self.monitor
        alert_updates: list[Alert] = []
        while self._requests:
            req = self._requests.popleft()
            kind = req.get("type")
            if kind == "ready":
                self.ready_via = self.ready_via or "view"
                self.send_init()
            elif kind == "zoom" and self.ready:
                self.zoom(req.get("panel"), req.get("x0"), req.get("x1"))
            elif kind == "mute":
                rule, muted = str(req.get("rule", "")), bool(req.get("muted", True))
                monitor.mute(rule, muted)
                alert_updates += [a for a in monitor.alerts if a.rule == rule]
        if not self.ready:
            if (self._auto_ready_after is not None and self._displayed_at is not None
                    and time.monotonic() - self._displayed_at >= self._auto_ready_after):
                self.ready_via = "auto"
                self.send_init()
            return
        events = []
        while self._events:
            events.append(self._events.popleft())
        if any(e.__class__ is RunStart for e in events):  # a new (or resumed) run resets the view
            self.send_init()
            return
        dirty, self._dirty = self._dirty, False
        if dirty and _signature(self._panels()) != self._panels_sig:  # a new key: new panels, rebuild
            self.send_init()
            return
        entries: list[SeriesEntry] = []
        buffers: list[bytes] = []
        if dirty:
            for split, key in self._series:
                got = self._read(key, split)
                if got is None:
                    continue
                steps, values, n, compacted = got
                sent_n, sent_c = self._sent.get((split, key), (0, compacted))
                if n == sent_n and compacted == sent_c:
                    continue
                if compacted != sent_c or n < sent_n or n - sent_n > self.max_points:
                    s, v = minmax_decimate(steps, values, max(1, self.max_points // 2))
                    mode = "replace"
                else:
                    s, v = steps[sent_n:n], values[sent_n:n]
                    mode = "append"
                entries.append({"panel": None, "key": key, "split": split, "mode": mode, "n": int(s.shape[0])})
                buffers += [_f64(s), _f64(v)]
                self._sent[(split, key)] = (n, compacted)
        alert_updates += [e for e in events if e.__class__ is Alert]
        latest: dict[str, Alert] = {}
        for a in alert_updates:
            latest[a.id] = a
        ranks_changed = any(e.__class__ is RankStats for e in events) or any(
            a.rule == STRAGGLER_RULE for a in latest.values())
        status = status_message(monitor, self.replay) if (dirty or events or alert_updates) else None
        backtest_changed, self._backtest_changed = self._backtest_changed, False
        if not entries and not latest and status is None and not backtest_changed:
            return
        content = DataMsg(type="data", series=entries, alerts=self._alerts(list(latest.values())), status=status)
        if ranks_changed:  # absent "ranks" means unchanged; null would hide the heatmap
            content["ranks"] = rank_block(monitor)
        if backtest_changed:  # absent "backtest" means unchanged; present, it replaces every rule's markers
            content["backtest"] = self.backtest
        self._emit(content, buffers)
        if any(e.__class__ is RunEnd for e in events):
            log.debug("ptt_nb: dashboard sent the run end")


def _signature(panels: list[PanelSpec]) -> str:
    return repr([(p.get("id"), [(s["key"], s.get("split")) for s in p.get("series", [])]) for p in panels])


def _finite_or_none(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
