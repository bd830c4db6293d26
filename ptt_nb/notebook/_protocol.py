"""The widget protocol's Python → JS messages as TypedDicts, mirroring js/PROTOCOL.md (v1).

``_messages`` and ``_stream`` build every message as one of these; tests/test_protocol.py checks that each key
the front end (js/src/*.js) reads off a message exists here. Keys marked ``NotRequired`` may be absent (for
``data``: absent ``ranks``/``backtest`` means "unchanged"). Values are JSON-safe: no NaN/Inf anywhere (series
points travel as float64 buffers, where NaN is a gap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:  # annotations are never evaluated at run time (``from __future__ import annotations``)
    from typing_extensions import NotRequired

Severity = Literal["critical", "high", "medium", "low"]
State = Literal["running", "stopped_by_user", "auto_stopped", "crashed", "finished", "replay"]


class RunInfo(TypedDict):
    """``init.run``: what the header shows (the rest is informational)."""

    trainer: str
    algorithm: str
    run_dir: str
    world_size: int
    run_id: NotRequired[str]
    max_steps: NotRequired[int | None]
    config: NotRequired[dict[str, Any]]
    versions: NotRequired[dict[str, Any]]
    resumed_from_step: NotRequired[int | None]


class SeriesSpec(TypedDict):
    key: str
    label: str
    split: Literal["train", "eval"]


class RefLine(TypedDict):
    y: float
    label: str


class PanelSpec(TypedDict):
    id: str
    title: str
    series: list[SeriesSpec]
    refs: list[RefLine]
    y_scale: Literal["linear", "log"]
    y_label: str | None
    group: Literal["core", "other"]


class Reference(TypedDict):
    text: str
    url: str | None


class AlertMsg(TypedDict):
    """An alert card / marker. ``evidence`` values are numbers, None, or "NaN"/"Infinity"/"-Infinity"."""

    id: str
    rule: str
    severity: Severity
    step: int
    message: str
    evidence: dict[str, Any]
    action: str | None
    reference: Reference
    state: Literal["active", "resolved"]
    resolved_step: int | None
    muted: bool
    panels: list[str]


class StatusMsg(TypedDict):
    state: State
    step: int
    max_steps: int | None
    eta_s: float | None
    steps_per_s: float | None
    samples_per_s: float | None
    trainer: str
    algorithm: str
    reason: str | None
    stop_requested: bool
    # set by the live dashboard (_widget): which stop reaches a busy train() cell here (_stop_routing.stop_mode)
    stop_mode: NotRequired[Literal["subshell", "poll", "interrupt"]]
    stop_hint: NotRequired[str]


class RankBlock(TypedDict):
    world_size: int
    metric_names: list[str]
    steps: list[int]
    values: dict[str, list[list[float | None]]]  # metric → per interval → per rank
    stragglers: list[int]


class BacktestMsg(TypedDict):
    """Where a ``%%ptt`` rule would have fired (one per rule id); from ``rules._backtest.BacktestResult``."""

    rule: str
    severity: Severity
    panels: list[str]
    steps: list[int]
    resolved_steps: list[int | None]
    messages: list[str]
    total: int


class SeriesEntry(TypedDict):
    """One entry of ``data.series``; its points are the next two buffers (steps, values: ``n`` float64 each).
    ``split`` "baseline:train" / "baseline:eval": the baseline run's copy of that series (``mode`` "replace",
    steps already aligned to this run's), drawn dimmed and dashed beside it."""

    panel: str | None
    key: str
    split: str
    mode: Literal["append", "replace"]
    n: int


class InitMsg(TypedDict):
    type: Literal["init"]
    run: RunInfo
    panels: list[PanelSpec]
    status: StatusMsg
    alerts: list[AlertMsg]
    ranks: RankBlock | None
    backtest: list[BacktestMsg]


class DataMsg(TypedDict):
    type: Literal["data"]
    series: list[SeriesEntry]
    alerts: list[AlertMsg]
    status: StatusMsg | None
    ranks: NotRequired[RankBlock | None]
    backtest: NotRequired[list[BacktestMsg]]


Message = InitMsg | DataMsg

# the TypedDicts by the protocol's name for them (js/PROTOCOL.md headings), for tests and docs
MESSAGES: dict[str, type] = {
    "init": InitMsg, "data": DataMsg, "run": RunInfo, "panel": PanelSpec, "series_spec": SeriesSpec,
    "ref": RefLine, "alert": AlertMsg, "reference": Reference, "status": StatusMsg, "ranks": RankBlock,
    "backtest": BacktestMsg, "series": SeriesEntry,
}
