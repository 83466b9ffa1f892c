"""A real router (``Router.handler``) on 127.0.0.1 in front of a recording origin: what the sniffing, limits and
smuggling tests drive with raw sockets.

The origin is independent of the router's own parser: it records every byte
it receives and answers each request h11 (a well-kept HTTP/1.1 library)
parses with ``200 origin <n>``; in ``greeting`` mode it speaks first, as a
MySQL or SMTP server does, and echoes what it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11

from innerloop.router.limits import Limits
from innerloop.router.main import PortRoute, Router, RouterConfig


@dataclass
class Origin:
    greeting: bytes = b""  # sent first on every connection, then everything is echoed (a server-first protocol)
    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (method, target) h11 parsed

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.greeting:
                writer.write(self.greeting)
                await writer.drain()
                while data := await reader.read(65536):
                    self.received += data
                    writer.write(b"echo:" + data)
                    await writer.drain()
                return
            await self._serve_http(reader, writer)
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                self.received += data
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                self.requests.append((event.method, event.target))
            elif isinstance(event, h11.EndOfMessage):
                body = b"origin %d" % len(self.requests)
                writer.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])))
                writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


class _NoApi:
    """The router never calls the Kubernetes API in these tests (nothing is restored or deleted)."""


@dataclass
class RunningRouter:
    router: Router
    port: int
    origin: Origin
    clients: list[asyncio.StreamWriter] = field(default_factory=list)

    async def open(self, *, local: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client connection from source address ``local`` (any of 127.0.0.0/8); closed when the test ends."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(local, 0))
        self.clients.append(writer)
        return reader, writer


@asynccontextmanager
async def running_router(origin: Origin | None = None, *, limits: Limits | None = None) -> AsyncIterator[RunningRouter]:
    origin = origin or Origin()
    origin_server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin.port = origin_server.sockets[0].getsockname()[1]
    route = PortRoute(port=80, listen=0, origin_host="127.0.0.1", origin_port=origin.port)
    config = RouterConfig(
        service="svc",
        namespace="ns",
        deployment="svc-router",
        router_selector={},
        original={},
        ports=[route],
        control_port=0,
        grace=15.0,
        startup=60.0,
        settle=0.0,
        drain=0.0,
        limits=limits or Limits(),
    )
    router = Router(config, api=_NoApi())  # type: ignore[arg-type]
    front = await asyncio.start_server(router.handler(route), "127.0.0.1", 0)
    running = RunningRouter(router=router, port=front.sockets[0].getsockname()[1], origin=origin)
    try:
        yield running
    finally:
        # Clients go first, so the router's connections end by themselves (a cancelled one is logged as an error).
        for writer in running.clients:
            writer.close()
        connections = set(router._connections)
        if connections:
            await asyncio.wait(connections, timeout=5)
        front.close()
        origin_server.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response (status, body) as h11 reads it; the body ends by Content-Length or the connection's end."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "svc")]))
    conn.send(h11.EndOfMessage())
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the router sends until it closes (or resets) the connection; fails if it stays open longer."""
    out = bytearray()
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionResetError):
            while data := await reader.read(65536):
                out += data
    return bytes(out)
