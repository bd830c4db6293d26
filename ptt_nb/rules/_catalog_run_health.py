"""Heuristics v2 for every trainer: train/eval divergence, slow steps, entropy, the NaN filter's fingerprint,
MoE auxiliary loss (issue 15)."""

from __future__ import annotations

from ptt_nb.rules._engine import Rule


def run_health_rules() -> list[Rule]:
    """Fresh instances of this module's rules."""
    return []
