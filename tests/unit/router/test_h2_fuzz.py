"""A bounded fuzz of the router's HTTP/2 side: generated frames from a hostile client, over real sockets.

Every frame type, random flags, stream ids and payloads (and some well-formed
HEADERS among them), after a real preface. Whatever arrives, the router must
answer or close that connection within a moment, never raise out of its
connection handler, and keep serving a bystander on another connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Any

from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innerloop.router.h2 import PREFACE
from innerloop.router.limits import Limits

from .test_h2_floods import REQUEST, bystander_request, router
from .test_h2_floods import settings as settings_frame

STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF]) | st.integers(0, 0x7FFFFFFF)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


raw_frames = st.builds(
    _frame,
    kind=st.integers(0, 12),
    flags=st.integers(0, 255),
    stream=STREAM_IDS,
    payload=st.binary(max_size=64),
)
headers_frames = st.builds(
    lambda stream, flags, extra: _frame(1, flags, stream, Encoder().encode(REQUEST + extra)),
    stream=STREAM_IDS,
    flags=st.sampled_from([0x4, 0x5, 0x0, 0x1, 0x24]),
    extra=st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=8)), max_size=3),
)
conversations = st.lists(raw_frames | headers_frames, min_size=1, max_size=12)
PING = _frame(6, 0, 0, b"fuzzping")


def _answer_or_close(sock: socket.socket, *, within: float) -> None:
    """Read until the router closes, answers our PING, or ``within`` seconds pass (then we hang up)."""
    deadline = time.monotonic() + within
    seen = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return
        if not data:
            return
        seen += data
        if b"fuzzping" in seen:
            return


def test_generated_frames_never_break_the_router_or_its_other_connections() -> None:
    errors: list[dict[str, Any]] = []
    with router(Limits(head_timeout=2.0)) as r:
        r.loop.set_exception_handler(lambda _loop, context: errors.append(context))

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(conversations)
        def one(frames: list[bytes]) -> None:
            with socket.create_connection(("127.0.0.1", r.port), timeout=5) as sock:
                with contextlib.suppress(ConnectionError):  # the router may hang up on an early frame: fine
                    sock.sendall(PREFACE + settings_frame() + b"".join(frames) + PING)
                _answer_or_close(sock, within=0.5)
            assert not errors, errors
            assert bystander_request(r.port, timeout=5) < 5

        one()
        assert not errors, errors
        r.loop.set_exception_handler(None)  # the harness cancels the handlers' tasks when it stops
