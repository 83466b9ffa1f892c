"""The per-connection HTTP/1.1 router: real TCP upstreams on 127.0.0.1, and scripted in-memory ones."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from innerloop.router.http1 import BufferedConn, Conn, RequestHead, SocketConn
from innerloop.router.routing import RETRY_BODY_LIMIT, RouteKey, serve_http1

from .test_http1 import memory_pair, read_all

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# -- a small independent HTTP/1.1 upstream ----------------------------------------


@dataclass
class Upstream:
    name: str
    port: int = 0
    connections: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    close_after_each: bool = False  # advertise keep-alive, then close anyway (a server's idle timeout)
    slow_request: asyncio.Event = field(default_factory=asyncio.Event)  # set when a /slow request arrives


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, until_close: bool = False) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read() if until_close else b""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def serve_upstream(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    up.connections += 1
    try:
        while (parsed := await read_head(reader)) is not None:
            line, headers = parsed
            method, path, _ = line.split(" ")
            if path == "/early":
                writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
                await writer.drain()
                return
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await read_body(reader, headers)
            up.requests.append((method, path, headers, body))
            if path == "/ws":
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                writer.write(b"welcome;")
                while data := await reader.read(65536):
                    writer.write(data.upper())
                    await writer.drain()
                writer.write(b";bye")
                await writer.drain()
                return
            if path.startswith("/big/"):
                size = int(path.split("/")[2])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Sha: %s\r\n\r\n"
                    % digest(bytes(i % 251 for i in range(size))).encode()
                )
                block = bytes(i % 251 for i in range(size))
                for start in range(0, size, 100_000):
                    piece = block[start : start + 100_000]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\nX-Trailer: done\r\n\r\n")
                await writer.drain()
                continue
            payload = f"{up.name} {method} {path} {len(body)} {digest(body)}".encode()
            extra = b"Connection: keep-alive\r\n" if "ka" in path else b""
            if "slow" in path:
                up.slow_request.set()
                await asyncio.sleep(0.1)
            if method == "HEAD":
                payload_len, payload = len(payload), b""
            else:
                payload_len = len(payload)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (payload_len, extra, payload))
            await writer.drain()
            if up.close_after_each or headers.get("connection", "").lower() == "close":
                return
    finally:
        writer.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    while True:
        parsed = await read_head(reader)
        assert parsed is not None, "connection closed instead of a response"
        line, headers = parsed
        status = int(line.split(" ")[1])
        if status >= 200 or status == 101:
            break
    if method == "HEAD" or status in (101, 204, 304):
        return Response(status, headers, b"")
    return Response(status, headers, await read_body(reader, headers, until_close=True))


async def read_at_least(conn: Conn, n: int) -> bytes:
    """``n`` bytes or more; fails (instead of spinning) if the connection ends first."""
    got = bytearray()
    while len(got) < n:
        data = await conn.read(65536)
        assert data, f"connection ended after {bytes(got)!r}"
        got += data
    return bytes(got)


def choose_by_header(head: RequestHead) -> RouteKey:
    dev = head.header(b"x-dev")
    return dev.decode() if dev else "origin"


@asynccontextmanager
async def router(
    upstreams: dict[str, Upstream],
    *,
    draining: asyncio.Event | None = None,
    exchanges: list[tuple[RouteKey, str, int]] | None = None,
) -> AsyncIterator[int]:
    servers = []
    for up in upstreams.values():

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream = up) -> None:
            await serve_upstream(up, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        up.port = server.sockets[0].getsockname()[1]
        servers.append(server)

    async def connect(route: RouteKey) -> Conn:
        if route not in upstreams:
            raise ConnectionRefusedError(f"no upstream {route}")
        return SocketConn(*await asyncio.open_connection("127.0.0.1", upstreams[str(route)].port))

    def record(route: RouteKey, head: RequestHead, status: int) -> None:
        if exchanges is not None:
            exchanges.append((route, head.target, status))

    async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http1(
            BufferedConn(SocketConn(reader, writer)),
            choose=choose_by_header,
            connect=connect,
            draining=draining,
            on_exchange=record,
        )

    front = await asyncio.start_server(handle_client, "127.0.0.1", 0)
    servers.append(front)
    try:
        yield front.sockets[0].getsockname()[1]
    finally:
        for server in servers:
            server.close()


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: svc", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- routing per request ----------------------------------------------------------


def test_keep_alive_requests_alternate_between_routes_and_reuse_upstreams() -> None:
    async def scenario() -> tuple[list[bytes], dict[str, Upstream], list[tuple[RouteKey, str, int]]]:
        ups = {"origin": Upstream("origin"), "alice": Upstream("alice")}
        exchanges: list[tuple[RouteKey, str, int]] = []
        async with router(ups, exchanges=exchanges) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            bodies = []
            for i in range(6):
                header = ("X-Dev: alice",) if i % 2 else ()
                writer.write(get(f"/r{i}", *header))
                response = await read_response(reader)
                assert response.status == 200
                bodies.append(response.body)
            writer.close()
        return bodies, ups, exchanges

    bodies, ups, exchanges = run(scenario())
    assert [b.split()[0] for b in bodies] == [b"origin", b"alice"] * 3
    assert [b.split()[2] for b in bodies] == [f"/r{i}".encode() for i in range(6)]
    assert ups["origin"].connections == 1
    assert ups["alice"].connections == 1
    assert exchanges == [("alice" if i % 2 else "origin", f"/r{i}", 200) for i in range(6)]


def test_pipelined_requests_for_two_routes_are_answered_in_order() -> None:
    async def scenario() -> list[bytes]:
        ups = {"origin": Upstream("origin"), "bob": Upstream("bob")}
        async with router(ups) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/1", "x-dev: bob") + get("/2") + get("/3", "X-DEV: bob") + get("/4", "Connection: close"))
            bodies = [(await read_response(reader)).body for _ in range(4)]
            assert await reader.read() == b""  # closed after the Connection: close request
            return bodies

    bodies = run(scenario())
    assert [b.split()[:3] for b in bodies] == [
        [b"bob", b"GET", b"/1"],
        [b"origin", b"GET", b"/2"],
        [b"bob", b"GET", b"/3"],
        [b"origin", b"GET", b"/4"],
    ]


def test_large_bodies_stream_through_intact() -> None:
    size = 6 * 1024 * 1024 + 7
    upload = bytes((i * 7) % 256 for i in range(size))

    async def scenario() -> tuple[Response, Response, Response, Upstream]:
        ups = {"origin": Upstream("origin"), "alice": Upstream("alice")}
        async with router(ups) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/upload", "X-Dev: alice", f"Content-Length: {size}", method="POST"))
            writer.write(upload)
            uploaded = await read_response(reader)
            # the same upload, chunked in uneven pieces
            writer.write(get("/chunked", "X-Dev: alice", "Transfer-Encoding: chunked"))
            for start in range(0, size, 300_001):
                piece = upload[start : start + 300_001]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
            chunked = await read_response(reader)
            writer.write(get(f"/big/{size}"))
            downloaded = await read_response(reader)
            writer.close()
        return uploaded, chunked, downloaded, ups["alice"]

    uploaded, chunked, downloaded, alice = run(scenario(), timeout=60)
    assert uploaded.body == f"alice POST /upload {size} {digest(upload)}".encode()
    assert chunked.body == f"alice GET /chunked {size} {digest(upload)}".encode()
    assert len(downloaded.body) == size
    assert digest(downloaded.body) == downloaded.headers["x-sha"]
    assert alice.connections == 1


def test_head_response_with_content_length_has_no_body() -> None:
    async def scenario() -> bytes:
        async with router({"origin": Upstream("origin")}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/h", method="HEAD") + get("/after"))
            head = await read_response(reader, method="HEAD")
            assert int(head.headers["content-length"]) > 0
            return (await read_response(reader)).body

    assert run(scenario()).startswith(b"origin GET /after")


# -- failures ---------------------------------------------------------------------------


def test_stale_upstream_is_reopened_and_the_request_retried() -> None:
    async def scenario() -> tuple[list[bytes], Upstream]:
        up = Upstream("origin", close_after_each=True)
        async with router({"origin": up}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            bodies = []
            small = b"s" * RETRY_BODY_LIMIT
            for request in (get("/1"), get("/2", f"Content-Length: {len(small)}") + small, get("/3")):
                writer.write(request)
                response = await read_response(reader)
                assert response.status == 200, response
                bodies.append(response.body)
                await asyncio.sleep(0.05)  # let the upstream's FIN arrive: the cached connection is now stale
            return bodies, up

    bodies, up = run(scenario())
    assert [b.split()[2] for b in bodies] == [b"/1", b"/2", b"/3"]
    assert bodies[1].split()[3] == str(RETRY_BODY_LIMIT).encode()
    assert up.connections == 3
    assert [r[1] for r in up.requests] == ["/1", "/2", "/3"]  # each sent once to a live server


def test_stale_upstream_with_a_large_streamed_body_is_a_502() -> None:
    async def scenario() -> Response:
        up = Upstream("origin", close_after_each=True)
        async with router({"origin": up}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/1"))
            assert (await read_response(reader)).status == 200
            await asyncio.sleep(0.05)
            big = b"b" * (RETRY_BODY_LIMIT + 1)
            writer.write(get("/2", f"Content-Length: {len(big)}") + big)
            response = await read_response(reader)
            assert await reader.read() == b""
            return response

    response = run(scenario())
    assert response.status == 502
    assert response.headers["connection"] == "close"


def test_connect_failure_is_a_502_naming_the_error() -> None:
    async def scenario() -> tuple[Response, bytes]:
        async with router({"origin": Upstream("origin")}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/x", "X-Dev: nobody"))
            response = await read_response(reader)
            return response, await reader.read()

    response, rest = run(scenario())
    assert response.status == 502
    assert b"nobody" in response.body
    assert b"ConnectionRefusedError" in response.body
    assert rest == b""


def test_malformed_request_is_a_400_and_closes() -> None:
    async def scenario() -> tuple[Response, bytes, int]:
        up = Upstream("origin")
        async with router({"origin": up}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            response = await read_response(reader)
            return response, await reader.read(), up.connections

    response, rest, connections = run(scenario())
    assert response.status == 400
    assert b"Content-Length and Transfer-Encoding" in response.body
    assert rest == b""
    assert connections == 0


def test_early_response_before_the_body_is_relayed_and_closes() -> None:
    async def scenario() -> tuple[Response, bytes]:
        async with router({"origin": Upstream("origin")}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/early", "Content-Length: 10000000"))
            writer.write(b"x" * 100_000)
            response = await read_response(reader)
            rest = await reader.read()
            return response, rest

    response, rest = run(scenario())
    assert (response.status, response.body) == (413, b"big")
    assert rest == b""


# -- 1xx, draining, upgrade -------------------------------------------------------------------


def test_expect_100_continue_is_relayed_before_the_body() -> None:
    async def scenario() -> tuple[bytes, Response]:
        async with router({"origin": Upstream("origin")}) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/upload", "Expect: 100-continue", "Content-Length: 5"))
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # would hang if not relayed
            writer.write(b"hello")
            return interim, await read_response(reader)

    interim, response = run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert response.body == f"origin GET /upload 5 {digest(b'hello')}".encode()


def test_draining_adds_connection_close_and_closes() -> None:
    async def scenario() -> tuple[Response, bytes, bytes]:
        draining = asyncio.Event()
        up = Upstream("origin")
        async with router({"origin": up}, draining=draining) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/ka"))
            before = await read_response(reader)
            writer.write(get("/slow-ka"))
            await up.slow_request.wait()
            draining.set()  # while the exchange is in flight: it completes, with Connection: close
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()  # then the router closes
            return before, head, body

    before, head, body = run(scenario())
    assert before.headers["connection"] == "keep-alive"
    assert head.lower().count(b"\r\nconnection:") == 1
    assert b"\r\nConnection: close\r\n" in head
    assert b"\r\nContent-Length: %d\r\n" % len(body) in head
    assert body.startswith(b"origin GET /slow-ka")


def test_draining_closes_an_idle_connection() -> None:
    async def scenario() -> bytes:
        draining = asyncio.Event()
        async with router({"origin": Upstream("origin")}, draining=draining) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/1"))
            await read_response(reader)
            await asyncio.sleep(0.05)
            draining.set()
            return await asyncio.wait_for(reader.read(), 5)

    assert run(scenario()) == b""


def test_upgrade_switches_to_a_raw_pipe() -> None:
    async def scenario() -> tuple[Response, bytes, list[str]]:
        ups = {"origin": Upstream("origin"), "alice": Upstream("alice")}
        async with router(ups) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/ws", "X-Dev: alice", "Upgrade: websocket", "Connection: Upgrade"))
            response = await read_response(reader)
            writer.write(b"frame one, ")
            writer.write(b"GET / HTTP/1.1\r\n\r\n")  # no longer HTTP: must be relayed as bytes
            writer.write_eof()
            rest = await reader.read()
            return response, rest, [r[1] for r in ups["alice"].requests]

    response, rest, paths = run(scenario())
    assert response.status == 101
    assert rest == b"welcome;FRAME ONE, GET / HTTP/1.1\r\n\r\n;bye"
    assert paths == ["/ws"]


# -- scripted in-memory upstreams ------------------------------------------------------


def test_in_memory_upstream_sees_exactly_the_clients_bytes() -> None:
    request = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-Dev: carol\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;e=1\r\nabc\r\n0\r\nT: t\r\n\r\n"
    )
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"

    async def scenario() -> tuple[bytes, bytes, list[RouteKey]]:
        client, router_side = memory_pair()
        upstream_side, upstream = memory_pair()
        routes: list[RouteKey] = []

        async def connect(route: RouteKey) -> Conn:
            routes.append(route)
            return upstream_side

        serving = asyncio.create_task(
            serve_http1(BufferedConn(router_side, request[:10]), choose=choose_by_header, connect=connect)
        )
        await client.write(request[10:])
        seen = await read_at_least(upstream, len(request))
        await upstream.write(response)
        got = await read_at_least(client, len(response))
        await client.close_write()
        await serving
        assert await read_all(upstream) == b""  # the router closed its upstream when the client left
        return bytes(seen), bytes(got), routes

    seen, got, routes = run(scenario())
    assert seen == request
    assert got == response
    assert routes == ["carol"]


@pytest.mark.parametrize("fail_with", ["eof", "reset"])
def test_in_memory_stale_upstream_is_retried_once(fail_with: str) -> None:
    async def scenario() -> tuple[bytes, int]:
        client, router_side = memory_pair()
        opened = 0
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

        class Dying:
            """Answers the first request, then fails the next one without a byte."""

            def __init__(self) -> None:
                self.requests = 0

            async def read(self, n: int) -> bytes:
                self.requests += 1
                if self.requests == 1:
                    return ok
                if fail_with == "reset":
                    raise ConnectionResetError("reset by peer")
                return b""

            async def write(self, data: bytes) -> None:
                pass

            async def close(self) -> None:
                pass

        class Healthy(Dying):
            async def read(self, n: int) -> bytes:
                return ok

        async def connect(route: RouteKey) -> Conn:
            nonlocal opened
            opened += 1
            return Dying() if opened == 1 else Healthy()

        serving = asyncio.create_task(serve_http1(BufferedConn(router_side), choose=lambda _: "o", connect=connect))
        await client.write(get("/1") + get("/2"))
        got = await read_at_least(client, 2 * len(ok))
        await client.close_write()
        await serving
        return bytes(got), opened

    got, opened = run(scenario())
    assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 2
    assert opened == 2


def test_close_delimited_response_ends_the_client_connection_too() -> None:
    async def scenario() -> tuple[bytes, int]:
        client, router_side = memory_pair()
        opened = 0

        async def connect(route: RouteKey) -> Conn:
            nonlocal opened
            opened += 1
            upstream_side, upstream = memory_pair()

            async def answer() -> None:
                await upstream.read(65536)
                await upstream.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n")
                await upstream.read(65536)
                await upstream.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                await upstream.close()

            answering.append(asyncio.create_task(answer()))
            return upstream_side

        answering: list[asyncio.Task[None]] = []
        serving = asyncio.create_task(serve_http1(BufferedConn(router_side), choose=lambda _: "o", connect=connect))
        await client.write(get("/1") + get("/2") + get("/3"))  # the third is never answered: the connection ends
        got = await read_all(client)
        await serving
        await asyncio.gather(*answering)
        return got, opened

    got, opened = run(scenario())
    assert got == b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\n\r\nuntil the end"
    assert opened == 1
