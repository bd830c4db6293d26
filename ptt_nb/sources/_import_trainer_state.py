"""HF ``trainer_state.json`` (each ``checkpoint-N/`` and ``Trainer.save_state()``): ``log_history`` holds every
log dict verbatim (train rows, ``eval_*`` rows, the final ``train_runtime`` row; Python's json writes bare
``NaN``). A folder with several picks the most advanced one (highest ``global_step``; ties: the newest file)
and says which."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ptt_nb.sources._import import ImportedRun, ImportFormatError

FORMAT = "trainer_state"
FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def candidates(path: Path) -> list[Path]:
    """``trainer_state.json`` files a path names: itself, the folder's own, its checkpoints'."""
    if path.is_file():
        return [path] if path.name.endswith(".json") and path.name.startswith("trainer_state") else []
    found = [path / FILE] if (path / FILE).is_file() else []
    found += [p / FILE for p in path.glob("checkpoint-*") if _CHECKPOINT.search(p.name) and (p / FILE).is_file()]
    return found


def sniff(path: Path) -> bool:
    return bool(candidates(path))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # json accepts NaN / Infinity as Python writes them
    except (OSError, ValueError) as exc:
        raise ImportFormatError(f"{path}: not readable as trainer_state.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("log_history"), list):
        raise ImportFormatError(f"{path}: no log_history list (not a transformers trainer_state.json)")
    return data


def read(path: Path, **_: Any) -> ImportedRun:
    files = candidates(path)
    if not files:
        raise ImportFormatError(f"{path}: no {FILE} here or in checkpoint-*/ folders")
    states = [(f, _load(f)) for f in files]
    chosen, state = max(states, key=lambda fs: (fs[1].get("global_step") or 0, fs[0].stat().st_mtime))
    notes = []
    if len(states) > 1:
        notes.append(f"trainer_state: read {chosen} (global_step {state.get('global_step')}; the most advanced of "
                     f"{len(states)})")
    logs = []
    for i, row in enumerate(state["log_history"]):
        if not isinstance(row, dict) or "step" not in row:
            notes.append(f"{chosen}: log_history[{i}] has no step; skipped")
            continue
        step = row.pop("step")  # the row is this read's own: it becomes the log dict as it is
        logs.append((int(step), row, None))
    run_dir = chosen.parent.parent if _CHECKPOINT.search(chosen.parent.name) else chosen.parent
    return ImportedRun(source=chosen, format=FORMAT, logs=logs, run_id=run_dir.name,
                       max_steps=state.get("max_steps") or None, notes=notes)
