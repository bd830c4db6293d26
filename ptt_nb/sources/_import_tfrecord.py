"""TensorBoard event files as arrays: the TFRecord framing, and the one-value scalar events that
``SummaryWriter.add_scalar`` writes (nearly every record of a ``report_to="tensorboard"`` run) decoded all at once
with numpy instead of one protobuf parse per record. ``_import_tensorboard`` sends every other record to
tensorboard's ``Event`` class. CRCs are not checked.

Why: a 100k-step run of 15 keys is 1.5 M records; one protobuf parse and a few attribute reads each cost ~3.5 s
of the 5 s a load-and-diagnose may take (issue 14). Read here: ~0.9 s (benchmarks/imports.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_LEN = struct.Struct("<Q")
_BYTE = np.uint64(0xFF)
# the bytes before the tag: Summary (2a len), its one Value (0a len), the Value's tag (0a len); lengths masked out
_VALUE_HEAD, _VALUE_HEAD_MASK = 0x0A000A002A, 0xFF00FF00FF


def frames(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Each record's payload start and length (u64 length, u32 CRC, payload, u32 CRC). A torn last record (a
    run still writing) ends the file."""
    unpack = _LEN.unpack_from
    starts: list[int] = []
    add = starts.append
    pos, size = 0, len(data)
    while pos + 12 <= size:
        (length,) = unpack(data, pos)
        end = pos + 16 + length
        if end > size:
            break
        add(pos)
        pos = end
    offsets = np.array([*starts, pos], dtype=np.int64)
    return offsets[:-1] + 12, np.diff(offsets) - 16


def _view(data: bytes, dtype: str) -> np.ndarray:
    """``data`` read as ``dtype`` at every byte offset (a one-byte stride, no copy): one gather reads a field."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((max(len(data) - size + 1, 0),), dtype=dtype, buffer=data, strides=(1,))


@dataclass
class Scalars:
    """The records that are one-value scalar events: ``ok`` marks them among all records; ``index`` (their record
    numbers), ``step``, ``tag`` (into ``names``), ``value`` (float32 widened, as protobuf gives it) and ``wall``
    are one row each, in file order."""

    ok: np.ndarray
    index: np.ndarray
    step: np.ndarray
    tag: np.ndarray
    value: np.ndarray
    wall: np.ndarray
    names: list[str]


def simple_scalars(data: bytes, start: np.ndarray, length: np.ndarray) -> Scalars:
    """Records laid out exactly as ``Event(wall_time, step, Summary(value=[Value(tag, simple_value)]))``: fields
    in that order, one-byte lengths, a step from 1 to 2**35. Any other record (the file version, text, tensors,
    several values, step 0, wall time 0, tags of 119+ bytes) is left to protobuf. A tag that is not UTF-8 raises
    ValueError (protobuf refuses it too), so the caller can take the whole file through protobuf."""
    words = _view(data, "<u8")
    last = len(words) - 1
    n = len(start)
    if last < 0 or not n:
        none = np.zeros(0, dtype=np.int64)
        return Scalars(np.zeros(n, dtype=bool), none, none, none, none.astype(float), none.astype(float), [])

    def word(i: np.ndarray) -> np.ndarray:
        return words[np.minimum(i, last)]

    head = word(start)  # 09, then wall_time's first 7 bytes
    tail = word(start + 8)  # wall_time's last byte, 10, then the step varint
    ok = (length >= 20) & (length < 0x90) & ((head & _BYTE) == 0x09) & (((tail >> np.uint64(8)) & _BYTE) == 0x10)
    step = np.zeros(n, dtype=np.uint64)
    vlen = np.zeros(n, dtype=np.int64)  # the varint's bytes; 0 while it goes on
    for k in range(5):
        b = (tail >> np.uint64(16 + 8 * k)) & _BYTE
        going = vlen == 0
        step |= np.where(going, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        vlen[going & (b < 0x80)] = k + 1
    ok &= vlen > 0
    p = start + 10 + vlen
    w = word(p)
    summary_len, value_len, tag_len = (((w >> np.uint64(s)) & _BYTE).astype(np.int64) for s in (8, 24, 40))
    ok &= ((w & np.uint64(_VALUE_HEAD_MASK)) == _VALUE_HEAD) & (summary_len == start + length - p - 2) & \
        (value_len == summary_len - 2) & (tag_len == value_len - 7) & (tag_len > 0)  # tag, 15, f32: the rest
    ok[ok] &= np.frombuffer(data, dtype=np.uint8)[np.minimum(p[ok] + 6 + tag_len[ok], len(data) - 1)] == 0x15
    index = np.flatnonzero(ok)
    p, tag_len = p[index], tag_len[index]
    names, tag = _tag_ids(data, p + 6, tag_len, word)
    value = _view(data, "<f4")[p + 7 + tag_len].astype(np.float64)
    wall = _view(data, "<f8")[start[index] + 1]
    return Scalars(ok, index, step[index].astype(np.int64), tag, value, wall, names)


def _tag_ids(data: bytes, at: np.ndarray, tag_len: np.ndarray,
             word: Callable[[np.ndarray], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Distinct tags and each record's: the tag read as 8-byte words (bytes past its end zeroed), hashed to one
    integer, then every record compared with its tag's first one, so a hash collision cannot merge two tags."""
    if not len(at):
        return [], np.zeros(0, dtype=np.int64)
    width = -(-int(tag_len.max()) // 8)
    rows = np.empty((len(at), width), dtype=np.uint64)
    for k in range(width):
        rest = np.clip(tag_len - 8 * k, 0, 8).astype(np.uint64)
        mask = np.where(rest == 8, np.uint64(2**64 - 1), (np.uint64(1) << (rest * np.uint64(8))) - np.uint64(1))
        rows[:, k] = word(at + 8 * k) & mask
    weights = np.random.default_rng(0).integers(1, 2**62, size=width, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (rows * weights).sum(axis=1, dtype=np.uint64) + tag_len.astype(np.uint64)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not ((rows == rows[first][inverse]).all() and (tag_len == tag_len[first][inverse]).all()):
        raise ValueError("two tags hash alike")
    return [data[at[i]:at[i] + tag_len[i]].decode() for i in first], inverse
