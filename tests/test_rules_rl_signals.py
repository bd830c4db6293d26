"""The issue-15 RL signal rules (``ptt_nb/rules/_catalog_rl_signals.py``) on real TRL runs.

Each rule fires on a real tiny TRL 1.16 run whose pathology was provoked through a real mechanism (recorded by
``tests/data/record_rl_signals.py`` into ``tests/data/rl_signals/``: a constant reward function, a capped reward
the policy saturates, one that dies at its floor, a reward paying for brevity, a tool that raises, a tool that
degrades as it is used, a reward penalising tool calls) and stays
silent on the healthy recordings (``tests/data/healthy_{grpo,rloo,online_dpo}.jsonl``, a healthy multi-reward
GRPO/RLOO run and a healthy tool run). One live test runs a real GRPO with a constant second reward function.
"""

from __future__ import annotations

import pytest

from ptt_nb.events import RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.rules._catalog import catalog_rules
from ptt_nb.rules._catalog_rl_signals import rl_signal_rules
from tests.test_rules_calibration import DATA, recorded_runs, replay

IDS = {"rl_reward_func_flat", "rl_empty_completions", "rl_length_collapse", "odpo_degenerate_completions",
       "rl_tool_failures", "rl_tool_calls_collapse"}


def runs(name: str) -> list[list]:
    return recorded_runs(f"rl_signals/{name}")


def mine(mon: Monitor) -> list:
    """The episodes of this module's rules (``Monitor.alerts`` holds one entry per episode, open or resolved)."""
    return [a for a in mon.alerts if a.rule in IDS]


def opened(mon: Monitor, rule_id: str) -> list:
    return [a for a in mon.alerts if a.rule == rule_id]


def test_recordings_are_small() -> None:
    files = sorted((DATA / "rl_signals").glob("*.jsonl"))
    assert len(files) == 9
    assert all(p.stat().st_size < 100_000 for p in files), [(p.name, p.stat().st_size) for p in files]


def test_rules_are_in_the_catalog_with_the_contract() -> None:
    from ptt_nb.monitor._profiles import GENERIC, PROFILES

    panel_ids = {p["id"] for prof in (*PROFILES, GENERIC) for p in prof.panels}
    rules = rl_signal_rules()
    assert {r.id for r in rules} == IDS
    assert IDS <= {r.id for r in catalog_rules()}
    for r in rules:
        assert r.title and r.action and r.reference and r.url.startswith("https://"), r.id
        assert r.panels and set(r.panels) <= panel_ids, (r.id, set(r.panels) - panel_ids)
        assert r.for_logs >= 3, r.id  # persistence is the engine's
        assert r.algorithms and r.keys, r.id


# ---- silent on healthy real runs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["healthy_grpo", "healthy_rloo", "healthy_online_dpo"])
def test_silent_on_the_healthy_recordings(name: str) -> None:
    for run in recorded_runs(name):
        assert not mine(replay(run)), [(a.rule, a.step, a.message) for a in mine(replay(run))]


def test_silent_on_healthy_multi_reward_and_tool_runs() -> None:
    grpo, rloo = runs("multi_reward_grpo")
    healthy_tools = runs("tools_grpo")[0]
    for run in (grpo, rloo, healthy_tools):
        assert not mine(replay(run)), [(a.rule, a.step, a.message) for a in mine(replay(run))]
    # the healthy runs do log what the rules read, and the sparse reward is flat at some logs
    keys = set().union(*(e.values for e in grpo[1:]))
    assert {"rewards/length_reward/std", "rewards/good_reward/std"} <= keys
    assert any(e.values.get("rewards/good_reward/std") == 0 for e in grpo[1:])
    assert all(e.values["tools/call_frequency"] > 0 for e in healthy_tools[1:] if e.split == "train")
    assert all(e.values["tools/failure_frequency"] == 0 for e in healthy_tools[1:] if e.split == "train")


# ---- per reward function -------------------------------------------------------------------------------------

def test_constant_reward_function_is_a_configuration_bug() -> None:
    (run,) = runs("constant_reward_grpo")
    got = opened(replay(run), "rl_reward_func_flat")
    assert got and got[0].severity == "high"
    first = got[0]
    assert first.step == 5  # for_logs = 5, flat from log 1
    assert "constant_reward" in first.message and "configuration bug" in first.message
    assert "length_reward" not in first.message  # the moving function is not blamed
    assert first.evidence["rewards/constant_reward/mean"] == 1.0


def test_saturated_reward_function_named_while_the_others_move() -> None:
    (run,) = runs("saturated_reward_grpo")
    mon = replay(run)
    got = opened(mon, "rl_reward_func_flat")
    assert got, [(a.rule, a.step) for a in mon.alerts]
    assert {a.severity for a in got} == {"medium"}  # it varied early: not a configuration bug
    assert "capped_length" in got[0].message and "saturated" in got[0].message
    assert "good_reward" not in got[0].message
    assert got[0].evidence["rewards/capped_length/mean"] == 1.0


def test_dead_reward_function_at_its_floor() -> None:
    (run,) = runs("dead_reward_grpo")
    got = opened(replay(run), "rl_reward_func_flat")
    assert got and {a.severity for a in got} == {"medium"}
    assert "`brief_bonus` is dead" in got[0].message and "saturated" not in got[0].message
    assert got[0].evidence["rewards/brief_bonus/mean"] == 0.0


def test_single_reward_function_is_left_to_the_aggregate_rule() -> None:
    (run,) = runs("short_reward_grpo")
    assert not opened(replay(run), "rl_reward_func_flat")


# ---- degenerate completions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["short_reward_grpo", "short_reward_rloo"])
def test_brevity_reward_collapses_then_empties_completions(name: str) -> None:
    (run,) = runs(name)
    mon = replay(run)
    collapse = opened(mon, "rl_length_collapse")
    empty = opened(mon, "rl_empty_completions")
    assert collapse and empty, [(a.rule, a.severity, a.step) for a in mon.alerts]
    assert collapse[0].severity == "medium" and collapse[0].step <= empty[0].step
    assert collapse[-1].resolved_step is not None  # it hands over to rl_empty_completions (W5 mean ≤ 1.5)
    assert empty[0].severity in ("high", "critical")
    assert empty[0].evidence["empty_fraction_min"] >= 0.5
    assert collapse[0].evidence["ratio"] < 0.4


def test_empty_completions_inert_with_a_one_token_budget() -> None:
    (run,) = runs("short_reward_grpo")
    start = run[0]
    one = RunStart(**{**start.__dict__, "config": {**start.config, "max_completion_length": 1}})
    assert not opened(replay([one, *run[1:]]), "rl_empty_completions")


def test_online_dpo_collapses_onto_one_completion() -> None:
    (run,) = runs("short_reward_online_dpo")
    got = opened(replay(run), "odpo_degenerate_completions")
    assert got and got[0].severity == "high"
    ev = got[0].evidence
    assert ev["logps/chosen"] + ev["logps/rejected"] > -2 * 0.6931


# ---- tools ---------------------------------------------------------------------------------------------------

def test_tool_that_always_raises() -> None:
    run = runs("tools_grpo")[1]
    got = opened(replay(run), "rl_tool_failures")
    assert got and got[0].severity == "high" and got[0].message.startswith("Every tool call failed")
    assert not opened(replay(run), "rl_tool_calls_collapse")


def test_degrading_tool_failures_rise() -> None:
    (run,) = runs("flaky_tool_grpo")
    got = opened(replay(run), "rl_tool_failures")
    assert got and got[0].severity == "medium" and "rose" in got[0].message
    assert got[0].evidence["failure_frequency_w5"] >= got[0].evidence["baseline"] + 0.25


def test_policy_stops_calling_a_penalised_tool() -> None:
    run = runs("tools_grpo")[2]
    mon = replay(run)
    got = opened(mon, "rl_tool_calls_collapse")
    assert got and got[0].severity == "medium", [(a.rule, a.step) for a in mon.alerts]
    assert got[0].evidence["call_frequency_w5"] < 0.2 * got[0].evidence["peak_w5"]
    assert len(got) == 1  # one episode: the calls do not come back
    assert not opened(mon, "rl_tool_failures")


# ---- live ----------------------------------------------------------------------------------------------------

def test_live_grpo_with_a_constant_reward_function(tmp_path) -> None:
    """A real GRPO run (5 steps, two reward functions, the second constant): the rule reads TRL's live keys."""
    from ptt_nb import DiagnosticsCallback, tiny
    from tests.data.record_rl_signals import rl_trainer

    cb = DiagnosticsCallback(run_dir=tmp_path / "run", widget=False, console=False)
    rl_trainer("grpo", str(tmp_path), cb, [tiny.length_reward, tiny.constant_reward], max_steps=5).train()
    got = [a for a in cb.monitor.alerts if a.rule == "rl_reward_func_flat"]
    assert got and got[0].severity == "high" and "constant_reward" in got[0].message


def test_non_finite_values_never_break_the_rules() -> None:
    """Every value of every recorded run made NaN at log 3 (and the per-function std made inf at log 4): no rule
    is disabled, and the provoked episodes still open."""
    for name in ("constant_reward_grpo", "saturated_reward_grpo", "short_reward_grpo", "short_reward_online_dpo",
                 "tools_grpo"):
        for run in runs(name):
            events = [run[0]]
            for e in run[1:]:
                if e.step == 3:
                    e = type(e)(**{**e.__dict__, "values": {k: float("nan") for k in e.values}})
                elif e.step == 4:
                    e = type(e)(**{**e.__dict__, "values": {k: float("inf") if k.endswith("/std") else x
                                                            for k, x in e.values.items()}})
                events.append(e)
            mon = replay(events)
            assert not [a for a in mon.alerts if a.rule == "rule_error"], name
    assert opened(replay(events), "rl_tool_calls_collapse")  # the last run of tools_grpo, perturbed
