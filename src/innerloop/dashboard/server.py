"""The dashboard's HTTP server: the built page, a live event stream, and the local API, behind one guard.

`innerloop up` serves it on 127.0.0.1 (port 10351, the next free one when that
is taken; ``--dashboard-port``, ``--no-dashboard``). It has no state of its
own: the local API (:func:`innerloop.status.api.make_app`) is mounted under
``/api``, so the page reads and acts on exactly what ``innerloop status``
reads and acts on, and ``/events`` streams the same store as server-sent
events. ``/events`` exists beside ``/api/v1/feed`` for one reason: its first
event carries the snapshot *and* the recent log lines and timeline, taken in
the same instant the subscription starts, so the page never misses or doubles
a line between a history request and the feed (and EventSource reconnects by
itself). Every request passes :mod:`innerloop.dashboard.access` first.

The page is a Vite + Preact build (sources in web/dashboard/, built by
hack/dashboard-build) shipped as package data under ``static/``: running
innerloop needs no Node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from innerloop.dashboard.access import Seen, cookie_name, decide
from innerloop.forward.local_port import port_holder
from innerloop.status import api
from innerloop.status.store import Change, Store

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 10351  # Tilt's is 10350
PORTS_TRIED = 20  # from DEFAULT_PORT on, before any free port
HEARTBEAT_S = 15.0  # a comment line on a quiet stream, so a dead reader is noticed and proxies keep it open
BATCH = 500  # changes written in one go when a burst (a log flood) is queued

# The page loads only its own scripts; no page may frame it (a click on "rebuild" through a frame);
# the token URL is never sent on as a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardError(Exception):
    """The dashboard cannot be served as asked (its port is taken): the message says what to do."""


@dataclass(frozen=True)
class Listen:
    """Where the dashboard should listen: ``port`` None is 10351 or the next free one; 0 is any free port."""

    port: int | None = None


@dataclass(frozen=True)
class Dashboard:
    port: int
    token: str

    @property
    def url(self) -> str:
        """What `up` prints: opening it once logs the browser in (a cookie) and drops the token from the address."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


def _try_bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a previous `up`'s TIME_WAIT, never a listener
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            return None
        raise
    sock.listen(128)  # listening now: a second bind of this port fails, even with SO_REUSEADDR
    return sock


def listen(where: Listen) -> socket.socket:
    """Bind the dashboard's port now (before `up` builds anything), so a taken port fails at once."""
    if where.port is not None:
        sock = _try_bind(where.port)
        if sock is None:
            holder = port_holder(where.port)
            by = f" by {' '.join(holder.split())}" if holder else ""  # one line, whatever its command line holds
            raise DashboardError(
                f"dashboard port {where.port} on 127.0.0.1 is in use{by}: choose another with "
                "--dashboard-port (0 picks a free one), or --no-dashboard"
            )
        return sock
    for port in [*range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TRIED), 0]:
        sock = _try_bind(port)
        if sock is not None:
            return sock
    raise DashboardError("no free port on 127.0.0.1 for the dashboard: use --dashboard-port, or --no-dashboard")


def _event(kind: str, data: Any, seq: int) -> bytes:  # noqa: ANN401 - JSON
    return f"data: {json.dumps({'kind': kind, 'data': data, 'seq': seq})}\n\n".encode()


def _change(change: Change) -> bytes:
    return _event(change.kind, change.data, change.seq)


def make_app(store: Store, *, token: str, port: int) -> web.Application:
    cookie = cookie_name(port)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen = Seen(
            method=request.method,
            host=request.headers.get("Host"),
            query_token=request.query.get("token"),
            cookie=request.cookies.get(cookie),
            authorization=request.headers.get("Authorization"),
            origin=request.headers.get("Origin"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
        )
        decision = decide(seen, token=token, port=port)
        if decision.verdict == "refuse":
            return web.Response(status=403, text=f"403 forbidden: {decision.reason}\n")
        if decision.verdict == "login":
            # Relative, so the browser stays on the host it used (127.0.0.1 or localhost).
            found = web.HTTPFound(location=str(request.rel_url.without_query_params("token")))
            found.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
            raise found
        return await handler(request)

    async def secure(_request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        queue = store.subscribe()
        # No await between subscribing and this snapshot: every change after it is in the queue, none twice.
        first = {
            **store.snapshot(),
            "logs": [asdict(entry) for entry in store.recent_logs()],
            "timeline": [asdict(event) for event in store.recent_timeline()],
        }
        try:
            await response.prepare(request)
            await response.write(_event("snapshot", first, 0))
            while True:
                try:
                    change = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                burst = [_change(change)]
                while len(burst) < BATCH and not queue.empty():
                    burst.append(_change(queue.get_nowait()))
                await response.write(b"".join(burst))
        finally:
            store.unsubscribe(queue)

    app = web.Application(middlewares=[guard])
    app.on_response_prepare.append(secure)
    app.router.add_get("/", index)
    app.router.add_get("/events", events)
    app.router.add_static("/assets", STATIC / "assets")
    app.add_subapp("/api", api.make_app(store))
    return app


@asynccontextmanager
async def serve(store: Store, sock: socket.socket | None) -> AsyncIterator[Dashboard | None]:
    """Serve the dashboard on ``sock`` (from :func:`listen`) until the block ends; None: no dashboard."""
    if sock is None:
        yield None
        return
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(32)  # new per `up`: a cookie from an earlier one opens nothing
    # handler_cancellation: a closed tab ends its stream; a short shutdown, as streams never end on their own.
    runner = web.AppRunner(
        make_app(store, token=token, port=port), handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield Dashboard(port=port, token=token)
    finally:
        await runner.cleanup()
        with contextlib.suppress(OSError):
            sock.close()
