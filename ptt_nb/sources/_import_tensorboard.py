"""TensorBoard event files written by ``report_to="tensorboard"`` (``train/<key>``, ``eval/<key>`` scalar tags;
the run's ``TrainingArguments`` as the ``args`` text). Read with tensorboard's ``EventAccumulator`` keeping every
scalar (its default keeps a 10,000-point reservoir sample). Needs ``pip install 'ptt-nb[import]'``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptt_nb.sources._import import ImportedRun, ImportFormatError, group_by_step, unrewrite

FORMAT = "tensorboard"
MARK = "tfevents"


def _event_dirs(path: Path) -> list[Path]:
    if path.is_file():
        return [path.parent] if MARK in path.name else []
    if any(MARK in p.name for p in path.iterdir() if p.is_file()):
        return [path]
    dirs = {p.parent for p in path.rglob(f"*{MARK}*") if p.is_file()}
    return sorted(dirs, key=lambda d: max(p.stat().st_mtime for p in d.iterdir() if MARK in p.name))


def sniff(path: Path) -> bool:
    try:
        return bool(_event_dirs(path))
    except OSError:
        return False


def _accumulator(path: Path) -> Any:
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError as exc:
        raise ImportFormatError(f"{path}: reading TensorBoard event files needs tensorboard ({exc}); "
                                "pip install 'ptt-nb[import]'") from None
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 50})  # 0: keep every point
    acc.Reload()
    return acc


def _config(acc: Any) -> dict[str, Any]:
    """The ``args`` text TensorBoardCallback writes at train begin (``TrainingArguments.to_json_string()``)."""
    try:
        from tensorboard.util import tensor_util

        events = acc.Tensors("args/text_summary")
        raw = tensor_util.make_ndarray(events[-1].tensor_proto).flatten()[0]
        data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        return data if isinstance(data, dict) else {}
    except (KeyError, IndexError, ValueError, AttributeError):
        return {}


def read(path: Path, **_: Any) -> ImportedRun:
    dirs = _event_dirs(path)
    if not dirs:
        raise ImportFormatError(f"{path}: no TensorBoard event files (*{MARK}*) here or below")
    run_dir = dirs[-1]
    notes = [f"tensorboard: read {run_dir} (the newest of {len(dirs)} event folders)"] if len(dirs) > 1 else []
    acc = _accumulator(path if path.is_file() else run_dir)
    points = []
    for tag in acc.Tags().get("scalars", []):
        key = unrewrite(tag)
        for ev in acc.Scalars(tag):
            points.append((int(ev.step), key, float(ev.value), float(ev.wall_time)))
    if not points:
        raise ImportFormatError(f"{run_dir}: TensorBoard event files without scalars")
    config = _config(acc)
    return ImportedRun(source=run_dir, format=FORMAT, logs=group_by_step(points), run_id=run_dir.name,
                       config=config, max_steps=config.get("max_steps") if isinstance(config.get("max_steps"), int)
                       and config.get("max_steps", 0) > 0 else None, notes=notes)
