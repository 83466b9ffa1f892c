"""The local API of a running `innerloop up`: a unix socket only its user can open.

``innerloop status`` and ``innerloop logs`` in another terminal, editors and
plugins read state here instead of asking the cluster again:

- ``GET /v1/status``: the store's snapshot (JSON): services, active and
  cleared alerts, the actions `up` offers;
- ``GET /v1/logs?service=NAME&follow=1``: recent log lines as JSON lines,
  then new ones as they arrive when following;
- ``GET /v1/timeline?service=NAME``: what happened, oldest first (JSON);
- ``GET /v1/feed``: JSON lines: ``{"kind": "snapshot", ...}`` first, then
  every change as it happens (``status``, ``log``, ``event``, ``alert``);
- ``POST /v1/services/NAME/ACTION`` (restart, rebuild, pause, resume):
  ``{"message": ...}``, or 409 ``{"error": ...}`` saying why not.

A unix socket in the project's ``.innerloop/`` directory, mode 0600: no TCP
port, no token to leak, and one `up` per project is enforced by the socket.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from innerloop.config.state import StateError, state_dir
from innerloop.status.store import ActionError, LogEntry, Store

STATE_DIR = ".innerloop"


class AlreadyRunning(RuntimeError):
    """Another `innerloop up` serves this project."""


SOCKET = "api.sock"


def socket_path(project_dir: Path) -> Path:
    return project_dir / STATE_DIR / SOCKET


def _line(entry: LogEntry) -> bytes:
    return (json.dumps(asdict(entry)) + "\n").encode()


def make_app(store: Store) -> web.Application:
    async def status(_request: web.Request) -> web.Response:
        return web.json_response(store.snapshot())

    async def logs(request: web.Request) -> web.StreamResponse:
        service = request.query.get("service") or None
        follow = request.query.get("follow") in ("1", "true")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue = store.subscribe() if follow else None  # before the recent lines: none falls between
        try:
            for entry in store.recent_logs(service):
                await resp.write(_line(entry))
            while queue is not None:
                change = await queue.get()
                if change.kind == "log" and service in (None, change.data["service"]):
                    await resp.write((json.dumps(change.data) + "\n").encode())
        finally:
            if queue is not None:
                store.unsubscribe(queue)
        return resp

    async def timeline(request: web.Request) -> web.Response:
        service = request.query.get("service") or None
        return web.json_response([asdict(e) for e in store.recent_timeline(service)])

    async def feed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue = store.subscribe()  # before the snapshot: nothing falls between the two
        try:
            await resp.write((json.dumps({"kind": "snapshot", "data": store.snapshot(), "seq": 0}) + "\n").encode())
            while True:
                change = await queue.get()
                await resp.write((json.dumps(asdict(change)) + "\n").encode())
        finally:
            store.unsubscribe(queue)

    async def act(request: web.Request) -> web.Response:
        try:
            message = await store.act(request.match_info["action"], request.match_info["service"])
        except ActionError as err:
            return web.json_response({"error": str(err)}, status=409)
        return web.json_response({"message": message})

    # The dashboard mounts this same app (add_subapp) behind its own token and origin checks.
    app = web.Application()
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/logs", logs)
    app.router.add_get("/v1/timeline", timeline)
    app.router.add_get("/v1/feed", feed)
    app.router.add_post("/v1/services/{service}/{action}", act)
    return app


@contextmanager
def project_lock(project_dir: Path) -> Iterator[None]:
    """One `up` per project. The lock dies with its process, so a SIGKILLed `up` never blocks the next."""
    state = state_dir(project_dir)  # never a symlink; its .gitignore written (config/state.py)
    # O_NOFOLLOW: a cloned repository's .innerloop/up.lock -> ~/.bashrc was truncated by open("w").
    try:
        fd = os.open(state / "up.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise StateError(f"{state / 'up.lock'} cannot be opened ({err.strerror}, a symlink?): remove it") from None
    with os.fdopen(fd, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"`innerloop up` already runs for {project_dir}: use `innerloop status`, or stop it first"
            ) from None
        yield


@asynccontextmanager
async def serve(store: Store, project_dir: Path) -> AsyncIterator[Path]:
    path = socket_path(project_dir)
    state_dir(project_dir)
    if path.exists():
        path.unlink()  # a stale socket from a killed `up`
    # handler_cancellation: a reader that goes away ends its feed; a short shutdown: feeds never end on their own.
    runner = web.AppRunner(make_app(store), handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.UnixSite(runner, str(path))
    old_umask = os.umask(0o177)
    try:
        await site.start()
    finally:
        os.umask(old_umask)
    try:
        yield path
    finally:
        await runner.cleanup()
        path.unlink(missing_ok=True)
