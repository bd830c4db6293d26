"""``postmortem.json``: what step a run died on, and why, written atomically whatever the cause."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from ptt_nb._layout import POSTMORTEM_FILE
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sinks._writer import write_json_atomic
from ptt_nb.sources import _environment as environment

LAST_ALERTS = 20


def build(monitor: Monitor, reason: str, *, step: int, traceback: str | None = None,
          detail: str = "") -> dict[str, Any]:
    run = monitor.run
    stop = monitor.stop_info or {}
    return {
        "exit_reason": reason,
        "last_step": step,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "detail": detail,
        "run_id": run.run_id if run else None,
        "trainer": run.trainer if run else None,
        "algorithm": run.algorithm if run else None,
        "max_steps": monitor.max_steps,
        "final_metrics": dict(monitor.history.latest),
        "final_eval_metrics": dict(monitor.history.latest_eval),
        "stop": {k: v for k, v in stop.items() if v is not None} or None,
        "last_alerts": [{k: v for k, v in a.__dict__.items() if k not in ("kind", "v")}
                        for a in monitor.alerts[-LAST_ALERTS:]],
        "alerts_by_severity": monitor.alerts_by_severity(),
        "traceback": traceback,
        "environment": environment.describe(),
        "config": run.config if run else {},
    }


def write(run_dir: str | Path, data: dict[str, Any]) -> Path:
    path = Path(run_dir) / POSTMORTEM_FILE
    write_json_atomic(path, data)
    return path
