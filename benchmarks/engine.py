"""Cost of ptt_nb's per-step path with the full built-in heuristics catalog.

1. The whole callback per training step (``DiagnosticsCallback.on_step_end`` + ``on_log``: capture, metric
   history, every built-in rule, writing the ``events.jsonl`` line) replaying real TRL logs recorded in
   ``tests/data/healthy_{dpo,grpo}.jsonl`` (DPO ~15 keys a step, GRPO ~25), looped to a long run.
2. The median cost of each rule's check on those streams.
3. The engine alone (``Monitor.log`` with all rules, no sinks) on a 20-metric stream, after pre-filling the
   history with 1k, 100k and 1M points per key: the cost per log point must not grow with history length.

The recorded runs are short, so they are played forward then backward repeatedly (no jump back to step 1).

    python benchmarks/engine.py [--steps N] [--quick]
Budget (issue 3): mean <= 20 us and p99 <= 200 us per step (the verdict reads wall time; the thread-CPU-time
columns include ~0.5 µs for reading that clock and show what preemption on a shared machine adds to wall time).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptt_nb.events import RunStart  # noqa: E402
from ptt_nb.monitor._monitor import Monitor  # noqa: E402
from ptt_nb.rules._builtin import default_rules  # noqa: E402

DATA = ROOT / "tests" / "data"


def recorded(name: str) -> tuple[dict, list[dict[str, float]]]:
    """The first run of a recording: its config and its train log dicts."""
    config: dict = {}
    logs: list[dict[str, float]] = []
    for raw in (DATA / f"{name}.jsonl").read_text().splitlines():
        data = json.loads(raw)
        if data["kind"] == "run_start":
            if config:
                break
            config = data
        elif data["kind"] == "metrics" and data["split"] == "train":
            logs.append({k: float(v) for k, v in data["values"].items()})
    return config, logs


def pingpong(logs: list[dict[str, float]], i: int) -> dict[str, float]:
    """The recorded run played forward then backward, again and again: a long stream with the run's real values
    and noise but no jump back to step 1 (a sawtooth would be a spike every cycle)."""
    n = len(logs)
    k = i % (2 * n - 2)
    return logs[k if k < n else 2 * n - 2 - k]


def stats(samples_ns: list[int]) -> tuple[float, float, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return statistics.fmean(us), us[int(0.99 * (len(us) - 1))], us[len(us) // 2]


def bench_callback(name: str, steps: int, exclude: list[str] | None = None) -> tuple[float, ...]:
    """Wall mean/p99/median µs of on_step_end + on_log on real logs, the number of rules, and the thread-CPU-time
    mean/p99 (on a loaded machine wall time also counts preemption by other processes; CPU time does not)."""
    from ptt_nb import DiagnosticsCallback

    header, logs = recorded(name)
    config = header["config"]
    Args = type(config["config_class"], (), dict(config, output_dir=tempfile.gettempdir(), report_to=[]))
    with tempfile.TemporaryDirectory() as tmp:
        cb = DiagnosticsCallback(run_dir=Path(tmp) / "run", widget=False, console=False, exclude_rules=exclude)
        state = SimpleNamespace(global_step=0, max_steps=steps, is_world_process_zero=True)
        control = SimpleNamespace(should_training_stop=False)
        args = Args()
        cb.on_train_begin(args, state, control)
        n_rules = len(cb.monitor.engine.states)
        samples: list[int] = []
        cpu: list[int] = []
        clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
        gc.collect()
        for i in range(steps):
            logs_i = dict(pingpong(logs, i))  # TRL builds a new dict each step
            state.global_step = i + 1
            c0 = cpu_clock()
            t0 = clock()
            cb.on_step_end(args, state, control)
            cb.on_log(args, state, control, logs=logs_i)
            samples.append(clock() - t0)
            cpu.append(cpu_clock() - c0)
        cb._finish("finished")
    cpu_mean, cpu_p99, _ = stats(cpu)
    return (*stats(samples), n_rules, cpu_mean, cpu_p99)


def stream20() -> tuple[str, list[str]]:
    """20 GRPO keys (real names): the stream of the engine-only benchmark."""
    _, logs = recorded("healthy_grpo")
    keys = [k for k in logs[0] if k not in ("epoch", "num_tokens", "step_time", "clip_ratio/low_min",
                                             "clip_ratio/high_max")][:20]
    return "grpo", keys


def bench_history(prefill: int, steps: int) -> tuple[float, float, float]:
    algorithm, keys = stream20()
    _, logs = recorded("healthy_grpo")
    mon = Monitor()
    max_steps = prefill + steps + 10
    mon.start(RunStart(run_id="bench", trainer="GRPOTrainer", algorithm=algorithm,
                       config={"learning_rate": 1e-4, "max_grad_norm": 1.0, "warmup_steps": 0},
                       max_steps=max_steps))
    # pre-fill: every key's series gets `prefill` points through Series.append (the cap/compaction applies)
    hist = mon.history
    t0 = time.time()
    for key in keys:
        hist.add(0, "train", {key: 0.0})
        series = hist.get(key)
        vals = [logs[j % len(logs)][key] for j in range(len(logs))]
        append = series.append
        for s in range(1, prefill):
            append(s, vals[s % len(vals)])
    prefill_s = time.time() - t0
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(steps):
        src = pingpong(logs, i)
        values = {k: src[k] for k in keys}
        step = prefill + i
        t0 = clock()
        mon.log(step, values)
        samples.append(clock() - t0)
    del prefill_s
    return stats(samples)


def rule_costs(name: str, steps: int = 5000) -> list[tuple[str, float]]:
    """Median ns of each rule's check on a recorded stream (timer overhead ~50 ns included)."""
    header, logs = recorded(name)
    mon = Monitor()
    mon.start(RunStart(run_id="bench", trainer="T", algorithm=header["algorithm"], config=header["config"],
                       max_steps=steps))
    engine, ctx, clock = mon.engine, mon.ctx, time.perf_counter_ns
    cost: dict[str, list[int]] = {}
    done: set[str] = set()
    for i in range(steps):
        values = dict(pingpong(logs, i))
        mon.history.add(i + 1, "train", values)
        ctx.step, ctx.split, ctx.values = i + 1, "train", values
        plan = engine._plans.get(("train", tuple(values))) or engine._plan("train", values)
        engine._plans[("train", tuple(values))] = plan
        for state, check in plan:
            if state.rule.id in done:
                continue
            t0 = clock()
            finding = check(ctx)
            cost.setdefault(state.rule.id, []).append(clock() - t0)
            if finding is not None and state.rule.once:
                done.add(state.rule.id)  # the engine stops checking a `once` rule after it fires
    # `once` rules that fired early (3 calls) are left out: the engine no longer checks them
    return sorted(((rid, sorted(xs)[len(xs) // 2] / 1000) for rid, xs in cost.items() if len(xs) >= 100),
                  key=lambda t: -t[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="skip the 1M-point pre-fill")
    opts = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, load {load:.1f}; "
          f"{len(default_rules())} built-in rules")
    print(f"\n1. whole callback per step (on_step_end + on_log + all rules + events.jsonl line), {opts.steps} steps")
    print(f"{'stream':<28}{'rules':>6}{'mean µs':>10}{'p99 µs':>10}{'median µs':>11}{'cpu mean':>10}{'cpu p99':>9}")
    for name in ("healthy_dpo", "healthy_grpo"):
        _, logs = recorded(name)
        for exclude in (["*"], None):
            mean, p99, med, n_rules, cmean, cp99 = bench_callback(name, opts.steps, exclude)
            label = f"{name[8:]} ({len(logs[0])} keys){', no rules' if exclude else ''}"
            verdict = "" if exclude else ("  within budget" if mean <= 20 and p99 <= 200 else "  OVER budget")
            print(f"{label:<28}{n_rules:>6}{mean:>10.1f}{p99:>10.1f}{med:>11.1f}{cmean:>10.1f}{cp99:>9.1f}{verdict}")
    print("\n2. per-rule check cost (median µs, incl. ~0.05 µs timer overhead)")
    for name in ("healthy_dpo", "healthy_grpo"):
        costs = rule_costs(name)
        print(f"{name[8:]}: total {sum(c for _, c in costs):.1f} µs: "
              + ", ".join(f"{rid} {c:.2f}" for rid, c in costs))
    print("\n3. Monitor.log with every rule (no sinks), 20-metric GRPO stream, history pre-filled per key")
    print(f"{'pre-filled points':<28}{'mean µs':>16}{'p99 µs':>10}{'median µs':>11}")
    sizes = [1_000, 100_000] + ([] if opts.quick else [1_000_000])
    for n in sizes:
        mean, p99, med = bench_history(n, min(opts.steps, 10_000))
        print(f"{n:<28,}{mean:>16.1f}{p99:>10.1f}{med:>11.1f}")


if __name__ == "__main__":
    main()
