"""Heuristics: the rule engine, the built-in catalog and the custom-rule language."""

from ptt_nb.rules._engine import Context, Engine, Finding, Rule, RuleError

__all__ = ["Context", "Engine", "Finding", "Rule", "RuleError"]
