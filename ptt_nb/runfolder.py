"""The run folder: ``events.jsonl`` (append-only, one event per line, flushed per event) and
``postmortem.json``. A crash at any byte leaves every complete line readable; a resumed run appends.

Writing uses one ``os.write`` per event on an O_APPEND descriptor: the line reaches the OS at once (a killed
process loses nothing it logged) without an fsync per step, which would cost more than the whole budget.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .events import Alert, Event, Metrics, from_dict

try:  # orjson is ~10x faster than json.dumps, which matters at one line per training step
    import orjson

    def _line(obj: Any, _dumps=orjson.dumps, _option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE) -> bytes:
        """One JSON line, newline included."""
        return _dumps(obj, option=_option)
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    orjson = None

    def _line(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"

log = logging.getLogger("ptt_nb")

EVENTS_FILE = "events.jsonl"
POSTMORTEM_FILE = "postmortem.json"


def _finite_or_str(values: dict[str, float]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if v != v:
            out[k] = "NaN"
        elif v == math.inf:
            out[k] = "Infinity"
        elif v == -math.inf:
            out[k] = "-Infinity"
        else:
            out[k] = v
    return out


def _has_nonfinite(values: dict[str, float]) -> bool:
    for v in values.values():
        if v != v or v == math.inf or v == -math.inf:
            return True
    return False


def encode_event(event: Event) -> bytes:
    """One JSON line. NaN/Inf become strings (strict JSON keeps them, unlike orjson's null)."""
    data = event.__dict__
    if type(event) is Metrics:
        line = _line(data)
        # orjson writes NaN/Inf as null and a metric value is never None: only then re-encode (rare path)
        if b"null" not in line:
            return line
        data = {**data, "values": _finite_or_str(event.values)}
    elif isinstance(event, Alert) and _has_nonfinite(event.evidence):
        data = {**data, "evidence": _finite_or_str(event.evidence)}
    return _line(data)


class RunWriter:
    """Appends events to ``run_dir/events.jsonl``. Use it as a Monitor sink."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / EVENTS_FILE
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # a previous process may have died mid-line: terminate that line so ours start clean
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def __call__(self, event: Event) -> None:
        if self._fd is not None:
            os.write(self._fd, encode_event(event))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become "NaN"/"Infinity" strings, anything unknown its str()."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity"))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a reader never sees half a postmortem."""
    path = Path(path)
    data = json_safe(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def parse_lines(data: bytes, source: str = EVENTS_FILE, first_line: int = 1) -> tuple[list[Event], list[str]]:
    """Parse complete lines; a malformed line is reported (file and line number) and skipped."""
    events: list[Event] = []
    problems: list[str] = []
    for i, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue
        try:
            event = from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            problems.append(f"{source}:{i}: skipped a malformed line ({type(exc).__name__}: {exc})")
            continue
        if event is not None:
            events.append(event)
    return events, problems


def read_events(run_dir: str | os.PathLike[str]) -> tuple[list[Event], list[str]]:
    """Every complete event of a run folder; a half-written last line is left out and reported."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a ptt_nb run folder")
    data = path.read_bytes()
    problems: list[str] = []
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        problems.append(f"{path}: the last line is incomplete ({len(data) - cut} bytes); it was skipped "
                        "(the writer was interrupted or is still writing)")
    events, more = parse_lines(data[:cut], str(path))
    return events, problems + more


def read_postmortem(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(run_dir) / POSTMORTEM_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        log.warning("ptt_nb: %s is unreadable: %s", path, exc)
        return None


class Follower:
    """Reads a run folder incrementally: each ``poll`` returns the events appended since the last one.

    Only complete lines are consumed; a partially written last line stays in place until its newline
    arrives, so no event is missed or read twice.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0
        self.line = 1
        self.problems: list[str] = []

    def poll(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            return []
        events, problems = parse_lines(data[:cut], str(self.path), self.line)
        self.problems.extend(problems)
        self.line += data[:cut].count(b"\n")
        self.offset += cut
        return events


def iter_run_dirs(root: str | os.PathLike[str]) -> Iterator[Path]:
    root = Path(root)
    if (root / EVENTS_FILE).exists():
        yield root
        return
    if root.is_dir():
        yield from sorted((p for p in root.iterdir() if (p / EVENTS_FILE).exists()), key=lambda p: p.stat().st_mtime)


def load_run(run_dir: str | os.PathLike[str], *, evaluate: bool = False):
    """Load a run folder back into a Monitor (recorded alerts as they were; ``evaluate=True`` re-runs rules).

    ``run_dir`` may also be a parent folder such as ``output_dir/ptt_nb``; its newest run is loaded.
    """
    from .monitor import Monitor

    dirs = list(iter_run_dirs(run_dir))
    if not dirs:
        raise FileNotFoundError(f"{run_dir}: no {EVENTS_FILE} here or in its sub-folders")
    run_dir = dirs[-1]
    events, problems = read_events(run_dir)
    monitor = Monitor(evaluate=evaluate)
    for event in events:
        if evaluate and isinstance(event, Alert):
            continue
        monitor.apply(event)
    monitor.run_dir = Path(run_dir)
    monitor.postmortem = read_postmortem(run_dir)
    monitor.warnings.extend(problems)
    return monitor
