"""Python rules: ``@rule``-decorated functions ``fn(ctx) -> bool | Finding | str | None`` (full Python power, in
the user's own code, never in a rule pack).

The function is called at each log point carrying one of its keys and reports whether the condition holds;
``for_steps`` becomes ``Rule.for_logs``, counted by the Engine like YAML's ``for:`` and the built-ins' own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ptt_nb.rules._dsl import MAX_FOR, Template, compile_template, split_of
from ptt_nb.rules._engine import Context, Finding, Rule, RuleError
from ptt_nb.rules._rule_fields import (
    _check_algorithms,
    _check_bool,
    _check_frac,
    _check_id,
    _check_int,
    _check_severity,
    _check_url,
    _describe,
)


class FunctionRule(Rule):
    """A rule whose check is a user's Python function ``fn(ctx) -> bool | Finding | str | None``."""

    def __init__(self, fn: Callable[[Context], Any], *, id: str, keys: Iterable[str], severity: str = "medium",
                 message: Template | None = None, title: str = "", action: str = "", reference: str = "",
                 url: str | None = None, algorithms: Iterable[str] | None = None, panels: Iterable[str] = (),
                 splits: Iterable[str] | None = None, for_logs: int = 1, cooldown: int = 0,
                 warmup_steps: int = 0, warmup_frac: float = 0.0, once: bool = False,
                 source: str = "python") -> None:
        self.fn = fn
        _describe(self, id, severity, message, title, action, reference, url, algorithms, panels)
        self.keys = tuple(keys)
        self.metric_keys = self.keys
        # a Python rule runs at the log points of every split its keys belong to (train, eval or both)
        self.splits = tuple(splits) if splits else tuple(sorted({split_of(k) for k in self.keys}, reverse=True))
        self.for_logs = for_logs
        self.cooldown = cooldown
        self.warmup_steps, self.warmup_frac, self.once = warmup_steps, warmup_frac, once
        self.source = source

    @property
    def for_steps(self) -> int:
        """``@rule(for_steps=...)`` as given (read-only; ``for_logs`` is the field the Engine reads)."""
        return self.for_logs

    def check(self, ctx: Context) -> Finding | None:
        result = self.fn(ctx)
        if result is None or result is False or (isinstance(result, np.bool_) and not result):
            return None
        if isinstance(result, Finding):
            finding = result
        elif isinstance(result, str):
            finding = Finding(result)
        elif result is True or isinstance(result, np.bool_):
            text = (self.message.render(ctx, math.nan, self.id) if self.message is not None
                    else f"{self.title} held at step {ctx.step}.")
            finding = Finding(text)
        else:
            raise TypeError(f"@rule function {getattr(self.fn, '__name__', self.fn)!r} returned "
                            f"{type(result).__name__}; expected bool, Finding, str or None")
        if not finding.evidence:
            finding.evidence = {k: v for k, v in ctx.values.items() if k in self.keys}
        return finding


class RuleFunction:
    """What ``@rule`` returns: still callable as the plain function; ``make_rule()`` gives a fresh Rule."""

    def __init__(self, fn: Callable[[Context], Any], spec: dict[str, Any]) -> None:
        self.fn = fn
        self.spec = spec
        self.id = spec["id"]
        functools.update_wrapper(self, fn)

    def __call__(self, ctx: Context) -> Any:
        return self.fn(ctx)

    def make_rule(self) -> FunctionRule:
        return FunctionRule(self.fn, **self.spec)

    def __repr__(self) -> str:
        return f"<rule {self.id!r} ({getattr(self.fn, '__qualname__', self.fn)})>"


def rule(id: str | None = None, *, keys: Iterable[str], severity: str = "medium", message: str | None = None,
         title: str = "", action: str = "", reference: str = "", url: str | None = None,
         algorithms: Iterable[str] | None = None, panels: Iterable[str] = (), splits: Iterable[str] | None = None,
         for_steps: int = 1, cooldown: int = 0, warmup_steps: int = 0, warmup_frac: float = 0.0,
         once: bool = False) -> Callable[[Callable[[Context], Any]], RuleFunction]:
    """Turn ``fn(ctx) -> bool | Finding | str | None`` into a rule (full Python power, in your own code).

    ``keys`` are the log keys whose arrival runs the check (the Engine dispatches by key). ``message`` is a
    template like in YAML rules (``{grad_norm:.2f}``), used when the function returns True.
    """
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise RuleError("@rule needs keys=[...]: the log keys whose arrival triggers the check, e.g. keys=['loss']")

    where = f"@rule(id={id!r})" if id else "@rule"
    spec = dict(keys=keys, severity=_check_severity(severity, where),
                message=compile_template(message) if message else None, title=title, action=action,
                reference=reference, url=_check_url(url, where), algorithms=_check_algorithms(algorithms, where),
                panels=list(panels), splits=list(splits) if splits else None,
                for_logs=_check_int(for_steps, "for_steps", 1, MAX_FOR, where),
                cooldown=_check_int(cooldown, "cooldown", 0, 1_000_000, where),
                warmup_steps=_check_int(warmup_steps, "warmup_steps", 0, 10**9, where),
                warmup_frac=_check_frac(warmup_frac, "warmup_frac", where), once=_check_bool(once, "once", where))

    def wrap(fn: Callable[[Context], Any]) -> RuleFunction:
        if not callable(fn):
            raise RuleError("@rule decorates a function fn(ctx)")
        rid = id or getattr(fn, "__name__", "")
        source = f"@rule {getattr(fn, '__qualname__', rid)}"
        _check_id(rid, source)
        return RuleFunction(fn, {**spec, "id": rid, "source": source})

    return wrap
