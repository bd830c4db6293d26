"""Issue 16: a custom rule's output or an odd log value never loses the run folder or stops training.

Real tiny TRL SFT runs (the two probes of the issue, odd log values, a full disk from /dev/full, a property test
with hypothesis over random rule outputs and log dicts) and the run-folder writer against real OS errors."""

from __future__ import annotations

import json
import logging
import math
import os
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback

from ptt_nb import DiagnosticsCallback
from ptt_nb.events import SEVERITIES, Alert, Control, Metrics, RunEnd, RunStart
from ptt_nb.monitor import _normalise as normalise
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.rules._custom import rule
from ptt_nb.rules._engine import Finding, Rule
from ptt_nb.sinks import _writer
from ptt_nb.sinks._writer import RunWriter
from ptt_nb.tiny import make_trainer

MAX_LINE = 100_000  # bytes: what the caps (message, evidence, repr, keys) keep every events.jsonl line under


class Odd:
    """A non-JSON object with a repr."""

    def __repr__(self) -> str:
        return "<Odd>"


class Hostile:
    """An object whose str, repr and float all raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __float__(self) -> float:
        raise RuntimeError("no float")


def _no_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def lines_of(run_dir: Path) -> list[dict]:
    """Every line of events.jsonl, parsed as strict JSON from strict UTF-8 (fails the test otherwise)."""
    raw = (Path(run_dir) / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    out = []
    for line in raw.split(b"\n")[:-1]:
        assert len(line) < MAX_LINE, f"a {len(line):,}-byte line"
        out.append(json.loads(line.decode("utf-8"), parse_constant=_no_constant))
    return out


def rule_errors_naming(rows: list[dict], rule_id: str) -> list[dict]:
    return [r for r in rows if r["kind"] == "alert" and r["rule"] == "rule_error" and f"'{rule_id}'" in r["message"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for the tiny model (built once; each test's trainer loads it: ~0.2 s)."""
    return tmp_path_factory.mktemp("hardening")


def train(workdir: Path, run_dir: Path, callbacks: list, max_steps: int = 4, printer: bool = True,
          **options) -> tuple:
    """``printer=False`` drops transformers' PrinterCallback, whose print(logs) raises on values that no
    tracker prints either (an int of 5,000 digits, an object whose repr raises): not ptt_nb's to survive."""
    cb = DiagnosticsCallback(run_dir=run_dir, console=False, widget=False, **options)
    trainer = make_trainer("sft", workdir, max_steps=max_steps, callbacks=[*callbacks, cb],
                           output_dir=str(run_dir.parent / f"{run_dir.name}-out"))
    if not printer:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.train()  # must not raise
    assert trainer.state.global_step == max_steps
    return cb, trainer


class Injects(TrainerCallback):
    """Puts extra values into TRL's shared log dict, step by step (listed before DiagnosticsCallback)."""

    def __init__(self, per_step) -> None:
        self.per_step = per_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            logs.update(self.per_step(state.global_step))


def finding_rule(rid: str, make):
    """A Python @rule on ``loss`` whose Finding is ``make()``, at every log point."""
    return rule(rid, keys=["loss"], severity="low")(lambda ctx: make())


# -- the two probes -------------------------------------------------------------------------------------

def test_probe_message_a_non_json_object_or_a_lone_surrogate(workdir, tmp_path):
    """Was: the run-folder sink detached at the first alert; no later line and no run_end reached events.jsonl."""
    rules = [finding_rule("msg_object", lambda: Finding(Odd())),
             finding_rule("msg_surrogate", lambda: Finding("bad \ud800 text", action="fix \udfff")),
             finding_rule("msg_huge", lambda: Finding("x" * 1_000_000)),
             # beyond repair: the rule is disabled, as a rule that raises is
             finding_rule("msg_bad_severity", lambda: Finding("hi", severity="urgent")),
             finding_rule("msg_not_a_finding", lambda: Odd())]
    cb, _ = train(workdir, tmp_path / "run", [], custom_rules=rules)
    rows = lines_of(tmp_path / "run")
    assert rows[-1]["kind"] == "run_end" and rows[-1]["reason"] == "finished"
    assert [r["step"] for r in rows if r["kind"] == "metrics" and r["split"] == "train"] == [1, 2, 3, 4]
    assert not [w for w in cb.monitor.warnings if "sink" in w or "writer" in w]
    alerts = {r["rule"]: r for r in rows if r["kind"] == "alert" and r["rule"].startswith("msg_")}
    assert alerts["msg_object"]["message"] == "<Odd>"
    assert alerts["msg_surrogate"]["message"] == "bad \ufffd text"
    assert alerts["msg_surrogate"]["action"] == "fix \ufffd"
    huge = alerts["msg_huge"]["message"]
    assert len(huge) <= normalise.MAX_TEXT and huge.endswith("x… [+998,040 characters]")
    for rid in ("msg_object", "msg_surrogate", "msg_huge", "msg_bad_severity", "msg_not_a_finding"):
        assert len(rule_errors_naming(rows, rid)) == 1, rid
    assert "not valid UTF-8" in rule_errors_naming(rows, "msg_surrogate")[0]["message"]
    assert "keeps running" in rule_errors_naming(rows, "msg_object")[0]["message"]
    disabled = rule_errors_naming(rows, "msg_bad_severity")[0]["message"]
    assert "RuleOutputError" in disabled and "'urgent' is not one of critical" in disabled and "disabled" in disabled
    assert "msg_bad_severity" not in alerts and "msg_not_a_finding" not in alerts
    assert cb.monitor.engine.states["msg_not_a_finding"].disabled.startswith("TypeError: @rule function")


def test_probe_evidence_a_huge_int_or_an_object_and_odd_log_values(workdir, tmp_path, caplog):
    """Was: ``OverflowError: int too large to convert to float`` out of trainer.train() at step 1 (the Engine's
    evidence, and a log value of 10**400 in the callback)."""
    rules = [finding_rule("ev_huge_int", lambda: Finding("big", evidence={"x": 10**400, "ok": 0.5})),
             finding_rule("ev_object", lambda: Finding("obj", evidence={"o": Odd(), "h": Hostile(),
                                                                        "n": math.nan, "i": -math.inf})),
             finding_rule("ev_many", lambda: Finding("many", evidence={f"k{i}": float(i) for i in range(1000)})),
             finding_rule("ev_not_a_mapping", lambda: Finding("list", evidence=[1, 2]))]
    odd_logs = Injects(lambda step: {"big": 10**400, "obj": Odd(), "tensor": np.ones(3), "\ud800key": 1.0})
    with caplog.at_level(logging.WARNING, logger="ptt_nb"):
        cb, _ = train(workdir, tmp_path / "run", [odd_logs], custom_rules=rules)
    rows = lines_of(tmp_path / "run")
    assert rows[-1]["kind"] == "run_end" and rows[-1]["reason"] == "finished"
    alerts = {r["rule"]: r for r in rows if r["kind"] == "alert" and r["rule"].startswith("ev_")}
    assert alerts["ev_huge_int"]["evidence"] == {"x": "1.000000e+400", "ok": 0.5}
    evidence = alerts["ev_object"]["evidence"]
    assert evidence.pop("h").startswith("<Hostile instance")  # str, repr and float all raise: reprlib's stand-in
    assert evidence == {"o": "<Odd>", "n": "NaN", "i": "-Infinity"}  # NaN/Inf: events.encode_float's spelling
    many = alerts["ev_many"]["evidence"]
    assert len(many) == normalise.MAX_EVIDENCE + 1 and many["(more)"] == "968 more entries not kept"
    for rid in ("ev_huge_int", "ev_object", "ev_many", "ev_not_a_mapping"):
        assert len(rule_errors_naming(rows, rid)) == 1, rid
    assert "int too large for a float" in rule_errors_naming(rows, "ev_huge_int")[0]["message"]
    assert "Finding.evidence is list" in rule_errors_naming(rows, "ev_not_a_mapping")[0]["message"]
    # odd log values: kept out of the metric values with one warning per key, the safe ones kept
    train_rows = [r for r in rows if r["kind"] == "metrics" and r["split"] == "train"]
    assert len(train_rows) == 4
    for r in train_rows:
        assert "big" not in r["values"] and "obj" not in r["values"] and "tensor" not in r["values"]
        assert r["values"]["\ufffdkey"] == 1.0 and isinstance(r["values"]["loss"], float)
    warned = [m for m in caplog.messages if "non-numeric value" in m]
    assert sorted(m.split("'")[1] for m in warned) == ["big", "obj", "tensor"]  # once each, not once a step


# -- the run-folder writer: never detached, never raising -----------------------------------------------------------

def test_a_full_disk_gives_one_warning_and_training_and_other_sinks_go_on(workdir, tmp_path):
    """events.jsonl is /dev/full: every write fails with ENOSPC, from the kernel."""
    run = tmp_path / "run"
    run.mkdir()
    os.symlink("/dev/full", run / "events.jsonl")
    seen: list = []

    class Listens(TrainerCallback):  # listed after DiagnosticsCallback: its Monitor exists by then
        def on_train_begin(self, args, state, control, **kwargs):
            cb.monitor.subscribe(seen.append)

    cb = DiagnosticsCallback(run_dir=run, console=False, widget=False)
    trainer = make_trainer("sft", workdir, max_steps=4, callbacks=[cb, Listens()], output_dir=str(tmp_path / "o"))
    trainer.train()
    assert trainer.state.global_step == 4
    monitor = cb.monitor
    disk = [w for w in monitor.warnings if "events.jsonl" in w]
    assert len(disk) == 1 and "No space left on device" in disk[0] and "Training goes on" in disk[0]
    assert not [w for w in monitor.warnings if "detached" in w]
    assert [type(e).__name__ for e in seen][-1] == "RunEnd"  # the other sinks got everything
    assert sum(type(e) is Metrics and e.split == "train" for e in seen) == 4


def test_writer_retries_after_a_failed_write_and_loses_nothing(tmp_path, caplog):
    """The writer's descriptor is pointed at /dev/full (ENOSPC) for a while, then back at the file."""
    now = [0.0]
    writer = RunWriter(tmp_path, clock=lambda: now[0])
    warned: list[str] = []
    writer.report_to(warned.append)
    real = os.dup(writer._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        writer(Metrics(step=1, split="train", values={"loss": 1.0}))
        os.dup2(full, writer._fd)
        for step in range(2, 6):
            now[0] += 0.4
            writer(Metrics(step=step, split="train", values={"loss": 1.0}))
        assert len(warned) == 1 and "No space left" in warned[0] and "retries" in warned[0]
        os.dup2(real, writer._fd)
        now[0] += _writer.RETRY_S  # retried at most every RETRY_S
        with caplog.at_level(logging.INFO, logger="ptt_nb"):
            writer(Control(action="stop", step=6, by="user"))
        assert "nothing was lost" in caplog.text
        writer.close()
    finally:
        os.close(real)
        os.close(full)
    rows = lines_of(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and len(warned) == 1 and writer.failed is None


def test_writer_gives_up_past_its_cap_and_the_file_stays_a_prefix(tmp_path, monkeypatch):
    monkeypatch.setattr(_writer, "MAX_PENDING", 2_000)
    now = [0.0]
    writer = RunWriter(tmp_path, clock=lambda: now[0])
    warned: list[str] = []
    writer.report_to(warned.append)
    writer(Metrics(step=1, split="train", values={"loss": 1.0}))
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)
    for step in range(2, 200):
        writer(Metrics(step=step, split="train", values={"loss": 1.0}))
    writer.close()
    assert len(warned) == 2 and "gave up" in warned[1] and "before step 2" in warned[1] and writer.failed
    assert [r["step"] for r in lines_of(tmp_path)] == [1]


def test_a_run_folder_that_cannot_be_opened_warns_once_and_the_run_goes_on(tmp_path):
    (tmp_path / "events.jsonl").mkdir()  # EISDIR on open: a real OS refusal (root ignores chmod)
    writer = RunWriter(tmp_path)
    monitor = Monitor()
    monitor.subscribe(writer)
    monitor.start(RunStart(run_id="r", trainer="SFTTrainer", algorithm="sft", max_steps=3))
    for step in range(1, 4):
        monitor.log(step, {"loss": 1.0})
    monitor.finish("finished")
    writer.close()
    assert len(monitor.warnings) == 1 and "cannot write the run folder" in monitor.warnings[0]
    assert writer in monitor.sinks and monitor.end_event is not None


def test_events_orjson_cannot_write_are_written_safe(tmp_path):
    writer = RunWriter(tmp_path)
    writer(Control(action="stop", step=1, by="user\ud800", detail={"n": 10**25, "o": Odd(), 3: [b"raw", math.nan],
                                                               "deep": [[[[[[[["x"]]]]]]]]}))
    writer(RunEnd(reason="exception", step=1, detail="boom \udc80" + "y" * 10_000))
    writer.close()
    control, end = lines_of(tmp_path)
    assert control["by"] == "user\ufffd"
    assert control["detail"]["n"] == "1" + "0" * 25  # over 64 bits: text
    assert control["detail"]["o"] == "<Odd>" and control["detail"]["3"] == ["raw", "NaN"]
    assert end["detail"].startswith("boom \ufffd") and len(end["detail"]) < 2_100


def test_a_failing_writer_is_never_detached_but_another_failing_sink_is():
    monitor = Monitor(evaluate=False)
    calls: list = []

    class FlakyWriter:
        keep_attached = True

        def __call__(self, event):
            calls.append(event.kind)
            if len(calls) <= 3:
                raise OSError("flaky disk")

    def broken(event):
        raise ValueError("widget gone")

    writer = FlakyWriter()
    monitor.subscribe(writer)
    monitor.subscribe(broken)
    monitor.start(RunStart(run_id="r", trainer="SFTTrainer", algorithm="sft"))
    for step in range(1, 5):
        monitor.log(step, {"loss": 1.0})
    monitor.finish("finished")
    assert writer in monitor.sinks and broken not in monitor.sinks
    assert calls[-1] == "run_end" and len(calls) == 6
    assert len([w for w in monitor.warnings if "run-folder writer" in w]) == 1
    assert len([w for w in monitor.warnings if "widget gone" in w]) == 1


# -- normalisation units (the caps, the codec, the fast path) -------------------------------------------------------

def test_normalise_units():
    assert normalise.valid_utf8("a\ud83d\ude00b") == "a\U0001f600b"  # a split pair is joined, not replaced
    assert normalise.valid_utf8("\ud800") == "\ufffd"
    assert normalise.int_text(-(10**400)) == "-1.000000e+400" and normalise.int_text(10**5000).endswith("e+5000")
    assert normalise.number(np.float32(0.5)) == 0.5 and normalise.number(True) == 1.0
    assert normalise.number(Decimal("1e400")) == math.inf  # float() gives inf: kept as the codec's Infinity
    assert normalise.number(Fraction(10**400, 3)).startswith("1000000")  # too large for a float: its str, capped
    assert normalise.number(b"\xff") == "\ufffd" and normalise.number(None) is None
    ok = {"a": 1.0}
    same = Finding("fine", evidence=ok)
    assert normalise.finding(same, []) is same  # nothing to change: the same object, no copy
    assert normalise.floats_only({"a": 1.0, "b": math.nan}) and not normalise.floats_only({"a": 1})
    assert normalise.log_keys({"a": 1.0}) is None and normalise.log_keys({1: 1.0}) == {"1": 1.0}
    a = normalise.alert(Alert(id="x", rule="r\ud800", severity="weird" * 10, step=np.int64(3), message=Odd(),
                              evidence={"v": 10**400}, panels=[Odd()]))
    assert (a.rule, a.severity, a.step, a.message, a.evidence, a.panels) == (
        "r\ufffd", "weirdweirdweirdweird", 3, "<Odd>", {"v": "1.000000e+400"}, ["<Odd>"])


# -- property test: random rule outputs and log dicts through a real callback on tiny runs -------------------------

_OBJECTS = (Odd, Hostile, object, lambda: np.float32(2.5), lambda: np.array([1.0, 2.0]), lambda: np.int64(7),
            lambda: Decimal("1e400"), lambda: Fraction(1, 3), lambda: complex(1, 2), lambda: 10**5000)
_surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3, "\ud83d"])
_texts = st.one_of(st.text(max_size=12), _surrogates, st.just("m" * 1_000_000))
_keys = st.one_of(st.text(max_size=10), _surrogates, st.just("k" * 500), st.integers(-5, 5))
_atoms = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**500), 10**500),
    st.booleans(), st.none(), _texts, st.binary(max_size=16),
    st.sampled_from(range(len(_OBJECTS))).map(lambda i: _OBJECTS[i]()),  # made by index: reprs of Hostile raise
)
_anything = st.recursive(_atoms, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(_keys, inner, max_size=3)), max_leaves=6)
_findings = st.builds(
    Finding,
    message=_anything,
    evidence=st.one_of(st.dictionaries(_keys, _anything, max_size=5), _anything),
    severity=st.one_of(st.none(), st.sampled_from(SEVERITIES), _anything),
    action=st.one_of(st.none(), _anything),
)
_outputs = st.one_of(st.none(), _findings, st.booleans(), _texts, _anything)
STEPS = 4


class DrawnRule(Rule):
    """A Rule subclass (no @rule coercion): ``check`` and ``on_start`` return drawn outputs as they are."""

    id = "drawn_class"
    keys = ("loss",)
    severity = "medium"

    def __init__(self, outputs: list, start_output) -> None:
        self.outputs, self.start_output = outputs, start_output

    def on_start(self, ctx):
        return self.start_output

    def check(self, ctx):
        return self.outputs[(ctx.step - 1) % len(self.outputs)]


@settings(max_examples=30, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(logs=st.lists(st.dictionaries(_keys, _anything, max_size=4), min_size=STEPS, max_size=STEPS),
       outputs=st.lists(_outputs, min_size=STEPS, max_size=STEPS),
       class_outputs=st.lists(_outputs, min_size=STEPS, max_size=STEPS), start_output=_outputs)
def test_random_rule_outputs_and_log_values_never_stop_training_or_lose_the_run_folder(
        workdir, tmp_path_factory, logs, outputs, class_outputs, start_output):
    run = tmp_path_factory.mktemp("prop") / "run"
    fn_rule = rule("drawn_fn", keys=["loss"], severity="low")(lambda ctx: outputs[(ctx.step - 1) % STEPS])
    injects = Injects(lambda step: logs[(step - 1) % STEPS])
    cb, _ = train(workdir, run, [injects], max_steps=STEPS, printer=False,
                  custom_rules=[fn_rule, DrawnRule(class_outputs, start_output)])
    rows = lines_of(run)  # every line strict JSON, valid UTF-8, under MAX_LINE bytes
    assert rows[0]["kind"] == "run_start" and rows[-1]["kind"] == "run_end" and rows[-1]["reason"] == "finished"
    assert len([r for r in rows if r["kind"] == "metrics" and r["split"] == "train"]) == STEPS
    for rid in ("drawn_fn", "drawn_class"):
        assert len(rule_errors_naming(rows, rid)) <= 2  # at most: "had to make safe", then "disabled"
    assert not [w for w in cb.monitor.warnings if "detached" in w or "writer" in w]
