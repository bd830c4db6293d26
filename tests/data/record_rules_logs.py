"""Re-record the real TRL logs that the heuristics tests replay (``tests/data/healthy_<algo>.jsonl`` etc.).

Each output file holds one or more runs in ``events.jsonl`` format (written by ``DiagnosticsCallback``), one
after the other, each starting with its ``run_start`` line. Recorded alerts are dropped (tests re-run the
rules) and floats are rounded to 5 significant digits to keep the files small.

    python tests/data/record_rules_logs.py [name ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent

# name -> list of (algorithm, make_trainer kwargs). Healthy: a few seeds and learning rates normal for the tiny
# 2-layer hidden-32 model (design.md: it needs ~10x the 7B recipes' learning rates to learn in 100 steps).
RECORDINGS: dict[str, list[tuple[str, dict]]] = {
    "healthy_sft": [("sft", dict(seed=0, learning_rate=1e-3, max_steps=70, n_rows=400)),
                    ("sft", dict(seed=1, learning_rate=1e-4, max_steps=35, n_rows=400, warmup_steps=4))],
    "healthy_dpo": [("dpo", dict(seed=0, learning_rate=1e-4, max_steps=65, n_rows=400)),
                    ("dpo", dict(seed=1, learning_rate=1e-5, max_steps=55, n_rows=400, warmup_steps=5))],
    "healthy_kto": [("kto", dict(seed=0, learning_rate=1e-4, max_steps=55, n_rows=400)),
                    ("kto", dict(seed=1, learning_rate=2e-5, max_steps=25, n_rows=400))],
    "healthy_orpo": [("orpo", dict(seed=0, learning_rate=1e-4, max_steps=55, n_rows=400)),
                     ("orpo", dict(seed=1, learning_rate=3e-4, max_steps=25, n_rows=400))],
    "healthy_cpo": [("cpo", dict(seed=0, learning_rate=1e-4, max_steps=50, n_rows=400)),
                    ("cpo", dict(seed=1, learning_rate=1e-5, max_steps=25, n_rows=400, loss_type="simpo",
                                 cpo_alpha=0.0))],
    "healthy_grpo": [("grpo", dict(seed=0, learning_rate=1e-4, max_steps=35, max_completion_length=16)),
                     ("grpo", dict(seed=1, learning_rate=3e-5, max_steps=20, beta=0.04, max_completion_length=16))],
    "healthy_rloo": [("rloo", dict(seed=0, learning_rate=1e-4, max_steps=30, max_completion_length=16))],
    "healthy_online_dpo": [("online_dpo", dict(seed=0, learning_rate=1e-4, max_steps=30))],
    "healthy_reward": [("reward", dict(seed=0, learning_rate=1e-4, max_steps=45, n_rows=400)),
                       ("reward", dict(seed=1, learning_rate=1e-3, max_steps=20, n_rows=400))],
}


def _round(value):
    if isinstance(value, float):
        value = float(f"{value:.5g}")
        return int(value) if value.is_integer() and abs(value) < 1e15 else value
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def recorded_lines(events: Path) -> list[str]:
    """A run folder's events as test data: alerts dropped (tests re-run the rules), no wall times, panels or
    versions, floats to 5 significant digits."""
    lines = []
    for raw in events.read_text().splitlines():
        data = json.loads(raw)
        if data["kind"] == "alert":
            continue
        data.pop("panels", None)
        if data["kind"] == "metrics":
            data.pop("t", None)
        data.pop("versions", None)
        lines.append(json.dumps(_round(data), separators=(",", ":")))
    return lines


def record(name: str) -> Path:
    from ptt_nb import DiagnosticsCallback, tiny

    lines: list[str] = []
    for algorithm, kwargs in RECORDINGS[name]:
        kwargs = dict(kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            cb = DiagnosticsCallback(run_dir=Path(tmp) / "run", widget=False, console=False)
            t0 = time.time()
            trainer = tiny.make_trainer(algorithm, tmp, callbacks=[cb], **kwargs)
            trainer.train()
            print(f"{name}: {algorithm} {kwargs} {time.time() - t0:.1f}s", file=sys.stderr)
            lines.extend(recorded_lines(Path(tmp) / "run" / "events.jsonl"))
    return write_recording(HERE / f"{name}.jsonl", lines)


def write_recording(path: Path, lines: list[str]) -> Path:
    """One recording file (its folder made if needed); its size printed, as every recorder here reports it."""
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"{path}: {len(lines)} lines, {path.stat().st_size} bytes", file=sys.stderr)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or list(RECORDINGS):
        record(name)
