"""Save-to-dashboard: from a file save until the web dashboard's page shows the new sync.

`innerloop up` on a copy of the bookshop (api only by default, ``--services all`` for the five),
its dashboard open in headless Chromium (Debian's, driven by Playwright). Each round saves api's
app.py with a new line and waits for the page's service row to count one more sync; a
MutationObserver in the page stamps the moment the DOM changed (``Date.now()``), the script stamps
the save (``time.time()``): one clock, so the difference is save -> watcher -> agent -> store ->
server-sent event -> render. Beside it, when the store recorded that sync (its timeline's ``synced``
event, read through the dashboard's /api): the gap is the dashboard's share (the event stream and
the page's render).

Needs the bundled cluster (`innerloop cluster up`), /usr/bin/chromium (hack/chromium) and, for the
five services' RUN steps, the builder environment `make` exports. Run:

    .venv/bin/python bench/dashboard_bench.py [--saves 20] [--services api|all] [--screenshot docs/dashboard.png]

Prints median / p90 / min / max in ms and one JSON line. ``--screenshot`` saves the page after the
rounds: a request through each service first, so every row has log lines, then a save that makes
api crash at start, so the picture shows its alert.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.bookshop import copy_bookshop, running_up
from e2e.conftest import innerloop_command
from e2e.kube import Kube
from innerloop.cluster.node import BundledCluster

CHROMIUM = "/usr/bin/chromium"
STARTUP = '    port = int(os.environ.get("PORT", "8080"))\n'
URL = re.compile(r"dashboard: (http://127\.0\.0\.1:\d+/\?token=\S+)")
SERVICES = ["frontend", "api", "backend", "reviews", "inventory"]
WATCH = """() => {
  const syncs = () => Number(document.querySelector('[data-service="api"].service').dataset.syncs);
  window.__seen = [];
  let last = syncs();
  new MutationObserver(() => {
    const now = syncs();
    if (now > last) window.__seen.push({ at: Date.now(), syncs: now });
    last = now;
  }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-syncs'] });
  // A second reader of the same stream: when the event arrived, before the page drew it.
  window.__arrived = [];
  let streamed = last;
  new EventSource('/events').onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.kind === 'status' && m.data.name === 'api' && m.data.syncs > streamed) {
      window.__arrived.push(Date.now());
      streamed = m.data.syncs;
    }
  };
}"""


TIMELINE = "async () => (await fetch('/api/v1/timeline?service=api')).json()"


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def _touch(port: int, path: str) -> None:
    # A 502 from a service whose neighbour is away still logs a line.
    with contextlib.suppress(urllib.error.URLError, OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--services", choices=["api", "all"], default="api")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--light", action="store_true", help="the light theme for the screenshot (default dark)")
    args = parser.parse_args()
    cluster = BundledCluster(report=lambda _m: None)
    info = cluster.info()
    if info is None:
        sys.exit("error: the bundled cluster is not running: `innerloop cluster up` first")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    namespace = f"bench-dashboard-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    only = ["api"] if args.services == "api" else SERVICES
    probe = ("api", "/healthz") if args.services == "api" else ("frontend", "/api.json")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app, ports = copy_bookshop(Path(tmp) / "bookshop", only=only)
            source = app / "api" / "app.py"
            original = source.read_text()
            with (
                running_up(
                    innerloop_command(),
                    app,
                    ports,
                    namespace=namespace,
                    log=Path(tmp) / "up.log",
                    args=["--dashboard-port", "0"],
                    probe=probe,
                ) as up,
                sync_playwright() as playwright,
            ):
                found = URL.search(up.log.read_text())
                assert found, up.log.read_text()
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
                )
                page = browser.new_page(
                    viewport={"width": 1440, "height": 1100}, color_scheme="light" if args.light else "dark"
                )
                page.goto(found.group(1))
                page.locator('[data-service="api"].service .replica').first.wait_for(timeout=30_000)
                page.evaluate(WATCH)
                to_dom: list[float] = []
                to_event: list[float] = []
                store_ms: list[float] = []
                for i in range(args.saves):
                    marker = f'    print("bench save {i} {secrets.token_hex(3)}", flush=True)\n'
                    saved = time.time()
                    source.write_text(original.replace(STARTUP, marker + STARTUP))
                    page.wait_for_function("n => window.__seen.length >= n", arg=i + 1, timeout=30_000)
                    seen = page.evaluate("i => window.__seen[i].at", i)
                    to_dom.append(seen - saved * 1000)
                    arrived = page.evaluate("i => window.__arrived[i]", i)
                    to_event.append(arrived - saved * 1000)
                    # The store's moment: its "synced" event, recorded right after the status update the page drew.
                    events = page.evaluate(TIMELINE)
                    synced = [e["at"] for e in events if e["kind"] == "synced"][-1]
                    store_ms.append(synced * 1000 - saved * 1000)
                    time.sleep(0.6)  # the restarted app is up before the next save
                if args.screenshot:
                    # Every row with log lines, then a save that breaks api: the picture shows its alert.
                    for name, port in ports.items():
                        _touch(port, "/api.json" if name == "frontend" else "/")
                    broken = '    raise RuntimeError("PRICES is not defined for the new catalogue")\n'
                    source.write_text(original.replace(STARTUP, broken + STARTUP))
                    page.locator('.alert[data-alert-service="api"]').first.wait_for(timeout=60_000)
                    _touch(ports[only[0]], "/api.json" if only[0] == "frontend" else "/")
                    time.sleep(2)
                    page.screenshot(path=str(args.screenshot), full_page=True)
                browser.close()
    finally:
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)

    def line(name: str, values: list[float]) -> str:
        return (
            f"| {name} | {statistics.median(values):.0f} | {_percentile(values, 0.9):.0f} "
            f"| {min(values):.0f} | {max(values):.0f} |"
        )

    print(f"{args.saves} saves of api/app.py, services: {', '.join(only)}")
    print("| ms | median | p90 | min | max |")
    print("|---|---|---|---|---|")
    print(line("save -> dashboard shows the sync", to_dom))
    print(line("save -> synced in the store (its timeline)", store_ms))
    print(line("save -> the event reaches the page", to_event))
    print(line("dashboard's share (store -> drawn)", [a - b for a, b in zip(to_dom, store_ms, strict=True)]))
    print(line("of it, the event stream (store -> arrived)", [a - b for a, b in zip(to_event, store_ms, strict=True)]))
    record = {
        "saves": args.saves,
        "services": only,
        "save_to_dom_ms": {"median": statistics.median(to_dom), "p90": _percentile(to_dom, 0.9)},
        "save_to_event_ms": {"median": statistics.median(to_event), "p90": _percentile(to_event, 0.9)},
        "save_to_synced_ms": {"median": statistics.median(store_ms), "p90": _percentile(store_ms, 0.9)},
        "chromium": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False).stdout.strip(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
