"""The run folder's layout, shared by the writer (``sinks``) and the readers (``sources``): its file names, and
the one way a path given by a user (a run folder, its ``events.jsonl``, or a parent such as
``output_dir/ptt_nb``) names a run folder."""

from __future__ import annotations

import os
from pathlib import Path

EVENTS_FILE = "events.jsonl"
POSTMORTEM_FILE = "postmortem.json"


def find_run_dir(path: str | os.PathLike[str]) -> Path | None:
    """``path`` itself when it holds ``events.jsonl`` (or is that file: its folder), else its newest sub-folder
    that holds one (by modification time), else None."""
    root = Path(path)
    if root.name == EVENTS_FILE and root.is_file():
        return root.parent
    if (root / EVENTS_FILE).exists():
        return root
    if root.is_dir():
        runs = [p for p in root.iterdir() if (p / EVENTS_FILE).exists()]
        if runs:
            return max(runs, key=lambda p: p.stat().st_mtime)
    return None
