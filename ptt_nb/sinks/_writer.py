"""Writing the run folder: ``events.jsonl`` (append-only, one event per line) and ``postmortem.json``. A crash
at any byte leaves every complete line readable; a resumed run appends. (Reading it back: ``sources._reader``.)

Writing uses ``os.write`` on an O_APPEND descriptor: a line reaches the OS at once (a killed process loses
nothing already written) without an fsync per step, which would cost more than the whole budget. The one
exception is ``RunWriter(batch_s=...)``, which the live callback uses: see ``RunWriter``.

The writer never raises into training and is never detached (``keep_attached``): an event orjson cannot encode
is written through ``monitor._normalise.jsonable``; a write the OS refuses (disk full, read-only, I/O error) is
kept in memory (``MAX_PENDING`` bytes) and retried, with one warning; past that cap it gives up with a second
warning, and the file stays a readable prefix of the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptt_nb._layout import EVENTS_FILE
from ptt_nb.events import Alert, Event, Metrics, encode_float, json_safe
from ptt_nb.monitor._normalise import jsonable

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
# lines the OS refused (disk full, read-only) are kept up to this many bytes and retried at most every RETRY_S
MAX_PENDING = 8 * 1024 * 1024
RETRY_S = 1.0


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
    """One JSON line. NaN/Inf become strings (strict JSON keeps them, unlike orjson's null). A field orjson cannot
    write (an object, a lone surrogate, an int over 64 bits) sends the event through ``jsonable`` instead."""
    try:
        return _encode(event)
    except (TypeError, ValueError, OverflowError):  # orjson.JSONEncodeError is a TypeError
        return _line(jsonable(event.__dict__))


def _encode(event: Event) -> bytes:
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
    try:
        data = b"".join([_line(e.__dict__) for e in events])
    except (TypeError, ValueError, OverflowError):  # one line orjson cannot write: each through encode_event
        return b"".join([encode_event(e) for e in events])
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

    Errors never reach training (see the module docstring); ``failed`` says why the writer gave up, if it did.
    """

    keep_attached = True  # Monitor.emit never detaches the run folder's writer

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
        self._pending: list[bytes] = []  # bytes the OS refused, oldest first: written before anything newer
        self._pending_size = 0
        self._last_try = -math.inf
        self._error: OSError | None = None  # the write error being retried
        self._first_lost = ""  # where the first line not yet written is, e.g. "step 3" (for the warnings)
        self.failed: str | None = None  # why this writer gave up: the file ends where it stopped
        self._warn: Callable[[str], None] | None = None
        self._said: list[str] = []  # warnings given before report_to
        self._fd: int | None = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            # a previous process may have died mid-line: terminate that line so ours start clean
            size = os.fstat(self._fd).st_size
            if size and self.path.is_file():
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self._fd, b"\n")
        except OSError as exc:
            self._give_up(f"ptt_nb: cannot write the run folder: {self.path} ({type(exc).__name__}: {exc}). "
                          "Training goes on; this run's events are not recorded on disk (the widget and console "
                          "still show them).")

    def report_to(self, warn: Callable[[str], None]) -> None:
        """Send this writer's warnings to ``warn`` (``Monitor.warn``: the widget, the report) from now on,
        the ones already given included."""
        self._warn = warn
        said, self._said = self._said, []
        for message in said:
            warn(message)

    def _warning(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            log.warning(message)
            self._said.append(message)

    def _give_up(self, message: str) -> None:
        self.failed = message
        self._pending, self._pending_size = [], 0
        self._close_fd()
        self._warning(message)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

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
            self._put(data, now)
            self._last_write = now

    def _put(self, data: bytes, now: float) -> None:
        """Write ``data`` after any bytes still pending; what the OS refuses waits for a retry (never raises)."""
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > MAX_PENDING:
                self._give_up(f"ptt_nb: gave up writing {self.path} ({self._error}): {self._pending_size:,} bytes "
                              f"of events could not be written. The file ends before {self._first_lost}; "
                              "training goes on (the widget and console still show the run).")
                return
            if now - self._last_try < RETRY_S:
                return
            data = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
        self._last_try = now
        written = 0
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (a nearly full disk): the rest, or the error that stops it
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            rest = data[written:]
            self._pending, self._pending_size = [rest], len(rest)
            if self._error is None:
                self._first_lost = self._step_of(rest)
                self._warning(f"ptt_nb: cannot write {self.path} ({type(exc).__name__}: {exc}). Training goes on; "
                              f"ptt_nb keeps up to {MAX_PENDING // 2**20} MiB of events in memory and retries.")
            self._error = exc
            return
        if self._error is not None:
            log.info("ptt_nb: writing %s again (%s had stopped it); nothing was lost", self.path, self._error)
            self._error = None

    @staticmethod
    def _step_of(data: bytes) -> str:
        """Where the first line of ``data`` is in the run (for the warnings)."""
        try:
            row = json.loads(data.split(b"\n", 1)[0])
            return f"step {row['step']}" if "step" in row else f"the {row.get('kind', 'first')} event"
        except Exception:  # noqa: BLE001 - a partial line
            return "a partly written line"

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
                except Exception as exc:  # noqa: BLE001 - never kill the daemon thread silently
                    log.warning("ptt_nb: could not write %s: %s", self.path, exc)

    def close(self) -> None:
        """Write what is held or pending (one last try), then close; never raises."""
        self._closed.set()
        with self._lock:
            try:
                self._last_try = -math.inf  # pending bytes get their last try now
                self._write(None, self._clock())
                if self._pending:
                    self._put(b"", self._clock())
                if self._pending:  # already warned when it started failing: the tally goes to the log only
                    self.failed = (f"ptt_nb: could not write the end of {self.path} ({self._error}): "
                                   f"{self._pending_size:,} bytes of events from {self._first_lost} on are not on "
                                   "disk.")
                    self._pending, self._pending_size = [], 0
                    log.info(self.failed)
            finally:
                self._close_fd()


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
