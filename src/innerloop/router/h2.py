"""HTTP/2 (h2c, prior knowledge) for the intercept router: each stream to the route ``choose`` picks.

gRPC inside a cluster is HTTP/2 over cleartext, and one gRPC channel
multiplexes every call of a pod over one long-lived connection. Piping that
connection whole would send all of a pod's calls to one place, so an
intercept on a header (``x-dev: alice``) could never take just the calls
that carry it. ``serve_h2`` therefore terminates the client's HTTP/2
connection (the router is its server), decodes each request's header block,
asks ``choose`` for a route, and relays the stream over an HTTP/2 connection
of its own to that route's upstream (the router is their client): one
upstream connection per route, opened on first use and shared by all the
client connection's streams routed there, with client and upstream stream
ids mapped both ways.

What the relay rewrites, and why:

- Header blocks are decoded (each connection has its own HPACK state) and
  re-encoded without the dynamic table; header lists themselves pass
  unchanged, never-indexed fields stay never-indexed.
- Flow control is end to end per stream: the router grants a stream's
  sender more window only once it has passed the bytes on within the
  receiver's window, so a slow reader slows its own stream's sender and
  nothing else, and each stream buffers at most ``STREAM_WINDOW`` bytes per
  direction. Connection windows are granted on receipt (stream windows
  already bound the buffering), so one stalled stream never blocks others.
- Connection-level frames (SETTINGS, PING, WINDOW_UPDATE, GOAWAY) are
  answered per connection, never relayed. PRIORITY is ignored, server push is
  disabled towards upstreams, padding is stripped.
- An upstream that cannot be reached answers its streams ``:status 502``; an
  upstream's GOAWAY refuses its unprocessed streams (``REFUSED_STREAM``,
  which gRPC clients retry), and new streams for that route open a new
  upstream connection. A client's protocol error ends its connection with
  GOAWAY.

Frames are parsed and built by pure functions (``FrameParser``, ``frame``
and friends) and header blocks by ``innerloop.router.hpack``; the relay only
moves their output through ``Conn``. Frame handling is synchronous: each
connection has a writer task sending whatever was queued, in order and in
batches, and DATA is queued only within the peer's windows, so a frame
handler never waits and one connection's stall cannot block another's
frames.

Not handled: the ``Upgrade: h2c`` dance from HTTP/1.1 (gRPC uses prior
knowledge), TLS (ALPN ``h2``), and extended CONNECT.

Standard library only: the in-pod router imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from innerloop.router.hpack import Decoder, Encoder, Header, HpackError
from innerloop.router.http1 import H2_PREFACE, BufferedConn, Conn, HttpError
from innerloop.router.log import log

RouteKey: TypeAlias = Hashable
Choose: TypeAlias = Callable[[list[Header]], RouteKey]
Connect: TypeAlias = Callable[[RouteKey], Awaitable[Conn]]
OnExchange: TypeAlias = Callable[[RouteKey, int], None]

PREFACE = H2_PREFACE

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1
MAX_FRAME_LIMIT = (1 << 24) - 1

MAX_FRAME_SIZE = 1 << 16
"""``SETTINGS_MAX_FRAME_SIZE`` the router advertises: frames it accepts (fewer, larger frames cost less here)."""
STREAM_WINDOW = 1 << 20
"""Initial stream window the router grants: the most a stream buffers here per direction."""
CONNECTION_WINDOW = 1 << 24
"""Connection window the router grants (credited on receipt, so it never limits a single stream)."""
MAX_STREAMS = 256
"""``SETTINGS_MAX_CONCURRENT_STREAMS`` advertised to clients; more open streams are refused."""
MAX_HEADER_BLOCK = 256 * 1024
"""Largest header block (HEADERS plus CONTINUATIONs, compressed) accepted."""
READ_CHUNK = 256 * 1024
"""Bytes read from a connection per step."""
CLOSE_FLUSH_TIMEOUT = 5.0
"""Seconds a closing connection gets to take its last frames (GOAWAY, RST_STREAM) before it is cut."""


class ErrorCode(IntEnum):
    """RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    """RFC 9113 section 6.5.2."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class H2Error(Exception):
    """A connection error: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class StreamError(Exception):
    """A stream error: that stream is reset with ``code``, the connection goes on."""

    def __init__(self, stream_id: int, code: ErrorCode, message: str) -> None:
        super().__init__(f"stream {stream_id}: {code.name}: {message}")
        self.stream_id = stream_id
        self.code = code


# -- frames (pure) ----------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    """A received frame with padding and priority fields stripped.

    For HEADERS and PUSH_PROMISE, ``payload`` is the whole header block
    (CONTINUATIONs merged, ``FLAG_END_HEADERS`` set); PUSH_PROMISE keeps its
    promised stream id in front. ``flow_size`` is what flow control counts
    for DATA: the payload as sent, padding included.
    """

    type: int
    flags: int
    stream_id: int
    payload: bytes
    flow_size: int = 0

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM) and self.type in (DATA, HEADERS)


_HEAD = struct.Struct(">BHBBL")


def frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire."""
    length = len(payload)
    return _HEAD.pack(length >> 16, length & 0xFFFF, type_, flags, stream_id & MAX_STREAM_ID) + payload


def headers_frames(stream_id: int, block: bytes, *, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS plus as many CONTINUATIONs as ``max_frame`` needs."""
    end = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, end | FLAG_END_HEADERS, stream_id, block)
    parts = [frame(HEADERS, end, stream_id, block[:max_frame])]
    for start in range(max_frame, len(block), max_frame):
        last = start + max_frame >= len(block)
        parts.append(frame(CONTINUATION, FLAG_END_HEADERS if last else 0, stream_id, block[start : start + max_frame]))
    return b"".join(parts)


def settings_frame(settings: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", key, value) for key, value in settings))


SETTINGS_ACK = frame(SETTINGS, FLAG_ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [struct.unpack_from(">HL", payload, offset) for offset in range(0, len(payload), 6)]


def ping_frame(data: bytes, *, ack: bool = False) -> bytes:
    return frame(PING, FLAG_ACK if ack else 0, 0, data)


def goaway_frame(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last_stream_id & MAX_STREAM_ID, code) + debug)


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    """``(last_stream_id, error_code, debug_data)``."""
    last, code = struct.unpack_from(">LL", payload)
    return last & MAX_STREAM_ID, code, payload[8:]


def rst_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">L", code))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def parse_u31(payload: bytes) -> int:
    """The 31-bit value of a WINDOW_UPDATE (its increment)."""
    return int.from_bytes(payload[:4], "big") & MAX_STREAM_ID


def parse_u32(payload: bytes) -> int:
    """The 32-bit value of a RST_STREAM (its error code)."""
    return int.from_bytes(payload[:4], "big")


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error {code:#x}"


_MUST_HAVE_STREAM = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})
_MUST_NOT_HAVE_STREAM = frozenset({SETTINGS, PING, GOAWAY})


def _strip_padding(type_: int, flags: int, payload: bytes) -> bytes:
    if not flags & FLAG_PADDED:
        return payload
    if not payload:
        raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"padded frame (type {type_}) without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2Error(ErrorCode.PROTOCOL_ERROR, f"padding of {pad} bytes in a {len(payload)}-byte frame")
    return payload[1 : len(payload) - pad]


class FrameParser:
    """Turns received bytes into frames, checking what RFC 9113 makes connection errors (``H2Error``).

    HEADERS (and PUSH_PROMISE) are returned once their CONTINUATIONs are
    complete; any other frame in between is an error, as is a header block
    larger than ``max_header_block``. Frames of unknown types are dropped.
    """

    __slots__ = ("_block", "_block_frame", "_buf", "max_frame_size", "max_header_block")

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME, max_header_block: int = MAX_HEADER_BLOCK) -> None:
        self.max_frame_size = max_frame_size
        self.max_header_block = max_header_block
        self._buf = bytearray()
        self._block_frame: Frame | None = None
        self._block: list[bytes] = []

    @property
    def in_header_block(self) -> bool:
        """Whether a HEADERS frame waits for its CONTINUATIONs."""
        return self._block_frame is not None

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (the rest stays buffered)."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            high, low, type_, flags, stream_id = _HEAD.unpack_from(buf, pos)
            length = (high << 16) | low
            if length > self.max_frame_size:
                raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"{length}-byte frame above the {self.max_frame_size} limit")
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            parsed = self._frame(type_, flags, stream_id & MAX_STREAM_ID, payload)
            if parsed is not None:
                frames.append(parsed)
        del buf[:pos]
        return frames

    def _frame(self, type_: int, flags: int, stream_id: int, payload: bytes) -> Frame | None:
        pending = self._block_frame
        if pending is not None:
            if type_ != CONTINUATION or stream_id != pending.stream_id:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame type {type_} inside the header block of a stream")
            return self._continue_block(flags, payload)
        if type_ in _MUST_HAVE_STREAM and not stream_id:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame type {type_} on stream 0")
        if type_ in _MUST_NOT_HAVE_STREAM and stream_id:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame type {type_} on stream {stream_id}")
        if type_ == DATA:
            return Frame(DATA, flags, stream_id, _strip_padding(type_, flags, payload), len(payload))
        if type_ in (HEADERS, PUSH_PROMISE):
            body = _strip_padding(type_, flags, payload)
            if type_ == HEADERS and flags & FLAG_PRIORITY:
                if len(body) < 5:
                    raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
                body = body[5:]
            elif type_ == PUSH_PROMISE and len(body) < 4:
                raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "PUSH_PROMISE too short")
            started = Frame(type_, flags & ~(FLAG_PADDED | FLAG_PRIORITY), stream_id, body)
            if flags & FLAG_END_HEADERS:
                return started
            self._block_frame = started
            self._block = [body]
            return None
        if type_ == CONTINUATION:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        expected = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}.get(type_)
        if expected is not None and len(payload) != expected:
            raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"frame type {type_} of {len(payload)} bytes")
        if type_ == SETTINGS and (len(payload) % 6 or (flags & FLAG_ACK and payload)):
            raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"SETTINGS of {len(payload)} bytes")
        if type_ == GOAWAY and len(payload) < 8:
            raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        if type_ > CONTINUATION:
            return None  # extension frames are ignored (RFC 9113 section 5.5)
        return Frame(type_, flags, stream_id, payload)

    def _continue_block(self, flags: int, payload: bytes) -> Frame | None:
        pending = self._block_frame
        assert pending is not None
        self._block.append(payload)
        size = sum(len(part) for part in self._block)
        if size > self.max_header_block:
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, f"header block larger than {self.max_header_block} bytes")
        if not flags & FLAG_END_HEADERS:
            return None
        pending.payload = b"".join(self._block)
        pending.flags |= FLAG_END_HEADERS
        self._block_frame = None
        self._block = []
        return pending


# -- one connection's frames and windows ----------------------------------------------------


class _Outgoing:
    """One stream's DATA (and trailers) waiting for the peer's windows; ``sent`` and ``ended`` report progress."""

    __slots__ = ("chunks", "end", "ended", "sent", "trailers", "window")

    def __init__(self, window: int, sent: Callable[[int], None], ended: Callable[[], None]) -> None:
        self.window = window
        self.chunks: deque[bytes] = deque()
        self.end = False
        self.trailers: tuple[list[Header], frozenset[int]] | None = None
        self.sent = sent
        self.ended = ended


class _Incoming:
    """What one stream may still send us, and how much we consumed without granting it back yet."""

    __slots__ = ("unacked", "window")

    def __init__(self) -> None:
        self.window = STREAM_WINDOW
        self.unacked = 0


class _Endpoint:
    """One HTTP/2 connection (the client's or an upstream's): its frames out, windows both ways, HPACK states.

    ``send`` only queues; the writer task (``write_loop``) sends the queue in
    batches. DATA enters the queue only within the peer's connection and
    stream windows; the rest waits in the stream's ``_Outgoing`` until a
    WINDOW_UPDATE (or a larger ``SETTINGS_INITIAL_WINDOW_SIZE``) lets it go.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = FrameParser(max_frame_size=MAX_FRAME_SIZE)
        self.decoder = Decoder()
        self.encoder = Encoder()
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_streams = MAX_STREAM_ID
        self.send_window = DEFAULT_WINDOW
        self.receive_window = CONNECTION_WINDOW
        self.receive_unacked = 0
        self.outgoing: dict[int, _Outgoing] = {}
        self.incoming: dict[int, _Incoming] = {}
        self.blocked: dict[int, None] = {}  # streams waiting for connection window, oldest first
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._closing = False

    # -- queueing

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._wake.set()

    def open_stream(
        self, stream_id: int, *, receiving: bool, sent: Callable[[int], None], ended: Callable[[], None]
    ) -> None:
        self.outgoing[stream_id] = _Outgoing(self.peer_initial_window, sent, ended)
        if receiving:
            self.incoming[stream_id] = _Incoming()

    def forget(self, stream_id: int) -> None:
        self.outgoing.pop(stream_id, None)
        self.incoming.pop(stream_id, None)
        self.blocked.pop(stream_id, None)

    def reset(self, stream_id: int, code: int) -> None:
        self.forget(stream_id)
        self.send(rst_frame(stream_id, code))

    def send_headers(
        self, stream_id: int, headers: list[Header], *, end_stream: bool, sensitive: frozenset[int] = frozenset()
    ) -> None:
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        if end_stream and queue.chunks:
            queue.trailers = (headers, sensitive)  # after the DATA still waiting for window
            queue.end = True
            return
        block = self.encoder.encode(headers, sensitive=sensitive)
        self.send(headers_frames(stream_id, block, end_stream=end_stream, max_frame=self.peer_max_frame))
        if end_stream:
            self._ended(stream_id)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        if data:
            queue.chunks.append(data)
        queue.end = end_stream
        self.flush(stream_id)

    def flush(self, stream_id: int) -> None:
        """Queue as much of the stream's waiting DATA as the windows allow (and its end, once all went)."""
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        chunks = queue.chunks
        ended = False
        while chunks:
            allowed = min(queue.window, self.send_window, self.peer_max_frame)
            if allowed <= 0:
                if queue.window > 0:
                    self.blocked[stream_id] = None
                self._wake.set()
                return
            chunk = chunks[0]
            if len(chunk) <= allowed:
                chunks.popleft()
            else:
                chunks[0] = chunk[allowed:]
                chunk = chunk[:allowed]
            size = len(chunk)
            queue.window -= size
            self.send_window -= size
            ended = not chunks and queue.end and queue.trailers is None
            self._out.append(frame(DATA, FLAG_END_STREAM if ended else 0, stream_id, chunk))
            queue.sent(size)
        self.blocked.pop(stream_id, None)
        if queue.end:
            if queue.trailers is not None:
                headers, sensitive = queue.trailers
                block = self.encoder.encode(headers, sensitive=sensitive)
                self._out.append(headers_frames(stream_id, block, end_stream=True, max_frame=self.peer_max_frame))
            elif not ended:
                self._out.append(frame(DATA, FLAG_END_STREAM, stream_id))
            self._ended(stream_id)
        self._wake.set()

    def _ended(self, stream_id: int) -> None:
        queue = self.outgoing.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if queue is not None:
            queue.ended()

    def consumed(self, stream_id: int, size: int) -> None:
        """``size`` bytes received on the stream were passed on: grant them back once enough add up."""
        state = self.incoming.get(stream_id)
        if state is None:
            return
        state.unacked += size
        if state.unacked >= STREAM_WINDOW // 4:
            state.window += state.unacked
            self.send(window_update_frame(stream_id, state.unacked))
            state.unacked = 0

    # -- receiving

    def receive_data(self, received: Frame) -> _Incoming | None:
        """Account for a DATA frame in the receive windows; the stream's state, or None if it takes no data."""
        size = received.flow_size
        self.receive_window -= size
        if self.receive_window < 0:
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "peer sent more than the connection window")
        self.receive_unacked += size
        if self.receive_unacked >= CONNECTION_WINDOW // 4:
            self.receive_window += self.receive_unacked
            self.send(window_update_frame(0, self.receive_unacked))
            self.receive_unacked = 0
        state = self.incoming.get(received.stream_id)
        if state is None:
            return None
        state.window -= size
        if state.window < 0:
            raise StreamError(received.stream_id, ErrorCode.FLOW_CONTROL_ERROR, "peer sent more than the stream window")
        padding = size - len(received.payload)
        if padding:
            self.consumed(received.stream_id, padding)
        if received.flags & FLAG_END_STREAM:
            del self.incoming[received.stream_id]
        return state

    def control(self, received: Frame) -> bool:
        """Handle SETTINGS, PING and WINDOW_UPDATE; False for any other frame."""
        type_ = received.type
        if type_ == WINDOW_UPDATE:
            self._window_update(received.stream_id, parse_u31(received.payload))
        elif type_ == PING:
            if not received.flags & FLAG_ACK:
                self.send(ping_frame(received.payload, ack=True))
        elif type_ == SETTINGS:
            if not received.flags & FLAG_ACK:
                self._apply_settings(parse_settings(received.payload))
                self.send(SETTINGS_ACK)
        else:
            return False
        return True

    def _window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if not increment:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 for the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            for blocked in list(self.blocked):
                if self.send_window <= 0:
                    break
                self.flush(blocked)
            return
        if not increment:
            raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return  # a stream we are done sending on: nothing to do
        queue.window += increment
        if queue.window > MAX_WINDOW:
            raise StreamError(stream_id, ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        if queue.chunks:
            self.flush(stream_id)

    def _apply_settings(self, settings: list[tuple[int, int]]) -> None:
        for key, value in settings:
            if key == Setting.HEADER_TABLE_SIZE:
                self.encoder.reset_table()
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for queue in self.outgoing.values():
                    queue.window += delta
                    if queue.window > MAX_WINDOW:
                        raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
        for stream_id in [sid for sid, queue in self.outgoing.items() if queue.chunks]:
            self.flush(stream_id)

    # -- I/O

    async def write_loop(self) -> None:
        """Send queued frames until ``close``; a failed write closes the connection (its reader then ends)."""
        try:
            while True:
                if not self._out:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
                await self.conn.write(batch)
        except OSError:
            with contextlib.suppress(OSError):
                await self.conn.close()

    async def close(self, writer: asyncio.Task[None] | None) -> None:
        """Send what is queued (for a bounded time), then close the connection."""
        self._closing = True
        self._wake.set()
        if writer is not None:
            if not writer.done():
                await asyncio.wait((writer,), timeout=CLOSE_FLUSH_TIMEOUT)
            writer.cancel()
            await asyncio.wait((writer,))
        with contextlib.suppress(OSError):
            await self.conn.close()


# -- the relay --------------------------------------------------------------------------------


def _status(headers: list[Header]) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
        if not name.startswith(b":"):
            break
    return 0


class _Exchange:
    """One client stream and the upstream stream it is relayed to.

    The request side is done once its END_STREAM went upstream (or the
    request was abandoned), the response side once its END_STREAM went to
    the client (or either end reset the stream); then the exchange ends.
    """

    __slots__ = (
        "client_id",
        "early_data",
        "early_trailers",
        "finished",
        "headers",
        "relay",
        "request_done",
        "request_open",
        "response_done",
        "response_received",
        "response_started",
        "route",
        "sensitive",
        "status",
        "stop_client_after_response",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self, relay: _Relay, client_id: int, headers: list[Header], sensitive: frozenset[int], *, end: bool
    ) -> None:
        self.relay = relay
        self.client_id = client_id
        self.headers = headers
        self.sensitive = sensitive
        self.route: RouteKey = None
        self.upstream: _Upstream | None = None
        self.upstream_id = 0
        self.status = 0
        self.request_open = not end  # the client may still send DATA or trailers
        self.request_done = False
        self.response_started = False  # a final (non-1xx) response head went to the client
        self.response_received = False  # the upstream ended its response
        self.response_done = False
        self.stop_client_after_response = False
        self.finished = False
        self.early_data: list[tuple[bytes, bool]] = []
        self.early_trailers: tuple[list[Header], frozenset[int]] | None = None

    # -- from the client

    def request_data(self, data: bytes, *, end: bool) -> None:
        if end:
            self.request_open = False
        upstream = self.upstream
        if self.request_done:
            self.relay.side.consumed(self.client_id, len(data))  # abandoned request: drop the bytes
        elif upstream is None:
            self.early_data.append((data, end))
        else:
            upstream.side.send_data(self.upstream_id, data, end_stream=end)

    def request_trailers(self, headers: list[Header], sensitive: frozenset[int]) -> None:
        self.request_open = False
        upstream = self.upstream
        if self.request_done:
            return
        if upstream is None:
            self.early_trailers = (headers, sensitive)
        else:
            upstream.side.send_headers(self.upstream_id, headers, end_stream=True, sensitive=sensitive)

    def client_reset(self, code: int) -> None:
        self.request_open = False
        self.relay.side.forget(self.client_id)
        upstream = self.upstream
        if upstream is not None and not (self.request_done and self.response_received):
            upstream.side.reset(self.upstream_id, code)
        self.request_done = self.response_done = True
        self.finish()

    # -- on the upstream connection

    def opened(self, upstream: _Upstream, upstream_id: int) -> None:
        """The upstream stream exists: send the request head and whatever of the body arrived meanwhile."""
        self.upstream = upstream
        self.upstream_id = upstream_id
        side = upstream.side
        end_in_head = not self.request_open and not self.early_data and self.early_trailers is None
        side.open_stream(upstream_id, receiving=True, sent=self.request_forwarded, ended=self.request_finished)
        side.send_headers(upstream_id, self.headers, end_stream=end_in_head, sensitive=self.sensitive)
        for data, end in self.early_data:
            side.send_data(upstream_id, data, end_stream=end)
        self.early_data.clear()
        if self.early_trailers is not None:
            side.send_headers(upstream_id, self.early_trailers[0], end_stream=True, sensitive=self.early_trailers[1])

    def request_forwarded(self, size: int) -> None:
        self.relay.side.consumed(self.client_id, size)

    def request_finished(self) -> None:
        self.request_done = True
        if self.response_done:
            self.finish()

    def response_headers(self, headers: list[Header], sensitive: frozenset[int], *, end: bool) -> None:
        if not self.response_started:
            status = _status(headers)
            if 100 <= status < 200 and not end:
                self.relay.side.send_headers(self.client_id, headers, end_stream=False, sensitive=sensitive)
                return
            self.response_started = True
            self.status = status
        if end:
            self.response_received = True
        self.relay.side.send_headers(self.client_id, headers, end_stream=end, sensitive=sensitive)

    def response_data(self, data: bytes, *, end: bool) -> None:
        if end:
            self.response_received = True
        self.relay.side.send_data(self.client_id, data, end_stream=end)

    def response_forwarded(self, size: int) -> None:
        if self.upstream is not None:
            self.upstream.side.consumed(self.upstream_id, size)

    def response_finished(self) -> None:
        self.response_done = True
        if self.request_done:
            self._stop_client()
            self.finish()

    def _stop_client(self) -> None:
        if self.stop_client_after_response and self.request_open:
            self.relay.side.reset(self.client_id, ErrorCode.NO_ERROR)  # "stop sending, the answer is complete"
            self.request_open = False

    def upstream_reset(self, code: int) -> None:
        if code == ErrorCode.NO_ERROR and self.response_received:
            # The upstream answered in full and wants no more of the request: tell the client the same.
            self._abandon_request()
            return
        self.relay.side.reset(self.client_id, code)
        self.request_open = False
        self.request_done = self.response_done = True
        self.finish()

    def refused(self) -> None:
        """The upstream went away without processing this stream: the client may safely retry it."""
        self.relay.side.reset(self.client_id, ErrorCode.REFUSED_STREAM)
        self.request_open = False
        self.request_done = self.response_done = True
        self.finish()

    def upstream_lost(self, reason: str) -> None:
        if self.response_received:
            self._abandon_request()  # the rest of the request has nowhere to go; the answer is on its way
            return
        if not self.response_started:
            self.fail(f"upstream {self.route!r}: {reason}")
            return
        self.relay.side.reset(self.client_id, ErrorCode.INTERNAL_ERROR)
        self.request_open = False
        self.request_done = self.response_done = True
        self.finish()

    def fail(self, reason: str) -> None:
        """Answer the client ``502`` (the reason in a header) and drop the rest of its request."""
        if self.upstream is not None and not self.request_done:
            self.upstream.side.reset(self.upstream_id, ErrorCode.CANCEL)
        self.status = 502
        self.response_started = self.response_received = True
        detail = reason.encode("utf-8", "replace").translate(None, bytes(range(32)) + b"\x7f")[:512]
        self._abandon_request()
        if self.client_id not in self.relay.side.outgoing:
            self.finish()
            return
        self.relay.side.send_headers(
            self.client_id, [(b":status", b"502"), (b"x-innerloop-error", detail)], end_stream=True
        )

    def _abandon_request(self) -> None:
        """Take no more of the request; the client is told to stop sending once the response is complete."""
        self.stop_client_after_response = True
        self.early_data.clear()
        self.early_trailers = None
        self.request_done = True
        if self.response_done:
            self._stop_client()
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        relay = self.relay
        relay.side.forget(self.client_id)
        relay.exchanges.pop(self.client_id, None)
        upstream = self.upstream
        if upstream is not None:
            upstream.side.forget(self.upstream_id)
            upstream.streams.pop(self.upstream_id, None)
            upstream.stream_closed()
        relay.exchanged(self)


class _Upstream:
    """The router's own HTTP/2 client connection to one route's upstream."""

    def __init__(self, relay: _Relay, route: RouteKey, conn: Conn) -> None:
        self.relay = relay
        self.route = route
        self.side = _Endpoint(conn)
        self.streams: dict[int, _Exchange] = {}
        self.waiting: deque[_Exchange] = deque()
        self.next_id = 1
        self.usable = True
        self.closed = False
        self.writer: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self.side.send(
            PREFACE
            + settings_frame(
                [
                    (Setting.ENABLE_PUSH, 0),
                    (Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                    (Setting.MAX_FRAME_SIZE, MAX_FRAME_SIZE),
                ]
            )
            + window_update_frame(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
        )
        self.writer = asyncio.ensure_future(self.side.write_loop())  # closed by ``side.close``, not cancelled
        self.relay.spawn(self.read_loop())

    def start(self, exchange: _Exchange) -> None:
        """Open the exchange's upstream stream, or queue it while the upstream's stream limit is reached."""
        if len(self.streams) >= self.side.peer_max_streams:
            self.waiting.append(exchange)
            return
        stream_id = self.next_id
        self.next_id += 2
        if self.next_id > MAX_STREAM_ID:
            self.retire()
        self.streams[stream_id] = exchange
        exchange.opened(self, stream_id)

    def stream_closed(self) -> None:
        while self.waiting and self.usable and len(self.streams) < self.side.peer_max_streams:
            exchange = self.waiting.popleft()
            if not exchange.finished:
                self.start(exchange)
        if not self.usable and not self.streams and not self.closed:
            self.closed = True
            self.relay.spawn(self.side.close(self.writer))

    def retire(self) -> None:
        """Take no new streams: the next ones for this route get a new connection."""
        self.usable = False
        if self.relay.upstreams.get(self.route) is self:
            del self.relay.upstreams[self.route]
        waiting = list(self.waiting)
        self.waiting.clear()
        for exchange in waiting:
            if not exchange.finished:
                self.relay.dispatch(exchange)

    async def read_loop(self) -> None:
        reason = "closed the connection"
        try:
            while data := await self.side.conn.read(READ_CHUNK):
                for received in self.side.parser.feed(data):
                    try:
                        self.on_frame(received)
                    except StreamError as error:
                        self.side.reset(error.stream_id, error.code)
                        exchange = self.streams.get(error.stream_id)
                        if exchange is not None:
                            exchange.upstream_reset(ErrorCode.INTERNAL_ERROR)
        except H2Error as error:
            reason = f"protocol error: {error}"
            self.side.send(goaway_frame(0, error.code, str(error).encode()[:256]))
        except HpackError as error:
            reason = f"header compression error: {error}"
            self.side.send(goaway_frame(0, ErrorCode.COMPRESSION_ERROR))
        except OSError as error:
            reason = f"connection failed: {error}"
        except Exception as error:  # a bug here must not leave the client's streams hanging
            log(f"h2 router: upstream {self.route!r} relay failed: {error!r}")
            reason = f"router error: {error!r}"
        self.lost(reason)
        if not self.closed:
            self.closed = True
            await self.side.close(self.writer)

    def lost(self, reason: str) -> None:
        self.retire()
        for exchange in list(self.streams.values()):
            exchange.upstream_lost(reason)

    def on_frame(self, received: Frame) -> None:
        type_ = received.type
        stream_id = received.stream_id
        if type_ == DATA:
            state = self.side.receive_data(received)
            exchange = self.streams.get(stream_id)
            if state is None or exchange is None:
                self._check_known(stream_id)
                return
            exchange.response_data(received.payload, end=received.end_stream)
        elif type_ == HEADERS:
            headers, sensitive = self.side.decoder.decode_block(received.payload)
            exchange = self.streams.get(stream_id)
            if exchange is None:
                self._check_known(stream_id)
                return
            if received.end_stream:
                self.side.incoming.pop(stream_id, None)
            exchange.response_headers(headers, sensitive, end=received.end_stream)
        elif type_ == RST_STREAM:
            exchange = self.streams.get(stream_id)
            if exchange is not None:
                self.side.forget(stream_id)
                exchange.upstream_reset(parse_u32(received.payload))
        elif type_ == GOAWAY:
            last, _, _ = parse_goaway(received.payload)
            self.retire()
            for upstream_id, exchange in list(self.streams.items()):
                if upstream_id > last:
                    exchange.refused()
            self.stream_closed()
        elif type_ == PUSH_PROMISE:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        elif self.side.control(received) and type_ == SETTINGS:
            self.stream_closed()  # a larger stream limit may let waiting exchanges start

    def _check_known(self, stream_id: int) -> None:
        if stream_id % 2 == 0 or stream_id >= self.next_id:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame on stream {stream_id}, which was never opened")


class _Relay:
    """One client connection: its streams, the upstream connection per route, and draining."""

    def __init__(
        self,
        client: BufferedConn,
        *,
        choose: Choose,
        connect: Connect,
        draining: asyncio.Event | None,
        on_exchange: OnExchange | None,
    ) -> None:
        self.client = client
        self.choose = choose
        self.connect = connect
        self.draining = draining
        self.on_exchange = on_exchange
        self.side = _Endpoint(client)
        self.exchanges: dict[int, _Exchange] = {}
        self.upstreams: dict[RouteKey, _Upstream] = {}
        self.every_upstream: list[_Upstream] = []
        self.connecting: dict[RouteKey, list[_Exchange]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_stream = 0
        self.goaway_sent = False
        self.done = asyncio.Event()

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self) -> None:
        writer: asyncio.Task[None] | None = None
        reader: asyncio.Task[None] | None = None
        watcher: asyncio.Task[bool] | None = None
        try:
            try:
                preface = await self.client.read_exactly(len(PREFACE))
            except (OSError, HttpError):
                return
            if preface != PREFACE:
                return
            self.side.send(
                settings_frame(
                    [
                        (Setting.MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                        (Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                        (Setting.MAX_FRAME_SIZE, MAX_FRAME_SIZE),
                    ]
                )
                + window_update_frame(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
            )
            writer = asyncio.ensure_future(self.side.write_loop())
            reader = asyncio.ensure_future(self._read_client())
            if self.draining is not None:
                watcher = asyncio.ensure_future(self.draining.wait())
                watcher.add_done_callback(lambda _: self._drain())
            await self.done.wait()
        finally:
            await self._shut_down(writer, reader, watcher)

    async def _shut_down(
        self, writer: asyncio.Task[None] | None, reader: asyncio.Task[None] | None, watcher: asyncio.Task[bool] | None
    ) -> None:
        for task in (reader, watcher):
            if task is not None:
                task.cancel()
        for exchange in list(self.exchanges.values()):
            if exchange.upstream is not None and not (exchange.request_done and exchange.response_received):
                exchange.upstream.side.reset(exchange.upstream_id, ErrorCode.CANCEL)
            exchange.finish()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))
        for upstream in self.every_upstream:
            if not upstream.closed:
                upstream.side.send(goaway_frame(0, ErrorCode.NO_ERROR))
        # Every upstream again, even those already closing: their closing tasks were just cancelled.
        await asyncio.gather(*(upstream.side.close(upstream.writer) for upstream in self.every_upstream))
        await self.side.close(writer)
        for task in (reader, watcher):
            if task is not None:
                await asyncio.wait((task,))

    async def _read_client(self) -> None:
        try:
            while data := await self.client.read(READ_CHUNK):
                for received in self.side.parser.feed(data):
                    try:
                        self._on_frame(received)
                    except StreamError as error:
                        exchange = self.exchanges.get(error.stream_id)
                        self.side.reset(error.stream_id, error.code)
                        if exchange is not None:
                            exchange.client_reset(ErrorCode.CANCEL)
        except H2Error as error:
            self.side.send(goaway_frame(self.last_stream, error.code, str(error).encode()[:256]))
        except HpackError as error:
            self.side.send(goaway_frame(self.last_stream, ErrorCode.COMPRESSION_ERROR, str(error).encode()[:256]))
        except OSError:
            pass
        except Exception as error:  # a bug here must not leave the connection open and silent
            log(f"h2 router: client connection relay failed: {error!r}")
            self.side.send(goaway_frame(self.last_stream, ErrorCode.INTERNAL_ERROR))
        finally:
            self.done.set()

    def _on_frame(self, received: Frame) -> None:
        type_ = received.type
        stream_id = received.stream_id
        if type_ == DATA:
            state = self.side.receive_data(received)
            exchange = self.exchanges.get(stream_id)
            if exchange is None or state is None:
                if self.goaway_sent and stream_id > self.last_stream:
                    return  # a stream ignored after our GOAWAY
                if stream_id > self.last_stream or stream_id % 2 == 0:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
                if exchange is not None:  # the client already ended its request
                    raise StreamError(stream_id, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
                return  # a stream that was reset: its flow control is settled, the bytes are dropped
            exchange.request_data(received.payload, end=received.end_stream)
        elif type_ == HEADERS:
            self._on_headers(received)
        elif type_ == RST_STREAM:
            if stream_id > self.last_stream and not self.goaway_sent:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            exchange = self.exchanges.get(stream_id)
            if exchange is not None:
                exchange.client_reset(parse_u32(received.payload))
        elif type_ == GOAWAY:
            _, code, _ = parse_goaway(received.payload)
            if code != ErrorCode.NO_ERROR:
                self.done.set()
        elif type_ == PUSH_PROMISE:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "a client cannot push")
        else:
            self.side.control(received)

    def _on_headers(self, received: Frame) -> None:
        stream_id = received.stream_id
        headers, sensitive = self.side.decoder.decode_block(received.payload)  # always: keeps the HPACK state
        end = received.end_stream
        exchange = self.exchanges.get(stream_id)
        if exchange is not None:
            if not exchange.request_open:
                raise StreamError(stream_id, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not end:
                raise StreamError(stream_id, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            self.side.incoming.pop(stream_id, None)
            exchange.request_trailers(headers, sensitive)
            return
        if stream_id % 2 == 0:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"client opened even stream {stream_id}")
        if stream_id <= self.last_stream:
            return  # a stream already closed (reset, most likely): frames in flight are ignored
        if self.goaway_sent:
            return  # past the GOAWAY's last stream id: ignored, the client retries elsewhere
        self.last_stream = stream_id
        if len(self.exchanges) >= MAX_STREAMS:
            self.side.send(rst_frame(stream_id, ErrorCode.REFUSED_STREAM))
            return
        exchange = _Exchange(self, stream_id, headers, sensitive, end=end)
        self.exchanges[stream_id] = exchange
        self.side.open_stream(
            stream_id, receiving=not end, sent=exchange.response_forwarded, ended=exchange.response_finished
        )
        try:
            exchange.route = self.choose(headers)
        except Exception as error:
            exchange.fail(f"cannot route the request: {error!r}")
            return
        self.dispatch(exchange)

    def dispatch(self, exchange: _Exchange) -> None:
        """Start the exchange on its route's upstream connection, connecting first if there is none."""
        route = exchange.route
        upstream = self.upstreams.get(route)
        if upstream is not None:
            upstream.start(exchange)
            return
        waiting = self.connecting.get(route)
        if waiting is not None:
            waiting.append(exchange)
            return
        self.connecting[route] = [exchange]
        self.spawn(self._connect(route))

    async def _connect(self, route: RouteKey) -> None:
        try:
            conn = await self.connect(route)
        except Exception as error:
            for exchange in self.connecting.pop(route, []):
                if not exchange.finished:
                    exchange.fail(f"cannot connect to {route!r}: {error!r}")
            return
        upstream = _Upstream(self, route, conn)
        self.upstreams[route] = upstream
        self.every_upstream.append(upstream)
        upstream.begin()
        for exchange in self.connecting.pop(route, []):
            if not exchange.finished:
                upstream.start(exchange)

    def _drain(self) -> None:
        if self.goaway_sent or self.done.is_set():
            return
        self.goaway_sent = True
        self.side.send(goaway_frame(self.last_stream, ErrorCode.NO_ERROR))
        if not self.exchanges:
            self.done.set()

    def exchanged(self, exchange: _Exchange) -> None:
        if self.on_exchange is not None and exchange.route is not None:
            self.on_exchange(exchange.route, exchange.status)
        if self.goaway_sent and not self.exchanges:
            self.done.set()


async def serve_h2(
    client: BufferedConn,
    *,
    choose: Choose,
    connect: Connect,
    draining: asyncio.Event | None = None,
    on_exchange: OnExchange | None = None,
) -> None:
    """Serve one h2c client connection until it ends, routing each stream; closes the client and its upstreams.

    ``client`` starts with the connection preface (usually already buffered by
    the sniffing). ``choose`` gets each request's decoded header list
    (pseudo-headers first, names lowercase) and returns a route;
    ``connect`` opens a byte stream to a route's upstream, which must speak
    h2c with prior knowledge. A ``connect`` failure answers the streams
    waiting for it ``:status 502``; other streams go on. Once ``draining``
    is set the client gets GOAWAY and the connection closes when its open
    streams are done. ``on_exchange(route, status)`` runs after each routed
    stream ends (status 0 when no response head was relayed).
    """
    relay = _Relay(client, choose=choose, connect=connect, draining=draining, on_exchange=on_exchange)
    await relay.run()
