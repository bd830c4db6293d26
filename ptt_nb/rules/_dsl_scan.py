"""Lexical layer of the rule expression language: errors, limits, the pre-scan and the ``for N steps`` suffix.

The pre-scan runs before Python's ``ast`` sees anything: it replaces backtick metric names by placeholders,
refuses comments, control characters and unterminated strings/names, and bounds bracket nesting, each with a
positioned RuleSyntaxError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ptt_nb.rules._engine import RuleError

MAX_EXPR_CHARS = 2000
MAX_NODES = 256
MAX_DEPTH = 24
MAX_WINDOW = 10_000
MAX_EXPONENT = 64
MAX_FOR = 10_000
MAX_TEMPLATE_CHARS = 2000
MAX_TEMPLATE_FIELDS = 24


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

