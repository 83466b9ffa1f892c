"""The store's feed, timeline, alerts and actions, read through the real local API on a unix socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from innerloop.status.api import serve
from innerloop.status.store import Alert, Store


def _client(sock: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url="http://innerloop", connector=aiohttp.UnixConnector(path=str(sock)))


def test_an_alert_is_raised_once_while_its_cause_lasts_and_kept_once_cleared() -> None:
    store = Store(project="shop", namespace="dev")
    seen: list[str] = []
    store.on_alert.append(lambda a: seen.append(a.key))
    first = store.raise_alert(Alert(key="crash/api-1", service="api", kind="crashed", cause="exit 1", hint="fix it"))
    again = store.raise_alert(Alert(key="crash/api-1", service="api", kind="crashed", cause="exit 1", hint="fix it"))
    assert first is not None
    assert again is None
    assert seen == ["crash/api-1"]  # told once
    assert store.alerts["crash/api-1"].count == 2
    store.clear_alerts(service="api", kinds={"crashed"}, why="it runs again")
    assert not store.active_alerts()
    assert [a.key for a in store.cleared] == ["crash/api-1"]
    assert [e.kind for e in store.timeline] == ["alert", "cleared"]
    assert store.timeline[1].message == "crashed: it runs again"
    snap = store.snapshot()
    assert snap["alerts"] == []
    assert snap["cleared"][0]["active"] is False


async def _feed_and_act(tmp_path: Path) -> tuple[list[dict[str, object]], int, dict[str, object], dict[str, object]]:
    store = Store(project="shop", namespace="dev")
    store.update("api", phase="running")
    done: list[str] = []

    async def restart(service: str) -> str:
        done.append(service)
        return f"{service}: restarted"

    store.actions["restart"] = restart
    async with serve(store, tmp_path) as sock, _client(sock) as api:
        async with api.get("/v1/feed") as resp:
            lines = [json.loads(await resp.content.readline())]
            store.record("api", "save", "app.py")
            store.log("api", "api-1", "hello")
            store.raise_alert(Alert(key="k", service="api", kind="crashed", cause="exit 1", hint="h"))
            lines += [json.loads(await resp.content.readline()) for _ in range(4)]
        async with api.post("/v1/services/api/restart") as resp:
            ok = await resp.json()
        async with api.post("/v1/services/api/explode") as resp:
            refused_status = resp.status
            refused = await resp.json()
        async with api.get("/v1/timeline") as resp:
            timeline = await resp.json()
    assert done == ["api"]
    assert ok == {"message": "api: restarted"}
    assert [e["kind"] for e in timeline] == ["save", "alert"]
    return lines, refused_status, refused, timeline[0]


def test_the_feed_starts_with_a_snapshot_then_streams_every_change_and_actions_answer(tmp_path: Path) -> None:
    lines, refused_status, refused, first_event = asyncio.run(_feed_and_act(tmp_path))
    assert lines[0]["kind"] == "snapshot"
    snapshot = lines[0]["data"]
    assert isinstance(snapshot, dict)
    assert snapshot["services"]["api"]["phase"] == "running"
    assert snapshot["actions"] == ["restart"]
    assert [line["kind"] for line in lines[1:]] == ["event", "log", "alert", "event"]
    seqs = [int(str(line["seq"])) for line in lines[1:]]
    assert seqs == sorted(seqs)
    assert refused_status == 409
    assert "unknown action 'explode' (actions: restart)" in str(refused["error"])
    assert first_event["message"] == "app.py"


async def _follow(tmp_path: Path) -> list[dict[str, object]]:
    store = Store(project="shop", namespace="dev")
    store.update("api", phase="running")
    store.log("api", "api-1", "before")
    async with serve(store, tmp_path) as sock, _client(sock) as api, api.get("/v1/logs?service=api&follow=1") as resp:
        lines = [json.loads(await resp.content.readline())]
        store.log("web", "web-1", "another service's")
        store.log("api", "api-1", "after")
        lines.append(json.loads(await resp.content.readline()))
    return lines


def test_following_one_services_logs_gives_its_recent_lines_then_only_its_new_ones(tmp_path: Path) -> None:
    lines = asyncio.run(_follow(tmp_path))
    assert [(line["service"], line["text"]) for line in lines] == [("api", "before"), ("api", "after")]
