"""Failures: a rank that dies leaves the others blocked in a collective until the process group times out (or the
launcher kills them). Rank 0 runs a small watchdog thread that checks, once a second, whether the processes of
the ranks on its own host are still alive; the first dead one is recorded at once as a ``rank_failure`` alert
and a provisional ``postmortem.json`` (so the record survives even a SIGKILL from the launcher), and the
callback's own postmortem names the rank. Ranks on other hosts cannot be checked from here; the postmortem then
lists the last step each rank reported.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from ptt_nb import events
from ptt_nb.sources._rank_probes import pid_alive

log = logging.getLogger("ptt_nb")


class RankFailureWatch:
    """The failure half of ``RankStatsCollector`` (a base class it extends): which rank died, when rank 0 can tell.

    Uses the collector's ``callback``, ``rank``, ``host``, ``peers``, ``last``, ``every``, ``world_size``,
    ``stop_agreed``, ``failure``, ``_closed`` and ``_watchdog``."""

    def _start_watchdog(self) -> None:
        local = [(r, pid) for r, (host, pid) in self.peers.items() if host == self.host and r != self.rank and pid > 0]
        if not local:
            return
        self._watchdog = threading.Thread(target=self._watch, args=(local,), name="ptt_nb-rank-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def _watch(self, local: list[tuple[int, int]]) -> None:
        while not self._closed.wait(1.0):
            dead = [(r, pid) for r, pid in local if not pid_alive(pid)]
            if dead:
                if not self._training_done():  # after the last step, ranks leave at their own pace
                    self._record_failure(dead, source="watchdog")
                return

    def _training_done(self) -> bool:
        state = getattr(self.callback, "_state", None)
        max_steps = getattr(state, "max_steps", 0) or 0
        monitor = getattr(self.callback, "monitor", None)
        return bool(getattr(self.callback, "_finished", False)) or self.stop_agreed or (
            monitor is not None and monitor.stop_requested and (monitor.stop_info or {}).get("by") == "auto_stop"
        ) or (max_steps > 0 and getattr(state, "global_step", 0) >= max_steps)

    def dead_ranks(self, settle_s: float = 0.0) -> list[tuple[int, int]]:
        """Ranks on this host whose process is gone, waiting up to ``settle_s`` for an exit to complete."""
        local = [(r, pid) for r, (host, pid) in self.peers.items() if host == self.host and r != self.rank and pid > 0]
        deadline = time.monotonic() + settle_s
        while True:
            dead = [(r, pid) for r, pid in local if not pid_alive(pid)]
            if dead or time.monotonic() >= deadline or not local:
                return dead
            time.sleep(0.05)

    def _record_failure(self, dead: list[tuple[int, int]], source: str) -> dict[str, Any]:
        if self.failure is not None:
            return self.failure
        last_steps = self.last["step"] if self.last else []
        ranks = [r for r, _ in dead]
        names = ", ".join(f"rank {r} (pid {pid})" for r, pid in dead)
        step = int(getattr(getattr(self.callback, "_state", None), "global_step", 0) or 0)
        self.failure = {
            "failed_ranks": ranks,
            "summary": f"{names} exited while training was running (seen by rank 0 at step {step})",
            "detected_by": source,
            "detected_step": step,
            "last_gathered_step_per_rank": [int(s) if math.isfinite(s) else None for s in last_steps],
            "unchecked_ranks": sorted(r for r, (host, _) in self.peers.items() if host != self.host),
        }
        monitor = getattr(self.callback, "monitor", None)
        if monitor is not None and self.rank == 0:
            alert = events.Alert(
                id=f"rank_failure@{step}", rule="rank_failure", severity="critical", step=step,
                message=f"{names} died; the other ranks are blocked in a collective until the process group "
                        "times out or the launcher stops them.",
                action="Read that rank's own log (OOM killer: dmesg; a Python exception: the launcher's output). "
                       "Lower the process-group timeout (TrainingArguments.ddp_timeout) to fail faster.",
                evidence={"rank": float(ranks[0]), "step": float(step)})
            try:
                monitor.add_alert(alert)
                self._provisional_postmortem(monitor, step)
            except Exception as exc:  # noqa: BLE001 - best effort from a thread
                log.warning("ptt_nb: could not record the rank failure: %s", exc)
        return self.failure

    def _provisional_postmortem(self, monitor: Any, step: int) -> None:
        """Written by the watchdog at once: the launcher may SIGKILL rank 0 before its own handlers run."""
        run_dir = getattr(self.callback, "run_dir", None)
        if run_dir is None:
            return
        writer = getattr(self.callback, "_writer", None)
        if writer is not None:
            writer.flush()  # the metric lines a batch still holds: on disk before a SIGKILL can come
        from ptt_nb.sinks import _postmortem as postmortem

        data = postmortem.build(monitor, "rank_failure", step=step, detail=self.failure["summary"])
        data["distributed"] = self.failure
        postmortem.write(run_dir, data)

    def failure_report(self, reason: str) -> dict[str, Any] | None:
        """For the callback's postmortem: which rank failed, if one on this host did (rank 0 only)."""
        if self.rank != 0:
            return None
        if self.failure is None and self.peers:
            # a peer's exit closes its sockets a moment before it becomes a zombie: allow it to settle
            dead = self.dead_ranks(settle_s=1.0 if reason in ("exception", "sigterm") else 0.0)
            if dead:
                self._record_failure(dead, source=reason)
        info: dict[str, Any] = dict(self.failure) if self.failure else {}
        info["world_size"] = self.world_size
        info["rank_stats_every"] = self.every
        if self.last and "last_gathered_step_per_rank" not in info:
            info["last_gathered_step_per_rank"] = [int(s) if math.isfinite(s) else None for s in self.last["step"]]
        return info
