"""Monitor state → the widget protocol's Python → JS objects (``_protocol``'s TypedDicts, js/PROTOCOL.md).

Every value is JSON-safe (``events.json_safe``): Jupyter's packer rejects NaN/Inf. Nothing here imports IPython
or anywidget.
"""

from __future__ import annotations

import math

import numpy as np

from ptt_nb.events import Alert, json_safe
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._protocol import AlertMsg, BacktestMsg, RankBlock, RunInfo, StatusMsg
from ptt_nb.rules._backtest import BacktestResult

PROTOCOL_STATES = ("running", "stopped_by_user", "auto_stopped", "crashed", "finished", "replay")
RANK_INTERVALS = 200  # newest rank-stats intervals sent to the heatmap
BACKTEST_MAX_MARKERS = 500  # per rule: a rule that would fire on every step must not flood the view
BACKTEST_MESSAGE_CHARS = 200


def alert_message(alert: Alert, muted: bool) -> AlertMsg:
    """An events.Alert as the protocol's Alert object (reference becomes {text, url}). Evidence keeps NaN/Inf
    visible as text (they are the point of a non-finite alert)."""
    return {
        "id": alert.id,
        "rule": alert.rule,
        "severity": alert.severity,
        "step": alert.step,
        "message": alert.message,
        "evidence": json_safe(dict(alert.evidence or {}), keep_nonfinite=True),
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


def status_message(monitor: Monitor, replay: bool = False) -> StatusMsg:
    status = dict(monitor.status())
    state = status.get("state")
    if state not in PROTOCOL_STATES:  # "idle": no run header yet
        state = "running"
    if replay and monitor.end_event is None:
        state = "replay"
    status["state"] = state
    status["samples_per_s"] = samples_per_s(monitor)
    return json_safe(status)


def run_message(monitor: Monitor) -> RunInfo:
    run = monitor.run
    if run is None:
        return {"trainer": "", "algorithm": "", "run_dir": str(monitor.run_dir or ""), "world_size": 1}
    return json_safe({
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


def rank_block(monitor: Monitor, intervals: int = RANK_INTERVALS) -> RankBlock | None:
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
        "values": json_safe(values),
        "stragglers": straggler_ranks(monitor, names, values),
    }


def backtest_entry(result: BacktestResult) -> BacktestMsg | None:
    """A backtest result as the protocol's Backtest object, None when it has no episode. Markers of one rule share
    its panels; severity is the highest among its episodes."""
    firings = sorted(result.firings, key=lambda f: f.step)
    if not firings:
        return None
    shown = firings[:BACKTEST_MAX_MARKERS]
    return json_safe({
        "rule": str(result.rule_id),
        "severity": result.top_severity,
        "panels": [str(p) for p in dict.fromkeys(result.panels)],
        "steps": [int(f.step) for f in shown],
        "resolved_steps": [f.resolved_step for f in shown],
        "messages": [str(f.message or "")[:BACKTEST_MESSAGE_CHARS] for f in shown],
        "total": len(firings),
    })
