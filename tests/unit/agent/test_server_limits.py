"""A hostile peer against a real agent server over TCP: what it can make the agent buffer.

The attacker here is anything that reaches the agent's port before it proves
who it is (a process in the pod's network namespace, a port-forward of
someone with the Role), or a controller that floods PINGs and never reads.
The client side is a plain blocking socket in a thread, so nothing of ours
helps it keep to the rules.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from innerloop.agent.server import AgentServer
from innerloop.agent.supervisor import ChildReaper, Supervisor
from innerloop.protocol.frames import Frame, FrameDecoder, Kind, encode
from innerloop.protocol.messages import Hello, encode_message
from innerloop.protocol.session import SessionClosed

TOKEN = "a token nobody else knows, long enough"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def run(coro: Any, timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@asynccontextmanager
async def agent_on_tcp() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A real ``AgentServer`` on a loopback port; yields the port and the server side of each connection."""
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    supervisor = Supervisor(SLEEPER, reaper=reaper, grace=1.0)
    agent = AgentServer(token=TOKEN, supervisor=supervisor, keepalive_interval=None)
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Small kernel buffers, so what the agent queues shows in its own transport buffer.
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writers.append(writer)
        await agent.handle_tcp(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], writers
    finally:
        await agent.close()
        server.close()
        await server.wait_closed()
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()


def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _control(message: dict[str, Any]) -> bytes:
    return encode(Frame(Kind.DATA, 0, json.dumps(message).encode() + b"\n"))


@pytest.mark.parametrize(("stream", "refusal"), [(0, "longer than 4096 bytes"), (1, "before authenticating")])
def test_a_huge_message_before_hello_is_refused_after_a_few_kib(stream: int, refusal: str) -> None:
    """Attack: reach the agent's port and send endless data before `hello`.

    On the control stream (one endless message) the agent buffered up to
    64 MiB of it before the fix (MAX_CONTROL_MESSAGE), for anyone,
    unauthenticated; on a stream of its own, the stream's 4 MiB window times
    64 such streams. Now it closes the connection after 4 KiB of a hello, or
    16 KiB read in all.
    """

    def attack(port: int) -> tuple[int, bytes]:
        sock = _connect(port)
        sent, received = 0, b""
        chunk = encode(Frame(Kind.DATA, stream, b"x" * 4096))
        if stream:
            sock.sendall(encode(Frame(Kind.OPEN, stream, b"{}")))
        try:
            while sent < 4 * 1024 * 1024:
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    data = sock.recv(65536)
                    received += data
                    if not data:
                        break
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # reset by the agent: what we want
        finally:
            sock.close()
        return sent, received

    async def scenario() -> tuple[int, bytes]:
        async with agent_on_tcp() as (port, _writers):
            return await asyncio.to_thread(attack, port)

    sent, received = run(scenario())
    assert sent < 128 * 1024, f"the agent took {sent} bytes of a message before hello"
    frames = FrameDecoder().feed(received)
    assert any(f.kind is Kind.GOAWAY and refusal in f.reason for f in frames), frames


def test_a_long_hello_is_refused() -> None:
    """Attack: a `hello` line of 8 KiB (say, a token field used as a buffer) is not parsed at all."""

    def attack(port: int) -> bytes:
        sock = _connect(port)
        try:
            sock.sendall(_control({"op": "hello", "id": 1, "version": 3, "token": "y" * 8192}))
            sock.settimeout(5)
            received = b""
            while data := sock.recv(65536):
                received += data
            return received
        finally:
            sock.close()

    async def scenario() -> bytes:
        async with agent_on_tcp() as (port, _writers):
            return await asyncio.to_thread(attack, port)

    frames = FrameDecoder().feed(run(scenario()))
    assert any(f.kind is Kind.GOAWAY and "longer than 4096 bytes" in f.reason for f in frames), frames


def test_a_ping_flood_from_a_controller_that_never_reads_keeps_the_agent_bounded() -> None:
    """Attack: say hello, then send 200,000 PINGs and never read a byte.

    Before the fix every PING queued a PONG in the agent's transport (about
    3.4 MB here, and without end for a longer flood: the router's twin of
    this took 27 -> 150 MiB); now at most ``MAX_OWED`` bytes of PONGs wait.
    """
    pings = 200_000
    done, measured = threading.Event(), threading.Event()

    def attack(port: int) -> None:
        sock = _connect(port)
        try:
            sock.sendall(_control(encode_message(Hello(tokens=[TOKEN]), 1)))
            decoder, welcome = FrameDecoder(), list[Frame]()
            while not welcome:  # the last bytes this client reads
                welcome = [f for f in decoder.feed(sock.recv(65536)) if b'"welcome"' in f.payload]
            flood = b"".join(encode(Frame(Kind.PING, 0, i.to_bytes(8, "big"))) for i in range(1000))
            for _ in range(pings // 1000):
                sock.sendall(flood)
            done.set()
            measured.wait(30)  # keep the socket open (and unread) until the agent has been measured
        finally:
            done.set()
            sock.close()

    async def scenario() -> int:
        async with agent_on_tcp() as (port, writers):
            thread = asyncio.create_task(asyncio.to_thread(attack, port))
            loop = asyncio.get_running_loop()
            largest, last, still_since = 0, -1, loop.time()
            # Until the flood is sent and the agent's outbound buffer stopped changing for a while.
            while not (done.is_set() and loop.time() - still_since > 0.5):
                await asyncio.sleep(0.05)
                size = writers[0].transport.get_write_buffer_size() if writers else 0
                largest = max(largest, size)
                if size != last:
                    last, still_since = size, loop.time()
            measured.set()
            await thread
            return largest

    try:
        largest = run(scenario(), timeout=60)
    except SessionClosed:
        raise AssertionError("the agent ended the session instead of holding it bounded") from None
    assert largest <= 128 * 1024, f"the agent queued {largest} bytes of PONGs for a peer that never reads"
