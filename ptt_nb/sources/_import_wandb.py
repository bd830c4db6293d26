"""W&B runs: an offline run folder (``wandb/offline-run-*/run-<id>.wandb``, written with ``WANDB_MODE=offline``)
or an exported history (``run.history()`` / the UI's CSV export, read by the table reader).

The ``.wandb`` file is W&B's record log: 32 KiB blocks of chunks (7-byte header: CRC, length, type) holding
protobuf ``Record`` messages. wandb ≥0.2x no longer ships a Python reader of it, so the framing is read here and
the records are decoded with wandb's own protobuf classes: ``pip install wandb`` (optional)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ptt_nb.sources._import import ImportedRun, ImportFormatError, group_by_step, unrewrite

FORMAT = "wandb"
BLOCK = 32768
HEADER = struct.Struct("<IHB")  # crc32, length, chunk type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MAGIC = b":W&B"


def _run_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".wandb" else None
    if path.name == "wandb" or (path / "latest-run").exists():
        runs = sorted((p for p in path.glob("*run-*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.stat().st_mtime)
        path = runs[-1] if runs else path
    files = sorted(path.glob("*.wandb"))
    return files[-1] if files else None


def sniff(path: Path) -> bool:
    found = _run_file(path) if path.is_dir() else path
    if found is None or not found.is_file() or found.suffix != ".wandb":
        return False
    with open(found, "rb") as f:
        return f.read(4) == MAGIC


def records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` log (a torn tail, as a killed run leaves, ends the list)."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ImportFormatError(f"{path}: not a W&B run log (no {MAGIC!r} header)")
    out: list[bytes] = []
    pos, pending = 7, b""
    while pos + HEADER.size <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER.size:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        chunk = data[pos:pos + length]
        pos += length
        if len(chunk) < length or kind not in (FULL, FIRST, MIDDLE, LAST):
            break
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        else:
            pending += chunk
            if kind == LAST:
                out.append(pending)
                pending = b""
    return out


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def read(path: Path, **_: Any) -> ImportedRun:
    run_file = _run_file(path) if path.is_dir() else path
    if run_file is None:
        raise ImportFormatError(f"{path}: no W&B offline run (.wandb file) here")
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError as exc:
        raise ImportFormatError(f"{run_file}: reading a W&B offline run needs wandb ({exc}); pip install wandb — "
                                "or export the run's history to CSV/JSON and pass that") from None
    points: list[tuple[int, str, Any, float | None]] = []
    config: dict[str, Any] = {}
    run_id = run_file.stem.removeprefix("run-")
    for raw in records(run_file):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a record this wandb cannot decode is skipped, the rest still counts
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {(i.key or "/".join(i.nested_key)): _value(i.value_json) for i in rec.history.item}
            step = items.get("train/global_step", rec.history.step.num)
            t = items.get("_timestamp")
            for key, value in items.items():
                points.append((int(step), unrewrite(key), value, t if isinstance(t, (int, float)) else None))
        elif kind == "config":
            for item in rec.config.update:
                value = _value(item.value_json)
                config[item.key or "/".join(item.nested_key)] = value.get("value", value) \
                    if isinstance(value, dict) else value
        elif kind == "run":
            run_id = rec.run.display_name or rec.run.run_id or run_id
            for item in rec.run.config.update:
                value = _value(item.value_json)
                config[item.key] = value.get("value", value) if isinstance(value, dict) else value
    if not points:
        raise ImportFormatError(f"{run_file}: a W&B run log without history rows")
    max_steps = config.get("max_steps")
    return ImportedRun(source=run_file, format=FORMAT, logs=group_by_step(points), run_id=run_id, config=config,
                       max_steps=max_steps if isinstance(max_steps, int) and max_steps > 0 else None)
