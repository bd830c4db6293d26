"""Re-record ``tests/data/recorded_run``: a real tiny DPO run (TRL, CPU) that crashes at step 24 of 30.

It gives the magics/watch tests a run folder with ``events.jsonl`` and a ``postmortem.json`` (traceback included),
as a user would find after a crash. Floats are rounded to 6 significant digits to keep the file small.

    python tests/data/recorded_run/record.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
CRASH_AT = 24


def _round(obj):
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def main() -> None:
    from transformers import TrainerCallback

    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == CRASH_AT:
                raise RuntimeError(f"simulated crash at step {CRASH_AT} (recorded fixture)")

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cb = DiagnosticsCallback(run_dir=run_dir, console=False, widget=False)
        trainer = make_trainer("dpo", tmp, callbacks=[cb, Crash()], max_steps=30, seed=0, n_rows=200,
                               learning_rate=3e-4)
        try:
            trainer.train()
        except RuntimeError as exc:
            print("crashed as planned:", exc)
        lines = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
        for line in lines:
            if line.get("kind") == "run_start":
                line["config"]["output_dir"] = "out"
        with open(HERE / "events.jsonl", "w") as f:
            for line in lines:
                f.write(json.dumps(_round(line), separators=(",", ":")) + "\n")
        pm = json.loads((run_dir / "postmortem.json").read_text())
        pm["environment"] = {k: pm["environment"][k] for k in ("python", "versions", "rank", "world_size")}
        pm["config"]["output_dir"] = "out"
        (HERE / "postmortem.json").write_text(json.dumps(_round(pm), indent=2) + "\n")
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
