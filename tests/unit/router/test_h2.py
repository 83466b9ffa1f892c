"""``serve_h2`` end to end: a test client and test upstreams, in memory.

The test peers build and read frames with ``hyperframe`` and header blocks
with ``hpack`` (the libraries underneath ``h2``), so they can also send what
a conforming client never would: the router must answer those itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from innerloop.router.h2 import PREFACE, RouteKey, serve_h2
from innerloop.router.http1 import BufferedConn, Conn
from innerloop.router.limits import Limits

from .test_http1 import MemoryConn, memory_pair

T = TypeVar("T")
Header = tuple[bytes, bytes]

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL = 0x7, 0x8
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_CONCURRENT_STREAMS = 0x4, 0x5, 0x3


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def raw_frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, malformed ones included (hyperframe refuses to build those): 9-byte head + payload."""
    return struct.pack(">L", len(payload))[1:] + struct.pack(">BBL", type_, flags, stream_id) + payload


def settings(values: dict[int, int], *, ack: bool = False) -> bytes:
    frame = SettingsFrame(0, flags=["ACK"] if ack else [])
    frame.settings = dict(values)
    return frame.serialize()


def ping(data: bytes, *, ack: bool = False) -> bytes:
    return PingFrame(0, opaque_data=data, flags=["ACK"] if ack else []).serialize()


def rst(stream_id: int, code: int) -> bytes:
    return RstStreamFrame(stream_id, error_code=code).serialize()


def goaway(last_stream_id: int, code: int) -> bytes:
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()


def window_update(stream_id: int, increment: int) -> bytes:
    return WindowUpdateFrame(stream_id, window_increment=increment).serialize()


def headers_frame(stream_id: int, block: bytes, *, end: bool, end_headers: bool = True) -> bytes:
    flags = (["END_STREAM"] if end else []) + (["END_HEADERS"] if end_headers else [])
    return HeadersFrame(stream_id, data=block, flags=flags).serialize()


def data_frame(stream_id: int, data: bytes, *, end: bool) -> bytes:
    return DataFrame(stream_id, data=data, flags=["END_STREAM"] if end else []).serialize()


class FrameReader:
    """Frames out of a byte stream (``hyperframe`` parses each one); CONTINUATIONs are not merged."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
            if len(self.buf) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self.buf[9 : 9 + length])))
            del self.buf[: 9 + length]
            frames.append(frame)
        return frames


@dataclass
class Event:
    kind: str  # "headers", "data" or "rst"
    headers: list[Header] = field(default_factory=list)
    data: bytes = b""
    end: bool = False
    code: int = 0


@dataclass
class Response:
    headers: dict[bytes, bytes]
    body: bytes
    trailers: dict[bytes, bytes]
    reset: int | None = None


class Peer:
    """Client or server over a ``Conn``, built from the module's frames and HPACK, with honest flow control.

    It grants stream windows of ``window`` bytes and returns them only when
    the test consumes the data (``next_event``), and records every DATA frame that
    exceeded a window it granted (``violations``): the router must never cause one.
    """

    def __init__(self, conn: Conn, *, window: int = 65535) -> None:
        self.conn = conn
        self.window = window
        self.parser = FrameReader()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.send_conn = 65535
        self.peer_initial = 65535
        self.peer_max_frame = 16384
        self.send_windows: dict[int, int] = {}
        self.recv_conn = 65535
        self.recv_windows: dict[int, int] = {}
        self.events: dict[int, asyncio.Queue[Event]] = {}
        self.new_streams: asyncio.Queue[int] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.goaway: tuple[int, int, bytes] | None = None
        self.got_goaway = asyncio.Event()
        self.ping_acks: asyncio.Queue[bytes] = asyncio.Queue()
        self.eof = asyncio.Event()
        self.violations: list[str] = []
        self.next_id = 1
        self.reader: asyncio.Task[None] | None = None

    async def start_client(self) -> None:
        await self.conn.write(PREFACE + settings({INITIAL_WINDOW_SIZE: self.window}))
        self.reader = asyncio.ensure_future(self._read())

    async def start_server(self, *, max_streams: int | None = None) -> None:
        buffered = BufferedConn(self.conn)
        assert await buffered.read_exactly(len(PREFACE)) == PREFACE
        self.conn = buffered
        values = {INITIAL_WINDOW_SIZE: self.window}
        if max_streams is not None:
            values[MAX_CONCURRENT_STREAMS] = max_streams
        await self.conn.write(settings(values))
        self.reader = asyncio.ensure_future(self._read())

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.conn.close()

    def _queue(self, stream_id: int) -> asyncio.Queue[Event]:
        if stream_id not in self.events:
            self.events[stream_id] = asyncio.Queue()
            self.send_windows.setdefault(stream_id, self.peer_initial)
            self.recv_windows.setdefault(stream_id, self.window)
        return self.events[stream_id]

    async def _read(self) -> None:
        try:
            while data := await self.conn.read(65536):
                for received in self.parser.feed(data):
                    await self._on_frame(received)
        finally:
            self.eof.set()
            self.changed.set()

    async def _on_frame(self, received: Frame) -> None:
        sid = received.stream_id
        end = "END_STREAM" in received.flags
        if isinstance(received, DataFrame):
            size = received.flow_controlled_length
            self.recv_conn -= size
            self.recv_windows[sid] = self.recv_windows.get(sid, self.window) - size
            if self.recv_conn < 0 or self.recv_windows[sid] < 0:
                self.violations.append(f"stream {sid}: {size} bytes beyond the window")
            if size:
                # The connection window comes back on receipt (as in real implementations), so one
                # unread stream cannot block the others; stream windows only once the test reads.
                self.recv_conn += size
                await self.conn.write(window_update(0, size))
            self._queue(sid).put_nowait(Event("data", data=bytes(received.data), end=end))
        elif isinstance(received, HeadersFrame):
            assert "END_HEADERS" in received.flags, "the router splits no header block this small"
            new = sid not in self.events
            headers = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(received.data), raw=True)]
            self._queue(sid).put_nowait(Event("headers", headers=headers, end=end))
            if new and sid % 2:
                self.new_streams.put_nowait(sid)
        elif isinstance(received, RstStreamFrame):
            self._queue(sid).put_nowait(Event("rst", code=received.error_code))
        elif isinstance(received, SettingsFrame) and "ACK" not in received.flags:
            for key, value in received.settings.items():
                if key == INITIAL_WINDOW_SIZE:
                    for stream in self.send_windows:
                        self.send_windows[stream] += value - self.peer_initial
                    self.peer_initial = value
                elif key == MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            await self.conn.write(settings({}, ack=True))
            self.changed.set()
        elif isinstance(received, WindowUpdateFrame):
            if sid:
                self.send_windows[sid] = self.send_windows.get(sid, self.peer_initial) + received.window_increment
            else:
                self.send_conn += received.window_increment
            self.changed.set()
        elif isinstance(received, PingFrame):
            if "ACK" in received.flags:
                self.ping_acks.put_nowait(bytes(received.opaque_data))
            else:
                await self.conn.write(ping(bytes(received.opaque_data), ack=True))
        elif isinstance(received, GoAwayFrame):
            self.goaway = (received.last_stream_id, received.error_code, bytes(received.additional_data))
            self.got_goaway.set()

    # -- sending

    async def send_headers(self, stream_id: int, headers: list[Header], *, end: bool = False) -> None:
        self._queue(stream_id)
        block = self.encoder.encode(headers)
        assert len(block) <= self.peer_max_frame
        await self.conn.write(headers_frame(stream_id, block, end=end))

    async def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        self._queue(stream_id)
        view = memoryview(data)
        while view or end:
            allowed = min(self.send_conn, self.send_windows[stream_id], self.peer_max_frame, len(view))
            if view and allowed <= 0:
                if self.eof.is_set():
                    raise ConnectionError("peer closed while we waited for window")
                self.changed.clear()
                await self.changed.wait()
                continue
            chunk = bytes(view[:allowed])
            view = view[allowed:]
            self.send_conn -= len(chunk)
            self.send_windows[stream_id] -= len(chunk)
            last = end and not view
            await self.conn.write(data_frame(stream_id, chunk, end=last))
            if last:
                return

    async def request(self, headers: list[Header], body: bytes = b"", *, trailers: list[Header] | None = None) -> int:
        stream_id = self.next_id
        self.next_id += 2
        await self.send_headers(stream_id, headers, end=not body and trailers is None)
        if body:
            await self.send_data(stream_id, body, end=trailers is None)
        if trailers is not None:
            await self.send_headers(stream_id, trailers, end=True)
        return stream_id

    # -- receiving

    async def next_event(self, stream_id: int) -> Event:
        event = await self._queue(stream_id).get()
        if event.kind == "data" and event.data:
            self.recv_windows[stream_id] += len(event.data)  # consumed: the stream's window comes back
            if not event.end:
                await self.conn.write(window_update(stream_id, len(event.data)))
        return event

    async def read_message(self, stream_id: int, *, head: list[Header] | None = None) -> Response:
        """A whole request or response: head (skipping 1xx), body, trailers; or the reset that ended it."""
        headers = head
        body = bytearray()
        trailers: list[Header] = []
        end = False
        while not end:
            event = await self.next_event(stream_id)
            if event.kind == "rst":
                return Response(dict(headers or []), bytes(body), dict(trailers), reset=event.code)
            if event.kind == "headers":
                if headers is None:
                    status = dict(event.headers).get(b":status", b"200")
                    if status.startswith(b"1") and not event.end:
                        continue
                    headers = event.headers
                else:
                    trailers = event.headers
            else:
                body += event.data
            end = event.end
        return Response(dict(headers or []), bytes(body), dict(trailers))


# -- test upstreams --------------------------------------------------------------------------------


Handler = Callable[["Upstream", Peer, int, dict[bytes, bytes]], Awaitable[None]]


@dataclass
class Upstream:
    """An h2c test server; every connection the router opens to it is a ``Peer``."""

    name: str
    window: int = 65535
    max_streams: int | None = None
    peers: list[Peer] = field(default_factory=list)
    requests: list[tuple[int, dict[bytes, bytes]]] = field(default_factory=list)  # (connection, headers)
    resets: list[tuple[int, int]] = field(default_factory=list)  # (stream id, code)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def accept(self, conn: MemoryConn) -> None:
        peer = Peer(conn, window=self.window)
        self.peers.append(peer)
        await peer.start_server(max_streams=self.max_streams)
        while True:
            stream_id = await peer.new_streams.get()
            self.tasks.append(asyncio.ensure_future(self.handle(peer, stream_id)))

    async def handle(self, peer: Peer, stream_id: int) -> None:
        first = await peer.next_event(stream_id)
        head = dict(first.headers)
        self.requests.append((self.peers.index(peer), head))
        self.arrived.set()
        path = head[b":path"]
        request = Response(head, b"", {})
        if not first.end:
            request = await peer.read_message(stream_id, head=first.headers)
        if request.reset is not None:
            self.resets.append((stream_id, request.reset))
            return
        if path == b"/hold":
            event = await peer.next_event(stream_id)  # nothing comes but the reset
            if event.kind == "rst":
                self.resets.append((stream_id, event.code))
            return
        if path == b"/slow":
            await self.release.wait()
        await peer.send_headers(stream_id, [(b":status", b"100")])
        size = int(head.get(b"x-size", b"0"))
        await peer.send_headers(
            stream_id,
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"x-upstream", self.name.encode()),
                (b"x-body-sha256", hashlib.sha256(request.body).hexdigest().encode()),
                (b"x-request-trailer", request.trailers.get(b"x-client-trailer", b"")),
            ],
        )
        if size:
            await peer.send_data(stream_id, pattern(size))
        await peer.send_headers(stream_id, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")], end=True)


def pattern(size: int) -> bytes:
    return (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]


def get(path: str, **extra: str) -> list[Header]:
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"svc")]
    return headers + [(name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()]


@dataclass
class Setup:
    client: Peer
    upstreams: dict[str, Upstream]
    connects: list[RouteKey]
    exchanges: list[tuple[RouteKey, int]]
    draining: asyncio.Event
    served: asyncio.Task[None]


@asynccontextmanager
async def relay(
    *,
    window: int = 65535,
    fail: frozenset[str] = frozenset(),
    max_streams: int | None = None,
    limits: Limits | None = None,
) -> AsyncIterator[Setup]:
    """A client ``Peer`` talking to ``serve_h2``, which routes ``x-dev: alice`` to upstream A, the rest to B."""
    upstreams = {"alice": Upstream("A", window=window, max_streams=max_streams), "origin": Upstream("B", window=window)}
    connects: list[RouteKey] = []
    exchanges: list[tuple[RouteKey, int]] = []
    accepting: list[asyncio.Task[None]] = []

    def choose(headers: list[Header]) -> RouteKey:
        dev = dict(headers).get(b"x-dev")
        return {b"alice": "alice", b"bob": "bob"}.get(dev or b"", "origin")

    async def connect(route: RouteKey) -> Conn:
        connects.append(route)
        if route in fail or route == "bob":
            raise ConnectionRefusedError(f"no route to {route}")
        ours, theirs = memory_pair()
        accepting.append(asyncio.ensure_future(upstreams[str(route)].accept(theirs)))
        return ours

    ours, theirs = memory_pair()
    draining = asyncio.Event()
    served = asyncio.ensure_future(
        serve_h2(
            BufferedConn(theirs),
            choose=choose,
            connect=connect,
            draining=draining,
            on_exchange=lambda route, status: exchanges.append((route, status)),
            limits=limits,
        )
    )
    client = Peer(ours, window=window)
    await client.start_client()
    try:
        yield Setup(client, upstreams, connects, exchanges, draining, served)
        for upstream in upstreams.values():
            for peer in upstream.peers:
                assert peer.violations == []
        assert client.violations == []
    finally:
        await client.stop()
        await asyncio.wait_for(served, 5)
        for task in accepting + [t for u in upstreams.values() for t in u.tasks]:
            task.cancel()
        await asyncio.gather(*accepting, *(t for u in upstreams.values() for t in u.tasks), return_exceptions=True)


# -- serve_h2 end to end ------------------------------------------------------------------------------


def test_interleaved_streams_go_to_the_upstream_their_headers_choose() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            bodies = {i: f"request {i} ".encode() * (i + 1) for i in range(20)}
            ids: dict[int, int] = {}
            # Open every stream first (bodies not yet sent), then send the bodies in reverse order.
            for i in range(20):
                extra = {"x_dev": "alice"} if i % 2 else {}
                stream_id = client.next_id
                client.next_id += 2
                await client.send_headers(stream_id, get(f"/echo/{i}", **extra))
                ids[i] = stream_id
            for i in reversed(range(20)):
                await client.send_data(ids[i], bodies[i], end=True)
            responses = await asyncio.gather(*(client.read_message(ids[i]) for i in range(20)))
            for i, response in enumerate(responses):
                assert response.headers[b":status"] == b"200"
                assert response.headers[b"x-upstream"] == (b"A" if i % 2 else b"B")
                assert response.headers[b"x-body-sha256"] == hashlib.sha256(bodies[i]).hexdigest().encode()
                assert response.trailers == {b"grpc-status": b"0", b"grpc-message": b"ok"}
            # One upstream connection per route, and each request arrived with its own path on the right one.
            assert Counter(setup.connects) == {"alice": 1, "origin": 1}
            paths_a = sorted(h[b":path"] for _, h in setup.upstreams["alice"].requests)
            assert paths_a == sorted(f"/echo/{i}".encode() for i in range(1, 20, 2))
            assert all(h[b":authority"] == b"svc" for _, h in setup.upstreams["origin"].requests)
            await asyncio.sleep(0.01)
            assert Counter(setup.exchanges) == {("alice", 200): 10, ("origin", 200): 10}

    run(scenario())


def test_large_bodies_both_ways_within_small_windows() -> None:
    async def scenario() -> None:
        async with relay(window=65535) as setup:
            client = setup.client
            size = 1024 * 1024 + 17
            body = pattern(size + 1)
            first = await client.request(get("/echo", x_dev="alice", x_size=str(size)), body)
            second = await client.request(get("/echo", x_size=str(size)), body[:1000])
            one, two = await asyncio.gather(client.read_message(first), client.read_message(second))
            assert one.headers[b"x-body-sha256"] == hashlib.sha256(body).hexdigest().encode()
            assert one.body == pattern(size)
            assert two.headers[b"x-upstream"] == b"B"
            assert two.body == pattern(size)
            # The windows were far smaller than the bodies: only WINDOW_UPDATEs can have moved them.
            assert size > 16 * 65535

    run(scenario())


def test_slow_reader_stalls_only_its_own_stream() -> None:
    async def scenario() -> None:
        async with relay(window=65535) as setup:
            client = setup.client
            size = 2 * 1024 * 1024
            big = await client.request(get("/echo", x_size=str(size)))
            # Read just the head of the big response and let the rest wait in the router.
            interim = await client.next_event(big)
            assert dict(interim.headers)[b":status"] == b"100"  # 1xx heads are relayed too
            head = await client.next_event(big)
            assert dict(head.headers)[b":status"] == b"200"
            small = await client.request(get("/echo", x_dev="alice", x_size="10"))
            response = await asyncio.wait_for(client.read_message(small), 5)
            assert response.body == pattern(10)
            rest = await client.read_message(big, head=head.headers)
            assert rest.body == pattern(size)

    run(scenario())


def test_request_trailers_pass_through() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            stream_id = await client.request(
                get("/echo", x_dev="alice"), b"\0\0\0\0\x05hello", trailers=[(b"x-client-trailer", b"t1")]
            )
            response = await client.read_message(stream_id)
            assert response.headers[b"x-request-trailer"] == b"t1"
            assert response.trailers[b"grpc-status"] == b"0"
            # Trailers only, no DATA at all (a gRPC call with an empty request stream).
            stream_id = await client.request(get("/echo"), trailers=[(b"x-client-trailer", b"t2")])
            response = await client.read_message(stream_id)
            assert response.headers[b"x-request-trailer"] == b"t2"
            assert response.headers[b"x-body-sha256"] == hashlib.sha256(b"").hexdigest().encode()

    run(scenario())


def test_client_reset_cancels_the_upstream_stream() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            upstream = setup.upstreams["alice"]
            held = await client.request(get("/hold", x_dev="alice"))
            await upstream.arrived.wait()
            await client.conn.write(rst(held, CANCEL))
            for _ in range(100):
                if upstream.resets:
                    break
                await asyncio.sleep(0.01)
            assert upstream.resets == [(1, CANCEL)]
            # The connection and the upstream stay usable.
            stream_id = await client.request(get("/echo", x_dev="alice"))
            assert (await client.read_message(stream_id)).headers[b"x-upstream"] == b"A"
            assert setup.connects == ["alice"]
            assert ("alice", 0) in setup.exchanges

    run(scenario())


def test_upstream_reset_reaches_the_client() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            upstream = setup.upstreams["origin"]
            held = await client.request(get("/hold"))
            await upstream.arrived.wait()
            await upstream.peers[0].conn.write(rst(1, INTERNAL_ERROR))
            response = await client.read_message(held)
            assert response.reset == INTERNAL_ERROR

    run(scenario())


def test_connect_failure_answers_502_for_that_stream_only() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            good = await client.request(get("/echo", x_dev="alice"), b"x")
            bad = await client.request(get("/echo", x_dev="bob"), b"y" * 100_000)
            other = await client.request(get("/echo"))
            failed = await client.read_message(bad)
            assert failed.headers[b":status"] == b"502"
            assert b"no route to bob" in failed.headers[b"x-innerloop-error"]
            assert (await client.read_message(good)).headers[b"x-upstream"] == b"A"
            assert (await client.read_message(other)).headers[b"x-upstream"] == b"B"
            assert ("bob", 502) in setup.exchanges
            # The client may still be sending the failed request's body: it is told to stop, without error.
            await client.conn.write(ping(b"pingpong"))
            assert await asyncio.wait_for(client.ping_acks.get(), 5) == b"pingpong"

    run(scenario())


def test_upstream_goaway_sends_new_streams_to_a_new_connection_and_refuses_unprocessed_ones() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            upstream = setup.upstreams["origin"]
            first = await client.request(get("/echo"))
            assert (await client.read_message(first)).headers[b"x-upstream"] == b"B"
            upstream.arrived.clear()
            held = await client.request(get("/hold"))  # upstream stream 3
            await upstream.arrived.wait()
            # The upstream shuts down having processed stream 1 only.
            await upstream.peers[0].conn.write(goaway(1, NO_ERROR))
            refused = await client.read_message(held)
            assert refused.reset == REFUSED_STREAM
            again = await client.request(get("/echo"))
            assert (await client.read_message(again)).headers[b"x-upstream"] == b"B"
            assert setup.connects == ["origin", "origin"]
            assert [connection for connection, _ in upstream.requests] == [0, 0, 1]

    run(scenario())


def test_upstream_stream_limit_queues_streams() -> None:
    async def scenario() -> None:
        async with relay(max_streams=2) as setup:
            client = setup.client
            ids = [await client.request(get(f"/echo/{i}", x_dev="alice", x_size="100")) for i in range(8)]
            responses = await asyncio.gather(*(client.read_message(i) for i in ids))
            assert all(r.body == pattern(100) for r in responses)
            assert setup.connects == ["alice"]

    run(scenario())


def test_upstream_connection_lost_before_answering_is_a_502() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            upstream = setup.upstreams["origin"]
            held = await client.request(get("/hold"))
            await upstream.arrived.wait()
            await upstream.peers[0].conn.close()
            response = await client.read_message(held)
            assert response.headers[b":status"] == b"502"
            again = await client.request(get("/echo"))
            assert (await client.read_message(again)).headers[b"x-upstream"] == b"B"

    run(scenario())


def test_draining_sends_goaway_and_closes_after_open_streams() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            upstream = setup.upstreams["alice"]
            slow = await client.request(get("/slow", x_dev="alice"))
            await upstream.arrived.wait()
            setup.draining.set()
            await asyncio.wait_for(client.got_goaway.wait(), 5)
            assert client.goaway == (slow, NO_ERROR, b"")
            # A stream opened after the GOAWAY is ignored, body included; the open one completes.
            await client.request(get("/echo"), b"ignored")
            assert not setup.served.done()
            upstream.release.set()
            response = await client.read_message(slow)
            assert response.headers[b"x-upstream"] == b"A"
            await asyncio.wait_for(setup.served, 5)
            await asyncio.wait_for(client.eof.wait(), 5)
            assert setup.connects == ["alice"]

    run(scenario())


def test_ping_is_answered_by_the_router() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            await setup.client.conn.write(ping(b"\x01\x02\x03\x04\x05\x06\x07\x08"))
            assert await asyncio.wait_for(setup.client.ping_acks.get(), 5) == b"\x01\x02\x03\x04\x05\x06\x07\x08"
            assert setup.connects == []

    run(scenario())


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (raw_frame(0x0, 0, 0, b"x"), PROTOCOL_ERROR),  # DATA on stream 0
        (raw_frame(0x0, 0, 5, b"x"), PROTOCOL_ERROR),  # DATA on a stream never opened
        (raw_frame(0x1, 0x4, 2, b"\x82"), PROTOCOL_ERROR),  # clients use odd ids
        # A truncated HPACK integer: h2 names it a PROTOCOL_ERROR (an HPACK error would be COMPRESSION_ERROR).
        (raw_frame(0x1, 0x4, 1, b"\xff\xff"), PROTOCOL_ERROR),
        (raw_frame(0x8, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),  # WINDOW_UPDATE of 0
        (settings({MAX_FRAME_SIZE: 100}), PROTOCOL_ERROR),
    ],
)
def test_client_protocol_errors_end_the_connection_with_goaway(wire: bytes, code: int) -> None:
    async def scenario() -> None:
        async with relay() as setup:
            await setup.client.conn.write(wire)
            await asyncio.wait_for(setup.client.got_goaway.wait(), 5)
            assert setup.client.goaway is not None
            assert setup.client.goaway[1] == code
            await asyncio.wait_for(setup.client.eof.wait(), 5)

    run(scenario())


GOOD = get("/echo", x_dev="alice")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([*GOOD, (b"X-Upper", b"1")], id="uppercase-name"),
        pytest.param([*GOOD, (b":unknown", b"1")], id="unknown-pseudo-header"),
        pytest.param([*GOOD, (b":status", b"200")], id="response-pseudo-header"),
        pytest.param([*GOOD[:3], (b"x-dev", b"alice"), GOOD[3]], id="pseudo-header-after-a-field"),
        pytest.param([*GOOD, (b"connection", b"keep-alive")], id="connection-header"),
        pytest.param([*GOOD, (b"te", b"gzip")], id="te-not-trailers"),
        pytest.param([(n, b"" if n == b":path" else v) for n, v in GOOD], id="empty-path"),
        pytest.param([h for h in GOOD if h[0] != b":method"], id="no-method"),
        pytest.param([*GOOD[:1], *GOOD], id="duplicate-method"),
    ],
)
def test_a_header_list_a_strict_upstream_refuses_is_refused_on_the_clients_connection(headers: list[Header]) -> None:
    """Attack (issue 9 item 15): a client sends a header list that breaks RFC 9113 8.2/8.3 on a stream routed
    to a shared upstream connection. Relayed as it was (the old router did), a strict upstream answers GOAWAY and
    that upstream connection drops for every stream on it. The router must refuse it on the client's own
    connection (PROTOCOL_ERROR) and send the upstream nothing of it; the upstream keeps serving."""

    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            first = await client.request(GOOD)
            assert (await client.read_message(first)).headers[b"x-upstream"] == b"A"
            await client.request(headers)
            await asyncio.wait_for(client.got_goaway.wait(), 5)
            assert client.goaway is not None and client.goaway[1] == PROTOCOL_ERROR
            await asyncio.sleep(0.05)
            upstream = setup.upstreams["alice"]
            assert len(upstream.requests) == 1, "the bad header list reached the upstream"
            # The upstream connection ends with the client's (it serves that connection only), cleanly.
            assert upstream.peers[0].goaway in (None, (0, NO_ERROR, b""))

    run(scenario())


def test_content_length_that_the_data_contradicts_is_never_relayed_whole() -> None:
    """Attack (item 15, 8.1.2.6): ``content-length: 3`` with 10 bytes of DATA. The router must not pass a body
    that disagrees with its length on to the upstream (which would answer PROTOCOL_ERROR on the shared
    connection): the client's connection is refused and the upstream stream is cancelled."""

    async def scenario() -> None:
        async with relay() as setup:
            client = setup.client
            stream_id = await client.request([*GOOD, (b"content-length", b"3")], b"0123456789")
            await asyncio.wait_for(client.got_goaway.wait(), 5)
            assert client.goaway is not None and client.goaway[1] == PROTOCOL_ERROR
            await asyncio.sleep(0.05)
            upstream = setup.upstreams["alice"]
            for peer in upstream.peers:
                assert peer.goaway in (None, (0, NO_ERROR, b""))
            for _, head in upstream.requests:  # if the head went up, its stream was cancelled, not completed
                assert head[b":path"] == b"/echo"
            assert stream_id not in [sid for sid, _ in upstream.resets if _ == NO_ERROR]

    run(scenario())


def test_more_header_fields_than_the_limit_is_a_431_for_that_stream_only() -> None:
    """Attack (item 13 for HTTP/2): thousands of header fields on one request. Above ``limits.max_headers`` the
    stream is answered 431 without reaching any upstream; the connection and its other streams go on."""

    async def scenario() -> None:
        async with relay(limits=Limits(max_headers=20)) as setup:
            client = setup.client
            many = await client.request(GOOD + [(b"x-filler-%d" % i, b"v") for i in range(30)])
            response = await client.read_message(many)
            assert response.headers[b":status"] == b"431"
            assert setup.connects == []
            ok = await client.request(GOOD)
            assert (await client.read_message(ok)).headers[b"x-upstream"] == b"A"

    run(scenario())


def test_a_client_that_never_sends_its_preface_is_closed_after_the_head_timeout() -> None:
    """Attack (item 13 for HTTP/2): hundreds of connections that open and send nothing (or half a preface) hold
    the router's sockets and tasks forever. Past ``limits.head_timeout`` without preface and SETTINGS, closed."""

    async def scenario() -> None:
        ours, theirs = memory_pair()
        await ours.write(PREFACE[:10])

        async def connect(route: RouteKey) -> Conn:
            raise AssertionError("no upstream for a client that never spoke")

        start = asyncio.get_running_loop().time()
        await serve_h2(BufferedConn(theirs), choose=lambda h: "x", connect=connect, limits=Limits(head_timeout=0.3))
        assert asyncio.get_running_loop().time() - start < 2.0
        assert await ours.read(100) == b""

    run(scenario(), timeout=10)


def test_an_idle_connection_gets_goaway_after_the_idle_timeout() -> None:
    """Attack (item 13): connections kept open with nothing in flight pile up. After ``limits.idle_timeout``
    with no stream open the router says GOAWAY (NO_ERROR) and closes; a connection with a stream open stays."""

    async def scenario() -> None:
        async with relay(limits=Limits(idle_timeout=0.5)) as setup:
            client = setup.client
            held = await client.request(get("/slow", x_dev="alice"))
            await asyncio.sleep(1.0)
            assert not client.got_goaway.is_set(), "a connection with a stream in flight was closed as idle"
            setup.upstreams["alice"].release.set()
            assert (await client.read_message(held)).headers[b"x-upstream"] == b"A"
            await asyncio.wait_for(client.got_goaway.wait(), 3)
            assert client.goaway is not None and client.goaway[1] == NO_ERROR
            await asyncio.wait_for(client.eof.wait(), 3)

    run(scenario(), timeout=20)


def test_not_a_preface_closes_at_once() -> None:
    async def scenario() -> None:
        ours, theirs = memory_pair()
        await ours.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        async def connect(route: RouteKey) -> Conn:
            raise AssertionError("no upstream for a non-HTTP/2 client")

        await serve_h2(BufferedConn(theirs), choose=lambda headers: "origin", connect=connect)
        assert await ours.read(100) == b""

    run(scenario())


# -- a real client: the h2 package's own ----------------------------------------------------------------


@dataclass
class H2Stream:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    sent: int = 0


def test_h2_package_client_through_the_router() -> None:
    async def scenario() -> None:
        async with relay() as setup:
            ours, theirs = memory_pair()
            served = asyncio.ensure_future(
                serve_h2(
                    BufferedConn(theirs),
                    choose=lambda headers: "alice" if (b"x-dev", b"alice") in headers else "origin",
                    connect=lambda route: _connect_test_upstream(setup, route),
                )
            )
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            body = pattern(300_000)
            streams: dict[int, H2Stream] = {}
            for i in range(6):
                stream_id = conn.get_next_available_stream_id()
                extra = [(b"x-dev", b"alice")] if i % 2 else []
                conn.send_headers(stream_id, get("/echo", x_size="200000") + extra)
                streams[stream_id] = H2Stream()
            await ours.write(conn.data_to_send())
            done = 0
            while done < len(streams):
                for stream_id, state in streams.items():
                    while state.sent < len(body) and conn.local_flow_control_window(stream_id) > 0:
                        size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                        chunk = body[state.sent : state.sent + size]
                        state.sent += len(chunk)
                        conn.send_data(stream_id, chunk, end_stream=state.sent == len(body))
                await ours.write(conn.data_to_send())
                data = await asyncio.wait_for(ours.read(65536), 5)
                assert data
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        streams[event.stream_id].headers = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id].body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        streams[event.stream_id].trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamEnded):
                        done += 1
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream {event.stream_id} reset: {event.error_code}")
                await ours.write(conn.data_to_send())
            for stream_id, state in streams.items():
                expected = b"A" if (stream_id // 2) % 2 else b"B"
                assert state.headers[b"x-upstream"] == expected
                assert state.headers[b"x-body-sha256"] == hashlib.sha256(body).hexdigest().encode()
                assert bytes(state.body) == pattern(200_000)
                assert state.trailers[b"grpc-status"] == b"0"
            conn.close_connection()
            await ours.write(conn.data_to_send())
            await ours.close()
            await asyncio.wait_for(served, 5)

    run(scenario())


async def _connect_test_upstream(setup: Setup, route: RouteKey) -> Conn:
    ours, theirs = memory_pair()
    upstream = setup.upstreams[str(route)]
    upstream.tasks.append(asyncio.ensure_future(upstream.accept(theirs)))
    return ours
