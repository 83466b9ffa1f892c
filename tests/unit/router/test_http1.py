"""HTTP/1.1 framing over scripted in-memory connections: heads, bodies, smuggling defences, pipes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import pytest

from innerloop.router.http1 import (
    BufferedConn,
    HttpError,
    IncompleteMessage,
    copy_body,
    copy_chunked,
    copy_length,
    error_response,
    frame_response,
    parse_request_head,
    parse_response_head,
    pipe,
    read_request_head,
    read_response_head,
)
from innerloop.router.limits import Limits

MAX_HEAD = Limits().max_head_bytes

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# -- in-memory connections (also used by test_routing) -----------------------


class ScriptedConn:
    """Reads return the scripted chunks in order, then EOF; writes are recorded."""

    def __init__(self, chunks: Iterable[bytes] = ()) -> None:
        self.chunks = list(chunks)
        self.written = bytearray()
        self.closed = False
        self.reads = 0

    async def read(self, n: int) -> bytes:
        self.reads += 1
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > n:
            self.chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError("closed")
        self.written += data

    async def close(self) -> None:
        self.closed = True


class _Direction:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.broken = False
        self.changed = asyncio.Event()

    def wake(self) -> None:
        self.changed.set()


class MemoryConn:
    """One end of an in-memory full-duplex connection with half-close; ``close`` wakes the peer's reads."""

    def __init__(self, inbound: _Direction, outbound: _Direction, *, half_close: bool = True) -> None:
        self._in = inbound
        self._out = outbound
        self.half_close = half_close
        self.closed = False

    async def read(self, n: int) -> bytes:
        while not self._in.data:
            if self._in.eof or self.closed:
                return b""
            self._in.changed.clear()
            await self._in.changed.wait()
        data = bytes(self._in.data[:n])
        del self._in.data[:n]
        return data

    async def write(self, data: bytes) -> None:
        if self.closed or self._out.eof or self._out.broken:
            raise BrokenPipeError("connection closed")
        self._out.data += data
        self._out.wake()
        await asyncio.sleep(0)

    async def close_write(self) -> None:
        self._out.eof = True
        self._out.wake()

    async def close(self) -> None:
        self.closed = True
        self._out.eof = True
        self._in.broken = True
        self._out.wake()
        self._in.wake()


class FullCloseConn:
    """A ``MemoryConn`` that cannot half-close (no ``close_write``)."""

    def __init__(self, conn: MemoryConn) -> None:
        self.conn = conn

    async def read(self, n: int) -> bytes:
        return await self.conn.read(n)

    async def write(self, data: bytes) -> None:
        await self.conn.write(data)

    async def close(self) -> None:
        await self.conn.close()


def memory_pair() -> tuple[MemoryConn, MemoryConn]:
    a_to_b, b_to_a = _Direction(), _Direction()
    return MemoryConn(b_to_a, a_to_b), MemoryConn(a_to_b, b_to_a)


async def read_all(conn: MemoryConn) -> bytes:
    out = bytearray()
    while data := await conn.read(65536):
        out += data
    return bytes(out)


# -- request heads -------------------------------------------------------------


def test_request_head_keeps_header_order_and_case() -> None:
    raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Dev:  alice \r\nx-dev: bob\r\n\r\n"
    head = parse_request_head(raw)
    assert (head.method, head.target, head.version) == ("GET", "/a?b=c", "HTTP/1.1")
    assert head.headers == [(b"Host", b"x"), (b"X-Dev", b"alice"), (b"x-dev", b"bob")]
    assert head.raw == raw
    assert head.body == "none"
    assert head.keep_alive
    assert head.header(b"x-dev") == b"alice"


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False),
    ],
)
def test_request_keep_alive(raw: bytes, keep_alive: bool) -> None:
    assert parse_request_head(raw).keep_alive is keep_alive


def test_request_body_framing() -> None:
    assert parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n").body == "length"
    assert parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n").content_length == 12
    assert parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7, 7\r\n\r\n").content_length == 7
    assert parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").body == "chunked"
    expect = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
    assert expect.expect_continue
    upgrade = parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert upgrade.upgrade
    # Upgrade without the Connection token is not a request to switch.
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").upgrade


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "conflicting"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", 400, "conflicting"),
        (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", 400, "Content-Length"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not chunked"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, "last"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "single"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400, "colon"),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded: x\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400, "bare"),
        (b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n", 400, "bare"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "header name"),
        (b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n", 400, "NUL"),
        (b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", 400, "control"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "colon"),
        (b"GET  / HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "version"),
        (b"GET / FOO\r\n\r\n", 400, "request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", 400, "method"),
        # A request coding the router cannot vouch the origin decodes: only a single plain chunked passes.
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "only chunked"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, "last"),
        # Host: exactly one on HTTP/1.1, and an absolute-form target must name the same authority.
        (b"GET / HTTP/1.1\r\n\r\n", 400, "without a Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400, "more than one Host"),
        (b"GET http://other/x HTTP/1.1\r\nHost: svc\r\n\r\n", 400, "absolute-form"),
        (b"GET http://u@other:80?q HTTP/1.1\r\nHost: svc\r\n\r\n", 400, "absolute-form"),
        # Hostile bytes in what the error message quotes (issue 9 item 14): a 400, not a UnicodeDecodeError.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xff\r\n\r\n", 400, r"\\xff"),
        (b"GET / HTTP/1.\xff\r\nHost: x\r\n\r\n", 505, r"\\xff"),
        (b"GET / HTTP/\xff\r\nHost: x\r\n\r\n", 400, r"\\xff"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \xe9\r\n\r\n", 501, r"\\xe9"),
        (b"G\xffT / HTTP/1.1\r\nHost: x\r\n\r\n", 400, r"\\xff"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-\xff: 1\r\n\r\n", 400, r"\\xff"),
    ],
)
def test_request_smuggling_and_malformed_heads_are_rejected(raw: bytes, status: int, fragment: str) -> None:
    with pytest.raises(HttpError, match=fragment) as caught:
        parse_request_head(raw)
    assert caught.value.status == status


def test_absolute_form_naming_the_host_and_hosts_on_http10_are_accepted() -> None:
    assert parse_request_head(b"GET http://Svc/x HTTP/1.1\r\nHost: svc\r\n\r\n").target == "http://Svc/x"
    assert parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive is False  # HTTP/1.0 needs no Host
    assert parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n").target == "*"


def test_more_header_fields_than_the_limit_is_431() -> None:
    """The attack: 5,000 tiny header fields, each costing a tuple and a scan; the limit is max_headers."""
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(5000))
    with pytest.raises(HttpError, match="more than 100 header fields") as caught:
        parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert caught.value.status == 431
    exactly = b"".join(b"X-%d: 1\r\n" % i for i in range(9))
    assert len(parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n" + exactly + b"\r\n", max_headers=10).headers) == 10
    conn = BufferedConn(ScriptedConn([b"GET / HTTP/1.1\r\nHost: x\r\n" + exactly + b"X: 1\r\n\r\n"]))
    with pytest.raises(HttpError) as limited:
        run(read_request_head(conn, limits=Limits(max_headers=10)))
    assert limited.value.status == 431


def test_bare_lf_head_is_refused_as_soon_as_it_arrives() -> None:
    """The attack: a head with LF-only line ends never has CRLF CRLF: the router once waited for it forever."""

    class Stalling(ScriptedConn):
        async def read(self, n: int) -> bytes:
            if not self.chunks:
                await asyncio.Event().wait()  # the client waits for an answer and sends nothing more
            return await super().read(n)

    for raw in (b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n"):
        with pytest.raises(HttpError, match="bare"):
            run(read_request_head(BufferedConn(Stalling([raw]))), timeout=2)
    # A CR as the last byte read so far is not judged yet: its LF may follow.
    conn = BufferedConn(ScriptedConn([b"GET / HTTP/1.1\r", b"\nHost: x\r", b"\n\r\n"]))
    assert run(read_request_head(conn)).target == "/"


def test_huge_request_head_is_431() -> None:
    conn = BufferedConn(ScriptedConn([b"GET / HTTP/1.1\r\n", b"X-A: " + b"a" * MAX_HEAD + b"\r\n\r\n"]))
    with pytest.raises(HttpError) as caught:
        run(read_request_head(conn))
    assert caught.value.status == 431


def test_request_head_split_in_one_byte_reads_and_leading_empty_line() -> None:
    raw = b"\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\nrest"
    conn = BufferedConn(ScriptedConn([raw[i : i + 1] for i in range(len(raw))]))
    head = run(read_request_head(conn))
    assert head.target == "/x"
    assert head.raw == b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    assert run(conn.read_exactly(4)) == b"rest"


def test_eof_between_requests_is_an_empty_incomplete_message() -> None:
    with pytest.raises(IncompleteMessage) as caught:
        run(read_request_head(BufferedConn(ScriptedConn([]))))
    assert caught.value.empty
    with pytest.raises(IncompleteMessage) as partial:
        run(read_request_head(BufferedConn(ScriptedConn([b"GET / HT"]))))
    assert not partial.value.empty


# -- responses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "raw", "body"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "length"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "none"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "none"),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "none"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "none"),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\n", "none"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "close"),
        ("GET", b"HTTP/1.1 200 OK\r\n\r\n", "close"),
        ("GET", b"HTTP/1.0 200 OK\r\n\r\n", "close"),
    ],
)
def test_response_body_framing(method: str, raw: bytes, body: str) -> None:
    response = parse_response_head(raw)
    assert frame_response(response, method=method) == body
    if body == "close":
        assert not response.keep_alive


def test_response_keep_alive_and_status_line() -> None:
    response = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert (response.version, response.status, response.reason) == ("HTTP/1.1", 404, "Not Found")
    assert not response.keep_alive
    assert parse_response_head(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n").keep_alive
    assert not parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
    ],
)
def test_bad_responses_are_502(raw: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_response_head(raw)
    assert caught.value.status == 502


def test_connection_close_replaces_the_connection_header_and_keeps_the_rest() -> None:
    response = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: b\r\nconnection: x\r\n\r\n"
    )
    rewritten = response.with_connection_close()
    assert rewritten == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nConnection: close\r\n\r\n"
    again = parse_response_head(rewritten)
    assert not again.keep_alive
    assert again.content_length == 2


def test_interim_responses_are_read_one_head_at_a_time() -> None:
    conn = BufferedConn(
        ScriptedConn([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n"])
    )

    async def heads() -> list[int]:
        return [(await read_response_head(conn)).status for _ in range(2)]

    assert run(heads()) == [100, 103]


def test_error_response_is_a_complete_closing_message() -> None:
    raw = error_response(502, "cannot connect: refused")
    head, _, body = raw.partition(b"\r\n\r\n")
    response = parse_response_head(head + b"\r\n\r\n")
    assert response.status == 502
    assert not response.keep_alive
    assert response.content_length == len(body)
    assert body == b"cannot connect: refused\n"


# -- bodies --------------------------------------------------------------------


def test_copy_length_sends_head_and_buffered_body_in_one_write_and_stops_at_the_end() -> None:
    src = BufferedConn(ScriptedConn([b"hello", b" world", b"NEXT"]), b"he")
    dst = ScriptedConn()
    writes: list[bytes] = []
    original = dst.write

    async def record(data: bytes) -> None:
        writes.append(data)
        await original(data)

    dst.write = record  # type: ignore[method-assign]

    async def scenario() -> bytes:
        await copy_length(src, dst, 13, prefix=b"HEAD")
        return await src.read_some(100)

    assert run(scenario()) == b"NEXT"
    assert bytes(dst.written) == b"HEADhehello world"
    assert writes[0] == b"HEADhe"


def test_copy_length_short_body_is_incomplete() -> None:
    with pytest.raises(IncompleteMessage):
        run(copy_length(BufferedConn(ScriptedConn([b"abc"])), ScriptedConn(), 10))


CHUNKED = (
    b'5;ext=1\r\nhello\r\n6;name="quoted"\r\n world\r\nA\r\n0123456789\r\n0\r\nTrailer-One: a\r\nTrailer-Two: b\r\n\r\n'
)


@pytest.mark.parametrize("step", [1, 3, 7, len(CHUNKED)])
def test_chunked_body_is_copied_verbatim_with_trailers(step: int) -> None:
    data = CHUNKED + b"GET /next"
    src = BufferedConn(ScriptedConn([data[i : i + step] for i in range(0, len(data), step)]))
    dst = ScriptedConn()

    async def scenario() -> bytes:
        await copy_chunked(src, dst, prefix=b"HEAD\r\n\r\n")
        return await src.read_exactly(9)

    assert run(scenario()) == b"GET /next"
    assert bytes(dst.written) == b"HEAD\r\n\r\n" + CHUNKED


def test_chunked_small_chunks_are_coalesced_into_few_writes() -> None:
    body = b"".join(b"1\r\nx\r\n" for _ in range(1000)) + b"0\r\n\r\n"
    dst = ScriptedConn()
    count = 0
    original = dst.write

    async def counting(data: bytes) -> None:
        nonlocal count
        count += 1
        await original(data)

    dst.write = counting  # type: ignore[method-assign]
    run(copy_chunked(BufferedConn(ScriptedConn([body])), dst))
    assert bytes(dst.written) == body
    assert count == 1


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"0\r\nbad\ntrailer\r\n\r\n",
        # Whitespace between the size and the extension (h11 refuses it), control bytes in an extension.
        b"5 ;ext\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        # Trailer lines must be header fields.
        b"0\r\nno colon\r\n\r\n",
        b"0\r\nX : 1\r\n\r\n",
        b"0\r\n folded\r\n\r\n",
    ],
)
def test_malformed_chunked_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(HttpError):
        run(copy_chunked(BufferedConn(ScriptedConn([body])), ScriptedConn()))


def test_truncated_chunked_body_is_incomplete() -> None:
    with pytest.raises(IncompleteMessage):
        run(copy_chunked(BufferedConn(ScriptedConn([b"10\r\nabc"])), ScriptedConn()))


def test_close_delimited_body_copies_until_eof() -> None:
    dst = ScriptedConn()
    src = BufferedConn(ScriptedConn([b"b", b"cd", b"e"]), b"a")
    run(copy_body(src, dst, body="close", prefix=b"H"))
    assert bytes(dst.written) == b"Habcde"


# -- pipe ----------------------------------------------------------------------


def test_pipe_relays_both_ways_and_propagates_half_close() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        client, router_client = memory_pair()
        router_upstream, upstream = memory_pair()
        # Bytes already read past an upgrade's head travel first.
        piping = asyncio.create_task(pipe(BufferedConn(router_client, b"early "), router_upstream))
        await client.write(b"ping")
        await client.close_write()
        got = await read_all(upstream)  # EOF arrives: the client's half-close was passed on
        await upstream.write(b"pong " * 1000)
        await upstream.close_write()
        back = await read_all(client)
        await piping
        return got, back

    got, back = run(scenario())
    assert got == b"early ping"
    assert back == b"pong " * 1000


def test_pipe_without_half_close_ends_both_sides() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        client, router_client = memory_pair()
        router_upstream, upstream = memory_pair()
        piping = asyncio.create_task(pipe(router_client, FullCloseConn(router_upstream)))
        await client.write(b"hi")
        await client.close_write()  # the upstream side cannot be half-closed, so the whole pipe ends
        await piping
        return await read_all(upstream), await read_all(client)

    assert run(scenario()) == (b"hi", b"")
