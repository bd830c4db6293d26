"""Parsing an expression: pre-scan, ``ast.parse``, the safety checks and compilation into an Expr."""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass, field

from ptt_nb.rules._dsl_compile import _check_size, _Compiler, _first_refused
from ptt_nb.rules._dsl_functions import Fn, Value, _num, _truth
from ptt_nb.rules._dsl_scan import MAX_EXPR_CHARS, DslRuntimeError, NotReady, RuleSyntaxError, _err, _scan, check_chars
from ptt_nb.rules._engine import Context


@dataclass
class Expr:
    """A compiled expression. ``evaluate`` raises NotReady while data is missing, DslRuntimeError on misuse."""

    text: str
    fn: Fn
    keys: tuple[str, ...]
    config_keys: tuple[str, ...]
    value_fn: Fn | None = None
    value_text: str = ""
    windows: dict[str, int] = field(default_factory=dict)
    uses_step: bool = False

    def evaluate(self, ctx: Context) -> Value:
        return self.fn(ctx)

    def holds(self, ctx: Context) -> bool | None:
        """True/False, or None while not ready."""
        try:
            return _truth(self.fn(ctx))
        except NotReady:
            return None

    def value(self, ctx: Context) -> float:
        """The quantity the condition is about (left side of its comparison), NaN if unavailable."""
        fn = self.value_fn or self.fn
        try:
            v = fn(ctx)
        except (NotReady, DslRuntimeError):
            return math.nan
        try:
            return _num(v)
        except DslRuntimeError:
            return math.nan


def _is_guard(node: ast.AST | None) -> bool:
    """``count(x)``, ``step``, ``frac`` or a config value: a guard such as ``count(x) >= 20 and ...``, not the
    quantity a message's ``{value}`` should show."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in ("count", "cfg")
    if isinstance(node, ast.Name):
        return node.id in ("step", "frac")
    return isinstance(node, ast.Attribute)


def _value_node(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.BoolOp):
        candidates = [_value_node(v) for v in node.values]
        return next((c for c in candidates if c is not None and not _is_guard(c)), candidates[0])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _value_node(node.operand)
    if isinstance(node, ast.Compare):
        for operand in (node.left, *node.comparators):
            if not isinstance(operand, ast.Constant):
                return operand
        return None
    return node


def compile_expr(text: str) -> Expr:
    """Parse, check and compile an expression. Raises RuleSyntaxError (line/column relative to ``text``)."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"expected an expression as text, got {type(text).__name__}")
    if len(text) > MAX_EXPR_CHARS:
        raise RuleSyntaxError(f"expression too long ({len(text)} characters; the limit is {MAX_EXPR_CHARS})")
    if not text.strip():
        raise RuleSyntaxError("expected an expression such as mean(loss, 10) > 2, got nothing")
    check_chars(text)
    scan = _scan(text)
    flat = scan.flat
    lead = len(flat) - len(flat.lstrip(" "))
    try:
        with warnings.catch_warnings():  # e.g. "is with a literal": refused below anyway, no stderr noise
            warnings.simplefilter("ignore")
            tree = ast.parse(flat[lead:], mode="eval")
    except SyntaxError as exc:
        msg = exc.msg or "invalid syntax"
        if not exc.offset or (exc.lineno or 1) > 1 or lead + exc.offset > len(text.rstrip()):
            offset, msg = len(text.rstrip()), "unexpected end of expression" if msg == "invalid syntax" else msg
        else:
            offset = lead + exc.offset - 1
        raise _err(f"syntax error: {msg}; expected an expression such as mean(loss, 10) > 2", text, offset) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise RuleSyntaxError(f"expression too complex to parse ({type(exc).__name__})") from None
    if lead:
        for node in ast.walk(tree):
            if hasattr(node, "col_offset"):
                node.col_offset += lead
                if getattr(node, "end_col_offset", None) is not None:
                    node.end_col_offset += lead
    comp = _Compiler(text, scan)
    _check_size(tree.body, comp)
    _first_refused(tree.body, comp)
    fn = comp.compile(tree.body)
    vnode = _value_node(tree.body)
    value_fn = comp.compile(vnode) if vnode is not None and vnode is not tree.body else None
    value_text = comp.src(vnode) if vnode is not None else ""
    return Expr(text=text, fn=fn, keys=tuple(comp.keys), config_keys=tuple(comp.config_keys), value_fn=value_fn,
                value_text=value_text.strip(), windows=comp.windows, uses_step=comp.uses_step)

