"""The dashboard's server on a real port: log-in by the printed URL, each refusal, the API under /api, /events."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie

import aiohttp
import pytest

from innerloop.dashboard import DEFAULT_PORT, Dashboard, DashboardError, Listen, listen, serve
from innerloop.dashboard.access import cookie_name
from innerloop.status.store import Store

Body = Callable[[Dashboard, Store, aiohttp.ClientSession, list[str]], Awaitable[None]]


def _run(body: Body) -> None:
    async def main() -> None:
        store = Store(project="shop", namespace="dev")
        store.update("api", phase="running", dev_mode=True)
        done: list[str] = []

        async def restart(service: str) -> str:
            done.append(service)
            return f"{service}: restarted"

        store.actions["restart"] = restart
        async with serve(store, listen(Listen(port=0))) as dashboard:
            assert dashboard is not None
            base = f"http://127.0.0.1:{dashboard.port}"
            async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.DummyCookieJar()) as http:
                await body(dashboard, store, http, done)

    asyncio.run(main())


async def _login(dashboard: Dashboard, http: aiohttp.ClientSession) -> dict[str, str]:
    """Open the printed URL as a browser would: the cookie it sets, as a request header."""
    async with http.get(f"/?token={dashboard.token}", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/"  # the token leaves the address bar
        morsel = SimpleCookie(resp.headers["Set-Cookie"])[cookie_name(dashboard.port)]
        assert morsel.value == dashboard.token
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Strict"
        return {"Cookie": f"{cookie_name(dashboard.port)}={morsel.value}"}


def test_the_printed_url_logs_the_browser_in_and_the_page_and_api_are_served() -> None:
    async def body(dashboard: Dashboard, store: Store, http: aiohttp.ClientSession, _done: list[str]) -> None:
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/?token={dashboard.token}"
        cookie = await _login(dashboard, http)
        async with http.get("/", headers=cookie) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert '<div id="app">' in page
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["Referrer-Policy"] == "no-referrer"
        script = page.split('src="', 1)[1].split('"', 1)[0]
        async with http.get(script, headers=cookie) as resp:
            assert resp.status == 200
            assert "javascript" in resp.headers["Content-Type"]
        # The same snapshot `innerloop status` reads, through the mounted local API.
        async with http.get("/api/v1/status", headers=cookie) as resp:
            assert resp.status == 200
            assert await resp.json() == json.loads(json.dumps(store.snapshot()))
        async with http.get("/api/v1/status", headers={"Authorization": f"token {dashboard.token}"}) as resp:
            assert resp.status == 200

    _run(body)


def test_every_request_without_the_token_is_refused_with_one_line_saying_what_to_open() -> None:
    async def body(dashboard: Dashboard, _store: Store, http: aiohttp.ClientSession, _done: list[str]) -> None:
        for path in ("/", "/events", "/api/v1/status", "/?token=wrong"):
            async with http.get(path) as resp:
                assert resp.status == 403, path
                text = await resp.text()
                assert text.count("\n") == 1
                assert "open the URL `innerloop up` printed" in text
        stale = {"Cookie": f"{cookie_name(dashboard.port)}=an-earlier-ups-token"}
        async with http.get("/", headers=stale) as resp:
            assert resp.status == 403

    _run(body)


def test_a_rebound_host_name_is_refused_even_with_the_token() -> None:
    async def body(dashboard: Dashboard, _store: Store, http: aiohttp.ClientSession, _done: list[str]) -> None:
        cookie = await _login(dashboard, http)
        for host in (f"evil.example:{dashboard.port}", "127.0.0.1", f"localhost:{dashboard.port + 1}"):
            async with http.get(f"/?token={dashboard.token}", headers={**cookie, "Host": host}) as resp:
                assert resp.status == 403, host
                assert "answers only as http://127.0.0.1:" in await resp.text()
        async with http.get("/", headers={**cookie, "Host": f"localhost:{dashboard.port}"}) as resp:
            assert resp.status == 200

    _run(body)


def test_actions_run_from_the_own_origin_only() -> None:
    async def body(dashboard: Dashboard, _store: Store, http: aiohttp.ClientSession, done: list[str]) -> None:
        cookie = await _login(dashboard, http)
        own = f"http://127.0.0.1:{dashboard.port}"
        refused = [
            {**cookie, "Origin": "http://evil.example"},
            {**cookie, "Origin": own, "Sec-Fetch-Site": "cross-site"},
            {**cookie, "Sec-Fetch-Site": "same-site"},
            cookie,  # no Origin, no Sec-Fetch-Site: a cookie alone does not act
            {"Origin": own},  # the right origin without the token
        ]
        for headers in refused:
            async with http.post("/api/v1/services/api/restart", headers=headers) as resp:
                assert resp.status == 403, headers
        assert done == []
        async with http.post(
            "/api/v1/services/api/restart", headers={**cookie, "Origin": own, "Sec-Fetch-Site": "same-origin"}
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"message": "api: restarted"}
        async with http.post(
            "/api/v1/services/api/restart", headers={"Authorization": f"token {dashboard.token}"}
        ) as resp:
            assert resp.status == 200
        assert done == ["api", "api"]
        async with http.post("/api/v1/services/api/teleport", headers={**cookie, "Origin": own}) as resp:
            assert resp.status == 409
            assert "unknown action 'teleport'" in (await resp.json())["error"]

    _run(body)


def test_events_start_with_the_snapshot_logs_and_timeline_then_stream_each_change() -> None:
    async def body(dashboard: Dashboard, store: Store, http: aiohttp.ClientSession, _done: list[str]) -> None:
        store.log("api", "api-1", "\x1b[32mready\x1b[0m")
        store.record("api", "save", "app.py")
        cookie = await _login(dashboard, http)
        async with http.get("/events", headers=cookie) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")

            async def next_event() -> dict[str, object]:
                while True:
                    line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
                    if line.startswith("data: "):
                        event: dict[str, object] = json.loads(line[len("data: ") :])
                        return event

            first = await next_event()
            assert first["kind"] == "snapshot"
            data = first["data"]
            assert isinstance(data, dict)
            assert [e["text"] for e in data["logs"]] == ["\x1b[32mready\x1b[0m"]
            assert [e["kind"] for e in data["timeline"]] == ["save"]
            assert set(data["services"]) == {"api"}
            store.record("api", "synced", "1 file in 12 ms")
            store.update("api", syncs=1)
            event = await next_event()
            assert event["kind"] == "event"
            assert isinstance(event["data"], dict)
            assert event["data"]["kind"] == "synced"
            status = await next_event()
            assert status["kind"] == "status"
            assert isinstance(status["data"], dict)
            assert status["data"]["syncs"] == 1

    _run(body)


def test_a_taken_default_port_moves_to_the_next_and_a_taken_chosen_port_is_one_line() -> None:
    first = listen(Listen())
    second = listen(Listen())
    try:
        a, b = first.getsockname()[1], second.getsockname()[1]
        assert a != b
        assert a >= DEFAULT_PORT  # 10351, or the next free one while other `up`s run here
        with pytest.raises(DashboardError) as err:
            listen(Listen(port=a))
        message = str(err.value)
        assert message.startswith(f"dashboard port {a} on 127.0.0.1 is in use")
        assert "--dashboard-port" in message and "--no-dashboard" in message
        assert "\n" not in message
    finally:
        first.close()
        second.close()


def test_no_dashboard_serves_nothing() -> None:
    async def main() -> None:
        async with serve(Store(project="shop", namespace="dev"), None) as dashboard:
            assert dashboard is None

    asyncio.run(main())
    with socket.socket() as s:  # and the listening socket is released when serving ends
        sock = listen(Listen(port=0))
        port = sock.getsockname()[1]
        asyncio.run(_serve_once(sock))
        s.bind(("127.0.0.1", port))


async def _serve_once(sock: socket.socket) -> None:
    async with serve(Store(project="shop", namespace="dev"), sock):
        pass
