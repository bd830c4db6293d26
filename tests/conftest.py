"""Shared test helpers: real tiny TRL runs (offline), and readers for what a run leaves on disk."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=UserWarning)

REPO = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = read_jsonl(Path(run_dir) / "events.jsonl")
    return [r for r in rows if kind is None or r["kind"] == kind]


def postmortem_of(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "postmortem.json").read_text())


@pytest.fixture(autouse=True)
def _torch_threads():
    """Two cores are shared by the whole suite: keep torch from oversubscribing them."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
