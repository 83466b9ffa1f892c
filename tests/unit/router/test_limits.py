"""The router's limits on HTTP/1.1 (issue 9 item 13), with raw sockets against a real router and small limits.

Each test is an attack that used to hold the router's connections or memory:
partial heads kept open forever, idle keep-alive connections never closed,
5,000 header fields passed through, any number of connections per source.
"""

from __future__ import annotations

import asyncio

import pytest

from innerloop.router.limits import ConnectionCaps, Limits

from .router_harness import closed_within, read_response, running_router
from .test_http1 import run

PARTIAL_HEAD = b"GET /slow HTTP/1.1\r\nHost: svc\r\nX-Partial: "


def test_partial_heads_are_closed_after_the_head_timeout_while_others_are_served() -> None:
    """The attack: 300 connections each sending part of a request head and then nothing (slowloris) stayed open."""

    async def scenario() -> None:
        # 1.5 s, not less: on a loaded machine the ordinary client's own head may wait that long for the loop.
        limits = Limits(head_timeout=1.5, max_connections_per_source=1000)
        async with running_router(limits=limits) as r:
            slow = []
            for _ in range(300):
                reader, writer = await r.open()
                writer.write(PARTIAL_HEAD)
                slow.append((reader, writer))
            # Meanwhile an ordinary client is served.
            reader, writer = await r.open()
            writer.write(b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 1")
            answers = await asyncio.gather(*(closed_within(reader, 5) for reader, _ in slow))
            assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
            assert r.origin.requests == [(b"GET", b"/ok")]

    run(scenario())


@pytest.mark.parametrize(
    "first",
    [
        b"",  # nothing at all: not even a server-speaks-first origin answers
        b"GET /slow",  # an unfinished request line (still being sniffed)
        b"GET /slow HTTP/1.1\r\nHost: svc\r\n",  # an unfinished head
    ],
)
def test_a_connection_that_never_completes_a_head_is_closed(first: bytes) -> None:
    async def scenario() -> None:
        async with running_router(limits=Limits(head_timeout=0.5)) as r:
            reader, writer = await r.open()
            writer.write(first)
            answer = await closed_within(reader, 3)
            assert answer.startswith(b"HTTP/1.1 408 ") if first else answer == b""

    run(scenario())


def test_a_trickled_head_still_times_out() -> None:
    """The attack: one byte every 0.1 s keeps each read short, but the whole head must arrive within the timeout."""

    async def scenario() -> None:
        async with running_router(limits=Limits(head_timeout=0.8)) as r:
            reader, writer = await r.open()

            async def trickle() -> None:
                for byte in b"GET /slow HTTP/1.1\r\nHost: svc\r\nX-A: " + b"a" * 100:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)

            trickling = asyncio.create_task(trickle())
            try:
                answer = await closed_within(reader, 3)
            finally:
                trickling.cancel()
            assert answer.startswith(b"HTTP/1.1 408 ")

    run(scenario())


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    """The attack: kept-alive connections that never send another request were held forever."""

    async def scenario() -> None:
        async with running_router(limits=Limits(idle_timeout=0.5, head_timeout=5)) as r:
            reader, writer = await r.open()
            writer.write(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 1")
            await asyncio.sleep(0.3)  # well within the idle timeout: still served
            writer.write(b"GET /b HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 2")
            assert await closed_within(reader, 2) == b""  # closed quietly, no 408: nothing was asked

    run(scenario())


def test_five_thousand_header_fields_are_refused_with_431() -> None:
    """The attack: 5,000 header fields (50 KB, under the byte limit) were parsed and relayed to the origin."""

    async def scenario() -> None:
        async with running_router() as r:
            reader, writer = await r.open()
            writer.write(
                b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n"
            )
            answer = await closed_within(reader, 3)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
            assert b"more than 100 header fields" in answer
            assert r.origin.received == b""

    run(scenario())


def test_a_head_over_max_head_bytes_is_431() -> None:
    async def scenario() -> None:
        async with running_router(limits=Limits(max_head_bytes=1024)) as r:
            reader, writer = await r.open()
            writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: " + b"a" * 1100 + b"\r\n\r\n")
            assert (await closed_within(reader, 3)).startswith(b"HTTP/1.1 431 ")
            reader, writer = await r.open()
            writer.write(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: svc\r\n\r\n")  # a request line alone
            assert (await closed_within(reader, 3)).startswith(b"HTTP/1.1 431 ")
            assert r.origin.received == b""

    run(scenario())


def test_connections_over_the_caps_are_closed_at_once_and_logged_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The attack: one pod opening connection after connection until the router runs out of file descriptors."""

    async def scenario() -> None:
        limits = Limits(max_connections=8, max_connections_per_source=5, head_timeout=30)
        async with running_router(limits=limits) as r:
            held = [await r.open() for _ in range(5)]
            for _, writer in held:
                writer.write(PARTIAL_HEAD)
            await asyncio.sleep(0.1)
            for _ in range(20):  # the sixth and later from the same source: closed before one byte is read
                reader, writer = await r.open()
                writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                assert await closed_within(reader, 1) == b""
            # Another source is still served, up to the total cap.
            reader, writer = await r.open(local="127.0.0.2")
            writer.write(b"GET /other HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 1")
            others = [await r.open(local="127.0.0.2") for _ in range(2)]
            for _, writer in others:
                writer.write(PARTIAL_HEAD)
            await asyncio.sleep(0.1)
            reader, writer = await r.open(local="127.0.0.3")
            assert await closed_within(reader, 1) == b""  # 8 open: the total cap
            # Once the held ones go, the first source is served again.
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.2)
            reader, writer = await r.open()
            writer.write(b"GET /again HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 2")
            assert r.router.caps.refused == 21

    run(scenario())
    logged = [line for line in capsys.readouterr().err.splitlines() if "refusing connections" in line]
    assert len(logged) == 2, logged  # one line per source (127.0.0.1, 127.0.0.3), not one per connection
    assert "maxConnectionsPerSource 5" in logged[0]
    assert "maxConnections 8" in logged[1]


def test_connection_caps_bookkeeping() -> None:
    caps = ConnectionCaps(Limits(max_connections=3, max_connections_per_source=2), log_every=60)
    assert caps.admit("a", now=0) == (True, None)
    assert caps.admit("a", now=0) == (True, None)
    refused, line = caps.admit("a", now=1)
    assert not refused and line is not None and "from a" in line
    assert caps.admit("a", now=30) == (False, None)  # within the minute: not logged again
    assert caps.admit("a", now=62)[1] is not None
    assert caps.admit("b", now=62) == (True, None)
    assert caps.admit("c", now=62)[0] is False  # the total
    caps.release("a")
    assert caps.admit("c", now=63) == (True, None)
    for source in ("a", "b", "c"):
        caps.release(source)
    assert caps.open == 0 and caps.by_source == {}
