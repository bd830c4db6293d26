"""Facts about the process: package versions, git commit, distributed rank. Read once per run, never per step."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
from functools import lru_cache
from importlib import metadata
from typing import Any

PACKAGES = ("ptt-nb", "trl", "transformers", "torch", "accelerate", "datasets", "peft", "deepspeed")


_prefetch: threading.Thread | None = None


def prefetch() -> None:
    """Read versions and the git commit on a background thread, once per process.

    Reading package metadata and running ``git`` costs ~0.1 s; done when the callback is constructed (before
    the model and datasets load), it is off the training run's clock by the time ``on_train_begin`` needs it.
    """
    global _prefetch
    if _prefetch is None:
        _prefetch = threading.Thread(target=_warm, name="ptt_nb-prefetch", daemon=True)
        _prefetch.start()


def _warm() -> None:
    versions()
    git_commit()


def _wait_prefetch() -> None:
    if _prefetch is not None and _prefetch is not threading.current_thread():
        _prefetch.join(timeout=5)


def versions() -> dict[str, str]:
    _wait_prefetch()
    return dict(_versions())


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(cwd: str | None = None) -> str | None:
    if cwd is None:
        _wait_prefetch()
        return _git_commit_here(os.getcwd())
    return _git_commit_here(cwd)


@lru_cache(maxsize=8)
def _git_commit_here(cwd: str) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def rank_and_world() -> tuple[int, int]:
    """Global rank and world size: torch.distributed when initialised, launcher env vars otherwise."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except Exception:  # noqa: BLE001 - a half-torn-down process group must not break logging
            pass
    rank = int(os.environ.get("RANK", os.environ.get("PMI_RANK", "0")) or 0)
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("PMI_SIZE", "1")) or 1)
    return rank, world


def describe() -> dict[str, Any]:
    """The environment block of a postmortem."""
    rank, world = rank_and_world()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "rank": rank,
        "world_size": world,
        "versions": versions(),
        "argv": sys.argv[:20],
        "cwd": os.getcwd(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                env["cuda"] = {
                    "device_count": torch.cuda.device_count(),
                    "device": torch.cuda.get_device_name(),
                    "max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                    "memory_reserved_mb": torch.cuda.memory_reserved() / 2**20,
                }
        except Exception:  # noqa: BLE001
            pass
    return env


def in_notebook() -> bool:
    """True inside a Jupyter kernel. Looks only at already-imported modules: importing IPython is not ours to do."""
    ipython_mod = sys.modules.get("IPython")
    if ipython_mod is None:
        return False
    shell = ipython_mod.get_ipython()
    # by MRO: Colab's shell is google.colab._shell.Shell, a ZMQInteractiveShell subclass
    return shell is not None and any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)
