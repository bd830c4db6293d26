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
and against provoked pathologies (DPO with lr=0, GRPO with a constant reward, an injected NaN). Changes from
the catalog's cut-offs, and why:

- dpo_loss_at_ln2: the catalog's |mean_W10(loss)−ln2|<0.01 and |mean_W10(margins)|<0.01 fired on a healthy
  DPO run at lr=1e-5 (step 50: loss 0.6903, margin 0.0056, accuracy 1.0): a slow run, not a stuck one. It now
  also needs the policy not to be separating pairs: mean_W10(margins) < 1e-3 or mean_W10(accuracies) < 0.6.
  The lr=0 run (loss 0.69315, margin 0, accuracy 0) still fires, critical.
- pref_margin_inverted: rewards tie at 0 before the policy moves (margin exactly 0, accuracy 0: the lr=0 run),
  which the catalog's "accuracies < 0.45" read as inverted; it now needs mean_W10(margins) < 0 together with a
  win rate < 0.5 (or < 0.45 alone with a negative margin). KTO logs no accuracies and its healthy tiny runs wander
  ±0.005 around 0, so there the mean margin must be below −0.01.
- orpo_odds_not_separating: accuracies are computed on 4-8 pairs per step, so a W10 mean below 0.55 is common in
  the first ~25 steps of a healthy tiny ORPO run (0.525 at step 23 of 55 at lr 1e-4, log odds +0.009; it separated
  from step ~28). It needs a full window of 10 logs and step >= 20 (and frac >= 0.1), and opens as medium; it is
  high (the catalog's severity) once the condition has held for 20 logs in a row.
- dpo_likelihood_displacement: the catalog's bare signs (chosen reward < 0, slope < 0, margin slope > 0) flapped
  on noise around 0 in healthy tiny KTO runs (5 episodes in 70 steps); both slopes must now be significant
  (|t| > 2 over W20) and the window's mean chosen reward negative.
- loss_spike / grad_norm_spike: the robust-z scale has a floor of 2% of the window median for the loss (DPO's loss
  sits at exactly ln 2 for the first steps, MAD = 0, so any change would be an "infinite z") and of 0.05 in
  log(grad_norm) (a 5% change); a window needs 20 points before it judges. The exact median/MAD is computed only
  when a Huber-clipped running level/scale says the point is 2.5 scales high (tested to find exactly the spikes
  the brute-force computation finds on noisy, trending, heavy-tailed and stepped series).
- grad_norm_spike: robust z(log g) > 6 alone fired on the real GRPO recording replayed over a longer window (a
  1.9x jump, 1.78 vs median 0.92, scored z 6.1: the tiny run's other norms sit within ±7%); it now also needs
  g >= 2.5x the W50 median (the catalog's 10x branch is unchanged).
- rl_truncation: the catalog's "> 0.2 for W10" is read as the W10 mean; critical needs every one of the 10
  values > 0.8 (healthy tiny GRPO runs sit at a 0.5-0.8 mean with 16-token completions; a run whose every
  completion is cut off for 10 logs is the wasting-compute case).
- config rules (pref_hparams_out_of_range): the published learning rates are for 7B-scale full fine-tuning.
  When the model's size is known (``n_params`` in the config, filled by the callback) the rule is medium only
  for models >= 1B parameters and low below; unknown size is low. LoRA/PEFT (``peft`` in the config) raises
  the cut-off 10x. lr_warmup_missing is low.
Everything else uses the catalog's numbers as written. Where the catalog leaves a trigger open, the reading
chosen here ([F], not calibrated on a real pathology): "X for Wn" = n consecutive logs (streak counters) for
kto_kl_degenerate, ppo_*; "rose" in rl_reward_overopt = a >= 10% rise of the OLS trend over W50 for reward, KL
and length alike; rl_kl_runaway (b) compares the W5 KL mean with the one at 75% of the current step and needs
KL >= 0.01 then >= 1e-3 (KL starts at 0, so "x3" alone fires at once); rl_entropy "monotone fall" = t < −2 over
W50 and below half its start, with the reward's W50 trend moving < 5%; rl_length_hacking uses no downgrade for
rule-based rewards (the rule cannot tell them from a learned reward model).
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
    ]
