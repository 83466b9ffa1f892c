"""Our HTTP/1.1 request framing against h11's over generated inputs, and a bounded fuzz of the sniffer and parser.

A relay that frames a request differently from the server behind it is a
smuggling hole, so the property is one-sided: wherever our parser (the head
parser plus the body framing) accepts a request, h11 must accept it too and
end it at the same byte (where the next request begins). Where we are
stricter than h11 (bare LF, obs-fold, control bytes, Host rules, ...) we
reject and that is fine. Where a request is incomplete for us, h11 must not
have found it complete.

The one non-framing difference: h11 refuses bytes 0x80-0xFF in a request
target, we pass them on (as nginx and Go do); they take no part in framing,
so h11 is given the same target with them replaced by ``x``.

Requests are built from the pieces smuggling is made of: methods, targets,
versions, header names and values (obs-fold, bare LF, NUL, a space before
the colon, duplicate and signed Content-Length, Transfer-Encoding lists),
chunk sizes and extensions, trailers, and bodies that lie about their
length; each is followed by a sentinel next request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innerloop.router.http1 import (
    BufferedConn,
    HttpError,
    IncompleteMessage,
    copy_body,
    parse_request_head,
    read_request_head,
)
from innerloop.router.limits import Limits
from innerloop.router.sniff import classify, sniff

from .test_http1 import ScriptedConn

T = TypeVar("T")
NEXT = b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
Outcome = tuple[str, int]  # ("accept", where the next request begins) | ("reject", 0) | ("incomplete", 0)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must finish without waiting (its reads are scripted): a wait would be a hang."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the parser waited on a scripted connection that had nothing more to give")


def ours(data: bytes) -> Outcome:
    async def frame() -> int:
        conn = BufferedConn(ScriptedConn([data]))
        head = await read_request_head(conn)
        await copy_body(conn, ScriptedConn(), body=head.body, length=head.content_length)
        return len(data) - conn.buffered

    try:
        return ("accept", drive(frame()))
    except IncompleteMessage:
        return ("incomplete", 0)
    except HttpError:
        return ("reject", 0)


def theirs(data: bytes) -> Outcome:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return ("incomplete", 0)
            if isinstance(event, h11.EndOfMessage):
                return ("accept", len(data) - len(conn.trailing_data[0]))
    except h11.RemoteProtocolError:
        return ("reject", 0)


def for_h11(data: bytes) -> bytes:
    """``data`` with the request target's obs-text bytes as ``x`` (same length: boundaries do not move)."""
    line_end = data.find(b"\n")
    line = data[: line_end if line_end >= 0 else len(data)]
    parts = line.split(b" ")
    if len(parts) < 2:
        return data
    parts[1] = bytes(b if b < 0x80 else 0x78 for b in parts[1])
    return b" ".join(parts) + data[len(line) :]


# -- generated requests -------------------------------------------------------------------


def mostly(valid: list[bytes], invalid: list[bytes], *, weight: int = 6) -> st.SearchStrategy[bytes]:
    """One of ``valid`` (each ``weight`` times as likely as one of ``invalid``): enough requests must pass."""
    return st.sampled_from(valid * weight + invalid)


METHODS = mostly([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE"], [b"CONNECT", b"get", b"G(T", b""])
TARGETS = mostly(
    [b"/", b"/a?b=c", b"*", b"http://svc/x", b"/caf\xc3\xa9"],
    [b"http://other/x", b"svc:443", b"/a\x00", b"/a\x7f", b""],
)
VERSIONS = mostly([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"http/1.1", b"HTTP/1.\xff", b"HTTP/11"])
LENGTHS = mostly(
    [b"0", b"5", b"005", b"5, 5", b"12"],
    [b"5,6", b"+5", b"-1", b" 5", b"5 5", b"0x5", b"", b"99999999999999999999", b"\xff"],
    weight=4,
)
CODINGS = mostly([b"chunked", b"Chunked"], [b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b""])
TEXT = mostly([b"svc", b"a b", b"x\tz", b"\xff\xfe", b"", b"close", b"keep-alive"], [b"a\x00b", b"a\x7fb", b"a\x0bb"])
NAMES = mostly([b"Host", b"X-A", b"Connection", b"Expect", b"Upgrade"], [b"Content-Length ", b" X-B", b"X C", b"X\x00"])
COLON = mostly([b": ", b":", b":\t"], [b" : "], weight=10)
EOL = mostly([b"\r\n"], [b"\n", b"\r", b"\r\r\n"], weight=40)


@st.composite
def field(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["length", "coding"] * 2 + ["other"] * 6 + ["fold"]))
    if kind == "length":
        name, value = draw(st.sampled_from([b"Content-Length", b"content-length"])), draw(LENGTHS)
    elif kind == "coding":
        name, value = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"])), draw(CODINGS)
    elif kind == "fold":
        return draw(st.sampled_from([b" ", b"\t"])) + draw(TEXT) + draw(EOL)
    else:
        name, value = draw(NAMES), draw(TEXT)
    return name + draw(COLON) + value + draw(EOL)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for data in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = draw(st.sampled_from([len(data)] * 6 + [len(data) + 1, max(0, len(data) - 1)]))
        digits = draw(st.sampled_from(["%x", "%X", "00%x", "%x "] * 3 + [" %x", "+%x", "%x" + "0" * 17]))
        extension = draw(mostly([b"", b";a=b", b';q="x"', b";"], [b" ;x", b";a\nb", b";\x00"]))
        out += (digits % size).encode() + extension + draw(EOL) + data + draw(mostly([b"\r\n"], [b"\n", b""], weight=8))
    out += draw(mostly([b"0", b"000", b"0;x"], [b"0\n"])) + draw(EOL)
    for trailer in draw(st.lists(mostly([b"T: 1", b"T:1"], [b"no colon", b" fold", b"GET / HTTP/1.1"]), max_size=2)):
        out += trailer + draw(EOL)
    out += draw(mostly([b"\r\n"], [b"\n", b""], weight=8))
    return bytes(out)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    line = draw(METHODS) + draw(mostly([b" "], [b"  ", b"\t"], weight=8)) + draw(TARGETS) + b" " + draw(VERSIONS)
    fields = draw(st.lists(field(), max_size=4))
    if draw(st.sampled_from([True] * 8 + [False])):
        fields.insert(draw(st.integers(0, len(fields))), b"Host: svc\r\n")
    head = line + draw(EOL) + b"".join(fields) + draw(EOL)
    body = draw(st.one_of(st.just(b""), chunked_body(), st.binary(max_size=16)))
    return head + body + NEXT


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(request())
def test_we_never_accept_with_a_framing_h11_does_not_share(data: bytes) -> None:
    mine = ours(data)
    reference = theirs(for_h11(data))
    if mine[0] == "accept":
        assert reference == mine, (data, mine, reference)
    elif mine[0] == "incomplete":
        assert reference[0] != "accept", (data, mine, reference)


def test_the_generator_reaches_both_sides_of_the_property() -> None:
    """A differential test that only ever compares rejections proves nothing: some generated requests must pass."""
    outcomes: dict[str, int] = {}

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(request())
    def count(data: bytes) -> None:
        outcome = ours(data)[0]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    count()
    assert outcomes.get("accept", 0) >= 10, outcomes  # 16 of 100 with this derandomized run
    assert outcomes.get("reject", 0) >= 10, outcomes


def test_known_agreements_and_differences() -> None:
    chunked = b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\n"
    assert ours(chunked + NEXT) == theirs(chunked + NEXT) == ("accept", len(chunked))
    listed = b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 5\r\n\r\nhello"
    assert ours(listed + NEXT) == theirs(listed + NEXT) == ("accept", len(listed))
    # Stricter than h11: obs-fold, a bare LF head, whitespace before a chunk extension.
    for stricter in (
        b"GET / HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: svc\n\n",
        b"GET / HTTP/1.1\r\nHost: svc\r\nX: a\x01b\r\n\r\n",
    ):
        assert ours(stricter + NEXT)[0] == "reject"
        assert theirs(stricter + NEXT)[0] == "accept"


# -- fuzz: random bytes into the sniffer and the head parser ------------------------------

SMALL = Limits(max_head_bytes=512, max_headers=8)


def sniff_and_parse(data: bytes) -> None:
    async def steps() -> None:
        conn = BufferedConn(ScriptedConn([data[i : i + 7] for i in range(0, len(data), 7)]))
        kind = await sniff(conn, limit=SMALL.max_head_bytes)
        assert kind in ("http1", "h2c", "tcp")
        if kind == "http1":
            head = await read_request_head(conn, limits=SMALL)
            await copy_body(conn, ScriptedConn(), body=head.body, length=head.content_length, limits=SMALL)

    # HttpError (IncompleteMessage included) is what the router answers (400, 408, 431, 501, 505) or closes on.
    with contextlib.suppress(HttpError):
        drive(steps())
    assert classify(data) in ("http1", "h2c", "tcp", "need-more")
    with contextlib.suppress(HttpError):
        parse_request_head(data + b"\r\n\r\n")


HTTPISH = st.lists(
    st.sampled_from(
        [b"GET ", b"POST ", b"/", b"x", b" HTTP/1.1", b" http/1.0", b"\r\n", b"\n", b"\r", b": ", b":", b"Host",
         b"Content-Length", b"Transfer-Encoding", b"chunked", b"5", b"0", b";", b"\x00", b"\xff", b" ", b"\t",
         b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
    ),
    max_size=40,
).map(b"".join)  # fmt: skip


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=600), HTTPISH))
def test_fuzz_the_sniffer_and_parser_raise_nothing_but_http_errors_and_never_wait(data: bytes) -> None:
    sniff_and_parse(data)


def test_fuzz_driver_detects_a_wait() -> None:
    """``drive`` must fail on a parser that waits: otherwise "never waits" above could not fail."""

    async def waits() -> None:
        await asyncio.sleep(0)

    try:
        drive(waits())
    except AssertionError:
        return
    raise AssertionError("drive accepted a coroutine that waited")
