"""Writing the run folder: ``events.jsonl`` (append-only, one event per line) and ``postmortem.json``. A crash
at any byte leaves every complete line readable; a resumed run appends. (Reading it back: ``sources._reader``.)

Writing uses ``os.write`` on an O_APPEND descriptor: a line reaches the OS at once (a killed process loses
nothing already written) without an fsync per step, which would cost more than the whole budget. The one
exception is ``RunWriter(batch_s=...)``, which the live callback uses: see ``RunWriter``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from ptt_nb._layout import EVENTS_FILE
from ptt_nb.events import Alert, Event, Metrics, encode_float, json_safe

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

# RunWriter(batch_s=...) holds at most this many lines: the write that takes them costs ~25 us warm, not a spike
MAX_HELD = 16


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with NaN/Inf as strings, through the one codec (``events.encode_float``); non-numbers stay."""
    out = {}
    for k, v in values.items():
        try:
            out[k] = encode_float(v)
        except TypeError:  # not a number (a newer writer's evidence, say): JSON as it is
            out[k] = v
    return out


def encode_event(event: Event) -> bytes:
    """One JSON line. NaN/Inf become strings (strict JSON keeps them, unlike orjson's null)."""
    data = event.__dict__
    if type(event) is Metrics:
        line = _line(data)
        # orjson writes NaN/Inf as null and a metric value is never None: only then re-encode (rare path)
        if b"null" not in line:
            return line
        data = {**data, "values": _encoded(event.values)}
    elif isinstance(event, Alert) and event.evidence:  # alerts are rare: always through the codec
        data = {**data, "evidence": _encoded(event.evidence)}
    return _line(data)


def _encode_metrics(events: list[Metrics]) -> bytes:
    """Held metric lines in one piece: encode_event's NaN check once for the batch instead of once a line."""
    data = b"".join([_line(e.__dict__) for e in events])
    if b"null" in data:  # a NaN or Inf somewhere (orjson writes null): the exact per-line encoding
        data = b"".join([encode_event(e) for e in events])
    return data


class RunWriter:
    """Appends events to ``run_dir/events.jsonl``. Use it as a Monitor sink.

    With ``batch_s`` > 0 (live training), a routine train metric line that comes less than ``batch_s`` after
    the previous write is held (``MAX_HELD`` at most) and written with the next write: on a fast run the write
    system call cost more than the rest of the step's callback work (~25 us once a training step has evicted
    the caches; measured on the 2-core CI VM). Everything else is written at once, after the held lines, in
    order: alerts, controls, run start and end, eval and summary metrics, and the first train line after a
    pause of ``batch_s`` (so on a run whose steps take ``batch_s`` or more, every line is written the moment it
    is logged). Held lines are also written by ``flush()`` / ``close()`` (every ending the callback sees does
    both before its postmortem) and by a backstop thread once nothing was written for ``backstop_s`` (a hang, a
    long evaluation). So the file is always a prefix of the run, and only a kill that no handler sees (SIGKILL,
    the OOM killer) can lose lines: those logged less than ``batch_s`` before the newest one.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, batch_s: float = 0.0, backstop_s: float = 1.0,
                 clock: Any = time.monotonic) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / EVENTS_FILE
        self.batch_s = batch_s
        self.backstop_s = backstop_s
        self._clock = clock
        self._held: list[Metrics] = []
        self._last_write = -math.inf
        self._lock = threading.Lock()  # one writer of the descriptor at a time: the held lines stay in order
        self._closed = threading.Event()
        self._backstop: threading.Thread | None = None
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # a previous process may have died mid-line: terminate that line so ours start clean
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def __call__(self, event: Event) -> None:
        if (type(event) is Metrics and self.batch_s and event.split == "train"
                and self._clock() - self._last_write < self.batch_s and len(self._held) < MAX_HELD):
            # No lock on this path (it runs every step): only the training thread appends, at the end, and a
            # writer takes lines from the front under the lock (_take), each list operation atomic.
            self._held.append(event)  # encoded when written: a Metrics event is not changed after emit
            if self._backstop is None:
                self._start_backstop()
            return
        with self._lock:
            self._write(event, self._clock())

    def _take(self) -> list[Metrics]:
        held = self._held
        n = len(held)
        taken = held[:n]
        del held[:n]  # a line appended meanwhile stays, to be written next, after these
        return taken

    def _write(self, event: Event | None, now: float) -> None:
        """Write the held lines, then ``event``, in one system call (the caller holds the lock)."""
        if self._fd is None:
            return
        data = _encode_metrics(self._take()) if self._held else b""
        if event is not None:
            data += encode_event(event)
        if data:
            os.write(self._fd, data)
            self._last_write = now

    def flush(self) -> None:
        """Write every held line now (thread-safe)."""
        with self._lock:
            self._write(None, self._clock())

    def _start_backstop(self) -> None:
        self._backstop = threading.Thread(target=self._backstop_loop, name="ptt_nb-runfolder-backstop", daemon=True)
        self._backstop.start()

    def _backstop_loop(self) -> None:
        while not self._closed.wait(self.backstop_s):
            if self._held and self._clock() - self._last_write >= self.backstop_s:
                try:
                    self.flush()
                except OSError as exc:  # a full disk must not kill a daemon thread silently
                    log.warning("ptt_nb: could not write %s: %s", self.path, exc)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            try:
                self._write(None, self._clock())
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a reader never sees half a postmortem."""
    path = Path(path)
    data = json_safe(data, keep_nonfinite=True)  # NaN/Inf as their encode_float strings; default=str the rest
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
