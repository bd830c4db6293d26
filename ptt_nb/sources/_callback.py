"""``DiagnosticsCallback``: the thin adapter from TRL's ``TrainerCallback`` events to a ``Monitor``.

What TRL does not give a callback, and how this file copes (see shared/reference/trl-log-keys.md):
- the trainer object is not passed: it is found once by walking the call stack in ``on_init_end`` /
  ``on_train_begin``;
- ``on_train_end`` never runs after an exception, Ctrl-C or SIGTERM: ``_crash_guard.CrashGuard`` turns every
  way out of ``train()`` into one ``_finish`` call, which writes the postmortem.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from ptt_nb._layout import find_run_dir
from ptt_nb.events import RunStart
from ptt_nb.monitor import _profiles as profiles
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.monitor._normalise import safe_repr
from ptt_nb.rules import _catalog  # noqa: F401 - import the rule catalog now, not on the run's clock
from ptt_nb.sinks import _postmortem as postmortem
from ptt_nb.sinks._console import ConsoleSink
from ptt_nb.sinks._writer import RunWriter
from ptt_nb.sources import _environment as environment
from ptt_nb.sources._crash_guard import CrashGuard
from ptt_nb.sources._run_facts import run_facts  # model size / PEFT / KTO label counts for config-time rules

log = logging.getLogger("ptt_nb")

# How far behind (seconds) the history and rules may run on a live run that does not auto-stop (Monitor.log
# says why): about two refreshes of the dashboard (which sends at most every 0.1 s), and it turns ~9 cold rule
# passes of a tiny CPU run (23 ms steps) into one cold pass and eight warm ones. Routine train metric lines of a
# fast run reach events.jsonl in batches of the same age (RunWriter says when a line is written at once).
DEFER_S = 0.2

# Config values worth keeping in the run header (the rest of TrainingArguments is noise for diagnosis).
CONFIG_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "max_steps", "num_train_epochs",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm", "weight_decay", "seed",
    "bf16", "fp16", "gradient_checkpointing", "logging_steps", "eval_strategy", "eval_steps", "output_dir",
    "beta", "loss_type", "label_smoothing", "rpo_alpha", "ld_alpha", "max_length", "max_prompt_length",
    "max_completion_length", "num_generations", "num_iterations", "steps_per_generation", "epsilon",
    "epsilon_high", "scale_rewards", "temperature", "top_k", "top_p", "mask_truncated_completions",
    "desirable_weight", "undesirable_weight", "cpo_alpha", "simpo_gamma", "alpha", "kl_coef", "cliprange",
    "cliprange_value", "vf_coef", "num_ppo_epochs", "num_mini_batches", "whiten_rewards", "missing_eos_penalty",
    "use_vllm", "vllm_mode", "packing", "completion_only_loss", "assistant_only_loss", "reward_weights",
    "center_rewards_coefficient", "disable_dropout", "precompute_ref_log_probs", "sync_ref_model",
    "logging_nan_inf_filter",
)


def _config_summary(args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"config_class": type(args).__name__}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if hasattr(value, "value"):  # enums such as IntervalStrategy
            value = value.value
        if isinstance(value, (bool, int, float, str)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value)
        ):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _find_trainer() -> Trainer | None:
    """The Trainer whose method is on the call stack (TRL does not pass it to callbacks)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


_FLOAT_ONLY = frozenset({float})


def _numeric(logs: dict[str, Any], step: int, warned: set[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Copy the numeric values of a log dict (TRL passes one shared mutable dict; never mutate it)."""
    if _FLOAT_ONLY >= set(map(type, logs.values())):  # TRL logs plain floats: one C-level pass, one copy
        return dict(logs), {}
    values: dict[str, float] = {}
    text: dict[str, str] = {}
    for key, value in logs.items():
        if type(value) is float:
            values[key] = value
            continue
        if isinstance(value, bool):
            values[key] = float(value)
            continue
        try:
            values[key] = float(value)  # ints, numpy and 0-d torch scalars
        except Exception:  # noqa: BLE001 - TypeError, ValueError, OverflowError (a huge int), a many-element tensor
            text[key] = safe_repr(value, 200)
            if key not in warned:
                warned.add(key)
                log.warning("ptt_nb: log key %r at step %s has a non-numeric value (%s); it is kept out of the "
                            "metric history", key, step, type(value).__name__)
    return values, text


class TrainingStopped(RuntimeError):
    """Raised to stop a trainer that ignores ``control.should_training_stop`` (PPO); the run folder already
    records why (``user_stop``/``auto_stop``), so catching it is safe."""


class DiagnosticsCallback(TrainerCallback):
    """Live diagnostics for any TRL (or transformers) trainer: ``callbacks=[DiagnosticsCallback()]``.

    Args:
        run_dir: where the run folder goes; default ``<output_dir>/ptt_nb/<algorithm>-<time>`` (a resumed
            run appends to the newest folder there).
        stop_on_critical: stop training at the step a critical alert fires (0 extra steps).
        rules: only these built-in heuristics (ids, or prefixes ending in ``*``); default all.
        exclude_rules: heuristics to leave out.
        rule_dir: a folder of YAML rule packs (custom rules; one with a built-in's id replaces it).
        custom_rules: extra rules (Rule objects or ``@rule``-decorated functions).
        console: print alerts through ``logging`` (default: yes outside notebooks).
        widget: show the live dashboard (default: yes inside a notebook).
        rank_stats_every: steps between per-rank timing/memory gathers on multi-process runs (0: off).
        report: write ``report.html`` (static, offline) into the run folder when the run ends.
        notify: webhook URL(s) for alerts at or above ``notify_severity`` and for the run's end or death: a
            URL (hooks.slack.com gets Slack's ``{"text": ...}``, others plain JSON), a ``{"url": ...,
            "format": "slack"|"json"}`` spec, or a list. Sent from a background thread; never written to disk.
        notify_severity: the least severe alert that notifies (default ``"high"``).
        baseline: a finished run (anything ``ptt_nb.load_run`` reads) drawn beside this one, with the
            ``baseline_*`` rules flagging metrics far outside its band.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        stop_on_critical: bool = False,
        rules: list[str] | None = None,
        exclude_rules: list[str] | None = None,
        rule_dir: str | os.PathLike[str] | None = None,
        custom_rules: list[Any] | None = None,
        console: bool | None = None,
        widget: bool | None = None,
        rank_stats_every: int | None = None,
        report: bool = False,
        notify: Any = None,
        notify_severity: str = "high",
        baseline: str | os.PathLike[str] | None = None,
    ) -> None:
        from ptt_nb.sinks._notify import _check_severity, parse_targets

        self._notify_targets = parse_targets(notify)  # bad input fails here, before any training
        self._notify_severity = _check_severity(notify_severity)
        self._notifier = None
        self.baseline = None
        if baseline is not None:  # loaded now: a wrong path fails before training, naming the path
            from ptt_nb.monitor._baseline import Baseline

            self.baseline = Baseline.load(baseline)
        self.run_dir_option = run_dir
        self.report = report
        environment.prefetch()
        self.stop_on_critical = stop_on_critical
        self.select, self.exclude = rules, exclude_rules
        self.rule_dir = rule_dir
        self.custom_rules = list(custom_rules or [])
        self.console = console
        self.widget_option = widget
        self.rank_stats_every = rank_stats_every
        self.monitor: Monitor | None = None
        self.run_dir: Path | None = None
        self.trainer: Trainer | None = None
        self.widget = None
        self.rank = 0
        self.world_size = 1
        self._state = None
        self._writer: RunWriter | None = None
        self._finished = True
        self._guard = CrashGuard(self._finish)
        self._warned_keys: set[str] = set()
        self._rank_stats = None

    # -- trainer discovery and crash capture -----------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        self._attach(_find_trainer())

    def _attach(self, trainer: Trainer | None) -> None:
        if trainer is None:
            return
        self.trainer = trainer
        self._guard.wrap(trainer)

    # -- run lifecycle ----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            self._attach(_find_trainer())
        self._state = state
        self.rank, self.world_size = environment.rank_and_world()
        trainer_cls = type(self.trainer) if self.trainer is not None else None
        mros = [profiles.mro_names(trainer_cls)] if trainer_cls else []
        profile = profiles.detect(*mros, profiles.mro_names(type(args)))
        resumed = state.global_step > 0
        self.run_dir = self._resolve_run_dir(args, profile.name, resumed)
        extra = self._load_custom_rules()
        baseline = self._load_baseline(args, extra)
        self.monitor = Monitor(select=self.select, exclude=self.exclude, extra_rules=extra,
                               stop_on_critical=self.stop_on_critical)
        monitor = self.monitor
        monitor.baseline = baseline
        if not self.stop_on_critical:  # auto-stop must see every point at its own step: no deferral then
            monitor.defer_s = DEFER_S
        monitor.run_dir = self.run_dir
        main = self.rank == 0
        if main:
            self._writer = RunWriter(self.run_dir, batch_s=DEFER_S)
            monitor.subscribe(self._writer)
            notebook = environment.in_notebook()
            show_widget = notebook if self.widget_option is None else self.widget_option
            if show_widget:
                self.widget = self._start_widget(monitor)
            console = (self.widget is None) if self.console is None else self.console
            if console:
                monitor.subscribe(ConsoleSink(str(self.run_dir)))
            self._start_notifier(monitor, args)
        self._finished = False
        run = RunStart(
            run_id=self.run_dir.name,
            trainer=trainer_cls.__name__ if trainer_cls else type(args).__name__,
            algorithm=profile.name,
            config={**_config_summary(args), **run_facts(kwargs.get("model"), kwargs.get("train_dataloader"))},
            versions=environment.versions() if main else {},
            world_size=self.world_size,
            max_steps=state.max_steps or None,
            git_commit=environment.git_commit() if main else None,
            resumed_from_step=state.global_step if resumed else None,
        )
        monitor.start(run)
        if "IPython" in sys.modules:  # lets %ptt find this run (ptt_nb.notebook._session); skipped outside IPython
            try:
                from ptt_nb.notebook._session import register_run

                register_run(self)
            except Exception as exc:  # noqa: BLE001 - the magics' registry must never stop training
                log.warning("ptt_nb: %%ptt cannot see this run (%s)", exc)
        self._start_rank_stats(args)
        self._guard.arm()

    def _resolve_run_dir(self, args: Any, algorithm: str, resumed: bool) -> Path:
        if self.run_dir_option is not None:
            return Path(self.run_dir_option)
        root = Path(getattr(args, "output_dir", None) or "ptt_runs") / "ptt_nb"
        if resumed:
            existing = find_run_dir(root)
            if existing is not None:
                return existing
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = root / f"{algorithm}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = root / f"{algorithm}-{stamp}-{n}"
        return path

    def _load_custom_rules(self) -> list[Any]:
        rules: list[Any] = []
        if self.rule_dir is not None or self.custom_rules:
            from ptt_nb.rules._custom import as_rules, load_rule_dir

            if self.rule_dir is not None:
                rules.extend(load_rule_dir(self.rule_dir))
            rules.extend(as_rules(self.custom_rules))
        return rules

    def _load_baseline(self, args: Any, rules: list[Any]) -> Any:
        """The baseline run, aligned to this run's batch size; its band rules join ``rules``."""
        if self.baseline is None:
            return None
        from ptt_nb.rules._catalog_baseline import baseline_rules

        baseline = self.baseline
        baseline.align(_config_summary(args), self.world_size)
        if baseline.note:
            log.info("ptt_nb: %s", baseline.note)
        rules.extend(baseline_rules(baseline))
        return baseline

    def _start_notifier(self, monitor: Monitor, args: Any) -> None:
        from ptt_nb.sinks._notify import Notifier, trackio_module

        tracker = trackio_module(getattr(args, "report_to", None))
        if self._notify_targets or tracker is not None:
            self._notifier = Notifier(self._notify_targets, severity=self._notify_severity, trackio=tracker)
            monitor.subscribe(self._notifier)

    def _start_widget(self, monitor: Monitor) -> Any:
        try:
            from ptt_nb.notebook._widget import attach
        except ImportError as exc:
            log.warning("ptt_nb: the notebook dashboard is unavailable (%s); alerts go to the console", exc)
            return None
        return attach(monitor)

    def _start_rank_stats(self, args: Any) -> None:
        if self.world_size <= 1 or self.rank_stats_every == 0:
            return
        from ptt_nb.sources._ranks import RankStatsCollector

        collector = self._rank_stats = RankStatsCollector.create(self, args, every=self.rank_stats_every)
        if collector is not None:
            # only a multi-process run times its steps: these two hooks exist on this instance alone, so a
            # single-process run pays nothing at step begin or before the optimizer step
            def on_step_begin(args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                collector.step_begin(state.global_step)

            def on_pre_optimizer_step(args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                collector.pre_optimizer_step()

            self.on_step_begin = on_step_begin
            self.on_pre_optimizer_step = on_pre_optimizer_step

    def _stop_agreed(self) -> bool:
        """Multi-process: a stop only this rank saw (the widget lives on rank 0) waits for the next rank-stats
        gather, which tells every rank, so all stop at one step instead of the others hanging in a collective."""
        rank_stats = self._rank_stats
        if rank_stats is None or not rank_stats.enabled or (self.monitor.stop_info or {}).get("by") == "auto_stop":
            return True
        return rank_stats.stop_agreed

    def on_step_end(self, args, state, control, **kwargs):
        monitor = self.monitor
        if monitor is None:
            return
        if self._rank_stats is not None:
            self._rank_stats.step_end(state.global_step)
        if self._guard.interrupt.consume():  # a first kernel Interrupt / Ctrl-C during train(): stop here
            monitor.request_stop(by="interrupt", reason="user_stop")
        if self.widget is not None:
            self.widget.poll_stop()  # ipykernel 6: a Stop click queued behind this cell (notebook._comm_poll)
        if monitor.step_end(state.global_step) and self._stop_agreed():
            control.should_training_stop = True
            if not monitor.profile.honours_stop:
                reason = monitor.end_reason_for_normal_return()
                self._finish(reason, detail=f"{monitor.profile.display} ignores should_training_stop; stopped by "
                                            "raising TrainingStopped")
                raise TrainingStopped(f"ptt_nb stopped training at step {state.global_step} ({reason})")

    def on_log(self, args, state, control, logs=None, **kwargs):
        monitor = self.monitor
        if monitor is None or not logs:
            return
        values, _text = _numeric(logs, state.global_step, self._warned_keys)
        # floats=True: _numeric made every value a float
        monitor.log(state.global_step, values, profiles.log_split(values), floats=True)
        if monitor.stop_requested and self._stop_agreed():
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None and not self._finished:
            self._finish(self.monitor.end_reason_for_normal_return())

    # -- ending ------------------------------------------------------------------------------------------------------
    def _finish(self, reason: str, *, traceback: str | None = None, detail: str = "") -> None:
        if self._finished or self.monitor is None:
            return
        self._finished = True
        with self._guard.finishing():
            self._write_up(reason, traceback, detail)

    def _write_up(self, reason: str, traceback: str | None, detail: str) -> None:
        monitor = self.monitor
        step = self._state.global_step if self._state is not None else monitor.step
        try:
            monitor.drain()  # the postmortem must see every logged point and its alerts
            if self._writer is not None:
                self._writer.flush()  # every line on disk before the postmortem says where the run ended
            dist_info = None
            if reason != "finished" and self._rank_stats is not None:  # which rank failed, when rank 0 can tell
                dist_info = self._rank_stats.failure_report(reason)
                if dist_info and dist_info.get("failed_ranks"):
                    detail = f"{dist_info['summary']}; {detail}" if detail else dist_info["summary"]
                    reason = "rank_failure"
            if reason != "finished" and self.rank == 0 and self.run_dir is not None:
                data = postmortem.build(monitor, reason, step=step, traceback=traceback, detail=detail)
                if dist_info:
                    data["distributed"] = dist_info
                postmortem.write(self.run_dir, data)
                monitor.postmortem = data
            monitor.finish(reason, step=step, detail=detail)
            if self.report and self.rank == 0 and reason != "sigterm":  # a SIGTERM'd process must exit promptly
                self._write_report(monitor)
        finally:
            self._guard.disarm()
            if self._rank_stats is not None:
                self._rank_stats.close()
                self.__dict__.pop("on_step_begin", None)
                self.__dict__.pop("on_pre_optimizer_step", None)
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._notifier is not None and reason != "sigterm":  # the last message out before a script exits
                self._notifier.flush()
            if reason != "finished" and self.rank == 0:
                log.warning("ptt_nb: run ended at step %s (%s); postmortem: %s", step, reason,
                            self.run_dir / "postmortem.json" if self.run_dir else "-")

    @staticmethod
    def _write_report(monitor: Monitor) -> None:
        try:
            from ptt_nb.sinks._report import write_at_end
        except ImportError as exc:
            monitor.warn(f"ptt_nb: no HTML report ({exc}); install ptt-nb[report]")
            return
        write_at_end(monitor)

    # -- user controls ----------------------------------------------------------------------------------------------
    def stop(self, reason: str = "user_stop") -> None:
        """Stop training at the next step boundary (thread-safe)."""
        if self.monitor is not None:
            self.monitor.request_stop(by="user", reason=reason)


