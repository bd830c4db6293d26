"""The custom-rule expression language: ``mean(`rewards/margins`, 10) < 0 and step > 50``.

An expression is parsed with Python's ``ast`` and compiled into plain closures after a strict whitelist check:
nothing from a rule's text is ever passed to ``eval``/``exec``, no attribute (except ``config.<key>``), subscript,
lambda, comprehension or call outside the function table below can get through, and hostile input (huge
exponents, deep nesting, very long text) is refused with a positioned error. See docs/rules-language.md.

Metric names with slashes go in backticks (`` `rewards/margins` ``) or ``m("rewards/margins")``; simple keys may be
bare (``loss``). Window functions read zero-copy views of the metric history; one whose window is not yet full
makes the whole condition "not ready" (false, and it breaks a ``for N steps`` streak).
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptt_nb.rules._engine import Context, RuleError

MAX_EXPR_CHARS = 2000
MAX_NODES = 256
MAX_DEPTH = 24
MAX_WINDOW = 10_000
MAX_EXPONENT = 64
MAX_FOR = 10_000
MAX_TEMPLATE_CHARS = 2000
MAX_TEMPLATE_FIELDS = 24
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation

Value = Any  # float | bool | str at run time
Fn = Callable[[Context], Value]


class RuleSyntaxError(RuleError):
    """A rule that cannot be compiled: where (source, line, column, both 1-based) and what was expected."""

    def __init__(self, message: str, *, source: str = "<string>", line: int = 1, col: int = 1,
                 snippet: str | None = None) -> None:
        self.message, self.source, self.line, self.col, self.snippet = message, source, line, col, snippet
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.source}:{self.line}:{self.col}: {self.message}"
        if self.snippet is not None:
            snippet, col = self.snippet, self.col
            if len(snippet) > 100:  # show a window around the column
                start = max(0, col - 50)
                snippet = ("..." if start else "") + snippet[start:start + 100] + ("..." if start + 100 < len(
                    snippet) else "")
                col = col - start + (3 if start else 0)
            text += f"\n    {snippet}\n    {' ' * (col - 1)}^"
        return text

    def relocate(self, source: str, line: int, col: int, snippet: str | None) -> RuleSyntaxError:
        """The same error placed inside a file (the expression's own offsets mapped by the caller)."""
        return RuleSyntaxError(self.message, source=source, line=line, col=col, snippet=snippet)


class DslRuntimeError(RuntimeError):
    """A rule that failed while evaluating (e.g. ``log`` of a negative number); the Engine disables it."""


class NotReady(Exception):
    """A window is not full yet, a metric has no value yet, or a config key is missing: the rule waits."""


# -- pre-scan: backtick names, newlines, comments, nesting ----------------------------------------------------------

@dataclass
class _Scan:
    flat: str  # one line, same length as the source text, backtick names replaced by underscores
    names: dict[int, str]  # char offset of a backtick placeholder -> metric name


def _err(msg: str, text: str, offset: int) -> RuleSyntaxError:
    line, col = line_col(text, offset)
    snippet = text.split("\n")[line - 1] if text else ""
    return RuleSyntaxError(msg, line=line, col=col, snippet=snippet)


_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def check_chars(text: str, what: str = "expression") -> None:
    """Refuse control characters and lone surrogates: they break JSON event files and terminals downstream."""
    m = _BAD_CHAR.search(text)
    if m:
        raise _err(f"{what} contains an invalid character (U+{ord(m.group()):04X})", text, m.start())


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def _scan(text: str) -> _Scan:
    out = list(text)
    names: dict[int, str] = {}
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch:
                if text[j] == "\n":
                    raise _err("unterminated string: expected a closing " + ch + " on the same line", text, i)
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise _err(f"unterminated string: expected a closing {ch}", text, i)
            i = j + 1
            continue
        if ch == "`":
            j = text.find("`", i + 1)
            nl = text.find("\n", i + 1)
            if j < 0 or (0 <= nl < j):
                raise _err("unterminated metric name: expected a closing ` on the same line", text, i)
            name = text[i + 1:j]
            if not name.strip():
                raise _err("empty metric name ``: expected a metric such as `rewards/margins`", text, i)
            names[i] = name
            out[i:j + 1] = "_" * (j + 1 - i)
            i = j + 1
            continue
        if ch == "#":
            raise _err("'#' is not allowed in an expression (put comments in the YAML, outside the expression)",
                       text, i)
        if ch in "\n\r\t":
            out[i] = " "
        elif ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _err(f"expression nested too deeply (more than {MAX_DEPTH} brackets)", text, i)
        elif ch in ")]}":
            depth -= 1
        i += 1
    return _Scan("".join(out), names)


# -- function table -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FnSpec:
    window: bool  # first argument is a metric, second an integer window
    min_args: int
    max_args: int
    doc: str


FUNCTIONS: dict[str, _FnSpec] = {
    "mean": _FnSpec(True, 2, 2, "mean(x, n): mean of the last n values"),
    "min": _FnSpec(True, 2, 2, "min(x, n): smallest of the last n values"),
    "max": _FnSpec(True, 2, 2, "max(x, n): largest of the last n values"),
    "std": _FnSpec(True, 2, 2, "std(x, n): sample standard deviation (ddof=1) of the last n values"),
    "median": _FnSpec(True, 2, 2, "median(x, n): median of the last n values"),
    "slope": _FnSpec(True, 2, 2, "slope(x, n): OLS slope per step over the last n values"),
    "zscore": _FnSpec(True, 2, 2, "zscore(x, n): robust z of the latest value vs the n before it (median/MAD)"),
    "last": _FnSpec(True, 1, 2, "last(x, k=0): the value k log points before the latest"),
    "delta": _FnSpec(True, 1, 2, "delta(x, n=1): latest minus the value n log points earlier"),
    "pct_change": _FnSpec(True, 1, 2, "pct_change(x, n=1): (latest - earlier) / |earlier|, as a fraction"),
    "count": _FnSpec(True, 1, 2, "count(x): values logged so far; count(x, n): finite values among the last n"),
    "abs": _FnSpec(False, 1, 1, "abs(v)"),
    "log": _FnSpec(False, 1, 1, "log(v): natural log; log(0) = -inf, negative raises"),
    "exp": _FnSpec(False, 1, 1, "exp(v); overflow gives inf"),
    "sqrt": _FnSpec(False, 1, 1, "sqrt(v); negative raises"),
    "isnan": _FnSpec(False, 1, 1, "isnan(v)"),
    "isfinite": _FnSpec(False, 1, 1, "isfinite(v): not NaN and not +-inf"),
}
SPECIAL_CALLS = ("m", "cfg")
NAMES = {"step": "the current global step", "frac": "fraction of training done (step / max_steps; 0 if unknown)",
         "inf": "infinity", "nan": "not a number"}
RESERVED = frozenset({*FUNCTIONS, *SPECIAL_CALLS, *NAMES, "config", "value"})
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%", ast.Pow: "**"}
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_REFUSED = {
    ast.Attribute: "attribute access (a.b) is not allowed; only config.<key> is",
    ast.Subscript: "subscripts (a[...]) are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.IfExp: "conditional expressions (a if c else b) are not allowed; use and/or",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Starred: "* unpacking is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}


# -- runtime helpers ------------------------------------------------------------------------------------------------

def _num(v: Value) -> float:
    if type(v) is float:
        return v
    if isinstance(v, (bool, int)):
        return float(v)
    raise DslRuntimeError(f"{v!r} is text; text can only be compared with == or !=")


def _truth(v: Value) -> bool:
    if type(v) is float:
        return v == v and v != 0.0
    return bool(v)


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    return math.nan if b == 0.0 else a % b


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf if a > 0 or float(b).is_integer() and int(b) % 2 == 0 else -math.inf
    except (ValueError, ZeroDivisionError):
        if a == 0.0:
            return math.inf
        raise DslRuntimeError(f"{a!r} ** {b!r} is not a real number") from None


def _log(v: float) -> float:
    if v > 0 or v != v:
        return math.log(v)
    if v == 0:
        return -math.inf
    raise DslRuntimeError(f"log() of a negative number ({v!r})")


def _sqrt(v: float) -> float:
    if v >= 0 or v != v:
        return math.sqrt(v)
    raise DslRuntimeError(f"sqrt() of a negative number ({v!r})")


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


_SCALAR: dict[str, Callable[[float], Value]] = {
    "abs": abs, "log": _log, "exp": _exp, "sqrt": _sqrt, "isnan": math.isnan, "isfinite": math.isfinite,
}


def _series(ctx: Context, split: str, key: str):
    s = ctx.history.series.get((split, key))
    if s is None or s.n == 0:
        raise NotReady(key)
    return s


def _win(ctx: Context, split: str, key: str, n: int) -> np.ndarray:
    s = _series(ctx, split, key)
    if s.n < n:
        raise NotReady(key)
    return s.values[s.n - n:s.n]


# Small windows (the usual 5-100 points) are faster as Python lists than through numpy's per-call overhead
# (median of 50: ~4 us sorted() vs ~30 us np.median); NaN is handled explicitly since sorted() can't order it.
SMALL = 128


def _median_list(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    h = n // 2
    return xs[h] if n % 2 else (xs[h - 1] + xs[h]) / 2


def _np_median(a: np.ndarray) -> float:
    """np.median without its per-call overhead (partition only), NaN if any NaN (as np.median)."""
    total = float(a.sum())
    if total != total and np.isnan(a).any():
        return math.nan
    n = a.shape[0]
    h = n // 2
    if n % 2:
        return float(np.partition(a, h)[h])
    p = np.partition(a, (h - 1, h))
    return (float(p[h - 1]) + float(p[h])) / 2


def _has_nan(xs: list[float]) -> bool:
    total = sum(xs)  # C-fast; NaN only if a NaN is there (or +inf and -inf both are: then look closer)
    return total != total and any(x != x for x in xs)


def _w_mean(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    return sum(w.tolist()) / n if n <= SMALL else float(w.mean())


def _w_min(ctx, sp, k, n):
    return float(_win(ctx, sp, k, n).min())


def _w_max(ctx, sp, k, n):
    return float(_win(ctx, sp, k, n).max())


def _w_std(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    if n < 2:
        return 0.0
    if n > SMALL:
        return float(w.std(ddof=1))
    xs = w.tolist()
    m = sum(xs) / n
    return math.sqrt(sum((x - m) * (x - m) for x in xs) / (n - 1))


def _w_median(ctx, sp, k, n):
    w = _win(ctx, sp, k, n)
    if n > SMALL:
        return _np_median(w)
    xs = w.tolist()
    return math.nan if _has_nan(xs) else _median_list(xs)


def _w_slope(ctx, sp, k, n):
    s = _series(ctx, sp, k)
    if s.n < n or n < 2:
        raise NotReady(k)
    if n <= SMALL:
        x0 = int(s.steps[s.n - n])
        xs = [x - x0 for x in s.steps[s.n - n:s.n].tolist()]  # small offsets keep the sums exact
        ys = s.values[s.n - n:s.n].tolist()
        mx, my = sum(xs) / n, sum(ys) / n
        den = sum(map(operator.mul, xs, xs)) - n * mx * mx
        num = sum(map(operator.mul, xs, [y - my for y in ys]))  # centred y: no cancellation for large values
        return num / den if den > 0 else math.nan
    x = s.steps[s.n - n:s.n].astype(np.float64)
    y = s.values[s.n - n:s.n]
    x = x - x.mean()
    den = float(x @ x)
    return float(x @ (y - y.mean())) / den if den > 0 else math.nan


def _w_zscore(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    latest = float(w[-1])
    if n > SMALL:
        prev = w[:-1]
        med = _np_median(prev)
        mad = _np_median(np.abs(prev - med))
    else:
        prev = w[:-1].tolist()
        if _has_nan(prev):
            return math.nan
        med = _median_list(prev)
        mad = _median_list([abs(x - med) for x in prev])
    diff = latest - med
    if mad == 0.0:
        return 0.0 if diff == 0.0 else (math.nan if diff != diff else math.copysign(math.inf, diff))
    return diff / (MAD_SCALE * mad)


def _w_last(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return float(w[0])


def _w_delta(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return float(w[-1] - w[0])


def _w_pct_change(ctx, sp, k, n):
    w = _win(ctx, sp, k, n + 1)
    return _div(float(w[-1] - w[0]), abs(float(w[0])))


def _w_count(ctx, sp, k, n):
    s = ctx.history.series.get((sp, k))
    if s is None:
        return 0.0
    if n is None:
        return float(s.n)
    return float(np.isfinite(s.values[max(0, s.n - n):s.n]).sum())


_WINDOW: dict[str, Callable[..., float]] = {
    "mean": _w_mean, "min": _w_min, "max": _w_max, "std": _w_std, "median": _w_median, "slope": _w_slope,
    "zscore": _w_zscore, "last": _w_last, "delta": _w_delta, "pct_change": _w_pct_change, "count": _w_count,
}
_WINDOW_DEFAULT = {"last": 0, "delta": 1, "pct_change": 1, "count": None}


def split_of(key: str) -> str:
    """Where a metric lives in the history: ``eval_*`` keys in the eval split, the rest in train."""
    return "eval" if key.startswith("eval_") else "train"


def _latest(key: str) -> Fn:
    split = split_of(key)

    def get(ctx: Context) -> float:
        s = ctx.history.series.get((split, key))
        if s is None or s.n == 0:
            raise NotReady(key)
        return float(s.values[s.n - 1])

    return get


# -- compiler -------------------------------------------------------------------------------------------------------

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


class _Compiler:
    def __init__(self, text: str, scan: _Scan) -> None:
        self.text, self.scan = text, scan
        self.keys: list[str] = []
        self.config_keys: list[str] = []
        self.windows: dict[str, int] = {}
        self.uses_step = False
        self._bytes = scan.flat.encode() if not scan.flat.isascii() else None

    # positions
    def off(self, node: ast.AST) -> int:
        col = getattr(node, "col_offset", 0)
        if self._bytes is not None:
            col = len(self._bytes[:col].decode(errors="ignore"))
        return col

    def end(self, node: ast.AST) -> int:
        col = getattr(node, "end_col_offset", None) or 0
        if self._bytes is not None:
            col = len(self._bytes[:col].decode(errors="ignore"))
        return col

    def fail(self, msg: str, node: ast.AST | int) -> RuleSyntaxError:
        return _err(msg, self.text, node if isinstance(node, int) else self.off(node))

    def src(self, node: ast.AST) -> str:
        return self.text[self.off(node):self.end(node)]

    # metric references
    def metric_name(self, node: ast.AST) -> str | None:
        """The metric a node names (bare, backtick or m("...")), or None if it is not a metric reference."""
        if isinstance(node, ast.Name):
            placeholder = self.scan.names.get(self.off(node))
            if placeholder is not None:
                return placeholder
            self.check_name(node)
            if node.id in RESERVED:
                return None
            return node.id
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "m":
            return self.string_arg(node, "m", "a metric name")
        return None

    def string_arg(self, node: ast.Call, fname: str, what: str) -> str:
        if node.keywords or len(node.args) != 1 or not (isinstance(node.args[0], ast.Constant)
                                                        and isinstance(node.args[0].value, str)):
            raise self.fail(f'{fname}() takes one quoted string, {what}: {fname}("...")', node)
        value = node.args[0].value
        if not value:
            raise self.fail(f"{fname}() needs a non-empty name", node)
        return value

    def check_name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            raise self.fail(f"dunder names such as {node.id} are not allowed", node)
        if node.id.startswith("_"):
            raise self.fail(f"names starting with '_' are not allowed ({node.id}); "
                            "put unusual metric names in backticks", node)

    def add_key(self, key: str) -> None:
        if key not in self.keys:
            self.keys.append(key)

    # main dispatch
    def compile(self, node: ast.AST) -> Fn:
        refused = _REFUSED.get(type(node))
        if refused:
            if isinstance(node, ast.Attribute):
                return self.attribute(node)
            raise self.fail(refused, node)
        method = getattr(self, "c_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"{type(node).__name__} is not supported in a rule expression", node)
        return method(node)

    def c_Constant(self, node: ast.Constant) -> Fn:
        v = node.value
        if isinstance(v, bool):
            return lambda _c, v=v: v
        if isinstance(v, (int, float)):
            try:
                f = float(v)
            except OverflowError:
                raise self.fail("number too large", node) from None
            return lambda _c, f=f: f
        if isinstance(v, str):
            raise self.fail('text is only allowed in m("metric"), cfg("key") or in == / != comparisons', node)
        raise self.fail(f"constants of type {type(v).__name__} are not allowed", node)

    def c_Name(self, node: ast.Name) -> Fn:
        key = self.metric_name(node)
        if key is not None:
            self.add_key(key)
            return _latest(key)
        name = node.id
        if name == "step":
            self.uses_step = True
            return lambda c: float(c.step)
        if name == "frac":
            self.uses_step = True
            return lambda c: c.frac
        if name == "inf":
            return lambda _c: math.inf
        if name == "nan":
            return lambda _c: math.nan
        if name == "config":
            raise self.fail('config needs a key: config.beta or cfg("beta")', node)
        if name == "value":
            raise self.fail("{value} is only available in message templates; in an expression write the "
                            "quantity itself, or `value` for a metric named value", node)
        raise self.fail(f"{name} is a function: call it, e.g. {FUNCTIONS[name].doc.split(':')[0]}"
                        if name in FUNCTIONS else f"{name}() is a function, not a value", node)

    def attribute(self, node: ast.Attribute) -> Fn:
        if isinstance(node.value, ast.Name) and node.value.id == "config":
            if self.scan.names.get(self.off(node.value)) is None:
                if node.attr.startswith("_"):
                    raise self.fail(f"config keys starting with '_' are not allowed ({node.attr})",
                                    self.end(node.value) + 1)
                return self.config(node.attr, None, node)
        raise self.fail(_REFUSED[ast.Attribute], self.end(node.value))

    def config(self, key: str, default: Value, node: ast.AST) -> Fn:
        if key not in self.config_keys:
            self.config_keys.append(key)
        has_default = default is not None

        def get(ctx: Context) -> Value:
            v = ctx.config.get(key)
            if v is None:
                if has_default:
                    return default
                raise NotReady("config." + key)
            if isinstance(v, str):
                return v
            if isinstance(v, (bool, int, float)):
                return float(v)
            raise DslRuntimeError(f"config.{key} is a {type(v).__name__}, not a number or text")

        return get

    def c_UnaryOp(self, node: ast.UnaryOp) -> Fn:
        inner = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda c: not _truth(inner(c))
        if isinstance(node.op, ast.USub):
            return lambda c: -_num(inner(c))
        if isinstance(node.op, ast.UAdd):
            return lambda c: _num(inner(c))
        raise self.fail("operator ~ is not supported", node)

    def c_BinOp(self, node: ast.BinOp) -> Fn:
        op = type(node.op)
        if op not in _OPS:
            sym = {ast.FloorDiv: "//", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
                   ast.RShift: ">>", ast.MatMult: "@"}.get(op, op.__name__)
            hint = " (use and / or / not for logic)" if sym in "&|^" else ""
            raise self.fail(f"operator {sym} is not supported; use + - * / % **{hint}", node)
        if op is ast.Div:
            self.check_slash(node)
        if op is ast.Pow:
            exp = node.right
            if isinstance(exp, ast.UnaryOp) and isinstance(exp.op, (ast.USub, ast.UAdd)):
                exp = exp.operand
            if not (isinstance(exp, ast.Constant) and type(exp.value) in (int, float)
                    and abs(exp.value) <= MAX_EXPONENT):
                raise self.fail(f"the exponent of ** must be a number between -{MAX_EXPONENT} and {MAX_EXPONENT}",
                                node.right)
        left, right = self.compile(node.left), self.compile(node.right)
        if op is ast.Add:
            return lambda c: _num(left(c)) + _num(right(c))
        if op is ast.Sub:
            return lambda c: _num(left(c)) - _num(right(c))
        if op is ast.Mult:
            return lambda c: _num(left(c)) * _num(right(c))
        if op is ast.Div:
            return lambda c: _div(_num(left(c)), _num(right(c)))
        if op is ast.Mod:
            return lambda c: _mod(_num(left(c)), _num(right(c)))
        return lambda c: _pow(_num(left(c)), _num(right(c)))

    def check_slash(self, node: ast.BinOp) -> None:
        """``rewards/margins`` without backticks parses as a division; say so instead of dividing."""
        left, right = node.left, node.right
        if isinstance(left, ast.Name) and isinstance(right, ast.Name) and self.end(left) + 1 == self.off(right):
            if self.scan.names.get(self.off(left)) is None and self.scan.names.get(self.off(right)) is None:
                name = self.src(node)
                raise self.fail(f"{name} reads as {left.id} divided by {right.id}: write a metric name with a "
                                f"slash in backticks, `{name}`, or put spaces around / to divide", node)

    def c_BoolOp(self, node: ast.BoolOp) -> Fn:
        parts = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):
            def f_and(c: Context) -> bool:
                for p in parts:
                    if not _truth(p(c)):
                        return False
                return True
            return f_and

        def f_or(c: Context) -> bool:
            for p in parts:
                if _truth(p(c)):
                    return True
            return False
        return f_or

    def c_Compare(self, node: ast.Compare) -> Fn:
        ops = []
        for op in node.ops:
            sym = _CMP.get(type(op))
            if sym is None:
                name = {ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}.get(type(op), "?")
                raise self.fail(f"comparison '{name}' is not supported; use == != < <= > >=", node)
            ops.append(sym)
        operands = [node.left, *node.comparators]
        fns: list[Fn] = []
        for i, operand in enumerate(operands):
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                near = [ops[j] for j in (i - 1, i) if 0 <= j < len(ops)]
                if any(o not in ("==", "!=") for o in near):
                    raise self.fail("text can only be compared with == or !=", operand)
                fns.append(lambda _c, s=operand.value: s)
            else:
                fns.append(self.compile(operand))
        pairs = list(zip(ops, fns[1:], strict=True))
        first = fns[0]

        def f_cmp(c: Context) -> bool:
            a = first(c)
            for sym, g in pairs:
                b = g(c)
                if not _compare(sym, a, b):
                    return False
                a = b
            return True
        return f_cmp

    def c_Call(self, node: ast.Call) -> Fn:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise self.fail(_REFUSED[ast.Attribute], self.end(func.value))
            raise self.fail("only the listed functions can be called", node)
        self.check_name(func)
        name = func.id
        if node.keywords:
            raise self.fail(f"{name}() takes no keyword arguments", node.keywords[0].value)
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(_REFUSED[ast.Starred], node)
        if name == "m":
            key = self.string_arg(node, "m", "a metric name")
            self.add_key(key)
            return _latest(key)
        if name == "cfg":
            return self.cfg(node)
        spec = FUNCTIONS.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, [*FUNCTIONS, *SPECIAL_CALLS], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.fail(f"unknown function {name}(){hint} Available: {', '.join([*FUNCTIONS, *SPECIAL_CALLS])}",
                            node)
        if not spec.min_args <= len(node.args) <= spec.max_args:
            want = (f"{spec.min_args}" if spec.min_args == spec.max_args else f"{spec.min_args}-{spec.max_args}")
            raise self.fail(f"{name}() takes {want} argument(s): {spec.doc}", node)
        if not spec.window:
            inner = self.compile(node.args[0])
            scalar = _SCALAR[name]
            return lambda c: scalar(_num(inner(c)))
        key = self.metric_name(node.args[0])
        if key is None:
            raise self.fail(f"{name}() needs a metric as its first argument: {spec.doc}", node.args[0])
        self.add_key(key)
        if len(node.args) == 2:
            n = self.window_size(node.args[1], name)
        else:
            n = _WINDOW_DEFAULT[name]
        need = (n or 0) + (1 if name in ("zscore", "last", "delta", "pct_change") else 0)
        self.windows[key] = max(self.windows.get(key, 0), need)
        wfn = _WINDOW[name]
        split = split_of(key)
        return lambda c: wfn(c, split, key, n)

    def window_size(self, node: ast.AST, fname: str) -> int:
        lo = 0 if fname == "last" else 1
        if not (isinstance(node, ast.Constant) and type(node.value) is int):
            raise self.fail(f"the window of {fname}() must be a whole number between {lo} and {MAX_WINDOW}", node)
        n = node.value
        if not lo <= n <= MAX_WINDOW:
            raise self.fail(f"window {n} out of range: {fname}() takes {lo} to {MAX_WINDOW} log points", node)
        return n

    def cfg(self, node: ast.Call) -> Fn:
        args = node.args
        if not 1 <= len(args) <= 2 or not (isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)):
            raise self.fail('cfg() takes a quoted key and an optional default: cfg("beta") or cfg("beta", 0.1)',
                            node)
        key = args[0].value
        if not key or key.startswith("_"):
            raise self.fail("cfg() needs a key that does not start with '_'", args[0])
        default = None
        if len(args) == 2:
            d = args[1]
            neg = isinstance(d, ast.UnaryOp) and isinstance(d.op, ast.USub)
            if neg:
                d = d.operand
            if not (isinstance(d, ast.Constant) and isinstance(d.value, (int, float, str, bool))):
                raise self.fail("the default of cfg() must be a number, True/False or a quoted text", args[1])
            default = d.value if isinstance(d.value, str) else float(d.value) * (-1 if neg else 1)
        return self.config(key, default, node)


def _compare(sym: str, a: Value, b: Value) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        if sym == "==":
            return a == b
        if sym == "!=":
            return a != b
        raise DslRuntimeError(f"cannot order text with {sym}: {a!r} {sym} {b!r}")
    a, b = _num(a), _num(b)
    if sym == "<":
        return a < b
    if sym == ">":
        return a > b
    if sym == "<=":
        return a <= b
    if sym == ">=":
        return a >= b
    if sym == "==":
        return a == b
    return a != b


def _check_size(tree: ast.AST, comp: _Compiler) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
            continue
        count += 1
        if count > MAX_NODES:
            raise comp.fail(f"expression too large (more than {MAX_NODES} parts)", node)
        if depth > MAX_DEPTH:
            raise comp.fail(f"expression nested too deeply (more than {MAX_DEPTH} levels)", node)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _first_refused(tree: ast.AST, comp: _Compiler) -> None:
    """Report the leftmost forbidden construct first (what a reader sees first), before compiling."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        msg = _REFUSED.get(type(node))
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "config" and comp.scan.names.get(comp.off(value)) is None:
                continue  # config.<key>: checked when compiled
            found.append((comp.end(value), msg))
        elif isinstance(node, ast.Subscript):
            found.append((comp.end(node.value), msg))
        elif msg:
            found.append((comp.off(node), msg))
        elif isinstance(node, ast.Name) and node.id.startswith("__") and comp.scan.names.get(comp.off(node)) is None:
            found.append((comp.off(node), f"dunder names such as {node.id} are not allowed"))
    if found:
        offset, msg = min(found, key=lambda f: f[0])
        raise comp.fail(msg, offset)


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


# -- "for N steps" suffix -------------------------------------------------------------------------------------------

_FOR_UNITS = {(), ("step",), ("steps",), ("log",), ("logs",), ("log", "point"), ("log", "points")}


def split_for(text: str) -> tuple[str, int | None]:
    """``"loss > 2 for 3 steps"`` -> ("loss > 2", 3). ``for`` is a Python keyword, so no expression has it.

    Only the last few words are looked at (no regex over the whole text: a long run of spaces must not make it
    quadratic)."""
    if len(text) > MAX_EXPR_CHARS + 64:
        raise RuleSyntaxError(f"expression too long ({len(text)} characters; the limit is {MAX_EXPR_CHARS})")
    stripped = text.rstrip()
    base = max(0, len(stripped) - 64)
    words = [(m.start() + base, m.group()) for m in re.finditer(r"\S+", stripped[base:])]
    for j in range(len(words) - 2, max(-1, len(words) - 6), -1):
        pos, word = words[j]
        if word.lower() != "for" or (pos > 0 and not stripped[pos - 1].isspace()):
            continue
        if tuple(w.lower() for _, w in words[j + 2:]) not in _FOR_UNITS:
            continue
        npos, raw = words[j + 1]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_FOR:
            raise _err(f"expected 'for N steps' with N a whole number from 1 to {MAX_FOR}, got {raw!r}", text, npos)
        return text[:pos].rstrip(), int(raw)
    m = re.search(r"\bfor\b", text)
    if m:
        raise _err("expected 'for N steps' at the end of the expression (N a whole number)", text, m.start())
    return text, None


# -- message templates ----------------------------------------------------------------------------------------------

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
