"""Stop during a blocking ``trainer.train()`` on both kernel generations, in JupyterLab 4 and headless Chromium.

- ipykernel 7.4 (the main .venv): the kernel's Interrupt is a graceful stop (the Stop click on this kernel is
  tested in test_dashboard_browser.py).
- ipykernel 6.17 / IPython 7.34 / ipywidgets 7.7.1 / anywidget 0.9.21 (Colab's kernel side, ``.venv-colab`` built
  by tests/colab/make_env.sh, registered here as a kernelspec): the dashboard renders and updates live, the Stop
  click gets in at a step boundary (``_comm_poll``), and the Interrupt is a graceful stop. The server and front
  end stay JupyterLab 4 from .venv; its anywidget front end is anywidget 0.9.21's own labextension (first on
  JUPYTER_PATH), as Colab loads the front end matching the kernel's anywidget.

Each: training ends within 2 s of the click / interrupt at a step boundary, ``run_end`` says ``user_stop``, and
after an interrupt ``trainer.save_model()`` works in the next cell. The interrupt is sent through the server's
REST endpoint, which is what the toolbar's Interrupt button calls.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from ptt_nb.events import RunEnd
from ptt_nb.sources._reader import read_events

from .conftest import ROOT, JupyterServer, Page, _server, write_notebook

pytestmark = pytest.mark.browser

COLAB_VENV = Path(os.environ.get("PTT_COLAB_VENV", ROOT / ".venv-colab"))
COLAB_PY = COLAB_VENV / "bin" / "python"
KERNEL = "ptt-colab"

SETUP = """\
import logging, warnings, IPython, ipykernel, anywidget
warnings.filterwarnings("ignore")
logging.getLogger("transformers").setLevel(logging.ERROR)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from ptt_nb import DiagnosticsCallback
from ptt_nb.tiny import make_trainer
import datasets
datasets.disable_progress_bars()  # their tqdm bars are ipywidgets-7 widgets too (see below)
import transformers
transformers.utils.logging.disable_progress_bar()
print("kernel", IPython.__version__, ipykernel.__version__, anywidget.__version__)
diag = DiagnosticsCallback(run_dir={run_dir!r})
trainer = make_trainer("dpo", {workdir!r}, callbacks=[diag], max_steps=3000)
trainer.remove_callback(PrinterCallback)
# tqdm's notebook bar is an ipywidgets-7 widget (@jupyter-widgets/base ^1.2.0), which Lab 4's widget manager does
# not render: a front-end mismatch of this test rig (Colab renders it), not ptt_nb's; keep it out of the console
trainer.remove_callback(ProgressCallback)
"""
VIEW_POINTS = """() => { const r = document.querySelector('.ptt-root'); const v = r && r.parentElement.__ptt_view;
  const p = v && v.grid.panels.get('dpo_loss'); if (!p) return 0; p.cell.scrollIntoView({block: 'nearest'});
  return Math.max(0, ...p.lines.map(l => (l.source ? l.source.data.x.length : 0))); }"""
# An ipywidgets-7 kernel gives every DOMWidget (our dashboard too) a Layout model of @jupyter-widgets/base 1.2.0;
# Lab 4's widget manager (jupyterlab_widgets 3) registers base 2.0.0 only, logs this once per widget and renders
# the anywidget view without that Layout. A mismatch of this rig's front end (Colab's manager is ipywidgets 7's).
LAYOUT_7 = "Module @jupyter-widgets/base, version ^1.2.0 is not registered"
HINT = "() => { const e = document.querySelector('.ptt-stop-hint'); return e && e.textContent ? " \
       "[e.dataset.mode, e.textContent] : null; }"


@pytest.fixture(scope="module")
def colab_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """JupyterLab 4 (.venv) whose notebooks run on the Colab-pinned kernel."""
    if not COLAB_PY.exists():
        pytest.skip(f"{COLAB_PY} missing: bash tests/colab/make_env.sh {COLAB_VENV} (make test builds it)")
    extra = tmp_path_factory.mktemp("colab-jupyter-path")
    spec = extra / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(COLAB_PY), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab pins)", "language": "python"}))
    (extra / "labextensions").mkdir()
    (extra / "labextensions" / "anywidget").symlink_to(COLAB_VENV / "share" / "jupyter" / "labextensions" /
                                                       "anywidget")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(extra), os.environ.get("JUPYTER_PATH")])))
        yield from _server("lab", tmp_path_factory)


def _notebook(server: JupyterServer, name: str, kernel: str) -> Path:
    root = server.root
    run_dir = root / f"{name}-run"
    path = write_notebook(root / f"{name}.ipynb", [
        SETUP.format(run_dir=str(run_dir), workdir=str(root / f"{name}-work")),
        "trainer.train()",
        f"trainer.save_model({str(root / (name + '-saved'))!r}); print('saved after', diag.monitor.end_event.reason)",
    ])
    if kernel != "python3":
        nb = nbformat.read(path, as_version=4)
        nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3 (Colab pins)", "language": "python"}
        nbformat.write(nb, path)
    return run_dir


def _start(page: Page, server: JupyterServer, name: str) -> None:
    page.open_notebook(server, f"{name}.ipynb")
    page.run_all()
    page.page.locator(".ptt-root").first.wait_for(timeout=120_000)
    page.wait_js(f"() => ({VIEW_POINTS})() >= 10", timeout=90)  # live updates reach the plots while train() blocks


def _run_end(run_dir: Path, timeout: float = 30) -> tuple[RunEnd, list]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "events.jsonl").exists():
            events, _ = read_events(run_dir)
            end = next((e for e in events if isinstance(e, RunEnd)), None)
            if end is not None:
                return end, events
        time.sleep(0.1)
    raise AssertionError(f"no run_end in {run_dir}/events.jsonl after {timeout}s")


def _check_stopped(run_dir: Path, t0: float, by: str) -> dict:
    end, events = _run_end(run_dir)
    control = next(e for e in events if getattr(e, "action", None) == "stop")
    assert end.reason == "user_stop" and control.by == by, (end, control)
    assert 0 < end.step < 3000
    latency = {"to_handler_s": round(control.t - t0, 3), "to_run_end_s": round(end.t - t0, 3), "step": end.step}
    assert latency["to_run_end_s"] < 2.0, latency
    return latency


def _interrupt(server: JupyterServer) -> float:
    (kernel,) = server.api("/api/kernels")
    t0 = time.time()
    server.api(f"/api/kernels/{kernel['id']}/interrupt", method="POST")
    return t0


def _saved_after(page: Page, server: JupyterServer, name: str) -> None:
    page.page.locator(".jp-OutputArea-output", has_text="saved after user_stop").wait_for(timeout=60_000)
    assert (server.root / f"{name}-saved" / "config.json").exists()


def _no_errors_but_layout7(page: Page) -> None:
    layout = [e for e in page.errors if LAYOUT_7 in e]
    assert len(layout) <= 1, layout  # our one widget; a second would be some other ipywidgets-7 widget
    page.errors = [e for e in page.errors if LAYOUT_7 not in e]
    page.assert_no_console_errors()


def test_ipykernel7_interrupt_is_graceful(lab_server: JupyterServer, page: Page) -> None:
    run_dir = _notebook(lab_server, "k7int", "python3")
    _start(page, lab_server, "k7int")
    assert page.wait_js(HINT, timeout=10)[0] == "subshell"
    latency = _check_stopped(run_dir, _interrupt(lab_server), by="interrupt")
    print("ipykernel 7 interrupt", latency)
    _saved_after(page, lab_server, "k7int")
    page.assert_no_console_errors()


def test_colab_kernel_stop_click(colab_lab: JupyterServer, page: Page) -> None:
    run_dir = _notebook(colab_lab, "k6click", KERNEL)
    _start(page, colab_lab, "k6click")
    page.page.locator(".jp-OutputArea-output", has_text="kernel 7.34.0 6.17.1 0.9.21").wait_for(timeout=10_000)
    mode, hint = page.wait_js(HINT, timeout=10)
    assert mode == "poll" and "step boundaries" in hint
    page.screenshot("running")
    stop = page.page.locator(".ptt-stop").first
    t0 = page.page.evaluate("() => Date.now() / 1000")
    stop.click()
    latency = _check_stopped(run_dir, t0, by="user")
    print("ipykernel 6 stop click", latency)
    page.wait_js("() => [...document.querySelectorAll('.ptt-badge')].some(b => /stopped by user/.test("
                 "b.textContent))", timeout=30)
    _saved_after(page, colab_lab, "k6click")
    _no_errors_but_layout7(page)


def test_colab_kernel_interrupt_is_graceful(colab_lab: JupyterServer, page: Page) -> None:
    run_dir = _notebook(colab_lab, "k6int", KERNEL)
    _start(page, colab_lab, "k6int")
    latency = _check_stopped(run_dir, _interrupt(colab_lab), by="interrupt")
    print("ipykernel 6 interrupt", latency)
    _saved_after(page, colab_lab, "k6int")
    _no_errors_but_layout7(page)


if sys.platform == "win32":  # SIGINT-based interrupts only
    pytestmark = [pytestmark, pytest.mark.skip("POSIX kernels only")]
