"""Runs recorded by other tools, read back through ``ptt_nb.load_run`` into the same Monitor path as a replay.

The fixtures in tests/data/imports/ were written by the real libraries (tests/data/imports/record_imports.py):
a tiny TRL DPO run with ``report_to=["tensorboard", "trackio", "wandb"]`` (W&B offline) and checkpoints saved,
once healthy and once with a learning rate of 1e12 (grad_norm is NaN from step 2). ``test_live_run_*`` records
a fresh run with the callback and TensorBoard side by side and checks both diagnoses agree.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from ptt_nb import load_run
from ptt_nb.sources import _import
from ptt_nb.sources._import import ImportFormatError

DATA = Path(__file__).parent / "data" / "imports"
DB = DATA / "trackio_project.db"


def critical(monitor) -> list[tuple[str, int]]:
    return [(a.rule, a.step) for a in monitor.alerts if a.severity == "critical"]


def serious(monitor) -> list[str]:
    return [a.rule for a in monitor.alerts if a.severity in ("critical", "high")]


SOURCES = {
    "trainer_state": lambda name: (DATA / name / "out", {}),
    "tensorboard": lambda name: (DATA / name / "tensorboard", {}),
    "trackio": lambda name: (DB, {"run": name}),
    "wandb": lambda name: (DATA / name / "wandb", {}),
}


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_each_format_diagnoses_the_nan_run_and_passes_the_healthy_one(fmt):
    if fmt == "wandb":
        pytest.importorskip("wandb.proto", reason="decoding a W&B offline run needs wandb (optional)")
    if fmt == "tensorboard":
        pytest.importorskip("tensorboard")
    path, opts = SOURCES[fmt]("nan")
    assert _import.detect_format(path) == fmt
    sick = load_run(path, **opts)
    assert sick.run.algorithm == "dpo" and sick.run.config["imported_from"] == fmt
    assert sick.step == 30 and len(sick.history.get("loss")) == 30
    assert critical(sick) == [("nonfinite_values", 2)]  # grad_norm is NaN from step 2 (the printed logs say so)
    path, opts = SOURCES[fmt]("healthy")
    healthy = load_run(path, **opts)
    assert healthy.step == 30 and serious(healthy) == []


def test_trainer_state_picks_the_most_advanced_checkpoint_and_keeps_bare_nan(tmp_path):
    raw = (DATA / "nan" / "out" / "trainer_state.json").read_text()
    assert "NaN" in raw  # Python's json writes bare NaN: the reader must accept it
    for step in (15, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    shutil.copy(DATA / "nan" / "out" / "checkpoint-15" / "trainer_state.json", tmp_path / "checkpoint-15")
    shutil.copy(DATA / "nan" / "out" / "trainer_state.json", tmp_path / "checkpoint-30")
    monitor = load_run(tmp_path)
    assert monitor.step == 30
    assert any("checkpoint-30" in w and "most advanced of 2" in w for w in monitor.warnings), monitor.warnings
    assert any("told from the log keys" in w for w in monitor.warnings)  # trainer_state records no trainer
    assert math.isnan(monitor.history.get("grad_norm").last())
    assert monitor.end_event.reason == "finished"  # the train_runtime summary row is there
    one = load_run(tmp_path / "checkpoint-15" / "trainer_state.json")
    assert one.step == 15 and critical(one) == [("nonfinite_values", 2)]


def test_tensorboard_keeps_every_scalar_past_the_10k_reservoir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 12_001):
        writer.add_scalar("train/loss", 0.7 - step * 1e-5, step)
        writer.add_scalar("train/grad_norm", 1.0, step)
        if step % 4000 == 0:
            writer.add_scalar("eval/loss", 0.69, step)
    writer.close()
    monitor = load_run(tmp_path)
    assert len(monitor.history.get("loss")) == 12_000  # EventAccumulator's default would keep 10,000
    assert len(monitor.history.get("eval_loss", "eval")) == 3  # eval/loss → eval_loss, its own split
    assert any("could not be told" in w for w in monitor.warnings)  # no config, no algorithm-specific keys
    assert monitor.run.algorithm == "generic"


def test_trackio_project_read_only_while_a_writer_holds_the_wal(tmp_path):
    db = tmp_path / "proj.db"
    shutil.copy(DB, db)
    writer = sqlite3.connect(db)
    writer.execute("pragma journal_mode=wal")
    writer.execute("begin immediate")  # a run still writing: an open write transaction
    writer.execute("insert into metrics (run_id, timestamp, run_name, step, metrics) values "
                   "('x', '2026-01-01T00:00:00', 'nan', 99, '{\"train/loss\": 1.0, \"train/global_step\": 99}')")
    before = db.read_bytes()
    monitor = load_run(db, run="nan")  # not blocked by the writer; sees only committed rows
    assert monitor.step == 30 and critical(monitor) == [("nonfinite_values", 2)]
    assert db.read_bytes() == before
    newest = load_run(db)
    assert newest.run.run_id == "nan" and any("newest of 2" in w for w in newest.warnings)
    writer.rollback()
    writer.close()
    with pytest.raises(ImportFormatError, match="no run 'nope'.*healthy, nan"):
        load_run(db, run="nope")


def _log_rows() -> list[dict]:
    state = json.loads((DATA / "nan" / "out" / "trainer_state.json").read_text())
    return state["log_history"]


def test_jsonl_and_wandb_style_csv_of_log_dicts(tmp_path):
    rows = _log_rows()
    jsonl = tmp_path / "logs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monitor = load_run(jsonl)
    assert monitor.run.config["imported_from"] == "table" and critical(monitor) == [("nonfinite_values", 2)]
    # a W&B history export: rewritten keys (train/loss), _step and train/global_step columns, empty cells
    keys = sorted({k for r in rows for k in r if k != "step"})
    out = tmp_path / "history.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["_step", "train/global_step", *[f"train/{k}" for k in keys]])
        for i, r in enumerate(rows):
            w.writerow([i, r["step"], *[r.get(k, "") for k in keys]])
    monitor = load_run(out)
    assert monitor.run.algorithm == "dpo" and monitor.step == 30
    assert critical(monitor) == [("nonfinite_values", 2)]


def test_key_based_detection_says_how_or_that_it_cannot():
    dpo_keys = ["loss", "grad_norm", "rewards/chosen", "rewards/margins", "logps/chosen", "mean_token_accuracy"]
    assert _import.detect_algorithm("", {}, dpo_keys)[0] == "dpo"
    name, note = _import.detect_algorithm("", {}, ["loss", "reward", "reward_std", "frac_reward_zero_std", "kl"])
    assert name == "grpo" and "grpo and rloo equally" in note
    assert _import.detect_algorithm("", {}, ["loss", "grad_norm"]) == ("generic", pytest.approx(
        "trainer: could not be told (no config; no algorithm-specific log keys); generic rules only — pass "
        "algorithm= to choose"))
    assert _import.detect_algorithm("KTOTrainer", {}, ["loss"]) == ("kto", None)
    assert _import.detect_algorithm("", {"num_generations": 4, "normalize_advantages": True}, [])[0] == "rloo"


def test_unrecognised_paths_and_forced_formats_fail_clearly(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ImportFormatError) as err:
        load_run(junk)
    for word in (str(junk), "events.jsonl", "trainer_state", "tensorboard", "trackio", "wandb", "table"):
        assert word in str(err.value)
    with pytest.raises(ImportFormatError, match="unknown format 'mlflow'"):
        load_run(DATA / "nan" / "out", format="mlflow")
    with pytest.raises(ImportFormatError, match="no trainer_state.json"):
        load_run(DATA / "nan" / "tensorboard", format="trainer_state")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_run(tmp_path / "missing")
    forced = load_run(DATA / "nan" / "out", format="trainer_state", algorithm="sft")
    assert forced.run.algorithm == "sft"


def test_a_100k_step_trainer_state_loads_and_diagnoses_quickly(tmp_path):
    rows = [{"loss": 0.7 - i * 1e-6, "grad_norm": 1.0, "learning_rate": 1e-5, "rewards/margins": 0.1,
             "rewards/accuracies": 0.6, "rewards/chosen": 0.1, "rewards/rejected": 0.0, "epoch": i / 1e5,
             "step": i} for i in range(1, 100_001)]
    rows[50_000]["loss"] = float("nan")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 100_000, "max_steps": 100_000,
                                                             "log_history": rows}))
    t0 = time.perf_counter()
    monitor = load_run(tmp_path)
    elapsed = time.perf_counter() - t0
    print(f"100k-step trainer_state.json: loaded and diagnosed in {elapsed:.2f}s")
    assert ("nonfinite_values", 50_001) in critical(monitor)
    assert elapsed < 15  # the acceptance figure is 5 s on 2 idle cores; shared CI cores get slack


def test_live_run_and_its_tensorboard_and_trainer_state_agree(tmp_path):
    """The same NaN run diagnosed live by the callback and from what TensorBoard and save_state() wrote."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("trl")
    from ptt_nb.sources._callback import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    diag = DiagnosticsCallback(run_dir=tmp_path / "ptt", console=False, widget=False, report=False)
    trainer = make_trainer("dpo", tmp_path, callbacks=[diag], max_steps=6, learning_rate=1e12,
                           report_to=["tensorboard"])
    trainer.train()
    trainer.save_state()
    live = critical(diag.monitor)
    assert live and live[0][0] == "nonfinite_values"
    for path in (tmp_path / "out" / "runs", tmp_path / "out"):
        imported = load_run(path, format=None if path.name == "runs" else "trainer_state")
        assert critical(imported) == live, path
        assert {a.rule for a in imported.alerts} >= {a.rule for a in diag.monitor.alerts if a.severity != "low"}


def test_replay_magic_and_cell_backtest_on_an_imported_run():
    pytest.importorskip("IPython")
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    from ptt_nb.notebook._session import SESSION

    ip = start_ipython() or get_ipython()  # None when another test module started it
    ip.run_line_magic("load_ext", "ptt_nb")
    SESSION.__init__()
    try:
        with capture_output() as cap:
            result = ip.run_cell(f"%ptt replay {DATA / 'nan' / 'out'} --no-show")
        assert result.error_in_exec is None, cap.stderr
        assert SESSION.source == "replay" and SESSION.monitor.run.config["imported_from"] == "trainer_state"
        assert "most advanced of 2" in cap.stdout
        with capture_output(display=True) as cap:
            result = ip.run_cell("%%ptt --dry-run\n- id: huge_lr\n  when: learning_rate > 1e11\n  severity: high\n")
        assert result.error_in_exec is None, cap.stderr
        text = cap.stdout + "\n".join(o.data.get("text/plain", "") for o in cap.outputs if hasattr(o, "data"))
        assert "huge_lr: would have fired" in text and "first at step 1" in text
        with capture_output() as cap:
            result = ip.run_cell(f"%ptt replay {DATA / 'README.nothing'} --no-show")
        assert result.error_in_exec is not None and "no such file" in cap.stderr
    finally:
        SESSION.__init__()
        ip.run_line_magic("unload_ext", "ptt_nb")
