"""Benchmark the ptt_nb widget front-end in headless Chromium, without Jupyter.

Serves the repository root on localhost, opens js/harness/index.html (a fake
anywidget model around the built bundle ptt_nb/static/widget.js) and measures:

* replay: time to render a 100,000-step x 20-metric run, sent the way Python
  sends it (<= 2,000 min/max points per series), and a raw worst case that
  sends all 100,000 points per series (the widget then decimates in JS);
* live stream: 50 log points/s for 60 s (PTT_BENCH_STREAM_S to shorten),
  batched as Python does (10 messages/s) and unbatched (one message per log
  point, 50/s): longest frame gap from requestAnimationFrame timestamps,
  messages/s sent and batches/s applied.

Usage: (cd js && npm run build) && python benchmarks/widget_render.py
       [--quick] [--screenshot out.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pathlib
import socketserver
import sys
import threading

from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    # ES modules need a JavaScript MIME type; some systems map .js oddly.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript"}

    def log_message(self, *args):  # keep benchmark output readable
        pass


def serve(root: pathlib.Path):
    """Serve `root` on an ephemeral localhost port in a daemon thread."""
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--quick", action="store_true", help="10 s streams, fewer repeats")
    ap.add_argument("--screenshot", help="save a PNG of the rendered replay")
    ap.add_argument("--json", action="store_true", help="print results as JSON too")
    args = ap.parse_args(argv)

    bundle = ROOT / "ptt_nb" / "static" / "widget.js"
    if not bundle.exists():
        print(f"missing {bundle}: run `npm run build` in js/ first", file=sys.stderr)
        return 2
    stream_s = float(os.environ.get("PTT_BENCH_STREAM_S", "10" if args.quick else "60"))
    repeats = 1 if args.quick else 3

    load_before = os.getloadavg()[0]
    httpd, base = serve(ROOT)
    results: dict = {}
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)

            def fresh():
                page.goto(f"{base}/js/harness/index.html")
                page.wait_for_function("window.harnessReady === true")

            def best(expr: str, n: int):
                runs = []
                for _ in range(n):
                    fresh()
                    runs.append(page.evaluate(expr))
                runs.sort(key=lambda r: r["ms"])
                return runs[len(runs) // 2]  # median

            # Panels are built lazily as they scroll into view, so measure a
            # first screen (1400x1000: ~10 of 20 panels) and a page tall
            # enough that all 20 panels are on screen (the worst case).
            for tag, height in (("first_screen", 1000), ("all_20_visible", 3400)):
                page.set_viewport_size({"width": 1400, "height": height})
                results[f"replay_decimated_{tag}"] = best("bench.replay({steps: 100000, nMetrics: 20})", repeats)
                results[f"replay_raw_{tag}"] = best("bench.replay({steps: 100000, nMetrics: 20, raw: true})", repeats)
            page.set_viewport_size({"width": 1400, "height": 1000})
            if args.screenshot:
                fresh()
                page.evaluate("bench.replay({steps: 100000, nMetrics: 20}).then(() => 0)")
                # replay() cleans up after measuring; render one to keep on screen
                page.evaluate("""async () => {
                    const {model, view} = await bench.mount();
                    const panels = bench.makePanels(12, {otherFrom: 9, evalEvery: 4});
                    model.emit({type: 'init', run: {trainer: 'DPOTrainer', algorithm: 'dpo'}, panels,
                        status: bench.status(60000, 100000), alerts: bench.makeAlerts(6, 60000, panels),
                        ranks: bench.makeRanks(8, 60, 60000)});
                    const ents = panels.flatMap((p, i) => p.series.map((s) => {
                        const {xs, ys} = bench.series(i, 1, 60001);
                        const k = s.split === 'eval' ? 500 : 30;  // thin synthetic data
                        return {panel: p.id, key: s.key, split: s.split, mode: 'replace',
                                xs: xs.filter((_, j) => j % k === 0), ys: ys.filter((_, j) => j % k === 0)};
                    }));
                    const [m, b] = bench.dataMessage(ents);
                    model.emit(m, b);
                    await bench.settled(view);
                }""")
                page.screenshot(path=args.screenshot, full_page=True)
            # Main-thread busy time (CDP TaskDuration) is less sensitive to
            # other load on the machine than frame gaps are.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def busy_s() -> float:
                metrics = cdp.send("Performance.getMetrics")["metrics"]
                return next(m["value"] for m in metrics if m["name"] == "TaskDuration")

            # CPU seconds used by all Chromium processes (renderer, GPU/raster,
            # browser): unlike wall-clock figures this barely moves with load.
            bcdp = browser.new_browser_cdp_session()

            def cpu_s() -> float:
                return sum(p["cpuTime"] for p in bcdp.send("SystemInfo.getProcessInfo")["processInfo"])

            for name, per_s in (("stream_batched_10msg_s", 10), ("stream_unbatched_50msg_s", 50)):
                fresh()
                page.evaluate(f"bench.prepareStream({{seconds: {stream_s}, rate: 50, msgsPerSec: {per_s}}})")
                b0, c0 = busy_s(), cpu_s()
                results[name] = page.evaluate("bench.runStream()")
                results[name]["main_thread_busy_pct"] = 100 * (busy_s() - b0) / results[name]["seconds"]
                results[name]["chromium_cpu_pct"] = 100 * (cpu_s() - c0) / results[name]["seconds"]
            cdp.detach()
            browser.close()
    finally:
        httpd.shutdown()

    # Other work on the machine skews every figure: print the load with them.
    load_after = os.getloadavg()[0]
    print(f"cpu cores: {os.cpu_count()}  load average (1 min) before/after: {load_before:.1f}/{load_after:.1f}  "
          f"chromium: {args.chromium}  (median of {repeats} runs for replays)")
    for tag in ("first_screen", "all_20_visible"):
        rd, rr = results[f"replay_decimated_{tag}"], results[f"replay_raw_{tag}"]
        print(f"replay 100k steps x 20 metrics [{tag}, {rd['panels_built']} panels built], Python-decimated "
              f"({rd['points_sent']:,} points): {rd['ms']:.0f} ms to render "
              f"(first panel {rd['first_panel_ms']:.0f} ms); "
              f"longest frame gap {rd['max_gap_ms']:.0f} ms")
        print(f"replay 100k steps x 20 metrics [{tag}, {rr['panels_built']} panels built], raw "
              f"({rr['points_sent']:,} points, JS decimates to {rr['max_points_per_series_in_browser']}/series): "
              f"{rr['ms']:.0f} ms to render (first panel {rr['first_panel_ms']:.0f} ms); "
              f"longest frame gap {rr['max_gap_ms']:.0f} ms")
    for name in ("stream_batched_10msg_s", "stream_unbatched_50msg_s"):
        s = results[name]
        print(f"live {name}: {s['log_points']} log points in {s['seconds']:.1f} s; "
              f"{s['messages_per_s']:.1f} messages/s sent, {s['batches_per_s']:.1f} batches/s applied "
              f"(mean {s['mean_apply_ms']:.1f} ms, max {s['max_apply_ms']:.1f} ms per apply); "
              f"frame gaps: max {s['max_gap_ms']:.0f} ms, p99 {s['p99_gap_ms']:.0f} ms, "
              f"median {s['p50_gap_ms']:.1f} ms; renderer main thread busy {s['main_thread_busy_pct']:.0f}%; "
              f"Chromium CPU {s['chromium_cpu_pct']:.0f}% of one core; "
              f"<= {s['max_points_per_series_in_browser']} points/series kept")
    if errors:
        print(f"{len(errors)} browser errors, first: {errors[:3]}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 1 if any(e.startswith(("pageerror", "HTTP")) for e in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
