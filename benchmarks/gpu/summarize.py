"""Summarise the recorded NCCL run folders in this directory: per-rank medians, the gather's cost, the alerts.

    python benchmarks/gpu/summarize.py > benchmarks/gpu/summary.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
DISTRIBUTED = {"straggler_rank", "memory_imbalance", "memory_growth_oom", "rank_desync", "rank_failure"}


def summarise(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    stats = [r for r in rows if r["kind"] == "rank_stats"][1:]  # the first interval is warm-up
    out: dict = {"run": run_dir.name}
    start = next((r for r in rows if r["kind"] == "run_start"), {})
    out["world_size"] = start.get("world_size")
    out["versions"] = {k: v for k, v in start.get("versions", {}).items() if k in ("torch", "transformers", "trl")}
    if stats:
        world = stats[0]["world_size"]
        out["median_per_rank"] = {
            m: [round(statistics.median(s["per_rank"][m][r] for s in stats if s["per_rank"].get(m)), 2)
                for r in range(world)]
            for m in ("compute_ms", "wait_ms", "data_ms", "step_ms", "mem_peak_mb")
            if all(s["per_rank"].get(m) for s in stats)
        }
        gathers = [min(x for x in s["per_rank"]["gather_ms"] if x is not None) for s in stats
                   if s["per_rank"].get("gather_ms")]
        steps = [s["step"] for s in stats]
        every = statistics.median(b - a for a, b in zip(steps, steps[1:], strict=False)) if len(steps) > 1 else None
        step_ms = statistics.median(statistics.median(s["per_rank"]["step_ms"]) for s in stats)
        out["every"] = every
        out["gather_ms_median"] = round(statistics.median(gathers), 3) if gathers else None
        if gathers and every:
            out["gather_cost_pct_of_step"] = round(100 * statistics.median(gathers) / every / step_ms, 4)
    out["alerts"] = [{k: a[k] for k in ("rule", "severity", "step", "message")}
                     for a in rows if a["kind"] == "alert" and a["state"] == "active" and a["rule"] in DISTRIBUTED]
    end = [r for r in rows if r["kind"] == "run_end"]
    out["run_end"] = {k: end[-1][k] for k in ("reason", "step", "detail")} if end else None
    pm = run_dir / "postmortem.json"
    if pm.exists():
        data = json.loads(pm.read_text())
        out["postmortem"] = {"exit_reason": data["exit_reason"], "detail": data["detail"],
                             "distributed": data.get("distributed")}
    return out


if __name__ == "__main__":
    runs = sorted(p for p in HERE.iterdir() if (p / "events.jsonl").exists())
    print(json.dumps([summarise(p) for p in runs], indent=2))
