"""Heuristics: the rule engine, the built-in catalog and the custom-rule language.

The engine's types are imported here; the loaders and the backtest are imported on first use (they pull in
YAML and the expression language), so ``import ptt_nb.rules`` stays as light as the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from ptt_nb.rules._engine import Context, Engine, Finding, Rule, RuleError

_LAZY = {
    "parse_rules": "ptt_nb.rules._rule_files",
    "load_rule_file": "ptt_nb.rules._rule_files",
    "load_rule_dir": "ptt_nb.rules._rule_files",
    "as_rules": "ptt_nb.rules._rule_files",
    "known_keys": "ptt_nb.rules._rule_keys",
    "backtest": "ptt_nb.rules._backtest",
    "backtest_many": "ptt_nb.rules._backtest",
    "BacktestResult": "ptt_nb.rules._backtest",
}

__all__ = ["Context", "Engine", "Finding", "Rule", "RuleError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptt_nb.rules' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
