"""The whitelist compiler of the rule expression language: a checked ``ast`` tree into plain closures.

Nothing from a rule's text is ever passed to ``eval``/``exec``: every node type is either compiled by a
``c_<Node>`` method below or refused (``_REFUSED``) with a positioned error; size and depth are bounded first.
"""

from __future__ import annotations

import ast
import difflib
import math

from ptt_nb.rules._dsl_functions import (
    _SCALAR,
    _WINDOW,
    _WINDOW_DEFAULT,
    FUNCTIONS,
    RESERVED,
    SPECIAL_CALLS,
    Fn,
    Value,
    _compare,
    _div,
    _latest,
    _mod,
    _num,
    _pow,
    _truth,
    split_of,
)
from ptt_nb.rules._dsl_scan import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_NODES,
    MAX_WINDOW,
    DslRuntimeError,
    NotReady,
    RuleSyntaxError,
    _err,
    _Scan,
)
from ptt_nb.rules._engine import Context

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

