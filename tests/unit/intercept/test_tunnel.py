"""The CLI's tunnel against a real router (:class:`innerloop.router.main.Router`) over real sockets.

What the e2e tests do through a port-forward to the router's pod, here over
a TCP socket to a router in this process: fast enough to run every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import pytest

from innerloop.intercept.tunnel import InterceptDenied, InterceptEnded, InterceptTunnel, Registration, RouterSession
from innerloop.k8s.connection import ClusterConnection
from innerloop.protocol.session import ControlChannel, Role, Session
from innerloop.protocol.transport import connect_tcp
from innerloop.router.kubeapi import InClusterApi
from innerloop.router.main import PortRoute, Router, RouterConfig
from innerloop.router.match import HeaderRule, parse_rule


def run(work: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(work, timeout))


ROUTE = PortRoute(port=80, listen=0, origin_host="127.0.0.1", origin_port=9)


class NoApi(InClusterApi):
    """The router's API client, never called here (nothing expires, nothing is restored)."""

    def __init__(self) -> None:
        pass


def config() -> RouterConfig:
    return RouterConfig(
        service="echo",
        namespace="ns",
        deployment="echo-il-router",
        router_selector={"innerloop.dev/intercept-router": "echo"},
        original={},
        ports=[ROUTE],
        control_port=0,
        grace=30,
        startup=60,
        settle=0,
        drain=0,
    )


class RunningRouter:
    """A router's control port on 127.0.0.1; ``kill`` drops it and every session, as a deleted pod does."""

    def __init__(self) -> None:
        self.router = Router(config(), api=NoApi())
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            await self.router.handle_control(reader, writer)

        self.server = await asyncio.start_server(on_control, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self.server.wait_closed()


class LocalApp:
    """A local process that answers every connection with its name."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = self.who.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])


def opener(port: Callable[[], int]) -> Callable[[], Awaitable[RouterSession]]:
    async def open_router() -> RouterSession:
        session = Session(await connect_tcp("127.0.0.1", port()), role=Role.CLIENT, keepalive_interval=2.0)
        session.start()
        return RouterSession(session, ControlChannel(session.control))

    return open_router


class Developer:
    def __init__(self, name: str, rules: list[HeaderRule], port: Callable[[], int], app: LocalApp) -> None:
        self.lines: list[str] = []
        self.tunnel = InterceptTunnel(
            cast(ClusterConnection, None),
            namespace="ns",
            service="echo",
            registration=Registration(
                name=name, secret=f"{name}-secret-" + "s" * 20, owner=name, mode="personal", rules=rules, ports=[80]
            ),
            local_ports={80: app.port},
            dial=lambda p: asyncio.open_connection("127.0.0.1", p),
            report=self.lines.append,
            grace=30,
            open_router=opener(port),
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.tunnel.run())

    async def registered(self) -> None:
        assert self.task is not None
        ready = asyncio.create_task(self.tunnel.ready.wait())
        await asyncio.wait({ready, self.task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        assert self.tunnel.ready.is_set(), self.lines

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def apps(*names: str) -> AsyncIterator[dict[str, LocalApp]]:
    started = {name: LocalApp(name) for name in names}
    for app in started.values():
        await app.start()
    try:
        yield started
    finally:
        for app in started.values():
            assert app.server is not None
            app.server.close()


async def routed(router: Router, headers: dict[str, str]) -> str:
    """Where a request with ``headers`` on port 80 goes: a developer's local app (its answer) or 'origin'."""
    name = router.registry.personal_for(80, [(k.encode(), v.encode()) for k, v in headers.items()])
    if name is None:
        return "origin"
    conn = await router._connect(ROUTE, name)
    await conn.write(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
    data = b""
    while chunk := await conn.read(65536):
        data += chunk
    await conn.close()
    return data.partition(b"\r\n\r\n")[2].decode()


def test_a_second_developer_is_refused_a_rule_that_catches_the_first_ones_requests() -> None:
    """The attack: a teammate's CLI registers a rule that alice's requests match (her value, or a prefix or
    pattern covering it): first-registered-wins gave the teammate every such request that came later, and
    only the very same rule list was refused. Now the second CLI is refused with one line that names the
    header and says how to pick another, and alice keeps her requests."""
    run(a_second_developer_is_refused_a_rule_that_catches_the_first_ones_requests())


async def a_second_developer_is_refused_a_rule_that_catches_the_first_ones_requests() -> None:
    running = RunningRouter()
    port = await running.start()
    async with apps("alice", "mallory") as local:
        alice = Developer("alice", [parse_rule("x-dev=alice")], lambda: port, local["alice"])
        alice.start()
        await alice.registered()
        try:
            for rule in ("X-Dev=alice", "x-dev^=ali", "x-dev~=a.*"):
                mallory = Developer("mallory", [parse_rule(rule)], lambda: port, local["mallory"])
                mallory.start()
                assert mallory.task is not None
                with pytest.raises(InterceptDenied) as denied:
                    await asyncio.wait_for(mallory.task, 10)
                reason = str(denied.value)
                assert "alice already intercepts requests with x-dev values" in reason, reason
                assert "--header x-dev=" in reason, reason
                assert "\n" not in reason
            assert await routed(running.router, {"x-dev": "alice"}) == "alice"
            assert [i.name for i in running.router.registry.all()] == ["alice"]
        finally:
            await alice.stop()
            await running.kill()


def test_after_a_router_restart_both_developers_register_again_by_themselves() -> None:
    """The attack (or accident): the router's registry lives in its memory, so an OOM kill or a deleted pod
    lost every developer's intercept; the CLIs' resumes were refused as unknown and they ended. Now a
    new router process is recognised by its instance id and each CLI registers again, saying so."""
    run(after_a_router_restart_both_developers_register_again_by_themselves())


async def after_a_router_restart_both_developers_register_again_by_themselves() -> None:
    first = RunningRouter()
    port = await first.start()
    async with apps("alice", "bob") as local:
        alice = Developer("alice", [parse_rule("x-dev=alice")], lambda: port, local["alice"])
        bob = Developer("bob", [parse_rule("baggage[dev]=bob")], lambda: port, local["bob"])
        alice.start()
        bob.start()
        await alice.registered()
        await bob.registered()
        try:
            assert await routed(first.router, {"x-dev": "alice"}) == "alice"
            await first.kill()
            second = RunningRouter()
            await second.start(port)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while len(second.router.registry) < 2 and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                assert sorted(i.name for i in second.router.registry.all()) == ["alice", "bob"], alice.lines
                assert await routed(second.router, {"x-dev": "alice"}) == "alice"
                assert await routed(second.router, {"baggage": "tenant=acme, dev=bob"}) == "bob"
                assert await routed(second.router, {"x-dev": "carol"}) == "origin"
                for dev in (alice, bob):
                    assert any("restarted without its intercepts" in line for line in dev.lines), dev.lines
                    assert dev.task is not None and not dev.task.done()
            finally:
                await second.kill()
        finally:
            await alice.stop()
            await bob.stop()


def test_an_intercept_left_from_another_terminal_stays_ended() -> None:
    """Registering again is only for a router that restarted: the same router refusing a resume means the
    intercept was left (or expired), and a CLI that registered it anew would undo that."""
    run(an_intercept_left_from_another_terminal_stays_ended())


async def an_intercept_left_from_another_terminal_stays_ended() -> None:
    running = RunningRouter()
    port = await running.start()
    async with apps("alice") as local:
        alice = Developer("alice", [parse_rule("x-dev=alice")], lambda: port, local["alice"])
        alice.start()
        await alice.registered()
        try:
            other = await opener(lambda: port)()
            answer = await other.request({"op": "leave", "name": "alice", "secret": alice.tunnel.registration.secret})
            await other.close()
            assert answer["op"] == "left", answer
            assert alice.task is not None
            with pytest.raises(InterceptEnded, match="ended while disconnected"):
                await asyncio.wait_for(alice.task, 10)
            assert len(running.router.registry) == 0
        finally:
            await alice.stop()
            await running.kill()


def test_the_router_lists_header_values_only_to_their_holder() -> None:
    """The attack: `list` on the control port showed every intercept's rules, so an unguessable default value
    could simply be read, then claimed on another Service (or after a router restart) before its owner."""
    run(the_router_lists_header_values_only_to_their_holder())


async def the_router_lists_header_values_only_to_their_holder() -> None:
    running = RunningRouter()
    port = await running.start()
    async with apps("alice") as local:
        alice = Developer("alice", [parse_rule("x-dev=alice-5c1e")], lambda: port, local["alice"])
        alice.start()
        await alice.registered()
        try:
            other = await opener(lambda: port)()
            listing = await other.request({"op": "list"})
            await other.close()
            assert "alice-5c1e" not in json.dumps(listing)
            assert listing["items"][0]["rules"] == [{"header": "x-dev", "op": "exact", "value": "(hidden)"}]
            assert alice.tunnel._current is not None
            own = await alice.tunnel._current.request({"op": "list"})
            assert own["items"][0]["rules"][0]["value"] == "alice-5c1e"
        finally:
            await alice.stop()
            await running.kill()
