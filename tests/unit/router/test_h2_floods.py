"""Floods against ``serve_h2`` over real sockets: what one hostile client may cost the router and the others.

The router runs on an event loop in a thread of its own, in front of an
h2c origin on the ``h2`` library; the attacker and a bystander are plain
blocking sockets in the test's thread, so a router that stalls shows up as
a bystander that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from innerloop.router.h2 import PREFACE, RouteKey, serve_h2
from innerloop.router.http1 import BufferedConn, Conn, SocketConn
from innerloop.router.limits import KIB, MIB, Limits

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"svc")]


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, b"ok", end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    writer.close()


@dataclass
class RouterThread:
    port: int
    loop: asyncio.AbstractEventLoop


@contextmanager
def router(limits: Limits) -> Iterator[RouterThread]:
    """``serve_h2`` on a loopback port (every stream to the origin), served by a thread's own event loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    ports: list[int] = []

    async def start() -> None:
        origin = await asyncio.start_server(_origin, "127.0.0.1", 0)
        origin_port = origin.sockets[0].getsockname()[1]

        async def connect(route: RouteKey) -> Conn:
            return SocketConn(*await asyncio.open_connection("127.0.0.1", origin_port))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve_h2(
                BufferedConn(SocketConn(reader, writer)), choose=lambda _: "origin", connect=connect, limits=limits
            )

        # Small kernel buffers on the router's side (accepted sockets inherit them): what a flood leaves queued
        # then sits in the router's own memory, where the test can see it, not in the kernel's.
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KIB)
        listener.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(handle, sock=listener)
        ports.append(server.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(10)
    try:
        yield RouterThread(ports[0], loop)
    finally:

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def bystander_request(port: int, *, timeout: float = 10.0) -> float:
    """One GET through the router on a connection of its own (the h2 package as client); seconds it took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, REQUEST, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the router closed the bystander's connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    return time.monotonic() - start
                assert not isinstance(event, h2.events.StreamReset), event
            sock.sendall(conn.data_to_send())


def frames(data: bytes) -> list[Frame]:
    parsed = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        parsed.append(frame)
        view = view[9 + length :]
    return parsed


def settings() -> bytes:
    return SettingsFrame(0).serialize()


def test_continuation_flood_is_cut_at_once_and_never_stalls_another_connection() -> None:
    """Attack (issue 9 item 12): HEADERS without END_HEADERS, then 20,000 empty CONTINUATION frames (175 KiB).
    The old frame layer re-summed the growing list of fragments on each one (quadratic): 5.4 s of router CPU
    while every other connection waited. Now the flood must end the attacker's connection with GOAWAY within a
    second or two, and a bystander's request in the middle of it must be answered promptly."""
    with router(Limits()) as served:
        block = Encoder().encode(REQUEST)
        flood = PREFACE + settings() + HeadersFrame(1, data=block).serialize()
        flood += ContinuationFrame(1, data=b"").serialize() * 20_000
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as attacker:
            start = time.monotonic()
            sender = threading.Thread(target=_send_ignoring_reset, args=(attacker, flood), daemon=True)
            sender.start()
            waited = bystander_request(served.port)
            received = bytearray()
            while chunk := _recv(attacker):
                received += chunk
            cut_after = time.monotonic() - start
            sender.join(10)
        goaways = [f for f in frames(bytes(received)) if isinstance(f, GoAwayFrame)]
        assert goaways, "the flood did not end the attacker's connection"
        assert goaways[-1].error_code != 0
        assert cut_after < 2.0, f"the flood held the attacker's connection open {cut_after:.1f} s"
        assert waited < 1.0, f"the bystander waited {waited:.1f} s"


def test_ping_flood_from_a_client_that_never_reads_stays_within_the_buffer_limit() -> None:
    """Attack (issue 9 item 12): a client sends PINGs as fast as it can and never reads the ACKs. The old router
    read on and queued every ACK (2M PINGs took it from 27 to 150 MiB, against a 256 Mi limit: an OOM restart
    loses every developer's intercepts). Now it must stop reading from that client once
    ``max_buffered_bytes`` are queued towards it, so the router's memory stays bounded, while a bystander's
    request is still answered."""
    limits = Limits(max_buffered_bytes=64 * KIB)
    pings = PingFrame(0, opaque_data=b"12345678").serialize() * 10_000  # 170 KB
    with router(limits) as served:
        attacker = socket.socket()
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the attacker's kernel takes little
        attacker.connect(("127.0.0.1", served.port))
        try:
            attacker.sendall(PREFACE + settings())
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                attacker.settimeout(1.0)
                sent = 0
                deadline = time.monotonic() + 15
                while sent < 40 * MIB and time.monotonic() < deadline:
                    try:
                        attacker.sendall(pings)
                    except TimeoutError:
                        break  # the router stopped reading: back-pressure reached the attacker
                    sent += len(pings)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()  # (it slows the router tenfold: the bystander is timed without it)
            # The flood goes on (megabytes of PINGs still wait in the attacker's socket) while a bystander asks.
            waited = bystander_request(served.port)
        finally:
            attacker.close()
    grown = peak - before
    assert sent < 40 * MIB, "the router read 40 MiB of PINGs from a client that never read an answer"
    assert grown < 4 * MIB, f"the router's memory grew by {grown / MIB:.1f} MiB under the flood"
    assert waited < 2.0, f"the bystander waited {waited:.1f} s"


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the router closed the connection mid-flood: that is the point
        sock.sendall(data)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
