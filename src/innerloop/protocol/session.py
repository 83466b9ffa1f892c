"""Streams multiplexed over one ``ByteStream``, with flow control and keepalive.

A ``Session`` owns exactly two tasks: the reader, which decodes frames and
routes them, and the keepalive, which pings the peer and closes the session
when it stays silent too long. Both are cancelled and awaited by ``close()``;
they also end on their own when the connection fails. Nothing else runs in
the background.

Why the reader never blocks: it only appends to stream buffers and writes
small WINDOW/PONG frames without waiting for ``drain()``. Backpressure lives
in the credit each stream grants its peer (``INITIAL_WINDOW`` bytes, topped up
by WINDOW frames as the application *reads*), so a slow consumer stalls only
its own stream's writer, never the connection or the other streams, and a
buffer can never grow beyond the window it granted.

What the reader writes on its own (PONG answers, RESETs of streams nobody
accepts) is bounded too: at most ``MAX_OWED`` bytes of it between two
completed drains. A peer that floods PINGs and never reads gets no more
PONGs once that much is owed (they are dropped, not queued), and one that
keeps opening streams it knows will be refused is cut off. Dropping rather
than "stop reading until drained" is on purpose: two honest peers that both
push bulk data both ways would each wait for the other to read, and a
session carries tunnels, so that can happen.

Before the peer is authenticated (the agent's ``hello``, the CLI's
``welcome``), ``preauth_limit`` caps every byte read from the connection:
nobody gets to make us buffer megabytes before proving who they are. The
owner calls ``authenticated()`` once the handshake succeeded.

Stream ids: the client opens odd ids, the agent even ones, each side strictly
increasing (so a late frame for a forgotten stream is told apart from a
frame for one that was never opened). Stream 0 is the control channel, open
for the session's lifetime; ``ControlChannel`` carries JSON messages on it,
one per line (a message usually fits one DATA frame; a large one, such as the
file tree of a big project, simply spans several).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from innerloop.protocol.frames import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolError,
    encode,
)
from innerloop.protocol.transport import ByteStream

READ_SIZE = 256 * 1024
# Grant credit back once a quarter of the window has been consumed: few WINDOW
# frames, and a writer that keeps up never waits for credit.
WINDOW_UPDATE_THRESHOLD = INITIAL_WINDOW // 4
MAX_CONTROL_MESSAGE = 64 * 1024 * 1024
# What the reader may write on its own (PONG, RESET) before a drain completes: see above.
MAX_OWED = 64 * 1024


class SessionClosed(ConnectionError):
    """The session is over; ``reason`` says why (peer gone, GOAWAY, keepalive, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamReset(ConnectionError):
    """One stream was aborted (by either side); the session goes on."""


class Role(enum.Enum):
    CLIENT = 1  # odd stream ids
    AGENT = 2  # even stream ids


class _Wakeup:
    """Wake every waiter once; each waiter re-checks its own condition."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Stream:
    """One bidirectional, flow-controlled byte stream of a session.

    ``read()`` returns ``b""`` once the peer half-closed; ``close()``
    half-closes our direction; ``reset()`` aborts both. Used as an async
    context manager it closes on success and resets on an exception.
    """

    def __init__(self, session: Session, stream_id: int, header: bytes) -> None:
        self._session = session
        self.id = stream_id
        self.header = header
        self._buffer = bytearray()
        self._eof = False  # the peer sent CLOSE
        self._closed = False  # we sent CLOSE
        self._reset: StreamReset | None = None
        self._credit = INITIAL_WINDOW  # bytes we may still send
        self._allowance = INITIAL_WINDOW  # bytes the peer may still send
        self._unacked = 0  # bytes consumed but not yet granted back
        self._wakeup = _Wakeup()
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Stream {self.id}>"

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    # -- reading ----------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered ones if ``n < 0``); ``b""`` at end of stream."""
        while True:
            if self._reset is not None:
                raise StreamReset(str(self._reset))
            if self._buffer:
                break
            if self._eof:
                return b""
            self._session._raise_if_closed()
            await self._wakeup.wait()
        if n < 0 or n >= len(self._buffer):
            chunk = bytes(self._buffer)
            self._buffer.clear()
        else:
            chunk = bytes(self._buffer[:n])
            del self._buffer[:n]
        self._consumed(len(chunk))
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``EOFError`` if the stream ends first."""
        parts: list[bytes] = []
        missing = n
        while missing:
            chunk = await self.read(missing)
            if not chunk:
                raise EOFError(f"stream {self.id} ended {missing} bytes short of {n}")
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def _consumed(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= WINDOW_UPDATE_THRESHOLD and not self._eof and self._reset is None:
            self._allowance += self._unacked
            self._session._send(Frame.window(self.id, self._unacked))
            self._unacked = 0

    # -- writing ----------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting for the peer's credit and for the transport."""
        view = memoryview(data)
        async with self._write_lock:
            while view:
                self._check_writable()
                if self._credit == 0:
                    await self._wakeup.wait()
                    continue
                n = min(len(view), self._credit, MAX_PAYLOAD)
                self._credit -= n
                self._session._send(Frame(Kind.DATA, self.id, bytes(view[:n])))
                view = view[n:]
                await self._session._drain()

    def _check_writable(self) -> None:
        if self._reset is not None:
            raise StreamReset(str(self._reset))
        self._session._raise_if_closed()
        if self._closed:
            raise RuntimeError(f"stream {self.id}: write after close()")

    async def close(self) -> None:
        """Half-close: the peer reads end of stream; we can still read."""
        if self.id == 0:
            raise RuntimeError("the control stream stays open for the whole session")
        async with self._write_lock:
            if self._closed or self._reset is not None or self._session.closed:
                return
            self._closed = True
            self._session._send(Frame(Kind.CLOSE, self.id))
            self._session._forget_if_done(self)
            await self._session._drain()

    def reset(self, reason: str = "") -> None:
        """Abort the stream both ways; pending and future reads and writes fail."""
        if self.id == 0:
            raise RuntimeError("the control stream cannot be reset; close the session")
        if self._reset is not None or (self._closed and self._eof):
            return
        self._reset = StreamReset(f"stream {self.id} reset locally" + (f": {reason}" if reason else ""))
        self._buffer.clear()
        if not self._session.closed:
            self._session._send(Frame(Kind.RESET, self.id, reason.encode()[:MAX_PAYLOAD]))
        self._session._forget_if_done(self)
        self._wakeup.notify()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.reset(type(exc).__name__)

    # -- frames from the reader -------------------------------------------

    def _on_data(self, payload: bytes) -> None:
        if self._eof:
            raise ProtocolError(f"DATA on stream {self.id} after the peer closed it")
        if len(payload) > self._allowance:
            raise ProtocolError(
                f"stream {self.id}: peer sent {len(payload)} bytes with only {self._allowance} of window left"
            )
        self._allowance -= len(payload)
        if self._reset is None:
            self._buffer += payload
            self._wakeup.notify()

    def _on_close(self) -> None:
        self._eof = True
        self._wakeup.notify()

    def _on_reset(self, reason: str) -> None:
        if self._reset is None:
            self._reset = StreamReset(f"stream {self.id} reset by peer" + (f": {reason}" if reason else ""))
            self._buffer.clear()
        self._wakeup.notify()

    def _on_window(self, increment: int) -> None:
        self._credit += increment
        if self._credit > MAX_WINDOW:
            raise ProtocolError(f"stream {self.id}: WINDOW frames raised the credit beyond {MAX_WINDOW}")
        self._wakeup.notify()

    @property
    def _done(self) -> bool:
        return self._reset is not None or (self._closed and self._eof)


class Session:
    """A multiplexed connection to the peer; use ``async with`` or ``start()``/``close()``."""

    def __init__(
        self,
        io: ByteStream,
        *,
        role: Role,
        keepalive_interval: float | None = 10.0,
        keepalive_timeout: float = 30.0,
        max_pending_streams: int = 64,
        preauth_limit: int | None = None,
    ) -> None:
        self._io = io
        self._preauth_limit = preauth_limit  # None once authenticated (or never limited)
        self._read_total = 0
        self._owed = 0  # bytes the reader wrote since the last completed drain
        self.role = role
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._max_pending = max_pending_streams
        self._next_id = role.value
        self._last_peer_id = 0
        self.control = Stream(self, 0, b"")
        self._streams: dict[int, Stream] = {0: self.control}
        self._pending: collections.deque[Stream] = collections.deque()
        self._accept_wakeup = _Wakeup()
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._ping_counter = itertools.count(1)
        self._drain_lock = asyncio.Lock()
        self._error: SessionClosed | None = None
        self._closed_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_received = 0.0

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            raise RuntimeError("session already started")
        loop = asyncio.get_running_loop()
        self._last_received = loop.time()
        self._tasks.append(loop.create_task(self._read_loop(), name=f"session-reader-{self.role.name.lower()}"))
        if self._keepalive_interval is not None:
            self._tasks.append(loop.create_task(self._keepalive(), name="session-keepalive"))

    async def __aenter__(self) -> Session:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def authenticated(self) -> None:
        """The handshake succeeded: lift ``preauth_limit``."""
        self._preauth_limit = None

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_reason(self) -> str | None:
        return None if self._error is None else self._error.reason

    async def wait_closed(self) -> str:
        """Wait until the session ends, for whatever reason; returns the reason."""
        await self._closed_event.wait()
        assert self._error is not None
        return self._error.reason

    async def close(self, reason: str = "") -> None:
        """Tell the peer (GOAWAY), stop the owned tasks and close the transport. Idempotent."""
        if self._error is None:
            self._send(Frame(Kind.GOAWAY, 0, reason.encode()[:MAX_PAYLOAD]))
            # If the peer is not reading, so be it: the GOAWAY was a courtesy.
            with contextlib.suppress(TimeoutError, SessionClosed):
                await asyncio.wait_for(self._drain(), 1.0)
            self._fail(SessionClosed("session closed" + (f": {reason}" if reason else "")))
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        await asyncio.gather(*others, return_exceptions=True)
        await self._io.close()

    def _fail(self, error: SessionClosed) -> None:
        """Mark the session dead and wake everything that waits on it."""
        if self._error is not None:
            return
        self._error = error
        for stream in self._streams.values():
            stream._wakeup.notify()
        for stream in self._pending:
            stream._wakeup.notify()
        self._accept_wakeup.notify()
        for future in self._pings.values():
            if not future.done():
                future.set_exception(SessionClosed(error.reason))
        self._closed_event.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            raise SessionClosed(self._error.reason)

    # -- streams ----------------------------------------------------------

    async def open(self, header: bytes = b"") -> Stream:
        """Open a stream; ``header`` reaches the acceptor as ``stream.header``."""
        self._raise_if_closed()
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise SessionClosed("stream ids exhausted; reconnect")
        self._next_id += 2
        stream = Stream(self, stream_id, header)
        self._streams[stream_id] = stream
        self._send(Frame(Kind.OPEN, stream_id, header))
        await self._drain()
        return stream

    async def accept(self) -> Stream:
        """The next stream the peer opened."""
        while not self._pending:
            self._raise_if_closed()
            await self._accept_wakeup.wait()
        return self._pending.popleft()

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time to the peer, in seconds."""
        self._raise_if_closed()
        payload = next(self._ping_counter).to_bytes(8, "big")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[payload] = future
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self._send(Frame(Kind.PING, 0, payload))
            await asyncio.wait_for(future, timeout)
        finally:
            self._pings.pop(payload, None)
        return loop.time() - started

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._done:
            self._streams.pop(stream.id, None)

    # -- I/O ----------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        # One write per frame: the transport keeps whole writes in order, so
        # frames from concurrent writers never interleave.
        if self._error is None:
            self._io.write(encode(frame))

    async def _drain(self) -> None:
        self._raise_if_closed()
        async with self._drain_lock:
            try:
                await self._io.drain()
            except (ConnectionError, OSError) as exc:
                self._fail(SessionClosed(f"connection lost: {exc}"))
                raise SessionClosed(f"connection lost: {exc}") from exc
            self._owed = 0

    def _send_owed(self, frame: Frame) -> bool:
        """Send a frame the reader owes the peer, unless ``MAX_OWED`` bytes are still unflushed."""
        size = len(frame.payload) + 9
        if self._owed + size > MAX_OWED:
            return False
        self._owed += size
        self._send(frame)
        return True

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        loop = asyncio.get_running_loop()
        try:
            while self._error is None:
                limit = self._preauth_limit
                # Before authentication, never read (so never buffer) more than the limit allows.
                data = await self._io.read(READ_SIZE if limit is None else min(READ_SIZE, limit - self._read_total + 1))
                if not data:
                    self._fail(SessionClosed("connection closed by the peer"))
                    return
                self._last_received = loop.time()
                self._read_total += len(data)
                if self._preauth_limit is not None and self._read_total > self._preauth_limit:
                    raise ProtocolError(f"the peer sent more than {self._preauth_limit} bytes before authenticating")
                for frame in decoder.feed(data):
                    self._dispatch(frame)
                    if self._error is not None:
                        return
        except ProtocolError as exc:
            self._send(Frame(Kind.GOAWAY, 0, f"protocol error: {exc}".encode()[:MAX_PAYLOAD]))
            self._fail(SessionClosed(f"protocol error: {exc}"))
        except (ConnectionError, OSError) as exc:
            self._fail(SessionClosed(f"connection lost: {exc}"))
        except Exception as exc:  # a bug here must not leave the session half-alive
            self._fail(SessionClosed(f"internal error: {exc!r}"))
            raise
        finally:
            await self._io.close()

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.PING:
            self._send_owed(Frame(Kind.PONG, 0, frame.payload))  # dropped if the peer is not reading
            return
        if kind is Kind.PONG:
            future = self._pings.get(frame.payload)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind is Kind.GOAWAY:
            reason = frame.reason
            self._fail(SessionClosed("peer closed the session" + (f": {reason}" if reason else "")))
            return
        if kind is Kind.OPEN:
            self._on_open(frame)
            return
        stream = self._streams.get(frame.stream)
        if stream is None:
            self._check_known(frame)
            return  # a late frame for a stream already forgotten
        if kind is Kind.DATA:
            stream._on_data(frame.payload)
        elif kind is Kind.WINDOW:
            stream._on_window(frame.increment)
        elif kind is Kind.CLOSE:
            stream._on_close()
        elif kind is Kind.RESET:
            stream._on_reset(frame.reason)
        self._forget_if_done(stream)

    def _on_open(self, frame: Frame) -> None:
        stream_id = frame.stream
        if stream_id % 2 == self.role.value % 2:
            raise ProtocolError(f"peer opened stream {stream_id}, an id from our side's range")
        if stream_id <= self._last_peer_id:
            raise ProtocolError(f"peer opened stream {stream_id} after {self._last_peer_id}; ids must increase")
        self._last_peer_id = stream_id
        if len(self._pending) >= self._max_pending:
            if not self._send_owed(Frame(Kind.RESET, stream_id, b"too many streams waiting to be accepted")):
                raise ProtocolError("the peer keeps opening streams that are refused and does not read the refusals")
            return
        stream = Stream(self, stream_id, frame.payload)
        self._streams[stream_id] = stream
        self._pending.append(stream)
        self._accept_wakeup.notify()

    def _check_known(self, frame: Frame) -> None:
        ours = frame.stream % 2 == self.role.value % 2
        if (ours and frame.stream >= self._next_id) or (not ours and frame.stream > self._last_peer_id):
            raise ProtocolError(f"{frame.kind.name} frame for stream {frame.stream}, which was never opened")

    async def _keepalive(self) -> None:
        assert self._keepalive_interval is not None
        loop = asyncio.get_running_loop()
        while self._error is None:
            await asyncio.sleep(self._keepalive_interval)
            silent = loop.time() - self._last_received
            if silent > self._keepalive_timeout:
                self._fail(
                    SessionClosed(
                        f"the peer sent nothing for {silent:.1f}s (keepalive timeout {self._keepalive_timeout:g}s)"
                    )
                )
                await self._io.close()
                return
            self._send(Frame(Kind.PING, 0, next(self._ping_counter).to_bytes(8, "big")))
            # Flush what the reader owes (PONGs) now and then; a peer that does not read holds this
            # up, never the keepalive's timeout.
            with contextlib.suppress(TimeoutError, SessionClosed):
                await asyncio.wait_for(self._drain(), self._keepalive_interval)


class ControlChannel:
    """JSON messages over stream 0, one per line.

    ``max_message`` bounds one message; an owner lowers it for the handshake
    (a ``hello`` is a few hundred bytes) and raises it once the peer is known.
    """

    def __init__(self, stream: Stream, *, max_message: int = MAX_CONTROL_MESSAGE) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._scanned = 0
        self.max_message = max_message

    async def send(self, message: Mapping[str, Any]) -> None:
        # ensure_ascii keeps file names that are not valid UTF-8 (surrogate
        # escapes) intact through the round trip.
        data = json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
        await self._stream.write(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the peer ends the channel."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end > self.max_message:
                raise ProtocolError(f"control message longer than {self.max_message} bytes")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise ProtocolError(f"control message is not JSON: {exc}") from None
                if not isinstance(message, dict):
                    raise ProtocolError(f"control message must be a JSON object, got {type(message).__name__}")
                return message
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_message:
                raise ProtocolError(f"control message longer than {self.max_message} bytes")
            try:
                chunk = await self._stream.read()
            except SessionClosed:
                if self._buffer:
                    raise
                return None
            if not chunk:
                if self._buffer:
                    raise ProtocolError("control channel ended in the middle of a message")
                return None
            self._buffer += chunk
