"""Custom rules end to end: YAML packs (positions, hostile packs), @rule functions, rules inside a real Monitor,
``for N steps``, overriding a built-in, runtime errors, backtest, and a rule folder in a real tiny DPO run."""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ptt_nb.events import RunStart
from ptt_nb.monitor._history import MetricHistory
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.rules._backtest import backtest, backtest_many
from ptt_nb.rules._custom import (
    DslRule,
    FunctionRule,
    as_rules,
    known_keys,
    load_rule_dir,
    load_rule_file,
    parse_rules,
    rule,
)
from ptt_nb.rules._dsl import RuleSyntaxError
from ptt_nb.rules._engine import Finding, RuleError

from .conftest import REPO, events_of

RULES = REPO / "tests" / "data" / "rules"


def start(monitor: Monitor, algorithm: str = "dpo", config: dict | None = None, max_steps: int = 100) -> Monitor:
    monitor.start(RunStart(run_id="t", trainer="DPOTrainer", algorithm=algorithm, config=config or {"beta": 0.1},
                           max_steps=max_steps))
    return monitor


def margins_series(n: int = 80) -> list[float]:
    """+1 until step 40, -1 for steps 41..59, +1 again from 60."""
    return [(-1.0 if 41 <= s <= 59 else 1.0) for s in range(1, n + 1)]


def feed(monitor: Monitor, margins: list[float]) -> None:
    for step, m in enumerate(margins, start=1):
        monitor.log(step, {"loss": 0.69, "grad_norm": 1.0, "rewards/margins": m, "rewards/accuracies": 0.5})


def opened(monitor: Monitor, rule_id: str) -> list[int]:
    return [a.step for a in monitor.alerts if a.rule == rule_id and a.state in ("active", "resolved")]


def reference_steps(margins: list[float], window: int, hold: int) -> list[int]:
    """Independent reference for `mean(m, window) < 0 for hold steps`: steps where an episode opens."""
    out, streak, active = [], 0, False
    for i in range(len(margins)):
        cond = i + 1 >= window and np.mean(margins[i + 1 - window:i + 1]) < 0
        streak = streak + 1 if cond else 0
        fire = streak >= hold
        if fire and not active:
            out.append(i + 1)
        active = fire
    return out


# -- YAML packs -----------------------------------------------------------------------------------------------------

def test_example_pack_loads_with_derived_keys_and_defaults():
    rules = {r.id: r for r in load_rule_file(RULES / "dpo_examples.yaml")}
    m = rules["margin_negative_custom"]
    assert isinstance(m, DslRule)
    assert m.keys == ("rewards/margins",)  # dispatch keys come from `when`
    assert m.metric_keys == ("rewards/margins", "rewards/accuracies")  # ... the message's are only read
    assert m.for_steps == 3 and m.severity == "high" and m.splits == ("train",)
    assert m.algorithms == frozenset({"dpo", "online_dpo", "kto", "orpo", "cpo"})  # from defaults:
    assert m.url == "https://arxiv.org/abs/2305.18290" and m.panels == ("pref_margin", "pref_accuracy")
    assert m.source.endswith("dpo_examples.yaml:9")
    assert rules["chosen_logps_falling"].keys == ("logps/chosen", "rewards/margins", "rewards/chosen")
    assert rules["beta_out_of_range"].keys == ()  # config-only: a train-start check
    assert rules["beta_out_of_range"].algorithms == frozenset({"dpo"})  # own value beats defaults:


def test_grpo_example_pack_reads_slash_keys_without_warnings():
    rules = load_rule_file(RULES / "grpo_examples.yaml", known_keys=known_keys("grpo"))
    assert [r.keys for r in rules] == [("frac_reward_zero_std",), ("clip_ratio/region_mean",),
                                       ("completions/mean_length", "rewards/length_reward/mean"),
                                       ("completions/clipped_ratio",)]
    assert all(r.warnings == [] for r in rules)
    h = MetricHistory()
    for step in range(1, 31):  # lengths grow by 2 tokens per step, the length reward stays flat
        h.add(step, "train", {"completions/mean_length": 10.0 + 2 * step, "rewards/length_reward/mean": 0.5,
                              "frac_reward_zero_std": 1.0 if step > 10 else 0.0, "completions/clipped_ratio": 0.0})
    results = {r.rule_id: r for r in backtest_many(rules, h, algorithm="grpo")}
    assert results["lengths_grow_reward_flat"].steps == [20]
    assert results["lengths_grow_reward_flat"].messages == [
        "Mean length slope +2.00 tokens/step while the reward slope is +0.000."]
    # mean over 10 logs > 0.5 from step 16 (6 of 10 at 1.0); fifth consecutive at step 20
    assert results["zero_std_groups_custom"].steps == [20]
    assert results["zero_std_groups_custom"].messages[0].startswith("100% of groups")
    assert results["clip_region_high"].checked == 0 and results["truncation_custom"].steps == []


def test_yaml_forms_single_rule_list_and_one_line():
    one = parse_rules("id: r1\nwhen: loss > 2\n")
    assert [r.id for r in one] == ["r1"]
    many = parse_rules("- id: a\n  when: loss > 1\n- id: b\n  when: 'm(\"kl\") > 2 for 4 steps'\n")
    assert [(r.id, r.for_steps, r.keys) for r in many] == [("a", 1, ("loss",)), ("b", 4, ("kl",))]
    line = parse_rules("mean(`rewards/margins`, 5) < 0 for 2 steps")
    assert len(line) == 1 and line[0].id.startswith("custom_") and line[0].for_steps == 2
    assert parse_rules("mean(`rewards/margins`, 5) < 0 for 2 steps")[0].id == line[0].id  # stable id
    assert parse_rules("") == [] and parse_rules("# only a comment\n") == []
    (commented,) = parse_rules("# why this rule\n  loss > 2\n")
    assert commented.when == "loss > 2"
    with pytest.raises(RuleSyntaxError) as info:
        parse_rules("# why\nloss > > 2\n", "<cell>")
    assert (info.value.line, info.value.col) == (2, 8)
    with pytest.raises(RuleSyntaxError) as info:  # positions are those in the text after its blank lead
        parse_rules("\n  # why\n\n   loss > > 2\n", "<cell>")
    assert (info.value.line, info.value.col) == (3, 11)


@pytest.mark.parametrize("text, message, line, col", [
    # expression errors mapped into the file: plain, quoted, block and folded scalars
    ("- id: x\n  when: mean(loss, 10) > > 2\n", "when: syntax error: invalid syntax", 2, 26),
    ('- id: x\n  when: "mean(loss, 10) > foo(2)"\n', "when: unknown function foo()", 2, 27),
    ("- id: x\n  when: 'loss > 1 and x[0]'\n", "when: subscripts", 2, 24),
    ("- id: x\n  when: |\n    mean(loss, 10) > 2\n      and loss.__class__\n", "when: attribute access", 4, 15),
    ("- id: x\n  when: >\n    mean(loss, 10) > 2\n    and __import__('os')\n", "when: dunder names", 4, 9),
    ("- id: x\n  when: loss > 1\n  message: 'bad {0.__class__}'\n", "message: positional fields", 3, 18),
    ("- id: x\n  when: loss > 1\n  message: \"v {mean(loss, 10) > foo(1)}\"\n", "message: in message field", 3, 33),
    ("- id: x\n  when: loss > 1\n  message: bad {value:99999}\n", "format spec '99999' not allowed", 3, 23),
    # YAML itself
    ("- id: x\n  when: `rewards/margins` < 0\n", "quote the whole expression", 2, 9),
    ("- id: x\n  when: [unclosed\n", "YAML error", 3, 1),
    ("- id: x\n  when: !!python/object/apply:os.system ['true']\n", "YAML tag !!python/object/apply:os.system", 2, 9),
    ("- id: x\n  when: !custom loss > 1\n", "YAML tag !custom is not allowed", 2, 9),
    ("- id: &a x\n  when: loss > 1\n- id: *a\n  when: loss > 2\n", "YAML aliases (*name) are not allowed", 3, 7),
    ("- id: x\n  when: loss > 1\n  <<: {severity: high}\n", "YAML tag !!merge is not allowed", 3, 3),
    ("- id: x\n  when: loss > 1\n  when: loss > 2\n", "duplicate key 'when'", 3, 3),
    ("--- [a]\n--- [b]\n", "expected a single document", 2, 1),
    # rule structure
    ("- id: x\n  when: loss > 1\n  severty: high\n", "unknown field 'severty'; did you mean severity?", 3, 3),
    ("- id: x\n  severity: high\n", "rule is missing when:", 1, 3),
    ("- when: loss > 1\n", "rule is missing id:", 1, 3),
    ("- id: 1x\n  when: loss > 1\n", "id '1x' must start with a letter", 1, 7),
    ("- id: x\n  when: loss > 1\n  severity: hihg\n", "did you mean high?", 3, 13),
    ("- id: x\n  when: loss > 1\n  algorithms: [dpoo]\n", "unknown algorithm 'dpoo'; did you mean dpo?", 3, 15),
    ("- id: x\n  when: loss > 1\n  url: javascript:alert(1)\n", "url must be an http(s) link", 3, 8),
    ("- id: x\n  when: loss > 1\n  for: 0\n", "for must be a whole number from 1 to 10000", 3, 8),
    ("- id: x\n  when: loss > 1 for 2 steps\n  for: 3\n", "for: given twice", 3, 8),
    ("- id: x\n  when: loss > 1 for two steps\n", "with N a whole number", 2, 22),
    ("- id: x\n  when: yes\n", "YAML read this as a boolean", 2, 9),
    ("- id: x\n  when: step > 10\n", "the expression names no metric", 2, 9),
    ("- id: x\n  when: loss > 1\n  panels: {a: 1}\n", "panels: expected a list of names", 3, 11),
    ("- id: x\n  when: loss > 1\n  message: [a]\n", "message: expected text", 3, 12),
    ("- id: x\n  when: loss > 1\n- id: x\n  when: loss > 2\n", "duplicate rule id 'x' (first defined on line 1)", 3, 3),
    ("- loss > 1\n", "each rule must be a mapping", 1, 3),
    ("rules: {a: 1}\n", "rules: must be a list of rules", 1, 8),
    ("rules: []\nextra: 1\n", "unknown top-level key 'extra'", 2, 1),
    ("defaults: {when: x}\nrules: []\n", "defaults: cannot set 'when'", 1, 12),
    ("severity: high\n", "expected a list of rules, a mapping with rules:", 1, 1),
    ("- id: x\n  when: loss > 1\n  warmup_frac: 2\n", "warmup_frac must be a number from 0 to 1", 3, 16),
    ("- id: x\n  when: loss > 1\n  once: 1\n", "once must be true or false", 3, 9),
    ("- id: x\n  when: loss > 1\n  cooldown: -1\n", "cooldown must be a whole number from 0", 3, 13),
    ("- id: x\n  when: loss > 1\n  action: " + "a" * 4001 + "\n", "action: too long (4001 characters", 3, 11),
    ("- id: x\n  when: loss > 1\n  ? [a]\n  : 1\n", "mapping keys must be plain text", 3, 5),
    ("defaults: [a]\nrules: []\n", "expected a mapping (key: value lines)", 1, 11),
    ("- id: x\n  when: mean(loss, 10) > 2 and\n    loss.__class__\n", "when: attribute access", 3, 9),
    ("rules:\n" + "  - id: r\n    when: loss > 1\n" * 1001, "too many rules (1001; the limit is 1000)", 2, 3),
    ("- id: x\n  when: loss > 1\n  panels: " + "[" * 5000 + "]" * 5000 + "\n", "YAML nested too deeply", 3, 25),
])
def test_yaml_errors_name_file_line_and_column(text, message, line, col):
    with pytest.raises(RuleSyntaxError) as info:
        parse_rules(text, "pack.yaml")
    err = info.value
    assert message in err.message, str(err)
    assert (err.source, err.line, err.col) == ("pack.yaml", line, col), str(err)
    assert str(err).startswith(f"pack.yaml:{line}:{col}: ")


def test_fields_warmup_once_cooldown_keys_and_odd_inputs(tmp_path):
    (r,) = parse_rules("- id: x\n  when: loss > 1\n  warmup_steps: 3\n  warmup_frac: 0.5\n  once: true\n"
                       "  cooldown: 4\n  keys: [grad_norm]\n  title: T\n  for: 2\n")
    assert (r.warmup_steps, r.warmup_frac, r.once, r.cooldown, r.keys, r.title, r.for_steps) == (
        3, 0.5, True, 4, ("grad_norm",), "T", 2)
    assert r.metric_keys == ("loss",) and r.when == "loss > 1"
    # `keys:` decides dispatch: the rule runs when grad_norm arrives, reading loss
    monitor = start(Monitor(extra_rules=parse_rules("- id: k\n  when: loss > 1\n  keys: [grad_norm]\n")))
    monitor.log(1, {"loss": 2.0})
    monitor.log(2, {"grad_norm": 1.0})
    assert [a.step for a in monitor.alerts if a.rule == "k"] == [2]
    with pytest.raises(RuleError, match="expected text, got int"):
        parse_rules(3)
    with pytest.raises(RuleSyntaxError, match="rule text too large"):
        parse_rules("- id: x\n  when: loss > 1\n" + "#" * 1_000_001)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("- id: x\n  when: loss > 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(RuleSyntaxError, match="not UTF-8 text"):
        load_rule_file(bad)
    from ptt_nb.rules._dsl import compile_expr

    with pytest.raises(RuleError, match="names no metric"):
        DslRule(id="s", when=compile_expr("step > 3"))


def test_one_line_rule_errors_name_the_source():
    with pytest.raises(RuleSyntaxError) as info:
        parse_rules("mean(loss, 10) > > 2", "<cell>")
    assert (info.value.source, info.value.line, info.value.col) == ("<cell>", 1, 18)
    with pytest.raises(RuleSyntaxError, match="names no metric"):
        parse_rules("frac > 0.5", "<cell>")


def test_hostile_packs_are_refused_and_run_nothing(tmp_path):
    marker = Path("/tmp/ptt_nb_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(RuleSyntaxError) as info:
        load_rule_dir(RULES / "hostile" / "tag.yaml")
    assert "YAML tag !!python/object/apply:os.system is not allowed" in str(info.value)
    assert str(info.value).startswith(str(RULES / "hostile" / "tag.yaml") + ":3:9:")
    assert not marker.exists()
    with pytest.raises(RuleSyntaxError) as info:
        load_rule_dir(RULES / "hostile" / "expr.yaml")
    assert ":5:23: when: tuples are not allowed" in str(info.value)
    # a billion-laughs pack is refused at the first alias, without expansion
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(RuleSyntaxError, match="aliases"):
        parse_rules(laughs, "laughs.yaml")
    too_big = tmp_path / "big.yaml"
    too_big.write_text("# " + "x" * 1_000_001)
    with pytest.raises(RuleSyntaxError, match="rule file too large"):
        load_rule_file(too_big)


@pytest.mark.parametrize("pack, message", [
    ("- id: x\n  when: !!python/name:os.system loss\n", "YAML tag !!python/name:os.system is not allowed"),
    ("- !!python/object:ptt_nb.rules._custom.DslRule {id: x}\n", "YAML tag !!python/object:"),
    ("- id: x\n  when: !!python/object/new:subprocess.Popen [[touch, /tmp/x]]\n", "!!python/object/new"),
    ("- id: x\n  when: !!binary aGVsbG8=\n", "YAML tag !!binary is not allowed"),
    ("- id: x\n  when: loss > 1\n  panels: !!set {a, b}\n", "YAML tag !!set is not allowed"),
    ("- id: x\n  when: loss > 1\n  message: '{value.__class__.__mro__}'\n", "dunder names"),
    ("- id: x\n  when: loss > 1\n  message: '{0.__globals__}'\n", "positional fields"),
    ("- id: x\n  when: loss > 1\n  message: '{loss:{value}}'\n", "nested fields in a format spec"),
    ("- id: x\n  when: loss > 1\n  message: '{loss:>99999999999}'\n", "format spec"),
    ("- id: x\n  when: \"__import__('os').system('touch /tmp/x')\"\n", "dunder names"),
    ("- id: x\n  when: \"open('/etc/passwd') != 0\"\n", "unknown function open()"),
    ("- id: x\n  when: 9**9**9 > loss\n", "the exponent of ** must be a number"),
    ("- id: x\n  when: [1, 2]\n", "when: expected an expression"),
    ("- id: x\n  when: loss > 1\n  url: 'javascript:alert(1)'\n", "url must be an http(s) link"),
    ('- id: x\n  when: "`a\\ud800` > 1"\n', "text: text contains an invalid character (U+D800)"),
    ('- id: x\n  when: loss > 1\n  title: "bell\\a"\n', "text contains an invalid character (U+0007)"),
])
def test_hostile_yaml_constructs_are_refused(pack, message):
    with pytest.raises(RuleSyntaxError) as info:
        parse_rules(pack, "evil.yaml")
    assert message in str(info.value) and str(info.value).startswith("evil.yaml:")


def test_rule_dir_loading(tmp_path, caplog):
    shutil.copy(RULES / "dpo_examples.yaml", tmp_path / "a.yaml")
    (tmp_path / "b.yml").write_text("- id: kl_high\n  when: kl > 5\n")
    (tmp_path / "notes.txt").write_text("not a pack")
    assert [r.id for r in load_rule_dir(tmp_path)] == ["margin_negative_custom", "chosen_logps_falling",
                                                       "beta_out_of_range", "kl_high"]
    (tmp_path / "c.yaml").write_text("- id: kl_high\n  when: kl > 6\n")
    with pytest.raises(RuleError, match="rule id 'kl_high' is already defined in .*b.yml:1"):
        load_rule_dir(tmp_path)
    (tmp_path / "c.yaml").write_text("- id: broken\n  when: kl >\n")
    with caplog.at_level(logging.WARNING, logger="ptt_nb.rules"):
        rules = load_rule_dir(tmp_path, strict=False)
    assert "kl_high" in [r.id for r in rules] and "broken" not in [r.id for r in rules]
    assert "skipped rule file" in caplog.text and "c.yaml:2:" in caplog.text
    with pytest.raises(RuleError, match="does not exist"):
        load_rule_dir(tmp_path / "nope")
    (tmp_path / "d.yaml").write_text("loss > 1\n")
    with pytest.raises(RuleSyntaxError, match="expected a YAML rule pack"):
        load_rule_file(tmp_path / "d.yaml")


def test_unknown_metric_warns_with_close_matches(caplog):
    with caplog.at_level(logging.WARNING, logger="ptt_nb.rules"):
        (r,) = parse_rules("- id: typo\n  when: mean(`rewards/margin`, 5) < 0\n", "p.yaml",
                           known_keys=known_keys("dpo"))
    assert len(r.warnings) == 1
    assert "unknown metric 'rewards/margin'; close matches: rewards/margins" in r.warnings[0]
    assert "p.yaml:1" in caplog.text
    (ok,) = parse_rules("- id: fine\n  when: \"`rewards/length_reward/mean` > 0 and eval_loss > 0\"\n",
                        known_keys=known_keys("grpo"))
    assert ok.warnings == []  # glob panel keys (rewards/*/mean) and eval_ forms are known
    # at train start the rule checks the run's algorithm on its own
    monitor = Monitor(extra_rules=parse_rules("- id: typo2\n  when: grad_nrom > 1\n"))
    with caplog.at_level(logging.WARNING, logger="ptt_nb.rules"):
        start(monitor)
    assert "unknown metric 'grad_nrom'; close matches: grad_norm" in caplog.text


# -- inside a real Monitor ------------------------------------------------------------------------------------------

def test_dsl_rule_fires_at_exactly_the_expected_steps_in_a_monitor():
    (r,) = parse_rules("- id: neg\n  when: mean(`rewards/margins`, 10) < 0\n  for: 3\n  severity: high\n"
                       "  message: 'margin {value:.2f} at {step}'\n")
    monitor = start(Monitor(extra_rules=[r]))
    margins = margins_series()
    feed(monitor, margins)
    alerts = [a for a in monitor.alerts if a.rule == "neg"]
    # mean over 10 < 0 from step 46 (6 of 10 negative), third consecutive at 48 (8 of 10: -0.6); back to 0 at 64
    assert reference_steps(margins, 10, 3) == [48]
    assert [(a.step, a.state, a.resolved_step) for a in alerts] == [(48, "resolved", 64)]
    assert alerts[0].severity == "high" and alerts[0].message == "margin -0.60 at 48"
    assert alerts[0].evidence == {"value": pytest.approx(-0.6), "rewards/margins": -1.0}


def test_for_n_steps_needs_consecutive_log_points():
    values = [0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1]  # condition true at log points 2-3, 5-8, 10-12
    monitor = start(Monitor(extra_rules=parse_rules("x > 0.5 for 3 steps")))
    for step, v in enumerate(values, start=1):
        monitor.log(step * 5, {"x": float(v)})
    (rid,) = {a.rule for a in monitor.alerts}
    assert [(a.step, a.resolved_step) for a in monitor.alerts] == [(35, 45), (60, None)]
    assert monitor.alerts[0].message == f"{rid}: x > 0.5 held for 3 log points at step 35 (x = 1)."
    # without `for`, every true run opens at once
    monitor = start(Monitor(extra_rules=parse_rules("- id: now\n  when: x > 0.5\n")))
    for step, v in enumerate(values, start=1):
        monitor.log(step * 5, {"x": float(v)})
    assert [a.step for a in monitor.alerts] == [10, 25, 50]
    assert rid.startswith("custom_")


def test_unready_window_breaks_a_streak_and_eval_rules_run_on_eval_points():
    (r,) = parse_rules("- id: ev\n  when: eval_loss > 1.05 * min(eval_loss, 3)\n")
    assert r.splits == ("eval",)
    monitor = start(Monitor(extra_rules=[r]))
    for step in range(1, 41):
        monitor.log(step, {"loss": 1.0})
        if step % 10 == 0:
            monitor.log(step, {"eval_loss": {10: 1.0, 20: 0.9, 30: 0.92, 40: 1.2}[step]}, split="eval")
    assert [(a.step, a.state) for a in monitor.alerts if a.rule == "ev"] == [(40, "active")]


def test_custom_rule_overrides_a_builtin_by_id():
    monitor = start(Monitor())
    monitor.log(1, {"loss": math.nan, "grad_norm": 1.0})
    assert [a.rule for a in monitor.alerts] == ["nonfinite_values"]  # the built-in fires on one NaN

    monitor = start(Monitor(extra_rules=load_rule_dir(RULES / "override_nonfinite.yaml")))
    state = monitor.engine.states["nonfinite_values"]
    assert isinstance(state.rule, DslRule) and state.rule.source.endswith("override_nonfinite.yaml:2")
    assert list(monitor.engine.states).count("nonfinite_values") == 1
    for step, loss in enumerate([1.0, math.nan, 1.0, math.nan, math.inf, 1.0], start=1):
        monitor.log(step, {"loss": loss, "grad_norm": math.nan})  # the built-in would fire on grad_norm too
    alerts = [a for a in monitor.alerts if a.rule == "nonfinite_values"]
    assert [(a.step, a.resolved_step) for a in alerts] == [(5, 6)]
    assert alerts[0].severity == "critical" and alerts[0].message == "Loss is inf for 2 logs (step 5)."


def test_config_rule_runs_at_train_start_and_algorithm_filter():
    rules = load_rule_file(RULES / "dpo_examples.yaml")
    ids = {r.id for r in rules}
    monitor = start(Monitor(extra_rules=rules), config={"beta": 0.7})
    assert [(a.rule, a.step, a.severity) for a in monitor.alerts if a.rule in ids] == [("beta_out_of_range", 0, "low")]
    monitor = start(Monitor(extra_rules=load_rule_file(RULES / "dpo_examples.yaml")), config={"beta": 0.1})
    assert [a for a in monitor.alerts if a.rule in ids] == []
    monitor = start(Monitor(extra_rules=load_rule_file(RULES / "dpo_examples.yaml")), algorithm="grpo",
                    config={"beta": 0.7})
    assert not {"beta_out_of_range", "margin_negative_custom"} & set(monitor.engine.states)


def test_dsl_rule_that_raises_is_disabled_with_one_alert():
    (r,) = parse_rules("- id: logm\n  when: log(`rewards/margins`) < 5\n")
    monitor = start(Monitor(extra_rules=[r]))
    feed(monitor, [1.0, 2.0, -1.0, 1.0, -2.0, 3.0])
    alerts = [a for a in monitor.alerts if a.rule in ("logm", "rule_error")]
    assert [(a.rule, a.step) for a in alerts] == [("logm", 1), ("rule_error", 3)]
    err = alerts[1]
    assert "Rule 'logm'" in err.message and "log() of a negative number (-1.0)" in err.message
    assert monitor.engine.states["logm"].disabled.startswith("DslRuntimeError")


# -- @rule functions and as_rules -----------------------------------------------------------------------------------

def test_rule_decorator_forms():
    @rule(id="spike", keys=["grad_norm"], severity="high", message="grad {grad_norm:.1f}", for_steps=2)
    def spike(ctx):
        return ctx.values["grad_norm"] > 10

    @rule(keys="loss")
    def says(ctx):
        if ctx.values["loss"] > 5:
            return f"loss is {ctx.values['loss']}"
        if ctx.values["loss"] < 0:
            return Finding("negative loss", evidence={"loss": ctx.values["loss"]}, severity="critical")
        return None

    assert spike.id == "spike" and says.id == "says" and spike.__name__ == "spike"
    assert spike(type("C", (), {"values": {"grad_norm": 11.0}})()) is True  # still the plain function
    monitor = start(Monitor(extra_rules=as_rules([spike, says])))
    for step, (g, loss) in enumerate([(1, 1), (20, 1), (30, 9), (1, 9), (1, -1), (40, 1)], start=1):
        monitor.log(step, {"grad_norm": float(g), "loss": float(loss)})
    got = [(a.rule, a.step, a.state, a.severity, a.message) for a in monitor.alerts]
    assert got == [
        ("spike", 3, "resolved", "high", "grad 30.0"),
        ("says", 3, "resolved", "medium", "loss is 9.0"),
        ("says", 5, "resolved", "critical", "negative loss"),  # escalation: closes the medium episode
    ]
    assert isinstance(spike.make_rule(), FunctionRule) and spike.make_rule() is not spike.make_rule()


def test_rule_decorator_errors_and_raising_function():
    with pytest.raises(RuleError, match=r"@rule needs keys=\[...\]"):
        rule(keys=[])
    with pytest.raises(RuleError, match="severity 'urgent' is not one of"):
        rule(keys=["loss"], severity="urgent")(lambda ctx: True)
    with pytest.raises(RuleError, match="url must be an http"):
        rule(keys=["loss"], url="file:///etc/passwd")(lambda ctx: True)
    with pytest.raises(RuleSyntaxError, match="positional fields"):
        rule(keys=["loss"], message="{0.__class__}")(lambda ctx: True)

    @rule(keys=["loss"])
    def boom(ctx):
        return 1 / (ctx.step - 3) > 5

    @rule(keys=["loss"])
    def wrong_type(ctx):
        return 3.5

    monitor = start(Monitor(extra_rules=as_rules([boom, wrong_type])))
    for step in range(1, 6):
        monitor.log(step, {"loss": 1.0})
    errors = [(a.step, a.message) for a in monitor.alerts if a.rule == "rule_error"]
    assert errors[0][0] == 1 and "wrong_type" in errors[0][1] and "returned float" in errors[0][1]
    assert errors[1][0] == 3 and "'boom'" in errors[1][1] and "ZeroDivisionError" in errors[1][1]
    assert len(errors) == 2  # one alert each, then silence


def test_as_rules_accepts_mixed_inputs(tmp_path):
    from ptt_nb.rules._builtin import NonFiniteValues

    (tmp_path / "p.yaml").write_text("- id: from_dir\n  when: loss > 1\n")

    @rule(keys=["loss"])
    def fn_rule(ctx):
        return False

    got = as_rules([NonFiniteValues(), NonFiniteValues, fn_rule, "loss > 3", "- id: y\n  when: loss > 2\n",
                    tmp_path])
    assert [type(r).__name__ for r in got] == ["NonFiniteValues", "NonFiniteValues", "FunctionRule", "DslRule",
                                               "DslRule", "DslRule"]
    assert as_rules(None) == [] and len(as_rules("loss > 1")) == 1
    with pytest.raises(RuleError, match="is a plain function: decorate it with @rule"):
        as_rules([lambda ctx: True])
    with pytest.raises(RuleError, match="cannot make a rule from int"):
        as_rules([3])


# -- backtest -------------------------------------------------------------------------------------------------------

def history_from(margins: list[float]) -> MetricHistory:
    h = MetricHistory()
    for step, m in enumerate(margins, start=1):
        h.add(step, "train", {"loss": 0.69, "rewards/margins": m, "rewards/accuracies": 0.5})
    return h


def test_backtest_matches_the_live_monitor():
    margins = margins_series()
    text = "- id: neg\n  when: mean(`rewards/margins`, 10) < 0\n  for: 3\n"
    result = backtest(text, history_from(margins), algorithm="dpo")
    assert result.steps == [48] and result.count == 1 and result.first_step == 48
    assert result.episodes == [(48, 64)]
    assert result.examples == [{"value": pytest.approx(-0.6), "rewards/margins": -1.0}]
    assert result.checked == result.log_points == 80 and result.error is None
    assert "would have fired 1 time(s), first at step 48" in result.summary()
    quiet = backtest("`rewards/margins` > 5", history_from(margins))
    assert quiet.summary() == f"{quiet.rule_id}: would not have fired (80 of 80 log points checked)"
    # a rule object that is live elsewhere keeps its own state
    (live,) = parse_rules(text)
    live.streak = 2
    backtest(live, history_from(margins))
    assert live.streak == 2


def test_backtest_on_a_recorded_real_dpo_run_matches_live_evaluation():
    """tests/data/recorded_run: a real tiny DPO run (TRL 1.16). Backtest == the rule live in a Monitor fed the same
    events == an independent numpy reference."""
    from ptt_nb.events import Alert
    from ptt_nb.sources._reader import load_run, read_events

    recorded = REPO / "tests" / "data" / "recorded_run"
    text = "mean(`rewards/margins`, 5) > 0.05 and slope(loss, 5) < 0 for 2 steps"
    run = load_run(recorded)
    result = backtest(text, run.history, algorithm=run.run.algorithm, config=run.run.config,
                      max_steps=run.run.max_steps)
    live = Monitor(extra_rules=parse_rules(text))
    events, _problems = read_events(recorded)
    for event in events:
        if not isinstance(event, Alert):
            live.apply(event)
    rid = result.rule_id
    live_steps = [a.step for a in live.alerts if a.rule == rid]
    steps, margins = run.history.get("rewards/margins").arrays()
    _, loss = run.history.get("loss").arrays()
    expected, streak, active = [], 0, False
    for i in range(len(steps)):
        cond = i >= 4 and margins[i - 4:i + 1].mean() > 0.05 and np.polyfit(steps[i - 4:i + 1], loss[i - 4:i + 1],
                                                                              1)[0] < 0
        streak = streak + 1 if cond else 0
        if streak >= 2 and not active:
            expected.append(int(steps[i]))
        active = streak >= 2
    assert expected and result.steps == live_steps == expected
    assert result.warnings == [] and result.checked == len(steps)


def test_backtest_reports_errors_warnings_and_filters():
    h = history_from([1.0, -1.0, 1.0])
    bad = backtest("log(`rewards/margins`) > 0", h)
    assert bad.error.startswith("DslRuntimeError: log() of a negative number") and bad.error.endswith("(at step 2)")
    assert "raised at run time" in bad.summary()
    typo = backtest("`rewards/margin` > 0", h, algorithm="dpo")
    assert typo.steps == [] and "close matches: rewards/margins" in typo.warnings[0]
    other = backtest("- id: g\n  when: loss > 0\n  algorithms: [grpo]\n", h, algorithm="dpo")
    assert other.steps == [] and "does not apply to algorithm 'dpo'" in other.warnings[0]
    cfg = backtest("loss > 0 and step >= cfg('warmup_steps', 0) and frac > 0.5", h, config={"warmup_steps": 2},
                   max_steps=4)
    assert cfg.steps == [3]
    with pytest.raises(RuleError, match="backtest takes one rule, got 2"):
        backtest("- id: a\n  when: loss > 0\n- id: b\n  when: loss > 1\n", h)
    both = backtest_many("- id: a\n  when: loss > 0\n- id: b\n  when: '`rewards/margins` < 0'\n", h)
    assert [(r.rule_id, r.steps) for r in both] == [("a", [1]), ("b", [2])]


def test_backtest_of_a_builtin_starts_from_a_fresh_instance():
    from ptt_nb.rules._builtin import NonFiniteValues

    live = NonFiniteValues()
    live.grad_streak = 7
    h = MetricHistory()
    for step, g in enumerate([1.0, math.nan, math.nan, 1.0], start=1):
        h.add(step, "train", {"loss": 1.0, "grad_norm": g})
    result = backtest(live, h, config={"fp16": True})  # fp16: a NaN grad norm must persist for 3 logs
    assert result.steps == [] and live.grad_streak == 7
    assert backtest(live, h).steps == [2]


def test_backtest_python_rule_sees_every_key():
    @rule(keys=["loss"])
    def acc_low(ctx):
        return ctx.values.get("rewards/accuracies", 1.0) < 0.6 and ctx.step >= 2

    assert backtest(acc_low, history_from([1.0] * 5)).steps == [2]


def test_backtest_replays_points_in_live_order_with_growing_history():
    h = MetricHistory()
    h.add(1, "train", {"a": 1.0, "b": 2.0})
    h.add(2, "train", {"a": 3.0})
    h.add(2, "train", {"a": 4.0})  # the same step twice (a resumed run)
    h.add(2, "eval", {"eval_loss": 0.5})
    h.add(3, "train", {"a": 5.0, "b": 6.0})
    seen = []

    @rule(keys=["a", "b", "eval_loss"], splits=["train", "eval"])
    def spy(ctx):
        a = ctx.history.get("a")
        seen.append((ctx.step, ctx.split, dict(ctx.values), a.window(10).tolist() if a else []))
        return False

    result = backtest(spy, h)
    assert seen == [
        (1, "train", {"a": 1.0, "b": 2.0}, [1.0]),
        (2, "train", {"a": 3.0}, [1.0, 3.0]),
        (2, "train", {"a": 4.0}, [1.0, 3.0, 4.0]),
        (2, "eval", {"eval_loss": 0.5}, [1.0, 3.0, 4.0]),
        (3, "train", {"b": 6.0, "a": 5.0}, [1.0, 3.0, 4.0, 5.0]),
    ]
    assert result.log_points == result.checked == 5


def test_backtest_10k_steps_under_a_second():
    rng = np.random.default_rng(0)
    h = MetricHistory()
    for step in range(1, 10_001):
        values = {"loss": float(rng.normal(1, 0.05)), "grad_norm": float(abs(rng.normal(1, 0.1))),
                  "rewards/margins": float(rng.normal(0.2, 1)), "learning_rate": 1e-5, "epoch": step / 1e4}
        values.update({f"other/{i}": 1.0 for i in range(20)})
        if step % 1000 == 0:
            values["grad_norm"] = 50.0
        h.add(step, "train", values)
    rules = {
        "zscore(grad_norm, 50) > 6": 10,
        "mean(`rewards/margins`, 10) < -0.5 and slope(loss, 20) > 0 for 2 steps": None,
    }
    for text, expected in rules.items():
        best = min(_timed(text, h) for _ in range(2))
        assert best[0] < 1.0, f"{text}: {best[0]:.2f} s for 10k steps"
        if expected is not None:
            assert best[1].count == expected and best[1].steps[:2] == [1000, 2000]


def _timed(text, h):
    t0 = time.perf_counter()
    r = backtest(text, h)
    return time.perf_counter() - t0, r


# -- a real tiny DPO run with a rule folder -------------------------------------------------------------------------

def test_rule_dir_in_a_real_dpo_run(tmp_path):
    from ptt_nb import DiagnosticsCallback
    from ptt_nb.tiny import make_trainer

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "override_nonfinite.yaml", rules)
    (rules / "mine.yaml").write_text(
        "rules:\n"
        "  - id: logged_three_times\n"
        "    when: count(`rewards/margins`) >= 3 and isfinite(`logps/chosen`)\n"
        "    severity: low\n"
        "    message: 'margin {`rewards/margins`:.4f} after {count(loss):.0f} logs'\n"
        "  - id: grpo_only\n"
        "    when: reward > -1000\n"
        "    algorithms: [grpo]\n")
    cb = DiagnosticsCallback(run_dir=tmp_path / "run", rule_dir=rules, console=False, widget=False)
    make_trainer("dpo", tmp_path, max_steps=5, callbacks=[cb]).train()
    monitor = cb.monitor
    assert monitor.run.algorithm == "dpo"
    states = monitor.engine.states
    assert isinstance(states["nonfinite_values"].rule, DslRule)  # the folder's rule replaced the built-in
    assert "grpo_only" not in states and "logged_three_times" in states
    alerts = [a for a in monitor.alerts if a.rule == "logged_three_times"]
    assert [(a.step, a.state) for a in alerts] == [(3, "active")]
    assert alerts[0].message.startswith("margin ") and alerts[0].message.endswith(" after 3 logs")
    recorded = [e for e in events_of(tmp_path / "run", "alert") if e["rule"] == "logged_three_times"]
    assert [(e["step"], e["severity"]) for e in recorded] == [(3, "low")]

    # a broken pack stops the run before its first step, naming the file, line and column
    shutil.copy(RULES / "hostile" / "expr.yaml", rules / "z_broken.yaml")
    cb = DiagnosticsCallback(run_dir=tmp_path / "run2", rule_dir=rules, console=False, widget=False)
    trainer = make_trainer("dpo", tmp_path, max_steps=5, callbacks=[cb])
    with pytest.raises(RuleSyntaxError, match=r"z_broken\.yaml:5:23: when: tuples are not allowed"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_docs_examples_are_valid():
    """docs/rules-language.md: every YAML example loads, the error example is what the loader says."""
    import re

    doc = (REPO / "docs" / "rules-language.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert parse_rules(block, "doc.yaml")
    with pytest.raises(RuleSyntaxError) as info:
        parse_rules('rules:\n  - id: x\n    when: "step > 20 and meen(`rewards/margins`, 10) < 0"\n',
                    "my_rules/dpo.yaml")
    first, snippet, caret = str(info.value).split("\n")
    assert first.split(" Available:")[0] + " Available: mean, min, ..." in doc
    assert snippet in doc and caret in doc
