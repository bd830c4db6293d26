"""The Python side of the live dashboard: batching, decimation, protocol shapes, stop routing, no history in
synced traits. The Monitor is real; ``send`` is a list (the front-end is exercised in tests/browser/)."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from ptt_nb.events import Metrics, RankStats, RunStart
from ptt_nb.monitor._monitor import Monitor
from ptt_nb.notebook._stop_routing import make_handler, route_to_sender_subshell
from ptt_nb.notebook._stream import Stream, rank_block, stragglers


def _monitor(world_size: int = 1) -> Monitor:
    m = Monitor()
    m.start(RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", max_steps=100_000, world_size=world_size,
                     config={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}))
    return m


def _log(m: Monitor, step: int, **extra: float) -> None:
    values = {"loss": 0.69 - step * 1e-5, "rewards/margins": step * 1e-3, "rewards/accuracies": 0.5,
              "grad_norm": 1.0, "learning_rate": 1e-4}
    values.update(extra)
    m.log(step, values)
    m.step_end(step)


class Sent:
    """Collects (content, buffers) and decodes data buffers like the JS side does."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict, list[bytes]]] = []
        self.times: list[float] = []

    def __call__(self, content: dict, buffers: list[bytes]) -> None:
        json.dumps(content, allow_nan=False)  # Jupyter's packer rejects NaN: every message must be strict JSON
        self.messages.append((content, buffers))
        self.times.append(time.monotonic())

    def of(self, kind: str) -> list[tuple[dict, list[bytes]]]:
        return [(c, b) for c, b in self.messages if c["type"] == kind]

    @staticmethod
    def series(content: dict, buffers: list[bytes]) -> dict[tuple, tuple[np.ndarray, np.ndarray, dict]]:
        out = {}
        for i, s in enumerate(content["series"]):
            steps = np.frombuffer(buffers[2 * i], dtype="<f8")
            values = np.frombuffer(buffers[2 * i + 1], dtype="<f8")
            assert steps.shape[0] == values.shape[0] == s["n"]
            out[(s["panel"], s["key"], s["split"])] = (steps, values, s)
        return out


def test_ready_sends_init_then_decimated_replace_keeping_extremes() -> None:
    m = _monitor()
    for step in range(1, 10_001):
        _log(m, step, grad_norm=float("nan") if step == 5_000 else (50.0 if step == 7_777 else 1.0))
    sent = Sent()
    stream = Stream(m, sent, max_points=2000)
    stream.flush()
    assert sent.messages == []  # nothing before a view is ready
    stream.handle({"type": "ready"})
    stream.flush()
    (init, _), (data, buffers) = sent.messages
    assert init["type"] == "init" and data["type"] == "data"
    assert {p["id"] for p in init["panels"]} >= {"dpo_loss", "pref_margin", "optim_grad_norm"}
    assert init["run"]["trainer"] == "DPOTrainer" and init["ranks"] is None
    assert init["status"]["state"] == "running" and init["status"]["step"] == 10_000
    assert init["status"]["samples_per_s"] == pytest.approx(init["status"]["steps_per_s"] * 4)
    assert "nonfinite_values" in [a["rule"] for a in init["alerts"]]
    series = Sent.series(data, buffers)
    steps, values, entry = series[(None, "grad_norm", "train")]
    assert entry["mode"] == "replace" and entry["n"] <= 2000
    assert np.isnan(values).sum() == 1 and steps[np.isnan(values)][0] == 5_000  # the NaN survives decimation
    assert values[np.isfinite(values)].max() == 50.0 and steps[values == 50.0][0] == 7_777  # and the spike
    loss_steps, _, loss = series[(None, "loss", "train")]
    assert 1000 <= loss["n"] <= 2000 and loss_steps[0] == 1 and loss_steps[-1] == 10_000


def test_appends_only_new_points_and_replaces_after_a_burst() -> None:
    m = _monitor()
    sent = Sent()
    stream = Stream(m, sent, max_points=100)
    for step in range(1, 11):
        _log(m, step)
    stream.handle({"type": "ready"})
    stream.flush()
    sent.messages.clear()
    for step in range(11, 16):
        _log(m, step)
    stream.flush()
    (data, buffers), = sent.messages
    steps, values, entry = Sent.series(data, buffers)[(None, "loss", "train")]
    assert entry["mode"] == "append" and steps.tolist() == [11, 12, 13, 14, 15]
    assert values[0] == pytest.approx(0.69 - 11e-5)
    assert data["status"]["step"] == 15
    sent.messages.clear()
    stream.flush()
    assert sent.messages == []  # nothing new: nothing sent
    for step in range(16, 1016):  # a burst bigger than max_points (e.g. a fast replay): one decimated replace
        _log(m, step)
    stream.flush()
    (data, buffers), = sent.messages
    steps, _values, entry = Sent.series(data, buffers)[(None, "loss", "train")]
    assert entry["mode"] == "replace" and entry["n"] <= 100 and steps[0] == 1 and steps[-1] == 1015


def test_zoom_returns_that_panels_range_decimated() -> None:
    m = _monitor()
    for step in range(1, 20_001):
        _log(m, step)
    sent = Sent()
    stream = Stream(m, sent, max_points=500)
    stream.handle({"type": "ready"})
    stream.flush()
    sent.messages.clear()
    stream.handle({"type": "zoom", "panel": "dpo_loss", "x0": 1000.0, "x1": 1200.0})
    stream.flush()
    (data, buffers), = sent.messages
    series = Sent.series(data, buffers)
    steps, _, entry = series[("dpo_loss", "loss", "train")]
    assert entry["mode"] == "replace" and all(k[0] == "dpo_loss" for k in series)
    assert steps[0] >= 999 and steps[-1] <= 1201 and entry["n"] == 203  # full detail + one neighbour each side
    sent.messages.clear()
    stream.handle({"type": "zoom", "panel": "dpo_loss", "x0": None, "x1": None})  # reset: the whole run
    stream.flush()
    steps, _, entry = Sent.series(*sent.messages[0])[("dpo_loss", "loss", "train")]
    assert entry["n"] <= 500 and steps[0] == 1 and steps[-1] == 20_000


def test_alert_shape_mute_and_new_keys_reinit() -> None:
    m = _monitor()
    sent = Sent()
    stream = Stream(m, sent)
    _log(m, 1)
    stream.handle({"type": "ready"})
    stream.flush()
    sent.messages.clear()
    _log(m, 2, grad_norm=math.inf)
    stream.flush()
    (data, _), = sent.messages
    (alert,) = data["alerts"]
    assert alert["rule"] == "nonfinite_values" and alert["state"] == "active" and alert["muted"] is False
    assert alert["reference"]["url"].startswith("https://") and alert["reference"]["text"]
    assert alert["evidence"] == {"grad_norm": "Infinity"} and "optim_grad_norm" in alert["panels"]
    sent.messages.clear()
    stream.handle({"type": "mute", "rule": "nonfinite_values", "muted": True})
    stream.flush()
    assert m.engine.states["nonfinite_values"].muted
    (data, _), = sent.messages
    assert [a["muted"] for a in data["alerts"]] == [True]
    sent.messages.clear()
    _log(m, 3, **{"my/custom": 1.0})  # a key no panel knows: an "other" panel appears, the view is rebuilt
    stream.flush()
    kinds = [c["type"] for c, _ in sent.messages]
    assert kinds == ["init", "data"] and "other:my/custom" in [p["id"] for p in sent.messages[0][0]["panels"]]


def test_flush_thread_batches_at_most_ten_per_second_while_training_logs_fast() -> None:
    m = _monitor()
    sent = Sent()
    stream = Stream(m, sent, interval=0.1)
    stream.handle({"type": "ready"})
    stream.start()
    try:
        t0 = time.monotonic()
        step = 0
        while (now := time.monotonic()) < t0 + 1.5:  # ~3000 steps/s: fast, yet under max_points per batch
            if step < (now - t0) * 3000:
                step += 1
                _log(m, step)
            else:
                time.sleep(0.0005)
        time.sleep(0.3)
    finally:
        stream.close()
    gaps = np.diff(sent.times)
    batch_gaps = gaps[gaps > 0.02]  # one flush may send init + data (a new key rebuilds the view): one batch
    assert step > 1000 and len(batch_gaps) + 1 <= 1.8 / 0.1 + 2
    assert (batch_gaps >= 0.09).all() and len(gaps) - len(batch_gaps) <= 3, gaps
    view: list[float] = []  # what the front-end holds: replace resets, append extends
    for content, buffers in sent.of("data"):
        got = Sent.series(content, buffers).get((None, "loss", "train"))
        if got is not None:
            view = got[0].tolist() if got[2]["mode"] == "replace" else view + got[0].tolist()
    assert view == list(range(1, step + 1))  # every point exactly once, in order


def test_sink_costs_about_a_microsecond() -> None:
    m = _monitor()
    stream = Stream(m, Sent())
    event = Metrics(step=1, split="train", values={"loss": 1.0})
    n = 100_000
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            stream(event)
        best = min(best, (time.perf_counter() - t0) / n)
    assert best < 2e-6, f"{best * 1e6:.2f} us per event"


def _rank_interval(m: Monitor, step: int, compute: list[float]) -> None:
    m.add_rank_stats(RankStats(step=step, world_size=4, per_rank={
        "compute_ms": compute,                        # the slow rank shows in its own compute time ...
        "wait_ms": [max(compute) - c for c in compute],
        "step_ms": [max(compute) + 5.0] * 4,          # ... synchronous collectives equalise step time
        "mem_peak_mb": [2000.0, 2000.0, 2000.0, float("nan")]}))


def test_rank_block_flags_the_straggler_rule_s_rank() -> None:
    m = _monitor(world_size=4)
    _log(m, 1)
    _rank_interval(m, 10, [50.0, 50.0, 150.0, 50.0])
    _rank_interval(m, 20, [50.0, 50.0, 150.0, 50.0])
    block = rank_block(m)
    assert block["world_size"] == 4 and block["steps"] == [10, 20]
    assert block["metric_names"] == ["compute_ms", "wait_ms", "step_ms", "mem_peak_mb"]
    assert block["values"]["compute_ms"][0] == [50.0, 50.0, 150.0, 50.0]
    assert block["values"]["mem_peak_mb"][0][3] is None  # NaN → null (strict JSON)
    # 3x slower, but the rule wants several slow intervals first: the heatmap agrees with the (empty) feed
    assert stragglers(block["metric_names"], block["values"]) == [2] and block["stragglers"] == []
    sent = Sent()
    stream = Stream(m, sent)
    stream.handle({"type": "ready"})
    stream.flush()
    sent.messages.clear()
    for step in range(30, 80, 10):
        _rank_interval(m, step, [50.0, 50.0, 150.0, 50.0])
    assert any(a.rule == "straggler_rank" and a.state == "active" for a in m.alerts)
    stream.flush()
    (data, _), = sent.messages
    assert data["ranks"]["stragglers"] == [2] and data["ranks"]["steps"][-1] == 70
    assert "straggler_rank" in [a["rule"] for a in data["alerts"]]
    sent.messages.clear()
    _log(m, 80)  # no rank interval in this batch: "ranks" absent (= unchanged), not null (= hide)
    stream.flush()
    assert "ranks" not in sent.messages[0][0]
    assert rank_block(_monitor(world_size=1)) is None


def test_rank_block_without_rules_uses_the_ratio_test() -> None:
    m = Monitor(evaluate=False)  # a replay that takes recorded alerts as they are (and has none here)
    m.start(RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", world_size=4))
    _rank_interval(m, 10, [50.0, 50.0, 150.0, 50.0])
    assert rank_block(m)["stragglers"] == [2]
    assert stragglers(["step_ms"], {"step_ms": [[1.0, 1.0, 1.0, 1.0]]}) == []


def test_stop_handler_sets_the_flag_from_another_thread_and_forwards_the_rest() -> None:
    m = _monitor()
    forwarded: list[dict] = []
    handler = make_handler(m, forwarded.append)
    worker = threading.Thread(target=handler, args=(None, {"type": "stop"}, []))
    worker.start()
    worker.join()
    assert m.stop_requested and m.stop_info["reason"] == "user_stop" and m.controls[-1].by == "user"
    assert m.step_end(5) is True  # what the callback asks at the next step boundary
    handler(None, {"type": "zoom", "panel": "dpo_loss", "x0": 1, "x1": 2}, [])
    assert forwarded == [{"type": "zoom", "panel": "dpo_loss", "x0": 1, "x1": 2}]


def test_route_override_sends_comm_messages_to_the_senders_subshell() -> None:
    pytest.importorskip("ipykernel")
    from ipykernel.comm.comm import BaseComm as Comm  # what comm.create_comm makes inside ipykernel

    comm = Comm(target_name="ptt_test", primary=False)  # no kernel here: publishing is a no-op
    comm._reply_subshell_id = None  # the main shell published last (a busy cell updating the widget)
    data = {"method": "custom", "content": {"type": "stop"}}
    assert comm._reply_subshell_for(data, "subshell-1") is None  # ipykernel's routing: the busy main shell
    assert route_to_sender_subshell(comm) is True
    assert comm._reply_subshell_for(data, "subshell-1") == "subshell-1"  # ours: where the click was sent from
    other = Comm(target_name="ptt_test", primary=False)
    other._reply_subshell_id = None
    assert other._reply_subshell_for(data, "subshell-1") is None  # only this one comm is changed
    assert route_to_sender_subshell(object()) is False and route_to_sender_subshell(None) is False


def test_dashboard_traits_hold_no_history_and_redisplay_reuses_the_widget() -> None:
    pytest.importorskip("anywidget")
    from ptt_nb.notebook import _widget as widget

    m = _monitor()
    dash = widget.dashboard_for(m)
    try:
        def state_size() -> int:
            state = dash.get_state()
            state.pop("_esm", None)
            return len(json.dumps(state, default=str))

        before = state_size()
        for step in range(1, 5_001):
            _log(m, step)
        m.add_rank_stats(RankStats(step=10, world_size=2, per_rank={"compute_s": [1.0, 2.0]}))
        assert state_size() == before < 2_000  # run length does not reach the saved widget state
        assert widget.dashboard_for(m) is dash  # one widget per run
        data, _meta = dash._repr_mimebundle_()
        assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.model_id
        html = data["text/html"]
        assert "<svg" in html and "DPOTrainer" in html and len(html.encode()) < 100_000
    finally:
        dash.close()
    assert widget.dashboard_for(m) is not dash  # a closed widget is replaced
    widget.dashboard_for(m).close()


def test_static_summary_stays_small_for_long_runs() -> None:
    from ptt_nb.notebook._static_fallback import summary_html

    m = _monitor()
    for step in range(1, 50_001):
        _log(m, step, **{f"extra/k{i}": float(step % (i + 2)) for i in range(20)})
    _log(m, 50_001, grad_norm=float("nan"))
    html = summary_html(m)
    assert len(html.encode()) < 100_000
    assert "nonfinite_values" in html and "arxiv.org" in html and html.count("<svg") >= 10


def test_no_ready_in_time_sends_init_anyway() -> None:
    """Where comm messages wait for the cell to end (no kernel subshells), "ready" comes too late: the first
    batch goes out after auto_ready_after seconds instead."""
    m = _monitor()
    _log(m, 1)
    sent = Sent()
    stream = Stream(m, sent, auto_ready_after=0.2)
    stream.flush()
    assert sent.messages == []  # never displayed: nothing to do
    stream.expect_view()
    stream.flush()
    assert sent.messages == []  # displayed just now: give the view its chance to say "ready"
    time.sleep(0.25)
    stream.flush()
    assert [c["type"] for c, _ in sent.messages] == ["init", "data"]


def test_real_dpo_run_streams_through_the_callbacks_dashboard(tmp_path) -> None:
    """DiagnosticsCallback(widget=True) → attach() → Dashboard, on a real tiny TRL DPO run (outside a kernel the
    comm is ipywidgets' no-op one, so the messages are taken at the Stream's send)."""
    pytest.importorskip("trl")
    pytest.importorskip("anywidget")
    from transformers import TrainerCallback

    from ptt_nb import DiagnosticsCallback
    from ptt_nb.notebook._widget import Dashboard
    from ptt_nb.tiny import make_trainer

    sent = Sent()

    class ViewReady(TrainerCallback):  # runs after DiagnosticsCallback.on_train_begin created the dashboard
        def on_train_begin(self, args, state, control, **kwargs):
            diag.widget.stream._send = sent
            diag.widget.stream.handle({"type": "ready"})

    diag = DiagnosticsCallback(run_dir=tmp_path / "run", widget=True, console=False)
    trainer = make_trainer("dpo", tmp_path, callbacks=[diag, ViewReady()], max_steps=6)
    trainer.train()
    dash = diag.widget
    try:
        assert isinstance(dash, Dashboard) and dash.stream.errors == []
        dash.stream.flush()
        kinds = [c["type"] for c, _ in sent.messages]
        assert "init" in kinds and kinds[-1] == "data"
        inits = [c for c, _ in sent.messages if c["type"] == "init"]
        assert "dpo_loss" in [p["id"] for p in inits[-1]["panels"]]
        view: dict = {}
        for content, buffers in sent.messages:
            if content["type"] == "init":
                view = {}
                continue
            for key, (steps, _v, entry) in Sent.series(content, buffers).items():
                old = view.get(key, [])
                view[key] = steps.tolist() if entry["mode"] == "replace" else old + steps.tolist()
        assert view[(None, "loss", "train")] == [1, 2, 3, 4, 5, 6]
        # the final state may arrive in an init (a batch holding the RunStart is answered with a full init)
        statuses = [c["status"] for c, _ in sent.messages if c.get("status")]
        assert statuses[-1]["state"] == "finished" and statuses[-1]["step"] == 6
        html = dash._repr_mimebundle_()[0]["text/html"]
        assert "finished" in html and "DPOTrainer" in html
    finally:
        dash.close()


def _seen_backtest(sent: Sent) -> dict[str, dict]:
    """What a view holds after applying every message: the last init's markers, then each data's "backtest"."""
    seen: dict[str, dict] = {}
    for content, _ in sent.messages:
        if content["type"] == "init" or "backtest" in content:
            seen = {e["rule"]: e for e in content["backtest"]}
    return seen


def test_backtest_markers_go_in_init_and_data_replaced_by_rule_and_never_become_alerts(tmp_path) -> None:
    """``Dashboard.show_backtest`` (what ``%%ptt`` calls): markers per rule id, sent in ``data`` when they change
    and in every ``init`` (a re-rendered view rebuilds them), replaced on re-run, cleared; never recorded.
    The dashboard's flush thread runs too, so the checks fold over all messages sent, whichever thread sent them."""
    pytest.importorskip("anywidget")
    from ptt_nb.notebook._cell_rules import marker_alerts
    from ptt_nb.notebook._widget import Dashboard
    from ptt_nb.rules._backtest import BacktestResult, Firing
    from ptt_nb.sinks._writer import RunWriter
    from ptt_nb.sources._reader import read_events

    m = Monitor()
    writer = RunWriter(tmp_path / "run")
    m.subscribe(writer)
    m.start(RunStart(run_id="r", trainer="DPOTrainer", algorithm="dpo", max_steps=100, world_size=1, config={}))
    for step in range(1, 21):
        _log(m, step)
    sent = Sent()
    dash = Dashboard(m, interval=0.05)
    try:
        dash.stream._send = sent
        dash.stream.handle({"type": "ready"})
        dash.stream.flush()
        assert sent.of("init") and sent.of("init")[-1][0]["backtest"] == []
        first = BacktestResult("margin_up", [Firing(4, 7, "low", "margin > 0"), Firing(12, None, "low", "again")])
        dash.show_backtest("margin_up", marker_alerts(first, ["pref_margin"]))
        dash.show_backtest("grad_low", marker_alerts(BacktestResult("grad_low", [Firing(9, None, "high", "g")]),
                                                     ["optim_grad_norm"]))
        dash.stream.flush()
        carrying = [c for c, _ in sent.messages if "backtest" in c and c["type"] == "data"]
        assert carrying and carrying[-1]["alerts"] == []
        seen = _seen_backtest(sent)
        assert seen["margin_up"] == {"rule": "margin_up", "severity": "low", "panels": ["pref_margin"],
                                     "steps": [4, 12], "resolved_steps": [7, None],
                                     "messages": ["margin > 0", "again"], "total": 2}
        assert seen["grad_low"]["steps"] == [9] and seen["grad_low"]["panels"] == ["optim_grad_norm"]
        n = sum("backtest" in c for c, _ in sent.messages)
        dash.stream.flush()
        assert sum("backtest" in c for c, _ in sent.messages) == n  # unchanged markers are not re-sent

        # a re-run of the same rule replaces its markers; the other rule's stay
        dash.show_backtest("margin_up", marker_alerts(BacktestResult("margin_up", [Firing(15, None, "medium", "x")]),
                                                      ["pref_margin"]))
        dash.stream.flush()
        seen = _seen_backtest(sent)
        assert seen["margin_up"]["steps"] == [15] and seen["margin_up"]["severity"] == "medium"
        assert seen["grad_low"]["steps"] == [9]

        # a view that (re)renders gets them in init
        inits = len(sent.of("init"))
        dash.stream.handle({"type": "ready"})
        dash.stream.flush()
        assert len(sent.of("init")) == inits + 1
        init = sent.of("init")[-1][0]
        assert sorted((e["rule"], e["steps"][0]) for e in init["backtest"]) == [("grad_low", 9), ("margin_up", 15)]

        # training goes on: data without a marker change carries no "backtest" key (absent = unchanged)
        _log(m, 21)
        dash.stream.flush()
        with_points = [c for c, _ in sent.messages if c["type"] == "data" and c["series"]]
        assert with_points and "backtest" not in with_points[-1]

        # cleared (as `%ptt remove` does); an empty backtest clears too
        dash.clear_backtest("grad_low")
        dash.stream.flush()
        assert list(_seen_backtest(sent)) == ["margin_up"]
        dash.show_backtest("margin_up", [])
        dash.stream.flush()
        assert _seen_backtest(sent) == {}

        # never recorded as alerts: not in the monitor, not in any alerts field sent, not in events.jsonl
        assert m.alerts == []
        assert all(a.get("state") != "backtest" for c, _ in sent.messages for a in c.get("alerts", []))
    finally:
        dash.close()
    m.finish("finished")
    writer.close()
    events, _problems = read_events(tmp_path / "run")
    assert [e.kind for e in events][0] == "run_start" and events[-1].kind == "run_end"
    assert not [e for e in events if e.kind == "alert"]

