"""Which metric names a custom rule may sensibly read, and warnings for the ones a run will probably never log."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from typing import Any

from ptt_nb.monitor import _profiles as profiles
from ptt_nb.monitor._profiles import TRL_KEYS
from ptt_nb.rules._engine import Rule

_EVAL_EXTRA = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def known_keys(algorithm: str | None = None, history: Any = None, extra: Iterable[str] = ()) -> list[str]:
    """Metric names a rule may sensibly read: TRL's measured keys and the profile's panel keys for
    ``algorithm`` (every trainer when None or generic), their ``eval_`` forms, a run's recorded keys and ``extra``.
    May contain glob patterns (``rewards/*/mean``)."""
    if algorithm in (None, "generic"):
        names = {k for keys in TRL_KEYS.values() for k in keys}
        names.update(k for p in profiles.PROFILES for k in p.panel_keys())
    else:
        names = set(TRL_KEYS.get(algorithm, TRL_KEYS["generic"]))
        names.update(profiles.get_profile(algorithm).panel_keys())
    names.update(n for p in profiles.PROFILES for n, _f, _fn in p.derived
                 if algorithm in (None, "generic", p.name))
    names.update(profiles.BOOKKEEPING_KEYS)
    names.update(["eval_" + k for k in names] + list(_EVAL_EXTRA))
    if history is not None:
        names.update(history.keys("train"))
        names.update(history.keys("eval"))
    names.update(extra)
    return sorted(names)


def unknown_metrics(keys: Iterable[str], known: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The keys matching no known name or pattern, each with its close matches (difflib)."""
    known = list(known)
    concrete = [k for k in known if "*" not in k]
    out = []
    for key in keys:
        if any(k == key or ("*" in k and fnmatch.fnmatchcase(key, k)) for k in known):
            continue
        out.append((key, difflib.get_close_matches(key, concrete, n=3, cutoff=0.6)))
    return out


def metric_warnings(rule: Rule, known: Iterable[str]) -> list[str]:
    """Warnings for the metrics a custom rule reads that the run will probably never log (typos)."""
    keys = list(getattr(rule, "metric_keys", None) or rule.keys)
    out = []
    for key, close in unknown_metrics(keys, known):
        hint = f"; close matches: {', '.join(close)}" if close else ""
        out.append(f"rule {rule.id!r} ({rule.source}): unknown metric {key!r}{hint}. The rule stays silent until "
                   f"that key is logged.")
    return out
