"""What one rank can measure about itself: its host, whether a peer process lives, its memory limit, and a
clock for compute spans (CUDA events on a GPU, ``perf_counter`` on the CPU)."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any

NAN = float("nan")


def host_id() -> float:
    """A float-exact (< 2**31) id of this host, to tell which ranks share it."""
    return float(zlib.crc32(socket.gethostname().encode()) & 0x7FFFFFFF)


def pid_alive(pid: int) -> bool:
    """False for a process that is gone or a zombie (a killed child stays a zombie until its launcher reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x")


def env_limit_mb() -> float | None:
    """``PTT_NB_MEMORY_LIMIT_MB``: the memory one rank may use (e.g. a GPU shared with a colocated vLLM)."""
    env = os.environ.get("PTT_NB_MEMORY_LIMIT_MB")
    try:
        return float(env) if env else None
    except ValueError:
        return None


def cpu_limit_mb() -> float:
    """Memory one rank may use on a CPU run: ``PTT_NB_MEMORY_LIMIT_MB``, else host (cgroup) memory / local ranks."""
    env = env_limit_mb()
    if env:
        return env
    total = NAN
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = float(line.split()[1]) / 1024
                    break
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw) / 2**20) if math.isfinite(total) else int(raw) / 2**20
        break
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return total / max(local, 1)


class Clock:
    """Timestamps for one step: CPU ``perf_counter`` on CPU runs, CUDA events (read later) on GPU runs."""

    def __init__(self, device: Any) -> None:
        self.cuda = device is not None and getattr(device, "type", "") == "cuda"
        self.device = device
        self._pool: list[Any] = []
        self._torch = sys.modules.get("torch")

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        pool = self._pool
        event = pool.pop() if pool else self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, a: Any, b: Any) -> float:
        if a is None or b is None:
            return NAN
        if not self.cuda:
            return (b - a) * 1e3
        return float(a.elapsed_time(b))

    def release(self, *marks: Any) -> None:
        if self.cuda:
            self._pool.extend(m for m in marks if m is not None)

    def sync(self, mark: Any) -> None:
        if self.cuda and mark is not None:
            mark.synchronize()
