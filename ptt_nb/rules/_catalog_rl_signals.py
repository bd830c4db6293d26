"""Heuristics v2 for GRPO/RLOO/Online DPO: per reward function, degenerate completions, tool calls (issue 15)."""

from __future__ import annotations

from ptt_nb.rules._engine import Rule


def rl_signal_rules() -> list[Rule]:
    """Fresh instances of this module's rules."""
    return []
