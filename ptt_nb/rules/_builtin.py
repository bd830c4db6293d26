"""The default rule set: ``nonfinite_values``, the literature catalog (``_catalog``) and the distributed rules."""

from __future__ import annotations

from ptt_nb.rules._catalog import catalog_rules
from ptt_nb.rules._distributed import distributed_rules
from ptt_nb.rules._engine import Rule
from ptt_nb.rules._nonfinite import NonFiniteValues

__all__ = ["NonFiniteValues", "default_rules", "select_rules"]

def default_rules() -> list[Rule]:
    """Fresh instances of every built-in rule (rules keep per-run state)."""
    rules: list[Rule] = [NonFiniteValues(), *distributed_rules()]
    by_id = {r.id: r for r in rules}
    for rule in catalog_rules():
        by_id[rule.id] = rule
    return list(by_id.values())


def select_rules(rules: list[Rule], select: list[str] | None = None, exclude: list[str] | None = None) -> list[Rule]:
    """Heuristic selection by id or by id prefix (``"grpo_"``)."""
    def matches(rule_id: str, names: list[str]) -> bool:
        return any(rule_id == n or (n.endswith("*") and rule_id.startswith(n[:-1])) for n in names)

    if select is not None:
        rules = [r for r in rules if matches(r.id, select)]
    if exclude:
        rules = [r for r in rules if not matches(r.id, exclude)]
    return rules
