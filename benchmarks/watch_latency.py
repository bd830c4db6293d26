"""How late does ``ptt_nb.sources._follow.Watcher`` see an event another process writes, and what does following cost?

A child process appends Metrics events through ``RunWriter`` as the live callback sets it up (routine train lines of
a fast run written in batches of at most ``DEFER_S`` = 0.2 s, runfolder.RunWriter) every ``--every`` seconds;
the watcher here records, for each event, arrival time minus the event's own timestamp. Then the watcher polls
an idle folder for ``--idle`` seconds and we report the CPU time the whole process used meanwhile.

    python benchmarks/watch_latency.py [--events 200] [--every 0.02] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from ptt_nb.events import Metrics
from ptt_nb.sources._follow import Watcher

CHILD = textwrap.dedent("""
    import sys, time
    from ptt_nb.events import Metrics, RunStart
    from ptt_nb.sources._callback import DEFER_S
    from ptt_nb.sinks._writer import RunWriter
    run_dir, n, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    w = RunWriter(run_dir, batch_s=DEFER_S)
    w(RunStart(run_id="bench", trainer="DPOTrainer", algorithm="dpo", max_steps=n))
    values = {k: 0.5 for k in ("loss", "grad_norm", "learning_rate", "rewards/margins", "rewards/accuracies",
                               "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy")}
    for step in range(1, n + 1):
        time.sleep(every)
        w(Metrics(step=step, split="train", values=values))
    w.close()
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--every", type=float, default=0.02)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--idle", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        lags: list[float] = []
        watcher = Watcher(run_dir, interval=a.interval)
        watcher.monitor.subscribe(lambda e: lags.append(time.time() - e.t) if isinstance(e, Metrics) else None)
        watcher.start()
        subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(a.events), str(a.every)], check=True)
        deadline = time.monotonic() + 10
        while len(lags) < a.events and time.monotonic() < deadline:
            time.sleep(0.01)
        watcher.stop()
        lag = np.array(lags) * 1000
        print(f"events seen {len(lags)}/{a.events}; interval {a.interval}s; lag ms: median {np.median(lag):.0f}, "
              f"p95 {np.percentile(lag, 95):.0f}, max {lag.max():.0f}")
        idle = Watcher(run_dir, interval=a.interval).start()
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(a.idle)
        cpu = time.process_time() - c0
        idle.stop()
        print(f"idle following: {cpu * 1000:.1f} ms CPU in {time.monotonic() - t0:.1f} s "
              f"({cpu / a.idle * 100:.3f}% of one core)")


if __name__ == "__main__":
    main()
