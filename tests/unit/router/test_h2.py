"""HTTP/2 frames (pure) and ``serve_h2`` end to end: a test client and test upstreams, in memory."""

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

import pytest

from innerloop.router.h2 import (
    CONTINUATION,
    DATA,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ErrorCode,
    Frame,
    FrameParser,
    H2Error,
    RouteKey,
    Setting,
    frame,
    goaway_frame,
    headers_frames,
    parse_goaway,
    parse_settings,
    parse_u31,
    parse_u32,
    ping_frame,
    rst_frame,
    serve_h2,
    settings_frame,
    window_update_frame,
)
from innerloop.router.hpack import Decoder, Encoder, Header
from innerloop.router.http1 import BufferedConn, Conn

from .test_http1 import MemoryConn, memory_pair

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# -- frames ----------------------------------------------------------------------------------


def test_frame_round_trip_and_split_reads() -> None:
    wire = (
        frame(DATA, FLAG_END_STREAM, 1, b"hello")
        + settings_frame([(Setting.INITIAL_WINDOW_SIZE, 1 << 20), (Setting.MAX_FRAME_SIZE, 32768)])
        + ping_frame(b"12345678")
        + window_update_frame(3, 1000)
        + rst_frame(5, ErrorCode.CANCEL)
        + goaway_frame(7, ErrorCode.NO_ERROR, b"bye")
        + frame(0xFA, 0, 0, b"ext")  # unknown type: dropped
    )
    parser = FrameParser()
    frames: list[Frame] = []
    for i in range(len(wire)):  # one byte at a time: frames complete exactly when their last byte arrives
        frames += parser.feed(wire[i : i + 1])
    assert [(f.type, f.flags, f.stream_id) for f in frames] == [
        (DATA, FLAG_END_STREAM, 1),
        (SETTINGS, 0, 0),
        (PING, 0, 0),
        (WINDOW_UPDATE, 0, 3),
        (RST_STREAM, 0, 5),
        (GOAWAY, 0, 0),
    ]
    assert frames[0].payload == b"hello" and frames[0].flow_size == 5 and frames[0].end_stream
    assert parse_settings(frames[1].payload) == [(4, 1 << 20), (5, 32768)]
    assert parse_u31(frames[3].payload) == 1000
    assert parse_u32(frames[4].payload) == ErrorCode.CANCEL
    assert parse_goaway(frames[5].payload) == (7, 0, b"bye")


def test_padding_is_stripped_but_counted_for_flow_control() -> None:
    padded = frame(DATA, FLAG_PADDED, 1, b"\x03abc\0\0\0")
    (data,) = FrameParser().feed(padded)
    assert (data.payload, data.flow_size) == (b"abc", 7)
    block = Encoder().encode([(b":method", b"GET")])
    priority = struct.pack(">LB", 0, 16)
    headers = frame(HEADERS, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS, 3, b"\x02" + priority + block + b"\0\0")
    (parsed,) = FrameParser().feed(headers)
    assert parsed.payload == block
    assert not parsed.flags & (FLAG_PADDED | FLAG_PRIORITY)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(DATA, FLAG_PADDED, 1, b"\x05abc"), ErrorCode.PROTOCOL_ERROR),  # padding longer than the frame
        (frame(DATA, FLAG_PADDED, 1, b""), ErrorCode.FRAME_SIZE_ERROR),
        (frame(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),  # DATA on stream 0
        (frame(SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),  # SETTINGS on a stream
        (frame(SETTINGS, 0, 0, b"12345"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(SETTINGS, FLAG_ACK, 0, b"123456"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(PING, 0, 0, b"1234"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, b"12"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(PRIORITY, 0, 1, b"1234"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(GOAWAY, 0, 0, b"1234"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (frame(DATA, 0, 1, b"x" * 16385), ErrorCode.FRAME_SIZE_ERROR),  # above SETTINGS_MAX_FRAME_SIZE
    ],
)
def test_malformed_frames_are_connection_errors(wire: bytes, code: ErrorCode) -> None:
    with pytest.raises(H2Error) as caught:
        FrameParser().feed(wire)
    assert caught.value.code == code


def test_frame_size_limit_is_checked_from_the_header_alone() -> None:
    # The 9-byte header of an oversized frame is enough: no need to buffer the payload first.
    with pytest.raises(H2Error, match="FRAME_SIZE_ERROR"):
        FrameParser(max_frame_size=16384).feed(frame(DATA, 0, 1, b"x" * 20000)[:9])


def test_continuation_assembly() -> None:
    block = Encoder().encode([(b":path", b"/" + b"a" * 40000), (b"x-dev", b"alice")])
    wire = headers_frames(1, block, end_stream=True, max_frame=16384)
    assert wire[3] == HEADERS and wire[9 + 16384 + 3] == CONTINUATION  # split into HEADERS + CONTINUATIONs
    parser = FrameParser()
    assert parser.feed(wire[:-1]) == []
    assert parser.in_header_block
    (parsed,) = parser.feed(wire[-1:])
    assert (parsed.type, parsed.stream_id, parsed.end_stream) == (HEADERS, 1, True)
    assert parsed.flags & FLAG_END_HEADERS
    assert Decoder().decode(parsed.payload)[1] == (b"x-dev", b"alice")


def test_continuation_must_follow_on_the_same_stream() -> None:
    start = frame(HEADERS, 0, 1, b"\x82")
    for intruder in (frame(CONTINUATION, FLAG_END_HEADERS, 3, b"\x84"), ping_frame(b"12345678")):
        with pytest.raises(H2Error, match="inside the header block"):
            FrameParser().feed(start + intruder)


def test_header_block_size_limit() -> None:
    parser = FrameParser(max_header_block=20000)
    with pytest.raises(H2Error, match="ENHANCE_YOUR_CALM"):
        parser.feed(frame(HEADERS, 0, 1, b"\0" * 16000) + frame(CONTINUATION, 0, 1, b"\0" * 16000))


# -- a minimal HTTP/2 peer for the tests -----------------------------------------------------------


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
        self.parser = FrameParser()
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
        await self.conn.write(PREFACE + settings_frame([(Setting.INITIAL_WINDOW_SIZE, self.window)]))
        self.reader = asyncio.ensure_future(self._read())

    async def start_server(self, *, max_streams: int | None = None) -> None:
        buffered = BufferedConn(self.conn)
        assert await buffered.read_exactly(len(PREFACE)) == PREFACE
        self.conn = buffered
        settings = [(int(Setting.INITIAL_WINDOW_SIZE), self.window)]
        if max_streams is not None:
            settings.append((Setting.MAX_CONCURRENT_STREAMS, max_streams))
        await self.conn.write(settings_frame(settings))
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
        if received.type == DATA:
            self.recv_conn -= received.flow_size
            self.recv_windows[sid] = self.recv_windows.get(sid, self.window) - received.flow_size
            if self.recv_conn < 0 or self.recv_windows[sid] < 0:
                self.violations.append(f"stream {sid}: {received.flow_size} bytes beyond the window")
            if received.flow_size:
                # The connection window comes back on receipt (as in real implementations), so one
                # unread stream cannot block the others; stream windows only once the test reads.
                self.recv_conn += received.flow_size
                await self.conn.write(window_update_frame(0, received.flow_size))
            self._queue(sid).put_nowait(Event("data", data=received.payload, end=received.end_stream))
        elif received.type == HEADERS:
            new = sid not in self.events
            headers = self.decoder.decode(received.payload)
            self._queue(sid).put_nowait(Event("headers", headers=headers, end=received.end_stream))
            if new and sid % 2:
                self.new_streams.put_nowait(sid)
        elif received.type == RST_STREAM:
            self._queue(sid).put_nowait(Event("rst", code=parse_u32(received.payload)))
        elif received.type == SETTINGS and not received.flags & FLAG_ACK:
            for key, value in parse_settings(received.payload):
                if key == Setting.INITIAL_WINDOW_SIZE:
                    for stream in self.send_windows:
                        self.send_windows[stream] += value - self.peer_initial
                    self.peer_initial = value
                elif key == Setting.MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            await self.conn.write(frame(SETTINGS, FLAG_ACK, 0))
            self.changed.set()
        elif received.type == WINDOW_UPDATE:
            increment = parse_u31(received.payload)
            if sid:
                self.send_windows[sid] = self.send_windows.get(sid, self.peer_initial) + increment
            else:
                self.send_conn += increment
            self.changed.set()
        elif received.type == PING:
            if received.flags & FLAG_ACK:
                self.ping_acks.put_nowait(received.payload)
            else:
                await self.conn.write(ping_frame(received.payload, ack=True))
        elif received.type == GOAWAY:
            self.goaway = parse_goaway(received.payload)
            self.got_goaway.set()

    # -- sending

    async def send_headers(self, stream_id: int, headers: list[Header], *, end: bool = False) -> None:
        self._queue(stream_id)
        block = self.encoder.encode(headers)
        await self.conn.write(headers_frames(stream_id, block, end_stream=end, max_frame=self.peer_max_frame))

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
            await self.conn.write(frame(DATA, FLAG_END_STREAM if last else 0, stream_id, chunk))
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
                await self.conn.write(window_update_frame(stream_id, len(event.data)))
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
    *, window: int = 65535, fail: frozenset[str] = frozenset(), max_streams: int | None = None
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
            size = 3 * 1024 * 1024 + 17
            body = pattern(size + 1)
            first = await client.request(get("/echo", x_dev="alice", x_size=str(size)), body)
            second = await client.request(get("/echo", x_size=str(size)), body[:1000])
            one, two = await asyncio.gather(client.read_message(first), client.read_message(second))
            assert one.headers[b"x-body-sha256"] == hashlib.sha256(body).hexdigest().encode()
            assert one.body == pattern(size)
            assert two.headers[b"x-upstream"] == b"B"
            assert two.body == pattern(size)
            # The windows were far smaller than the bodies: only WINDOW_UPDATEs can have moved them.
            assert size > 40 * 65535

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
            await client.conn.write(rst_frame(held, ErrorCode.CANCEL))
            for _ in range(100):
                if upstream.resets:
                    break
                await asyncio.sleep(0.01)
            assert upstream.resets == [(1, ErrorCode.CANCEL)]
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
            await upstream.peers[0].conn.write(rst_frame(1, ErrorCode.INTERNAL_ERROR))
            response = await client.read_message(held)
            assert response.reset == ErrorCode.INTERNAL_ERROR

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
            ping = b"pingpong"
            await client.conn.write(ping_frame(ping))
            assert await asyncio.wait_for(client.ping_acks.get(), 5) == ping

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
            await upstream.peers[0].conn.write(goaway_frame(1, ErrorCode.NO_ERROR))
            refused = await client.read_message(held)
            assert refused.reset == ErrorCode.REFUSED_STREAM
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
            assert client.goaway == (slow, ErrorCode.NO_ERROR, b"")
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
            await setup.client.conn.write(ping_frame(b"\x01\x02\x03\x04\x05\x06\x07\x08"))
            assert await asyncio.wait_for(setup.client.ping_acks.get(), 5) == b"\x01\x02\x03\x04\x05\x06\x07\x08"
            assert setup.connects == []

    run(scenario())


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
        (frame(DATA, 0, 5, b"x"), ErrorCode.PROTOCOL_ERROR),  # DATA on a stream never opened
        (frame(HEADERS, FLAG_END_HEADERS, 2, b"\x82"), ErrorCode.PROTOCOL_ERROR),  # clients use odd ids
        (frame(HEADERS, FLAG_END_HEADERS, 1, b"\xff\xff"), ErrorCode.COMPRESSION_ERROR),
        (window_update_frame(0, 0), ErrorCode.PROTOCOL_ERROR),
        (settings_frame([(Setting.MAX_FRAME_SIZE, 100)]), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_client_protocol_errors_end_the_connection_with_goaway(wire: bytes, code: ErrorCode) -> None:
    async def scenario() -> None:
        async with relay() as setup:
            await setup.client.conn.write(wire)
            await asyncio.wait_for(setup.client.got_goaway.wait(), 5)
            assert setup.client.goaway is not None
            assert setup.client.goaway[1] == code
            await asyncio.wait_for(setup.client.eof.wait(), 5)

    run(scenario())


def test_not_a_preface_closes_at_once() -> None:
    async def scenario() -> None:
        ours, theirs = memory_pair()
        await ours.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        async def connect(route: RouteKey) -> Conn:
            raise AssertionError("no upstream for a non-HTTP/2 client")

        await serve_h2(BufferedConn(theirs), choose=lambda headers: "origin", connect=connect)
        assert await ours.read(100) == b""

    run(scenario())


# -- interoperability with the h2 package (an independent implementation), when installed ----------------


@dataclass
class H2Stream:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    sent: int = 0


def test_h2_package_client_through_the_router() -> None:
    h2_config = pytest.importorskip("h2.config")
    h2_connection = pytest.importorskip("h2.connection")
    h2_events = pytest.importorskip("h2.events")

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
            conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True, header_encoding=None))
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
                    if isinstance(event, h2_events.ResponseReceived):
                        streams[event.stream_id].headers = dict(event.headers)
                    elif isinstance(event, h2_events.DataReceived):
                        streams[event.stream_id].body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2_events.TrailersReceived):
                        streams[event.stream_id].trailers = dict(event.headers)
                    elif isinstance(event, h2_events.StreamEnded):
                        done += 1
                    elif isinstance(event, h2_events.StreamReset):
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
