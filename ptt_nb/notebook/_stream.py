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
from collections.abc import Callable
from typing import Any

import numpy as np

from ptt_nb.events import Alert, Metrics, RankStats, RunEnd, RunStart
from ptt_nb.monitor._decimate import decimate_range, minmax_decimate
from ptt_nb.monitor._monitor import Monitor

log = logging.getLogger("ptt_nb")

Send = Callable[[dict[str, Any], list[bytes]], None]

PROTOCOL_STATES = ("running", "stopped_by_user", "auto_stopped", "crashed", "finished", "replay")
RANK_INTERVALS = 200  # newest rank-stats intervals sent to the heatmap
BACKTEST_MAX_MARKERS = 500  # per rule: a rule that would fire on every step must not flood the view
BACKTEST_MESSAGE_CHARS = 200


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf (Jupyter's packer rejects them): None for non-finite floats, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    return value


def _num_text(value: Any) -> Any:
    """Evidence values: keep NaN/Inf visible as text (they are the point of a non-finite alert)."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return _clean(value)


def alert_message(alert: Alert, muted: bool) -> dict[str, Any]:
    """An events.Alert as the protocol's Alert object (reference becomes {text, url})."""
    return {
        "id": alert.id,
        "rule": alert.rule,
        "severity": alert.severity,
        "step": alert.step,
        "message": alert.message,
        "evidence": {k: _num_text(v) for k, v in (alert.evidence or {}).items()},
        "action": alert.action,
        "reference": {"text": alert.reference or "", "url": alert.url},
        "state": alert.state,
        "resolved_step": alert.resolved_step,
        "muted": muted,
        "panels": list(alert.panels or []),
    }


def samples_per_s(monitor: Monitor) -> float | None:
    """Throughput in samples/s from steps/s and the recorded batch settings; None when not known."""
    rate = monitor.status().get("steps_per_s")
    config = monitor.run.config if monitor.run else {}
    per_device = config.get("per_device_train_batch_size")
    if not rate or not per_device:
        return None
    accum = config.get("gradient_accumulation_steps") or 1
    world = monitor.run.world_size if monitor.run else 1
    return float(rate * per_device * accum * max(1, world or 1))


def status_message(monitor: Monitor, replay: bool = False) -> dict[str, Any]:
    status = dict(monitor.status())
    state = status.get("state")
    if state not in PROTOCOL_STATES:  # "idle": no run header yet
        state = "running"
    if replay and monitor.end_event is None:
        state = "replay"
    status["state"] = state
    status["samples_per_s"] = samples_per_s(monitor)
    return _clean(status)


def run_message(monitor: Monitor) -> dict[str, Any]:
    run = monitor.run
    if run is None:
        return {"trainer": "", "algorithm": "", "run_dir": str(monitor.run_dir or ""), "world_size": 1}
    return _clean({
        "run_id": run.run_id,
        "trainer": run.trainer,
        "algorithm": run.algorithm,
        "run_dir": str(monitor.run_dir or ""),
        "world_size": run.world_size,
        "max_steps": run.max_steps,
        "config": run.config,
        "versions": run.versions,
        "resumed_from_step": run.resumed_from_step,
    })


def stragglers(metric_names: list[str], values: dict[str, list[list[float]]], window: int = 5,
               ratio: float = 1.2) -> list[int]:
    """Ranks whose compute time (not step time: collectives equalise that) is > ``ratio`` x the median.

    Uses the newest ``window`` intervals of the first metric naming compute time, else step time.
    """
    name = next((m for m in metric_names if "compute" in m), None) or next(
        (m for m in metric_names if "step" in m and "time" in m), None)
    if name is None or not values.get(name):
        return []
    rows = np.asarray(values[name][-window:], dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] < 2:
        return []
    per_rank = np.nanmedian(rows, axis=0) if np.isfinite(rows).any() else None
    if per_rank is None:
        return []
    median = float(np.nanmedian(per_rank))
    if not math.isfinite(median) or median <= 0:
        return []
    return [int(r) for r in np.flatnonzero(per_rank > ratio * median)]


STRAGGLER_RULE = "straggler_rank"


def straggler_ranks(monitor: Monitor, metric_names: list[str], values: dict[str, list[list[float]]]) -> list[int]:
    """The heatmap's flagged ranks agree with the alert feed: the ranks of active ``straggler_rank`` alerts (that
    rule gates on measured jitter). Only where no such rule ran (a replay without re-evaluation and no recorded
    alert) does the plain ratio test decide."""
    alerts = [a for a in monitor.alerts if a.rule == STRAGGLER_RULE]
    states = getattr(monitor.engine, "states", {})
    if not alerts and STRAGGLER_RULE not in states:
        return stragglers(metric_names, values)
    ranks = set()
    for a in alerts:
        rank = (a.evidence or {}).get("rank")
        if a.state == "active" and isinstance(rank, (int, float)) and math.isfinite(rank):
            ranks.add(int(rank))
    return sorted(ranks)


def rank_block(monitor: Monitor, intervals: int = RANK_INTERVALS) -> dict[str, Any] | None:
    """The heatmap's data: newest ``intervals`` RankStats as metric → [[per-rank values] per interval]."""
    stats = list(monitor.rank_stats[-intervals:])
    world = max((s.world_size for s in stats), default=monitor.run.world_size if monitor.run else 1)
    if world <= 1 or not stats:
        return None
    names: list[str] = []
    for s in stats:
        for name in s.per_rank:
            if name not in names:
                names.append(name)
    values: dict[str, list[list[float | None]]] = {}
    for name in names:
        rows = []
        for s in stats:
            row = list(s.per_rank.get(name, []))[:world]
            row += [float("nan")] * (world - len(row))
            rows.append(row)
        values[name] = rows
    return {
        "world_size": world,
        "metric_names": names,
        "steps": [s.step for s in stats],
        "values": _clean(values),
        "stragglers": straggler_ranks(monitor, names, values),
    }


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def backtest_entry(rule_id: str, alerts: list[Any]) -> dict[str, Any] | None:
    """A rule's backtest firings (``events.Alert``-like objects or dicts) as the protocol's Backtest object, None
    when there are none. Markers of one rule share its panels; severity is the highest among its firings."""
    firings = sorted((a for a in alerts if isinstance(_get(a, "step"), (int, float))), key=lambda a: _get(a, "step"))
    if not firings:
        return None
    shown = firings[:BACKTEST_MAX_MARKERS]
    panels: list[str] = []
    for a in firings:
        for pid in _get(a, "panels") or []:
            if pid not in panels:
                panels.append(str(pid))
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    severity = min((str(_get(a, "severity") or "low") for a in firings), key=lambda s: rank.get(s, 4))
    return _clean({
        "rule": str(rule_id),
        "severity": severity,
        "panels": panels,
        "steps": [int(_get(a, "step")) for a in shown],
        "resolved_steps": [_get(a, "resolved_step") for a in shown],
        "messages": [str(_get(a, "message") or "")[:BACKTEST_MESSAGE_CHARS] for a in shown],
        "total": len(firings),
    })


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
        self._backtest: dict[str, dict[str, Any]] = {}
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

    def set_backtest(self, rule_id: str, alerts: list[Any]) -> None:
        """Show ``alerts`` (a backtest's firings) as markers of ``rule_id``, replacing that rule's earlier ones; an
        empty list clears them. Display only: nothing reaches the Monitor (they did not happen)."""
        entry = backtest_entry(rule_id, alerts)
        markers = dict(self._backtest)
        if entry is None:
            markers.pop(rule_id, None)
        else:
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
    def backtest(self) -> list[dict[str, Any]]:
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
    def _emit(self, content: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        buffers = buffers or []
        self._send(content, buffers)
        self.sent_messages += 1
        self.sent_bytes += sum(len(b) for b in buffers)

    def _panels(self) -> list[dict[str, Any]]:
        for _ in range(5):  # the training thread may add a key while we iterate the history's dict
            try:
                return self.monitor.panels()
            except RuntimeError:
                time.sleep(0.001)
        return self.monitor.panels()

    def _muted(self, rule: str) -> bool:
        state = self.monitor.engine.states.get(rule) if hasattr(self.monitor.engine, "states") else None
        return bool(getattr(state, "muted", False))

    def _alerts(self, alerts: list[Alert]) -> list[dict[str, Any]]:
        return [alert_message(a, self._muted(a.rule)) for a in alerts]

    def _read(self, key: str, split: str) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        series = self.monitor.history.get(key, split)
        if series is None:
            return None
        n = series.n
        compacted = series.compacted
        return series.steps[:n], series.values[:n], n, compacted

    def init_message(self) -> dict[str, Any]:
        monitor = self.monitor
        return {
            "type": "init",
            "run": run_message(monitor),
            "panels": _clean(self._panels()),
            "status": status_message(monitor, self.replay),
            "alerts": self._alerts(list(monitor.alerts)),
            "ranks": rank_block(monitor),
            "backtest": self.backtest,
        }

    def _set_panels(self, panels: list[dict[str, Any]]) -> None:
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
        entries, buffers = [], []
        for split, key in self._series:
            got = self._read(key, split)
            if got is None:
                continue
            steps, values, n, compacted = got
            s, v = minmax_decimate(steps, values, max(1, self.max_points // 2))
            entries.append({"panel": None, "key": key, "split": split, "mode": "replace", "n": int(s.shape[0])})
            buffers += [_f64(s), _f64(v)]
            self._sent[(split, key)] = (n, compacted)
        self._emit({"type": "data", "series": entries, "alerts": [], "status": None}, buffers)
        self.ready = True

    def zoom(self, panel_id: str, x0: float | None, x1: float | None) -> None:
        """Answer a zoom: that panel's series re-decimated to [x0, x1] (None: the whole run)."""
        panel = next((p for p in self._panels() if p.get("id") == panel_id), None)
        if panel is None:
            return
        entries, buffers = [], []
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
            self._emit({"type": "data", "series": entries, "alerts": [], "status": None}, buffers)

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
        entries, buffers = [], []
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
        content = {"type": "data", "series": entries, "alerts": self._alerts(list(latest.values())), "status": status}
        if ranks_changed:  # absent "ranks" means unchanged; null would hide the heatmap
            content["ranks"] = rank_block(monitor)
        if backtest_changed:  # absent "backtest" means unchanged; present, it replaces every rule's markers
            content["backtest"] = self.backtest
        self._emit(content, buffers)
        if any(e.__class__ is RunEnd for e in events):
            log.debug("ptt_nb: dashboard sent the run end")



def _signature(panels: list[dict[str, Any]]) -> str:
    return repr([(p.get("id"), [(s["key"], s.get("split")) for s in p.get("series", [])]) for p in panels])


def _finite_or_none(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
