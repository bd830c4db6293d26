"""Typed events: every fact the Monitor learns, as plain dataclasses that round-trip through JSON.

One record type per line of ``events.jsonl``; ``kind`` names the type and ``v`` the schema version, so a
reader can skip what it does not understand instead of failing on it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1

# ptt_nb's colours (severities, run states, plot series), shared with the widget bundle (js/src/colors.js)
PALETTE: dict[str, Any] = json.loads(resources.files("ptt_nb").joinpath("palette.json").read_text(encoding="utf-8"))


class Severity(str, Enum):
    """How bad an alert is, most severe first: the definition order is the rank (``critical`` = 0).

    A ``str`` enum, so a member is its value: it compares equal to ``"critical"``, serialises to JSON as
    ``"critical"``, and ``Alert.severity`` stays a plain string on disk. ``colour`` comes from ``palette.json``,
    the same file the widget's colours come from.
    """

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def rank(self) -> int:
        """0 for the most severe; sort alerts by it."""
        return SEVERITY_RANK[self.value]

    @property
    def colour(self) -> str:
        return PALETTE["severity"][self.value]


SEVERITIES: tuple[str, ...] = tuple(s.value for s in Severity)  # the values, most severe first
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}
SEVERITY_COLOURS: dict[str, str] = {s.value: s.colour for s in Severity}
NEUTRAL_COLOUR: str = PALETTE["neutral"]  # grey: for a severity (or state) this version does not know

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


def json_safe(value: Any, *, keep_nonfinite: bool = False) -> Any:
    """``value`` made JSON-safe for a Jupyter message (whose packer rejects NaN/Inf), recursively through dicts,
    lists and tuples, numpy scalars becoming Python numbers: a non-finite float becomes None, or with
    ``keep_nonfinite`` its ``encode_float`` text ("NaN", "Infinity", "-Infinity")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else (encode_float(value) if keep_nonfinite else None)
    if isinstance(value, dict):
        return {k: json_safe(v, keep_nonfinite=keep_nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, keep_nonfinite=keep_nonfinite) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return json_safe(value.item(), keep_nonfinite=keep_nonfinite)
    return value
