"""What the catalog modules share: trainer families, panel groups and small formatting helpers."""

from __future__ import annotations

import math
from typing import Any

from ptt_nb.rules._engine import Context

LN2 = math.log(2.0)

PREF = frozenset({"dpo", "kto", "orpo", "cpo", "online_dpo"})
RL = frozenset({"grpo", "rloo"})
LOSS_PANELS = ("loss", "sft_loss", "dpo_loss", "kto_loss", "orpo_loss", "cpo_loss", "odpo_loss", "rm_loss")
GRAD_PANELS = ("optim_grad_norm",)
LR_PANELS = ("optim_lr",)


def _g(x: float) -> str:
    """Compact number for messages."""
    return f"{x:.4g}"


def _past(ctx: Context, steps: int, frac: float) -> bool:
    """step >= steps and, when the run's length is known, step >= frac * max_steps."""
    if ctx.step < steps:
        return False
    m = ctx.max_steps
    return not m or ctx.step >= frac * m


def log_interval(ctx: Context) -> int:
    """Steps between two logged train points: the run's ``logging_steps`` (a float < 1 is a fraction of
    ``max_steps``, as transformers reads it), else 1. Rules whose windows count logged points use it where a
    span must also cover enough steps (or the other way round) at logging_steps > 1."""
    ls = ctx.config.get("logging_steps")
    if not isinstance(ls, (int, float)) or isinstance(ls, bool) or ls <= 0:
        return 1
    if ls < 1:
        ls = math.ceil(ls * ctx.max_steps) if ctx.max_steps else 1
    return max(1, int(ls))


def _lr(values: dict[str, float]) -> float | None:
    lr = values.get("learning_rate")
    return values.get("lr") if lr is None else lr


def _loss_types(config: dict[str, Any]) -> list[str] | None:
    lt = config.get("loss_type")
    if lt is None:
        return None
    return [str(t) for t in lt] if isinstance(lt, (list, tuple)) else [str(lt)]


