"""The live notebook dashboard: one anywidget per run, fed by custom messages (js/PROTOCOL.md).

No synced trait holds run data (only the widget's code is saved into the notebook, so a saved notebook
does not grow with run length); the state lives in the Monitor and a ``Stream`` sends it as throttled
binary batches. ``attach(monitor)`` is what ``DiagnosticsCallback`` calls in a notebook; ``show(monitor)``
displays a dashboard for any monitor, e.g. one loaded with ``ptt_nb.load_run(dir)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anywidget

from ptt_nb.events import RunEnd
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._comm_poll import CommPoller
from ptt_nb.notebook._static_fallback import summary_html
from ptt_nb.notebook._stop_routing import make_handler, route_to_sender_subshell, stop_mode
from ptt_nb.notebook._stream import Stream
from ptt_nb.rules._backtest import BacktestResult

log = logging.getLogger("ptt_nb")

BUNDLE = Path(__file__).parent.parent / "static" / "widget.js"
if not BUNDLE.is_file():  # ImportError: the callback then falls back to console alerts
    raise ImportError(f"ptt_nb's widget bundle {BUNDLE} is missing; build it with `cd js && npm ci && npm run build`")

# Seconds to wait for the view's "ready" before sending the first batch anyway (comm messages can be held
# back until the cell ends where kernel subshells are unavailable).
AUTO_READY_AFTER = 1.5

_DASHBOARDS: dict[int, Dashboard] = {}


class Dashboard(anywidget.AnyWidget):
    """Header with Stop, algorithm-aware metric panels, alert feed and per-rank heatmap for one Monitor."""

    _esm = BUNDLE

    def __init__(self, monitor: Monitor, *, replay: bool = False, interval: float = 0.1,
                 max_points: int = 2000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.monitor = monitor
        self.stream = Stream(monitor, self._send_custom, interval=interval, max_points=max_points, replay=replay,
                             auto_ready_after=AUTO_READY_AFTER)
        self.on_msg(make_handler(monitor, self.stream.handle))
        self.subshell_routing = route_to_sender_subshell(self.comm)
        # no subshells (ipykernel 6): the callback lets the Stop click in at step boundaries (poll_stop)
        self.comm_poller = None if self.subshell_routing else CommPoller(getattr(self.comm, "comm_id", None))
        self.stop_mode, self.stop_hint = stop_mode(self.subshell_routing, self.comm_poller.available
                                                   if self.comm_poller is not None else False)
        self._handles: list[Any] = []
        self._shown_in: int | None = None
        self._unsubscribe = monitor.subscribe(self._on_event)
        self.stream.start()

    def poll_stop(self) -> None:
        """At a step boundary (main thread): handle this widget's queued messages where no subshell does."""
        if self.comm_poller is not None:
            self.comm_poller.poll()

    def _send_custom(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        status = content.get("status")
        if isinstance(status, dict):  # the header says which stop works where this kernel runs
            status["stop_mode"], status["stop_hint"] = self.stop_mode, self.stop_hint
        if self.comm is not None:
            self.send(content, buffers)

    def _bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The widget view plus a small static ``text/html`` summary for viewers without a kernel."""
        bundle = super()._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = dict(data)
        try:
            data["text/html"] = summary_html(self.monitor)
        except Exception as exc:  # noqa: BLE001 - the fallback is a nicety; never break display
            log.debug("ptt_nb: static summary failed: %s", exc)
        self.stream.expect_view()
        return data, dict(metadata or {})

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self._bundle()

    def _ipython_display_(self) -> None:
        # `show(m)` as the last line of a cell returns this widget after displaying it: the cell's result must
        # not add a second view. Displaying it in a later cell (or `display(dash)`) gives another view.
        if self._shown_in is not None and self._shown_in == _execution_count():
            return
        self.display()

    def display(self) -> Any:
        """Display this dashboard (again) and remember the output, so the static summary is refreshed at run end."""
        from IPython.display import display

        data, metadata = self._bundle()
        handle = display(data, metadata=metadata, raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)
        self._shown_in = _execution_count()
        return handle

    takes_backtest_results = True  # show_backtest takes a rules._backtest.BacktestResult (%%ptt passes it)

    def show_backtest(self, rule_id: str, backtest: BacktestResult | list[Any]) -> None:
        """Draw a ``%%ptt`` backtest (a ``BacktestResult``, or its marker alerts: Alert-like, ``state="backtest"``)
        as markers on its panels, replacing earlier markers of ``rule_id`` (no episode clears them). They are
        display only: never added to ``monitor.alerts`` nor written to the run folder, and a re-rendered view gets
        them again in ``init``."""
        self.stream.set_backtest(rule_id, backtest)

    def clear_backtest(self, rule_id: str | None = None) -> None:
        """Remove the backtest markers of ``rule_id`` (of every rule when None), e.g. after ``%ptt remove``."""
        self.stream.clear_backtest(rule_id)

    def _on_event(self, event: Any) -> None:
        if event.__class__ is RunEnd:
            self.refresh_static()

    def refresh_static(self) -> None:
        """Re-publish the displayed outputs with the final static summary (views re-render from Python)."""
        self.stream.flush()
        if not self._handles:
            return
        data, metadata = self._bundle()
        for handle in self._handles:
            try:
                handle.update(data, metadata=metadata, raw=True)
            except Exception as exc:  # noqa: BLE001
                log.debug("ptt_nb: could not refresh the static summary: %s", exc)

    def close(self) -> None:
        self.stream.close()
        self._unsubscribe()
        if _DASHBOARDS.get(id(self.monitor)) is self:
            del _DASHBOARDS[id(self.monitor)]
        super().close()


def _execution_count() -> int | None:
    """The running cell's number (IPython increments it after the cell), None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "execution_count", None) if shell is not None else None


def dashboard_for(monitor: Monitor, *, replay: bool | None = None) -> Dashboard:
    """The monitor's dashboard (one widget per run), created on first use."""
    existing = _DASHBOARDS.get(id(monitor))
    if existing is not None and existing.monitor is monitor and existing.comm is not None:
        return existing
    if replay is None:  # a loaded run that never recorded its end is shown as a replay, not "running"
        replay = monitor.run is not None and monitor.end_event is None and not _has_live_writer(monitor)
    dash = Dashboard(monitor, replay=replay)
    _DASHBOARDS[id(monitor)] = dash
    return dash


def _has_live_writer(monitor: Monitor) -> bool:
    return any(type(s).__name__ == "RunWriter" for s in monitor.sinks)


def show(monitor: Monitor, *, replay: bool | None = None) -> Dashboard:
    """Display the dashboard for ``monitor`` (a live run, or one loaded with ``ptt_nb.load_run``)."""
    dash = dashboard_for(monitor, replay=replay)
    dash.display()
    return dash


def attach(monitor: Monitor) -> Dashboard:
    """Called by ``DiagnosticsCallback`` at train begin in a notebook: create and display the live dashboard."""
    dash = dashboard_for(monitor, replay=False)
    dash.display()
    return dash
