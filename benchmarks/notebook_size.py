"""How much a saved notebook grows when a run is streamed into the live dashboard (target: < 500 KB beyond the
widget's own code, whatever the run length).

A synthetic DPO run (``--steps``, default 10,000; 8 metrics a step, rank stats, alerts) is replayed event by event
into a dashboard inside a notebook executed by nbclient (a real kernel; widget state stored as Jupyter does),
the notebook is saved, and its size is compared with the same notebook replaying a 100-step run and with the
notebook's bare source. Usage: ``python benchmarks/notebook_size.py [--steps 10000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptt_nb.events import Alert, Metrics, RankStats, RunEnd, RunStart  # noqa: E402
from ptt_nb.sinks._writer import RunWriter  # noqa: E402

BUNDLE = ROOT / "ptt_nb" / "static" / "widget.js"

CELLS = [
    "import time\nfrom ptt_nb.monitor._monitor import Monitor\nfrom ptt_nb.sources._reader import read_events\n"
    "from ptt_nb.notebook._widget import show\n"
    "events, _ = read_events({run!r})\nm = Monitor(evaluate=False)\ndash = show(m, replay=True)\n"
    "dash.stream.handle({{'type': 'ready'}})  # what a rendered view says first (nbclient has no front-end)",
    # replay at ~10k events/s so the flush thread streams many batches, as a live run would
    "t0 = time.perf_counter()\nfor i, e in enumerate(events):\n    m.apply(e)\n    if i % 500 == 499:\n"
    "        time.sleep(0.05)\ndash.stream.flush()\n"
    "print(len(events), 'events', dash.stream.sent_messages, 'messages', dash.stream.sent_bytes, 'buffer bytes',\n"
    "      round(time.perf_counter() - t0, 2), 's')",
]


def write_run(run_dir: Path, steps: int, world: int = 4) -> Path:
    writer = RunWriter(run_dir)
    t = time.time() - steps
    writer(RunStart(run_id=run_dir.name, trainer="DPOTrainer", algorithm="dpo", world_size=world, max_steps=steps,
                    config={"per_device_train_batch_size": 4, "learning_rate": 5e-7}, t=t))
    for s in range(1, steps + 1):
        noise = math.sin(s * 12.9898) * 0.01
        writer(Metrics(step=s, split="train", t=t + s, values={
            "loss": 0.69 * math.exp(-s / (steps / 2)) + noise, "grad_norm": 1.0 + abs(noise) * 10,
            "learning_rate": 5e-7, "rewards/chosen": s / steps + noise, "rewards/rejected": -s / steps + noise,
            "rewards/accuracies": min(1.0, 0.5 + s / steps), "rewards/margins": 2 * s / steps,
            "logps/chosen": -40 + noise, "logps/rejected": -45 - s / steps}))
        if s % 50 == 0:
            writer(RankStats(step=s, world_size=world, t=t + s, per_rank={
                "step_time_s": [0.3] * world, "compute_s": [0.1, 0.1, 0.3, 0.1][:world],
                "max_memory_gb": [10.0] * world}))
        if s % 1000 == 500:
            writer(Alert(id=f"demo@{s}", rule="demo_rule", severity="medium", step=s, t=t + s,
                         message=f"synthetic alert at step {s}", action="none", reference="-"))
    writer(RunEnd(reason="finished", step=steps, t=t + steps + 1))
    writer.close()
    return run_dir


def run_notebook(workdir: Path, steps: int) -> tuple[Path, dict]:
    import nbformat
    from nbclient import NotebookClient

    run_dir = write_run(workdir / f"run{steps}", steps)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c.format(run=str(run_dir))) for c in CELLS]
    source_path = workdir / f"source{steps}.ipynb"
    nbformat.write(nb, source_path)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    elapsed = time.perf_counter() - t0
    path = workdir / f"executed{steps}.ipynb"
    nbformat.write(nb, path)
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    # the code as it sits in the file: a JSON string (escaping included)
    esm = sum(len(json.dumps(m["state"]["_esm"]).encode()) for m in state.values() if "_esm" in m.get("state", {}))
    state_rest = sum(len(json.dumps({k: v for k, v in m.get("state", {}).items() if k != "_esm"}).encode())
                     for m in state.values())
    html = sum(len(o.get("data", {}).get("text/html", "").encode()) for c in nb.cells for o in c.get("outputs", []))
    outputs = sum(len(json.dumps(c.get("outputs", [])).encode()) for c in nb.cells)
    size, source = path.stat().st_size, source_path.stat().st_size
    printed = "".join(o.get("text", "") for o in nb.cells[1].get("outputs", []) if o.get("output_type") == "stream")
    return path, {"steps": steps, "saved_bytes": size, "source_bytes": source, "esm_bytes": esm,
                  "widget_models": len(state), "state_without_esm_bytes": state_rest, "outputs_bytes": outputs,
                  "static_html_bytes": html, "growth_beyond_code_bytes": size - source - esm,
                  "execute_s": round(elapsed, 1), "replay": printed.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the notebooks here instead of a temp dir")
    args = parser.parse_args()
    if not BUNDLE.exists():
        sys.exit(f"{BUNDLE} is missing: cd js && npm run build")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = [run_notebook(workdir, n)[1] for n in (100, args.steps)]
    for r in results:
        print(json.dumps(r))
    small, big = results
    growth_kb = big["growth_beyond_code_bytes"] / 1024
    print(f"widget code (_esm) saved once per widget model: {big['esm_bytes'] / 1024:.0f} KB")
    print(f"{big['steps']}-step replay: notebook grew {growth_kb:.1f} KB beyond the widget's code "
          f"(static summary {big['static_html_bytes'] / 1024:.1f} KB, widget state without code "
          f"{big['state_without_esm_bytes'] / 1024:.1f} KB); 100-step replay: "
          f"{small['growth_beyond_code_bytes'] / 1024:.1f} KB; target < 500 KB: "
          f"{'OK' if growth_kb < 500 else 'OVER'}")


if __name__ == "__main__":
    main()
