"""The web dashboard in a real browser (Debian's Chromium through Playwright) against a real `innerloop up`.

One `up` of the bookshop's api (the Python standard library, built by innerloop itself) and one page
for the whole module, each test leaving the app serving: the printed URL logs the browser in; the
service appears with its replica, forward and actions; a saved edit shows as a sync within a second,
its log lines stream in with their ANSI colours and can be searched; the restart button restarts the
process in the same pod; pause holds a save until resume; a crash shows as an alert with its last
lines, greyed once a fix is saved.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from innerloop.cluster.node import BundledCluster

from .bookshop import Up, copy_bookshop, running_up
from .conftest import innerloop_command
from .kube import Kube, eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
URL = re.compile(r"dashboard: (http://127\.0\.0\.1:(\d+)/\?token=\S+)")
STARTUP = '    port = int(os.environ.get("PORT", "8080"))\n'


def chromium_or_skip() -> None:
    """Skip outside CI when Debian's Chromium is missing; in CI (CI=true) a missing browser fails."""
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the dashboard's browser tests need {CHROMIUM}: run hack/chromium first")
    pytest.skip(f"no {CHROMIUM} for the dashboard's browser tests (hack/chromium installs it)")


class Session:
    def __init__(self, up: Up, page: Page, url: str, port: int, original: str) -> None:
        self.up = up
        self.page = page
        self.url = url
        self.port = port
        self.original = original

    def row(self) -> Locator:
        return self.page.locator('[data-service="api"].service')

    def syncs(self) -> int:
        return int(self.row().get_attribute("data-syncs") or "-1")

    def count(self, selector: str) -> int:
        return int(self.page.locator(selector).count())

    def save(self, marker: str, *, crash: bool = False) -> None:
        """api/app.py as it came, plus a green line at start (and a crash after it, if asked)."""
        lines = f'    print("\\x1b[32m{marker}\\x1b[0m", flush=True)\n'
        if crash:
            lines += f'    raise RuntimeError("{marker}")\n'
        (self.up.dir / "api" / "app.py").write_text(self.original.replace(STARTUP, lines + STARTUP))


@pytest.fixture(scope="module")
def dashboard(bundled_cluster: BundledCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    chromium_or_skip()
    info = bundled_cluster.info()
    assert info is not None, "bundled cluster is not ready"
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    namespace = f"t-dashboard-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    folder = tmp_path_factory.mktemp("dashboard")
    app, ports = copy_bookshop(folder / "bookshop", only=["api"])
    original = (app / "api" / "app.py").read_text()
    assert STARTUP in original
    try:
        # Port 0: any free one, so several `up`s on this machine never race for 10351.
        with (
            running_up(
                innerloop_command(),
                app,
                ports,
                namespace=namespace,
                log=folder / "up.log",
                args=["--dashboard-port", "0"],
                probe=("api", "/healthz"),
            ) as up,
            sync_playwright() as playwright,
        ):
            found = URL.search(up.log.read_text())
            assert found, up.log.read_text()
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                yield Session(up, page, found.group(1), int(found.group(2)), original)
            finally:
                browser.close()
    finally:
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_printed_url_opens_the_dashboard_and_the_service_appears(dashboard: Session) -> None:
    page = dashboard.page
    printed = [line for line in dashboard.up.log.read_text().splitlines() if "dashboard: " in line]
    assert len(printed) == 1, printed  # one progress line
    page.goto(dashboard.url)
    assert page.url == f"http://127.0.0.1:{dashboard.port}/"  # the token left the address bar for a cookie
    page.locator('[data-link="live"]').wait_for(timeout=10_000)
    row = dashboard.row()
    row.wait_for(timeout=10_000)
    assert row.get_attribute("data-phase") == "running"
    assert row.locator(".replica").first.inner_text().endswith("in sync")
    forward = row.locator("a.forward")
    assert forward.get_attribute("href") == f"http://127.0.0.1:{dashboard.up.ports['api']}/"
    # A dev-mode service offers every action; the page shows what `up` registered.
    labels = [b.inner_text() for b in row.locator("button[data-action]").all()]
    assert labels == ["Restart", "Rebuild", "Pause sync"]
    # A client without the cookie gets the one line that says what to open.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{dashboard.port}/api/v1/status", timeout=5)
    assert refused.value.code == 403
    assert "open the URL `innerloop up` printed" in refused.value.read().decode()


def test_an_edit_shows_as_a_sync_within_a_second_and_its_logs_stream_in_colour(dashboard: Session) -> None:
    page = dashboard.page
    before = dashboard.syncs()
    marker = f"dashboard-edit-{secrets.token_hex(3)}"
    started = time.monotonic()
    dashboard.save(marker)
    page.wait_for_function(
        "before => document.querySelector('[data-service=\"api\"].service').dataset.syncs > before",
        arg=before,
        polling="raf",
        timeout=10_000,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the sync showed {elapsed * 1000:.0f} ms after the save"
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", dashboard.row().locator('[data-role="last-sync-ms"]').inner_text())
    page.locator('.event[data-kind="synced"][data-service="api"]').first.wait_for(timeout=5_000)
    # The restarted app's first line, streamed in, its colour kept as the theme's green.
    green = page.locator(".log-box .ansi-green-fg", has_text=marker)
    green.wait_for(timeout=15_000)
    # A request's log line streams in; the search keeps only the lines that match.
    probe = secrets.token_hex(4)
    with pytest.raises(urllib.error.HTTPError):  # api's 404, logged
        urllib.request.urlopen(f"http://127.0.0.1:{dashboard.up.ports['api']}/nothing-{probe}", timeout=10)
    page.locator(".log-line", has_text=f"nothing-{probe}").wait_for(timeout=15_000)
    page.fill("input.search", probe)
    eventually(lambda: dashboard.count(".log-box .log-line") == 1, timeout_s=5)
    assert f"nothing-{probe}" in page.locator(".log-box .log-line").inner_text()
    page.fill("input.search", "")


def test_the_restart_button_restarts_the_process_in_the_same_pod(dashboard: Session, kube: Kube) -> None:
    page = dashboard.page
    restarts = dashboard.count('.event[data-kind="restarted"]')
    started = page.locator(".log-line", has_text="api listening on").count()
    pods = {p.get_attribute("data-pod") for p in dashboard.row().locator(".replica").all()}
    dashboard.row().locator('button[data-action="restart"]').click()
    page.locator(".toast", has_text="api").first.wait_for(timeout=15_000)
    eventually(lambda: dashboard.count('.event[data-kind="restarted"]') > restarts, timeout_s=15)
    # A new process printed its first line again; the same pod, its container never restarted.
    eventually(lambda: page.locator(".log-line", has_text="api listening on").count() > started, timeout_s=15)
    assert {p.get_attribute("data-pod") for p in dashboard.row().locator(".replica").all()} == pods
    (pod,) = pods
    status = kube.get_json("pod", str(pod), "-n", dashboard.up.namespace)["status"]
    assert status["containerStatuses"][0]["restartCount"] == 0


def test_pause_holds_a_save_until_resume(dashboard: Session) -> None:
    row = dashboard.row()
    row.locator('button[data-action="pause"]').click()
    row.locator('[data-role="sync"]', has_text="sync paused").wait_for(timeout=10_000)
    before = dashboard.syncs()
    dashboard.save(f"while-paused-{secrets.token_hex(3)}")
    time.sleep(1.5)  # a sync takes well under a second here (the test above): none may come
    assert dashboard.syncs() == before
    row.locator('button[data-action="resume"]').click()
    eventually(lambda: dashboard.syncs() > before, timeout_s=15)
    assert row.locator('button[data-action="pause"]').count() == 1


def test_a_crash_shows_as_an_alert_with_its_last_lines_and_greys_when_fixed(dashboard: Session) -> None:
    page = dashboard.page
    marker = f"dashboard-crash-{secrets.token_hex(3)}"
    dashboard.save(marker, crash=True)
    alert = page.locator('.alert[data-alert-kind="crashed"][data-alert-service="api"]:not(.gone)')
    alert.wait_for(timeout=30_000)
    assert "exit 1" in alert.locator(".alert-cause").inner_text()
    assert alert.locator(".alert-hint").inner_text()
    assert marker in alert.locator(".alert-details pre").inner_text()  # the traceback's last line
    assert dashboard.row().locator('[data-role="alerts"]').count() == 1
    exited = page.locator('.event[data-kind="exited"][data-service="api"]').first
    exited.wait_for(timeout=5_000)
    assert "(exit 1)" in exited.inner_text()
    # Fixed and saved: the app starts again, the alert is cleared and kept, greyed.
    dashboard.save(f"dashboard-fixed-{secrets.token_hex(3)}")
    page.locator('.alert[data-alert-kind="crashed"]:not(.gone)').wait_for(state="detached", timeout=30_000)
    assert dashboard.row().locator('[data-role="alerts"]').count() == 0
    page.locator("details.cleared > summary").click()
    page.locator('.alert.gone[data-alert-kind="crashed"]').first.wait_for(timeout=5_000)
    page.locator('.event[data-kind="cleared"][data-service="api"]').first.wait_for(timeout=5_000)
