"""`innerloop status` reads a running `up`'s store through its socket: services, paused syncs, alerts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from innerloop.cli.main import cli
from innerloop.status.api import serve
from innerloop.status.store import Alert, Store


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A real API socket for a store with one paused service and one alert, served on its own loop."""
    (tmp_path / "innerloop.yaml").write_text("name: shop\nservices: {}\n")
    started, stop = threading.Event(), threading.Event()

    async def main() -> None:
        store = Store(project="shop", namespace="dev")
        store.update("api", phase="running", pod="api-1", sync_paused=True)
        store.raise_alert(
            Alert(key="k", service="api", kind="crashed", cause="exit 1: ZeroDivisionError", hint="fix app.py:12")
        )
        async with serve(store, tmp_path):
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    assert started.wait(10)
    yield tmp_path
    stop.set()
    thread.join(10)


def test_status_shows_a_paused_sync_and_each_alert_with_its_hint(running: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--file", str(running / "innerloop.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "project shop in namespace dev"
    assert "(sync paused)" in lines[1]
    assert lines[2:] == ["alerts (1):", "  api: crashed: exit 1: ZeroDivisionError", "    fix app.py:12"]
