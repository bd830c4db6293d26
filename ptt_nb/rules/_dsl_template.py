"""Message templates of custom rules: literal text and ``{expression:spec}`` fields, each a checked expression."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ptt_nb.rules._dsl_functions import Value
from ptt_nb.rules._dsl_parse import Expr, compile_expr
from ptt_nb.rules._dsl_scan import (
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_FIELDS,
    DslRuntimeError,
    NotReady,
    RuleSyntaxError,
    _err,
    check_chars,
)
from ptt_nb.rules._engine import Context

_SPEC = re.compile(r"^(?:[^{}]?[<>=^])?[+\- ]?#?0?(?:[1-9]\d?)?[,_]?(?:\.\d{1,2})?[eEfFgG%n]?$")


@dataclass
class Template:
    """A message template: literal text and ``{expression:spec}`` fields, each a checked DSL expression."""

    text: str
    parts: list[tuple[str, Expr | None, str]]  # (literal, field or None for {value}/{step}..., format spec)
    keys: tuple[str, ...] = ()

    def render(self, ctx: Context, value: float, rule_id: str = "") -> str:
        out: list[str] = []
        for literal, expr, spec in self.parts:
            out.append(literal)
            if expr is None and spec is None:
                continue
            out.append(_render_field(expr, spec, ctx, value, rule_id))
        return "".join(out)


_TEMPLATE_NAMES = ("value", "id")


def _render_field(expr: Expr | str | None, spec: str, ctx: Context, value: float, rule_id: str) -> str:
    if isinstance(expr, str):
        v: Value = value if expr == "value" else rule_id
    else:
        try:
            v = expr.evaluate(ctx)  # type: ignore[union-attr]
        except (NotReady, DslRuntimeError):
            return "n/a"
    if isinstance(v, bool):
        return str(v)
    if spec:
        try:
            return format(v, spec)
        except (ValueError, TypeError):
            return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compile_template(text: str) -> Template:
    """Split a message template into literals and fields; each field is compiled as an expression.

    Only the fields' expressions are evaluated (never ``str.format``), so ``{0.__class__}`` or ``{x[0]}`` are
    refused like any other attribute or subscript, and format specs are limited to widths below 100.
    """
    if not isinstance(text, str):
        raise RuleSyntaxError(f"message must be text, got {type(text).__name__}")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise RuleSyntaxError(f"message too long ({len(text)} characters; the limit is {MAX_TEMPLATE_CHARS})")
    check_chars(text, "message")
    parts: list[tuple[str, Any, Any]] = []
    keys: list[str] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "}":
            if text[i + 1:i + 2] == "}":
                literal.append("}")
                i += 2
                continue
            raise _err("single '}' in message: write '}}' for a literal brace", text, i)
        if ch != "{":
            literal.append(ch)
            i += 1
            continue
        if text[i + 1:i + 2] == "{":
            literal.append("{")
            i += 2
            continue
        end, colon = _field_end(text, i)
        body = text[i + 1:end]
        expr_text, spec = (body, "") if colon is None else (text[i + 1:colon], text[colon + 1:end])
        start = i + 1
        if len(parts) >= MAX_TEMPLATE_FIELDS:
            raise _err(f"too many fields in message (limit {MAX_TEMPLATE_FIELDS})", text, i)
        if "{" in spec or "}" in spec:
            raise _err("nested fields in a format spec are not allowed", text, colon + 1)
        if not _SPEC.match(spec):
            raise _err(f"format spec {spec!r} not allowed: expected e.g. .3f, .2e, .1%, >8.2f (width below 100)",
                       text, colon + 1 if colon is not None else start)
        stripped = expr_text.strip()
        if re.fullmatch(r"\d+", stripped) or not stripped:
            raise _err("positional fields ({} or {0}) are not allowed: name a metric, an expression or {value}",
                       text, start)
        if re.match(r"\d+\s*[.\[]", stripped):
            raise _err("positional fields with attribute or index access ({0.x}, {0[1]}) are not allowed", text,
                       start)
        if "__" in re.sub(r"`[^`]*`", "", stripped):
            raise _err("dunder names (__x__) are not allowed in message fields", text, start + expr_text.find("__"))
        if re.search(r"![rsa]\s*$", expr_text):
            raise _err("conversions (!r, !s, !a) are not allowed in messages", text, start + expr_text.rfind("!"))
        if stripped in _TEMPLATE_NAMES:
            field_fn: Any = stripped
        else:
            try:
                field_fn = compile_expr(expr_text)
            except RuleSyntaxError as exc:
                line, col = exc.line, exc.col
                offset = start + _offset_of(expr_text, line, col)
                raise _err(f"in message field {{{expr_text}}}: {exc.message}", text, offset) from None
            keys.extend(k for k in field_fn.keys if k not in keys)
        parts.append(("".join(literal), field_fn, spec))
        literal = []
        i = end + 1
    parts.append(("".join(literal), None, None))
    return Template(text, parts, tuple(keys))


def _offset_of(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[:line - 1]) + col - 1


def _field_end(text: str, start: int) -> tuple[int, int | None]:
    """Index of the '}' closing the field at ``start`` and of its format-spec ':' (quotes/backticks/brackets aware)."""
    depth = 0
    colon = None
    quote = None
    i = start + 1
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ":" and depth == 0 and colon is None:
            colon = i
        elif ch == "{" and colon is None:
            raise _err("'{' inside a message field: expected an expression and '}'", text, i)
        elif ch == "}" and depth <= 0:
            return i, colon
        i += 1
    raise _err("unclosed '{' in message: expected '}' (write '{{' for a literal brace)", text, start)
