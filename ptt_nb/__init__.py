"""ptt_nb: live diagnostics for Hugging Face TRL post-training runs, in Jupyter and in scripts.

``from ptt_nb import DiagnosticsCallback`` and add ``callbacks=[DiagnosticsCallback()]`` to any trainer.
Importing this package imports neither torch, transformers nor IPython and changes no global state: the
callback (which needs transformers) and the widget are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from ptt_nb.events import SCHEMA_VERSION
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sources._reader import load_run, read_events, read_postmortem

__version__ = "0.1.0"

__all__ = ["DiagnosticsCallback", "Monitor", "SCHEMA_VERSION", "load_run", "read_events", "read_postmortem",
           "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    if name == "DiagnosticsCallback":
        from ptt_nb.sources._callback import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(f"module 'ptt_nb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ptt_nb``: registers the ``%ptt`` and ``%%ptt`` magics."""
    from ptt_nb.notebook._magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ptt_nb.notebook._magics import unregister

    unregister(ipython)
