"""Protocol sniffing (issue 9 item 11): what a connection speaks, decided without splitting a line.

The pure rules first (``classify``, ``sniff`` over scripted reads), then the
router itself on real sockets: every request line length is routed as HTTP,
a slow first byte too, leading CRLFs are answered, a bare-LF or lowercase
request line is refused with 400, a server-speaks-first origin still works.
"""

from __future__ import annotations

import asyncio

import pytest

from innerloop.router.http1 import H2_PREFACE, BufferedConn
from innerloop.router.sniff import MAX_LEADING_EMPTY, classify, sniff

from .router_harness import Origin, closed_within, read_response, running_router
from .test_http1 import ScriptedConn, run


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (b"", "need-more"),
        (H2_PREFACE, "h2c"),
        (H2_PREFACE + b"\x00\x00", "h2c"),
        (b"PRI * HTTP/2.0\r\n", "need-more"),
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "http1"),  # not the preface: an HTTP/1 line with version 2.0 (505)
        (b"GET / HTTP/1.1\r\nHost: x\r\n", "http1"),
        (b"DELETE /a/b?c HTTP/1.0\r\n", "http1"),
        (b"GET", "need-more"),
        (b"GET /very/long", "need-more"),
        (b"GET / HTTP/1.1", "need-more"),
        (b"GET / HTTP/1.1\r", "need-more"),  # the CR/LF split the 24-byte read made
        (b"GET /api/users HTTP/1.1\r", "need-more"),
        (b"GET /api/users HTTP/1.1\r\n", "http1"),
        (b"GET / HTTP/2.0\r\n", "http1"),  # refused by the parser (505), not piped
        (b"GET / http/1.1\r\n", "http1"),  # refused by the parser (400), not piped
        (b"GET / HTTP/1.1\n", "http1"),  # bare LF: refused by the parser (400), not piped
        (b"GET  / HTTP/1.1\r\n", "http1"),
        (b"GET\t/ HTTP/1.1\r\n", "http1"),
        (b"\r\nGET / HTTP/1.1\r\n", "http1"),
        (b"\r\n\r\nGET / HTTP/1.1\r\n", "http1"),
        (b"\r\n", "need-more"),
        (b"\r\n" * (MAX_LEADING_EMPTY // 2) + b"\r", "http1"),  # only empty lines: the parser refuses them
        (b"GET / XYZ\r\n", "tcp"),
        (b"GET /\r\n", "tcp"),  # HTTP/0.9: no version, no headers
        (b"GET\r\n", "tcp"),
        (b"SET key value\r\n", "tcp"),  # Redis inline command
        (b"get key\r\n", "tcp"),  # memcached text protocol
        (b"*3\r\n$3\r\nSET\r\n", "tcp"),  # RESP
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tcp"),  # TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.6\r\n", "tcp"),
        (b"\x00\x00\x00\x08\x04\xd2\x16/", "tcp"),  # PostgreSQL SSLRequest
        (b"AB \x00\x01binary", "tcp"),  # letters and a space, then binary: decided without waiting for a line
        (b"GET / HTTP/1.1\x00", "http1"),  # a control byte after the version was seen: HTTP's parser refuses it
        (b"G\xffT / HTTP/1.1\r\n", "tcp"),  # not a token
    ],
)
def test_classify(first: bytes, kind: str) -> None:
    assert classify(first) == kind


@pytest.mark.parametrize("length", range(14, 64))
def test_no_request_line_length_is_classified_as_raw_tcp(length: int) -> None:
    """The attack: the old 24-byte sniff read split CR from LF, so every line of 23 bytes modulo 24 was raw TCP.

    Here every length is fed in every split into two reads.
    """
    line = b"GET /" + b"a" * (length - 14) + b" HTTP/1.1"
    assert len(line) == length
    data = line + b"\r\nHost: svc\r\n\r\n"

    async def every_cut() -> None:
        for cut in range(1, len(data)):
            conn = BufferedConn(ScriptedConn([data[:cut], data[cut:]]))
            assert await sniff(conn, limit=65536) == "http1", (length, cut)
            assert conn.peek() == data[: conn.buffered]  # nothing consumed: the HTTP parser gets every byte

    run(every_cut())


def test_sniff_of_a_trickled_line_reads_until_its_end_and_stops_at_the_limit() -> None:
    data = b"GET /" + b"x" * 5000 + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    conn = BufferedConn(ScriptedConn([data[i : i + 7] for i in range(0, len(data), 7)]))
    assert run(sniff(conn, limit=65536)) == "http1"
    assert data.index(b"\n") < conn.buffered <= data.index(b"\n") + 7  # read up to the piece with the LF, no further
    # Undecided past the head limit: HTTP (the parser answers 431), never raw TCP.
    endless = BufferedConn(ScriptedConn([b"GET /" + b"x" * 2000]))
    assert run(sniff(endless, limit=1000)) == "http1"
    # The stream ends undecided: what there is goes to the origin as raw bytes.
    assert run(sniff(BufferedConn(ScriptedConn([b"GET /x"])), limit=1000)) == "tcp"


# -- the router on real sockets ------------------------------------------------------------


def test_a_23_byte_request_line_is_routed_and_its_smuggling_refused() -> None:
    """The attack: ``GET /api/users HTTP/1.1`` (23 bytes) was piped as raw TCP, so header routing was skipped and a
    CL+TE request smuggled ``GGET /smuggled`` to the origin. Now it is HTTP: routed, and the CL+TE refused."""

    async def scenario() -> None:
        async with running_router() as r:
            reader, writer = await r.open()
            writer.write(b"GET /api/users HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 1")
            writer.close()
            assert r.router.stats["origin"] == 1  # an exchange the router relayed (a pipe counts none)
            before = bytes(r.origin.received)

            reader, writer = await r.open()
            writer.write(
                b"GET /api/users HTTP/1.1\r\nHost: svc\r\nContent-Length: 23\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
            )
            answer = await closed_within(reader, 5)
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert r.origin.received == before  # not one byte of the second connection reached the origin
            assert r.origin.requests == [(b"GET", b"/api/users")]

    run(scenario())


@pytest.mark.parametrize(
    ("request_bytes", "fragment"),
    [
        (b"GET / HTTP/1.1\nHost: svc\n\n", b"bare LF"),
        (b"GET / http/1.1\r\nHost: svc\r\n\r\n", b"malformed request line"),
        (b"\r\n" * (MAX_LEADING_EMPTY + 1) + b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", b""),
    ],
)
def test_malformed_http_is_refused_with_400_not_piped(request_bytes: bytes, fragment: bytes) -> None:
    """The attack: a bare-LF request line or ``http/1.1`` was piped to the origin unrouted; now the router refuses
    it at once (a bare-LF head has no CRLF CRLF: the router must not wait for one)."""

    async def scenario() -> None:
        async with running_router() as r:
            reader, writer = await r.open()
            writer.write(request_bytes)
            answer = await closed_within(reader, 2)  # at once, not after the head timeout
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert fragment in answer
            assert r.origin.received == b""

    run(scenario())


def test_a_leading_empty_line_is_skipped_not_a_hang() -> None:
    """The attack (and RFC 9112 2.2's robustness rule): a CRLF before the request line hung the router for 10 s."""

    async def scenario() -> None:
        async with running_router() as r:
            reader, writer = await r.open()
            writer.write(b"\r\nGET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
            async with asyncio.timeout(2):
                assert await read_response(reader) == (200, b"origin 1")
            writer.write(b"\r\nGET /b HTTP/1.1\r\nHost: svc\r\n\r\n")  # between kept-alive requests too
            async with asyncio.timeout(2):
                assert await read_response(reader) == (200, b"origin 2")
            assert r.origin.requests == [(b"GET", b"/a"), (b"GET", b"/b")]

    run(scenario())


def test_a_client_whose_first_byte_comes_late_is_still_routed_as_http() -> None:
    """The attack: a client silent for 0.25 s was piped as raw TCP whatever it sent then (no routing, no checks)."""

    async def scenario() -> None:
        async with running_router() as r:
            reader, writer = await r.open()
            await asyncio.sleep(0.6)
            writer.write(b"GET /late HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            answer = await closed_within(reader, 5)
            assert answer.startswith(b"HTTP/1.1 400 "), answer  # HTTP, so its CL+TE is refused

            reader, writer = await r.open()
            await asyncio.sleep(0.6)
            writer.write(b"GET /late HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert await read_response(reader) == (200, b"origin 1")
            assert r.router.stats["origin"] == 1

    run(scenario())


def test_a_server_speaks_first_protocol_still_reaches_the_origin() -> None:
    async def scenario() -> None:
        async with running_router(Origin(greeting=b"220 origin ready\r\n")) as r:
            reader, writer = await r.open()
            async with asyncio.timeout(3):
                assert await reader.readexactly(18) == b"220 origin ready\r\n"
                writer.write(b"EHLO me\r\n")
                assert await reader.readexactly(14) == b"echo:EHLO me\r\n"

    run(scenario())


def test_a_client_first_binary_protocol_is_piped_verbatim() -> None:
    async def scenario() -> None:
        async with running_router(Origin(greeting=b"hi:")) as r:
            reader, writer = await r.open()
            writer.write(b"\x00\x00\x00\x08\x04\xd2\x16/")
            async with asyncio.timeout(3):
                assert await reader.readexactly(3) == b"hi:"
                assert await reader.readexactly(13) == b"echo:\x00\x00\x00\x08\x04\xd2\x16/"

    run(scenario())


def test_h2c_preface_split_anywhere_is_still_h2c() -> None:
    for cut in range(1, len(H2_PREFACE)):
        conn = BufferedConn(ScriptedConn([H2_PREFACE[:cut], H2_PREFACE[cut:] + b"\x00\x00\x00\x04"]))
        assert run(sniff(conn, limit=65536)) == "h2c"
