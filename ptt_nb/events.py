"""Typed events: every fact the Monitor learns, as plain dataclasses that round-trip through JSON.

One record type per line of ``events.jsonl``; ``kind`` names the type and ``v`` the schema version, so a
reader can skip what it does not understand instead of failing on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1

SEVERITIES = ("critical", "high", "medium", "low")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

# Why a run ended. "finished" is the only clean end; every other reason leaves a postmortem.
END_REASONS = (
    "finished",
    "exception",
    "keyboard_interrupt",
    "sigterm",
    "nonfinite",
    "auto_stop",
    "user_stop",
    "rank_failure",
    "unknown",
)


def now() -> float:
    return time.time()


@dataclass
class RunStart:
    """Header of a run (or of a resumed segment of it)."""

    run_id: str
    trainer: str
    algorithm: str
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    world_size: int = 1
    max_steps: int | None = None
    git_commit: str | None = None
    resumed_from_step: int | None = None
    panels: list[dict[str, Any]] = field(default_factory=list)
    t: float = field(default_factory=now)
    kind: str = "run_start"
    v: int = SCHEMA_VERSION


@dataclass
class Metrics:
    """One log point: the numeric values of one ``on_log`` call. ``split`` is train, eval or summary."""

    step: int
    split: str
    values: dict[str, float]
    t: float = field(default_factory=now)
    kind: str = "metrics"
    v: int = SCHEMA_VERSION


@dataclass
class Alert:
    """A heuristic episode starting (state active) or ending (state resolved)."""

    id: str
    rule: str
    severity: str
    step: int
    message: str
    action: str = ""
    reference: str = ""
    url: str | None = None
    evidence: dict[str, float] = field(default_factory=dict)
    state: str = "active"
    resolved_step: int | None = None
    panels: list[str] = field(default_factory=list)
    t: float = field(default_factory=now)
    kind: str = "alert"
    v: int = SCHEMA_VERSION


@dataclass
class RankStats:
    """Per-rank timings and memory for one stats interval (gathered on rank 0)."""

    step: int
    world_size: int
    per_rank: dict[str, list[float]]
    t: float = field(default_factory=now)
    kind: str = "rank_stats"
    v: int = SCHEMA_VERSION


@dataclass
class Control:
    """A control action: stop requested, rule muted or unmuted, rule added."""

    action: str
    step: int
    by: str
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=now)
    kind: str = "control"
    v: int = SCHEMA_VERSION


@dataclass
class RunEnd:
    """Footer: why the run ended and at which step."""

    reason: str
    step: int
    detail: str = ""
    t: float = field(default_factory=now)
    kind: str = "run_end"
    v: int = SCHEMA_VERSION


Event = RunStart | Metrics | Alert | RankStats | Control | RunEnd

EVENT_TYPES: dict[str, type] = {
    "run_start": RunStart,
    "metrics": Metrics,
    "alert": Alert,
    "rank_stats": RankStats,
    "control": Control,
    "run_end": RunEnd,
}


def to_dict(event: Event) -> dict[str, Any]:
    return asdict(event)


def from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event; unknown kinds and unknown fields (newer writers) are ignored, not fatal."""
    cls = EVENT_TYPES.get(data.get("kind", ""))
    if cls is None:
        return None
    names = cls.__dataclass_fields__
    event = cls(**{k: v for k, v in data.items() if k in names})
    if isinstance(event, Metrics):
        event.values = {k: decode_float(v) for k, v in event.values.items()}
    return event


def encode_float(value: float) -> float | str:
    """JSON has no NaN/Inf; keep them as strings so the file stays strict JSON and nothing is lost."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_float(value: Any) -> float:
    if isinstance(value, str):
        return float(value.replace("Infinity", "inf"))
    return float(value)
