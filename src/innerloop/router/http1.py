"""HTTP/1.1 message framing for the intercept router: heads, bodies, upgrades, with no sockets.

The router relays requests between a client and one of several upstreams,
choosing per request. It never rewrites a message beyond what framing needs,
so this module parses only what decides *where a message ends*: the start
line, the header list (kept in order and original case, for matching and for
re-sending), and the framing headers (``Content-Length``,
``Transfer-Encoding``, ``Connection``, ``Upgrade``, ``Expect``). Bodies are
copied through verbatim and streamed (chunked bodies chunk by chunk,
trailers included), never held whole.

A relay that frames differently from the server behind it is a request
smuggling hole, so parsing is strict where RFC 9112 allows a choice: both
``Content-Length`` and ``Transfer-Encoding``, differing ``Content-Length``
values, a request ``Transfer-Encoding`` that does not end in ``chunked``,
``Transfer-Encoding`` on HTTP/1.0, a request ``Transfer-Encoding`` other
than a single ``chunked``, obsolete line folding, bare CR or LF, NUL and
other control bytes, whitespace before a header's colon, a missing or
repeated ``Host``, an absolute-form target naming another host than
``Host``, whitespace before a chunk extension and malformed trailer fields
are all rejected (``HttpError``); a head over ``Limits.max_head_bytes`` or
with more than ``Limits.max_headers`` fields is a 431. Where h11 (the
reference the tests compare with over generated inputs) accepts a message,
we either frame it exactly as h11 does or refuse it.

Error messages quote the offending bytes with ``repr`` (or ASCII with
backslash escapes), never by decoding them: a hostile byte must produce a
400, not an exception in the error path.

All I/O goes through ``Conn``, a three-method async byte stream, so the
framing is tested with scripted in-memory connections and the server plugs
in sockets, tunnels or anything else. ``BufferedConn`` adds the look-ahead
parsing needs; it is itself a ``Conn`` (buffered bytes first), which is what
lets ``pipe`` take over after an ``Upgrade`` without losing bytes already read.

Speed matters (every request of a shared Service passes here): parsing uses
C-level ``bytes`` methods (``split``, ``translate``, ``count``) per line and
no regexes; small bodies travel in the same write as their head.

Standard library only: the in-pod router imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from innerloop.router.limits import Limits

DEFAULT_LIMITS = Limits()
MAX_CHUNK_LINE = 4096
"""Largest chunk-size line (with extensions) or trailer line accepted."""
COPY_CHUNK = 256 * 1024
"""Bytes read per step when streaming a body or piping."""

BodyKind: TypeAlias = Literal["none", "length", "chunked", "close"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The HTTP/2 connection preface (what :mod:`innerloop.router.sniff` tells HTTP/1.x from h2c by)."""

_TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HEXDIGITS = b"0123456789abcdefABCDEF"
# Bytes a field value may not contain: CTLs except HTAB, and DEL (CR and LF cannot occur: lines are split on CRLF).
_BAD_VALUE_BYTES = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
_VALUE_BYTES = bytes(b for b in range(256) if b not in _BAD_VALUE_BYTES)
# Bytes a request target may not contain: CTLs, SP, DEL.
_TARGET_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"})
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    505: "HTTP Version Not Supported",
}


def quote(data: bytes, *, limit: int = 60) -> str:
    """``data`` (its first ``limit`` bytes) for an error message: ASCII, hostile bytes escaped, never decoded."""
    return repr(data[:limit])[1:] + ("..." if len(data) > limit else "")


class HttpError(Exception):
    """A message that cannot be framed safely; ``status`` is what to answer a client with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class IncompleteMessage(HttpError):
    """The peer closed before a message ended; ``empty`` when not one byte of it had arrived."""

    def __init__(self, message: str, *, empty: bool) -> None:
        super().__init__(message, status=400)
        self.empty = empty


class Conn(Protocol):
    """An async byte stream: what every read and write of the router goes through."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, at least one; ``b""`` at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting while the peer is not keeping up."""
        ...

    async def close(self) -> None:
        """Close both directions; idempotent."""
        ...


@runtime_checkable
class HalfClosable(Protocol):
    """A ``Conn`` that can end its sending direction and keep receiving (TCP ``shutdown(SHUT_WR)``)."""

    async def close_write(self) -> None: ...


class SocketConn:
    """:class:`Conn` over an asyncio stream pair: a socket the router accepted or opened."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, n: int) -> bytes:
        try:
            return await self._reader.read(n)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close_write(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._writer.write_eof()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class BufferedConn:
    """A ``Conn`` with a read buffer: read up to a delimiter, exactly ``n`` bytes, or whatever is there.

    Reading from it (``read``) returns buffered bytes before touching the
    connection, so once the HTTP framing is done it can be handed to ``pipe``
    as is.
    """

    __slots__ = ("_buf", "_eof", "conn")

    def __init__(self, conn: Conn, initial: bytes = b"") -> None:
        self.conn = conn
        self._buf = bytearray(initial)
        self._eof = False

    @property
    def buffered(self) -> int:
        """How many bytes are read from the connection and not yet consumed."""
        return len(self._buf)

    def has(self, sep: bytes) -> bool:
        """Whether the buffer already holds ``sep`` (reading up to it would not wait)."""
        return sep in self._buf

    def peek(self, start: int = 0) -> bytes:
        """A copy of the buffered bytes from ``start`` on, left in the buffer (to classify a connection's start)."""
        return bytes(self._buf[start:]) if start else bytes(self._buf)

    def starts_with(self, prefix: bytes) -> bool:
        """Whether the buffered bytes start with ``prefix``."""
        return self._buf.startswith(prefix)

    def take_buffer(self) -> bytes:
        """Everything buffered, removed from the buffer (for switching to raw relaying)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def fill(self, n: int = COPY_CHUNK) -> bool:
        """Read once more into the buffer; False at end of stream."""
        if self._eof:
            return False
        data = await self.conn.read(n)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def read_until(self, sep: bytes, *, limit: int) -> bytes:
        """Bytes up to and including ``sep``; ``HttpError(431)`` past ``limit``, ``IncompleteMessage`` at EOF."""
        buf = self._buf
        start = 0
        while True:
            end = buf.find(sep, start)
            if end >= 0:
                end += len(sep)
                if end > limit:
                    break
                data = bytes(buf[:end])
                del buf[:end]
                return data
            if len(buf) > limit:
                break
            start = max(0, len(buf) - len(sep) + 1)
            if not await self.fill():
                raise IncompleteMessage(f"connection closed after {len(buf)} bytes of a message", empty=not buf)
        raise HttpError(f"message head larger than {limit} bytes", status=431)

    async def read_head(self, *, limit: int) -> bytes:
        """Bytes up to and including the first CRLF CRLF, refusing a bare CR or LF as soon as it arrives.

        A client that ends its lines with LF alone would otherwise wait for a
        CRLF CRLF that never comes; ``HttpError(431)`` past ``limit``,
        ``IncompleteMessage`` at EOF.
        """
        buf = self._buf
        start = 0
        checked = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                end += 4
                if end > limit:
                    break
                data = bytes(buf[:end])
                del buf[:end]
                return data
            if len(buf) > limit:
                break
            # All but the last byte can be judged (a CR there may yet be followed by its LF).
            _check_line_ends(buf, checked, len(buf) - 1)
            checked = max(checked, len(buf) - 1)
            start = max(0, len(buf) - 3)
            if not await self.fill():
                raise IncompleteMessage(f"connection closed after {len(buf)} bytes of a message", empty=not buf)
        raise HttpError(f"message head larger than {limit} bytes", status=431)

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``IncompleteMessage`` if the stream ends first."""
        buf = self._buf
        while len(buf) < n:
            if not await self.fill(max(COPY_CHUNK, n - len(buf))):
                raise IncompleteMessage(f"connection closed {n - len(buf)} bytes short of a body", empty=False)
        data = bytes(buf[:n])
        del buf[:n]
        return data

    async def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes: buffered ones if any, else one read; ``b""`` at end of stream."""
        buf = self._buf
        if buf:
            if len(buf) <= n:
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:n])
                del buf[:n]
            return data
        if self._eof:
            return b""
        data = await self.conn.read(n)
        if not data:
            self._eof = True
        return data

    async def read(self, n: int) -> bytes:
        return await self.read_some(n)

    async def write(self, data: bytes) -> None:
        await self.conn.write(data)

    async def close(self) -> None:
        await self.conn.close()

    async def close_write(self) -> None:
        """Half-close when the connection supports it, else close it entirely."""
        if isinstance(self.conn, HalfClosable):
            await self.conn.close_write()
        else:
            await self.conn.close()


def _check_line_ends(buf: bytearray, start: int, stop: int) -> None:
    """``HttpError`` if ``buf[start:stop]`` holds an LF not preceded by CR or a CR not followed by LF."""
    i = buf.find(b"\n", start, stop)
    while i >= 0:
        if i == 0 or buf[i - 1] != 0x0D:
            raise HttpError("bare LF in message head: lines end with CRLF")
        i = buf.find(b"\n", i + 1, stop)
    i = buf.find(b"\r", start, stop)
    while i >= 0:
        if buf[i + 1] != 0x0A:
            raise HttpError("bare CR in message head: lines end with CRLF")
        i = buf.find(b"\r", i + 1, stop)


# -- heads -------------------------------------------------------------------


@dataclass(slots=True)
class RequestHead:
    """A parsed request head; ``raw`` is sent upstream unchanged.

    ``body`` and ``content_length`` say how the body is framed; ``keep_alive``
    whether the client allows another request on the connection; ``upgrade``
    that it asked to switch protocols (``Upgrade`` listed in ``Connection``).
    """

    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    raw: bytes
    body: BodyKind = "none"
    content_length: int = 0
    keep_alive: bool = True
    upgrade: bool = False
    expect_continue: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head; ``body`` is only final once ``frame_response`` saw the request."""

    version: str
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    raw: bytes
    body: BodyKind = "close"
    content_length: int = 0
    keep_alive: bool = True

    def with_connection_close(self) -> bytes:
        """The head re-serialized with ``Connection: close`` replacing any ``Connection`` header."""
        lines = [self.raw.split(b"\r\n", 1)[0]]
        lines.extend(name + b": " + value for name, value in self.headers if name.lower() != b"connection")
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(slots=True)
class _Framing:
    body: BodyKind
    content_length: int
    close: bool
    keep_alive_token: bool
    upgrade: bool
    expect_continue: bool


def _check_raw(raw: bytes) -> None:
    # Every LF must be part of CRLF and every CR too: a bare one is parsed as a
    # line end by some servers and not by others.
    lf = raw.count(b"\n")
    if lf != raw.count(b"\r") or lf != raw.count(b"\r\n"):
        raise HttpError("bare CR or LF in message head")
    if b"\0" in raw:
        raise HttpError("NUL byte in message head")


def _check_field(line: bytes) -> tuple[bytes, bytes]:
    """One ``name: value`` field line (no CRLF) as (name, value without OWS), or ``HttpError``."""
    name, colon, value = line.partition(b":")
    if not colon:
        raise HttpError(f"header line without a colon: {quote(line)}")
    if not name or name.translate(None, _TCHARS):
        if name[:1] in (b" ", b"\t"):
            raise HttpError("obsolete line folding in header")
        raise HttpError(f"invalid header name {quote(name)}")
    value = value.strip(b" \t")
    if value.translate(None, _VALUE_BYTES):
        raise HttpError(f"control character in header {quote(name)}")
    return name, value


def _parse_fields(
    lines: list[bytes], *, start: int, request: bool
) -> tuple[list[tuple[bytes, bytes]], _Framing, list[bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    hosts: list[bytes] = []
    has_upgrade = False
    expect_continue = False
    status = 400 if request else 502
    for i in range(start, len(lines)):
        # _check_field inlined: this loop runs for every header of every request.
        line = lines[i]
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHARS):
            _check_field(line)  # raises the precise error
        value = value.strip(b" \t")
        if value.translate(None, _VALUE_BYTES):
            raise HttpError(f"control character in header {quote(name)}")
        headers.append((name, value))
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            if lower == b"content-length":
                lengths.extend(part.strip(b" \t") for part in value.split(b","))
            elif lower == b"transfer-encoding":
                codings.extend(part.strip(b" \t").lower() for part in value.split(b","))
            elif lower == b"connection":
                connection.extend(part.strip(b" \t").lower() for part in value.split(b","))
            elif lower == b"upgrade":
                has_upgrade = True
            elif value.lower() == b"100-continue":
                expect_continue = True
        elif lower == b"host":
            hosts.append(value)

    body: BodyKind = "close" if not request else "none"
    content_length = 0
    if codings:
        if lengths:
            raise HttpError("both Content-Length and Transfer-Encoding", status=status)
        if codings.count(b"chunked") > 1 or (b"chunked" in codings and codings[-1] != b"chunked"):
            raise HttpError("chunked is not the last, single transfer coding", status=status)
        if request and codings != [b"chunked"]:
            # The router does not decode codings and cannot know that the origin does: one plain chunked, as h11.
            if codings[-1] == b"chunked":
                raise HttpError(f"request transfer codings {quote(b', '.join(codings))}: only chunked", status=501)
            raise HttpError(f"request transfer coding {quote(codings[-1])} is not chunked", status=501)
        if codings[-1] == b"chunked":
            body = "chunked"
    elif lengths:
        first = lengths[0]
        if not first.isdigit() or len(first) > 18 or any(other != first for other in lengths):
            raise HttpError(f"invalid or conflicting Content-Length {quote(b', '.join(lengths))}", status=status)
        content_length = int(first)
        body = "length"
    return (
        headers,
        _Framing(
            body=body,
            content_length=content_length,
            close=b"close" in connection,
            keep_alive_token=b"keep-alive" in connection,
            upgrade=has_upgrade and b"upgrade" in connection,
            expect_continue=expect_continue,
        ),
        hosts,
    )


def _check_host(target: bytes, hosts: list[bytes], *, http11: bool) -> None:
    """RFC 9112 section 3.2: one ``Host`` (HTTP/1.1 requires it), and an absolute-form target agreeing with it.

    Two Hosts, or a target naming another authority than ``Host``, let the
    router and the origin disagree on which site a request is for.
    """
    if len(hosts) > 1:
        raise HttpError("more than one Host header")
    if not hosts:
        if http11:
            raise HttpError("HTTP/1.1 request without a Host header")
        return
    if target[:1] != b"/" and b"://" in target:
        authority = target.split(b"://", 1)[1]
        for end in b"/?#":
            authority = authority.split(bytes([end]), 1)[0]
        authority = authority.rsplit(b"@", 1)[-1]
        if authority.lower() != hosts[0].lower():
            raise HttpError(f"absolute-form target names {quote(authority)} but Host is {quote(hosts[0])}")


def parse_request_head(raw: bytes, *, max_headers: int = DEFAULT_LIMITS.max_headers) -> RequestHead:
    """A request head (ending in CRLF CRLF) or ``HttpError`` with the status to answer.

    More than ``max_headers`` header fields is a 431.
    """
    _check_raw(raw)
    lines = raw[:-4].split(b"\r\n")
    if len(lines) - 1 > max_headers:
        raise HttpError(f"more than {max_headers} header fields", status=431)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(f"malformed request line {quote(lines[0], limit=100)}")
    method, target, version = parts
    if not method or method.translate(None, _TCHARS):
        raise HttpError(f"invalid method {quote(method, limit=40)}")
    if not target or target.translate(None, _TARGET_BYTES):
        raise HttpError("invalid request target")
    numbers = _VERSIONS.get(version)
    if numbers is None:
        if version.startswith(b"HTTP/") and version[5:6].isdigit():
            raise HttpError(f"unsupported version {quote(version)}", status=505)
        raise HttpError(f"malformed request line {quote(lines[0], limit=100)}")
    headers, framing, hosts = _parse_fields(lines, start=1, request=True)
    _check_host(target, hosts, http11=numbers == (1, 1))
    if numbers == (1, 0):
        if framing.body == "chunked":
            raise HttpError("Transfer-Encoding in an HTTP/1.0 request")
        keep_alive = framing.keep_alive_token and not framing.close
    else:
        keep_alive = not framing.close
    return RequestHead(
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        version=version.decode("ascii"),
        headers=headers,
        raw=raw,
        body=framing.body,
        content_length=framing.content_length,
        keep_alive=keep_alive,
        upgrade=framing.upgrade and numbers == (1, 1),
        expect_continue=framing.expect_continue,
    )


def parse_response_head(raw: bytes) -> ResponseHead:
    """A response head (ending in CRLF CRLF) or ``HttpError(502)``; its body framing is provisional."""
    try:
        _check_raw(raw)
        lines = raw[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        numbers = _VERSIONS.get(version)
        if numbers is None or len(code) != 3 or not code.isdigit() or code[:1] == b"0":
            raise HttpError(f"malformed status line {quote(lines[0], limit=100)}")
        headers, framing, _ = _parse_fields(lines, start=1, request=False)
    except HttpError as error:
        raise HttpError(f"upstream sent a bad response: {error}", status=502) from None
    if numbers == (1, 0):
        keep_alive = framing.keep_alive_token and not framing.close
        if framing.body == "chunked":
            raise HttpError("upstream sent Transfer-Encoding in an HTTP/1.0 response", status=502)
    else:
        keep_alive = not framing.close
    return ResponseHead(
        version=version.decode("ascii"),
        status=int(code),
        reason=reason.decode("latin-1"),
        headers=headers,
        raw=raw,
        body=framing.body,
        content_length=framing.content_length,
        keep_alive=keep_alive,
    )


def frame_response(response: ResponseHead, *, method: str) -> BodyKind:
    """The response body's framing given the request method (RFC 9112 section 6.3); also stored on ``response``.

    A close-delimited body also ends the connection's keep-alive.
    """
    status = response.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        body: BodyKind = "none"
    elif method == "CONNECT" and status < 300:
        body = "close"  # a tunnel: the rest of the connection
    else:
        body = response.body
    response.body = body
    if body == "close":
        response.keep_alive = False
    return body


async def read_request_head(conn: BufferedConn, *, limits: Limits = DEFAULT_LIMITS) -> RequestHead:
    """The next request head; ``IncompleteMessage(empty=True)`` when the client closed between requests.

    Empty lines before a request line are skipped (RFC 9112 section 2.2).
    Over ``limits.max_head_bytes`` or ``limits.max_headers`` it is a 431.
    """
    for _ in range(4):
        raw = await conn.read_head(limit=limits.max_head_bytes)
        while raw.startswith(b"\r\n"):
            raw = raw[2:]
        if raw:
            break
    else:
        raise HttpError("empty lines instead of a request")
    return parse_request_head(raw, max_headers=limits.max_headers)


async def read_response_head(conn: BufferedConn, *, limit: int = DEFAULT_LIMITS.max_head_bytes) -> ResponseHead:
    """The next response head (interim 1xx ones included), or ``HttpError``/``IncompleteMessage``."""
    try:
        raw = await conn.read_until(b"\r\n\r\n", limit=limit)
    except IncompleteMessage:
        raise
    except HttpError as error:
        raise HttpError(f"upstream response head: {error}", status=502) from None
    return parse_response_head(raw)


def error_response(status: int, message: str) -> bytes:
    """A complete ``status`` response with a plain-text body, closing the connection."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    reason = _REASONS.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body


# -- bodies ------------------------------------------------------------------


async def copy_length(src: BufferedConn, dst: Conn, length: int, *, prefix: bytes = b"") -> None:
    """Copy a ``length``-byte body, sending ``prefix`` (a head) in the same write as the first bytes."""
    remaining = length
    if prefix:
        # Whatever of the body is already buffered rides along with the head: one write, often one packet.
        take = min(remaining, src.buffered)
        first = await src.read_exactly(take) if take else b""
        remaining -= take
        await dst.write(prefix + first)
    while remaining:
        data = await src.read_some(min(remaining, COPY_CHUNK))
        if not data:
            raise IncompleteMessage(f"connection closed {remaining} bytes short of a body", empty=False)
        remaining -= len(data)
        await dst.write(data)


async def copy_until_close(src: BufferedConn, dst: Conn, *, prefix: bytes = b"") -> None:
    """Copy a body delimited by the end of the connection."""
    if prefix:
        await dst.write(prefix + src.take_buffer())
    while data := await src.read_some(COPY_CHUNK):
        await dst.write(data)


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (with its CRLF): ``HEXDIG{1,16} [";" ext] OWS CRLF``, ext without CTLs.

    No whitespace between the size and its ``;`` (h11 refuses it, and a
    parser that reads ``5 ;x`` differently from us would frame differently).
    """
    size, semicolon, extension = line[:-2].partition(b";")
    if not semicolon:
        size = size.rstrip(b" \t")
    if (
        not size
        or len(size) > 16
        or size.translate(None, _HEXDIGITS)
        or extension.translate(None, _VALUE_BYTES)  # CR, LF, NUL, other CTLs
    ):
        raise HttpError(f"invalid chunk size line {quote(line, limit=40)}")
    return int(size, 16)


async def _read_chunk_line(src: BufferedConn) -> bytes:
    try:
        return await src.read_until(b"\r\n", limit=MAX_CHUNK_LINE)
    except IncompleteMessage:
        raise
    except HttpError:
        raise HttpError(f"chunk size or trailer line longer than {MAX_CHUNK_LINE} bytes") from None


async def copy_chunked(
    src: BufferedConn, dst: Conn, *, prefix: bytes = b"", max_trailer_bytes: int = DEFAULT_LIMITS.max_head_bytes
) -> None:
    """Copy a chunked body verbatim (sizes, extensions, data, trailers), validating its framing.

    Output is gathered and written when it is large or when the next read
    would wait, so a body of many small chunks costs few writes.
    """
    out = bytearray(prefix)
    while True:
        if out and not src.has(b"\r\n"):
            await dst.write(bytes(out))
            out.clear()
        line = await _read_chunk_line(src)
        out += line
        size = _chunk_size(line)
        if size == 0:
            break
        remaining = size + 2  # the data's CRLF is checked below
        while remaining > 2:
            if not src.buffered and out:
                await dst.write(bytes(out))
                out.clear()
            data = await src.read_some(min(remaining - 2, COPY_CHUNK))
            if not data:
                raise IncompleteMessage("connection closed inside a chunk", empty=False)
            out += data
            remaining -= len(data)
            if len(out) >= COPY_CHUNK:
                await dst.write(bytes(out))
                out.clear()
        if src.buffered < 2 and out:
            await dst.write(bytes(out))
            out.clear()
        if await src.read_exactly(2) != b"\r\n":
            raise HttpError("chunk data not followed by CRLF")
        out += b"\r\n"
    trailer_bytes = 0
    while True:
        if out and not src.has(b"\r\n"):
            await dst.write(bytes(out))
            out.clear()
        line = await _read_chunk_line(src)
        trailer_bytes += len(line)
        if trailer_bytes > max_trailer_bytes:
            raise HttpError("chunked trailers too large", status=431)
        if line != b"\r\n":
            if b"\n" in line[:-2] or b"\r" in line[:-2]:
                raise HttpError("bare CR or LF in a trailer line")
            try:
                _check_field(line[:-2])
            except HttpError as error:
                raise HttpError(f"malformed trailer line: {error}") from None
        out += line
        if line == b"\r\n":
            break
    await dst.write(bytes(out))


async def copy_body(
    src: BufferedConn,
    dst: Conn,
    *,
    body: BodyKind,
    length: int = 0,
    prefix: bytes = b"",
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Copy a body framed as ``body`` (after ``prefix``, usually its head) from ``src`` to ``dst``.

    Chunked trailers count against ``limits.max_head_bytes``.
    """
    if body == "length":
        await copy_length(src, dst, length, prefix=prefix)
    elif body == "chunked":
        await copy_chunked(src, dst, prefix=prefix, max_trailer_bytes=limits.max_head_bytes)
    elif body == "close":
        await copy_until_close(src, dst, prefix=prefix)
    elif prefix:
        await dst.write(prefix)


# -- connection-level --------------------------------------------------------


async def _pump(src: Conn, dst: Conn, both: tuple[Conn, Conn]) -> None:
    try:
        while data := await src.read(COPY_CHUNK):
            await dst.write(data)
        if isinstance(dst, HalfClosable):
            await dst.close_write()
            return
    except (OSError, EOFError):
        pass
    # No half-close possible (or a failure): end the whole pipe, or the other direction would wait forever.
    for conn in both:
        with contextlib.suppress(OSError):
            await conn.close()


async def pipe(a: Conn, b: Conn) -> None:
    """Relay bytes both ways until both directions ended, then close both.

    One side's end of stream becomes a half-close of the other when it
    supports ``close_write``; otherwise, or on an error, both close.
    """
    both = (a, b)
    try:
        await asyncio.gather(_pump(a, b, both), _pump(b, a, both))
    finally:
        for conn in both:
            with contextlib.suppress(OSError):
                await conn.close()
