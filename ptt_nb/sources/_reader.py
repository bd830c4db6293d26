"""Reading a run folder back: every complete event of ``events.jsonl`` (a torn last line is reported, never
fatal), the postmortem, and a ``Follower`` that reads what another process appends. ``load_run`` replays a folder
into a ``Monitor`` (the same path live training takes)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ptt_nb._layout import EVENTS_FILE, POSTMORTEM_FILE, find_run_dir
from ptt_nb.events import Alert, Event, from_dict
from ptt_nb.monitor._monitor import Monitor

log = logging.getLogger("ptt_nb")


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


def load_run(path: str | os.PathLike[str], *, evaluate: bool = False, format: str | None = None,
             algorithm: str | None = None, **options: Any) -> Monitor:
    """Load a run back into a Monitor: a ptt_nb run folder (recorded alerts as they were; ``evaluate=True``
    re-runs the rules), or a run recorded by another tool, replayed through the rules
    (``trainer_state.json``, TensorBoard events, a trackio database, a W&B offline run, CSV/JSONL of log dicts).

    ``path`` may also be a parent folder such as ``output_dir/ptt_nb``; its newest run is loaded. ``format``
    forces a reader (``"ptt_nb"`` or one of ``sources._import.FORMATS``); ``algorithm`` overrides the trainer an
    imported run was told to be; ``run=`` picks one run of a trackio project.
    """
    found = find_run_dir(path) if format in (None, "ptt_nb") else None
    if found is None:
        if format == "ptt_nb":
            raise FileNotFoundError(f"{path}: no {EVENTS_FILE} here or in its sub-folders")
        from ptt_nb.sources._import import load_imported

        return load_imported(path, format=format, algorithm=algorithm, **options)
    run_dir = found
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
