"""Sessions over an in-memory pipe and a real socket pair: streams, flow control, keepalive."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from innerloop.protocol.frames import INITIAL_WINDOW, MAX_PAYLOAD, Frame, FrameDecoder, Kind, encode
from innerloop.protocol.session import (
    ControlChannel,
    Role,
    Session,
    SessionClosed,
    Stream,
    StreamReset,
)
from innerloop.protocol.transport import AsyncioByteStream, ByteStream, memory_pipe

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:  # a ceiling for a busy machine
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def socket_ends() -> tuple[ByteStream, ByteStream]:
    left, right = socket.socketpair()
    ends = []
    for sock in (left, right):
        reader, writer = await asyncio.open_connection(sock=sock)
        ends.append(AsyncioByteStream(reader, writer))
    return ends[0], ends[1]


async def pipe_ends() -> tuple[ByteStream, ByteStream]:
    return memory_pipe(limit=32 * 1024)


TRANSPORTS: dict[str, Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]] = {
    "memory": pipe_ends,
    "socketpair": socket_ends,
}


@asynccontextmanager
async def sessions(transport: str = "memory", **options: Any) -> AsyncIterator[tuple[Session, Session]]:
    client_io, agent_io = await TRANSPORTS[transport]()
    client = Session(client_io, role=Role.CLIENT, **options)
    agent = Session(agent_io, role=Role.AGENT, **options)
    async with client, agent:
        yield client, agent


def blob(size: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


async def read_all(stream: Stream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def echo_server(agent: Session, count: int) -> None:
    async def echo(stream: Stream) -> None:
        data = await read_all(stream)
        await stream.write(data[::-1])
        await stream.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(echo(await agent.accept()))


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_open_write_half_close_and_read_the_answer(transport: str) -> None:
    async def scenario() -> None:
        async with sessions(transport) as (client, agent):
            server = asyncio.create_task(echo_server(agent, 1))
            stream = await client.open(b"hdr")
            assert stream.id == 1
            await stream.write(b"hello world")
            await stream.close()  # half-close: the agent sees EOF, we can still read
            assert await read_all(stream) == b"dlrow olleh"
            assert stream.at_eof
            await server

    run(scenario())


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_many_concurrent_streams_carry_their_own_bytes(transport: str) -> None:
    count, size = 40, 300_000  # more than a window's worth in total, interleaved

    async def one(client: Session, seed: int) -> None:
        data = blob(size, seed)
        stream = await client.open()
        writer = asyncio.create_task(stream.write(data))
        answer = read_all(stream)
        await writer
        await stream.close()
        assert await answer == data[::-1]

    async def scenario() -> None:
        async with sessions(transport) as (client, agent):
            server = asyncio.create_task(echo_server(agent, count))
            async with asyncio.TaskGroup() as group:
                for seed in range(count):
                    group.create_task(one(client, seed))
            await server
            assert sorted(agent._streams) == [0]  # every finished stream was forgotten
            assert sorted(client._streams) == [0]

    run(scenario(), timeout=120)


def test_slow_reader_stalls_only_its_own_stream() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            slow_out = await client.open(b"slow")
            fast_out = await client.open(b"fast")
            slow_in, fast_in = await agent.accept(), await agent.accept()
            data = blob(3 * INITIAL_WINDOW, 1)
            slow_write = asyncio.create_task(slow_out.write(data))
            for _ in range(10_000):  # until the granted credit has arrived (at most 10 s)
                if len(slow_in._buffer) >= INITIAL_WINDOW:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.1)  # and nothing more comes
            # The writer used up its credit and waits; the receiver buffers no more than it granted.
            assert not slow_write.done()
            assert len(slow_in._buffer) == INITIAL_WINDOW
            # Meanwhile another stream flows freely over the same connection.
            fast_write = asyncio.create_task(fast_out.write(blob(2 * INITIAL_WINDOW, 2)))
            received_fast = bytearray()
            while len(received_fast) < 2 * INITIAL_WINDOW:
                received_fast += await fast_in.read()
            await fast_write
            assert bytes(received_fast) == blob(2 * INITIAL_WINDOW, 2)
            assert not slow_write.done()
            # The slow reader catches up; credit returns and the writer finishes.
            received = bytearray()
            while len(received) < len(data):
                received += await slow_in.read(50_000)
                assert len(slow_in._buffer) <= INITIAL_WINDOW
            await slow_write
            assert bytes(received) == data

    run(scenario())


def test_both_directions_at_full_speed_do_not_deadlock() -> None:
    # Each side writes far more than window and pipe buffer before reading anything back.
    async def scenario() -> None:
        async with sessions("socketpair") as (client, agent):
            a = await client.open()
            b = await agent.accept()
            data = blob(4 * INITIAL_WINDOW, 3)

            async def pump(stream: Stream) -> bytes:
                writer = asyncio.create_task(stream.write(data))
                received = bytearray()
                while len(received) < len(data):
                    received += await stream.read()
                await writer
                return bytes(received)

            got_a, got_b = await asyncio.gather(pump(a), pump(b))
            assert got_a == data
            assert got_b == data

    run(scenario())


def test_reset_fails_the_peer_but_not_the_session() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            doomed = await client.open()
            other = await client.open()
            doomed_in, other_in = await agent.accept(), await agent.accept()
            await doomed.write(b"partial")
            doomed_in.reset("disk full")
            with pytest.raises(StreamReset, match="reset by peer: disk full"):
                while True:  # the first write may still find credit; the reset arrives meanwhile
                    await doomed.write(b"more" * 1000)
                    await asyncio.sleep(0.01)
            with pytest.raises(StreamReset):
                await doomed.read()
            with pytest.raises(StreamReset, match="reset locally"):
                await doomed_in.read()
            await other.write(b"still fine")
            await other.close()
            assert await read_all(other_in) == b"still fine"

    run(scenario())


def test_a_blocked_writer_wakes_up_on_reset() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            stream = await client.open()
            peer = await agent.accept()
            writer = asyncio.create_task(stream.write(blob(2 * INITIAL_WINDOW, 4)))
            await asyncio.sleep(0.05)
            assert not writer.done()  # out of credit
            peer.reset()
            with pytest.raises(StreamReset):
                await writer

    run(scenario())


def test_context_manager_closes_on_success_and_resets_on_error() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            async with await client.open() as stream:
                await stream.write(b"done")
            assert await read_all(await agent.accept()) == b"done"
            with pytest.raises(ValueError, match="boom"):
                async with await client.open() as stream:
                    raise ValueError("boom")
            with pytest.raises(StreamReset, match="ValueError"):
                await (await agent.accept()).read()

    run(scenario())


def test_readexactly_reports_a_short_stream() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            stream = await client.open()
            await stream.write(b"12345")
            await stream.close()
            peer = await agent.accept()
            assert await peer.readexactly(3) == b"123"
            with pytest.raises(EOFError, match="2 bytes short of 4"):
                await peer.readexactly(4)

    run(scenario())


def test_ping_measures_a_round_trip() -> None:
    async def scenario() -> None:
        async with sessions("socketpair") as (client, _agent):
            rtt = await client.ping()
            assert 0 <= rtt < 1

    run(scenario())


def test_silent_peer_closes_the_session_after_the_keepalive_timeout() -> None:
    async def scenario() -> None:
        ours, theirs = memory_pipe()  # nobody ever answers on `theirs`
        session = Session(ours, role=Role.CLIENT, keepalive_interval=0.05, keepalive_timeout=0.3)
        started = asyncio.get_running_loop().time()
        async with session:
            stream = await session.open()
            reader = asyncio.create_task(stream.read())
            reason = await session.wait_closed()
            elapsed = asyncio.get_running_loop().time() - started
            assert "keepalive timeout" in reason
            assert 0.3 <= elapsed < 3.0  # not before the timeout; the upper bound allows for a busy machine
            with pytest.raises(SessionClosed, match="keepalive"):
                await reader
            with pytest.raises(SessionClosed):
                await session.open()
        # it did ping before giving up
        frames = FrameDecoder().feed(await theirs.read(1 << 20))
        assert any(frame.kind is Kind.PING for frame in frames)

    run(scenario())


def test_keepalive_keeps_a_live_session_open() -> None:
    async def scenario() -> None:
        # A timeout well above a busy machine's scheduling stalls, and an idle time of three timeouts.
        async with sessions(keepalive_interval=0.05, keepalive_timeout=0.5) as (client, agent):
            await asyncio.sleep(1.5)  # idle, but pings are answered
            assert not client.closed
            assert not agent.closed

    run(scenario())


def test_close_sends_goaway_with_the_reason_and_stops_owned_tasks() -> None:
    async def scenario() -> None:
        before = asyncio.all_tasks()
        async with sessions() as (client, agent):
            accepting = asyncio.create_task(agent.accept())
            await asyncio.sleep(0)
            await client.close("replaced by a new controller")
            assert "peer closed the session: replaced by a new controller" in await agent.wait_closed()
            with pytest.raises(SessionClosed, match="replaced"):
                await accepting
            with pytest.raises(SessionClosed):
                await client.ping()
        assert all(task.done() for task in client._tasks + agent._tasks)
        assert asyncio.all_tasks() == before

    run(scenario())


def test_eof_from_the_peer_closes_the_session() -> None:
    async def scenario() -> None:
        ours, theirs = memory_pipe()
        async with Session(ours, role=Role.AGENT) as session:
            await theirs.close()
            assert await session.wait_closed() == "connection closed by the peer"

    run(scenario())


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x42" + bytes(8), "unknown frame kind 0x42"),
        (encode(Frame(Kind.OPEN, 2)), "our side's range"),  # an agent session receiving an even id
        (encode(Frame(Kind.DATA, 9, b"x")), "never opened"),
        (encode(Frame(Kind.OPEN, 3)) + encode(Frame(Kind.OPEN, 1)), "ids must increase"),
    ],
)
def test_protocol_violations_close_the_session_with_a_goaway(raw: bytes, reason: str) -> None:
    async def scenario() -> None:
        ours, theirs = memory_pipe()
        async with Session(ours, role=Role.AGENT, keepalive_interval=None) as session:
            theirs.write(raw)
            closed = await session.wait_closed()
            assert closed.startswith("protocol error")
            assert reason in closed
        frames = FrameDecoder().feed(await theirs.read(1 << 16))
        assert frames[-1].kind is Kind.GOAWAY
        assert reason in frames[-1].reason

    run(scenario())


def test_a_peer_that_ignores_its_window_is_cut_off() -> None:
    async def scenario() -> None:
        ours, theirs = memory_pipe(limit=1 << 24)
        async with Session(ours, role=Role.AGENT, keepalive_interval=None) as session:
            theirs.write(encode(Frame(Kind.OPEN, 1)))
            chunk = b"x" * MAX_PAYLOAD
            for _ in range(INITIAL_WINDOW // MAX_PAYLOAD + 1):
                theirs.write(encode(Frame(Kind.DATA, 1, chunk)))
            assert "only 0 of window left" in await session.wait_closed()

    run(scenario())


def test_too_many_unaccepted_streams_are_reset() -> None:
    async def scenario() -> None:
        async with sessions(max_pending_streams=2) as (client, agent):
            streams = [await client.open() for _ in range(3)]
            with pytest.raises(StreamReset, match="too many streams"):
                await streams[2].read()
            assert (await agent.accept()).id == 1
            assert (await agent.accept()).id == 3

    run(scenario())


def test_control_channel_carries_large_and_many_messages_in_order() -> None:
    async def scenario() -> None:
        async with sessions() as (client, agent):
            sender, receiver = ControlChannel(client.control), ControlChannel(agent.control)
            big = {"op": "tree", "id": 1, "files": {f"src/f{i}.py": "0" * 64 for i in range(20_000)}}
            weird = {"op": "x", "path": os.fsdecode(b"caf\xe9.txt"), "text": "line\nbreak"}
            messages: list[dict[str, Any]] = [big, weird, *({"op": "n", "id": i} for i in range(500))]

            async def send_all() -> None:
                for message in messages:
                    await sender.send(message)

            sending = asyncio.create_task(send_all())
            for message in messages:
                assert await receiver.receive() == message
            await sending
            await client.close()
            assert await receiver.receive() is None

    run(scenario())
