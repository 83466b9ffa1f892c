"""The byte stream a ``Session`` runs over, and the two we have.

``ByteStream`` is the whole interface the session needs from the network, so
the CLI can plug in whatever reaches the agent: a TCP socket today, a
port-forward websocket through the API server next. Its contract:

- ``read(n)`` returns 1..n bytes, or ``b""`` once the peer is gone;
- ``write(data)`` never blocks: it queues the bytes, whole and in call order
  (the session writes one encoded frame per call, so frames never interleave);
- ``drain()`` waits until the queue is small enough (backpressure);
- ``close()`` closes both directions and waits for that to finish.

``MemoryPipe`` joins two ends in memory with a bounded buffer, so protocol
tests exercise backpressure without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class ByteStream(Protocol):
    async def read(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


class AsyncioByteStream:
    """A ``ByteStream`` over asyncio's ``StreamReader``/``StreamWriter`` pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the peer went first: closed is closed
            await self._writer.wait_closed()


async def connect_tcp(host: str, port: int) -> AsyncioByteStream:
    reader, writer = await asyncio.open_connection(host, port)
    return AsyncioByteStream(reader, writer)


class _Buffer:
    """One direction of a memory pipe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.eof = False
        self.changed = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryPipeEnd:
    """One end of ``memory_pipe()``: reads what the other end writes."""

    def __init__(self, incoming: _Buffer, outgoing: _Buffer) -> None:
        self._in = incoming
        self._out = outgoing

    async def read(self, n: int) -> bytes:
        while not self._in.data:
            if self._in.eof:
                return b""
            await self._in.changed.wait()
        chunk = bytes(self._in.data[:n])
        del self._in.data[:n]
        self._in.notify()
        return chunk

    def write(self, data: bytes) -> None:
        if self._out.eof:
            return
        self._out.data += data
        self._out.notify()

    async def drain(self) -> None:
        while len(self._out.data) > self._out.limit:
            if self._out.eof:
                raise ConnectionResetError("memory pipe closed")
            await self._out.changed.wait()
        if self._out.eof:
            raise ConnectionResetError("memory pipe closed")

    async def close(self) -> None:
        for buffer in (self._in, self._out):
            buffer.eof = True
            buffer.notify()


def memory_pipe(*, limit: int = 64 * 1024) -> tuple[MemoryPipeEnd, MemoryPipeEnd]:
    """Two connected ends; ``drain()`` blocks while more than ``limit`` bytes are unread."""
    a_to_b, b_to_a = _Buffer(limit), _Buffer(limit)
    return MemoryPipeEnd(b_to_a, a_to_b), MemoryPipeEnd(a_to_b, b_to_a)
