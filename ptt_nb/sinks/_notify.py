"""Webhook notifications (Slack-compatible or plain JSON) for serious alerts and for the run's end or death.

Why a thread and a bounded queue: a webhook can hang, refuse or be slow, and none of that may cost a training
step. The Monitor calls this sink on the training thread; the sink only appends to a deque (drop-oldest, with
a count) and a daemon thread posts with a timeout and a few retries. A dead endpoint is warned about once.

Why per-episode dedup and a rate limit: the engine reports an episode when it opens and when it resolves; a
flapping rule could still open many episodes. A rule notifies on open (and, optionally, when it escalates in
the same step), at most once per ``rate_s`` seconds per rule, and at most ``max_per_minute`` messages in all.

URLs are secrets (a Slack webhook URL is a bearer credential): they live only in ``Target`` objects, whose
``repr`` and every warning show the scheme and host alone; nothing here writes to the run folder.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ptt_nb.events import SEVERITIES, SEVERITY_RANK, Alert, Event, Metrics, RunEnd, RunStart, json_safe

log = logging.getLogger("ptt_nb")

FORMATS = ("slack", "json")
QUEUE_MAX = 100  # pending messages kept; older ones are dropped (and counted) past this
TIMEOUT_S = 5.0
RETRIES = 2  # after the first attempt
BACKOFF_S = 0.5
FLUSH_S = 3.0  # the most the run's end waits for its last message to go out


class NotifyError(ValueError):
    """A ``notify=`` entry that cannot be used, with which one and why (the URL itself is never shown)."""


@dataclass(frozen=True)
class Target:
    url: str = field(repr=False)
    format: str = "json"

    @property
    def label(self) -> str:
        """What a message may show of the endpoint: scheme and host, never the path or query (the secret)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/…"

    def __repr__(self) -> str:
        return f"Target({self.label}, format={self.format!r})"


def parse_targets(notify: Any) -> list[Target]:
    """``notify=`` as given: a URL, a ``{"url": ..., "format": "slack"|"json"}`` spec, or a list of them.
    A URL on hooks.slack.com is Slack's format; any other URL gets plain JSON unless the spec says."""
    if notify is None:
        return []
    items = [notify] if isinstance(notify, (str, dict)) else list(notify)
    out: list[Target] = []
    for i, item in enumerate(items):
        where = f"notify[{i}]"
        if isinstance(item, str):
            url, fmt = item, None
        elif isinstance(item, dict):
            unknown = set(item) - {"url", "format"}
            if unknown:
                raise NotifyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a spec has 'url' and "
                                  "optionally 'format'")
            url, fmt = item.get("url"), item.get("format")
        else:
            raise NotifyError(f"{where}: expected a URL string or a {{'url': ..., 'format': ...}} dict, got "
                              f"{type(item).__name__}")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise NotifyError(f"{where}: the URL must be http(s)://host/...; got a {type(url).__name__} that is not")
        if fmt is None:
            fmt = "slack" if urlsplit(url).hostname == "hooks.slack.com" else "json"
        if fmt not in FORMATS:
            raise NotifyError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        out.append(Target(url, fmt))
    return out


def _check_severity(severity: str) -> str:
    if severity not in SEVERITY_RANK:
        raise NotifyError(f"notify_severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    return severity


class Notifier:
    """A Monitor sink (``monitor.subscribe(notifier)``) that posts to webhooks from a daemon thread."""

    def __init__(self, targets: Iterable[Target], *, severity: str = "high", escalation: bool = True,
                 rate_s: float = 60.0, max_per_minute: int = 20, trackio: Any = None,
                 timeout_s: float = TIMEOUT_S, retries: int = RETRIES) -> None:
        self.targets = list(targets)
        self.threshold = SEVERITY_RANK[_check_severity(severity)]
        self.escalation = escalation
        self.rate_s = rate_s
        self.max_per_minute = max_per_minute
        self.trackio = trackio  # the trackio module (has alert()), when report_to names it
        self.timeout_s, self.retries = timeout_s, retries
        self.run_id = ""
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.suppressed = 0  # dedup / rate limit
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._warned: set[int] = set()
        self._open: dict[str, tuple[str, int]] = {}  # rule -> (severity notified, step opened)
        self._resolved_at: dict[str, int] = {}
        self._last_sent: dict[str, float] = {}
        self._recent: collections.deque[float] = collections.deque()
        self._ended = False

    # -- the sink (training thread: O(1), never blocks) ------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if type(event) is Metrics:  # every log point passes here: leave at once
            return
        if isinstance(event, Alert):
            self._on_alert(event)
        elif isinstance(event, RunEnd):
            self._on_end(event)
        elif isinstance(event, RunStart):
            self.run_id = event.run_id

    def _on_alert(self, alert: Alert) -> None:
        if alert.state == "resolved":
            if self._open.pop(alert.rule, None) is not None:
                self._resolved_at[alert.rule] = alert.step if alert.resolved_step is None else alert.resolved_step
            return
        if SEVERITY_RANK.get(alert.severity, 99) > self.threshold:
            return
        escalated = self._resolved_at.get(alert.rule) == alert.step  # the engine escalates by close + reopen
        if alert.rule in self._open or (escalated and not self.escalation):
            self.suppressed += 1
            return
        now = time.monotonic()
        if not escalated and now - self._last_sent.get(alert.rule, -1e18) < self.rate_s:
            self.suppressed += 1
            self._open[alert.rule] = (alert.severity, alert.step)
            return
        recent = self._recent
        while recent and now - recent[0] > 60.0:
            recent.popleft()
        if len(recent) >= self.max_per_minute:
            self.suppressed += 1
            return
        recent.append(now)
        self._open[alert.rule] = (alert.severity, alert.step)
        self._last_sent[alert.rule] = now
        self._enqueue({"event": "alert_escalated" if escalated else "alert", "run_id": self.run_id,
                       "rule": alert.rule, "severity": alert.severity, "step": alert.step,
                       "message": alert.message, "evidence": alert.evidence, "action": alert.action,
                       "reference": alert.reference, "url": alert.url})

    def _on_end(self, end: RunEnd) -> None:
        if self._ended:
            return
        self._ended = True
        self._enqueue({"event": "run_end", "run_id": self.run_id, "reason": end.reason, "step": end.step,
                       "detail": end.detail})

    def _enqueue(self, message: dict[str, Any]) -> None:
        with self._cv:
            if len(self._queue) >= QUEUE_MAX:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="ptt_nb-notify", daemon=True)
                self._thread.start()
            self._cv.notify()

    def flush(self, timeout_s: float = FLUSH_S) -> bool:
        """Wait (at most ``timeout_s``) for the queue to empty: the run's end calls it so that a script's last
        message leaves before the interpreter exits. True when everything went out (or failed for good)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cv.wait(left)
        return True

    # -- the worker (daemon thread) ------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait()
                message = self._queue.popleft()
                self._busy = True
            for i, target in enumerate(self.targets):
                self._post(i, target, message)
            if self.trackio is not None and message["event"] != "run_end":
                self._trackio(message)

    def _post(self, i: int, target: Target, message: dict[str, Any]) -> None:
        body = json.dumps(json_safe(slack_payload(message) if target.format == "slack" else message,
                                     keep_nonfinite=True)).encode()
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            request = urllib.request.Request(target.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
                    response.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break  # a bad request or a revoked hook: retrying will not help
            except Exception as exc:  # noqa: BLE001 - refused, timed out, DNS: all mean "not delivered"
                error = type(exc).__name__
                reason = getattr(exc, "reason", None)
                if reason is not None:
                    error += f" ({type(reason).__name__})"
        self.failed += 1
        if i not in self._warned:
            self._warned.add(i)
            log.warning("ptt_nb: notification endpoint %s (%s) failed: %s; training goes on, later messages "
                        "are still tried, and this is the only warning", target.label, target.format, error)

    def _trackio(self, message: dict[str, Any]) -> None:
        try:
            levels = getattr(self.trackio, "AlertLevel", None)
            level = None
            if levels is not None:
                level = levels.ERROR if message["severity"] == "critical" else levels.WARN
            kwargs = {"level": level} if level is not None else {}
            self.trackio.alert(title=f"ptt_nb {message['severity']}: {message['rule']}",
                               text=_alert_text(message), **kwargs)
        except Exception as exc:  # noqa: BLE001 - the tracker must never break training
            if -1 not in self._warned:
                self._warned.add(-1)
                log.warning("ptt_nb: trackio.alert() failed (%s: %s); alerts still go to the webhooks",
                            type(exc).__name__, exc)


def _alert_text(m: dict[str, Any]) -> str:
    evidence = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in (m.get("evidence") or {}).items())
    text = f"[{m['severity']}] {m['rule']} at step {m['step']}: {m['message']}"
    if evidence:
        text += f"\nEvidence: {evidence}"
    if m.get("action"):
        text += f"\nAction: {m['action']}"
    return text


def slack_payload(m: dict[str, Any]) -> dict[str, str]:
    """Slack's incoming-webhook body: one ``text`` field (also what Mattermost and many bridges accept)."""
    run = f"ptt_nb run {m.get('run_id') or '?'}"
    if m["event"] == "run_end":
        text = f"{run} ended at step {m['step']}: {m['reason']}"
        if m.get("detail"):
            text += f" ({m['detail']})"
    else:
        text = f"{run}: {'escalated ' if m['event'] == 'alert_escalated' else ''}{_alert_text(m)}"
    return {"text": text}


def trackio_module(report_to: Any) -> Any:
    """trackio, when ``TrainingArguments.report_to`` names it and the installed version has ``alert()``."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "trackio" not in names and "all" not in names:
        return None
    try:
        import trackio
    except ImportError:
        return None
    return trackio if callable(getattr(trackio, "alert", None)) else None
