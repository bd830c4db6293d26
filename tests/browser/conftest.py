"""Real JupyterLab / Notebook 7 servers and a headless Debian Chromium driven by Playwright.

Offline by construction: the system ``/usr/bin/chromium`` (``apt-get install -y chromium``; never
``playwright install``), a server on a free local port with a random token, notebooks written into a
temporary root. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
BUNDLE = ROOT / "ptt_nb" / "static" / "widget.js"
# the toolbar's execution indicator reads idle (Lab 4 and Notebook 7); it also reads idle before any kernel exists
KERNEL_IDLE = ("() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
               ".jp-Notebook-ExecutionIndicator')].some(e => e.dataset.status === 'idle')")
CELL_STARTED = ("() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt')]"
                ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")

# Console messages of JupyterLab/Notebook itself that say nothing about the widget (checked by hand).
BENIGN_CONSOLE = (
    "favicon",
    "Failed to load resource: the server responded with a status of 404",  # optional lab/translation files
)
# Page errors thrown by the front-end itself: Notebook 7.6.5 throws this from its settings code after
# Run > Run All Cells even on a notebook holding only print(1) (reproduced without ptt_nb).
BENIGN_PAGE_ERRORS = (("reading 'schema'", "static/notebook/notebook_core."),)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)
    return path


SERVERS: dict[str, JupyterServer] = {}  # by base URL: Page.run_all finds the server of a page opened with goto()


class JupyterServer:
    """``jupyter lab`` or ``jupyter notebook`` on a temp root; stopped (with its kernels) at teardown."""

    def __init__(self, app: str, root: Path) -> None:
        self.app, self.root = app, root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        SERVERS[self.base] = self
        home = root.parent / f"{root.name}-home"  # one per server: no workspace or settings of an earlier module
        home.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(home / "config"),  # no user settings leak in
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # the test machine has 2 cores for the browser, server and kernel
            "HF_HUB_OFFLINE": "1",
        })
        self.settings_dir = home / "settings"  # user settings, read by Lab at page load
        if app == "lab":  # no "get notified about Jupyter news?" toast over the page
            notify = home / "settings" / "@jupyterlab" / "apputils-extension"
            notify.mkdir(parents=True, exist_ok=True)
            (notify / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        self.log_path = root.parent / f"{app}-server.log"
        cmd = [sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.open_browser=False", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.news_url=None", "--LabApp.extension_manager=readonly"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_up()

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def _wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"jupyter {self.app} exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.3)
        self.stop()  # ours, never left running
        raise RuntimeError(f"jupyter {self.app} did not start in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def url(self, path: str, query: str = "") -> str:
        return f"{self.base}{path}?{query + '&' if query else ''}token={self.token}"

    def shutdown_kernels(self) -> None:
        try:
            for kernel in self.api("/api/kernels"):
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass

    def stop(self) -> None:
        self.shutdown_kernels()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the server stops its kernels on SIGTERM
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own server's process group only
                self.proc.wait(timeout=5)
        self._log.close()


def _require_tools() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get update && apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api")
    if not BUNDLE.exists():
        pytest.skip(f"{BUNDLE} missing: cd js && npm run build")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    _require_tools()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _server(app: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    _require_tools()
    root = tmp_path_factory.mktemp(f"{app}-root")
    for attempt in range(3):  # a free port picked here can be taken before the server binds it: try another
        try:
            server = JupyterServer(app, root)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from _server("lab", tmp_path_factory)


@pytest.fixture(scope="module")
def notebook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from _server("notebook", tmp_path_factory)


class Page:
    """A browser page with console-error capture and helpers for driving a notebook."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.errors: list[str] = []
        self.server: JupyterServer | None = None
        page.on("console", lambda msg: self._console(msg))
        page.on("pageerror", lambda exc: self._page_error(exc))

    def _page_error(self, exc: Any) -> None:
        text = f"pageerror: {exc}\n{(exc.stack or '')[:800]}"
        if not any(all(part in text for part in parts) for parts in BENIGN_PAGE_ERRORS):
            self.errors.append(text)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(b in msg.text for b in BENIGN_CONSOLE):
            self.errors.append(f"console.error: {msg.text}")

    def open_notebook(self, server: JupyterServer, name: str) -> None:
        """Open a notebook alone: a fresh Lab workspace (no tabs restored from an earlier test)."""
        self.server = server
        if server.app == "lab":
            self.page.goto(server.url(f"/lab/tree/{name}", "reset"))
        else:
            self.page.goto(server.url(f"/notebooks/{name}"))

    def screenshot(self, label: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def wait_js(self, expression: str, timeout: float = 60, arg: Any = None) -> Any:
        """Poll a JS function body until it returns something truthy; returns that value."""
        handle = self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=200)
        return handle.json_value()

    def run_all(self, attempts: int = 4) -> None:
        """Run > Run All Cells (same menu in JupyterLab 4 and Notebook 7), retried until a cell starts: a click
        made before the kernel connection is up is silently dropped by the front-end.

        A click made while the notebook has no kernel yet (its session still being created: slow under load)
        makes Lab 4 run every cell through ``startKernel()``, racing its automatic start, and open a modal
        "Select Kernel" dialog that swallows every later click (reproduced with the quickstart: cell 1 ran, then
        the dialog). So: wait until the server holds the notebook's session with an idle kernel, and accept that
        dialog (its preselected kernel is the notebook's python3) where it still shows up."""
        page = self.page
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        self._wait_kernel_idle()
        for _ in range(attempts):
            try:
                self._accept_kernel_dialog()
                page.locator(".lm-MenuBar-item", has_text="Run").first.click(timeout=30_000)
                page.get_by_role("menuitem", name="Run All Cells", exact=True).first.click(timeout=30_000)
                page.wait_for_function(CELL_STARTED, timeout=30_000, polling=250)
                return
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: try again
                if not self._accept_kernel_dialog():
                    page.keyboard.press("Escape")
                try:  # the dialog accepted, the queued cells start on their own
                    page.wait_for_function(CELL_STARTED, timeout=30_000, polling=250)
                    return
                except Exception:  # noqa: BLE001
                    pass
        raise AssertionError("Run All Cells did not start any cell")

    def _wait_kernel_idle(self, timeout: float = 180) -> None:
        """Until the server holds this notebook's session with an idle kernel (the front-end's own indicators
        read "idle" before any kernel exists), then a moment for the front-end to take the session in."""
        path = urllib.parse.urlparse(self.page.url).path
        name = urllib.parse.unquote(path.split("/tree/", 1)[-1] if "/tree/" in path
                                    else path.split("/notebooks/", 1)[-1])
        server = self.server or next((s for base, s in SERVERS.items() if self.page.url.startswith(base)), None)
        if server is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sessions = server.api("/api/sessions")
            except OSError:
                sessions = []
            if any(s.get("path") == name and (s.get("kernel") or {}).get("execution_state") == "idle"
                   for s in sessions):
                try:
                    self.page.wait_for_function(KERNEL_IDLE, timeout=30_000, polling=250)
                except Exception:  # noqa: BLE001 - playwright's TimeoutError: no indicator in this front-end
                    pass
                time.sleep(1.0)
                return
            time.sleep(0.5)

    def _accept_kernel_dialog(self) -> bool:
        dialog = self.page.locator(".jp-Dialog", has_text="Select Kernel")
        if not dialog.count() or not dialog.first.is_visible():
            return False
        dialog.first.locator(".jp-mod-accept").first.click(timeout=10_000)
        return True

    def assert_no_console_errors(self) -> None:
        assert self.errors == [], "browser console errors:\n" + "\n".join(self.errors)


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    p = Page(context.new_page(), request.node.name)
    try:
        yield p
    finally:
        try:
            p.screenshot("final")
        except Exception:  # noqa: BLE001 - a screenshot failing must not mask the test result
            pass
        context.close()
        if p.server is not None:
            p.server.shutdown_kernels()  # the next test's kernel gets the machine's cores


def copy_fixture(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst
