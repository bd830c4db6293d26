"""ptt_nb: live diagnostics for Hugging Face TRL post-training runs, in Jupyter and in scripts.

``from ptt_nb import DiagnosticsCallback`` and add ``callbacks=[DiagnosticsCallback()]`` to any trainer.
Importing this package imports neither torch, transformers nor IPython and changes no global state: the
callback (which needs transformers), the custom-rule API and the dashboard are loaded on first use.

The data flows one way, and the folders say so: ``sources/`` (the callback, the run-folder reader and
follower) feed a ``monitor/`` (history, rule engine, rank stats) whose events go to ``sinks/`` (run folder,
console, report) and to the ``notebook/`` adapters (widget, magics). ``rules/`` holds what the engine runs.
Everything with a leading underscore is internal; the names below are the public surface.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ptt_nb._version import __version__
from ptt_nb.events import SCHEMA_VERSION
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.sources._reader import load_run, read_events, read_postmortem

if TYPE_CHECKING:
    from ptt_nb.notebook._widget import show
    from ptt_nb.rules._backtest import backtest
    from ptt_nb.rules._custom import rule
    from ptt_nb.rules._engine import Finding, Rule
    from ptt_nb.sinks._text_summary import summarize
    from ptt_nb.sources._callback import DiagnosticsCallback
    from ptt_nb.sources._follow import watch


# public name -> the module that defines it, imported on first use (transformers, IPython, the rule language)
_LAZY = {
    "DiagnosticsCallback": "ptt_nb.sources._callback",
    "rule": "ptt_nb.rules._custom",
    "Rule": "ptt_nb.rules._engine",
    "Finding": "ptt_nb.rules._engine",
    "backtest": "ptt_nb.rules._backtest",
    "watch": "ptt_nb.sources._follow",
    "show": "ptt_nb.notebook._widget",
    "summarize": "ptt_nb.sinks._text_summary",
}

__all__ = ["__version__", "DiagnosticsCallback", "Monitor", "SCHEMA_VERSION", "load_run", "read_events",
           "read_postmortem", "rule", "Rule", "Finding", "backtest", "watch", "show", "summarize",
           "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptt_nb' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ptt_nb``: registers the ``%ptt`` and ``%%ptt`` magics."""
    from ptt_nb.notebook._magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ptt_nb.notebook._magics import unregister

    unregister(ipython)
