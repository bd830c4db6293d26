"""The custom-rule expression language: ``mean(`rewards/margins`, 10) < 0 and step > 50``.

An expression is parsed with Python's ``ast`` and compiled into plain closures after a strict whitelist check:
nothing from a rule's text is ever passed to ``eval``/``exec``, no attribute (except ``config.<key>``), subscript,
lambda, comprehension or call outside the function table can get through, and hostile input (huge exponents,
deep nesting, very long text) is refused with a positioned error. See docs/rules-language.md.

Metric names with slashes go in backticks (`` `rewards/margins` ``) or ``m("rewards/margins")``; simple keys may be
bare (``loss``). Window functions read zero-copy views of the metric history; one whose window is not yet full
makes the whole condition "not ready" (false, and it breaks a ``for N steps`` streak).

This module is the language's public surface; the work is done in:

- ``_dsl_scan``: errors, limits, the pre-scan (backtick names, comments, nesting) and the ``for N steps`` suffix;
- ``_dsl_functions``: the function table, number semantics and the window functions;
- ``_dsl_compile``: the whitelist compiler (ast nodes into closures) and the size/refusal checks;
- ``_dsl_parse``: ``compile_expr`` and the compiled ``Expr``;
- ``_dsl_template``: message templates.
"""

from __future__ import annotations

from ptt_nb.rules._dsl_functions import FUNCTIONS, MAD_SCALE, NAMES, RESERVED, SPECIAL_CALLS, Fn, Value, split_of
from ptt_nb.rules._dsl_parse import Expr, compile_expr
from ptt_nb.rules._dsl_scan import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_EXPR_CHARS,
    MAX_FOR,
    MAX_NODES,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_FIELDS,
    MAX_WINDOW,
    DslRuntimeError,
    NotReady,
    RuleSyntaxError,
    check_chars,
    line_col,
    split_for,
)
from ptt_nb.rules._dsl_template import Template, compile_template

__all__ = [
    "FUNCTIONS", "MAD_SCALE", "MAX_DEPTH", "MAX_EXPONENT", "MAX_EXPR_CHARS", "MAX_FOR", "MAX_NODES",
    "MAX_TEMPLATE_CHARS", "MAX_TEMPLATE_FIELDS", "MAX_WINDOW", "NAMES", "RESERVED", "SPECIAL_CALLS", "DslRuntimeError",
    "Expr", "Fn", "NotReady", "RuleSyntaxError", "Template", "Value", "check_chars", "compile_expr",
    "compile_template", "line_col", "split_for", "split_of",
]
