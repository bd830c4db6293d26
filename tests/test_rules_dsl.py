"""The custom-rule expression language: grammar, window functions, limits, hostile input, error messages."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

from ptt_nb.monitor._history import MetricHistory
from ptt_nb.rules._dsl import (
    MAX_EXPR_CHARS,
    MAX_WINDOW,
    DslRuntimeError,
    NotReady,
    RuleSyntaxError,
    compile_expr,
    compile_template,
    split_for,
)
from ptt_nb.rules._engine import Context


def make_ctx(n: int = 10, config: dict | None = None, max_steps: int | None = 100) -> Context:
    """loss = 1..n at steps 10, 20, ..., margins alternate sign, one eval point."""
    h = MetricHistory()
    for i in range(1, n + 1):
        h.add(i * 10, "train", {"loss": float(i), "rewards/margins": float((-1) ** i), "grad_norm": 2.0,
                                "bad": float("nan") if i == n else 1.0})
    h.add(n * 10, "eval", {"eval_loss": 0.5})
    return Context(history=h, algorithm="dpo", config=config if config is not None else
                   {"beta": 0.1, "loss_type": "sigmoid", "fp16": False}, max_steps=max_steps, step=n * 10)


def ev(text: str, ctx: Context | None = None):
    return compile_expr(text).evaluate(ctx or make_ctx())


# -- grammar and values ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("loss", 10.0),
    ("mean(loss, 3)", 9.0),
    ("min(loss, 3)", 8.0),
    ("max(loss, 10)", 10.0),
    ("std(loss, 3)", 1.0),
    ("median(loss, 4)", 8.5),
    ("slope(loss, 5)", 0.1),  # +1 per log point, logged every 10 steps: 0.1 per step
    ("last(loss)", 10.0),
    ("last(loss, 2)", 8.0),
    ("delta(loss)", 1.0),
    ("delta(loss, 3)", 3.0),
    ("pct_change(loss, 1)", 1 / 9),
    ("count(loss)", 10.0),
    ("count(bad, 3)", 2.0),
    ("`rewards/margins`", 1.0),
    ('m("rewards/margins")', 1.0),
    ("mean(`rewards/margins`, 2)", 0.0),
    ("eval_loss", 0.5),
    ("1 + 2 * 3 ** 2 - 4 / 2", 17.0),
    ("-loss % 3", 2.0),
    ("abs(-2) + sqrt(16) + exp(0) + log(1)", 7.0),
    ("step", 100.0),
    ("frac", 1.0),
    ("config.beta", 0.1),
    ('cfg("beta")', 0.1),
    ('cfg("missing", -2)', -2.0),
    ("config.fp16", 0.0),
    ("0 < loss <= 10", True),
    ("0 < loss < 10", False),
    ("loss > 5 and not grad_norm > 3", True),
    ("loss > 50 or grad_norm == 2", True),
    ('config.loss_type == "sigmoid"', True),
    ('config.loss_type != "ipo" and "sigmoid" == config.loss_type', True),
    ("isnan(bad) and not isfinite(bad)", True),
    ("1 / 0", math.inf),
    ("-1 / 0", -math.inf),
    ("exp(1000)", math.inf),
    ("log(0)", -math.inf),
    ("1e308 ** 2", math.inf),
    ("True + 1", 2.0),
    ("inf > 1e308", True),
])
def test_values(text, expected):
    got = ev(text)
    if isinstance(expected, bool):
        assert got is expected
    else:
        assert got == pytest.approx(expected)


def test_edge_values():
    h = MetricHistory()
    for i in range(1, 6):
        h.add(i, "train", {"flat": 1.0, "up": float(i)})
    h.add(6, "train", {"flat": 2.0})
    ctx = Context(history=h, step=6)
    assert ev("zscore(flat, 5)", ctx) == math.inf  # a constant window, then a change
    assert ev("zscore(up, 4)", ctx) == pytest.approx((5 - 2.5) / (1.4826 * 1.0))
    assert ev("std(flat, 1)", ctx) == 0.0 and ev("count(nothing)", ctx) == 0.0 and ev("count(flat, 100)", ctx) == 6
    assert ev("+up + up ** -1", ctx) == pytest.approx(5.2)
    assert ev("pct_change(flat, 1)", ctx) == 1.0 and ev("1 == 1.0 != 2", ctx) is True


def test_non_ascii_text_keeps_columns():
    with pytest.raises(RuleSyntaxError) as info:
        compile_expr('m("größe") > 1 and x.y')
    assert info.value.col == 21
    with pytest.raises(RuleSyntaxError, match="unterminated string: expected a closing ' on the same line"):
        compile_expr("loss > 'x\n' ")


def test_nan_semantics():
    assert math.isnan(ev("0 / 0"))
    assert math.isnan(ev("nan"))
    assert ev("bad > 0") is False and ev("bad < 0") is False  # NaN compares false
    assert compile_expr("bad").holds(make_ctx()) is False  # NaN is not true


def test_zscore_is_robust_against_the_window():
    h = MetricHistory()
    rng = np.random.default_rng(0)
    vals = list(rng.normal(1.0, 0.1, 50)) + [5.0]
    for i, v in enumerate(vals):
        h.add(i, "train", {"grad_norm": float(v)})
    ctx = Context(history=h, step=50)
    prev = np.array(vals[:-1])
    med = np.median(prev)
    expected = (5.0 - med) / (1.4826 * np.median(np.abs(prev - med)))
    assert ev("zscore(grad_norm, 50)", ctx) == pytest.approx(expected)
    assert ev("zscore(grad_norm, 50) > 6", ctx) is True


@pytest.mark.parametrize("n", [5, 50, 128, 129, 300])
def test_window_functions_match_numpy_for_small_and_large_windows(n):
    """Windows up to 128 points run as Python lists, longer ones through numpy: both must agree with numpy."""
    rng = np.random.default_rng(n)
    steps = np.cumsum(rng.integers(1, 4, 400))
    vals = rng.normal(0, 1, 400) + (1e6 if n == 50 else 0.0)  # a large offset must not cost precision
    h = MetricHistory()
    for s, v in zip(steps.tolist(), vals.tolist(), strict=True):
        h.add(s, "train", {"x": v})
    ctx = Context(history=h, step=int(steps[-1]))
    w, prev = vals[-n:], vals[-n - 1:-1]
    med = np.median(prev)
    expected = {
        "mean": w.mean(), "std": w.std(ddof=1), "median": np.median(w), "min": w.min(), "max": w.max(),
        "slope": np.polyfit(steps[-n:].astype(float), w, 1)[0],
        "zscore": (vals[-1] - med) / (1.4826 * np.median(np.abs(prev - med))),
    }
    for name, want in expected.items():
        assert ev(f"{name}(x, {n})", ctx) == pytest.approx(want, rel=1e-6, abs=1e-12), name
    h.add(int(steps[-1]) + 1, "train", {"x": float("nan")})
    h.add(int(steps[-1]) + 2, "train", {"x": 1.0})
    ctx.step = int(steps[-1]) + 2
    for name in ("mean", "std", "median", "min", "max", "slope", "zscore"):
        assert math.isnan(ev(f"{name}(x, {n})", ctx)), name  # a NaN in the window propagates


def test_window_not_full_means_not_ready():
    ctx = make_ctx(5)
    expr = compile_expr("mean(loss, 6) > 0")
    with pytest.raises(NotReady):
        expr.evaluate(ctx)
    assert expr.holds(ctx) is None
    assert compile_expr("mean(loss, 5) > 0").holds(ctx) is True
    assert compile_expr("zscore(loss, 5) > 0").holds(ctx) is None  # needs the window plus the latest point
    assert compile_expr("unknown_metric > 0").holds(ctx) is None
    assert compile_expr("config.nope > 0").holds(ctx) is None
    # `and` short-circuits before an unready window
    assert compile_expr("count(loss) > 100 and mean(loss, 50) > 0").holds(ctx) is False


def test_keys_config_keys_and_value():
    e = compile_expr("mean(`rewards/margins`, 10) < 0 and loss > config.beta and m(\"logps/chosen\") < 0")
    assert e.keys == ("rewards/margins", "loss", "logps/chosen")
    assert e.config_keys == ("beta",)
    assert e.value_text == "mean(`rewards/margins`, 10)"
    assert compile_expr("0 < loss < 1").value_text == "loss"
    assert compile_expr("count(loss) > 5 and step > 3 and not max(loss, 3) > 1").value_text == "max(loss, 3)"
    assert compile_expr("step > 3 and frac < 1").value_text == "step"  # only guards: the first one


def test_multiline_expression_and_leading_space():
    e = compile_expr("  slope(loss, 3) > 0\n    and `rewards/margins` > 0\n")
    assert e.evaluate(make_ctx()) is True


def test_metric_names_with_reserved_words_or_odd_characters():
    h = MetricHistory()
    h.add(1, "train", {"step": 3.0, "weird name-1": 4.0})
    ctx = Context(history=h, step=1)
    assert ev("`step` + `weird name-1`", ctx) == 7.0
    assert ev("step", ctx) == 1.0  # bare `step` is the global step


def test_split_for():
    assert split_for("loss > 2 for 3 steps") == ("loss > 2", 3)
    assert split_for("loss > 2 for 1 step") == ("loss > 2", 1)
    assert split_for("loss > 2   for 4") == ("loss > 2", 4)
    assert split_for("loss > 2") == ("loss > 2", None)
    with pytest.raises(RuleSyntaxError, match="with N a whole number"):
        split_for("loss > 2 for three steps")
    with pytest.raises(RuleSyntaxError, match="with N a whole number"):
        split_for("loss > 2 for 0 steps")
    with pytest.raises(RuleSyntaxError, match="expected 'for N steps' at the end"):
        split_for("loss > 2 for 3 steps and x")
    assert split_for("loss > 2 for 3 log points") == ("loss > 2", 3)
    assert split_for("`x` > 2\n  for 3 steps\n") == ("`x` > 2", 3)
    assert split_for("loss > 2 xfor 3") == ("loss > 2 xfor 3", None)  # never a partial word


def test_split_for_is_linear_on_long_whitespace():
    t0 = time.perf_counter()
    for text in ("a" + " " * 1_990 + "b", "a" + " " * 100_000 + "b"):
        try:
            split_for(text)
        except RuleSyntaxError:
            pass
    assert time.perf_counter() - t0 < 0.5


# -- runtime errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("log(`rewards/margins` - 5)", "log() of a negative number"),
    ("sqrt(-loss)", "sqrt() of a negative number"),
    ("(-loss) ** 0.5", "is not a real number"),
    ("config.loss_type * 2", "is text"),
    ("config.loss_type < config.beta", "cannot order text"),
])
def test_runtime_errors(text, message):
    with pytest.raises(DslRuntimeError, match=re.escape(message)):
        ev(text)


def test_config_list_value_is_refused_at_run_time():
    with pytest.raises(DslRuntimeError, match="not a number or text"):
        ev("config.weights > 0", make_ctx(config={"weights": [1, 2]}))


# -- positioned errors: one per message -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message, col", [
    ("", "expected an expression such as mean(loss, 10) > 2, got nothing", 1),
    ("loss >", "unexpected end of expression", 7),
    ("loss > > 2", "syntax error: invalid syntax", 8),
    ("mean(loss, 10", "syntax error: '(' was never closed", 5),
    ("rewards/margins < 0", "reads as rewards divided by margins", 1),
    ("loss > 'x", "unterminated string", 8),
    ("`rewards/margins < 0", "unterminated metric name", 1),
    ("`` > 0", "empty metric name", 1),
    ("loss > 1 # comment", "'#' is not allowed", 10),
    ("a.b > 1", "attribute access (a.b) is not allowed", 2),
    ("x[0] > 1", "subscripts (a[...]) are not allowed", 2),
    ("(lambda: 1)() > 0", "lambda is not allowed", 2),
    ("[x for x in y]", "comprehensions are not allowed", 1),
    ("sum(x for x in y)", "comprehensions are not allowed", 4),
    ("f'{loss}' == 'a'", "f-strings are not allowed", 1),
    ("(x := 1) > 0", "assignment (:=) is not allowed", 2),
    ("1 if loss else 2", "conditional expressions", 1),
    ("[1, 2] == loss", "lists are not allowed", 1),
    ("(1, 2) == loss", "tuples are not allowed", 1),
    ("{1} == loss", "sets are not allowed", 1),
    ("{1: 2} == loss", "dicts are not allowed", 1),
    ("loss // 2", "operator // is not supported", 1),
    ("loss & 1", "operator & is not supported; use + - * / % ** (use and / or / not for logic)", 1),
    ("~loss", "operator ~ is not supported", 1),
    ("loss in x", "comparison 'in' is not supported", 1),
    ("loss is None", "comparison 'is' is not supported", 1),
    ("loss ** loss", "the exponent of ** must be a number between -64 and 64", 9),
    ("loss ** 65", "the exponent of ** must be a number", 9),
    ("foo(loss) > 1", "unknown function foo()", 1),
    ("meen(loss, 3) > 1", "did you mean mean", 1),
    ("mean(loss) > 1", "mean() takes 2 argument(s)", 1),
    ("mean(loss, n=3) > 1", "mean() takes no keyword arguments", 14),
    ("mean(2 * loss, 3) > 1", "mean() needs a metric as its first argument", 6),
    ("mean(loss, 2.5) > 1", "the window of mean() must be a whole number between 1 and 10000", 12),
    ("mean(loss, loss) > 1", "the window of mean() must be a whole number", 12),
    (f"mean(loss, {MAX_WINDOW + 1}) > 1", "window 10001 out of range", 12),
    ("mean(loss, 0) > 1", "window 0 out of range", 12),
    ("mean > 1", "mean is a function: call it, e.g. mean(x, n)", 1),
    ("m(loss) > 1", 'm() takes one quoted string, a metric name', 1),
    ('m("") > 1', "m() needs a non-empty name", 1),
    ("cfg(beta) > 1", 'cfg() takes a quoted key and an optional default', 1),
    ('cfg("beta", loss) > 1', "the default of cfg() must be a number", 13),
    ('cfg("_x") > 1', "cfg() needs a key that does not start with '_'", 5),
    ("config > 1", "config needs a key: config.beta", 1),
    ("config._x > 1", "config keys starting with '_' are not allowed", 8),
    ("value > 1", "{value} is only available in message templates", 1),
    ("'text' + 1", "text is only allowed in", 1),
    ("'a' < loss", "text can only be compared with == or !=", 1),
    ("b'x' == loss", "constants of type bytes are not allowed", 1),
    ("1j == loss", "constants of type complex are not allowed", 1),
    ("_hidden > 1", "names starting with '_' are not allowed", 1),
    ("__import__('os')", "dunder names such as __import__ are not allowed", 1),
    ("mean(*x) > 1", "* unpacking is not allowed", 6),
    ("(" * 30 + "1" + ")" * 30, "nested too deeply (more than 24 brackets)", 25),
    ("-" * 40 + "1", "nested too deeply (more than 24 levels)", 26),
    (" and ".join(["a > 1"] * 100), "expression too large (more than 256 parts)", None),
    ("x" * (MAX_EXPR_CHARS + 1), "expression too long (2001 characters; the limit is 2000)", 1),
])
def test_error_messages(text, message, col):
    with pytest.raises(RuleSyntaxError) as info:
        compile_expr(text)
    err = info.value
    assert message in err.message, err.message
    assert err.line == 1
    if col is not None:
        assert err.col == col, str(err)
    assert err.source == "<string>"
    assert str(err).startswith(f"<string>:1:{err.col}: ")


def test_error_on_a_later_line_has_line_and_column():
    with pytest.raises(RuleSyntaxError) as info:
        compile_expr("mean(loss, 10) > 2\n  and loss.__class__")
    assert (info.value.line, info.value.col) == (2, 11)
    assert "and loss.__class__" in str(info.value) and "^" in str(info.value)


def test_leftmost_forbidden_construct_is_reported():
    with pytest.raises(RuleSyntaxError) as info:
        compile_expr("loss > 0 and x.__class__.__bases__[0].__subclasses__()")
    assert info.value.col == 15 and "attribute access" in info.value.message


@pytest.mark.parametrize("text, col", [("loss\x00 > 1", 5), ("m('\ud800') > 1", 4), ("`a\x1b[2J` > 1", 3)])
def test_control_characters_and_surrogates_are_refused(text, col):
    with pytest.raises(RuleSyntaxError, match=r"expression contains an invalid character \(U\+") as info:
        compile_expr(text)
    assert info.value.col == col
    with pytest.raises(RuleSyntaxError, match=r"message contains an invalid character"):
        compile_template("x " + text)


def test_expression_must_be_text():
    with pytest.raises(RuleSyntaxError, match="expected an expression as text, got int"):
        compile_expr(3)


# -- hostile input --------------------------------------------------------------------------------------------------

HOSTILE = [
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "__import__('os').system('touch /tmp/x')",
    "__builtins__",
    "loss.__class__",
    "config.__class__",
    "config.__init__.__globals__",
    "m.__globals__",
    "mean.__code__",
    "cfg('x').__class__",
    "eval('1')",
    "exec('import os')",
    "open('/etc/passwd')",
    "getattr(loss, 'x')",
    "globals()",
    "lambda: 0",
    "(lambda x: x)(1)",
    "[c for c in ().__class__.__bases__]",
    "{k: 1 for k in 'ab'}",
    "9**9**9",
    "2 ** 10000",
    "10 ** (10 ** 10)",
    "loss ** 99999",
    "'a' * 10**9",
    "((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))",
    "not " * 100 + "loss",
    "loss" + " + loss" * 1000,
    "f'{().__class__}'",
    "\\x5f\\x5fimport\\x5f\\x5f",
    "loss.real",
    "__class__",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_expressions_are_refused(text):
    with pytest.raises(RuleSyntaxError) as info:
        compile_expr(text)
    assert info.value.message  # a clear, positioned message, not a crash
    assert str(info.value).startswith("<string>:")


def test_hostile_string_cannot_escape_through_metric_or_config_names():
    # a quoted "name" is only ever a dict key: it can't reach attributes
    e = compile_expr('m("__class__") > 0 or cfg("x.__class__", 0) > 0')
    assert e.keys == ("__class__",)
    assert e.holds(make_ctx()) is None  # no such metric: not ready, nothing executed


def test_huge_numbers_do_not_hang():
    assert ev("1e308 * 1e308") == math.inf
    assert ev("(1e308) ** 64") == math.inf
    assert ev("(-1e308) ** 63") == -math.inf
    with pytest.raises(RuleSyntaxError, match="number too large"):
        compile_expr("1" * 400 + " > loss")


# -- message templates ----------------------------------------------------------------------------------------------

def test_template_renders_values_metrics_and_subexpressions():
    t = compile_template("v={value:.2f} loss={loss} m={`rewards/margins`:+.1f} w={mean(loss, 3):.1f} "
                         "s={step} id={id} {{literal}} missing={mean(loss, 99)} beta={config.beta} "
                         "t={config.loss_type:>8} b={loss > 1}")
    text = t.render(make_ctx(), 0.123, "my_rule")
    assert text == ("v=0.12 loss=10 m=+1.0 w=9.0 s=100 id=my_rule {literal} missing=n/a beta=0.1 "
                    "t= sigmoid b=True")
    assert t.keys == ("loss", "rewards/margins")


def test_template_bad_spec_for_type_falls_back_to_text():
    assert compile_template("{config.loss_type:.2f}").render(make_ctx(), 0.0) == "sigmoid"


@pytest.mark.parametrize("template, message, col", [
    ("bad {0.__class__}", "positional fields with attribute or index access", 6),
    ("bad {0[0]}", "positional fields with attribute or index access", 6),
    ("bad {0}", "positional fields ({} or {0}) are not allowed", 6),
    ("bad {}", "positional fields ({} or {0}) are not allowed", 6),
    ("bad {value.__class__}", "dunder names (__x__) are not allowed in message fields", 12),
    ("bad {loss.real}", "in message field {loss.real}: attribute access (a.b) is not allowed", 10),
    ("bad {x[0]}", "in message field {x[0]}: subscripts (a[...]) are not allowed", 7),
    ("bad {value!r}", "conversions (!r, !s, !a) are not allowed", 11),
    ("bad {value:{w}}", "nested fields in a format spec are not allowed", 12),
    ("bad {loss + {x}}", "'{' inside a message field", 13),
    ("bad {value:999999999}", "format spec '999999999' not allowed", 12),
    ("bad {value:.999f}", "format spec '.999f' not allowed", 12),
    ("bad {loss", "unclosed '{' in message", 5),
    ("bad } here", "single '}' in message", 5),
    ("bad {9**9**9}", "the exponent of ** must be a number", 9),
    ("{__import__('os')}", "dunder names", 2),
    ("x" * 2001, "message too long", 1),
])
def test_template_errors(template, message, col):
    with pytest.raises(RuleSyntaxError) as info:
        compile_template(template)
    assert message in info.value.message, info.value.message
    assert info.value.col == col, str(info.value)


def test_template_field_limit():
    with pytest.raises(RuleSyntaxError, match="too many fields"):
        compile_template(" ".join("{loss}" for _ in range(30)))
