"""Webhook notifications against a real HTTP server on 127.0.0.1, fed by real tiny TRL runs."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from ptt_nb import DiagnosticsCallback
from ptt_nb.events import Alert, RunEnd, RunStart
from ptt_nb.sinks._notify import Notifier, NotifyError, parse_targets
from ptt_nb.tiny import make_trainer

from .scripts.inject import Injector

SECRET = "T000SECRET/B000/xyzzy-webhook-token"


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up on a held request: the late reply meets a closed socket


class _Hook:
    """A local webhook endpoint: records every POST body; ``delay_s`` holds each request that long before the
    reply (``arrived`` / ``released`` count the held ones; ``close`` lets them go)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.arrived: list[float] = []
        self.released: list[float] = []
        self.gate = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if delay_s:
                    hook.arrived.append(time.monotonic())
                    hook.gate.wait(delay_s)
                    hook.released.append(time.monotonic())
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = SECRET) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = _Hook()
    yield h
    h.close()


class _StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.t.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.t, self.t[1:], strict=False)]


def _nan_run(tmp_path: Path, steps: int = 8, **options) -> tuple[DiagnosticsCallback, _StepClock, Path]:
    """DPO whose forward returns a NaN loss from step 3 (a real diverged run): nonfinite_values, critical."""
    run_dir = tmp_path / "run"
    callback = DiagnosticsCallback(run_dir=run_dir, widget=False, console=False, **options)
    clock = _StepClock()
    injector = Injector("nan", 3)
    trainer = make_trainer("dpo", tmp_path, callbacks=[callback, injector, clock], max_steps=steps)
    injector.attach(trainer.model)
    trainer.train()
    return callback, clock, run_dir


def _widget_state(monitor) -> str:
    """What the dashboard would send for this run: its init and data messages, as JSON text."""
    from ptt_nb.notebook._stream import Stream

    sent: list[dict] = []
    stream = Stream(monitor, lambda content, buffers: sent.append(content))
    stream.ready = True
    stream.send_init()
    stream.flush()
    stream.close()
    return json.dumps(sent, default=str)


def test_critical_alert_arrives_once_with_the_death_and_no_url_is_written(tmp_path, hook):
    urls = [hook.url(), {"url": hook.url("slack/" + SECRET), "format": "slack"}]
    callback, _, run_dir = _nan_run(tmp_path, stop_on_critical=True, notify=urls)
    hook.wait(4)
    time.sleep(0.3)  # anything extra would arrive now
    plain = [body for path, body in hook.posts if not path.startswith("/slack/")]
    slack = [body for path, body in hook.posts if path.startswith("/slack/")]
    assert [m["event"] for m in plain] == ["alert", "run_end"], plain
    alert, end = plain
    assert alert["rule"] == "nonfinite_values" and alert["severity"] == "critical" and alert["step"] == 4
    assert "NaN" in alert["evidence"].values() and alert["run_id"] == "run"
    assert end["reason"] == "nonfinite" and end["step"] == 4
    assert [set(m) for m in slack] == [{"text"}, {"text"}]
    assert "nonfinite_values at step 4" in slack[0]["text"] and "ended at step 4: nonfinite" in slack[1]["text"]
    # the secret is nowhere on disk nor in what the notebook would see
    assert (run_dir / "postmortem.json").exists()
    for path in run_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert SECRET not in text and f"127.0.0.1:{hook.port}" not in text, path
    state = _widget_state(callback.monitor)
    assert "nonfinite_values" in state and SECRET not in state and "127.0.0.1" not in state
    assert SECRET not in repr(callback._notify_targets)


def test_dead_endpoint_warns_once_and_training_completes(tmp_path, caplog):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="ptt_nb")
    callback, clock, run_dir = _nan_run(tmp_path, notify=f"http://127.0.0.1:{port}/{SECRET}")
    assert callback.monitor.end_event.reason == "finished" and len(clock.t) == 8
    notifier = callback._notifier
    assert notifier.flush(5.0)
    assert notifier.failed == 2 and notifier.sent == 0  # the alert and the end, each tried and given up
    warnings = [r.getMessage() for r in caplog.records if "notification endpoint" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionRefused" in warnings[0] and SECRET not in warnings[0]


def test_slow_endpoint_does_not_slow_steps(tmp_path):
    slow = _Hook(delay_s=5.0)
    try:
        _, bare, _ = _nan_run(tmp_path / "bare")
        callback, timed, _ = _nan_run(tmp_path / "slow", notify=slow.url())
        with_slow, without = timed.durations(), bare.durations()
        print(f"step s: median {statistics.median(without):.3f} without notify, "
              f"{statistics.median(with_slow):.3f} with a 5 s endpoint; max {max(with_slow):.3f}")
        assert max(with_slow) < 2.0  # a blocking post would hold one step for 5 s
        assert statistics.median(with_slow) < 3 * statistics.median(without) + 0.05
    finally:
        slow.close()


HANG_S = 10.0  # twice the notifier's timeout: every attempt of every message hangs until it gives up


def _notify_warnings(text: str) -> int:
    return text.count("notification endpoint")


def test_hanging_endpoint_holds_neither_the_steps_nor_the_end_of_train(tmp_path, caplog):
    """The alert at step 4 goes to an endpoint that holds every request 10 s: the later steps run while that
    request is held, and train() (its end waits a bounded ``FLUSH_S`` for the queue) returns before the server has
    let the first request go. Timing is a ratio to the same run without notify."""
    hang = _Hook(delay_s=HANG_S)
    caplog.set_level(logging.WARNING, logger="ptt_nb")
    try:
        _, bare, _ = _nan_run(tmp_path / "bare", steps=12)
        callback, timed, _ = _nan_run(tmp_path / "hang", steps=12, notify=hang.url())
        arrived, released = len(hang.arrived), len(hang.released)
        notifier = callback._notifier
        still_busy = not notifier.flush(0.05)
        after_alert, bare_after = timed.durations()[4:], bare.durations()[4:]
        print(f"steps after the alert, median s: {statistics.median(bare_after):.3f} without notify, "
              f"{statistics.median(after_alert):.3f} with the request held; held {arrived}, released {released}")
        assert arrived >= 1 and released == 0  # the alert's request reached the server and is still held
        assert len(timed.t) == 12 and callback.monitor.end_event.reason == "finished"
        assert still_busy and notifier.sent == 0  # the worker is still stuck on that post
        assert statistics.median(after_alert) < 3 * statistics.median(bare_after) + 0.05
        assert _notify_warnings(caplog.text) <= 1
    finally:
        hang.close()


def test_a_script_exits_while_the_endpoint_still_holds_its_first_request(tmp_path):
    """The daemon worker stuck in a 10 s request (and its retries) must not keep a training script alive: the
    process ends, at most one warning printed, before the server releases the first request."""
    hang = _Hook(delay_s=HANG_S)
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "import torch; torch.set_num_threads(1)\n"
        "from ptt_nb import DiagnosticsCallback\nfrom ptt_nb.tiny import make_trainer\n"
        "from tests.scripts.inject import Injector\n"
        f"cb = DiagnosticsCallback(run_dir={str(tmp_path / 'run')!r}, widget=False, console=False, "
        f"notify={hang.url()!r})\n"
        "inj = Injector('nan', 3)\n"
        f"trainer = make_trainer('dpo', {str(tmp_path / 'work')!r}, callbacks=[cb, inj], max_steps=8)\n"
        "inj.attach(trainer.model)\ntrainer.train()\nprint('trained', cb.monitor.step, flush=True)\n")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=stdout, stderr=stderr,
                                env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    try:
        released_at_exit = None
        while not hang.released:  # whichever comes first: the script's exit or the first release
            if proc.poll() is not None:
                released_at_exit = len(hang.released)
                break
            time.sleep(0.02)
        assert released_at_exit == 0, "the script was still running when the server released its first request"
        assert proc.returncode == 0 and "trained 8" in out.read_text(), err.read_text()[-2000:]
        assert len(hang.arrived) >= 1  # the alert's request did reach the server (and was held)
        assert _notify_warnings(err.read_text()) <= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hang.close()


def _alert(rule: str, step: int, severity: str = "critical", state: str = "active") -> Alert:
    return Alert(id=f"{rule}@{step}", rule=rule, severity=severity, step=step, message=f"{rule} holds",
                 state=state, resolved_step=step if state == "resolved" else None)


def test_dedup_escalation_rate_limit_and_severity(hook):
    notifier = Notifier(parse_targets(hook.url()), severity="high", rate_s=60.0, max_per_minute=3)
    notifier(RunStart(run_id="r1", trainer="DPOTrainer", algorithm="dpo"))
    notifier(_alert("a", 1, "medium"))  # below the threshold: nothing
    notifier(_alert("b", 2, "high"))  # opens: sent
    notifier(_alert("b", 2, "high", "resolved"))
    notifier(_alert("b", 5, "high"))  # a new episode within rate_s of the last: rate-limited
    notifier(_alert("b", 5, "high", "resolved"))
    notifier(_alert("c", 6, "high"))  # sent
    notifier(_alert("c", 7, "high", "resolved"))  # escalation: close + reopen at one step
    notifier(_alert("c", 7, "critical"))
    notifier(_alert("c", 7, "critical", "resolved"))
    notifier(_alert("d", 8, "critical"))  # the fourth message within a minute: over max_per_minute
    notifier(RunEnd(reason="finished", step=9))
    assert notifier.flush(5.0)
    events = [(b["event"], b.get("rule"), b.get("severity")) for _, b in hook.posts]
    assert events == [("alert", "b", "high"), ("alert", "c", "high"), ("alert_escalated", "c", "critical"),
                      ("run_end", None, None)]
    assert notifier.suppressed == 2


def test_full_queue_drops_the_oldest_and_counts(monkeypatch):
    from ptt_nb.sinks import _notify

    monkeypatch.setattr(_notify, "QUEUE_MAX", 3)
    gate = threading.Event()
    notifier = Notifier([], rate_s=0.0, max_per_minute=1000)
    notifier._busy = True
    monkeypatch.setattr(notifier, "_worker", gate.wait)  # a worker stuck on a hung endpoint
    for i in range(6):
        notifier(_alert(f"r{i}", i))
    assert notifier.dropped == 3 and [m["rule"] for m in notifier._queue] == ["r3", "r4", "r5"]
    gate.set()


@pytest.mark.parametrize(("notify", "match"), [
    ("ftp://example.com/x", r"notify\[0\]: the URL must be http"),
    ({"url": "https://example.com/x", "format": "xml"}, r"notify\[0\]: format 'xml'"),
    ([{"url": "https://example.com/x", "fmt": "json"}], r"notify\[0\]: unknown key\(s\) fmt"),
    ([42], r"notify\[0\]: expected a URL string"),
])
def test_bad_notify_specs_say_what_is_wrong(notify, match):
    with pytest.raises(NotifyError, match=match):
        DiagnosticsCallback(notify=notify)


def test_slack_host_picks_slack_format_and_severity_is_checked():
    (target,) = parse_targets("https://hooks.slack.com/services/T/B/secret")
    assert target.format == "slack" and "secret" not in repr(target)
    with pytest.raises(NotifyError, match="notify_severity 'urgent'"):
        DiagnosticsCallback(notify="https://example.com/x", notify_severity="urgent")
