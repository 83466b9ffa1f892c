"""When a router restores its Service and removes itself, and when it must not yet.

The router's three Kubernetes calls go to a recording stand-in for its API
client; the registry, the watch loop and the answers are the real ones.
The e2e test (tests/e2e/test_intercept_restart.py) deletes a real router pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from typing import Any, cast

import pytest

from innerloop.protocol.session import Session
from innerloop.router import main
from innerloop.router.kubeapi import InClusterApi
from innerloop.router.main import PortRoute, Router, RouterConfig
from innerloop.router.match import HeaderRule

ROUTER_SELECTOR = {"innerloop.dev/intercept-router": "echo"}
ORIGINAL: dict[str, Any] = {"metadata": {"name": "echo"}, "spec": {"selector": {"app": "echo"}}}
SECRET = "s" * 32


def run(work: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(work, timeout))


class RecordingApi(InClusterApi):
    """The Service as the API server would hold it, and the calls the router made."""

    def __init__(self, *, selector: dict[str, str]) -> None:
        self.selector = dict(selector)
        self.calls: list[str] = []

    async def get(self, path: str) -> dict[str, Any]:
        if "/deployments/" in path:
            return {"metadata": {}}
        return {"metadata": {"name": "echo"}, "spec": {"selector": dict(self.selector)}}

    async def json_patch(self, path: str, patch: list[dict[str, Any]], *, field_manager: str) -> dict[str, Any]:
        self.calls.append("restore")
        self.selector = dict(ORIGINAL["spec"]["selector"])
        return {"metadata": {"name": "echo"}, "spec": {"selector": dict(self.selector)}}

    async def delete(self, path: str, *, options: Mapping[str, Any] | None = None) -> None:
        self.calls.append("delete")


def router(api: RecordingApi, *, startup: float = 60.0) -> Router:
    config = RouterConfig(
        service="echo",
        namespace="ns",
        deployment="echo-il-router",
        router_selector=ROUTER_SELECTOR,
        original=ORIGINAL,
        ports=[PortRoute(port=80, listen=0, origin_host="127.0.0.1", origin_port=9)],
        control_port=0,
        grace=0.5,
        startup=startup,
        settle=0,
        drain=0,
    )
    return Router(config, api=api)


def register(r: Router, name: str) -> None:
    rule = HeaderRule(header="x-dev", op="exact", value=name)
    r.registry.register(
        name=name, secret=SECRET, owner=name, mode="personal", rules=[rule], ports=[], now=time.monotonic()
    )


async def leave(r: Router, name: str) -> dict[str, Any]:
    return await r._answer(cast(Session, None), set(), {"op": "leave", "name": name, "secret": SECRET})


@pytest.fixture(autouse=True)
def short_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "REJOIN_MARGIN", 1.0)  # rejoin window: grace 0.5 + 1.0 s


def test_a_restarted_router_waits_for_the_other_clis_before_it_removes_itself() -> None:
    """The accident: the router pod is replaced; alice's CLI registers again first and leaves; bob's is
    still reconnecting. The new router had no intercept left and restored the Service and removed itself,
    so bob's CLI found no router and his intercept ended. Now it waits for the CLIs for grace + margin."""

    async def scenario() -> None:
        api = RecordingApi(selector=ROUTER_SELECTOR)  # the Service already points here: a replacement
        r = router(api)
        watching = asyncio.create_task(r.watch())
        try:
            register(r, "alice")
            answer = await leave(r, "alice")
            assert answer["remaining"] == 0 and 0 < answer["rejoining"] <= 1.5, answer
            await asyncio.sleep(0.5)
            assert api.calls == [] and not r.done.is_set()  # bob's CLI is still on its way
            register(r, "bob")
            await asyncio.sleep(1.5)  # past the window: bob holds the router
            assert api.calls == []
            assert "rejoining" not in await leave(r, "bob")
            await asyncio.wait_for(r.done.wait(), 5)
            assert api.calls == ["restore", "delete"]
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    run(scenario())


def test_a_fresh_router_removes_itself_as_soon_as_its_last_intercept_ends() -> None:
    async def scenario() -> None:
        api = RecordingApi(selector={"app": "echo"})  # not switched yet: the first router of this Service
        r = router(api)
        watching = asyncio.create_task(r.watch())
        try:
            await asyncio.sleep(0.1)  # the watch has looked at the Service
            register(r, "alice")
            assert "rejoining" not in await leave(r, "alice")
            await asyncio.wait_for(r.done.wait(), 1.0)
            assert api.calls == ["delete"]  # the Service never pointed here: nothing to restore
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    run(scenario())


def test_a_restarted_router_that_nobody_comes_back_to_restores_the_service_after_its_startup_window() -> None:
    async def scenario() -> None:
        api = RecordingApi(selector=ROUTER_SELECTOR)
        r = router(api, startup=1.0)
        watching = asyncio.create_task(r.watch())
        try:
            await asyncio.sleep(0.5)
            assert api.calls == []
            await asyncio.wait_for(r.done.wait(), 3)
            assert api.calls == ["restore", "delete"]
            assert api.selector == ORIGINAL["spec"]["selector"]
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    run(scenario())
