"""``ptt-nb diagnose PATH…``: any run ``load_run`` reads (a ptt_nb run folder, or one recorded by another tool)
through the rules, as an alert table, ``--json`` or an HTML report; the exit status says whether a critical
alert fired, so a CI job can gate on it.

Exit status: 0 no critical alert; 1 a critical alert fired in at least one run; 2 a path could not be read
(the others are still diagnosed; 2 wins over 1).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

from ptt_nb.events import SEVERITY_RANK, Alert, json_safe
from ptt_nb.monitor._monitor import Monitor

EXIT_OK, EXIT_CRITICAL, EXIT_UNREADABLE = 0, 1, 2


def load_all(path: str, *, format: str | None = None, algorithm: str | None = None,
             run: str | None = None) -> list[Monitor]:
    """The runs a path names: one, or every run of a trackio project database (unless ``run`` picks one)."""
    from ptt_nb.sources._reader import load_run

    opts: dict[str, Any] = {"run": run} if run else {}
    if run is None and format in (None, "trackio"):
        from ptt_nb.sources import _import, _import_trackio

        p = Path(path).expanduser()
        if (format == "trackio" or _import.detect_format(p) == "trackio") and p.is_file():
            return [load_run(p, format="trackio", algorithm=algorithm, run=name)
                    for name in _import_trackio.run_names(p)]
    return [load_run(path, format=format, algorithm=algorithm, evaluate=True, **opts)]  # ptt_nb runs: re-evaluated


def episodes(monitor: Monitor) -> list[Alert]:
    """Alert episodes, most severe first, then by first step."""
    return sorted(monitor.alerts, key=lambda a: (SEVERITY_RANK.get(a.severity, 9), a.step, a.rule))


def run_record(path: str, monitor: Monitor) -> dict[str, Any]:
    run = monitor.run
    assert run is not None
    alerts = [{"rule": a.rule, "severity": str(a.severity), "first_step": a.step, "resolved_step": a.resolved_step,
               "state": a.state, "message": a.message, "evidence": a.evidence, "action": a.action,
               "reference": a.reference, "url": a.url} for a in episodes(monitor)]
    return {"path": path, "format": run.config.get("imported_from", "ptt_nb"), "run_id": run.run_id,
            "trainer": run.trainer, "algorithm": run.algorithm, "last_step": monitor.step,
            "end": monitor.end_event.reason if monitor.end_event else None, "notes": list(monitor.warnings),
            "alerts": alerts, "critical": any(a["severity"] == "critical" for a in alerts)}


def _evidence(evidence: dict[str, Any], limit: int = 4) -> str:
    from ptt_nb.sinks._text_summary import fmt

    return ", ".join(f"{k}={fmt(v)}" for k, v in list(evidence.items())[:limit])


def print_table(record: dict[str, Any], out: TextIO, width: int = 100) -> None:
    """One run: a header line, its notes, then one block per episode (first step, severity, rule, evidence,
    message, action, reference)."""
    print(f"{record['path']}  ({record['format']} · {record['algorithm']} · {record['trainer']} · "
          f"{record['last_step']} steps · end: {record['end']})", file=out)
    for note in record["notes"]:
        print(f"  note: {note}", file=out)
    alerts = record["alerts"]
    if not alerts:
        print("  no alert", file=out)
        return
    rule_w = max(len(a["rule"]) for a in alerts)
    print(f"  {'STEP':>7}  {'SEVERITY':<8}  {'RULE':<{rule_w}}  EVIDENCE", file=out)
    wrap = dict(width=width, subsequent_indent=" " * 6)
    for a in alerts:
        span = f"{a['first_step']}" + (f"→{a['resolved_step']}" if a["resolved_step"] is not None else "")
        print(f"  {span:>7}  {a['severity']:<8}  {a['rule']:<{rule_w}}  {_evidence(a['evidence'])}", file=out)
        print(textwrap.fill(a["message"], initial_indent="      ", **wrap), file=out)
        if a["action"]:
            print(textwrap.fill(a["action"], initial_indent="      → ", **wrap), file=out)
        ref = (a["reference"] or "") + (f" <{a['url']}>" if a["url"] else "")
        if ref.strip():
            print(textwrap.fill(ref, initial_indent="      ref: ", **wrap), file=out)
    counts = {s: sum(a["severity"] == s for a in alerts) for s in SEVERITY_RANK}
    print("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), file=out)


def _report_path(base: str, index: int, total: int, run_id: str) -> Path:
    p = Path(base)
    return p if total == 1 else p.with_name(f"{p.stem}-{index + 1}-{run_id}{p.suffix or '.html'}")


def diagnose(paths: list[str], *, as_json: bool = False, report: str | None = None, format: str | None = None,
             algorithm: str | None = None, run: str | None = None, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """The command's body; returns the exit status (module docstring)."""
    out = out or sys.stdout
    err = err or sys.stderr
    records: list[dict[str, Any]] = []
    monitors: list[Monitor] = []
    failed = False
    for path in paths:
        try:
            found = load_all(path, format=format, algorithm=algorithm, run=run)
        except (OSError, ValueError) as exc:  # unreadable, unknown format, bad option: one line, go on
            print(f"ptt-nb: error: {exc}", file=err)
            failed = True
            continue
        for monitor in found:
            if monitor.run is None:
                print(f"ptt-nb: error: {path}: no run_start event (empty, truncated or not written by ptt_nb)",
                      file=err)
                failed = True
                continue
            records.append(run_record(path, monitor))
            monitors.append(monitor)
    if report and monitors:
        try:
            from ptt_nb.sinks._report import write_report
        except ImportError as exc:
            print(f"ptt-nb: error: the HTML report needs bokeh ({exc}); pip install 'ptt-nb[report]'", file=err)
            failed = True
        else:
            for i, (monitor, record) in enumerate(zip(monitors, records, strict=True)):
                record["report"] = str(write_report(monitor, _report_path(report, i, len(monitors),
                                                                          record["run_id"])))
    critical = any(r["critical"] for r in records)
    code = EXIT_UNREADABLE if failed else EXIT_CRITICAL if critical else EXIT_OK
    if as_json:
        print(json.dumps(json_safe({"runs": records, "exit_status": code}, keep_nonfinite=True), indent=1), file=out)
        return code
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    for record in records:
        print_table(record, out, width)
        if "report" in record:
            print(f"  report: {record['report']}", file=out)
    if records:
        print(f"{sum(r['critical'] for r in records)} of {len(records)} runs with a critical alert "
              f"(exit {code})", file=out)
    return code


def add_parser(sub: Any) -> None:
    """``ptt-nb diagnose``'s arguments (cli.py wires it)."""
    from ptt_nb.sources._import import FORMATS

    p = sub.add_parser("diagnose", help="run the heuristics over runs recorded by ptt_nb or other tools "
                       "(trainer_state.json, TensorBoard, trackio, W&B, CSV/JSONL); exit 1 on a critical alert")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--report", metavar="FILE.html", help="also write the HTML report (one file per run)")
    p.add_argument("--format", choices=("ptt_nb", *FORMATS), help="force a reader (default: detected)")
    p.add_argument("--algorithm", help="the trainer's algorithm when it cannot be told (dpo, grpo, sft, ...)")
    p.add_argument("--run", help="one run of a trackio project (default: every run)")
    p.set_defaults(func=lambda a: diagnose(a.paths, as_json=a.json, report=a.report, format=a.format,
                                           algorithm=a.algorithm, run=a.run))
