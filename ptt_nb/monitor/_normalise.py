"""Making what enters the Monitor safe for every sink: a rule's output, a logged value, any event field.

A custom rule may return anything (an object as its message, a lone surrogate, an int too large for a float,
a 1 MB string) and a log dict may carry anything a user's callback put there. Nothing of it may stop training
or make a sink fail (the run folder's writer would lose the rest of the run). So at the boundary:

- text is coerced to ``str`` (``str()`` for an object with its own ``__str__``, a capped ``reprlib`` repr
  otherwise, bytes decoded) and made valid UTF-8 (a lone surrogate becomes U+FFFD), and capped in length;
- an evidence number stays a float (NaN/Inf too: the writer spells them with ``events.encode_float``); an int too
  large for a float becomes text (``1.000000e+400``), any other object its capped repr;
- a log value that is not a number a float can hold is kept out of the metric values (one warning per key);
- what cannot be made safe at all (a Finding that is not a Finding, an unknown severity, evidence that is not a
  mapping) raises ``RuleOutputError`` inside the rule's check, so the Engine disables the rule with its usual
  ``rule_error`` alert, as it does for a rule that raises.

Caps: ``MAX_TEXT`` characters for a message, action, reference or any other text field; ``MAX_URL`` for a url;
``MAX_KEY`` for an evidence or log key; ``MAX_VALUE_TEXT`` for a text evidence value or a repr; ``MAX_EVIDENCE``
evidence entries; ``MAX_ITEMS`` items and ``MAX_DEPTH`` levels in a free-form field (config, control detail).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from ptt_nb.events import SEVERITIES, Alert, encode_float
from ptt_nb.rules._engine import Context, Finding, Rule

MAX_TEXT = 2_000
MAX_URL = 2_048
MAX_KEY = 200
MAX_VALUE_TEXT = 200
MAX_EVIDENCE = 32
MAX_ITEMS = 100
MAX_DEPTH = 6

_FLOAT_ONLY = frozenset({float})
_SEVERITIES = frozenset(SEVERITIES)
_BYTES = (bytes, bytearray, memoryview)
# orjson writes ints of at most 64 bits; a larger one (a config value, a count) becomes text
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = MAX_VALUE_TEXT
_repr.maxlevel = 3
_repr.maxlong = 60


class RuleOutputError(ValueError):
    """A rule returned something that cannot be made safe; the Engine disables the rule (``rule_error``)."""


# -- text ---------------------------------------------------------------------------------------------------------

def valid_utf8(s: str) -> str:
    """``s`` as valid UTF-8: a lone surrogate becomes U+FFFD (a split surrogate pair is joined back)."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _cap(s: str, cap: int) -> str:
    """At most ``cap`` characters, saying how many were cut (so capping twice changes nothing)."""
    if len(s) <= cap:
        return s
    if cap < 80:
        return s[:cap]
    keep = cap - 40  # the note takes at most 36 characters
    return f"{s[:keep]}… [+{len(s) - keep:,} characters]"


def _as_str(value: Any) -> str:
    """Any object as text, never raising: ``str()`` where the type defines it, else a capped repr."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, _BYTES):
        return bytes(value[:4 * MAX_TEXT]).decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return int_text(value)
    if type(value).__str__ is not object.__str__ and not isinstance(value, (list, tuple, dict, set, frozenset)):
        try:
            s = str(value)
            if type(s) is str:
                return s
        except Exception:  # noqa: BLE001 - a broken __str__: fall back on the repr
            pass
    return safe_repr(value)


def safe_repr(value: Any, cap: int = MAX_VALUE_TEXT) -> str:
    """A capped repr that never raises (``reprlib`` stands in for a ``__repr__`` that does)."""
    try:
        s = _repr.repr(value)
    except Exception:  # noqa: BLE001 - reprlib catches most; a broken __class__ can still raise
        s = f"<{type(value).__name__} object>"
    return valid_utf8(_cap(s, cap))


def text(value: Any, cap: int = MAX_TEXT) -> str:
    """``value`` as capped, valid-UTF-8 text (never raises)."""
    return valid_utf8(_cap(_as_str(value), cap))


def _text_fix(value: Any, cap: int, where: str, fixes: list[str]) -> str:
    """``text`` that also says, in ``fixes``, what it had to change."""
    if type(value) is str and len(value) <= cap and value.isascii():
        return value
    if isinstance(value, str):
        s = value
    else:
        s = _as_str(value)
        fixes.append(f"{where} is {type(value).__name__}, not text (recorded as {_cap(s, 40)!r})")
    if len(s) > cap:
        fixes.append(f"{where} has {len(s):,} characters (kept the first {cap:,})")
        s = _cap(s, cap)
    fixed = valid_utf8(s)
    if fixed is not s:
        fixes.append(f"{where} is not valid UTF-8 (lone surrogates replaced by U+FFFD)")
    return fixed


def int_text(value: int) -> str:
    """An int as text; one too large for a float (or for ``str``'s digit limit) in scientific notation."""
    if -(10**30) < value < 10**30:
        return str(value)
    exp10 = math.log10(abs(value))  # exact enough for any int (math.log10 takes big ints)
    e = math.floor(exp10)
    return f"{'-' if value < 0 else ''}{10 ** (exp10 - e):.6f}e+{e}"


# -- numbers ------------------------------------------------------------------------------------------------------

def number(value: Any, fixes: list[str] | None = None, where: str = "value") -> float | str | None:
    """An evidence value: a float (NaN/Inf kept: the writer encodes them), None, or capped text."""
    t = type(value)
    if t is float:
        return value
    if value is None:
        return None
    if isinstance(value, int):  # bool too
        try:
            return float(value)
        except OverflowError:
            s = int_text(value)
            if fixes is not None:
                fixes.append(f"{where} is an int too large for a float (recorded as text {s!r})")
            return s
    if isinstance(value, (str, *_BYTES)):
        return _text_fix(value, MAX_VALUE_TEXT, where, fixes if fixes is not None else [])
    if hasattr(value, "__float__") and getattr(value, "ndim", 0) == 0:  # numpy, torch 0-d, Decimal, Fraction
        try:
            return float(value)
        except OverflowError:
            s = text(value, MAX_VALUE_TEXT)
            if fixes is not None:
                fixes.append(f"{where} is a {t.__name__} too large for a float (recorded as text {s!r})")
            return s
        except Exception:  # noqa: BLE001 - a broken __float__: recorded as its repr below
            pass
    s = safe_repr(value)
    if fixes is not None:
        fixes.append(f"{where} is {t.__name__}, not a number (recorded as its repr {_cap(s, 40)!r})")
    return s


def evidence(value: Any, fixes: list[str]) -> dict[str, float | str | None]:
    """A Finding's evidence as ``{text: number}``; raises RuleOutputError when it is not a mapping."""
    if value is None:
        return {}
    if type(value) is dict and len(value) <= MAX_EVIDENCE:  # the usual case: str keys, float values
        for k, v in value.items():
            if type(v) is not float or type(k) is not str or len(k) > MAX_KEY or not k.isascii():
                break
        else:
            return value
    if not isinstance(value, Mapping):
        raise RuleOutputError(f"Finding.evidence is {type(value).__name__}, expected a dict of numbers")
    try:
        n = len(value)
        limit = MAX_EVIDENCE + (type(value) is dict and "(more)" in value)  # capped before: capping again keeps it
        items = list(islice(value.items(), limit))
    except Exception as exc:  # noqa: BLE001 - a mapping that cannot be read
        raise RuleOutputError(f"Finding.evidence cannot be read ({type(exc).__name__}: {text(exc, 200)})") from None
    out: dict[str, float | str | None] = {}
    for k, v in items:
        key = _text_fix(k, MAX_KEY, "an evidence key", fixes)
        out[key] = number(v, fixes, f"evidence[{_cap(key, 40)!r}]")
    if n > limit:
        fixes.append(f"evidence has {n:,} entries (kept the first {MAX_EVIDENCE})")
        out["(more)"] = f"{n - MAX_EVIDENCE:,} more entries not kept"
    return out


# -- a rule's output ----------------------------------------------------------------------------------------------

def finding(value: Any, fixes: list[str]) -> Finding | None:
    """What a rule's check returned, made safe; the same object when it already was. Raises RuleOutputError
    for what cannot be made safe (the Engine then disables the rule)."""
    if value is None:
        return None
    if not isinstance(value, Finding):
        raise RuleOutputError(f"the check returned {type(value).__name__}; expected a Finding or None")
    message, ev, severity, action = value.message, value.evidence, value.severity, value.action
    deferred = callable(message) or callable(ev)
    if callable(message):  # deferred text (Finding's docstring): resolved here, where a raise disables the rule
        message = message()
    if callable(ev):
        ev = ev()
    if severity is not None and not (isinstance(severity, str) and severity in _SEVERITIES):
        raise RuleOutputError(f"Finding.severity {safe_repr(severity, 60)} is not one of {', '.join(SEVERITIES)}")
    new_message = "" if message is None else _text_fix(message, MAX_TEXT, "the message", fixes)
    new_ev = evidence(ev, fixes)
    new_action = None if action is None else _text_fix(action, MAX_TEXT, "the action", fixes)
    new_severity = None if severity is None else str.__str__(severity)
    if (not deferred and new_message is message and new_ev is ev and new_action is action
            and type(severity) in (str, type(None))):
        return value
    return Finding(new_message, evidence=new_ev, severity=new_severity, action=new_action)


def _exception_safe(exc: Exception) -> bool:
    try:
        s = str(exc)
    except Exception:  # noqa: BLE001
        return False
    return len(s) <= MAX_TEXT and valid_utf8(s) is s


def guard_rule(rule: Rule, on_fix: Callable[[Rule, list[str]], None]) -> Rule:
    """Make ``rule``'s ``check`` and ``on_start`` return only safe Findings (custom rules: built-ins are ours).

    Set on the rule object itself, so the Engine keeps the very rule it was given; ``on_fix(rule, fixes)`` hears
    what had to be changed. Idempotent."""
    for name in ("check", "on_start"):
        fn = getattr(rule, name)
        if not getattr(fn, "_ptt_guarded", False):
            setattr(rule, name, _guarded(rule, fn, on_fix))
    return rule


def _guarded(rule: Rule, fn: Callable[[Context], Any], on_fix: Callable[[Rule, list[str]], None]
             ) -> Callable[[Context], Finding | None]:
    def call(ctx: Context) -> Finding | None:
        try:
            result = fn(ctx)
        except Exception as exc:
            if _exception_safe(exc):
                raise  # the Engine reports it as it is
            raise RuleOutputError(f"{type(exc).__name__}: {text(_as_str(exc), 500)}") from None
        if result is None:
            return None
        fixes: list[str] = []
        out = finding(result, fixes)
        if fixes:
            on_fix(rule, fixes)
        return out

    call._ptt_guarded = True  # type: ignore[attr-defined]
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


# -- alerts and free-form fields ------------------------------------------------------------------------------------

def alert(a: Alert) -> Alert:
    """An Alert from any source (engine, distributed check, replayed file) made safe, in place (never raises)."""
    for name, cap in (("id", MAX_KEY), ("rule", MAX_KEY), ("severity", 20), ("message", MAX_TEXT),
                      ("action", MAX_TEXT), ("reference", MAX_TEXT), ("state", 20)):
        v = getattr(a, name)
        if type(v) is not str or len(v) > cap or not v.isascii():
            setattr(a, name, text("" if v is None else v, cap))
    if a.url is not None and (type(a.url) is not str or len(a.url) > MAX_URL or not a.url.isascii()):
        a.url = text(a.url, MAX_URL)
    ev = a.evidence
    if ev:
        try:
            a.evidence = evidence(ev, [])
        except RuleOutputError:
            a.evidence = {"evidence": safe_repr(ev)}
    if a.panels and not all(type(p) is str and p.isascii() and len(p) <= MAX_KEY for p in a.panels):
        try:
            a.panels = [text(p, MAX_KEY) for p in islice(a.panels, MAX_ITEMS)]
        except Exception:  # noqa: BLE001 - not iterable
            a.panels = []
    for name in ("step", "resolved_step"):
        v = getattr(a, name)
        if v is not None and type(v) is not int:
            try:
                setattr(a, name, int(v))
            except Exception:  # noqa: BLE001
                setattr(a, name, 0 if name == "step" else None)
    return a


def jsonable(value: Any, depth: int = 0) -> Any:
    """Any value as what ``orjson`` and strict JSON can always write: str keys, valid UTF-8, ints of 64 bits,
    NaN/Inf through ``events.encode_float``, containers capped, anything else as a capped repr."""
    t = type(value)
    if t is str:
        return valid_utf8(_cap(value, MAX_TEXT))
    if value is None or t is bool:
        return value
    if t is float:
        return encode_float(value)
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value <= _INT_MAX else int_text(value)
    if isinstance(value, float):
        return encode_float(float(value))
    if depth >= MAX_DEPTH:
        return safe_repr(value)
    if isinstance(value, Mapping):
        try:
            items = list(islice(value.items(), MAX_ITEMS))
        except Exception:  # noqa: BLE001
            return safe_repr(value)
        return {text(k, MAX_KEY): jsonable(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in islice(value, MAX_ITEMS)]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        try:
            return jsonable(value.item(), depth + 1)
        except Exception:  # noqa: BLE001
            return safe_repr(value)
    if isinstance(value, (str, *_BYTES)):
        return text(value)
    return safe_repr(value)


# -- logged values --------------------------------------------------------------------------------------------------

def log_values(values: dict[Any, Any], step: int, warned: set[Any], warn: Callable[[str], None]
               ) -> dict[str, float]:
    """A log point's values as ``{clean key: float}``. Callers take the fast path (every value a float) first;
    a value that is not a number a float can hold is left out, with one warning per key."""
    out: dict[str, float] = {}
    for key, value in values.items():
        k = key if type(key) is str and len(key) <= MAX_KEY and key.isascii() else text(key, MAX_KEY)
        if type(value) is float:
            out[k] = value
            continue
        why = ""
        if isinstance(value, _BYTES) or (getattr(value, "ndim", 0) != 0):
            why = f"a {type(value).__name__}"
        else:
            try:
                out[k] = float(value)
                continue
            except OverflowError:
                why = f"a {type(value).__name__} too large for a float"
            except Exception:  # noqa: BLE001 - TypeError, ValueError, a tensor of many elements, ...
                why = f"a {type(value).__name__}"
        if k not in warned:
            warned.add(k)
            warn(f"ptt_nb: log key {safe_repr(k, 80)} at step {step} has {why} ({safe_repr(value, 60)}), not a "
                 "number; it is kept out of the metric history")
    return out


def log_keys(values: dict[Any, float]) -> dict[str, float] | None:
    """``values`` with keys made safe, or None when every key already is (the usual case)."""
    for key in values:
        if type(key) is not str or len(key) > MAX_KEY or not (key.isascii() or valid_utf8(key) is key):
            break
    else:
        return None
    return {text(k, MAX_KEY): v for k, v in values.items()}


def floats_only(values: dict[Any, Any]) -> bool:
    """The fast path's test: every value a plain float (what TRL logs)."""
    return _FLOAT_ONLY >= set(map(type, values.values()))
