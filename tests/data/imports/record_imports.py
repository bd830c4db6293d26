"""Re-record the imported-run fixtures: real tiny TRL runs writing TensorBoard events, a trackio database,
a W&B offline run and checkpoints' trainer_state.json (``python tests/data/imports/record_imports.py OUT``).

Two runs: ``healthy`` (DPO, default learning rate) and ``nan`` (DPO with a learning rate so high the loss goes
NaN). The committed fixtures under tests/data/imports/ are copied from OUT by hand (small files only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def record(out: Path, name: str, *, steps: int, report_to: list[str], **config) -> Path:
    from ptt_nb.tiny import make_trainer

    work = out / name
    os.environ["TRACKIO_DIR"] = str(out / "trackio")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_DIR"] = str(work)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["TRACKIO_PROJECT"] = "ptt-imports"
    trainer = make_trainer("dpo", work, max_steps=steps, report_to=report_to, save_strategy="steps",
                           save_steps=max(1, steps // 2), save_total_limit=3,
                           run_name=name, **config)
    try:
        trainer.train()
    except Exception as exc:  # a NaN run may raise in a library; what was logged is the fixture
        print(f"{name}: train raised {type(exc).__name__}: {exc}")
    trainer.save_state()
    return work


if __name__ == "__main__":
    import subprocess

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ptt_imports").resolve()
    report_to = ["tensorboard", "trackio", "wandb"]
    if len(sys.argv) > 2:  # one run per process: wandb and trackio keep one run per process
        name = sys.argv[2]
        lr = {"learning_rate": float(os.environ.get("NAN_LR", "1e12"))} if name == "nan" else {}
        print(record(out, name, steps=30, report_to=report_to, **lr))
    else:
        for name in ("healthy", "nan"):
            subprocess.run([sys.executable, __file__, str(out), name], check=True)
