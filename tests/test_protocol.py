"""Every key the widget's JS reads off a Python → JS message exists in that message's TypedDict
(ptt_nb/notebook/_protocol.py, mirroring js/PROTOCOL.md).

The JS is read as text: for each (file, region, variable) below, ``var.key`` / ``var?.key`` accesses and
``const { a, b } = var`` destructuring give the keys read, which must be annotations of the TypedDict that
variable holds. A region is the source from a start pattern to an end pattern, where the same variable name
means something else elsewhere in the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ptt_nb.notebook import _protocol as P

SRC = Path(__file__).resolve().parents[1] / "js" / "src"

# keys the front end itself adds to a message (decode.js attaches the decoded buffers to each series entry)
DECODED = {"steps", "values"}

# (file, region start, region end, variable, TypedDicts it may hold, extra keys allowed)
READS: list[tuple[str, str | None, str | None, str, tuple[type, ...], frozenset[str]]] = [
    ("queue.js", r"function push\(msg\)", r"function addSeries", "msg", (P.InitMsg, P.DataMsg), frozenset()),
    ("queue.js", r"function addSeries\(s\)", r"function take", "s", (P.SeriesEntry,), frozenset(DECODED)),
    ("queue.js", r"function push\(msg\)", r"function addSeries", "a", (P.AlertMsg,), frozenset()),
    ("decode.js", r"export function decodeMessage", None, "msg", (P.DataMsg,), frozenset()),
    ("decode.js", r"export function decodeMessage", None, "s", (P.SeriesEntry,), frozenset()),
    ("view.js", None, None, "init", (P.InitMsg,), frozenset()),
    ("view.js", r"_apply\(batch\)", r"async settled", "batch.init", (P.InitMsg,), frozenset()),
    ("view.js", r"_apply\(batch\)", r"async settled", "batch.status", (P.StatusMsg,), frozenset()),
    ("view.js", r"_apply\(batch\)", r"async settled", "init.status", (P.StatusMsg,), frozenset()),
    ("header.js", r"setRun\(run\)", r"update\(st\)", "run", (P.RunInfo,), frozenset()),
    ("header.js", r"update\(st\)", r"_renderStop\(stopping\)", "st", (P.StatusMsg,), frozenset()),
    ("alerts.js", r"upsert\(alerts\)", None, "a", (P.AlertMsg,), frozenset()),
    ("alerts.js", r"_render\(\)", None, "b", (P.AlertMsg,), frozenset()),
    ("alerts.js", None, None, "a.reference", (P.Reference,), frozenset()),
    ("backtest.js", r"export function backtestByPanel", r"export function markerSignature", "e",
     (P.BacktestMsg,), frozenset()),
    ("heatmap.js", r"update\(ranks\)", r"_build\(world\)", "ranks", (P.RankBlock,), frozenset()),
    ("heatmap.js", r"_draw\(\)", r"async settled", "rk", (P.RankBlock,), frozenset()),
    ("panels.js", r"class Panel \{", r"ensureFig\(\)", "spec", (P.PanelSpec,), frozenset()),
    ("panels.js", r"this\.lines = \(spec\.series", r"ensureFig\(\)", "s", (P.SeriesSpec,), frozenset()),
    ("panels.js", r"_build\(\) \{", r"const renderers", "spec", (P.PanelSpec,), frozenset()),
    ("panels.js", r"_build\(\) \{", r"const renderers", "ref", (P.RefLine,), frozenset()),
    ("panels.js", r"setMarkers\(alerts\)", r"setBacktest\(d\)", "a", (P.AlertMsg,), frozenset()),
    ("panels.js", r"build\(specs\)", r"this\.el\.append", "spec", (P.PanelSpec,), frozenset()),
    ("panels.js", r"setAlerts\(alerts\)", r"setBacktest\(entries\)", "a", (P.AlertMsg,), frozenset()),
    ("panels.js", r"focus\(alert\) \{", r"destroy\(\) \{", "alert", (P.AlertMsg,), frozenset()),
    ("panels.js", r"focus\(alert\) \{", r"destroy\(\) \{", "p.spec", (P.PanelSpec,), frozenset()),
]


def region(text: str, start: str | None, end: str | None) -> str:
    """The text from the first match of ``start`` to the next match of ``end`` after it (None: file start/end)."""
    i = 0
    if start is not None:
        m = re.search(start, text)
        assert m, f"region start {start!r} not found: update READS in tests/test_protocol.py"
        i = m.start()
    j = len(text)
    if end is not None:
        m = re.compile(end).search(text, i + 1)
        assert m, f"region end {end!r} not found: update READS in tests/test_protocol.py"
        j = m.start()
    return text[i:j]


def keys_read(js: str, var: str) -> set[str]:
    """Keys read off ``var`` in ``js``: ``var.k``, ``var?.k``, ``const { k, k2: alias } = var``. A longer
    dotted name (``var.k.j``) counts only its first key for ``var``."""
    v = r"(?<![\w.$])" + r"\??\.".join(re.escape(p) for p in var.split("."))
    keys = set(re.findall(v + r"\??\.([A-Za-z_$][\w$]*)", js))
    for group in re.findall(r"\{([^{}]*)\}\s*=\s*" + v + r"(?![\w$])", js):
        for part in group.split(","):
            name = part.split(":")[0].split("=")[0].strip().lstrip(".")
            if name:
                keys.add(name)
    return keys


def missing(js: str, var: str, types: tuple[type, ...], extra: frozenset[str] = frozenset()) -> list[str]:
    allowed = set(extra)
    for t in types:
        allowed |= set(t.__annotations__)
    return sorted(keys_read(js, var) - allowed)


@pytest.mark.parametrize(("file", "start", "end", "var", "types", "extra"), READS,
                         ids=[f"{r[0]}:{r[3]}" for r in READS])
def test_every_key_the_js_reads_is_in_the_typeddict(file, start, end, var, types, extra) -> None:
    js = region((SRC / file).read_text(encoding="utf-8"), start, end)
    assert keys_read(js, var), f"{file}: no read of {var!r} found in its region: update READS"
    names = " | ".join(t.__name__ for t in types)
    assert missing(js, var, types, extra) == [], f"{file} reads these off {var} but {names} lacks them"


def test_the_checker_reports_a_key_the_typeddict_lacks() -> None:
    js = "function f(msg) { const { series, bogus_key } = msg; return msg.type + msg?.not_in_protocol; }"
    assert keys_read(js, "msg") == {"series", "bogus_key", "type", "not_in_protocol"}
    assert missing(js, "msg", (P.DataMsg,)) == ["bogus_key", "not_in_protocol"]
    assert missing("x.msg.type; msgs.foo", "msg", (P.DataMsg,)) == []  # other names are not ``msg``
    assert missing("batch.init.nope", "batch.init", (P.InitMsg,)) == ["nope"]


def test_python_builds_what_the_typeddicts_declare(tmp_path) -> None:
    """The stream's messages carry exactly the TypedDicts' keys (no undeclared extras, every required one)."""
    from ptt_nb.events import Alert, RunStart
    from ptt_nb.monitor._monitor import Monitor
    from ptt_nb.notebook._messages import alert_message
    from ptt_nb.notebook._stream import Stream
    from ptt_nb.rules._backtest import BacktestResult, Firing

    sent: list[dict] = []
    m = Monitor()
    m.start(RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", max_steps=10, world_size=1, config={}))
    m.log(1, {"loss": 0.7, "grad_norm": float("nan")})
    stream = Stream(m, lambda c, b: sent.append(c))
    try:
        stream.set_backtest("r1", BacktestResult("r1", [Firing(1, None, "high", "x")], panels=("p",)))
        stream.handle({"type": "ready"})
        stream.flush()
        init = next(c for c in sent if c["type"] == "init")
        assert set(init) == set(P.InitMsg.__annotations__)
        assert set(init["status"]) <= set(P.StatusMsg.__annotations__)
        assert set(init["run"]) <= set(P.RunInfo.__annotations__)
        for panel in init["panels"]:
            assert set(panel) <= set(P.PanelSpec.__annotations__)
        (bt,) = init["backtest"]
        assert set(bt) == set(P.BacktestMsg.__annotations__) and bt["severity"] == "high"
        data = next(c for c in sent if c["type"] == "data")
        assert set(data) <= set(P.DataMsg.__annotations__)
        for entry in data["series"]:
            assert set(entry) == set(P.SeriesEntry.__annotations__)
    finally:
        stream.close()
    alert = alert_message(Alert(id="a@1", rule="a", severity="low", step=1, message="m",
                                evidence={"v": float("nan"), "w": float("-inf")}), muted=False)
    assert set(alert) == set(P.AlertMsg.__annotations__)
    assert set(alert["reference"]) == set(P.Reference.__annotations__)
    assert alert["evidence"] == {"v": "NaN", "w": "-Infinity"}  # events.encode_float's text
