"""YAML rule packs: data, never code.

A pack is composed with PyYAML's safe loader, every node's tag is checked against the plain YAML types,
anchors/aliases are refused, and expressions go through the whitelist compiler of the DSL. Errors name the
file, line and column inside the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import yaml

from ptt_nb.rules._dsl import MAX_FOR, RuleSyntaxError, check_chars, compile_expr, compile_template, split_for
from ptt_nb.rules._dsl_rule import DslRule, keyless_problem
from ptt_nb.rules._engine import Rule, RuleError
from ptt_nb.rules._rule_fields import (
    _check_algorithms,
    _check_bool,
    _check_frac,
    _check_id,
    _check_int,
    _check_severity,
    _check_url,
)

MAX_RULES_PER_FILE = 1000
MAX_TEXT_FIELD = 4000
MAX_YAML_DEPTH = 16
FIELDS = ("id", "when", "for", "severity", "message", "title", "action", "reference", "url", "algorithms",
          "panels", "keys", "cooldown", "warmup_steps", "warmup_frac", "once")
DEFAULT_FIELDS = ("severity", "algorithms", "panels", "reference", "url", "action", "cooldown", "for", "warmup_steps",
                  "warmup_frac", "once")
_ALLOWED_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}


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
    for_logs = get("for", None)
    if for_logs is not None:
        if inline_for is not None:
            raise doc.at(merged["for"][0], "for: given twice (in when: and as for:); keep one")
        for_logs = checked(_check_int, "for", for_logs, "for", 1, MAX_FOR, "for")
    for_logs = for_logs or inline_for or 1
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
    return DslRule(id=rid, when=expr, for_logs=for_logs, severity=severity, message=message,
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
