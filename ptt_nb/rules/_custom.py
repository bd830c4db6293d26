"""Custom rules: YAML rule packs, one-line rule strings and ``@rule``-decorated Python functions.

A YAML pack is data, never code (see ``_rule_yaml``); expressions go through the whitelist compiler of the DSL
(``_dsl``). Errors name the file, line and column inside the file. A custom rule with a built-in's id replaces
the built-in (the Engine replaces by id). See docs/rules-language.md.

This module is the public surface of custom rules; the work is done in:

- ``_dsl_rule``: ``DslRule``, the Rule built from an expression;
- ``_rule_decorator``: ``@rule``, ``RuleFunction`` and ``FunctionRule`` (Python rules);
- ``_rule_yaml``: YAML rule packs with positioned errors;
- ``_rule_files``: ``parse_rules``, ``load_rule_file``, ``load_rule_dir``, ``as_rules``;
- ``_rule_fields``: validation of the fields every custom rule carries;
- ``_rule_keys``: the metric names a rule may read (``known_keys``) and typo warnings.
"""

from __future__ import annotations

from ptt_nb.rules._dsl import DslRuntimeError, RuleSyntaxError
from ptt_nb.rules._dsl_rule import DslRule, keyless_problem
from ptt_nb.rules._rule_decorator import FunctionRule, RuleFunction, rule
from ptt_nb.rules._rule_files import MAX_FILE_BYTES, _one_line, as_rules, load_rule_dir, load_rule_file, parse_rules
from ptt_nb.rules._rule_keys import known_keys, metric_warnings, unknown_metrics
from ptt_nb.rules._rule_yaml import DEFAULT_FIELDS, FIELDS

__all__ = ["DEFAULT_FIELDS", "FIELDS", "MAX_FILE_BYTES", "DslRule", "DslRuntimeError", "FunctionRule", "RuleFunction",
           "RuleSyntaxError", "_one_line", "as_rules", "keyless_problem", "known_keys", "load_rule_dir",
           "load_rule_file", "metric_warnings", "parse_rules", "rule", "unknown_metrics"]
