"""A CSV or JSONL of log dicts (one row per ``on_log`` call: a ``step`` column — or W&B's ``_step`` /
``train/global_step`` — and one column per key; empty cells are missing values, ``nan`` is NaN)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ptt_nb.sources._import import ImportedRun, ImportFormatError, group_rows

FORMAT = "table"
STEP_COLUMNS = ("step", "global_step", "train/global_step", "_step")
SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES and path.name != "trainer_state.json"


def rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header row), a JSONL (one object a line) or a JSON list of objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFormatError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if path.suffix.lower() == ".csv":
        return [{k: v for k, v in r.items() if k is not None and v not in ("", None)}
                for r in csv.DictReader(text.splitlines())]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise ImportFormatError(f"{path}: not a JSON list of log dicts ({exc})") from None
        return [r for r in data if isinstance(r, dict)]
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ImportFormatError(f"{path}:{i}: not a JSON object per line ({exc})") from None
        if isinstance(row, dict):
            out.append(row)
    return out


def step_column(path: Path, table: list[dict[str, Any]]) -> str:
    for col in STEP_COLUMNS:
        if table and all(col in r for r in table[:50]) or any(col in r for r in table):
            return col
    cols = sorted({k for r in table[:5] for k in r})[:10]
    raise ImportFormatError(f"{path}: no step column (looked for {', '.join(STEP_COLUMNS)}; found {', '.join(cols)})")


def read(path: Path, **_: Any) -> ImportedRun:
    table = rows(path)
    if not table:
        raise ImportFormatError(f"{path}: no rows")
    col = step_column(path, table)
    logs = []
    for row in table:
        if col not in row:
            continue
        step = row.pop(col)
        t = row.get("_timestamp")
        logs.append((int(float(step)), row, float(t) if t not in (None, "") else None))
    return ImportedRun(source=path, format=FORMAT, logs=group_rows(logs), run_id=path.stem)
