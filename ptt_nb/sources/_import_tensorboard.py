"""TensorBoard event files written by ``report_to="tensorboard"`` (``train/<key>``, ``eval/<key>`` scalar tags;
the run's ``TrainingArguments`` as the ``args`` text). Every scalar is kept (``EventAccumulator``'s default keeps a
10,000-point reservoir sample; see ``_decode`` for why it is not used). Needs ``pip install 'ptt-nb[import]'``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptt_nb.sources import _import_tfrecord as tfrecord
from ptt_nb.sources._import import ImportedRun, ImportFormatError, split_of_key, unrewrite

FORMAT = "tensorboard"
MARK = "tfevents"
_SPLITS = ("train", "eval", "summary", None)  # the order of a step's log dicts; None: a dropped key
_SUMMARY = 2


@dataclass
class Columns:
    """One file's scalars in file order: step, tag (into ``names``), value, wall time."""

    names: list[str]
    step: np.ndarray
    tag: np.ndarray
    value: np.ndarray
    wall: np.ndarray


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


def _parser(path: Path) -> Any:
    try:
        from tensorboard.compat.proto import event_pb2
    except ImportError as exc:
        raise ImportFormatError(f"{path}: reading TensorBoard event files needs tensorboard ({exc}); "
                                "pip install 'ptt-nb[import]'") from None
    return event_pb2.Event.FromString


def _scalar(value: Any) -> float | None:
    """A scalar summary value: TF1/PyTorch ``simple_value``, or a TF2 scalar tensor."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
        t = value.tensor
        for field_name in ("float_val", "double_val", "int_val", "int64_val"):
            vals = getattr(t, field_name)
            if len(vals):
                return float(vals[0])
        if t.tensor_content:
            from tensorboard.util import tensor_util

            return float(tensor_util.make_ndarray(t).reshape(-1)[0])
    return None


def _text(value: Any) -> str | None:
    if value.WhichOneof("value") == "tensor" and value.metadata.plugin_data.plugin_name == "text":
        vals = value.tensor.string_val
        return vals[0].decode("utf-8", "replace") if len(vals) else None
    return None


def _decode(files: list[Path]) -> tuple[list[Columns], dict[str, Any]]:
    """Every scalar of the files, in file order, and the config. ``add_scalar``'s one-value events are decoded as
    arrays (``_import_tfrecord``); every other record through tensorboard's ``Event`` protobuf class, and from a
    corrupt one on, the rest of its file is left out. Measured on 100k steps x 15 tags (1.5 M records): 0.9 s,
    where one protobuf parse per record took 3.5 s, ``EventAccumulator`` (unlimited scalars) 25 s and
    tensorboard's ``RawEventFileLoader`` 24 s (those two check CRCs in Python)."""
    parse = _parser(files[0])
    parts: list[Columns] = []
    config: dict[str, Any] = {}
    for path in files:
        data = path.read_bytes()
        start, length = tfrecord.frames(data)
        try:
            fast: tfrecord.Scalars | None = tfrecord.simple_scalars(data, start, length)
        except ValueError:  # a tag that is not UTF-8 (or two tags hashed alike): every record through protobuf
            fast = None
        names = list(fast.names) if fast else []
        known = {name: i for i, name in enumerate(names)}
        rec: list[int] = []
        sub: list[int] = []
        slow: dict[str, list[float]] = {"step": [], "tag": [], "value": [], "wall": []}
        end = len(start)
        for i in (np.flatnonzero(~fast.ok) if fast else np.arange(len(start))).tolist():
            try:
                event = parse(data[start[i]:start[i] + length[i]])
            except Exception:  # noqa: BLE001 - a corrupt record: the rest of this file cannot be trusted
                end = i
                break
            for j, value in enumerate(event.summary.value):
                number = value.simple_value if value.WhichOneof("value") == "simple_value" else _scalar(value)
                if number is not None:
                    tag = known.get(value.tag)
                    if tag is None:
                        tag = known[value.tag] = len(names)
                        names.append(value.tag)
                    rec.append(i)
                    sub.append(j)
                    for column, x in (("step", event.step), ("tag", tag), ("value", number),
                                      ("wall", event.wall_time)):
                        slow[column].append(x)
                elif value.tag.startswith("args"):  # TensorBoardCallback: TrainingArguments.to_json_string()
                    config = _config(value, config)
        part = Columns(names, np.array(slow["step"], dtype=np.int64), np.array(slow["tag"], dtype=np.int64),
                       np.array(slow["value"], dtype=np.float64), np.array(slow["wall"], dtype=np.float64))
        if fast:
            keep = fast.index < end
            order = np.lexsort((np.concatenate([np.zeros(int(keep.sum()), dtype=np.int64), sub]),
                                np.concatenate([fast.index[keep], rec]))) if rec else slice(None)
            part = Columns(names, *(np.concatenate([getattr(fast, c)[keep], getattr(part, c)])[order]
                                    for c in ("step", "tag", "value", "wall")))
        parts.append(part)
    return parts, config


def _config(value: Any, config: dict[str, Any]) -> dict[str, Any]:
    text = _text(value)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    return data if isinstance(data, dict) else config


def _group(parts: list[Columns]) -> list[tuple[int, dict[str, float], float | None]]:
    """The scalars (in file order) → log dicts, as ``_import.group_by_step`` makes them: one per step and split, in
    step order; within one, keys in file order and a repeated key's last value. A stable sort of arrays instead of
    a dict per point (timsort on a run's nearly sorted steps)."""
    keys: list[str] = []
    key_ids = []
    for part in parts:
        local = np.array([_key_index(keys, unrewrite(name)) for name in part.names] or [0], dtype=np.int64)
        key_ids.append(local[part.tag])
    key = np.concatenate(key_ids)
    step, value, wall = (np.concatenate([getattr(part, c) for part in parts]) for c in ("step", "value", "wall"))
    split_of = np.array([_SPLITS.index(split_of_key(k)) for k in keys] or [0], dtype=np.int64)
    split = split_of[key]
    keep = np.flatnonzero(split < len(_SPLITS) - 1)  # not a dropped key
    order = keep[np.argsort(step[keep] * len(_SPLITS) + split[keep], kind="stable")]
    step, split, key, value, wall = step[order], split[order], key[order], value[order], wall[order]
    bounds = np.flatnonzero((np.diff(step) != 0) | (np.diff(split) != 0)) + 1
    starts = [0, *bounds.tolist()] if len(step) else []
    ends = [*bounds.tolist(), len(step)]
    names = np.array(keys, dtype=object)[key].tolist() if keys else []
    values, walls, steps, splits = value.tolist(), wall.tolist(), step.tolist(), split.tolist()
    out = []
    for a, b in zip(starts, ends, strict=False):
        logs = dict(zip(names[a:b], values[a:b]))  # noqa: B905 - slices of two lists of one length
        if len(logs) == 1 and "epoch" in logs and splits[a] != _SUMMARY:  # an epoch alone is no log dict
            continue
        out.append((steps[a], logs, walls[b - 1]))
    return out


def _key_index(keys: list[str], key: str) -> int:
    if key not in keys:
        keys.append(key)
    return keys.index(key)


def read(path: Path, **_: Any) -> ImportedRun:
    dirs = _event_dirs(path)
    if not dirs:
        raise ImportFormatError(f"{path}: no TensorBoard event files (*{MARK}*) here or below")
    run_dir = dirs[-1]
    notes = [f"tensorboard: read {run_dir} (the newest of {len(dirs)} event folders)"] if len(dirs) > 1 else []
    files = [path] if path.is_file() else sorted(p for p in run_dir.iterdir() if p.is_file() and MARK in p.name)
    parts, config = _decode(files)
    if not sum(len(p.step) for p in parts):
        raise ImportFormatError(f"{run_dir}: TensorBoard event files without scalars")
    return ImportedRun(source=run_dir, format=FORMAT, logs=_group(parts), run_id=run_dir.name,
                       config=config, max_steps=config.get("max_steps") if isinstance(config.get("max_steps"), int)
                       and config.get("max_steps", 0) > 0 else None, notes=notes, floats=True)
