"""Heuristics v2 for GRPO/RLOO/Online DPO: per reward function, degenerate completions, tool calls (issue 15).

Every window and threshold counts logged points (one per ``logging_steps``), not optimiser steps. Calibrated on
real tiny TRL 1.16 runs (``tests/data/rl_signals/``, ``tests/data/healthy_{grpo,rloo,online_dpo}.jsonl``): the
numbers are chosen here ([F], folklore) unless a docstring says otherwise.
"""

from __future__ import annotations

import math

from ptt_nb.rules._catalog_common import LN2, RL, _g
from ptt_nb.rules._engine import Context, Finding, Rule
from ptt_nb.rules._references import cite
from ptt_nb.rules._windows import Baseline, Window

_ZERO_STD = 1e-8  # TRL's per-function std of identical rewards is exactly 0.0


class _FuncState:
    """One reward function's running facts: O(1) per log point (a ring of 10 flat/not-flat flags, inline)."""

    __slots__ = ("name", "mean_key", "std_key", "ring", "i", "count", "flat", "varied", "hi", "lo", "n")

    def __init__(self, name: str) -> None:
        self.name = name
        self.mean_key = f"rewards/{name}/mean"
        self.std_key = f"rewards/{name}/std"
        self.ring = [0] * 10  # 1 where the function's std was 0 at that log
        self.i = 0
        self.count = 0  # logs in the ring (≤ 10)
        self.flat = 0  # sum of the ring
        self.varied = False  # std > 0 at some log since the start
        self.hi = -math.inf  # running max / min of the function's mean
        self.lo = math.inf
        self.n = 0


class RlRewardFuncFlat(Rule):
    """Per reward function of a multi-reward GRPO/RLOO run (``rewards/<fn>/mean``, ``rewards/<fn>/std``).

    A function whose std is 0 gives every completion of a group the same reward: it adds nothing to the
    advantage, exactly as a zero-variance group does (DAPO's argument, applied per function); the aggregate
    ``frac_reward_zero_std`` (``grpo_zero_variance_groups``) cannot see it while another function still moves.
    Thresholds in logged points: a function flat at every log since the first is a configuration bug (high; it
    returns a constant: a wrong dataset column or kwarg, a parser that never matches); one that varied before and
    has std 0 in ≥ 8 of the last 10 logs is dead, or saturated when its mean sits at its running max (medium).
    ``for_logs = 5``: five logs in a row (the healthy multi-reward run's sparse reward has std 0 at isolated logs,
    never at more than 3 of 10). Single-function runs are left to ``grpo_zero_variance_groups``."""

    id = "rl_reward_func_flat"
    title = "A reward function is constant (dead or saturated) while the others move"
    severity = "medium"
    keys = ("reward_std",)
    algorithms = RL
    action = ("Print the function's outputs on a few completions. Never varied: fix the function (its kwargs "
              "name real dataset columns, its parser matches the completions' format). Saturated: make it harder, "
              "drop it, or lower its weight in reward_weights; dead at its floor: check the prompt asks for "
              "the format it grades.")
    reference, url = cite("dapo", "trl_docs")
    panels = ("rl_reward_std", "rl_reward")
    for_logs = 5

    def __init__(self) -> None:
        self.funcs: list[_FuncState] | None = None

    def _discover(self, values: dict[str, float]) -> list[_FuncState]:
        names = [k[8:-4] for k in values if k.startswith("rewards/") and k.endswith("/std") and
                 f"rewards/{k[8:-4]}/mean" in values]
        return [_FuncState(n) for n in names]

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        funcs = self.funcs
        if funcs is None:
            funcs = self.funcs = self._discover(v)
        if len(funcs) < 2:
            return None
        moving = 0
        flat_now: list[tuple[_FuncState, float]] | None = None
        for f in funcs:
            s = v.get(f.std_key)
            m = v.get(f.mean_key)
            if s is None or m is None or s - s != 0.0 or m - m != 0.0:
                continue
            flat = 1 if -_ZERO_STD <= s <= _ZERO_STD else 0
            ring = f.ring
            i = f.i
            f.flat += flat - ring[i]
            ring[i] = flat
            f.i = 0 if i == 9 else i + 1
            if f.count < 10:
                f.count += 1
            f.n += 1
            if m > f.hi:
                f.hi = m
            if m < f.lo:
                f.lo = m
            if flat:
                if flat_now is None:
                    flat_now = []
                flat_now.append((f, m))
            else:
                f.varied = True
                moving += 1
        if flat_now is None or not moving:
            return None  # nothing flat, or every function flat (the aggregate zero-variance rule's case)
        bad: list[tuple[_FuncState, float, str]] = []
        for f, m in flat_now:
            if not f.varied:
                bad.append((f, m, "never"))
            elif f.count == 10 and f.flat >= 8:
                span = max(f.hi - f.lo, abs(f.hi), 1e-12)
                bad.append((f, m, "saturated" if m >= f.hi - 1e-6 * span else "dead"))
        if not bad:
            return None
        never = any(kind == "never" for _, _, kind in bad)
        parts = []
        ev: dict[str, float] = {}
        for f, m, kind in bad:
            ev[f.mean_key] = m
            ev[f"{f.name}_flat_logs_w10"] = float(f.flat)
            if kind == "never":
                parts.append(f"`{f.name}` has returned the same reward for every completion at all {f.n} logs "
                             f"since the start (mean {_g(m)}, std 0): a configuration bug (or a task no "
                             "completion can score on), not a learning outcome")
            elif kind == "saturated":
                parts.append(f"`{f.name}` is saturated: pinned at its max {_g(f.hi)} with std 0 in "
                             f"{f.flat} of the last 10 logs")
            else:
                parts.append(f"`{f.name}` is dead: std 0 in {f.flat} of the last 10 logs (mean "
                             f"{_g(m)}, range so far {_g(f.lo)}..{_g(f.hi)})")
        ev["moving_functions"] = float(moving)
        msg = "; ".join(parts) + f", while {moving} other reward function(s) still vary: it adds no advantage."
        return Finding(msg, ev, severity="high" if never else None)


class RlEmptyCompletions(Rule):
    """TRL counts the EOS token in ``completions/*_length``, so an empty completion (EOS at once) has length 1 and
    any non-empty one ≥ 2: the fraction of empty completions is at least ``2 − completions/mean_length``. High when
    that bound is ≥ 50% (mean length ≤ 1.5), critical when ``completions/max_length`` ≤ 1 (every completion empty).
    (TRL 1.16 GRPO/RLOO keep the first EOS in the completion mask, so ``completions/min_length`` is never 0 there:
    "min_length → 0" reads as min_length 1.) ``for_logs = 3``. Inert when ``max_completion_length`` < 2 (a
    one-token budget makes length 1 legitimate). Healthy tiny runs have a mean length of 8-16 (an isolated empty
    completion, min_length 1, is normal)."""

    id = "rl_empty_completions"
    title = "Most completions are empty (EOS at once)"
    severity = "high"
    keys = ("completions/mean_length",)
    algorithms = RL
    action = ("Check the reward does not favour short answers (a length penalty, a reward for 'no error'), "
              "lower the learning rate, check the chat template / generation prompt (add_generation_prompt) and "
              "that eos_token_id is not the first token the template expects; "
              "mask_truncated_completions does not help here.")
    reference, url = cite("trl_docs")
    panels = ("rl_lengths", "rl_reward")
    for_logs = 3

    def on_start(self, ctx: Context) -> Finding | None:
        mcl = ctx.config.get("max_completion_length")
        self.inert = isinstance(mcl, int) and mcl < 2
        return None

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        ln = v["completions/mean_length"]
        if ln - ln != 0.0 or ln > 1.5:
            return None
        frac = min(1.0, 2.0 - ln)
        mx = v.get("completions/max_length")
        every = mx is not None and mx <= 1.0
        return Finding(f"Mean completion length {_g(ln)} tokens (EOS included): at least {frac:.0%} of completions "
                       f"are empty{' (max_length ' + _g(mx) + ': all of them)' if every else ''}, for "
                       f"{self.held_logs} logs.", {"completions/mean_length": ln, "empty_fraction_min": frac,
                                                   "completions/max_length": mx if mx is not None else math.nan,
                                                   "logs": float(self.held_logs)},
                       severity="critical" if every else None)


class RlLengthCollapse(Rule):
    """Mean completion length falling far below the run's own start: B = median of the first 5 logged
    ``completions/mean_length`` (needs B ≥ 4 tokens), fires when the mean of the last 5 logs is < 0.4·B for 3 logs
    in a row (``for_logs``). Healthy tiny runs swing ±30% around their start (four completions a log), so 0.4
    leaves room. The near-empty range (W5 mean ≤ 1.5) is left to ``rl_empty_completions``; the opposite
    direction is ``rl_length_hacking``'s."""

    id = "rl_length_collapse"
    title = "Completions collapsing to a fraction of their early length"
    severity = "medium"
    keys = ("completions/mean_length",)
    algorithms = RL
    action = ("Look at recent completions: a reward that pays for brevity or penalises every token (or errors "
              "a short answer avoids) is being gamed; rebalance reward_weights, lower the learning rate, or raise "
              "beta to hold the policy near the reference.")
    reference, url = cite("dr_grpo", "trl_docs")
    panels = ("rl_lengths", "rl_reward")
    for_logs = 3

    def __init__(self) -> None:
        self.base = Baseline(5)
        self.w5 = Window(5)

    def check(self, ctx: Context) -> Finding | None:
        ln = ctx.values["completions/mean_length"]
        if ln - ln != 0.0:
            return None
        self.w5.push(ln)
        b = self.base.value
        if b is None:
            self.base.push(ln)  # the window is full when the baseline is (both 5 values)
            return None
        if b < 4.0:
            return None
        m = self.w5.exact_mean()
        if m >= 0.4 * b or m <= 1.5:
            return None
        return Finding(f"Mean completion length over the last 5 logs is {_g(m)} tokens, {m / b:.0%} of the run's "
                       f"start ({_g(b)}): completions are collapsing.",
                       {"mean_length_w5": m, "baseline": b, "ratio": m / b})


class OdpoDegenerateCompletions(Rule):
    """Online DPO logs no completion length; it logs the batch means of the summed log-probs of the two sampled
    completions (``logps/chosen``, ``logps/rejected``). Their average above ln ½ (a typical whole completion has
    probability > ½ under the policy) with every completion ending in EOS means the policy samples one
    near-certain, short (typically empty) completion: the two completions of a pair are often identical
    (``rewards/margins`` exactly 0) and the preference carries no signal. ``for_logs = 3``. Healthy tiny runs log
    −10 to −40 nats; the provoked run crosses ln ½ after ~15 logs, with single logs still dipping to −1 (one
    pair of distinct completions), which is why the average is read and not each side."""

    id = "odpo_degenerate_completions"
    title = "Online DPO samples one near-certain (empty) completion"
    severity = "high"
    keys = ("logps/chosen",)
    algorithms = frozenset({"online_dpo"})
    action = ("Check the reward does not favour short answers, lower the learning rate or raise beta, keep "
              "temperature ≈ 1 for sampling; check the chat template and that the prompt does not end where EOS "
              "is the only continuation.")
    reference, url = cite("trl_docs", "dpo")
    panels = ("pref_logps", "odpo_eos", "odpo_scores")
    for_logs = 3

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        c = v["logps/chosen"]
        r = v.get("logps/rejected")
        e = v.get("val/contain_eos_token")
        if r is None or e is None or c - c != 0.0 or r - r != 0.0 or e - e != 0.0:  # inline finite()
            return None
        if 0.5 * (c + r) <= -LN2 or e < 0.99:
            return None
        return Finding(f"logps/chosen {_g(c)} and logps/rejected {_g(r)} (mean > ln ½) with every completion ending in "
                       f"EOS for {self.held_logs} logs: the policy emits one near-certain completion, most likely "
                       "empty; the pairs carry no preference signal.",
                       {"logps/chosen": c, "logps/rejected": r, "val/contain_eos_token": e,
                        "logs": float(self.held_logs)})


class RlToolFailures(Rule):
    """GRPO with ``tools=``: TRL logs ``tools/failure_frequency`` = failed calls / calls at each log, and 0.0 when no
    call was made, so only logs with calls (``tools/call_frequency`` > 0) are read. High when the mean of the last 5
    such logs is ≥ 0.5 (most calls fail: the policy learns from error messages, not results); medium when it has
    risen ≥ 0.25 above its start (B = mean of the first 5 such logs). ``for_logs = 3``. A healthy tool fails
    at none of its calls in the tiny runs."""

    id = "rl_tool_failures"
    title = "Tool calls failing"
    severity = "high"
    keys = ("tools/failure_frequency",)
    algorithms = frozenset({"grpo"})
    action = ("Read a failing completion's tool message (its error text): fix the tool or its schema (the "
              "docstring's Args drive the JSON schema the model sees), reward well-formed calls, or cap "
              "max_tool_calling_iterations; a tool that raises on bad arguments should return an error string the "
              "reward can grade.")
    reference, url = cite("trl_docs")
    panels = ("rl_tools", "rl_reward")
    for_logs = 3

    def __init__(self) -> None:
        self.w5 = Window(5)  # the last 5 logs with calls
        self.base: float | None = None  # the mean of the first 5 logs with calls

    def check(self, ctx: Context) -> Finding | None:
        v = ctx.values
        f = v["tools/failure_frequency"]
        calls = v.get("tools/call_frequency")
        if calls is None or f - f != 0.0 or calls - calls != 0.0 or calls <= 0.0:
            return None
        w5 = self.w5
        w5.push(f)
        if not w5.full:
            return None
        m = w5.exact_mean()
        if self.base is None:
            self.base = m
        b = self.base
        ev = {"failure_frequency_w5": m, "tools/call_frequency": calls}
        if m >= 0.5:
            every = m >= 1.0
            return Finding(f"{'Every' if every else f'{m:.0%} of the'} tool call{'' if every else 's'} failed over "
                           "the last 5 logs with calls: the tool raises or the calls are malformed.", ev)
        if b is not None and m >= b + 0.25:
            ev["baseline"] = b
            return Finding(f"Tool-call failures rose to {m:.0%} (mean of 5 logs) from {b:.0%} at the start.", ev,
                           severity="medium")
        return None


class RlToolCallsCollapse(Rule):
    """GRPO with ``tools=``: ``tools/call_frequency`` (calls per completion; its mean over the last 5 logs, W5)
    falling to under a fifth of its peak (the highest W5 so far, ≥ 0.1), for 3 logs in a row (``for_logs``): the
    policy has learnt not to use the tool (a reward that a tool-free answer earns as well, or tool calls that fail
    or cost length). The peak, not the first logs, is the reference: a penalised tool run collapses within its
    first 5 logs. Not "exactly 0": once calls are rare few groups hold one, so the decay toward 0 is slow (0-0.25 a
    log with 4 completions). Healthy tiny tool runs stay above half their peak."""

    id = "rl_tool_calls_collapse"
    title = "The policy stopped calling its tools"
    severity = "medium"
    keys = ("tools/call_frequency",)
    algorithms = frozenset({"grpo"})
    action = ("Check the reward needs the tool's result (a tool-free answer should not score as well), that "
              "tool calls do not fail (tools/failure_frequency) and that tool output does not eat "
              "max_completion_length; reward a correct use of the tool.")
    reference, url = cite("trl_docs")
    panels = ("rl_tools", "rl_reward")
    for_logs = 3

    def __init__(self) -> None:
        self.w5 = Window(5)
        self.peak = 0.0

    def check(self, ctx: Context) -> Finding | None:
        c = ctx.values["tools/call_frequency"]
        if c - c != 0.0:
            return None
        w5 = self.w5
        w5.push(c)
        if not w5.full:
            return None
        m = w5.exact_mean()
        if m > self.peak:
            self.peak = m
        p = self.peak
        if p < 0.1 or m >= 0.2 * p:
            return None
        return Finding(f"Tool calls per completion fell to {_g(m)} (mean of the last 5 logs) from a peak of {_g(p)}: "
                       "the policy has stopped using its tools.", {"call_frequency_w5": m, "peak_w5": p})


def rl_signal_rules() -> list[Rule]:
    """Fresh instances of this module's rules."""
    return [RlRewardFuncFlat(), RlEmptyCompletions(), RlLengthCollapse(), OdpoDegenerateCompletions(), RlToolFailures(),
            RlToolCallsCollapse()]
