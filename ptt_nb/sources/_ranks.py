"""Multi-process runs (torchrun, ``accelerate launch``, DeepSpeed/FSDP through accelerate, ``notebook_launcher``).

Every rank measures its own steps; every ``every`` steps the ranks exchange one small packed float64 vector with a
single ``all_gather_into_tensor`` on the process group's own device (cuda for NCCL, cpu for gloo), and rank 0
publishes a ``RankStats`` event. The heuristics in ``rules._distributed`` read those events, live and in a
replayed run folder alike.

What is measured, and why this way:
- a synchronous gradient all-reduce makes every rank's *step* time equal to the slowest rank's, so step time
  cannot find a straggler. ``compute_ms`` is the rank's own model work per step: the spans of the forward passes
  of the trainer's models (policy, reference, reward; forward pre/post hooks) plus the backward pass, from the
  first gradient reaching the policy's outputs (a tensor hook) to the end of the local autograd graph (a queued
  autograd callback, which runs before DDP's queued wait for the gradient all-reduce). Collectives that run
  between those spans (TRL's metric gathers, DDP's all-reduce) are therefore left out: ``wait_ms`` is the rest
  of the time from ``on_step_begin`` to ``on_pre_optimizer_step`` (mostly waiting for the slowest rank, plus
  loss arithmetic and gradient clipping). On CUDA the marks are CUDA events on the compute stream, read once per
  interval, so nothing synchronises per step. Under FSDP/ZeRO-3 the parameter all-gathers inside the forward
  pass are counted as compute.
- ``optim_ms`` is ``on_pre_optimizer_step`` to ``on_step_end``; ``step_ms`` is wall time per step over the
  interval (1/throughput); ``data_ms`` is the time between ``on_step_end`` and the next ``on_step_begin``: the
  data-loader fetch (transformers prefetches the micro-batches there), plus logging, evaluation, checkpointing.
- memory: torch.cuda allocated / reserved / peak allocated and the device's total memory; on CPU, the process
  RSS (``/proc/self/statm``), the peak RSS (``getrusage``) and a limit from ``PTT_NB_MEMORY_LIMIT_MB`` or the
  host's (cgroup-aware) memory divided by the processes on this host. ``PTT_NB_MEMORY_LIMIT_MB`` also overrides
  the GPU's total memory (a GPU shared with a colocated vLLM engine has less).
- a user stop seen on rank 0 only (the widget lives there) travels in the same vector, so every rank stops at
  the same step (``DiagnosticsCallback`` waits for that agreement on multi-process runs).

Launchers (nothing to configure): torchrun and ``accelerate launch --multi_gpu`` (also on a CPU-only host, where
``TrainingArguments(use_cpu=True)`` gives gloo; accelerate 1.15's ``--cpu --num_processes N`` starts a single
process unless mpirun is used), DeepSpeed/FSDP through accelerate (plain module hooks, nothing engine-specific),
and ``accelerate.notebook_launcher``. With the notebook launcher the ranks are forked children of the kernel, so
the dashboard cannot live in them: give the callback a known folder, ``DiagnosticsCallback(run_dir="runs/x")``
(child rank 0 writes it; the other ranks write nothing), and follow it from the notebook with
``ptt_nb.watch("runs/x")`` (``_follow``) or ``%ptt watch runs/x`` — start it before ``notebook_launcher``
blocks the cell, or from another cell afterwards.

TRL metrics across ranks: checked on a 2-rank DPO run, every training log value is identical on all ranks
(TRL and transformers reduce them with ``gather_for_metrics`` / ``_nested_gather`` before logging), except the
final summary's ``train_runtime`` and rates; so no per-rank spread of TRL metrics is recorded.

Failures (a rank that dies; rank 0's watchdog): ``_rank_failures``.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import threading
import time
from typing import Any

from ptt_nb import events
from ptt_nb.sources._rank_failures import RankFailureWatch
from ptt_nb.sources._rank_probes import NAN as _NAN
from ptt_nb.sources._rank_probes import Clock, cpu_limit_mb, env_limit_mb, host_id

log = logging.getLogger("ptt_nb")

# Start with a gather every DEFAULT_EVERY steps; when ``every`` is left to us, the interval is then widened so the
# gather costs under BUDGET of the step time. Measured (benchmarks/rank_stats.py, benchmarks/gpu/): one gather is
# ~0.34 ms on NCCL (2x H100, 4x H200), i.e. 0.02-0.03% of a 100-180 ms step at every=10; on gloo/CPU 0.3 ms idle
# and 2-5 ms on an oversubscribed 2-core host, 0.2-0.3% of a ~100-170 ms tiny-model step at every=10.
DEFAULT_EVERY = 10
MIN_EVERY = 2
MAX_EVERY = 500
BUDGET = 0.01

# Published per-rank metrics, in heatmap order (compute first: that is where a straggler shows).
PUBLISHED = ("compute_ms", "wait_ms", "data_ms", "optim_ms", "step_ms", "samples_per_s", "tokens_per_s",
             "mem_allocated_mb", "mem_reserved_mb", "mem_peak_mb", "mem_limit_mb", "gather_ms", "step")
# The packed vector: published metrics, then bookkeeping that only rank 0's watchdog and the interval logic use.
FIELDS = PUBLISHED + ("steps", "pid", "host", "stop", "compute_fallback")
INDEX = {name: i for i, name in enumerate(FIELDS)}



class RankStatsCollector(RankFailureWatch):
    """Per-rank timing/memory for one training run; one packed all-gather per interval.

    Built by ``DiagnosticsCallback`` when the world size is above 1 (``RankStatsCollector.create``); every rank
    has one. ``every=None`` picks the interval adaptively (same decision on every rank: it is computed from the
    gathered data, which all ranks share, so no extra collective is needed to agree on it).
    """

    def __init__(self, callback: Any, args: Any, *, every: int | None = None, group: Any = None,
                 memory_limit_mb: float | None = None, watchdog: bool = True) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.callback = callback
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.fixed_every = every is not None
        self.every = max(1, int(every)) if every is not None else DEFAULT_EVERY
        self.next_gather: int | None = None
        backend = str(dist.get_backend(group)).lower()
        use_cuda = "nccl" in backend and torch.cuda.is_available()
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.cuda = torch.cuda.is_available() and self._training_on_cuda(args)
        self.mem_device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else None
        self.clock = Clock(self.mem_device)
        accum = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        self.samples_per_step = float(getattr(args, "per_device_train_batch_size", 0) or 0) * accum
        self.memory_limit_mb = memory_limit_mb
        self.host = host_id()
        self.pid = os.getpid()
        self._send = torch.zeros(len(FIELDS), dtype=torch.float64, device=self.comm_device)
        self._recv = torch.zeros(self.world_size * len(FIELDS), dtype=torch.float64, device=self.comm_device)
        self._reset_interval()
        self._hooks: list[Any] = []
        self._model_hooked = False
        self._hooked_any = False
        self._depth = 0
        self._span_start: Any = None
        self._in_backward = False
        self._bwd_start: Any = None
        self._cur: dict[str, Any] = {}
        self._t_ready: float | None = None     # CPU time when the previous step (and any gather) was done
        self._t_last_end: float | None = None  # CPU time of the previous on_step_end
        self._last_gather_ms = _NAN
        self._tokens = 0
        self.enabled = True
        self.stop_agreed = False
        self.stop_origin: int | None = None
        self.last: dict[str, list[float]] | None = None  # newest gathered values, per field
        self.peers: dict[int, tuple[float, int]] = {}   # rank -> (host id, pid), learned from the gathers
        self.failure: dict[str, Any] | None = None
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._watchdog_enabled = watchdog and self.rank == 0

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, callback: Any, args: Any, *, every: int | None = None, **kwargs: Any) -> RankStatsCollector | None:
        """A collector, or None (with one log line) when there is no initialised process group to gather over."""
        dist = sys.modules.get("torch.distributed")
        if dist is None:
            import torch.distributed as dist
        try:
            ready = dist.is_available() and dist.is_initialized()
        except Exception:  # noqa: BLE001
            ready = False
        if not ready:
            log.info("ptt_nb: WORLD_SIZE > 1 but torch.distributed is not initialised; per-rank stats are off")
            return None
        try:
            return cls(callback, args, every=every, **kwargs)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never stop training
            log.warning("ptt_nb: per-rank stats are off (%s: %s)", type(exc).__name__, exc)
            return None

    @staticmethod
    def _training_on_cuda(args: Any) -> bool:
        device = getattr(args, "device", None)
        return getattr(device, "type", None) == "cuda" and not getattr(args, "use_cpu", False)

    def _reset_interval(self) -> None:
        self._acc = {"steps": 0, "data_ms": 0.0}
        self._steps: list[tuple[Any, Any, Any]] = []   # (begin, pre, end) marks per step
        self._spans: list[tuple[Any, Any]] = []        # (start, end) marks of forward and backward passes
        self._t_interval_start: float | None = None
        self._tokens_interval = 0

    # -- hooks on the models ------------------------------------------------------------------------------------
    def _hook_model(self) -> None:
        """Forward pre/post hooks on the trainer's models, and a gradient hook on the policy's output that marks
        the start of the backward pass and queues an autograd callback marking its end."""
        self._model_hooked = True
        trainer = getattr(self.callback, "trainer", None)
        module_cls = self.torch.nn.Module
        models: list[Any] = []
        for name in ("model", "ref_model", "reward_model", "value_model", "teacher_model"):
            m = getattr(trainer, name, None)
            if isinstance(m, module_cls) and all(m is not x for x in models):
                models.append(m)
        for m in getattr(trainer, "reward_funcs", None) or []:
            if isinstance(m, module_cls) and all(m is not x for x in models):
                models.append(m)
        for i, m in enumerate(models):
            try:
                self._hooks.append(m.register_forward_pre_hook(self._fwd_pre if i == 0 else self._fwd_pre_other,
                                                               prepend=True, with_kwargs=True))
                self._hooks.append(m.register_forward_hook(self._fwd_post, always_call=True))
            except TypeError:  # torch < 2.0 hook signature: no per-rank compute split
                return
        self._hooked_any = bool(models)

    def _fwd_pre(self, _module: Any, args: tuple, kwargs: dict) -> None:
        if "begin" not in self._cur:
            return
        ids = kwargs.get("input_ids") if kwargs else None
        if ids is None and args:
            ids = args[0]
        numel = getattr(ids, "numel", None)
        if numel is not None:
            self._tokens += int(numel())
        self._fwd_pre_other(_module, args, kwargs)

    def _fwd_pre_other(self, _module: Any, _args: tuple, _kwargs: dict) -> None:
        if "begin" not in self._cur:
            return  # evaluation or generation outside a training step: not this step's compute
        if self._depth == 0:
            self._span_start = self.clock.mark()
        self._depth += 1

    def _fwd_post(self, _module: Any, _args: tuple, output: Any) -> None:
        if "begin" not in self._cur:
            return
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._span_start is not None:
            self._spans.append((self._span_start, self.clock.mark()))
            self._span_start = None
        if self._in_backward or not self.torch.is_grad_enabled():
            return
        # every output tensor on the graph (logits, log-probs of a fused head, ...): the first whose gradient
        # is computed marks the start of this backward pass; hooks on unused outputs never fire
        tensor = self.torch.Tensor
        if isinstance(output, tensor):
            outs: Any = (output,)
        elif hasattr(output, "values"):
            outs = output.values()
        elif isinstance(output, (tuple, list)):
            outs = output
        else:
            return
        for t in outs:
            if isinstance(t, tensor) and t.requires_grad:
                t.register_hook(self._on_output_grad)

    def _on_output_grad(self, grad: Any) -> None:
        if self._in_backward:
            return
        self._in_backward = True
        self._bwd_start = self.clock.mark()
        try:
            self.torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
        except Exception:  # noqa: BLE001 - no final callbacks: this backward pass is not timed
            self._in_backward = False
            self.clock.release(self._bwd_start)
            self._bwd_start = None

    def _on_backward_end(self) -> None:
        """Runs when autograd finishes the graph, before DDP's queued wait for the gradient all-reduce."""
        if self._bwd_start is not None:
            self._spans.append((self._bwd_start, self.clock.mark()))
        self._bwd_start = None
        self._in_backward = False

    # -- per step ---------------------------------------------------------------------------------------------
    def step_begin(self, global_step: int) -> None:
        if not self.enabled:
            return
        if not self._model_hooked:
            self._hook_model()
        now = time.perf_counter()
        if self._t_interval_start is None:
            self._t_interval_start = now if self._t_last_end is None else self._t_last_end
        if self._t_ready is not None:
            self._acc["data_ms"] += (now - self._t_ready) * 1e3
        self._cur = {"begin": self.clock.mark()}
        self._tokens = 0

    def pre_optimizer_step(self) -> None:
        if self.enabled and "begin" in self._cur:
            self._cur["pre"] = self.clock.mark()

    def step_end(self, global_step: int) -> None:
        if not self.enabled:
            return
        cur = self._cur
        if "begin" in cur:
            self._steps.append((cur["begin"], cur.get("pre"), self.clock.mark()))
            self._acc["steps"] += 1
            self._tokens_interval += self._tokens
        self._cur = {}
        now = time.perf_counter()
        self._t_last_end = now
        if self.next_gather is None:
            self.next_gather = -(-global_step // self.every) * self.every  # next multiple of every
        if global_step >= self.next_gather:
            try:
                self._gather(global_step, now)
            except Exception as exc:
                self._collective_failed(exc, global_step)
                raise
        self._t_ready = time.perf_counter()

    # -- the interval's gather ----------------------------------------------------------------------------------
    def _local_values(self, global_step: int, now: float) -> list[float]:
        acc = self._acc
        clock = self.clock
        if self._steps:
            clock.sync(self._steps[-1][2])
        inside = optim = 0.0
        for begin, pre, end in self._steps:
            inside += clock.elapsed_ms(begin, pre if pre is not None else end)
            if pre is not None:
                optim += clock.elapsed_ms(pre, end)
            clock.release(begin, pre, end)
        compute = 0.0
        for a, b in self._spans:
            compute += clock.elapsed_ms(a, b)
            clock.release(a, b)
        n = max(acc["steps"], 1)
        wall = (now - self._t_interval_start) if self._t_interval_start is not None else _NAN
        values = dict.fromkeys(FIELDS, _NAN)
        values.update(
            optim_ms=optim / n, data_ms=acc["data_ms"] / n, step_ms=wall * 1e3 / n, gather_ms=self._last_gather_ms,
            step=float(global_step), steps=float(acc["steps"]), pid=float(self.pid), host=self.host,
        )
        if self._hooked_any:
            values["compute_ms"] = compute / n
            values["wait_ms"] = max(inside - compute, 0.0) / n
        else:
            values["compute_fallback"] = 1.0
        if wall and wall > 0:
            values["samples_per_s"] = self.samples_per_step * acc["steps"] / wall
            if self._hooked_any:
                values["tokens_per_s"] = self._tokens_interval / wall
        values.update(self._memory())
        monitor = getattr(self.callback, "monitor", None)
        stop = monitor is not None and monitor.stop_requested and (monitor.stop_info or {}).get("by") != "auto_stop"
        values["stop"] = 1.0 if stop else 0.0
        return [values[name] for name in FIELDS]

    def _memory(self) -> dict[str, float]:
        torch = self.torch
        if self.cuda:
            dev = self.mem_device
            return {
                "mem_allocated_mb": torch.cuda.memory_allocated(dev) / 2**20,
                "mem_reserved_mb": torch.cuda.memory_reserved(dev) / 2**20,
                "mem_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20,
                "mem_limit_mb": (self.memory_limit_mb if self.memory_limit_mb is not None else
                                 env_limit_mb() or torch.cuda.get_device_properties(dev).total_memory / 2**20),
            }
        out = {"mem_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        try:
            with open("/proc/self/statm") as f:
                out["mem_allocated_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            pass
        out["mem_limit_mb"] = self.memory_limit_mb if self.memory_limit_mb is not None else cpu_limit_mb()
        return out

    def _gather(self, global_step: int, now: float) -> None:
        """One collective. A local failure before it must not make this rank skip it (the others would hang):
        the rank then sends NaNs; only a failure of the collective itself (a dead peer, a timeout) propagates."""
        torch, dist = self.torch, self.dist
        try:
            local = self._local_values(global_step, now)
        except Exception as exc:  # noqa: BLE001
            log.warning("ptt_nb: per-rank stats of step %s failed locally (%s: %s)", global_step,
                        type(exc).__name__, exc)
            local = [_NAN] * len(FIELDS)
            local[INDEX["step"]], local[INDEX["pid"]], local[INDEX["host"]] = float(global_step), self.pid, self.host
            local[INDEX["stop"]] = 0.0
        t0 = time.perf_counter()
        self._send.copy_(torch.tensor(local, dtype=torch.float64))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        gather(self._recv, self._send, group=self.group)
        rows = self._recv.view(self.world_size, len(FIELDS)).tolist()
        self._last_gather_ms = (time.perf_counter() - t0) * 1e3
        self._reset_interval()
        columns = {name: [row[i] for row in rows] for name, i in INDEX.items()}
        self.last = columns
        for r in range(self.world_size):
            self.peers[r] = (columns["host"][r], int(columns["pid"][r]))
        self._agree_stop(columns)
        self._schedule(columns, global_step)
        if self.rank == 0:
            try:
                self._publish(columns, global_step)
                if self._watchdog_enabled and self._watchdog is None:
                    self._start_watchdog()
            except Exception as exc:  # noqa: BLE001 - a sink or rule failing must not stop training
                log.warning("ptt_nb: publishing per-rank stats failed (%s: %s)", type(exc).__name__, exc)

    def _agree_stop(self, columns: dict[str, list[float]]) -> None:
        """A user stop seen on any rank (the widget lives on rank 0) stops every rank at this same step."""
        flags = [r for r, v in enumerate(columns["stop"]) if v > 0]
        if flags and not self.stop_agreed:
            self.stop_agreed = True
            self.stop_origin = flags[0]
            monitor = getattr(self.callback, "monitor", None)
            if monitor is not None and not monitor.stop_requested:
                monitor.request_stop(by="user", reason="user_stop")

    def _schedule(self, columns: dict[str, list[float]], global_step: int) -> None:
        """Next gather step. Deterministic in the gathered data, so every rank schedules the same step."""
        if not self.fixed_every:
            # the rank that reached the gather last did not wait in it: min over ranks is the collective's cost
            costs = [c for c in columns["gather_ms"] if math.isfinite(c)]
            steps = sorted(s for s in columns["step_ms"] if math.isfinite(s) and s > 0)
            if costs and steps:
                step_ms = steps[len(steps) // 2]
                needed = math.ceil(min(costs) / (BUDGET * step_ms))
                self.every = int(min(MAX_EVERY, max(MIN_EVERY, DEFAULT_EVERY, needed)))
        ref = int(max(columns["step"])) if columns["step"] else global_step
        self.next_gather = max(global_step, ref) + self.every

    def _publish(self, columns: dict[str, list[float]], global_step: int) -> None:
        monitor = getattr(self.callback, "monitor", None)
        if monitor is None:
            return
        per_rank = {}
        for name in PUBLISHED:
            values = columns[name]
            if all(not math.isfinite(v) for v in values):
                continue  # e.g. mem_reserved_mb on CPU
            per_rank[name] = [v if math.isfinite(v) else None for v in values]
        monitor.add_rank_stats(events.RankStats(step=global_step, world_size=self.world_size, per_rank=per_rank))

    def _collective_failed(self, exc: BaseException, global_step: int) -> None:
        self.enabled = False
        log.warning("ptt_nb: the per-rank stats gather failed at step %s (%s: %s)", global_step,
                    type(exc).__name__, exc)

    def pause(self) -> None:
        """Stop measuring and gathering (hooks removed). Call it at the same step on every rank."""
        self.enabled = False
        self._remove_hooks()

    def resume(self) -> None:
        """Measure again from the next step; the next gather comes at the next scheduled step (every rank alike)."""
        self._reset_interval()
        self._t_ready = self._t_last_end = None
        self.next_gather = None  # re-aligned to a multiple of ``every`` at the next step (same on every rank)
        self._model_hooked = self._hooked_any = False
        self._depth, self._span_start, self._in_backward, self._bwd_start = 0, None, False, None
        self.enabled = True

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            try:
                handle.remove()
            except Exception:  # noqa: BLE001
                pass
        self._hooks.clear()

    def close(self) -> None:
        self._closed.set()
        self.enabled = False
        self._remove_hooks()
