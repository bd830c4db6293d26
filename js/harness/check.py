"""Browser smoke test of the widget's interactions, without Jupyter.

Drives js/harness/index.html in headless Chromium and asserts the JS→Python
messages of the protocol (ready, zoom on pan/reset/alert click, stop, mute),
plus init reset, lazy "other" panels and the rank heatmap.
Run: (cd js && npm run build) && python js/harness/check.py
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from widget_render import FLAGS, ROOT, serve  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

SETUP = """async () => {
  const {model, view, el} = await bench.mount();
  window.t = {model, view, el};
  const panels = bench.makePanels(8, {otherFrom: 6, evalEvery: 3});
  model.emit({type: 'init', run: {trainer: 'DPOTrainer', algorithm: 'dpo', world_size: 4}, panels,
      status: bench.status(1000, 2000), alerts: bench.makeAlerts(3, 1000, panels), ranks: bench.makeRanks(4, 20, 1000)});
  const ents = panels.flatMap((p, i) => p.series.map((s) => {
      const {xs, ys} = bench.series(i, 1, 1001);
      return {panel: p.id, key: s.key, split: s.split, mode: 'replace', xs, ys};
  }));
  const [m, b] = bench.dataMessage(ents);
  model.emit(m, b);
  await bench.settled(view);
  return model.sent.map((x) => x.type);
}"""


def main() -> int:
    httpd, base = serve(ROOT)
    errors: list[str] = []
    failures: list[str] = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/js/harness/index.html")
            page.wait_for_function("window.harnessReady === true")
            sent = page.evaluate(SETUP)
            check(sent == ["ready"], f"render sends ready first ({sent})")
            sent_since = lambda: page.evaluate("t.model.sent.splice(0)")  # noqa: E731
            sent_since()

            def zooms_after(n=1, settle_ms=400, timeout_ms=5000):
                """Zoom messages once at least n arrived (debounced, so allow for a slow, loaded machine),
                plus any that follow within settle_ms (to catch duplicates)."""
                try:
                    page.wait_for_function(f"t.model.sent.filter(m => m.type === 'zoom').length >= {n}",
                                           timeout=timeout_ms)
                except Exception:  # noqa: BLE001 - reported by the check that follows
                    pass
                page.wait_for_timeout(settle_ms)
                return [m for m in sent_since() if m["type"] == "zoom"]

            # header
            check(page.inner_text(".ptt-title") == "DPOTrainer · dpo", "header title")
            check("step 1,000 / 2,000" in page.inner_text(".ptt-progress-text"), "progress text")
            check(page.locator(".ptt-badge").inner_text() == "running", "state badge")

            # alerts: text, not HTML; javascript: url not linked
            check(page.locator(".ptt-alert").count() == 3, "three alert cards")
            check("<b>not html</b>" in page.inner_text(".ptt-alert-list"), "alert text rendered as text")
            check(page.locator(".ptt-alert a[href^='javascript']").count() == 0, "no javascript: links")
            check(page.locator(".ptt-alert a[href^='https://arxiv.org']").count() >= 1, "reference link")
            steps = page.eval_on_selector_all(".ptt-alert .ptt-step", "els => els.map(e => e.textContent)")
            check(steps == sorted(steps, key=lambda s: -int(s.split()[1].replace(",", ""))), f"newest first {steps}")

            # pan the first plot → one debounced zoom for that panel
            box = page.locator(".ptt-cell").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            for k in range(10):
                page.mouse.move(cx - 10 * k, cy)
            page.mouse.up()
            zooms = zooms_after()
            check(len(zooms) == 1 and zooms[0]["panel"] == "p_0" and zooms[0]["x1"] > zooms[0]["x0"],
                  f"pan → one zoom message {zooms}")
            if zooms:
                check(zooms[0]["x0"] > 1, "pan moved the range right")

            # reset → zoom for the full extent
            page.evaluate("""() => { const p = t.view.grid.panels.get('p_0');
                p.embed && p.fig.reset.emit(); }""")
            zooms = zooms_after()
            check(len(zooms) == 1 and zooms[0]["x0"] == 1 and zooms[0]["x1"] == 1000,
                  f"reset → zoom to full extent {zooms}")

            # wheel zoom (not active by default: activate it like a user would) → one zoom message
            page.evaluate("""() => { const f = t.view.grid.panels.get('p_1').fig;
                f.toolbar.active_scroll = f.toolbar.tools.find(x => x.constructor.__name__ === 'WheelZoomTool'); }""")
            box = page.locator(".ptt-cell").nth(1).bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            for _ in range(5):
                page.mouse.wheel(0, -100)
                page.wait_for_timeout(30)
            zooms = zooms_after()
            # (one message per pause > 150 ms: a loaded machine may split the gesture, so allow a few)
            check(1 <= len(zooms) <= 5 and all(z["panel"] == "p_1" for z in zooms)
                  and zooms[-1]["x1"] - zooms[-1]["x0"] < 1000, f"wheel zoom → zoom message(s) {zooms}")

            # zoom answer: replace with a window → panel gets exactly those points
            page.evaluate("""async () => { const {xs, ys} = bench.series(0, 400, 600);
                const [m, b] = bench.dataMessage([{panel: 'p_0', key: 'loss', mode: 'replace', xs, ys}]);
                t.model.emit(m, b); await bench.settled(t.view); }""")
            n = page.evaluate("t.view.grid.panels.get('p_0').lines[0].source.get_length()")
            check(n == 200, f"replace applied to source ({n} points)")

            # alert click → zoom for each of the alert's panels, x range around its step
            page.locator(".ptt-alert").first.click()
            zooms = zooms_after(2)
            alert = page.evaluate("t.view.feed.all().sort((a,b)=>b.step-a.step)[0]")
            check(sorted(z["panel"] for z in zooms) == sorted(alert["panels"]), f"alert click zooms its panels {zooms}")
            check(all(z["x0"] < alert["step"] < z["x1"] for z in zooms), "zoom window contains the alert step")

            # mute
            page.locator(".ptt-alert .ptt-mute").first.click()
            msgs = sent_since()
            check(msgs and msgs[-1]["type"] == "mute" and msgs[-1]["muted"] is True, f"mute message {msgs}")
            check(page.locator(".ptt-alert.ptt-muted").count() >= 1, "muted card dimmed")

            # stop
            page.click(".ptt-stop")
            msgs = sent_since()
            check(msgs == [{"type": "stop"}], f"stop message {msgs}")
            check(page.inner_text(".ptt-stop") == "stopping…" and page.is_disabled(".ptt-stop"), "stop shows stopping…")

            # status update: finished hides stop, badge changes
            page.evaluate("""async () => { t.model.emit({type: 'data', series: [], alerts: [],
                status: {...bench.status(2000, 2000, 'finished'), reason: 'max_steps reached'}}); await bench.settled(t.view); }""")
            check(page.locator(".ptt-badge").inner_text() == "finished", "finished badge")
            check(not page.is_visible(".ptt-stop"), "stop hidden when not running")

            # other section: lazy
            built = page.evaluate("[...t.view.grid.panels.values()].filter(p => p.spec.group === 'other').map(p => p.embed != null)")
            check(built == [False, False], f"other panels not built while closed {built}")
            page.click(".ptt-other > summary")
            page.evaluate("bench.settled(t.view)")
            built = page.evaluate("[...t.view.grid.panels.values()].filter(p => p.spec.group === 'other').map(p => p.embed != null && p.embed !== 'pending')")
            check(built == [True, True], f"other panels built when opened {built}")

            # heatmap: visible for world_size 4, selector switches metric, hidden for null
            check(page.is_visible(".ptt-ranks"), "heatmap visible")
            page.select_option(".ptt-rank-metric", "wait_ms")
            title = page.evaluate("t.view.heatmap.fig.title.text")
            check(title == "wait_ms", f"heatmap metric switch ({title})")
            check("3" in page.inner_text(".ptt-stragglers"), "straggler note")
            page.evaluate("async () => { t.model.emit({type: 'data', series: [], alerts: [], status: null, ranks: null}); await bench.settled(t.view); }")
            check(not page.is_visible(".ptt-ranks"), "heatmap hidden for ranks=null")

            # re-init resets
            page.evaluate("""async () => { t.model.emit({type: 'init', run: {trainer: 'GRPOTrainer', algorithm: 'grpo'},
                panels: bench.makePanels(2), status: bench.status(0, 10), alerts: [], ranks: null}); await bench.settled(t.view); }""")
            check(page.locator(".ptt-cell").count() == 2 and page.locator(".ptt-alert").count() == 0, "init resets view")
            check(page.inner_text(".ptt-stop") == "■ Stop" and not page.is_disabled(".ptt-stop"), "stop re-armed after init")

            # teardown removes everything
            page.evaluate("() => { const c = document.getElementById('widget'); t.view.destroy(); }")
            check(page.locator(".ptt-root").count() == 0, "destroy removes DOM")
            browser.close()
    finally:
        httpd.shutdown()
    errors = [e for e in errors if "favicon" not in e]
    check(not errors, f"no browser errors {errors[:3]}")
    print("FAILED" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
