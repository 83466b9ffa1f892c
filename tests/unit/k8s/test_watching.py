"""``watch_pods`` against a fake API server over real HTTP: what it retries and what it gives up on."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from lightkube import ApiError, AsyncClient, KubeConfig

from innerloop.k8s.watching import watch_pods

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'pods is forbidden: User "system:serviceaccount:dev:alice" cannot list resource "pods" '
    'in API group "" in the namespace "dev"',
    "reason": "Forbidden",
    "code": 403,
}


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "dev"}}


@asynccontextmanager
async def api_server(answers: list[tuple[int, dict[str, Any]]]) -> AsyncIterator[tuple[AsyncClient, list[str]]]:
    """An API server that answers each pod list with the next of ``answers`` (the last one repeats)."""
    requests: list[str] = []

    async def pods(request: web.Request) -> web.StreamResponse:
        requests.append(request.query_string)
        if request.query.get("watch"):
            await asyncio.sleep(30)  # a watch with nothing to say
            return web.json_response({})
        status, body = answers[min(len([r for r in requests if "watch" not in r]) - 1, len(answers) - 1)]
        # Exactly what the API server sends (aiohttp's json_response adds a charset lightkube does not expect).
        return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/dev/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "alice", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "alice", "namespace": "dev"}}],
            "current-context": "c",
        }
    )
    client = AsyncClient(config=config)
    try:
        yield client, requests
    finally:
        await client.close()
        await runner.cleanup()


def test_a_refused_list_ends_the_watch_at_once_naming_the_permission() -> None:
    """Attack/misconfiguration: a Role without `list pods`. Before the fix this retried every 2 s forever."""

    async def scenario() -> tuple[ApiError, list[str], list[str]]:
        errors: list[str] = []
        async with api_server([(403, FORBIDDEN)]) as (client, requests):
            with pytest.raises(ApiError) as caught:
                async for _ in watch_pods(client, namespace="dev", labels={"app": "web"}, on_error=errors.append):
                    pass
            return caught.value, requests, errors

    err, requests, errors = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert err.status.code == 403
    assert 'cannot list resource "pods"' in str(err.status.message)
    assert 'namespace "dev"' in str(err.status.message)
    assert len(requests) == 1, requests  # asked once, not again and again
    assert errors == []


def test_a_server_error_is_retried_until_the_list_answers() -> None:
    """A 500 (an API server restarting) still heals by itself: the watch lists again, with backoff."""
    listing = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": [_pod("web-1")]}
    broken = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd", "code": 500}

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        errors: list[str] = []
        async with api_server([(500, broken), (500, broken), (200, listing)]) as (client, requests):
            async for snapshot in watch_pods(
                client, namespace="dev", labels={"app": "web"}, on_error=errors.append, retry_max_s=0.05
            ):
                return sorted(snapshot), requests, errors
        raise AssertionError("the watch ended")

    names, requests, errors = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert names == ["web-1"]
    assert len([r for r in requests if "watch" not in r]) == 3
    assert len(errors) == 2
