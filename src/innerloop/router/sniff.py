"""What a connection to a Service port speaks, decided from its first bytes without ever splitting a line.

The router routes HTTP/1.x request by request and HTTP/2 with prior
knowledge (h2c) stream by stream; anything else is piped to the origin as
raw TCP, unrouted and unchecked. Sending an HTTP request down that pipe
would skip header routing (a personal intercept never sees it) and the
framing checks, so the decision reads until it is certain, never a fixed
number of bytes (a 24-byte read once split CR from LF, and every request
line of 23 bytes modulo 24 went down the pipe).

The rules (:func:`classify`), in order:

- the bytes so far are a prefix of the HTTP/2 preface
  (``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``): wait; all 24 of them: **h2c**;
- up to ``MAX_LEADING_EMPTY`` CR/LF bytes before the first line are
  skipped (RFC 9112 section 2.2: a server ignores at least one empty line
  before a request line); more than that is **http1**, which the head
  parser refuses with a 400;
- the first line must start with a token (RFC 9110 tchars, a method) and
  then SP or HTAB; a first byte that is not a tchar, or a token followed by
  anything else (``SSH-2.0-...\\r\\n``, a TLS ClientHello, a PostgreSQL
  startup packet, RESP's ``*3\\r\\n``) is **tcp**;
- once the first line is complete (up to its LF, CR or not): **http1** if it
  contains ``HTTP/`` in any case after the method, else **tcp** (Redis inline
  ``SET a b``, memcached ``get key``, HTTP/0.9's ``GET /``). http1 does not
  mean valid: a bare-LF line, ``http/1.1``, two spaces, ``HTTP/2.0`` all go
  to the HTTP/1.1 parser, which answers 400 or 505;
- before its LF, a line that holds a binary control byte (NUL, 0x01-0x08,
  VT, FF, 0x0E-0x1F, DEL) is decided at once the same way (``HTTP/`` seen
  so far: http1, else tcp), so a binary protocol that happens to start with
  letters and a space is not held up.

Raw TCP is therefore precisely: a connection whose first bytes cannot start
an HTTP/1.x request line naming an HTTP version, nor the HTTP/2 preface.

Time and size: a connection that has sent nothing after
``FIRST_BYTE_TIMEOUT`` may be a server-speaks-first protocol (MySQL, SMTP,
FTP: the client waits for the server's greeting), so the caller opens the
origin and lets whichever side
speaks first decide (:func:`first_speaker`): the origin's greeting makes it
raw TCP, the client's bytes are classified as above, so a client that is
merely slow to send its request is still routed. An undecided start longer
than the head limit is http1 (the parser answers 431); the whole decision
runs within the head timeout the caller sets.

Standard library only: this runs in the router pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal, TypeAlias

from innerloop.router.http1 import COPY_CHUNK, H2_PREFACE, BufferedConn, Conn

Kind: TypeAlias = Literal["http1", "h2c", "tcp"]
Sniffed: TypeAlias = Literal["http1", "h2c", "tcp", "need-more"]

FIRST_BYTE_TIMEOUT = 0.25
"""With no byte from the client after this, the origin is asked whether it speaks first."""
MAX_LEADING_EMPTY = 8
"""CR/LF bytes skipped before a request line; more is refused as HTTP, not piped."""

_TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BINARY = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_NOT_BINARY = bytes(b for b in range(256) if b not in _BINARY)
# Bytes after which classify() may decide differently than before: LF ends the first line, a binary byte ends it early.
_DECISIVE = bytes(sorted({*_BINARY, 0x0A}))
_NOT_DECISIVE = bytes(b for b in range(256) if b not in _DECISIVE)
_EAGER = 64  # below this many bytes every read is classified (the preface and the method are decided there)


def classify(data: bytes) -> Sniffed:
    """h2c, http1, tcp, or ``need-more`` (the bytes so far could still be either); see the module's rules."""
    start = data[: len(H2_PREFACE)]
    if H2_PREFACE.startswith(start):
        return "h2c" if len(start) == len(H2_PREFACE) else "need-more"
    rest = data.lstrip(b"\r\n")
    if len(data) - len(rest) > MAX_LEADING_EMPTY:
        return "http1"
    if not rest:
        return "need-more"
    method_end = len(rest) - len(rest.lstrip(_TCHARS))
    if method_end == 0:
        return "tcp"
    if method_end == len(rest):
        return "need-more"
    if rest[method_end] not in b" \t":
        return "tcp"
    line_end = rest.find(b"\n", method_end)
    line = rest[method_end:] if line_end < 0 else rest[method_end:line_end]
    if line_end >= 0 or line.translate(None, _NOT_BINARY):
        return "http1" if b"http/" in line.lower() else "tcp"
    return "need-more"


async def sniff(conn: BufferedConn, *, limit: int) -> Kind:
    """Read from ``conn`` (keeping every byte buffered) until :func:`classify` decides.

    Undecided past ``limit`` bytes is http1 (the head parser then answers
    431); the end of the stream while undecided is tcp (the bytes go to the
    origin as they are). The caller bounds the time this takes.
    """
    while True:
        kind = classify(conn.peek())
        if kind != "need-more":
            return kind
        if conn.buffered > limit:
            return "http1"
        while True:
            before = conn.buffered
            if not await conn.fill():
                return "tcp"
            # Only a line end or a binary byte can change an undecided answer once the first bytes are seen,
            # so a trickled line costs one scan of each new piece, not one of the whole buffer per read.
            if conn.buffered <= _EAGER or conn.buffered > limit or conn.peek(before).translate(None, _NOT_DECISIVE):
                break


async def first_speaker(client: BufferedConn, origin: Conn) -> bytes:
    """Wait until the client or the origin sends something; the origin's first bytes, or ``b""`` if the client spoke.

    The client's bytes stay buffered in ``client``. When both arrive at once
    the origin's are returned (the client's stay buffered too). ``b""`` also
    when either side closed; the caller tells which from ``client.buffered``.
    """
    from_client = asyncio.ensure_future(client.fill())
    from_origin = asyncio.ensure_future(origin.read(COPY_CHUNK))
    try:
        await asyncio.wait((from_client, from_origin), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (from_client, from_origin):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
    if from_origin.done() and not from_origin.cancelled() and from_origin.exception() is None:
        return from_origin.result()
    return b""
