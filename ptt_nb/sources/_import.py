"""Runs recorded by other tools (HF ``trainer_state.json``, TensorBoard, trackio, W&B, CSV/JSONL of log dicts),
read through one interface and replayed into a ``Monitor`` the way ``events.jsonl`` is: a ``RunStart``, one
``Metrics`` per log dict, a ``RunEnd`` — the same ``Monitor.apply`` path, so the same rules and the same alerts.

Each format module (``_import_<format>.py``) has ``FORMAT``, ``sniff(path) -> bool`` and ``read(path, **opts)
-> ImportedRun``; this module detects the format, the trainer (from the recorded config, else from key names)
and turns the log dicts into events. What cannot be told is said in one line in ``monitor.warnings``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptt_nb._layout import EVENTS_FILE
from ptt_nb.events import Metrics, RunEnd, RunStart
from ptt_nb.monitor import _profiles as profiles
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.monitor._profiles import log_split

# auto-detection order: the most exact record first (trainer_state holds the log dicts verbatim)
FORMATS = ("trainer_state", "tensorboard", "trackio", "wandb", "table")
# the final summary row of Trainer.train() and the bookkeeping other trackers add (W&B's _step, _runtime ...)
SUMMARY_KEYS = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                          "train_loss"})
DROP_KEYS = frozenset({"step", "global_step", "train/global_step", "train/epoch_step"})

# Config fields only one TRL 1.16 config class has (measured: dataclass fields minus TrainingArguments' and
# every other config's). Checked in this order; ORPO's one marker is weak, so it comes last.
CONFIG_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dpo", ("f_divergence_type", "ld_alpha", "discopop_tau", "use_weighting")),
    ("kto", ("desirable_weight", "undesirable_weight")),
    ("cpo", ("cpo_alpha", "simpo_gamma")),
    ("grpo", ("importance_sampling_level", "cast_lm_head_to_fp32", "entropy_coef")),
    ("rloo", ("normalize_advantages", "reward_clip_range")),
    ("online_dpo", ("missing_eos_penalty", "reward_model_path")),
    ("reward", ("center_rewards_coefficient",)),
    ("ppo", ("num_ppo_epochs", "cliprange_value", "vf_coef")),
    ("sft", ("dataset_text_field", "packing_strategy", "completion_only_loss")),
    ("orpo", ("padding_value",)),
)


class ImportFormatError(ValueError):
    """No reader recognises the path (or the forced one cannot read it): names the path and what was tried."""


@dataclass
class ImportedRun:
    """What a reader returns: the log dicts in logging order (HF key names: ``loss``, ``eval_loss``,
    ``train_runtime``), and what the source records about the run."""

    source: Path
    format: str
    logs: list[tuple[int, dict[str, Any], float | None]]  # (global step, log dict, wall time or None)
    run_id: str = ""
    trainer: str = ""  # the trainer or config class name, when the source records it
    config: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    notes: list[str] = field(default_factory=list)
    floats: bool = False  # every log dict holds floats only, no bookkeeping key: replayed as it is (no ``numeric``)


def unrewrite(key: str) -> str:
    """Undo transformers' ``rewrite_logs`` (TensorBoard/trackio/W&B callbacks): ``train/loss`` → ``loss``,
    ``eval/loss`` → ``eval_loss``, ``test/x`` → ``test_x``."""
    head, sep, rest = key.partition("/")
    if not sep:
        return key
    if head == "train":
        return rest
    if head in ("eval", "test"):
        return f"{head}_{rest}"
    return key


def split_of_key(key: str) -> str | None:
    """The log dict an HF key goes to when a tracker stores one value per row: ``train``, ``eval``, ``summary``
    (the final ``train_runtime`` row), or None for bookkeeping (``step``, W&B's ``_runtime``)."""
    if key in DROP_KEYS or key.startswith("_"):
        return None
    return "summary" if key in SUMMARY_KEYS else "eval" if key.startswith(("eval_", "test_")) else "train"


def group_by_step(points: Iterable[tuple[int, str, float, float | None]]) -> list[tuple[int, dict, float | None]]:
    """Scalars (step, HF key, value, wall time) of trackers that store one value per row → log dicts: one per step
    and split, in step order (a step with train and eval values gives two, the summary a third)."""
    by_step: dict[int, dict[str, dict[str, Any]]] = {}
    times: dict[tuple[int, str], float] = {}
    splits_of: dict[str, str | None] = {}  # one classification per key, not per point (1.5 M points: 100k steps)
    for step, key, value, t in points:
        split = splits_of.get(key, "")
        if split == "":
            split = splits_of[key] = split_of_key(key)
        if split is None:
            continue
        splits = by_step.get(step)
        if splits is None:
            splits = by_step[step] = {}
        logs = splits.get(split)
        if logs is None:
            logs = splits[split] = {}
        logs[key] = value
        if t is not None:
            times[(step, split)] = t
    return _in_step_order(by_step, times)


def group_rows(rows: Iterable[tuple[int, dict[str, Any], float | None]]) -> list[tuple[int, dict, float | None]]:
    """``group_by_step`` for trackers that store one row of several keys (CSV/JSONL): the rows' keys (raw names,
    undone with ``unrewrite``) → the same log dicts, with the key → split work done once per distinct row layout
    instead of once per value."""
    layouts: dict[tuple[str, ...], list[tuple[str, list[tuple[str, str]]]]] = {}
    by_step: dict[int, dict[str, dict[str, Any]]] = {}
    times: dict[tuple[int, str], float] = {}
    for step, row, t in rows:
        names = tuple(row)
        layout = layouts.get(names)
        if layout is None:
            per_split: dict[str, list[tuple[str, str]]] = {}
            for name in names:
                key = unrewrite(name)
                split = split_of_key(key)
                if split is not None:
                    per_split.setdefault(split, []).append((name, key))
            layout = layouts[names] = list(per_split.items())
        splits = by_step.get(step)
        if splits is None:
            splits = by_step[step] = {}
        for split, pairs in layout:
            logs = {key: row[name] for name, key in pairs}
            if split in splits:
                splits[split].update(logs)
            else:
                splits[split] = logs
            if t is not None:
                times[(step, split)] = t
    return _in_step_order(by_step, times)


def _in_step_order(by_step: dict[int, dict[str, dict[str, Any]]], times: dict[tuple[int, str], float]
                   ) -> list[tuple[int, dict[str, Any], float | None]]:
    """The grouped log dicts as the replay wants them: by step, train before eval before summary, and no dict
    that holds only ``epoch`` (trackers log it beside every value)."""
    out = []
    for step in sorted(by_step):
        for split in ("train", "eval", "summary"):
            logs = by_step[step].get(split)
            if logs and not (split != "summary" and set(logs) <= {"epoch"}):
                out.append((step, logs, times.get((step, split))))
    return out


def numeric(logs: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The numeric values of a log dict (bools and ints as floats; JSON's ``NaN``/``Infinity`` kept); the rest named."""
    try:  # the common case: every value converts (float() also reads "nan", "inf", "-Infinity")
        return {k: float(v) for k, v in logs.items() if k not in DROP_KEYS and k[:1] != "_"}, []
    except (TypeError, ValueError):
        pass
    values: dict[str, float] = {}
    skipped: list[str] = []
    for key, value in logs.items():
        if key in DROP_KEYS or key.startswith("_"):
            continue
        if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            value = float(value)
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            skipped.append(key)
    return values, skipped


def detect_algorithm(trainer: str, config: dict[str, Any], keys: Iterable[str]) -> tuple[str, str | None]:
    """The profile name, from the recorded trainer/config class, else the config's fields, else the log keys.

    Returns ``(name, note)``: ``note`` says how it was told, or that it could not be (then ``generic``)."""
    names = [n for n in (trainer, str(config.get("config_class", "")), str(config.get("_trainer_class", ""))) if n]
    if names:
        found = profiles.detect(names)
        if found is not profiles.GENERIC:
            return found.name, None
    for name, markers in CONFIG_MARKERS:
        hit = [m for m in markers if m in config]
        if hit:
            return name, f"trainer: {name} (told from the config's {hit[0]!r} field)"
    keys = set(keys)
    scores = []
    for name, known in profiles.TRL_KEYS.items():
        if name == "generic":
            continue
        matched = {k for k in keys if any(profiles.match_key(p, k) for p in known)}
        specific = matched - set(profiles.TRL_KEYS["generic"])
        if specific:
            scores.append((len(matched) / len(keys | set(known)), len(specific), name))
    if not scores:
        return "generic", ("trainer: could not be told (no config; no algorithm-specific log keys); generic rules "
                           "only — pass algorithm= to choose")
    scores.sort(reverse=True)
    best = scores[0]
    ties = [name for name in profiles.TRL_KEYS if any(s[2] == name and s[:2] == best[:2] for s in scores)]
    if len(ties) > 1:  # the first in the profiles' order (grpo before rloo), said so
        return ties[0], (f"trainer: the log keys fit {' and '.join(ties)} equally; diagnosed as {ties[0]} "
                         "— pass algorithm= to choose")
    return best[2], f"trainer: {best[2]} (told from the log keys; no config recorded)"


def _reader(fmt: str) -> Any:
    return importlib.import_module(f"ptt_nb.sources._import_{fmt}")


def detect_format(path: Path) -> str | None:
    """The first format whose reader recognises ``path`` (cheap checks: names, headers, one line)."""
    for fmt in FORMATS:
        if _reader(fmt).sniff(path):
            return fmt
    return None


def read(path: str | os.PathLike[str], *, format: str | None = None, **options: Any) -> ImportedRun:
    """Read a run written by another tool; ``format`` forces one of ``FORMATS``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder (neither a ptt_nb run folder with {EVENTS_FILE} nor a "
                                "run recorded by another tool)")
    if format is not None:
        if format not in FORMATS:
            raise ImportFormatError(f"{p}: unknown format {format!r}; choose one of ptt_nb, {', '.join(FORMATS)}")
        fmt = format
    else:
        fmt = detect_format(p)
        if fmt is None:
            raise ImportFormatError(
                f"{p}: not a run any reader recognises (tried ptt_nb {EVENTS_FILE}, {', '.join(FORMATS)}); "
                "pass format= to force one")
    return _reader(fmt).read(p, **options)


def to_monitor(run: ImportedRun, *, algorithm: str | None = None, monitor: Monitor | None = None) -> Monitor:
    """Replay an imported run into a Monitor that evaluates the rules (nothing was recorded to take as it is)."""
    monitor = monitor or Monitor(evaluate=True)
    notes = list(run.notes)
    keys: dict[str, None] = {}
    for _, logs, _ in run.logs[:200]:
        if log_split(logs) == "train":
            keys.update(dict.fromkeys(logs))
    if algorithm:
        algo = profiles.get_profile(algorithm).name
        if algo != algorithm:
            raise ValueError(f"{run.source}: unknown algorithm {algorithm!r}; choose one of "
                             f"{', '.join(p.name for p in profiles.PROFILES)}")
    else:
        algo, note = detect_algorithm(run.trainer, run.config, keys)
        if note:
            notes.append(note)
    config = {k: v for k, v in run.config.items() if isinstance(v, (bool, int, float, str))}
    steps = [s for s, _, _ in run.logs]
    t0 = next((t for _, _, t in run.logs if t is not None), 0.0)
    monitor.apply(RunStart(run_id=run.run_id or run.source.stem, trainer=run.trainer or f"({run.format} import)",
                           algorithm=algo, config={**config, "imported_from": run.format},
                           max_steps=run.max_steps or (max(steps) if steps else None), t=t0))
    skipped: dict[str, None] = {}
    last_t = t0
    for step, logs, t in run.logs:
        if run.floats:
            values = logs
        else:
            values, bad = numeric(logs)
            if bad:
                skipped.update(dict.fromkeys(bad))
        if values:
            last_t = t if t is not None else last_t
            monitor.apply(Metrics(step=int(step), split=log_split(values), values=values, t=last_t))
    if skipped:
        notes.append(f"non-numeric keys left out: {', '.join(list(skipped)[:8])}")
    ended = any(log_split(logs) == "summary" for _, logs, _ in run.logs[-3:])
    detail = f"imported from {run.format}: {run.source}"
    monitor.apply(RunEnd(reason="finished" if ended else "unknown", step=monitor.step, detail=detail, t=last_t))
    monitor.run_dir = run.source if run.source.is_dir() else run.source.parent
    monitor.warnings.extend(notes)
    return monitor


def load_imported(path: str | os.PathLike[str], *, format: str | None = None, algorithm: str | None = None,
                  **options: Any) -> Monitor:
    """``ptt_nb.load_run`` for anything that is not a ptt_nb run folder."""
    return to_monitor(read(path, format=format, **options), algorithm=algorithm)
