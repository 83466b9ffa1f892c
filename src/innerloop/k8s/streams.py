"""Exec and port-forward streams over the API server's websockets.

`ExecProcess` speaks ``v5.channel.k8s.io`` (falling back to v4, which cannot
close stdin): stdin is streamed, stdout and stderr arrive as asyncio
StreamReaders, and the exit code comes from the final status. Everything is
bytes end to end: nothing is decoded as text, so binary payloads survive
(the official aio client's UTF-8 decoding corrupts them).

`PortForwardStream` is one TCP connection to a pod port: one websocket, data
on channel 0, errors on channel 1. Websocket port-forward has no half-close,
so protocols that need one (the agent's) carry their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote, urlencode

import aiohttp

from innerloop.k8s import channels
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable


class StreamError(RuntimeError):
    """The API server refused or broke a stream; the message says why."""


def _ws_url(conn: ClusterConnection, path: str, query: list[tuple[str, str]]) -> str:
    base = conn.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}{path}?{urlencode(query)}"


async def _connect(
    session: aiohttp.ClientSession, url: str, protocols: Sequence[str]
) -> aiohttp.ClientWebSocketResponse:
    try:
        return await session.ws_connect(url, protocols=tuple(protocols), max_msg_size=0, autoping=True, compress=0)
    except aiohttp.WSServerHandshakeError as err:
        hint = {
            401: "check the kubeconfig's credentials",
            403: "the user lacks this RBAC permission",
            404: "the pod does not exist (any more)",
        }.get(err.status, "")
        raise StreamError(
            f"{err.status} {err.message} for {url.split('?', maxsplit=1)[0]}{': ' + hint if hint else ''}"
        ) from err
    except aiohttp.ClientError as err:
        raise ClusterUnreachable(f"cannot reach the API server: {err}") from err


class ExecProcess:
    """A command running in a container, with streaming stdin/stdout/stderr."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self._ws = ws
        self._session = session
        self.protocol = ws.protocol or ""
        self.stdout = asyncio.StreamReader(limit=2**24)
        self.stderr = asyncio.StreamReader(limit=2**24)
        self._status: asyncio.Future[channels.ExecStatus] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name="exec-reader")

    @classmethod
    async def start(
        cls,
        conn: ClusterConnection,
        *,
        namespace: str,
        pod: str,
        command: Sequence[str],
        container: str | None = None,
        stdin: bool = True,
    ) -> ExecProcess:
        query = [("command", c) for c in command]
        query += [("stdin", "true" if stdin else "false"), ("stdout", "true"), ("stderr", "true")]
        if container:
            query.append(("container", container))
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/exec"
        session = conn.websocket_session()
        try:
            ws = await _connect(session, _ws_url(conn, path, query), channels.EXEC_PROTOCOLS)
        except BaseException:
            await session.close()
            raise
        return cls(ws, session)

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                channel, data = channels.split(msg.data)
                if channel == channels.STDOUT:
                    self.stdout.feed_data(data)
                elif channel == channels.STDERR:
                    self.stderr.feed_data(data)
                elif channel == channels.ERROR and not self._status.done():
                    self._status.set_result(channels.parse_status(data))
        finally:
            self.stdout.feed_eof()
            self.stderr.feed_eof()
            if not self._status.done():
                self._status.set_exception(StreamError("the exec stream closed without an exit status"))

    async def write(self, data: bytes, *, chunk: int = 256 * 1024) -> None:
        for i in range(0, len(data), chunk):
            await self._ws.send_bytes(channels.frame(channels.STDIN, data[i : i + chunk]))

    async def close_stdin(self) -> None:
        if self.protocol != "v5.channel.k8s.io":
            raise StreamError(f"the API server speaks {self.protocol or 'an old protocol'}, which cannot close stdin")
        await self._ws.send_bytes(channels.close_frame(channels.STDIN))

    async def wait(self) -> int:
        """The command's exit code, once it has ended."""
        status = await self._status
        return status.exit_code

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._session.close()


@contextlib.asynccontextmanager
async def exec_process(
    conn: ClusterConnection, *, namespace: str, pod: str, command: Sequence[str], container: str | None = None
) -> AsyncIterator[ExecProcess]:
    proc = await ExecProcess.start(conn, namespace=namespace, pod=pod, command=command, container=container)
    try:
        yield proc
    finally:
        await proc.close()


async def run(
    conn: ClusterConnection,
    *,
    namespace: str,
    pod: str,
    command: Sequence[str],
    input: bytes = b"",
    container: str | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a command to completion: (exit code, stdout, stderr)."""
    async with exec_process(conn, namespace=namespace, pod=pod, command=command, container=container) as proc:

        async def feed() -> None:
            if input:
                await proc.write(input)
            await proc.close_stdin()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            out = tg.create_task(proc.stdout.read())
            err = tg.create_task(proc.stderr.read())
        return await proc.wait(), out.result(), err.result()


class PortForwardStream:
    """One TCP connection to ``pod:port`` through the API server."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, port: int) -> None:
        self._ws = ws
        self._session = session
        self.port = port
        self.reader = asyncio.StreamReader(limit=2**24)
        self._error = b""
        self._seen_prefix: set[int] = set()
        self._pump = asyncio.create_task(self._read(), name=f"port-forward-{port}")

    @classmethod
    async def open(cls, conn: ClusterConnection, *, namespace: str, pod: str, port: int) -> PortForwardStream:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward"
        session = conn.websocket_session()
        try:
            ws = await _connect(session, _ws_url(conn, path, [("ports", str(port))]), channels.PORT_FORWARD_PROTOCOLS)
        except BaseException:
            await session.close()
            raise
        return cls(ws, session, port)

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                channel, data = channels.split(msg.data)
                if channel not in self._seen_prefix:
                    self._seen_prefix.add(channel)
                    _, data = channels.port_prefix(data)
                if channel == 0 and data:
                    self.reader.feed_data(data)
                elif channel == 1 and data:
                    self._error += data
        finally:
            if self._error:
                self.reader.set_exception(StreamError(self._error.decode(errors="replace").strip()))
            else:
                self.reader.feed_eof()

    @property
    def error(self) -> str:
        return self._error.decode(errors="replace")

    async def write(self, data: bytes, *, chunk: int = 256 * 1024) -> None:
        """Send ``data``; raises :class:`StreamError` with the server's reason once the stream has closed."""
        try:
            for i in range(0, len(data), chunk):
                await self._ws.send_bytes(channels.frame(0, data[i : i + chunk]))
        except (aiohttp.ClientError, ConnectionError) as err:
            # The server may close right after it reports why (a refused dial, say):
            # give the reading side a moment to collect the reason.
            await asyncio.wait({self._pump}, timeout=1.0)
            raise StreamError(self.error.strip() or f"port-forward closed: {err}") from err

    async def close(self) -> None:
        await self._ws.close()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self._session.close()


class PortForwardByteStream:
    """A :class:`PortForwardStream` behind the ``ByteStream`` shape a protocol session wants.

    ``write`` only queues (frames stay whole and in order); one sender task,
    owned here, moves them to the websocket; ``drain`` waits while more than
    ``high_water`` bytes are queued.
    """

    def __init__(self, stream: PortForwardStream, *, high_water: int = 1 << 20) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queued = 0
        self._high_water = high_water
        self._room = asyncio.Event()
        self._room.set()
        self._failed: BaseException | None = None
        self._sender = asyncio.create_task(self._send(), name="port-forward-sender")

    @classmethod
    async def open(cls, conn: ClusterConnection, *, namespace: str, pod: str, port: int) -> PortForwardByteStream:
        return cls(await PortForwardStream.open(conn, namespace=namespace, pod=pod, port=port))

    async def _send(self) -> None:
        try:
            while True:
                data = await self._queue.get()
                await self._stream.write(data)
                self._queued -= len(data)
                if self._queued <= self._high_water:
                    self._room.set()
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as err:
            self._failed = err
            self._room.set()

    async def read(self, n: int) -> bytes:
        try:
            return await self._stream.reader.read(n)
        except StreamError:
            return b""

    def write(self, data: bytes) -> None:
        if self._failed is not None:
            return
        self._queue.put_nowait(data)
        self._queued += len(data)
        if self._queued > self._high_water:
            self._room.clear()

    async def drain(self) -> None:
        await self._room.wait()
        if self._failed is not None:
            raise ConnectionError(f"port-forward broke: {self._failed}")

    async def close(self) -> None:
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        await self._stream.close()
