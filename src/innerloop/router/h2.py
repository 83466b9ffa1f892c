"""HTTP/2 (h2c, prior knowledge) for the intercept router: each stream to the route ``choose`` picks.

gRPC inside a cluster is HTTP/2 over cleartext, and one gRPC channel
multiplexes every call of a pod over one long-lived connection. Piping that
connection whole would send all of a pod's calls to one place, so an
intercept on a header (``x-dev: alice``) could never take just the calls
that carry it. ``serve_h2`` therefore terminates the client's HTTP/2
connection (the router is its server), asks ``choose`` for a route per
request, and relays the stream over an HTTP/2 connection of its own to that
route's upstream (the router is their client): one upstream connection per
route, opened on first use and shared by all the client connection's streams
routed there, with client and upstream stream ids mapped both ways.

Both ends speak HTTP/2 through the ``h2`` library (hpack and hyperframe
underneath; pure Python, packaged by Debian, carried in the agent image):
frames, HPACK, stream states, flow-control accounting and the RFC 9113
checks are its, not ours. That matters because the router sits in front of
every developer's traffic: a header list ``h2`` refuses (uppercase names,
unknown or misplaced pseudo-headers, ``connection``, ``te: gzip``, a
``content-length`` the DATA disagrees with) is refused on the client's
connection and never relayed, so a strict upstream never answers GOAWAY to
the shared upstream connection because of one bad client. ``h2`` treats
those as connection errors (RFC 9113 5.4.1 allows it): the offending
client's connection ends with GOAWAY, nobody else's.

What this module adds, and why:

- Routing: the decoded header list of each request goes to ``choose``;
  header lists pass unchanged (never-indexed fields stay never-indexed).
- End-to-end flow control per stream: the router credits a sender's window
  only once it handed the bytes on within the receiver's window, so a slow
  reader slows its own stream's sender, and each stream buffers at most
  ``STREAM_WINDOW`` bytes per direction (a connection at most
  ``CONNECTION_WINDOW``).
- Bounded output: each connection's outbound bytes (``h2``'s output plus
  what the transport still holds) are counted; past
  ``limits.max_buffered_bytes`` the router stops reading from the peers that
  feed that connection until it drains. A client that floods PINGs and never
  reads its answers therefore costs at most that much memory, and its
  connection is closed once idle.
- Limits (``innerloop.router.limits``): the preface and first SETTINGS
  within ``head_timeout``; ``max_streams`` concurrent streams and a header
  list of at most ``max_head_bytes`` (advertised, enforced by ``h2``); more
  than ``max_headers`` fields answers ``431``; an idle connection closes after
  ``idle_timeout``. A CONTINUATION flood is cut by ``h2`` after 64 frames.
- An upstream that cannot be reached answers its streams ``:status 502``.
  An upstream's GOAWAY refuses its unprocessed streams (``REFUSED_STREAM``,
  which gRPC clients retry); ``h2`` ends a connection's state at GOAWAY, so
  streams the upstream was still answering end as if it had closed (502, or
  ``INTERNAL_ERROR`` once a response started). New streams for that route
  open a new upstream connection.
- Draining: the client gets a GOAWAY naming the last stream the router
  takes, the open ones complete, later ones are refused, then the connection
  closes. (The GOAWAY is serialized with ``hyperframe``: ``h2`` itself would
  stop all streams at once.)

Not handled: the ``Upgrade: h2c`` dance from HTTP/1.1 (gRPC uses prior
knowledge), TLS (ALPN ``h2``), and extended CONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TypeAlias

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError, ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from innerloop.router.http1 import H2_PREFACE, BufferedConn, Conn, HttpError
from innerloop.router.limits import Limits
from innerloop.router.log import log

Header: TypeAlias = tuple[bytes, bytes]
RouteKey: TypeAlias = Hashable
Choose: TypeAlias = Callable[[list[Header]], RouteKey]
Connect: TypeAlias = Callable[[RouteKey], Awaitable[Conn]]
OnExchange: TypeAlias = Callable[[RouteKey, int], None]

PREFACE = H2_PREFACE

DEFAULT_WINDOW = 65535
MAX_FRAME_SIZE = 1 << 16
"""``SETTINGS_MAX_FRAME_SIZE`` the router advertises to its upstreams: frames it accepts (fewer, larger frames cost
less here)."""
CLIENT_MAX_FRAME_SIZE = 1 << 14
"""The same towards clients: the protocol's default. A larger value takes effect only once the client acknowledges
our SETTINGS, so a frame between the two sizes would be an error or not depending on where a read split the
client's bytes: with the default, a frame over 16 KiB is a FRAME_SIZE_ERROR from the first byte on."""
STREAM_WINDOW = 1 << 20
"""Initial stream window the router grants: the most a stream buffers here per direction."""
CONNECTION_WINDOW = 1 << 24
"""Connection window the router grants: the most all of a connection's streams buffer here together."""
READ_CHUNK = 32 * 1024
"""Bytes read from a connection per step: the most one step's frames cost before other connections get a turn
(32 KiB of PINGs is ~2,000 frames), and about the most its answers add to the output."""
CLOSE_FLUSH_TIMEOUT = 5.0
"""Seconds a closing connection gets to take its last frames (GOAWAY, RST_STREAM) before it is cut."""

_CLIENT_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
    # What goes out to the client was checked when it came in from an upstream (or is the router's own 502/431).
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_UPSTREAM_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
    # Relayed request headers were validated (and normalized) on the client's connection.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code:#x}"


# -- one connection's bytes ---------------------------------------------------------------------


class _Wire:
    """One HTTP/2 connection's outbound bytes: ``h2``'s output, sent in order by one writer task.

    ``queued`` counts what was taken from ``h2`` and not yet written through
    (``Conn.write`` returns once the transport is below its high-water mark,
    so the transport's buffer is part of it). Past ``max_buffered`` the wire
    is ``full``: whoever feeds it waits in ``room()`` before reading more.
    """

    __slots__ = ("_out", "_room", "_wake", "closing", "conn", "h2", "max_buffered", "queued")

    def __init__(self, conn: Conn, h2: H2Connection, max_buffered: int) -> None:
        self.conn = conn
        self.h2 = h2
        self.max_buffered = max_buffered
        self.queued = 0
        self.closing = False
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    def flush(self) -> None:
        """Move ``h2``'s pending output to the writer."""
        data = self.h2.data_to_send()
        if data:
            self.append(data)

    def append(self, data: bytes) -> None:
        self._out.append(data)
        self.queued += len(data)
        self._wake.set()
        if self.queued > self.max_buffered:
            self._room.clear()

    async def room(self) -> None:
        await self._room.wait()

    async def write_loop(self) -> None:
        """Send queued bytes until ``close``; a failed write closes the connection (its reader then ends)."""
        try:
            while True:
                if not self._out:
                    if self.closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
                await self.conn.write(batch)
                self.queued -= len(batch)
                if self.queued <= self.max_buffered:
                    self._room.set()
        except OSError:
            self._room.set()  # nobody may wait for a connection that is gone
            with contextlib.suppress(OSError):
                await self.conn.close()

    async def close(self, writer: asyncio.Task[None] | None) -> None:
        """Send what is queued (for a bounded time), then close the connection."""
        self.flush()
        self.closing = True
        self._wake.set()
        if writer is not None:
            if not writer.done():
                await asyncio.wait((writer,), timeout=CLOSE_FLUSH_TIMEOUT)
            writer.cancel()
            await asyncio.wait((writer,))
        self._room.set()
        with contextlib.suppress(OSError):
            await self.conn.close()


class _Outgoing:
    """One stream's DATA (and trailers) waiting for the peer's windows; ``sent`` and ``ended`` report progress."""

    __slots__ = ("chunks", "end", "ended", "sent", "trailers")

    def __init__(self, sent: Callable[[int], None], ended: Callable[[], None]) -> None:
        self.chunks: deque[bytes] = deque()
        self.end = False
        self.trailers: list[Header] | None = None
        self.sent = sent
        self.ended = ended


class _Side:
    """One HTTP/2 connection (the client's or an upstream's) on ``h2``: streams' output within the peer's windows.

    Every call only changes ``h2``'s state and marks the wire ``touched``;
    the caller flushes touched wires once per batch of events, so a burst of
    frames leaves in one write.
    """

    def __init__(
        self,
        conn: Conn,
        config: H2Configuration,
        *,
        settings: dict[int, int],
        limits: Limits,
        touched: set[_Wire],
    ) -> None:
        self.h2 = H2Connection(config)
        self.h2.initiate_connection()
        self.h2.update_settings(settings)
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.wire = _Wire(conn, self.h2, limits.max_buffered_bytes)
        self.touched = touched
        self.outgoing: dict[int, _Outgoing] = {}
        self.gone: Callable[[int], None] = lambda stream_id: None
        touched.add(self.wire)

    def open_stream(self, stream_id: int, *, sent: Callable[[int], None], ended: Callable[[], None]) -> None:
        self.outgoing[stream_id] = _Outgoing(sent, ended)

    def forget(self, stream_id: int) -> None:
        queue = self.outgoing.pop(stream_id, None)
        if queue is not None and queue.chunks:
            queue.sent(sum(len(chunk) for chunk in queue.chunks))  # dropped: the sender's windows get them back
            queue.chunks.clear()

    def _failed(self, stream_id: int) -> None:
        """``h2`` refused to send on the stream (closed by the peer or by h2 itself): its owner ends it."""
        self.forget(stream_id)
        self.touched.add(self.wire)
        self.gone(stream_id)

    def reset(self, stream_id: int, code: int) -> None:
        self.forget(stream_id)
        with contextlib.suppress(ProtocolError):  # already closed, or the connection is: nothing to reset
            self.h2.reset_stream(stream_id, code)
        self.touched.add(self.wire)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` flow-controlled bytes received on the stream were passed on: the sender may send them again."""
        if size:
            with contextlib.suppress(ProtocolError):
                self.h2.acknowledge_received_data(size, stream_id)
            self.touched.add(self.wire)

    def send_headers(self, stream_id: int, headers: list[Header], *, end_stream: bool) -> None:
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        if end_stream and queue.chunks:
            queue.trailers = headers  # after the DATA still waiting for window
            queue.end = True
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except TooManyStreamsError:
            raise
        except ProtocolError:
            self._failed(stream_id)
            return
        self.touched.add(self.wire)
        if end_stream:
            self._ended(stream_id)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        if data:
            queue.chunks.append(data)
        if end_stream:
            queue.end = True
        self.flush(stream_id)

    def flush(self, stream_id: int) -> None:
        """Hand ``h2`` as much of the stream's waiting DATA as the windows allow (and its end, once all went)."""
        queue = self.outgoing.get(stream_id)
        if queue is None:
            return
        self.touched.add(self.wire)
        try:
            self._flush(stream_id, queue)
        except ProtocolError:
            self._failed(stream_id)

    def _flush(self, stream_id: int, queue: _Outgoing) -> None:
        h2 = self.h2
        chunks = queue.chunks
        while chunks:
            allowed = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if allowed <= 0:
                return
            chunk = chunks[0]
            if len(chunk) <= allowed:
                chunks.popleft()
            else:
                chunks[0] = chunk[allowed:]
                chunk = chunk[:allowed]
            last = not chunks and queue.end and queue.trailers is None
            h2.send_data(stream_id, chunk, end_stream=last)
            queue.sent(len(chunk))
            if last:
                self._ended(stream_id)
                return
        if queue.end:
            if queue.trailers is not None:
                h2.send_headers(stream_id, queue.trailers, end_stream=True)
            else:
                h2.end_stream(stream_id)
            self._ended(stream_id)

    def window_opened(self, stream_id: int) -> None:
        """A WINDOW_UPDATE (or new initial window): send what waited for it (``0``: every stream)."""
        ids: Iterable[int] = [sid for sid, q in self.outgoing.items() if q.chunks] if not stream_id else (stream_id,)
        for sid in ids:
            self.flush(sid)

    def _ended(self, stream_id: int) -> None:
        queue = self.outgoing.pop(stream_id, None)
        if queue is not None:
            queue.ended()


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
        "status",
        "stop_client_after_response",
        "upstream",
        "upstream_id",
    )

    def __init__(self, relay: _Relay, client_id: int, headers: list[Header], *, end: bool) -> None:
        self.relay = relay
        self.client_id = client_id
        self.headers = headers
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
        self.early_trailers: list[Header] | None = None

    # -- from the client

    def request_data(self, data: bytes, *, end: bool) -> None:
        if end:
            self.request_open = False
        upstream = self.upstream
        if self.request_done:
            self.relay.side.acknowledge(self.client_id, len(data))  # abandoned request: drop the bytes
        elif upstream is None:
            self.early_data.append((data, end))
        else:
            upstream.side.send_data(self.upstream_id, data, end_stream=end)

    def request_trailers(self, headers: list[Header]) -> None:
        self.request_open = False
        upstream = self.upstream
        if self.request_done:
            return
        if upstream is None:
            self.early_trailers = headers
        else:
            upstream.side.send_headers(self.upstream_id, headers, end_stream=True)

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
        side.open_stream(upstream_id, sent=self.request_forwarded, ended=self.request_finished)
        side.send_headers(upstream_id, self.headers, end_stream=end_in_head)
        for data, end in self.early_data:
            side.send_data(upstream_id, data, end_stream=end)
        self.early_data.clear()
        if self.early_trailers is not None:
            side.send_headers(upstream_id, self.early_trailers, end_stream=True)

    def request_forwarded(self, size: int) -> None:
        self.relay.side.acknowledge(self.client_id, size)

    def request_finished(self) -> None:
        self.request_done = True
        if self.response_done:
            self.finish()

    def response_headers(self, headers: list[Header], *, end: bool) -> None:
        if not self.response_started:
            status = _status(headers)
            if 100 <= status < 200 and not end:
                self.relay.side.send_headers(self.client_id, headers, end_stream=False)
                return
            self.response_started = True
            self.status = status
        if end:
            self.response_received = True
        self.relay.side.send_headers(self.client_id, headers, end_stream=end)

    def response_data(self, data: bytes, *, end: bool) -> None:
        if end:
            self.response_received = True
        self.relay.side.send_data(self.client_id, data, end_stream=end)

    def response_forwarded(self, size: int) -> None:
        if self.upstream is not None:
            self.upstream.side.acknowledge(self.upstream_id, size)

    def response_finished(self) -> None:
        self.response_done = True
        if self.request_done:
            self._stop_client()
            self.finish()

    def _stop_client(self) -> None:
        if self.stop_client_after_response and self.request_open:
            self.relay.side.reset(self.client_id, ErrorCodes.NO_ERROR)  # "stop sending, the answer is complete"
            self.request_open = False

    def upstream_reset(self, code: int) -> None:
        if code == ErrorCodes.NO_ERROR and self.response_received:
            # The upstream answered in full and wants no more of the request: tell the client the same.
            self._abandon_request()
            return
        self.relay.side.reset(self.client_id, code)
        self.request_open = False
        self.request_done = self.response_done = True
        self.finish()

    def refused(self) -> None:
        """The upstream went away without processing this stream: the client may safely retry it."""
        self.relay.side.reset(self.client_id, ErrorCodes.REFUSED_STREAM)
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
        self.relay.side.reset(self.client_id, ErrorCodes.INTERNAL_ERROR)
        self.request_open = False
        self.request_done = self.response_done = True
        self.finish()

    def fail(self, reason: str, *, status: int = 502) -> None:
        """Answer the client ``status`` (the reason in a header) and drop the rest of its request."""
        if self.upstream is not None and not self.request_done:
            self.upstream.side.reset(self.upstream_id, ErrorCodes.CANCEL)
        self.status = status
        self.response_started = self.response_received = True
        detail = reason.encode("utf-8", "replace").translate(None, bytes(range(32)) + b"\x7f")[:512]
        self._abandon_request()
        if self.client_id not in self.relay.side.outgoing:
            self.finish()
            return
        self.relay.side.send_headers(
            self.client_id, [(b":status", str(status).encode()), (b"x-innerloop-error", detail)], end_stream=True
        )

    def _abandon_request(self) -> None:
        """Take no more of the request; the client is told to stop sending once the response is complete."""
        self.stop_client_after_response = True
        for data, _ in self.early_data:
            self.relay.side.acknowledge(self.client_id, len(data))
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
        self.side = _Side(
            conn,
            _UPSTREAM_CONFIG,
            settings={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            },
            limits=relay.limits,
            touched=relay.touched,
        )
        self.side.gone = self._stream_gone
        self.streams: dict[int, _Exchange] = {}
        self.waiting: deque[_Exchange] = deque()
        self.usable = True
        self.closed = False
        self.writer: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self.writer = asyncio.ensure_future(self.side.wire.write_loop())  # ended by ``wire.close``, not cancelled
        self.relay.spawn(self.read_loop())

    def start(self, exchange: _Exchange) -> None:
        """Open the exchange's upstream stream, or queue it while the upstream's stream limit is reached."""
        h2 = self.side.h2
        if len(self.streams) >= h2.remote_settings.max_concurrent_streams:
            self.waiting.append(exchange)
            return
        try:
            stream_id = h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            self.retire()
            self.relay.dispatch(exchange)
            return
        self.streams[stream_id] = exchange
        try:
            exchange.opened(self, stream_id)
        except TooManyStreamsError:  # h2 still counts streams we are done with as open
            del self.streams[stream_id]
            exchange.upstream = None
            self.side.forget(stream_id)
            self.waiting.appendleft(exchange)

    def _stream_gone(self, stream_id: int) -> None:
        exchange = self.streams.get(stream_id)
        if exchange is not None:
            exchange.upstream_lost("the upstream stream closed")

    def stream_closed(self) -> None:
        while self.waiting and self.usable and len(self.streams) < self.side.h2.remote_settings.max_concurrent_streams:
            exchange = self.waiting.popleft()
            if not exchange.finished:
                self.start(exchange)
                if exchange.upstream is None:
                    break  # queued again
        if not self.usable and not self.streams and not self.closed:
            self.closed = True
            self.relay.spawn(self.side.wire.close(self.writer))

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
        side = self.side
        relay = self.relay
        try:
            while data := await side.wire.conn.read(READ_CHUNK):
                try:
                    events = side.h2.receive_data(data)
                except ProtocolError as error:
                    reason = f"protocol error: {error}"  # h2 queued the GOAWAY
                    break
                for event in events:
                    self.on_event(event)
                relay.touched.add(side.wire)  # h2's own answers (SETTINGS ACK, PING ACK, resets)
                relay.flush()
                if relay.side.wire.full:
                    await relay.side.wire.room()  # the client is not taking the responses: stop reading them
                if len(data) >= READ_CHUNK:
                    await asyncio.sleep(0)  # more may be buffered: a turn for the other connections first
        except OSError as error:
            reason = f"connection failed: {error}"
        except Exception as error:  # a bug here must not leave the client's streams hanging
            log(f"h2 router: upstream {self.route!r} relay failed: {error!r}")
            reason = f"router error: {error!r}"
        self.lost(reason)
        relay.flush()
        if not self.closed:
            self.closed = True
            await side.wire.close(self.writer)

    def lost(self, reason: str) -> None:
        self.retire()
        for exchange in list(self.streams.values()):
            exchange.upstream_lost(reason)

    def on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            exchange = self.streams.get(event.stream_id)
            size = event.flow_controlled_length
            data = event.data
            if exchange is None:
                self.side.acknowledge(event.stream_id, size)
                return
            if size > len(data):
                self.side.acknowledge(event.stream_id, size - len(data))  # padding: nothing to pass on
            exchange.response_data(data, end=event.stream_ended is not None)
        elif kind is ResponseReceived or kind is TrailersReceived or kind is InformationalResponseReceived:
            assert isinstance(event, (ResponseReceived, TrailersReceived, InformationalResponseReceived))
            exchange = self.streams.get(event.stream_id)
            if exchange is not None:
                ended = not isinstance(event, InformationalResponseReceived) and event.stream_ended is not None
                exchange.response_headers(list(event.headers), end=ended)
        elif kind is StreamEnded:
            assert isinstance(event, StreamEnded)
            exchange = self.streams.get(event.stream_id)
            if exchange is not None and not exchange.response_received:
                exchange.response_data(b"", end=True)
        elif kind is WindowUpdated:
            assert isinstance(event, WindowUpdated)
            self.side.window_opened(event.stream_id)
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            exchange = self.streams.get(event.stream_id)
            if exchange is not None:
                self.side.forget(event.stream_id)
                exchange.upstream_reset(event.error_code)
        elif kind is RemoteSettingsChanged:
            assert isinstance(event, RemoteSettingsChanged)
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self.side.window_opened(0)
            self.stream_closed()  # a larger stream limit may let waiting exchanges start
        elif kind is ConnectionTerminated:
            assert isinstance(event, ConnectionTerminated)
            last = event.last_stream_id if event.last_stream_id is not None else 0
            self.retire()
            for upstream_id, exchange in list(self.streams.items()):
                if upstream_id > last:
                    exchange.refused()
            code = _error_name(event.error_code) if event.error_code is not None else "GOAWAY"
            self.lost(f"went away ({code})")
            self.stream_closed()


class _Relay:
    """One client connection: its streams, the upstream connection per route, limits and draining."""

    def __init__(
        self,
        client: BufferedConn,
        *,
        choose: Choose,
        connect: Connect,
        draining: asyncio.Event | None,
        on_exchange: OnExchange | None,
        limits: Limits,
    ) -> None:
        self.client = client
        self.choose = choose
        self.connect = connect
        self.draining = draining
        self.on_exchange = on_exchange
        self.limits = limits
        self.touched: set[_Wire] = set()
        self.side = _Side(
            client,
            _CLIENT_CONFIG,
            settings={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: CLIENT_MAX_FRAME_SIZE,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_head_bytes,
            },
            limits=limits,
            touched=self.touched,
        )
        self.side.gone = self._stream_gone
        self.exchanges: dict[int, _Exchange] = {}
        self.upstreams: dict[RouteKey, _Upstream] = {}
        self.every_upstream: list[_Upstream] = []
        self.connecting: dict[RouteKey, list[_Exchange]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_stream = 0
        self.prefaced = False  # the client's preface arrived (h2 may answer from now on)
        self.greeted = False  # the client's preface and first SETTINGS arrived
        self.goaway_sent = False
        self.closed = False  # h2 ended the client's connection (it queued the GOAWAY)
        self.done = asyncio.Event()
        self.last_active = 0.0

    def _stream_gone(self, stream_id: int) -> None:
        exchange = self.exchanges.get(stream_id)
        if exchange is not None:
            exchange.client_reset(ErrorCodes.CANCEL)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def flush(self) -> None:
        """Send what the last events queued, on every connection they touched."""
        touched = self.touched
        while touched:
            touched.pop().flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        writer = asyncio.ensure_future(self.side.wire.write_loop())
        reader = asyncio.ensure_future(self._read_client())
        watchdog = asyncio.ensure_future(self._watch())
        watcher: asyncio.Task[bool] | None = None
        if self.draining is not None:
            watcher = asyncio.ensure_future(self.draining.wait())
            watcher.add_done_callback(lambda _: self._drain())
        try:
            await self.done.wait()
        finally:
            await self._shut_down(writer, (reader, watchdog, watcher))

    async def _shut_down(
        self, writer: asyncio.Task[None], others: tuple[asyncio.Task[None] | asyncio.Task[bool] | None, ...]
    ) -> None:
        for task in others:
            if task is not None:
                task.cancel()
        for exchange in list(self.exchanges.values()):
            if exchange.upstream is not None and not (exchange.request_done and exchange.response_received):
                exchange.upstream.side.reset(exchange.upstream_id, ErrorCodes.CANCEL)
            exchange.finish()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))
        for upstream in self.every_upstream:
            if not upstream.closed:
                with contextlib.suppress(ProtocolError):
                    upstream.side.h2.close_connection()
        # Every upstream again, even those already closing: their closing tasks were just cancelled.
        await asyncio.gather(*(upstream.side.wire.close(upstream.writer) for upstream in self.every_upstream))
        if self.greeted and not self.closed:
            with contextlib.suppress(ProtocolError):
                self.side.h2.close_connection(last_stream_id=self.last_stream)
        if not self.prefaced:
            self.side.h2.clear_outbound_data_buffer()  # never a SETTINGS frame to a client that sent no preface
        await self.side.wire.close(writer)
        for task in others:
            if task is not None:
                await asyncio.wait((task,))

    async def _watch(self) -> None:
        """Close a connection whose preface and SETTINGS are late (``head_timeout``), or that is idle."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        deadline = loop.time() + limits.head_timeout
        while not self.greeted:
            if loop.time() >= deadline:
                self.done.set()
                return
            await asyncio.sleep(min(deadline - loop.time(), 0.5) + 0.001)
        while True:
            idle = loop.time() - self.last_active
            if not self.exchanges and idle >= limits.idle_timeout:
                self.done.set()
                return
            await asyncio.sleep(limits.idle_timeout - idle if not self.exchanges else limits.idle_timeout)

    async def _read_client(self) -> None:
        client = self.client
        h2 = self.side.h2
        loop = asyncio.get_running_loop()
        try:
            try:
                preface = await client.read_exactly(len(PREFACE))
            except (OSError, HttpError):
                return
            if preface != PREFACE:
                return
            self.prefaced = True
            data = preface + client.take_buffer()
            while data:
                self.last_active = loop.time()
                try:
                    events = h2.receive_data(data)
                except ProtocolError:
                    self.closed = True  # h2 queued the GOAWAY with the error
                    return
                for event in events:
                    self._on_event(event)
                self.touched.add(self.side.wire)  # h2's own answers (SETTINGS ACK, PING ACK, resets)
                self.flush()
                await self._room()
                if len(data) >= READ_CHUNK:
                    # More may be buffered (a read that finds bytes does not yield): a turn for the other
                    # connections first. A shorter read emptied the buffer, so the next one waits anyway.
                    await asyncio.sleep(0)
                data = await client.read(READ_CHUNK)
        except OSError:
            pass
        except Exception as error:  # a bug here must not leave the connection open and silent
            log(f"h2 router: client connection relay failed: {error!r}")
            with contextlib.suppress(ProtocolError):
                h2.close_connection(ErrorCodes.INTERNAL_ERROR, last_stream_id=self.last_stream)
            self.closed = True
        finally:
            self.done.set()

    async def _room(self) -> None:
        """Wait while a connection this client's frames feed has more than ``max_buffered_bytes`` unsent."""
        wire = self.side.wire
        if wire.full:
            await wire.room()
        for upstream in self.every_upstream:
            if upstream.side.wire.full and not upstream.closed:
                await upstream.side.wire.room()

    def _on_event(self, event: Event) -> None:
        kind = type(event)
        side = self.side
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            exchange = self.exchanges.get(event.stream_id)
            size = event.flow_controlled_length
            data = event.data
            if exchange is None:
                side.acknowledge(event.stream_id, size)  # a stream already answered or refused
                return
            if size > len(data):
                side.acknowledge(event.stream_id, size - len(data))  # padding: nothing to pass on
            exchange.request_data(data, end=event.stream_ended is not None)
        elif kind is RequestReceived:
            assert isinstance(event, RequestReceived)
            self._on_request(event)
        elif kind is StreamEnded:
            assert isinstance(event, StreamEnded)
            exchange = self.exchanges.get(event.stream_id)
            if exchange is not None and exchange.request_open:
                exchange.request_data(b"", end=True)
        elif kind is TrailersReceived:
            assert isinstance(event, TrailersReceived)
            exchange = self.exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.request_trailers(list(event.headers))
        elif kind is WindowUpdated:
            assert isinstance(event, WindowUpdated)
            side.window_opened(event.stream_id)
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            exchange = self.exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.client_reset(event.error_code)
        elif kind is RemoteSettingsChanged:
            assert isinstance(event, RemoteSettingsChanged)
            self.greeted = True
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                side.window_opened(0)
        elif kind is ConnectionTerminated:
            self.closed = True  # h2 takes no more frames either way: the connection ends
            self.done.set()

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        headers = list(event.headers)
        end = event.stream_ended is not None
        if self.goaway_sent and stream_id > self.last_stream:
            self.side.reset(stream_id, ErrorCodes.REFUSED_STREAM)  # past our GOAWAY: the client retries elsewhere
            return
        self.last_stream = stream_id
        exchange = _Exchange(self, stream_id, headers, end=end)
        self.exchanges[stream_id] = exchange
        self.side.open_stream(stream_id, sent=exchange.response_forwarded, ended=exchange.response_finished)
        if len(headers) > self.limits.max_headers:
            exchange.fail(f"more than {self.limits.max_headers} header fields", status=431)
            return
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
            self.flush()
            return
        upstream = _Upstream(self, route, conn)
        self.upstreams[route] = upstream
        self.every_upstream.append(upstream)
        upstream.begin()
        for exchange in self.connecting.pop(route, []):
            if not exchange.finished:
                upstream.start(exchange)
        self.flush()

    def _drain(self) -> None:
        if self.goaway_sent or self.done.is_set():
            return
        if not self.greeted:
            self.done.set()
            return
        self.goaway_sent = True
        self.side.wire.flush()  # h2's frames so far go first
        self.side.wire.append(GoAwayFrame(0, last_stream_id=self.last_stream).serialize())
        if not self.exchanges:
            self.done.set()

    def exchanged(self, exchange: _Exchange) -> None:
        self.last_active = asyncio.get_running_loop().time()
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
    limits: Limits | None = None,
) -> None:
    """Serve one h2c client connection until it ends, routing each stream; closes the client and its upstreams.

    ``client`` starts with the connection preface (usually already buffered by
    the sniffing). ``choose`` gets each request's decoded header list
    (pseudo-headers first, names lowercase, checked by ``h2``) and returns a
    route; ``connect`` opens a byte stream to a route's upstream, which must
    speak h2c with prior knowledge. A ``connect`` failure answers the streams
    waiting for it ``:status 502``; other streams go on. Once ``draining``
    is set the client gets GOAWAY and the connection closes when its open
    streams are done. ``on_exchange(route, status)`` runs after each routed
    stream ends (status 0 when no response head was relayed). ``limits``
    (default: ``Limits()``) bound what the client may cost.
    """
    relay = _Relay(
        client,
        choose=choose,
        connect=connect,
        draining=draining,
        on_exchange=on_exchange,
        limits=limits or Limits(),
    )
    await relay.run()
