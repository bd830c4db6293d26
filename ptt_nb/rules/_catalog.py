"""The built-in heuristics catalog: every rule of shared/reference/heuristics-catalog.md that TRL's logs or the
run config can feed, as engine ``Rule`` objects.

Cost. Each rule is incremental: it keeps running sums over small rings (``windows.py``) and does O(1) plain
float arithmetic per log point; anything heavier (a median absolute deviation) runs only after a cheap bound
says the point may be an outlier. No rule reads ``MetricHistory`` on the hot path.

Not implemented here: ``pref_length_exploitation`` (TRL logs no chosen/rejected or generation lengths; it needs
tool-side data), the gold-metric half of ``rl_reward_overopt`` (needs a held-out judge; its no-gold half needs a
completion length, which only GRPO/RLOO log), PPO's ``val/num_eos_tokens`` half of ``rl_truncation`` (a count
without its batch size), and the distributed rules (``straggler_rank``, ``memory_imbalance``:
``rules.distributed_rules``). ``nonfinite_values`` is ``builtin``'s rule with a fast path added here.

Calibration (the catalog marks most thresholds [F], folklore). Thresholds were replayed against real TRL 1.16
runs of every trainer on the tiny 2-layer Llama (``tests/data/healthy_*.jsonl``: several seeds and learning
rates DPO/KTO/CPO 1e-5..1e-4, ORPO 1e-4..3e-4, SFT 1e-4..1e-3, GRPO/RLOO/Online DPO 3e-5..1e-4, reward 1e-4..1e-3)
and against provoked pathologies (DPO with lr=0, GRPO with a constant reward, an injected NaN). Where a rule
departs from the catalog's cut-off, or reads an open trigger in a chosen way, its class docstring says so and
why, beside its thresholds; every other rule uses the catalog's numbers as written.
"""

from __future__ import annotations

from ptt_nb.rules._catalog_common import LN2  # noqa: F401 - re-exported (tests)
from ptt_nb.rules._catalog_optimisation import (
    FastNonFiniteValues,
    GradClipSaturation,
    GradNormSpike,
    GradNormZero,
    LossSpike,
    LrScheduleAnomaly,
    LrWarmupMissing,
    SftMemorization,
)
from ptt_nb.rules._catalog_ppo import (
    PpoApproxklHigh,
    PpoClipfracHigh,
    PpoNegativeKl,
    PpoRatioOutOfBand,
    PpoValueInstability,
    RlKlRunaway,
)
from ptt_nb.rules._catalog_preference import (
    DpoLikelihoodDisplacement,
    DpoLossAtLn2,
    KtoWeightImbalance,
    PrefEmptyCompletion,
    PrefFeatures,
    PrefHparamsOutOfRange,
    PrefMarginInverted,
    PrefOverfit,
)
from ptt_nb.rules._catalog_preference_variants import (
    KtoKlDegenerate,
    OrpoCpoNllDiverging,
    OrpoOddsNotSeparating,
    SimpoMarginBelowGamma,
)
from ptt_nb.rules._catalog_rl import (
    GrpoClipRatio,
    GrpoKlUnmonitored,
    GrpoLengthBias,
    GrpoLossNotASignal,
    GrpoRolloutMismatch,
    GrpoZeroVarianceGroups,
    RlEntropyOutOfBand,
    RlLengthHacking,
    RlRewardOveropt,
    RlTruncation,
)
from ptt_nb.rules._catalog_rl_signals import rl_signal_rules
from ptt_nb.rules._catalog_run_health import run_health_rules
from ptt_nb.rules._engine import Rule


def catalog_rules() -> list[Rule]:
    """Fresh instances of every catalog rule (rules keep per-run state)."""
    loss_spike = LossSpike()
    pref = PrefFeatures()
    return [
        DpoLossAtLn2(pref), PrefEmptyCompletion(), PrefMarginInverted(pref), DpoLikelihoodDisplacement(pref),
        PrefOverfit(pref),
        PrefHparamsOutOfRange(), KtoWeightImbalance(), KtoKlDegenerate(), OrpoOddsNotSeparating(),
        OrpoCpoNllDiverging(), SimpoMarginBelowGamma(),
        RlKlRunaway(), PpoNegativeKl(), PpoRatioOutOfBand(), PpoApproxklHigh(), PpoClipfracHigh(),
        PpoValueInstability(), RlRewardOveropt(), RlLengthHacking(), RlTruncation(), RlEntropyOutOfBand(),
        GrpoZeroVarianceGroups(), GrpoLossNotASignal(), GrpoLengthBias(), GrpoClipRatio(), GrpoRolloutMismatch(),
        GrpoKlUnmonitored(),
        loss_spike, GradNormSpike(loss_spike), GradNormZero(), GradClipSaturation(), LrWarmupMissing(),
        LrScheduleAnomaly(), SftMemorization(), FastNonFiniteValues(),
        *rl_signal_rules(), *run_health_rules(),
    ]
