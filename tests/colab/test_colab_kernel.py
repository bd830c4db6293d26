"""The code paths a Colab / VS Code front end takes, kernel-side, on Colab's kernel versions (``.venv-colab``:
IPython 7.34, ipykernel 6.17 without subshells, ipywidgets 7.7.1, anywidget 0.9.21), driven over the real Jupyter
protocol by a ``jupyter_client`` kernel client standing in for the front end.

- The widget opens with no binary buffers in its initial state (Colab's widget manager and saved-notebook state do
  not carry initial-state buffers); run data arrives only as later ``custom`` messages whose buffers are raw binary
  frames (what a front end hands anywidget as ``DataView``/``Uint8Array``), never base64 in JSON.
- The view's ``ready`` and a Stop ``comm_msg`` sent while ``trainer.train()`` blocks the cell are handled at a step
  boundary (``notebook._comm_poll``), and an ``execute_request`` sent before them still runs after the training
  cell, in order.
- The magics (``%load_ext``, ``%ptt status``, ``%%ptt``) work on IPython 7.34; a dashboard displayed in a later cell
  is a second view of the same widget model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parents[2]
COLAB_VENV = Path(os.environ.get("PTT_COLAB_VENV", ROOT / ".venv-colab"))
COLAB_PY = COLAB_VENV / "bin" / "python"
VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """\
import logging, warnings, datasets, transformers, IPython, ipykernel, anywidget
warnings.filterwarnings("ignore")
datasets.disable_progress_bars(); transformers.utils.logging.disable_progress_bar()
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from ptt_nb import DiagnosticsCallback
from ptt_nb.tiny import make_trainer
diag = DiagnosticsCallback(run_dir={run_dir!r})
trainer = make_trainer("dpo", {work!r}, callbacks=[diag], max_steps=3000)
trainer.remove_callback(PrinterCallback); trainer.remove_callback(ProgressCallback)
%load_ext ptt_nb
print(IPython.__version__, ipykernel.__version__, anywidget.__version__)
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not COLAB_PY.exists():
        pytest.skip(f"{COLAB_PY} missing: bash tests/colab/make_env.sh {COLAB_VENV} (make test builds it)")
    from jupyter_client.kernelspec import KernelSpecManager

    specs = tmp_path_factory.mktemp("colab-kernelspecs")
    (specs / "ptt-colab").mkdir()
    (specs / "ptt-colab" / "kernel.json").write_text(json.dumps({
        "argv": [str(COLAB_PY), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab pins)", "language": "python"}))
    km = jupyter_client.KernelManager(kernel_name="ptt-colab",
                                      kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("colab-kernel")),
                    env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                         "HF_HUB_OFFLINE": "1"})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _iopub_until(kc: Any, done: Any, timeout: float = 120) -> list[dict]:
    """IOPub messages until ``done(msg)`` is true (that message included)."""
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        out.append(msg)
        if done(msg):
            return out
    raise AssertionError(f"timed out; last messages: {[m['msg_type'] for m in out[-10:]]}")


def _idle(msg_id: str) -> Any:
    return lambda m: (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      and m["parent_header"].get("msg_id") == msg_id)


def _run(kc: Any, code: str, timeout: float = 180) -> list[dict]:
    msg_id = kc.execute(code)
    msgs = _iopub_until(kc, _idle(msg_id), timeout)
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert not errors, errors
    return msgs


def _text(msgs: list[dict]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")


def _send_custom(kc: Any, comm_id: str, content: dict) -> None:
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": content}})
    kc.shell_channel.send(msg)


def test_blocking_train_stop_ready_order_buffers_and_views(kernel: Any, tmp_path: Path) -> None:
    kc, run_dir = kernel, tmp_path / "run"
    out = _run(kc, SETUP.format(run_dir=str(run_dir), work=str(tmp_path / "work")))
    assert "7.34.0 6.17.1 0.9.21" in _text(out)

    train_id = kc.execute("trainer.train()")
    opened = _iopub_until(kc, lambda m: m["msg_type"] == "comm_open"
                          and m["content"]["data"]["state"].get("_model_name") == "AnyModel")[-1]
    comm_id = opened["content"]["comm_id"]
    assert opened["content"]["data"].get("buffer_paths", []) == [] and not opened.get("buffers")
    assert "_esm" in opened["content"]["data"]["state"]  # the bundle travels in the state, as text

    def batch_with_buffers(m: dict) -> bool:
        data = m["content"].get("data", {}) if m["msg_type"] == "comm_msg" else {}
        return (m["content"].get("comm_id") == comm_id and data.get("method") == "custom"
                and data["content"].get("type") == "data" and bool(m.get("buffers")))

    seen = _iopub_until(kc, batch_with_buffers, 60)  # the auto-ready init went out; live data follows
    batch = seen[-1]
    assert all(isinstance(b, bytes | memoryview) for b in batch["buffers"])
    assert json.dumps(batch["content"]["data"]).find("base64") < 0
    customs = [m["content"]["data"]["content"] for m in seen if m["msg_type"] == "comm_msg"
               and m["content"].get("comm_id") == comm_id and m["content"]["data"].get("method") == "custom"]
    init = next(c for c in customs if c.get("type") == "init")
    assert init["status"]["stop_mode"] == "poll" and "step boundaries" in init["status"]["stop_hint"]

    after_id = kc.execute("print('after train', diag.monitor.end_event.reason, diag.widget.stream.ready_via, "
                          "diag.widget.comm_poller.handled)")  # queued behind the blocking cell
    _send_custom(kc, comm_id, {"type": "ready"})
    t0 = time.time()
    _send_custom(kc, comm_id, {"type": "stop"})
    rest = _iopub_until(kc, _idle(train_id), 30)
    t_idle = time.time()
    assert not any(m["msg_type"] == "stream" and "after train" in m["content"].get("text", "") for m in rest)
    after = _iopub_until(kc, _idle(after_id), 30)
    assert "after train user_stop" in _text(after), _text(after)
    handled = int(_text(after).split()[-1])
    assert handled == 2  # the ready and the stop, both inside the cell
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    end = next(e for e in events if e["kind"] == "run_end")
    stop = next(e for e in events if e["kind"] == "control" and e["action"] == "stop")
    assert end["reason"] == "user_stop" and stop["by"] == "user" and 0 < end["step"] < 3000
    assert end["t"] - t0 < 2.0 and t_idle - t0 < 10, (end["t"] - t0, t_idle - t0)

    later = _run(kc, "from ptt_nb import show\nshow(diag.monitor)\nNone")
    views = [m["content"]["data"][VIEW]["model_id"] for m in later
             if m["msg_type"] == "display_data" and VIEW in m["content"]["data"]]
    assert views == [comm_id]  # a second view of the one dashboard model
    html = [m for m in later if m["msg_type"] == "display_data" and "text/html" in m["content"]["data"]]
    assert html and "ptt-nb-static" in html[0]["content"]["data"]["text/html"]


def test_magics_on_ipython_7(kernel: Any) -> None:
    kc = kernel
    out = _run(kernel, "%ptt status")
    assert "user_stop" in _text(out) or "stopped" in _text(out), _text(out)
    out = _run(kc, "%%ptt\n- id: always_on\n  when: \"`rewards/margins` > -1000\"\n  severity: low\n")
    text = _text(out) + "".join(json.dumps(m["content"].get("data", {})) for m in out
                                if m["msg_type"] in ("display_data", "execute_result"))
    assert "always_on" in text, text[:2000]
