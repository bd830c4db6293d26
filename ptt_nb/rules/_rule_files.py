"""Rules from text, files, folders and mixed objects: the entry points that dispatch to YAML packs, one-line
expression rules, ``@rule`` functions and Rule objects."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ptt_nb.rules._dsl import RuleSyntaxError, compile_expr, split_for
from ptt_nb.rules._dsl_rule import DslRule, keyless_problem
from ptt_nb.rules._engine import Rule, RuleError
from ptt_nb.rules._rule_decorator import RuleFunction
from ptt_nb.rules._rule_keys import metric_warnings
from ptt_nb.rules._rule_yaml import _yaml_rules

log = logging.getLogger("ptt_nb.rules")

MAX_FILE_BYTES = 1_000_000


def _has_content(text: str) -> bool:
    return any(ln.strip() and not ln.lstrip().startswith("#") for ln in text.splitlines())


def _one_line(text: str) -> bool:
    """A string that is an expression rather than YAML: no ``key:`` or ``- `` line start (no expression has one)."""
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    return not re.match(r"^\s*(-\s|-$|---|%|[A-Za-z_][\w-]*\s*:)", first)


def parse_rules(text: str, source: str = "<string>", *, known_keys: Iterable[str] | None = None) -> list[Rule]:
    """Rules from a YAML text (list, ``rules:`` mapping, or one rule mapping) or a one-line rule
    ``"<expression> [for N steps]"`` (its id is ``custom_<hash>``). ``source`` names it in errors."""
    if not isinstance(text, str):
        raise RuleError(f"{source}: expected text, got {type(text).__name__}")
    if len(text.encode()) > MAX_FILE_BYTES:
        raise RuleSyntaxError(f"rule text too large ({len(text.encode())} bytes; the limit is {MAX_FILE_BYTES})",
                              source=source)
    if not _has_content(text):
        return []
    if _one_line(text):
        rules: list[Rule] = [_expression_rule(text, source)]
    else:
        rules = _yaml_rules(text, source)
    if known_keys is not None:
        known = list(known_keys)
        for r in rules:
            for w in metric_warnings(r, known):
                r.warnings.append(w)
                log.warning("ptt_nb: %s", w)
    return rules


def _expression_rule(raw: str, source: str) -> DslRule:
    """A one-line rule. Error positions are relative to ``raw.lstrip()`` (what a cell shows after its blank
    lead); whole-line comments are dropped."""
    cleaned = "\n".join("" if ln.lstrip().startswith("#") else ln for ln in raw.lstrip().split("\n"))
    text = cleaned.strip()
    lead = cleaned[:len(cleaned) - len(cleaned.lstrip())]
    try:
        expr_text, n = split_for(text)
        expr = compile_expr(expr_text)
    except RuleSyntaxError as exc:
        line, col = exc.line, exc.col
        if lead:  # comment lines came first: put the position back where it is in the text
            if line == 1:
                col += len(lead) - (lead.rfind("\n") + 1)
            line += lead.count("\n")
        raise exc.relocate(source, line, col, exc.snippet) from None
    if keyless_problem(expr):
        raise RuleSyntaxError(keyless_problem(expr), source=source)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return DslRule(id=f"custom_{digest}", when=expr, for_logs=n or 1, source=source)


# -- loading --------------------------------------------------------------------------------------------------------

def load_rule_file(path: str | os.PathLike[str], *, known_keys: Iterable[str] | None = None) -> list[Rule]:
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RuleSyntaxError(f"rule file too large ({path.stat().st_size} bytes; the limit is {MAX_FILE_BYTES})",
                              source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RuleSyntaxError(f"not UTF-8 text ({exc.reason})", source=str(path)) from None
    if _one_line(text) and _has_content(text):
        raise RuleSyntaxError("expected a YAML rule pack: a list of rules (- id: ... when: ...) or rules:",
                              source=str(path))
    return parse_rules(text, str(path), known_keys=known_keys)


def load_rule_dir(path: str | os.PathLike[str], *, known_keys: Iterable[str] | None = None,
                  strict: bool = True) -> list[Rule]:
    """Every rule of every ``*.yaml``/``*.yml`` file in a folder (sorted by name; a file path loads that file).

    An id defined twice across files is an error. ``strict=False`` logs a broken file and skips it instead of
    raising (training then starts without that file's rules)."""
    path = Path(path)
    if not path.exists():
        raise RuleError(f"rule_dir {str(path)!r} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                 if p.suffix in (".yaml", ".yml") and p.is_file())
    out: list[Rule] = []
    where: dict[str, str] = {}
    for f in files:
        try:
            rules = load_rule_file(f, known_keys=known_keys)
        except RuleError as exc:
            if strict:
                raise
            log.warning("ptt_nb: skipped rule file %s: %s", f, exc)
            continue
        for r in rules:
            if r.id in where:
                raise RuleError(f"{r.source}: rule id {r.id!r} is already defined in {where[r.id]}")
            where[r.id] = r.source
        out.extend(rules)
    return out


def as_rules(objs: Any) -> list[Rule]:
    """Rules from a mix of Rule objects/classes, ``@rule`` functions, rule strings (YAML or one-line
    expressions) and paths to rule files or folders."""
    if objs is None:
        return []
    if isinstance(objs, (str, os.PathLike, Rule, RuleFunction)) or (isinstance(objs, type)
                                                                    and issubclass(objs, Rule)):
        objs = [objs]
    out: list[Rule] = []
    for obj in objs:
        if isinstance(obj, Rule):
            out.append(obj)
        elif isinstance(obj, type) and issubclass(obj, Rule):
            out.append(obj())
        elif isinstance(obj, RuleFunction):
            out.append(obj.make_rule())
        elif isinstance(obj, str):
            out.extend(parse_rules(obj, "<string>"))
        elif isinstance(obj, os.PathLike):
            out.extend(load_rule_dir(obj))
        elif callable(obj):
            raise RuleError(f"{getattr(obj, '__name__', obj)!r} is a plain function: decorate it with "
                            "@rule(id=..., keys=[...]) from ptt_nb.rules._custom")
        else:
            raise RuleError(f"cannot make a rule from {type(obj).__name__}: expected a Rule, an @rule function, "
                            "a rule string or a path")
    return out
