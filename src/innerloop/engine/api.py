"""The local API of a running `innerloop up`: a unix socket only its user can open.

``innerloop status`` and ``innerloop logs`` in another terminal, editors and
plugins read state here instead of asking the cluster again:

- ``GET /v1/status``: the store's snapshot (JSON);
- ``GET /v1/logs?service=NAME&follow=1``: recent log lines as JSON lines,
  then new ones as they arrive when following.

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
from innerloop.engine.store import LogEntry, Store

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
        queue = store.subscribe_logs() if follow else None
        try:
            for entry in store.recent_logs(service):
                await resp.write(_line(entry))
            while queue is not None:
                entry = await queue.get()
                if service is None or entry.service == service:
                    await resp.write(_line(entry))
        finally:
            if queue is not None:
                store.unsubscribe_logs(queue)
        return resp

    app = web.Application()
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/logs", logs)
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
    runner = web.AppRunner(make_app(store), handle_signals=False)
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
