"""The wire format: frames that multiplex many streams over one byte stream.

A port-forward (or exec) stream through the API server is expensive to open
and gives no half-close, so the CLI opens exactly one and carries everything
over it: control messages, sync batches and, later, intercept tunnels. No
maintained asyncio yamux/smux exists for Python, and HTTP/2 would drag in h2
and its state machine for what fits in a page, so this is our own framing:

    kind:u8 | stream:u32 | length:u32 | payload[length]      (big-endian)

``encode`` and ``FrameDecoder`` are pure: no I/O, no asyncio. The decoder is
incremental (bytes arrive in arbitrary chunks) and rejects anything malformed
with ``ProtocolError``; after one error it stays broken, because a byte stream
that lost frame sync cannot be trusted again.

Frame rules, checked on both sides:

- OPEN, CLOSE and RESET name a stream other than 0 (stream 0 is the control
  channel, open for the session's lifetime). OPEN's payload is an opaque
  header for the acceptor; CLOSE has none; RESET's is a UTF-8 reason.
- DATA may name any stream, stream 0 included.
- WINDOW carries a u32 credit increment (> 0) for one stream (0 included).
- PING and PONG name stream 0 and carry 8 opaque bytes (PONG echoes PING).
- GOAWAY names stream 0; its payload is a UTF-8 reason.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">BII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 256 * 1024
INITIAL_WINDOW = 4 * 1024 * 1024  # 1 MiB capped a port-forward tunnel at ~0.7x kubectl; 4 MiB reaches ~0.9x
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1
PING_SIZE = 8
_WINDOW = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer (or a caller) broke the framing rules; the session cannot continue."""


class Kind(enum.IntEnum):
    OPEN = 0
    DATA = 1
    CLOSE = 2
    RESET = 3
    WINDOW = 4
    PING = 5
    PONG = 6
    GOAWAY = 7


_SESSION_KINDS = frozenset({Kind.PING, Kind.PONG, Kind.GOAWAY})
_STREAM_KINDS = frozenset({Kind.OPEN, Kind.CLOSE, Kind.RESET})


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    stream: int
    payload: bytes = b""

    @classmethod
    def window(cls, stream: int, increment: int) -> Frame:
        return cls(Kind.WINDOW, stream, _WINDOW.pack(increment))

    @property
    def increment(self) -> int:
        """The credit a WINDOW frame grants."""
        (value,) = _WINDOW.unpack(self.payload)
        return int(value)

    @property
    def reason(self) -> str:
        """The text of a RESET or GOAWAY frame (lossy: it is for humans)."""
        return self.payload.decode("utf-8", "replace")


def check(kind: Kind, stream: int, payload: bytes) -> None:
    """Raise ``ProtocolError`` unless the frame follows the rules above."""
    name = kind.name
    if not 0 <= stream <= MAX_STREAM_ID:
        raise ProtocolError(f"{name} frame: stream id {stream} is out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"{name} frame on stream {stream}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if kind in _SESSION_KINDS and stream != 0:
        raise ProtocolError(f"{name} frame must be on stream 0, not {stream}")
    if kind in _STREAM_KINDS and stream == 0:
        raise ProtocolError(f"{name} frame cannot name stream 0 (the control channel)")
    if kind is Kind.CLOSE and payload:
        raise ProtocolError(f"CLOSE frame on stream {stream} carries {len(payload)} bytes; it must be empty")
    if kind is Kind.WINDOW:
        if len(payload) != _WINDOW.size:
            raise ProtocolError(f"WINDOW frame on stream {stream}: payload must be 4 bytes, got {len(payload)}")
        (increment,) = _WINDOW.unpack(payload)
        if not 0 < increment <= MAX_WINDOW:
            raise ProtocolError(f"WINDOW frame on stream {stream}: increment {increment} not in 1..{MAX_WINDOW}")
    if kind in (Kind.PING, Kind.PONG) and len(payload) != PING_SIZE:
        raise ProtocolError(f"{name} frame: payload must be {PING_SIZE} bytes, got {len(payload)}")


def encode(frame: Frame) -> bytes:
    """The bytes of one frame; raises ``ProtocolError`` for a frame the peer would reject."""
    check(frame.kind, frame.stream, frame.payload)
    return HEADER.pack(frame.kind, frame.stream, len(frame.payload)) + frame.payload


class FrameDecoder:
    """Turn a byte stream, fed in arbitrary chunks, into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # bytes of the stream consumed so far, for error messages
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[Frame] = []
        view = memoryview(self._buffer)
        pos = 0
        try:
            while len(view) - pos >= HEADER_SIZE:
                raw_kind, stream, length = HEADER.unpack_from(view, pos)
                where = f"at byte {self._offset + pos}"
                try:
                    kind = Kind(raw_kind)
                except ValueError:
                    raise ProtocolError(f"unknown frame kind 0x{raw_kind:02x} {where}") from None
                if length > MAX_PAYLOAD:
                    raise ProtocolError(
                        f"{kind.name} frame {where} announces {length} bytes; the limit is {MAX_PAYLOAD}"
                    )
                end = pos + HEADER_SIZE + length
                if end > len(view):
                    break
                payload = bytes(view[pos + HEADER_SIZE : end])
                try:
                    check(kind, stream, payload)
                except ProtocolError as exc:
                    raise ProtocolError(f"{exc} ({where})") from None
                frames.append(Frame(kind, stream, payload))
                pos = end
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            view.release()
        del self._buffer[:pos]
        self._offset += pos
        return frames
