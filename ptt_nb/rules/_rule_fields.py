"""Validation of the fields every custom rule carries (id, severity, url, algorithms, numbers), shared by YAML,
one-line and ``@rule`` rules, and the one place those fields are set on a Rule."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from ptt_nb.events import SEVERITIES
from ptt_nb.monitor import _profiles as profiles
from ptt_nb.rules._dsl_template import Template
from ptt_nb.rules._engine import Rule, RuleError

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,79}$")


def _describe(rule: Rule, id: str, severity: str, message: Template | None, title: str, action: str,
              reference: str, url: str | None, algorithms: Iterable[str] | None, panels: Iterable[str]) -> None:
    """The descriptive fields every custom rule carries, set the same way for DSL and Python rules."""
    rule.id = id
    rule.severity = severity
    rule.message = message
    rule.title = title or id
    rule.action = action
    rule.reference = reference
    rule.url = url
    rule.algorithms = frozenset(algorithms) if algorithms else None
    rule.panels = tuple(panels)


def _check_id(rid: Any, where: str) -> str:
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RuleError(f"{where}: id {rid!r} must start with a letter and hold only letters, digits, _ . : - "
                        "(at most 80 characters)")
    return rid


def _check_severity(sev: Any, where: str) -> str:
    if sev not in SEVERITIES:
        close = difflib.get_close_matches(str(sev), SEVERITIES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise RuleError(f"{where}: severity {sev!r} is not one of {', '.join(SEVERITIES)}{hint}")
    return sev


def _check_url(url: Any, where: str) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str) or not re.match(r"^https?://[^\s\"'<>]+$", url):
        raise RuleError(f"{where}: url must be an http(s) link, got {url!r}")
    return url


def _check_algorithms(algos: Any, where: str) -> list[str] | None:
    if algos is None:
        return None
    if isinstance(algos, str):
        algos = [algos]
    names = [p.name for p in profiles.PROFILES] + ["generic"]
    out = []
    for a in algos:
        if a not in names:
            close = difflib.get_close_matches(str(a), names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RuleError(f"{where}: unknown algorithm {a!r}{hint} Known: {', '.join(names)}")
        out.append(a)
    return out


def _check_frac(v: Any, name: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise RuleError(f"{where}: {name} must be a number from 0 to 1, got {v!r}")
    return float(v)


def _check_bool(v: Any, name: str, where: str) -> bool:
    if not isinstance(v, bool):
        raise RuleError(f"{where}: {name} must be true or false, got {v!r}")
    return v


def _check_int(v: Any, name: str, lo: int, hi: int, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RuleError(f"{where}: {name} must be a whole number from {lo} to {hi}, got {v!r}")
    return v
