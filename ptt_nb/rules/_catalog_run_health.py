"""Heuristics v2 for every trainer: train/eval divergence, slow steps, entropy, the NaN filter's fingerprint,
MoE auxiliary loss (issue 15).

Windows and thresholds count logged points, not steps (runs log every 5-50 steps); each rule's docstring says
why its numbers are what they are, and its reference says where a threshold is folklore ([F]).
"""

from __future__ import annotations

from ptt_nb.rules._catalog_common import LOSS_PANELS, RL, _g
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, SortedWindow, Trend, Window, finite

# ============================================================================================================
# 1. Train/eval divergence
# ============================================================================================================

# (eval key, train key, higher is better), tried in order on an eval row; RL trainers' loss is not a signal
_EVAL_PAIRS = (("eval_loss", "loss", False), ("eval_rewards/accuracies", "rewards/accuracies", True),
               ("eval_accuracy", "accuracy", True))
_RL_EVAL_PAIRS = (("eval_reward", "reward", True),)
_TRAIN_LEVEL_LOGS = 5  # the train level at an evaluation: the mean of the last 5 train logs (one log is noisy)
_EVAL_REL_TOL = 1e-3  # an eval metric must move by > 0.1% to count as worse (same eval rows every time)


class TrainEvalDivergence(Rule):
    """The eval metric got worse at 3 evaluations in a row while the train metric improved over the same
    evaluations: the model is fitting its training rows at the expense of held-out ones (overfitting).

    Read on eval rows only, so ``for_logs = 3`` counts evaluations: one or two worse evaluations are eval
    noise or a warm-up bump; three successive rises is Prechelt's UP_3 stopping criterion (1998), the same
    patience as transformers' ``EarlyStoppingCallback(early_stopping_patience=3)``. The train level at an
    evaluation is the mean of the last 5 train logs. Metrics: ``eval_loss`` (every trainer but GRPO/RLOO),
    else ``eval_rewards/accuracies`` or ``eval_accuracy`` (reward models); GRPO/RLOO compare ``eval_reward``
    with ``reward`` (their loss is not a signal).

    How it differs: ``sft_memorization`` (SFT only) needs a ≥30% train-loss drop right after an epoch boundary
    and looks at eval_loss against its minimum once; ``pref_overfit`` (preference trainers) compares train and
    eval win rates at one evaluation (a gap > 0.15). This rule is the general one: every trainer, any eval
    metric, a trend over consecutive evaluations, no epoch boundary needed.
    """

    id = "train_eval_divergence"
    title = "Eval metric worsening while the train metric improves (overfitting)"
    severity = "medium"
    keys = tuple(k for k, _, _ in (*_EVAL_PAIRS, *_RL_EVAL_PAIRS))
    splits = ("eval",)
    algorithms = None
    for_logs = 3
    action = ("Keep the best checkpoint and stop there: load_best_model_at_end=True with "
              "metric_for_best_model='eval_loss' and EarlyStoppingCallback(early_stopping_patience=3); train fewer "
              "num_train_epochs, lower the learning_rate, add data or regularisation (weight_decay, lora_dropout, "
              "neftune_noise_alpha for SFT, a larger beta for DPO).")
    reference, url = cite("prechelt_early_stopping", "UP_s criterion")
    panels = (*LOSS_PANELS, "pref_accuracy", "rm_accuracy", "rl_reward")

    def __init__(self) -> None:
        self.pairs = _EVAL_PAIRS
        self.pair: tuple[str, str, bool] | None = None
        self.evals: list[tuple[float, float]] = []  # the last 4 (step, eval value)
        self.prev: tuple[float, float] | None = None  # (eval value, train level) at the previous evaluation

    def on_start(self, ctx: Context) -> Finding | None:
        self.pairs = _RL_EVAL_PAIRS if ctx.algorithm in RL else _EVAL_PAIRS
        return None

    def _pick(self, v: dict[str, float]) -> tuple[str, str, bool] | None:
        for pair in self.pairs:
            if pair[0] in v:
                return pair
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        pair = self.pair or self._pick(v)
        if pair is None:
            return None
        self.pair = pair
        eval_key, train_key, higher = pair
        e = v.get(eval_key)
        series = ctx.history.get(train_key)  # eval rows are rare: one look at the train series per evaluation
        if e is None or not finite(e) or series is None or not len(series):
            return None
        train = float(series.window(_TRAIN_LEVEL_LOGS).mean())
        if not finite(train):
            return None
        evals = self.evals
        evals.append((float(ctx.step), e))
        if len(evals) > 4:
            del evals[0]
        prev, self.prev = self.prev, (e, train)
        if prev is None:
            return None
        e0, t0 = prev
        tol = _EVAL_REL_TOL * abs(e0)
        eval_worse = e < e0 - tol if higher else e > e0 + tol
        train_better = train > t0 if higher else train < t0
        if not (eval_worse and train_better):
            return None
        ev: dict[str, float] = {}
        for i, (s, x) in enumerate(evals):
            ev[f"eval_step_{i}"] = s
            ev[f"{eval_key}_{i}"] = x
        ev[f"{train_key}_mean_w{_TRAIN_LEVEL_LOGS}"] = train
        n = self.held_logs
        trail = ", ".join(f"{_g(x)}@{int(s)}" for s, x in evals)
        return Finding(f"{eval_key} got worse at {n} evaluation(s) in a row ({trail}) while the train {train_key} "
                       f"improved (mean of the last {_TRAIN_LEVEL_LOGS} logs now {_g(train)}): overfitting.", ev)


# ============================================================================================================
# 2. Slow steps on one process
# ============================================================================================================

_STEP_KEYS = ("step_time", "perf/step_s", "perf/weight_sync_s")
_SKIP_LOGS = 2  # the first logs carry compilation, allocator growth, the first generation: not a baseline
_BASE_LOGS = 10  # baseline: the median of the next 10 logs
_NOW_LOGS = 10  # now: the median of the last 10 logs (one eval or checkpoint step cannot move it)
_SLOWDOWN = 3.0


class _Slowdown:
    """One timing series against its own early median."""

    __slots__ = ("seen", "base", "now")

    def __init__(self) -> None:
        self.seen = 0
        self.base = Baseline(_BASE_LOGS)
        self.now = SortedWindow(_NOW_LOGS)

    def push(self, x: float) -> float | None:
        """The ratio median(now) / baseline once both exist."""
        self.seen += 1
        if self.seen <= _SKIP_LOGS:
            return None
        self.now.push(x)
        b = self.base.value
        if b is None:
            self.base.push(x)
            return None
        if b <= 0 or len(self.now) < _NOW_LOGS:
            return None
        return self.now.median / b


class StepSlowdown(Rule):
    """Per-step wall time (TRL's ``step_time`` for GRPO/RLOO/distillation: ``training_step`` with generation and
    reward calls; async GRPO's ``perf/step_s``) or async GRPO's vLLM ``perf/weight_sync_s`` is ≥ 3x the run's
    own early median, for 3 logs in a row. One process's own history, unlike ``straggler_rank`` which compares
    ranks with each other.

    Baseline: the median of logs 3-12 (the first two carry compilation and the first generation); now: the
    median of the last 10 logs, so a single evaluation or checkpoint step cannot trip it. Why 3x: the healthy
    tiny GRPO/RLOO runs recorded on a shared 2-core host swing up to 2.5x (other jobs' contention), so 3x is
    beyond what a busy host does on its own. Trainers that log no step time (SFT, DPO, ...) are not covered:
    the Monitor hands rules no wall clock.
    """

    id = "step_slowdown"
    title = "Steps getting slower than at the start of the run"
    severity = "medium"
    keys = _STEP_KEYS
    algorithms = None
    for_logs = 3
    action = ("Find what grew: reward functions or a reward server (GRPO/RLOO step_time includes generation and "
              "reward_funcs), data loading (dataloader_num_workers, dataloader_persistent_workers), memory "
              "pressure or fragmentation (torch_empty_cache_steps, lower per_device_train_batch_size), growing "
              "completions (max_completion_length), another job on the host. Weight sync (async GRPO): raise "
              "weight_sync_steps, check the vLLM server's load.")
    reference, url = cite("trl_docs", "threshold 3x over the run's own median is folklore [F]")
    panels = ("rl_step_time",)

    def __init__(self) -> None:
        self.series = {k: _Slowdown() for k in _STEP_KEYS}

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        worst: tuple[float, str] | None = None
        for key in _STEP_KEYS:
            x = v.get(key)
            if x is None or not finite(x):
                continue
            ratio = self.series[key].push(x)
            if ratio is not None and ratio >= _SLOWDOWN and (worst is None or ratio > worst[0]):
                worst = (ratio, key)
        if worst is None:
            return None
        ratio, key = worst
        s = self.series[key]
        b = s.base.value or 0.0
        return Finding(f"{key}: median of the last {_NOW_LOGS} logs {_g(s.now.median)} s is {ratio:.1f}x the run's "
                       f"early median {_g(b)} s.",
                       {key: v[key], f"{key}_median_w{_NOW_LOGS}": s.now.median, "baseline": b, "ratio": ratio})


# ============================================================================================================
# 3. Entropy
# ============================================================================================================

_ENTROPY_FLOOR = 0.1  # nats: a mean top-token probability above ~0.98


class EntropyCollapse(Rule):
    """SFT/DPO/KTO: TRL's ``entropy`` (mean per-token entropy of the model's predictive distribution on the
    training batch) fell below 0.1 nats and below a quarter of its start, for 5 logs in a row. A model this
    sure of every next token has memorised its rows and, sampled, tends to repeat itself (Holtzman et al.:
    degenerate, repetitive text is where the probability mass collapses). 5 logs: one batch of easy rows is
    not a collapse. RL trainers are ``rl_entropy_out_of_band``'s and ``rl_low_initial_entropy``'s.
    """

    id = "entropy_collapse"
    title = "Token entropy collapsing toward 0 (memorisation, repetition)"
    severity = "medium"
    keys = ("entropy",)
    algorithms = frozenset({"sft", "dpo", "kto"})
    for_logs = 5
    action = ("Sample from the model now and look for loops. Train fewer num_train_epochs or lower the "
              "learning_rate, add or deduplicate data, regularise (neftune_noise_alpha=5 for SFT, "
              "label_smoothing_factor, a larger beta for DPO).")
    reference, url = cite("text_degeneration", "floor 0.1 nats and 0.25x the start are folklore [F]")
    panels = ("sft_entropy", "sft_acc", "sft_loss", "dpo_loss")

    def __init__(self) -> None:
        self.base = Baseline(3)

    def check(self, ctx: Context) -> Finding | None:
        h = ctx.values["entropy"]
        if not finite(h):
            return None
        b = self.base.value
        if b is None:
            self.base.push(h)
            return None
        if h >= _ENTROPY_FLOOR or h >= 0.25 * b:
            return None
        return Finding(f"Token entropy {_g(h)} nats is below {_ENTROPY_FLOOR} and {_g(h / b)}x its start ({_g(b)}): "
                       "the model is near-deterministic on its training rows.", {"entropy": h, "baseline": b})


class RlLowInitialEntropy(Rule):
    """GRPO/RLOO: the median ``entropy`` of the first 3 logs is below 0.1 nats. RL can only reinforce what the
    policy samples; a policy that starts near-deterministic explores little, and Cui et al. find performance
    bounded by entropy (R ≈ -a·e^H + b), so little entropy at the start leaves little to gain. Fires once:
    a start is a start. ``rl_entropy_out_of_band`` compares entropy with its own start and so cannot see a
    start that is already low.
    """

    id = "rl_low_initial_entropy"
    title = "Policy near-deterministic at the start of RL"
    severity = "medium"
    keys = ("entropy",)
    algorithms = RL
    once = True
    action = ("Raise the sampling temperature (temperature=1.0 is TRL's default; check top_p, top_k, min_p), start "
              "from a less over-trained SFT checkpoint, or keep entropy up with epsilon_high=0.28 (Clip-Higher).")
    reference, url = cite("rl_entropy_mechanism", "floor 0.1 nats is folklore [F]")
    panels = ("rl_entropy", "rl_reward")

    def __init__(self) -> None:
        self.base = Baseline(3)

    def check(self, ctx: Context) -> Finding | None:
        h = ctx.values["entropy"]
        if self.base.value is None and finite(h):
            self.base.push(h)
        b = self.base.value
        if b is None or b >= _ENTROPY_FLOOR:
            return None
        return Finding(f"Median entropy of the first 3 logs is {_g(b)} nats (< {_ENTROPY_FLOOR}): the policy samples "
                       "nearly the same completion every time, so RL has little to choose from.",
                       {"entropy_start": b, "entropy": h})


# ============================================================================================================
# 4. The NaN filter's fingerprint
# ============================================================================================================

class NanFilterMaskedLoss(Rule):
    """A logged ``loss`` of exactly 0.0 in a run whose loss was not exactly 0 before. transformers'
    ``logging_nan_inf_filter`` (on by default) replaces a NaN/inf step loss by ``tr_loss / (1 + steps since the
    last log)``; at the first step after a log ``tr_loss`` is 0, so with ``logging_steps=1`` the NaN is logged as
    exactly 0.0, while ``grad_norm`` can be finite (the backward pass of that step still ran). With larger
    ``logging_steps`` the NaN only pulls the logged mean down a little and leaves no exact fingerprint. With the
    filter off (measured, transformers 5.24) the first NaN is logged as NaN, and so is every later loss: the
    reset after a log, ``tr_loss -= tr_loss``, leaves a NaN a NaN; the first NaN step is the one to look at.

    Exact repeats of the previous value are not used: the recorded healthy DPO runs repeat a loss exactly
    (to 5 digits) several times. GRPO/RLOO/PPO are left out: their loss is legitimately exactly 0.0 (zero
    advantages).
    """

    id = "nan_filter_masked_loss"
    title = "Logged loss exactly 0.0: a NaN/inf loss hidden by logging_nan_inf_filter"
    severity = "medium"
    keys = ("loss",)
    algorithms = frozenset({"sft", "dpo", "kto", "orpo", "cpo", "online_dpo", "reward", "generic"})
    action = ("Set logging_nan_inf_filter=False to log the real values (every loss after the first NaN then reads "
              "NaN: look at that step), then find the batch that produced it (all labels -100 or empty "
              "completions, fp16 overflow: try bf16, a lower learning_rate).")
    reference, url = cite("transformers_nan_inf_filter")
    panels = LOSS_PANELS

    def __init__(self) -> None:
        self.nonzero = 0  # finite, non-zero losses seen
        self.zero_first = False  # the run's first loss was exactly 0: a zero is this run's normal

    def on_start(self, ctx: Context) -> Finding | None:
        if ctx.config.get("logging_nan_inf_filter") is False:
            self.inert = True  # a NaN is logged as NaN (nonfinite_values), a 0.0 is a real 0.0
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        x = v["loss"]
        if x != 0.0:
            if finite(x):
                self.nonzero += 1
            return None
        if not self.nonzero:
            self.zero_first = True
        if self.zero_first:
            return None
        g = v.get("grad_norm")
        ev = {"loss": 0.0, "nonzero_losses_before": float(self.nonzero)}
        detail = ""
        if g is not None:
            ev["grad_norm"] = g
            detail = f" (grad_norm {_g(g)}{', finite: the update was real' if finite(g) else ''})"
        return Finding(f"The logged loss is exactly 0.0 after {self.nonzero} non-zero losses{detail}: with "
                       "logging_nan_inf_filter on, that is how a NaN/inf loss is logged at logging_steps=1.", ev)


# ============================================================================================================
# 5. MoE auxiliary (load-balancing) loss
# ============================================================================================================

class MoeAuxLossRising(Rule):
    """``aux_loss`` (TRL SFT/GRPO log the router's load-balancing loss for MoE models with
    ``output_router_logits``) rose ≥ 25% above its start with a rising trend (t > 2 over the last 20 logs), or
    sits ≥ 50% above it (a collapse that has levelled off), for 3 logs in a row; a non-finite ``aux_loss`` for
    3 logs is high (a NaN router stays NaN; a NaN in ``loss`` itself is ``nonfinite_values``'). The loss is
    smallest when tokens spread evenly over the experts (transformers' Mixtral form: top_k when balanced, up to
    the number of experts when every token goes to the same top_k; measured on the tiny 4-expert top-2 Mixtral:
    2.00 healthy, 2.0 -> 3.9 with a mis-signed coefficient), so a sustained rise means routing is collapsing
    onto a few experts.
    Start: the median of the first 3 logs; 20 logs for the trend, 10 for the level.
    """

    id = "moe_aux_loss_rising"
    title = "MoE load-balancing loss rising (router collapsing onto few experts)"
    severity = "medium"
    keys = ("aux_loss",)
    algorithms = None
    for_logs = 3
    action = ("Check router_aux_loss_coef (SFTConfig/GRPOConfig; positive: Mixtral's default is 0.001, 0.01-0.02 "
              "is common), lower the learning_rate, keep output_router_logits=True, and leave the router gate out "
              "of LoRA target_modules.")
    reference, url = cite("switch_transformer", "rise of 25% over the start is folklore [F]")
    panels = ("sft_aux_loss",)

    def __init__(self) -> None:
        self.base = Baseline(3)
        self.level = Window(10)
        self.trend = Trend(20)

    def check(self, ctx: Context) -> Finding | None:
        a = ctx.values["aux_loss"]
        if not finite(a):
            return Finding(f"aux_loss is {a}: the router's load-balancing loss is not finite.", {"aux_loss": a},
                           severity="high")
        self.level.push(a)
        self.trend.push(a)
        b = self.base.value
        if b is None:
            self.base.push(a)
            return None
        if b <= 0 or not self.trend.full:
            return None
        m = self.level.mean
        t = self.trend.tstat
        if m < 1.25 * b or (t <= 2 and m < 1.5 * b):
            return None
        how = f"rising (t = {_g(t)} over 20 logs)" if t > 2 else "stays there"
        return Finding(f"aux_loss (mean of the last 10 logs {_g(m)}) is {_g(m / b)}x its start ({_g(b)}) and {how}: "
                       "routing is concentrating on few experts.",
                       {"aux_loss": a, "aux_loss_mean_w10": m, "baseline": b, "tstat_w20": t})


def run_health_rules() -> list[Rule]:
    """Fresh instances of this module's rules."""
    return [TrainEvalDivergence(), StepSlowdown(), EntropyCollapse(), RlLowInitialEntropy(), NanFilterMaskedLoss(),
            MoeAuxLossRising()]
