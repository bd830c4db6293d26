"""Packaging as a new user meets it: from a clean clone, the sdist, the wheel and the clone itself (``pip install
.``) each install into a fresh venv with no node on PATH, and the installed package serves a bundle that renders.

Why: before hatch-jupyter-builder a wheel built without ``make`` silently shipped no bundle and the dashboard
degraded to console alerts. The bundle ``ptt_nb/static/widget.js`` is committed (a clone installs with no node;
a test checks it is the build of the committed ``js/src``), and ``ensured-targets`` fails any build without it.
Real parts only: ``git clone``, ``python -m build`` (isolated build env from the index), ``python -m venv``
without system site-packages, pip, and the system Chromium loading the installed ``Dashboard._esm`` file.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "ptt_nb/static/widget.js"
RUN = "benchmarks/gpu/h100x2_fsdp2"  # a small recorded DPO run (40 steps, 2 ranks) in the repository
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

# Run inside the fresh venv: the installed package's own esm path and the messages its Stream sends a view.
STREAM_SCRIPT = """
import base64, json, sys
import ptt_nb
from ptt_nb import load_run
from ptt_nb.notebook._stream import Stream
from ptt_nb.notebook._widget import BUNDLE, Dashboard
esm = Dashboard._esm  # anywidget read the file: this text is what the kernel sends the front end
esm = str(esm)  # anywidget.FileContents: its text
open(sys.argv[2], "w").write(esm)
out = []
stream = Stream(load_run(sys.argv[1], evaluate=True), replay=True,
                send=lambda c, b: out.append([c, [base64.b64encode(bytes(x)).decode() for x in (b or [])]]))
stream.send_init()
print(json.dumps({"bundle": str(BUNDLE), "same": esm == BUNDLE.read_text(), "file": ptt_nb.__file__,
                  "version": ptt_nb.__version__, "messages": out}, default=str))
"""

# In the page: anywidget's model API as the widget uses it, the installed bundle imported as anywidget imports _esm.
RENDER_JS = """async (msgs) => {
  const widget = (await import('/widget.js')).default;
  const handlers = new Set(), sent = [];
  const model = {on: (n, cb) => n === 'msg:custom' && handlers.add(cb), off: (n, cb) => handlers.delete(cb),
                 get: () => undefined, set() {}, save_changes() {}, send: (m) => sent.push(m)};
  const el = document.createElement('div');
  widget.render({model, el});
  document.body.append(el);
  for (const [content, b64] of msgs) {
    const bufs = b64.map((s) => new DataView(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer));
    for (const h of handlers) h(content, bufs);
  }
  await el.__ptt_view.settled();
  return sent.map((m) => m.type);
}"""


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _clone(dest: Path) -> Path:
    """A clean clone of the committed HEAD: the committed bundle, no node_modules (gitignored)."""
    _run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)])
    assert (dest / BUNDLE).stat().st_size > 100_000 and not (dest / "js" / "node_modules").exists()
    return dest


def _no_node_env(venv: Path) -> dict[str, str]:
    """The environment with PATH reduced to the venv's bin: no node, no npm, no git."""
    drop = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.lower().startswith(("npm_", "node"))}
    env["PATH"] = str(venv / "bin")
    assert shutil.which("node", path=env["PATH"]) is None and shutil.which("npm", path=env["PATH"]) is None
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build`` from a clean clone (the committed bundle is there: the build hook skips npm); the
    clone itself is the third way in (``pip install .``)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = _clone(tmp / "src")
    _run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)])
    (sdist,) = (tmp / "dist").glob("ptt_nb-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("ptt_nb-*.whl")
    clone = _clone(tmp / "clone")  # a clone pip has not built in
    return {"sdist": sdist, "wheel": wheel, "clone": clone, "run": src / RUN}


def test_sdist_and_wheel_carry_the_bundle(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        assert BUNDLE in names and whl.getinfo(BUNDLE).file_size > 100_000
        assert "ptt_nb/palette.json" in names and "ptt_nb/notebook/_widget.py" in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "ptt-nb = ptt_nb.cli:main" in whl.read(entry_points).decode()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "Provides-Extra: notebook" in metadata and "Provides-Extra: trl" in metadata
        assert not any(n.startswith(("js/", "tests/")) for n in names)
    with tarfile.open(dists["sdist"]) as sd:
        top = sd.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in sd.getnames()}
        assert sd.getmember(f"{top}/{BUNDLE}").size > 100_000
    assert {"js/package.json", "js/package-lock.json", "js/build.mjs", "js/src/widget.js", "pyproject.toml",
            "ptt_nb/palette.json"} <= names
    assert not any("node_modules" in n for n in names)


@pytest.mark.parametrize("kind", ["sdist", "wheel", "clone"])
def test_installs_without_node_and_renders(kind: str, dists: dict[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # no --system-site-packages: only what pip installs
    env = _no_node_env(venv)
    py = str(venv / "bin" / "python")
    # the sdist and the clone build their wheel in an isolated env with the bundle already there:
    # skip-if-exists, no npm
    _run([py, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{dists[kind]}[notebook]"],
         env=env, cwd=tmp_path)
    esm = tmp_path / "served_esm.js"
    got = json.loads(_run([py, "-c", STREAM_SCRIPT, str(dists["run"]), str(esm)], env=env, cwd=tmp_path).stdout)
    bundle = Path(got["bundle"])
    assert bundle.is_relative_to(venv) and got["same"], got["bundle"]  # the installed package's own file
    assert Path(got["file"]).is_relative_to(venv) and got["version"] != "0+unknown"
    init = got["messages"][0][0]
    assert init["type"] == "init" and init["run"]["trainer"] == "DPOTrainer"
    core = [p for p in init["panels"] if p.get("group") != "other"]
    assert core

    errors: list[str] = []

    def render() -> tuple[int, str, int]:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.route("http://ptt.test/", lambda r: r.fulfill(content_type="text/html",
                                                                   body="<!doctype html><title>t</title><body></body>"))
                page.route("http://ptt.test/widget.js", lambda r: r.fulfill(content_type="text/javascript", path=esm))
                page.goto("http://ptt.test/")
                sent = page.evaluate(RENDER_JS, got["messages"])
                assert sent[:1] == ["ready"]
                canvases = page.locator(".ptt-cell canvas")  # BokehJS draws inside shadow roots: locators pierce them
                canvases.first.wait_for(timeout=30_000)
                n_canvases = canvases.count()
                text = page.inner_text("body")
                n_docs = page.evaluate("() => document.querySelector('.ptt-root').parentElement.__ptt_view"
                                       ".grid.documents().length")
                page.screenshot(path=str(_artifacts() / f"packaging_{kind}.png"))
            finally:
                browser.close()
        return n_canvases, text, n_docs

    # in a thread of its own: Playwright's sync API refuses to run where an asyncio loop is set (an earlier
    # in-process test, e.g. IPython's, may leave one on the main thread)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        n_canvases, text, n_docs = pool.submit(render).result()
    assert not errors, errors
    assert n_canvases >= len(core), (n_canvases, len(core))  # every core panel plotted
    assert "DPOTrainer · dpo" in text and "step 40 / 40" in text  # the header, from the recorded run
    assert n_docs >= len(core)  # a BokehJS document per core panel


def test_committed_bundle_is_the_build_of_js_src(tmp_path: Path) -> None:
    """The committed bundle (what a clone installs) is byte for byte what js/build.mjs makes of the committed
    sources: a change in js/src or the palette without `make js` fails here (esbuild's output is deterministic)."""
    if shutil.which("node") is None or not (ROOT / "js" / "node_modules" / "esbuild").exists():
        pytest.skip("needs node and js/node_modules (make test installs both)")
    out = tmp_path / "widget.js"
    _run(["node", "build.mjs", f"--outfile={out}"], cwd=ROOT / "js")
    committed = _run(["git", "show", f"HEAD:{BUNDLE}"], cwd=ROOT).stdout
    assert out.read_text() == committed, "ptt_nb/static/widget.js is stale: run `make js` and commit it"


def _artifacts() -> Path:
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    return out
