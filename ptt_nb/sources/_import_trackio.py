"""trackio's local SQLite database (``~/.cache/huggingface/trackio/<project>.db``, or ``$TRACKIO_DIR``): one run
or every run of the project. Opened read-only through a ``file:...?mode=ro`` URI, so a run still writing (WAL
journal) is neither blocked nor changed. Steps come from ``train/global_step`` when logged (trackio's own step
counts log calls)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ptt_nb.sources._import import ImportedRun, ImportFormatError, group_by_step, unrewrite

FORMAT = "trackio"
SQLITE_MAGIC = b"SQLite format 3\x00"


def sniff(path: Path) -> bool:
    if not path.is_file() or path.suffix not in (".db", ".sqlite", ".sqlite3"):
        return False
    with open(path, "rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            return False
    try:
        with _connect(path) as con:
            return con.execute("select 1 from sqlite_master where name='metrics'").fetchone() is not None
    except sqlite3.Error:
        return False


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def run_names(path: Path) -> list[str]:
    """The project's runs, oldest first."""
    with _connect(path) as con:
        return [r[0] for r in con.execute("select run_name from metrics group by run_name order by min(id)")]


def read(path: Path, *, run: str | None = None, **_: Any) -> ImportedRun:
    try:
        names = run_names(path)
    except sqlite3.Error as exc:
        raise ImportFormatError(f"{path}: not a readable trackio database ({exc})") from None
    if not names:
        raise ImportFormatError(f"{path}: a trackio database without runs")
    notes = []
    if run is None:
        run = names[-1]
        if len(names) > 1:
            notes.append(f"trackio: read run {run!r}, the newest of {len(names)} in {path.name} (others: "
                         f"{', '.join(names[:-1][-5:])}); pass run= to choose, or diagnose the file for all")
    elif run not in names:
        raise ImportFormatError(f"{path}: no run {run!r} (runs: {', '.join(names)})")
    with _connect(path) as con:
        rows = con.execute("select step, metrics, timestamp from metrics where run_name=? order by id",
                           (run,)).fetchall()
        cfg = con.execute("select config from configs where run_name=? order by id desc", (run,)).fetchone()
    points = []
    from datetime import datetime

    for step, blob, stamp in rows:
        values = json.loads(blob)
        step = values.get("train/global_step", step)
        try:
            t = datetime.fromisoformat(stamp).timestamp()
        except (TypeError, ValueError):
            t = None
        for key, value in values.items():
            points.append((int(step), unrewrite(key), value, t))
    config = json.loads(cfg[0]) if cfg else {}
    max_steps = config.get("max_steps")
    return ImportedRun(source=path, format=FORMAT, logs=group_by_step(points), run_id=run, config=config,
                       max_steps=max_steps if isinstance(max_steps, int) and max_steps > 0 else None, notes=notes)
