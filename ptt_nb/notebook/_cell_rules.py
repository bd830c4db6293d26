"""What ``%%ptt`` does with a cell: parse its rules (rule language or ``@rule`` Python), backtest them on a run's
history and show where they would have fired, and append them to a YAML rule pack.

Errors are ``CellError`` with the position in the *cell* (line 1 is the ``%%ptt`` line, as the user sees it), so
the magic can show a short message instead of a traceback.
"""

from __future__ import annotations

import html
import math
import re
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptt_nb.events import Alert
from ptt_nb.monitor._history import MetricHistory
from ptt_nb.notebook._session import RuleSource
from ptt_nb.rules._engine import Rule, RuleError

if TYPE_CHECKING:
    from ptt_nb.rules._backtest import BacktestResult

CELL_FILE = "<%%ptt cell>"
_PYTHON = re.compile(r"^\s*(@|def\s|class\s|import\s|from\s+\S+\s+import\s)", re.M)
MAX_ROWS = 8


class CellError(Exception):
    """A user mistake in a ``%%ptt`` cell, already worded for the user."""


def _positioned(message: str, line: int | None, col: int | None, body: str) -> CellError:
    """``line L, column C of the cell`` (the %%ptt line is line 1) with the offending line and a caret."""
    if line is None:
        return CellError(f"%%ptt: {message}")
    lines = body.split("\n")
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    pos = f"line {line + 1}" + (f", column {col}" if col else "")
    caret = f"\n    {text}\n    {' ' * max(0, (col or 1) - 1)}^" if text.strip() and col else ""
    if text.strip() and not col:
        caret = f"\n    {text}"
    return CellError(f"%%ptt: {pos} of the cell: {message}{caret}")


def is_python(body: str) -> bool:
    """A Python cell (``@rule`` functions, Rule classes) rather than rule-language text (YAML or one line)."""
    return bool(_PYTHON.search(body))


def parse_cell(body: str, user_ns: dict[str, Any], *, severity: str | None = None) -> list[RuleSource]:
    """The cell's rules, each as a ``RuleSource`` (``make()`` gives a fresh instance for each run)."""
    if is_python(body):
        return _python_rules(body, user_ns, severity)
    return _dsl_rules(body, severity)


def _dsl_rules(body: str, severity: str | None) -> list[RuleSource]:
    from ptt_nb.rules._custom import _one_line, parse_rules
    from ptt_nb.rules._dsl import RuleSyntaxError

    def parse() -> list[Rule]:
        rules = parse_rules(body, CELL_FILE)
        if severity:
            for r in rules:
                r.severity = severity
        return rules

    try:
        rules = parse()
    except RuleSyntaxError as exc:
        line, col = exc.line, exc.col
        if _one_line(body):  # a one-line rule is parsed stripped: put its position back into the cell
            lead = body[:len(body) - len(body.lstrip())]
            if line == 1:
                col += len(lead) - (lead.rfind("\n") + 1)
            line += lead.count("\n")
        raise _positioned(exc.message, line, col, body) from None
    except RuleError as exc:
        raise CellError(f"%%ptt: {str(exc).replace(CELL_FILE + ': ', '')}") from None
    if not rules:
        raise CellError("%%ptt: the cell holds no rule (write `- id: ...` / `when: ...` YAML, or one expression)")
    sources = []
    for r in rules:
        def make(rid: str = r.id) -> Rule:
            return next(x for x in parse() if x.id == rid)

        sources.append(RuleSource(id=r.id, make=make, text=body))
    return sources


def _python_rules(body: str, user_ns: dict[str, Any], severity: str | None) -> list[RuleSource]:
    from ptt_nb.rules import _custom as custom

    try:
        code = compile(body, CELL_FILE, "exec")
    except SyntaxError as exc:
        raise _positioned(f"SyntaxError: {exc.msg}", exc.lineno, exc.offset, body) from None
    before = {id(v) for v in user_ns.values()}
    injected = "rule" not in user_ns
    if injected:
        user_ns["rule"] = custom.rule
    try:
        exec(code, user_ns)  # the user's own Python, as any cell runs it, in the notebook's namespace
    except Exception as exc:
        line = _cell_line(exc)
        message = f"{type(exc).__name__}: {exc}"
        raise _positioned(message, line, None, body) from None
    found: dict[str, Any] = {}
    for value in list(user_ns.values()):
        if id(value) in before:
            continue
        if isinstance(value, custom.RuleFunction):
            found[value.id] = value
        elif isinstance(value, Rule) or (isinstance(value, type) and issubclass(value, Rule) and value is not Rule
                                          and getattr(value, "id", "")):
            rid = value.id
            found[rid] = value
    if not found:
        raise CellError("%%ptt: the Python cell defined no rule: decorate a function fn(ctx) with "
                        "@rule(id=..., keys=[...]) (ptt_nb.rules._custom.rule)")
    sources = []
    for rid, obj in found.items():
        def make(obj: Any = obj) -> Rule:
            import copy

            rule = obj.make_rule() if isinstance(obj, custom.RuleFunction) else (
                obj() if isinstance(obj, type) else copy.deepcopy(obj))
            if severity:
                rule.severity = severity
            return rule

        try:
            make()
        except Exception as exc:
            raise CellError(f"%%ptt: rule {rid!r} cannot be built: {type(exc).__name__}: {exc}") from None
        sources.append(RuleSource(id=rid, make=make, text=body))
    return sources


def _cell_line(exc: BaseException) -> int | None:
    """The innermost line of the cell in an exception's traceback."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == CELL_FILE:
            line = frame.lineno
    return line


# -- backtest --------------------------------------------------------------------------------------------------------
def backtest_cell(rule: Rule, history: MetricHistory, *, algorithm: str, config: dict[str, Any],
                  max_steps: int | None) -> BacktestResult:
    """``rules._backtest.backtest`` for a cell's rule, its failures worded as ``CellError`` for the magic."""
    try:
        from ptt_nb.rules._backtest import backtest
    except ImportError as exc:
        raise CellError(f"%%ptt: backtesting is not available in this build ({exc}); the rule was not checked "
                        "(use --dry-run later, or add it as it is by leaving the cell out)") from None
    try:
        return backtest(rule, history, algorithm=algorithm, config=config, max_steps=max_steps)
    except RuleError as exc:
        raise CellError(f"%%ptt: {rule.id}: {exc}") from None


def marker_alerts(result: BacktestResult, panel_ids: list[str]) -> list[Alert]:
    """The episodes as Alert objects (state ``backtest``) on the rule's own panels, else on ``panel_ids`` (those
    that plot the keys it reads), for a dashboard to draw as markers (``BacktestResult.from_alerts`` reads them
    back)."""
    ids = list(result.panels) or list(panel_ids)
    return [Alert(id=f"backtest:{result.rule_id}@{f.step}", rule=result.rule_id, severity=f.severity, step=f.step,
                  message=f.message, evidence=dict(f.evidence), state="backtest", resolved_step=f.resolved_step,
                  panels=ids) for f in result.firings]


class BacktestView:
    """Where a rule would have fired: a short table and a small SVG of the series it reads, with markers."""

    def __init__(self, rule_id: str, result: BacktestResult, history: MetricHistory) -> None:
        self.rule_id, self.result, self.history = rule_id, result, history

    def summary(self) -> str:
        r = self.result
        if r.error:
            return f"{r.rule_id}: the rule failed during the backtest: {r.error}"
        if not r.firings:
            over = f" ({r.checked} log points checked)" if r.checked is not None else ""
            return f"{r.rule_id}: would not have fired on this run{over}"
        steps = r.steps
        shown = ", ".join(map(str, steps[:12])) + (", ..." if len(steps) > 12 else "")
        return (f"{r.rule_id}: would have fired {len(steps)} time{'s' if len(steps) != 1 else ''}, first at step "
                f"{steps[0]} (steps {shown})")

    def rows(self) -> list[list[str]]:
        out = []
        for f in self.result.firings[:MAX_ROWS]:
            ev = ", ".join(f"{k}={_num(v)}" for k, v in list(f.evidence.items())[:4])
            end = "-" if f.resolved_step is None else str(f.resolved_step)
            out.append([str(f.step), end, f.severity, ev])
        return out

    def __repr__(self) -> str:
        lines = [self.summary(), *self.result.warnings]
        rows = self.rows()
        if rows:
            lines.append("  step  until  severity  evidence")
            lines.extend(f"  {s:>4}  {e:>5}  {sev:<8}  {ev}" for s, e, sev, ev in rows)
            if len(self.result.firings) > MAX_ROWS:
                lines.append(f"  ... {len(self.result.firings) - MAX_ROWS} more")
            lines.append(f"  first message: {self.result.firings[0].message}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<div class='ptt-backtest'><div><b>{html.escape(self.summary())}</b></div>"]
        parts.extend(f"<div style='color:#b35900'>{html.escape(w)}</div>" for w in self.result.warnings)
        rows = self.rows()
        if rows:
            parts.append("<table><thead><tr><th>step</th><th>until</th><th>severity</th><th>evidence</th></tr>"
                         "</thead><tbody>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</tbody></table>")
            parts.append(f"<div>first message: {html.escape(self.result.firings[0].message)}</div>")
        parts.append(self._svg())
        parts.append("</div>")
        return "".join(parts)

    def _svg(self, width: int = 560, height: int = 90) -> str:
        """The first series the rule reads, with a red line at each step it would have fired."""
        from ptt_nb.rules._dsl import split_of

        for key in self.result.keys:
            series = self.history.get(key, split_of(key)) or self.history.get(key)
            if series is not None and series.n > 1:
                break
        else:
            return ""
        steps, values = series.arrays()
        finite = [(s, v) for s, v in zip(steps.tolist(), values.tolist(), strict=True) if math.isfinite(v)]
        if len(finite) < 2:
            return ""
        x0, x1 = steps[0], max(steps[-1], steps[0] + 1)
        lo, hi = min(v for _, v in finite), max(v for _, v in finite)
        hi = hi if hi > lo else lo + 1.0
        pad = 4

        def x(s: float) -> float:
            return pad + (s - x0) / (x1 - x0) * (width - 2 * pad)

        def y(v: float) -> float:
            return height - pad - (v - lo) / (hi - lo) * (height - 2 * pad)

        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in finite)
        marks = "".join(f"<line x1='{x(s):.1f}' x2='{x(s):.1f}' y1='0' y2='{height}' stroke='#d62728' "
                        f"stroke-opacity='0.6'><title>fires at step {s}</title></line>" for s in self.result.steps)
        return (f"<div style='font-size:11px;color:#666'>{html.escape(key)} (steps {x0}-{steps[-1]}), red: would "
                f"fire</div><svg width='{width}' height='{height}' style='border:1px solid #ddd'>{marks}"
                f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{points}'/></svg>")


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.4g}"


# -- saving to a YAML rule pack ---------------------------------------------------------------------------------
def append_to_pack(path: str, body: str, sources: list[RuleSource], severity: str | None = None) -> Path:
    """Append the cell's rules to a YAML pack (a list of rules); a rule with an id already there replaces it.

    A new pack, or one that is a plain list, gets the rules appended as text (comments kept); a pack written as a
    ``rules:`` mapping, or one that already has one of the ids, is rewritten (comments are then lost).
    """
    import yaml

    from ptt_nb.rules._custom import load_rule_file

    if is_python(body):
        raise CellError("%%ptt --save: only rule-language rules go into a YAML pack; keep a Python @rule in your "
                        "code and pass it with DiagnosticsCallback(custom_rules=[...])")
    items = _yaml_items(body, sources, severity)
    out = Path(path).expanduser()
    if out.suffix not in (".yaml", ".yml"):
        raise CellError(f"%%ptt --save: {out} must end in .yaml or .yml (load_rule_dir reads only those)")
    old_text = out.read_text(encoding="utf-8") if out.exists() else ""
    try:
        old = yaml.safe_load(old_text) if old_text.strip() else None
    except yaml.YAMLError as exc:
        raise CellError(f"%%ptt --save: {out} is not valid YAML ({exc}); nothing was written") from None
    new_ids = {item["id"] for item in items}
    if old is None or (isinstance(old, list) and not any(isinstance(o, dict) and o.get("id") in new_ids
                                                         for o in old)):
        text = old_text
        if text and not text.endswith("\n"):
            text += "\n"
        text += yaml.safe_dump(items, sort_keys=False, allow_unicode=True, width=1000)
    else:
        if isinstance(old, dict) and isinstance(old.get("rules"), list):
            pack = old
            rules = old["rules"]
        elif isinstance(old, list):
            pack, rules = old, old
        else:
            raise CellError(f"%%ptt --save: {out} is not a rule pack (a list of rules or rules:); nothing was written")
        for item in items:
            for i, existing in enumerate(rules):
                if isinstance(existing, dict) and existing.get("id") == item["id"]:
                    rules[i] = item
                    break
            else:
                rules.append(item)
        text = yaml.safe_dump(pack, sort_keys=False, allow_unicode=True, width=1000)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_rule_file(tmp)
    except RuleError as exc:
        tmp.unlink()
        raise CellError(f"%%ptt --save: the pack would not load any more ({exc}); nothing was written") from None
    tmp.replace(out)
    return out


def _yaml_items(body: str, sources: list[RuleSource], severity: str | None) -> list[dict[str, Any]]:
    """The cell's rules as plain YAML mappings (defaults folded in; a one-line rule gets its id and when)."""
    import yaml

    from ptt_nb.rules._custom import _one_line
    from ptt_nb.rules._dsl import split_for

    if _one_line(body):
        expr, n = split_for(body.strip())
        item: dict[str, Any] = {"id": sources[0].id, "when": expr.strip()}
        if n:
            item["for"] = n
        items = [item]
    else:
        data = yaml.safe_load(body)
        defaults: dict[str, Any] = {}
        if isinstance(data, dict) and "rules" in data:
            defaults = data.get("defaults") or {}
            data = data["rules"]
        elif isinstance(data, dict):
            data = [data]
        items = [{**defaults, **d} for d in data]
    if severity:
        for item in items:
            item["severity"] = severity
    return items
