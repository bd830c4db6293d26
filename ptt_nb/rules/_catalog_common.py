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


def _lr(values: dict[str, float]) -> float | None:
    lr = values.get("learning_rate")
    return values.get("lr") if lr is None else lr


def _loss_types(config: dict[str, Any]) -> list[str] | None:
    lt = config.get("loss_type")
    if lt is None:
        return None
    return [str(t) for t in lt] if isinstance(lt, (list, tuple)) else [str(lt)]


