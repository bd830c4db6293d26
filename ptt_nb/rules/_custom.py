"""Custom rules: YAML rule packs, one-line rule strings and ``@rule``-decorated Python functions.

A YAML pack is data, never code: it is composed with PyYAML's safe loader, every node's tag is checked against
the plain YAML types, anchors/aliases are refused, and expressions go through the whitelist compiler in
``dsl.py``. Errors name the file, line and column inside the file. A custom rule with a built-in's id replaces
the built-in (the Engine replaces by id). See docs/rules-language.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ptt_nb.events import SEVERITIES
from ptt_nb.monitor import _profiles as profiles
from ptt_nb.rules import _engine
from ptt_nb.rules._dsl import (
    MAX_FOR,
    DslRuntimeError,
    Expr,
    RuleSyntaxError,
    Template,
    check_chars,
    compile_expr,
    compile_template,
    split_for,
    split_of,
)
from ptt_nb.rules._engine import Context, Finding, Rule, RuleError

log = logging.getLogger("ptt_nb.rules")
# "still holds" without building a message, for engines that support it (see engine.HOLD)
_HOLD: Finding | None = getattr(_engine, "HOLD", None)

MAX_FILE_BYTES = 1_000_000
MAX_RULES_PER_FILE = 1000
MAX_TEXT_FIELD = 4000
MAX_YAML_DEPTH = 16
FIELDS = ("id", "when", "for", "severity", "message", "title", "action", "reference", "url", "algorithms",
          "panels", "keys", "cooldown", "warmup_steps", "warmup_frac", "once")
DEFAULT_FIELDS = ("severity", "algorithms", "panels", "reference", "url", "action", "cooldown", "for", "warmup_steps",
                  "warmup_frac", "once")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,79}$")
_ALLOWED_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}

# Training-step log keys of each TRL 1.16 trainer, as measured (shared/reference/trl-log-keys.md).
_COMMON = ("loss", "grad_norm", "learning_rate", "epoch")
_PREF = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
         "logps/rejected", "logits/chosen", "logits/rejected")
_RL = ("num_tokens", "completions/mean_length", "completions/min_length", "completions/max_length",
       "completions/clipped_ratio", "completions/mean_terminated_length", "completions/min_terminated_length",
       "completions/max_terminated_length", "rewards/*/mean", "rewards/*/std", "reward", "reward_std",
       "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
       "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max", "step_time")
TRL_KEYS: dict[str, tuple[str, ...]] = {
    "generic": _COMMON,
    "sft": (*_COMMON, "entropy", "mean_token_accuracy", "num_tokens"),
    "dpo": (*_COMMON, *_PREF, "entropy", "num_tokens", "mean_token_accuracy"),
    "kto": (*_COMMON, *_PREF, "kl", "entropy", "num_tokens"),
    "grpo": (*_COMMON, *_RL),
    "rloo": (*_COMMON, *_RL),
    "reward": (*_COMMON, "num_tokens", "min_reward", "mean_reward", "max_reward", "accuracy", "margin"),
    "orpo": (*_COMMON, *_PREF, "nll_loss", "log_odds_ratio", "log_odds_chosen"),
    "cpo": (*_COMMON, *_PREF, "nll_loss"),
    "online_dpo": (*_COMMON, *_PREF, "objective/kl", "objective/entropy", "objective/non_score_reward",
                   "val/contain_eos_token", "beta", "objective/rlhf_reward", "objective/scores_margin",
                   "objective/scores"),
    "ppo": (*_COMMON, "loss/policy_avg", "loss/value_avg", "objective/kl", "objective/entropy",
            "objective/non_score_reward", "objective/rlhf_reward", "objective/scores", "policy/approxkl_avg",
            "policy/clipfrac_avg", "policy/entropy_avg", "val/clipfrac_avg", "val/ratio", "val/ratio_var",
            "val/num_eos_tokens", "lr", "episode"),
}
_EVAL_EXTRA = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def known_keys(algorithm: str | None = None, history: Any = None, extra: Iterable[str] = ()) -> list[str]:
    """Metric names a rule may sensibly read: TRL's measured keys and the profile's panel keys for
    ``algorithm`` (every trainer when None or generic), their ``eval_`` forms, a run's recorded keys and ``extra``.
    May contain glob patterns (``rewards/*/mean``)."""
    if algorithm in (None, "generic"):
        names = {k for keys in TRL_KEYS.values() for k in keys}
        names.update(k for p in profiles.PROFILES for k in p.panel_keys())
    else:
        names = set(TRL_KEYS.get(algorithm, _COMMON))
        names.update(profiles.get_profile(algorithm).panel_keys())
    names.update(n for p in profiles.PROFILES for n, _f, _fn in p.derived
                 if algorithm in (None, "generic", p.name))
    names.update(profiles.BOOKKEEPING_KEYS)
    names.update(["eval_" + k for k in names] + list(_EVAL_EXTRA))
    if history is not None:
        names.update(history.keys("train"))
        names.update(history.keys("eval"))
    names.update(extra)
    return sorted(names)


def unknown_metrics(keys: Iterable[str], known: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The keys matching no known name or pattern, each with its close matches (difflib)."""
    known = list(known)
    concrete = [k for k in known if "*" not in k]
    out = []
    for key in keys:
        if any(k == key or ("*" in k and fnmatch.fnmatchcase(key, k)) for k in known):
            continue
        out.append((key, difflib.get_close_matches(key, concrete, n=3, cutoff=0.6)))
    return out


def metric_warnings(rule: Rule, known: Iterable[str]) -> list[str]:
    """Warnings for the metrics a custom rule reads that the run will probably never log (typos)."""
    keys = list(getattr(rule, "metric_keys", None) or rule.keys)
    out = []
    for key, close in unknown_metrics(keys, known):
        hint = f"; close matches: {', '.join(close)}" if close else ""
        out.append(f"rule {rule.id!r} ({rule.source}): unknown metric {key!r}{hint}. The rule stays silent until "
                   f"that key is logged.")
    return out


# -- rule objects ---------------------------------------------------------------------------------------------------

def _splits(keys: Iterable[str]) -> tuple[str, ...]:
    """An expression over eval metrics runs at eval log points; any other at train log points."""
    return ("eval",) if any(split_of(k) == "eval" for k in keys) else ("train",)


def keyless_problem(expr: Expr) -> str | None:
    """An expression naming no metric runs once at train start (a config check); with step/frac it makes no sense."""
    if expr.keys or not expr.uses_step:
        return None
    return ("the expression names no metric, so it would never run: name one (e.g. `loss`) or set keys: "
            "(an expression over config values alone runs once, at train start)")


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


class DslRule(Rule):
    """A rule written in the expression language (from YAML, a cell or a string). An expression that names no
    metric (only ``config.*``) is a config-time rule: it runs once, at train start."""

    def __init__(self, *, id: str, when: Expr, for_steps: int = 1, severity: str = "medium",
                 message: Template | None = None, title: str = "", action: str = "", reference: str = "",
                 url: str | None = None, algorithms: Iterable[str] | None = None, panels: Iterable[str] = (),
                 keys: Iterable[str] | None = None, cooldown: int = 0, warmup_steps: int = 0,
                 warmup_frac: float = 0.0, once: bool = False, source: str = "custom") -> None:
        _describe(self, id, severity, message, title, action, reference, url, algorithms, panels)
        self.expr = when
        self.for_steps = for_steps
        self.keys = tuple(keys) if keys else when.keys
        if not self.keys and when.uses_step:
            raise RuleError(f"{source}: {keyless_problem(when)}")
        self.metric_keys = tuple(dict.fromkeys([*when.keys, *(message.keys if message else ())]))
        self.splits = _splits(self.keys)
        self.cooldown = cooldown
        self.warmup_steps, self.warmup_frac, self.once = warmup_steps, warmup_frac, once
        self.source = source
        self.warnings: list[str] = []
        self.streak = 0
        self._warned = False

    @property
    def when(self) -> str:
        return self.expr.text

    def on_start(self, ctx: Context) -> Finding | None:
        self.streak = 0
        if not self._warned:
            self._warned = True
            for text in metric_warnings(self, known_keys(ctx.algorithm, ctx.history)):
                self.warnings.append(text)
                log.warning("ptt_nb: %s", text)
        if not self.keys:  # config-time rule
            return self.check(ctx)
        return None

    def check(self, ctx: Context) -> Finding | None:
        if not self.expr.holds(ctx):  # False, or None while not ready
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < self.for_steps:
            return None
        if _HOLD is not None and getattr(self, "is_active", False):
            return _HOLD  # the open episode keeps its opening message: skip formatting a new one
        value = self.expr.value(ctx)
        evidence = {}
        if self.expr.value_fn is not None:
            evidence["value"] = value
        for key in self.expr.keys:
            s = ctx.history.series.get((split_of(key), key))
            if s is not None and s.n:
                evidence[key] = float(s.values[s.n - 1])
        if self.message is not None:
            message = self.message.render(ctx, value, self.id)
        else:
            held = f" for {self.for_steps} log points" if self.for_steps > 1 else ""
            shown = f" ({self.expr.value_text} = {value:.4g})" if self.expr.value_fn is not None else ""
            when = " ".join(self.expr.text.split())
            message = f"{self.title}: {when} held{held} at step {ctx.step}{shown}."
        return Finding(message, evidence=evidence)


class FunctionRule(Rule):
    """A rule whose check is a user's Python function ``fn(ctx) -> bool | Finding | str | None``."""

    def __init__(self, fn: Callable[[Context], Any], *, id: str, keys: Iterable[str], severity: str = "medium",
                 message: Template | None = None, title: str = "", action: str = "", reference: str = "",
                 url: str | None = None, algorithms: Iterable[str] | None = None, panels: Iterable[str] = (),
                 splits: Iterable[str] | None = None, for_steps: int = 1, cooldown: int = 0,
                 warmup_steps: int = 0, warmup_frac: float = 0.0, once: bool = False,
                 source: str = "python") -> None:
        self.fn = fn
        _describe(self, id, severity, message, title, action, reference, url, algorithms, panels)
        self.keys = tuple(keys)
        self.metric_keys = self.keys
        # a Python rule runs at the log points of every split its keys belong to (train, eval or both)
        self.splits = tuple(splits) if splits else tuple(sorted({split_of(k) for k in self.keys}, reverse=True))
        self.for_steps = for_steps
        self.cooldown = cooldown
        self.warmup_steps, self.warmup_frac, self.once = warmup_steps, warmup_frac, once
        self.source = source
        self.streak = 0

    def on_start(self, ctx: Context) -> Finding | None:
        self.streak = 0
        return None

    def check(self, ctx: Context) -> Finding | None:
        result = self.fn(ctx)
        if result is None or result is False or (isinstance(result, np.bool_) and not result):
            self.streak = 0
            return None
        if isinstance(result, Finding):
            finding = result
        elif isinstance(result, str):
            finding = Finding(result)
        elif result is True or isinstance(result, np.bool_):
            if _HOLD is not None and getattr(self, "is_active", False) and self.streak >= self.for_steps:
                return _HOLD
            text = (self.message.render(ctx, math.nan, self.id) if self.message is not None
                    else f"{self.title} held at step {ctx.step}.")
            finding = Finding(text)
        else:
            raise TypeError(f"@rule function {getattr(self.fn, '__name__', self.fn)!r} returned "
                            f"{type(result).__name__}; expected bool, Finding, str or None")
        self.streak += 1
        if self.streak < self.for_steps:
            return None
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
                for_steps=_check_int(for_steps, "for_steps", 1, MAX_FOR, where),
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


# -- YAML with positions --------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """The safe loader, refusing aliases while composing (no billion-laughs expansion, no shared nodes)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in rule packs",
                                              event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"YAML nested too deeply (more than {MAX_YAML_DEPTH} "
                                              "levels)", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Doc:
    """One YAML text: composes nodes safely and maps node / expression offsets to file positions."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        self.lines = text.split("\n")

    def error(self, msg: str, line0: int, col0: int) -> RuleSyntaxError:
        snippet = self.lines[line0] if 0 <= line0 < len(self.lines) else None
        return RuleSyntaxError(msg, source=self.source, line=line0 + 1, col=col0 + 1, snippet=snippet)

    def at(self, node: yaml.Node, msg: str) -> RuleSyntaxError:
        return self.error(msg, node.start_mark.line, node.start_mark.column)

    def compose(self) -> yaml.Node | None:
        loader = _Loader(self.text)
        try:
            return loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            msg = "YAML error: " + ", ".join(x for x in (exc.context, exc.problem) if x)
            if "`" in (exc.problem or "") or "'`'" in str(exc):
                msg += ("; a value cannot start with a backtick in YAML: quote the whole expression "
                        "(when: \"`rewards/margins` < 0\") or write m(\"rewards/margins\")")
            raise self.error(msg, mark.line if mark else 0, mark.column if mark else 0) from None
        except yaml.YAMLError as exc:
            raise RuleSyntaxError(f"YAML error: {exc}", source=self.source) from None
        finally:
            loader.dispose()

    def check_node(self, node: yaml.Node) -> None:
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise self.at(node, f"YAML tag {tag} is not allowed: rule packs hold plain data (text, numbers, "
                                "lists, mappings), never objects or code")

    def value(self, node: yaml.Node) -> Any:
        """Plain Python data of a node (strings, numbers, bools, None, lists, dicts of strings)."""
        self.check_node(node)
        if isinstance(node, yaml.ScalarNode):
            value = yaml.SafeLoader.yaml_constructors[node.tag](_CONSTRUCTOR, node)
            if isinstance(value, str):
                try:
                    check_chars(value, "text")
                except RuleSyntaxError as exc:
                    raise self.relocate(exc, node, value, "text") from None
            return value
        if isinstance(node, yaml.SequenceNode):
            return [self.value(n) for n in node.value]
        return {k: self.value(v) for k, (v, _kn) in self.mapping(node).items()}

    def mapping(self, node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """key -> (value node, key node), refusing non-text and duplicate keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.at(node, "expected a mapping (key: value lines)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            self.check_node(knode)
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != "tag:yaml.org,2002:str":
                raise self.at(knode, "mapping keys must be plain text")
            if knode.value in out:
                raise self.at(knode, f"duplicate key {knode.value!r}")
            out[knode.value] = (vnode, knode)
        return out

    def positions(self, node: yaml.ScalarNode) -> list[tuple[int, int]]:
        """(line, column), 0-based, in the file of each character of a scalar's value (best effort for folded
        and escaped text)."""
        lines = self.lines
        sl, sc = node.start_mark.line, node.start_mark.column
        el, ec = node.end_mark.line, node.end_mark.column
        pos: list[tuple[int, int]] = []
        if node.style in ("|", ">"):
            content = lines[sl + 1:el + 1]
            indent = next((len(r) - len(r.lstrip(" ")) for r in content if r.strip()), 0)
            for i, raw in enumerate(content):
                ln = sl + 1 + i
                pos.extend((ln, c) for c in range(indent, len(raw)))
                pos.append((ln, max(len(raw), indent)))
            return pos or [(sl, sc)]
        quote = node.style if node.style in ("'", '"') else None
        ln, c = sl, sc + (1 if quote else 0)
        while (ln, c) < (el, ec) and ln < len(lines):
            raw = lines[ln]
            if c >= len(raw):  # folded line break: one space in the value
                pos.append((ln, c))
                ln += 1
                c = len(lines[ln]) - len(lines[ln].lstrip(" \t")) if ln < len(lines) else 0
                continue
            ch = raw[c]
            if quote and ch == quote and not (quote == "'" and raw[c + 1:c + 2] == "'"):
                break
            pos.append((ln, c))
            c += 2 if (quote == '"' and ch == "\\") or (quote == "'" and raw[c:c + 2] == "''") else 1
        return pos or [(sl, sc)]

    def relocate(self, exc: RuleSyntaxError, node: yaml.Node, text: str, what: str) -> RuleSyntaxError:
        """An error from compiling ``text`` (the value of ``node``) placed in the file."""
        if not isinstance(node, yaml.ScalarNode):
            return self.at(node, f"{what}: {exc.message}")
        lines = text.split("\n")
        offset = sum(len(x) + 1 for x in lines[:exc.line - 1]) + exc.col - 1
        pos = self.positions(node)
        line0, col0 = pos[min(max(offset, 0), len(pos) - 1)] if offset < len(pos) else (
            pos[-1][0], pos[-1][1] + 1)
        return self.error(f"{what}: {exc.message}", line0, col0)


_CONSTRUCTOR = yaml.SafeLoader("")


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
    return DslRule(id=f"custom_{digest}", when=expr, for_steps=n or 1, source=source)


def _yaml_rules(text: str, source: str) -> list[Rule]:
    doc = _Doc(text, source)
    root = doc.compose()
    if root is None:
        return []
    doc.check_node(root)
    defaults: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    seq: yaml.Node = root
    if isinstance(root, yaml.SequenceNode):
        items = root.value
    elif isinstance(root, yaml.MappingNode):
        top = doc.mapping(root)
        if "rules" in top:
            for key, (_v, knode) in top.items():
                if key not in ("rules", "defaults"):
                    raise doc.at(knode, f"unknown top-level key {key!r}: expected rules: (and optional defaults:)")
            rules_node = top["rules"][0]
            doc.check_node(rules_node)
            if not isinstance(rules_node, yaml.SequenceNode):
                raise doc.at(rules_node, "rules: must be a list of rules (lines starting with '- ')")
            items, seq = rules_node.value, rules_node
            if "defaults" in top:
                defaults = doc.mapping(top["defaults"][0])
                doc.check_node(top["defaults"][0])
                for key, (_v, knode) in defaults.items():
                    if key not in DEFAULT_FIELDS:
                        raise doc.at(knode, f"defaults: cannot set {key!r}; allowed: {', '.join(DEFAULT_FIELDS)}")
        elif "id" in top or "when" in top:
            items = [root]
        else:
            raise doc.at(root, "expected a list of rules, a mapping with rules:, or one rule with id: and when:")
    else:
        raise doc.at(root, "expected a list of rules, a mapping with rules:, or one rule with id: and when:")
    if len(items) > MAX_RULES_PER_FILE:
        raise doc.at(seq, f"too many rules ({len(items)}; the limit is {MAX_RULES_PER_FILE})")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for item in items:
        r = _yaml_rule(doc, item, defaults)
        if r.id in seen:
            raise doc.at(item, f"duplicate rule id {r.id!r} (first defined on line {seen[r.id]})")
        seen[r.id] = item.start_mark.line + 1
        rules.append(r)
    return rules


def _yaml_rule(doc: _Doc, node: yaml.Node, defaults: dict[str, tuple[yaml.Node, yaml.Node]]) -> DslRule:
    doc.check_node(node)
    if not isinstance(node, yaml.MappingNode):
        raise doc.at(node, "each rule must be a mapping with at least id: and when:")
    fields = doc.mapping(node)
    for key, (_v, knode) in fields.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise doc.at(knode, f"unknown field {key!r}{hint} Fields: {', '.join(FIELDS)}")
    for key in ("id", "when"):
        if key not in fields:
            raise doc.at(node, f"rule is missing {key}:" + (" (the condition, e.g. when: mean(loss, 10) > 2)"
                                                             if key == "when" else " (a unique name)"))
    merged = {**defaults, **fields}

    def get(key: str, default: Any = None) -> Any:
        if key not in merged:
            return default
        return doc.value(merged[key][0])

    def text(key: str, default: str = "") -> str:
        v = get(key, default)
        if v is None:
            return default
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise doc.at(merged[key][0], f"{key}: expected text")
        v = str(v)
        if len(v) > MAX_TEXT_FIELD:
            raise doc.at(merged[key][0], f"{key}: too long ({len(v)} characters; limit {MAX_TEXT_FIELD})")
        return v

    def checked(fn: Callable[..., Any], key: str, *args: Any) -> Any:
        try:
            return fn(*args)
        except RuleSyntaxError:
            raise
        except RuleError as exc:
            msg = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
            raise doc.at(merged[key][0], msg) from None

    rid_node = fields["id"][0]
    rid = doc.value(rid_node)
    rid = checked(_check_id, "id", rid if isinstance(rid, str) else repr(rid), "id")
    where = f"{doc.source}:{node.start_mark.line + 1}"
    when_node = fields["when"][0]
    when_text = doc.value(when_node)
    if not isinstance(when_text, str):
        if isinstance(when_text, bool):
            raise doc.at(when_node, "when: expected an expression; YAML read this as a boolean (quote it)")
        if not isinstance(when_text, (int, float)):
            raise doc.at(when_node, f"when: expected an expression (text), got a {type(when_text).__name__}")
        when_text = str(when_text)
    try:
        expr_text, inline_for = split_for(when_text)
        expr = compile_expr(expr_text)
    except RuleSyntaxError as exc:
        raise doc.relocate(exc, when_node, when_text, "when") from None
    if "keys" not in fields and keyless_problem(expr):
        raise doc.at(when_node, f"when: {keyless_problem(expr)}")
    for_steps = get("for", None)
    if for_steps is not None:
        if inline_for is not None:
            raise doc.at(merged["for"][0], "for: given twice (in when: and as for:); keep one")
        for_steps = checked(_check_int, "for", for_steps, "for", 1, MAX_FOR, "for")
    for_steps = for_steps or inline_for or 1
    severity = checked(_check_severity, "severity", get("severity", "medium"), "severity")
    message = None
    if "message" in merged:
        mtext = text("message")
        try:
            message = compile_template(mtext)
        except RuleSyntaxError as exc:
            raise doc.relocate(exc, merged["message"][0], mtext, "message") from None
    algorithms = checked(_check_algorithms, "algorithms", get("algorithms"), "algorithms")
    url = checked(_check_url, "url", get("url"), "url")
    panels = _str_list(doc, merged, "panels")
    keys = _str_list(doc, merged, "keys")
    cooldown = checked(_check_int, "cooldown", get("cooldown", 0), "cooldown", 0, 1_000_000, "cooldown")
    warmup_steps = checked(_check_int, "warmup_steps", get("warmup_steps", 0), "warmup_steps", 0, 10**9,
                           "warmup_steps")
    warmup_frac = checked(_check_frac, "warmup_frac", get("warmup_frac", 0.0), "warmup_frac", "warmup_frac")
    once = checked(_check_bool, "once", get("once", False), "once", "once")
    return DslRule(id=rid, when=expr, for_steps=for_steps, severity=severity, message=message,
                   title=text("title"), action=text("action"), reference=text("reference"), url=url,
                   algorithms=algorithms, panels=panels, keys=keys or None, cooldown=cooldown,
                   warmup_steps=warmup_steps, warmup_frac=warmup_frac, once=once, source=where)


def _str_list(doc: _Doc, merged: dict[str, tuple[yaml.Node, yaml.Node]], key: str) -> list[str]:
    if key not in merged:
        return []
    v = doc.value(merged[key][0])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise doc.at(merged[key][0], f"{key}: expected a list of names")
    return v


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


__all__ = ["DslRule", "FunctionRule", "RuleFunction", "DslRuntimeError", "RuleSyntaxError", "as_rules",
           "known_keys", "load_rule_dir", "load_rule_file", "metric_warnings", "parse_rules", "rule"]
