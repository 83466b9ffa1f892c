"""The agent's server and the CLI's ``AgentClient``, in one process over memory pipes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from innerloop.agent.server import AgentServer
from innerloop.agent.supervisor import ChildReaper, Supervisor
from innerloop.protocol.client import AgentClient, AgentDenied, AgentError, FileUpload, SyncBatch
from innerloop.protocol.frames import Frame, FrameDecoder, Kind, encode
from innerloop.protocol.messages import PROTOCOL_VERSION, Event, FileMeta, Hello, encode_message
from innerloop.protocol.session import SessionClosed
from innerloop.protocol.transport import memory_pipe

T = TypeVar("T")
TOKEN = "correct horse battery staple"
Connect = Callable[..., Awaitable[AgentClient]]


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@asynccontextmanager
async def agent(argv: list[str]) -> AsyncIterator[tuple[AgentServer, Connect]]:
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    supervisor = Supervisor(argv, reaper=reaper, grace=1.0)
    server = AgentServer(token=TOKEN, supervisor=supervisor, keepalive_interval=None)
    connections: list[asyncio.Task[None]] = []

    async def connect(token: str = TOKEN) -> AgentClient:
        ours, theirs = memory_pipe()
        connections.append(asyncio.create_task(server.serve(theirs)))
        return await AgentClient.connect(ours, token=token, keepalive_interval=None)

    try:
        yield server, connect
    finally:
        await server.close()
        await asyncio.gather(*connections)  # each ends when its session does
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_wrong_token_is_denied_and_does_not_disturb_the_controller() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (_server, connect):
            controller = await connect()
            with pytest.raises(AgentDenied, match="wrong token"):
                await connect("guess")
            assert (await controller.status()).state == "exited"
            await controller.close()

    run(scenario())


def test_the_right_token_replaces_the_previous_controller() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (server, connect):
            first = await connect()
            second = await connect()
            reason = await first.session.wait_closed()
            assert "another controller connected with the same token" in reason
            with pytest.raises(SessionClosed):
                await first.status()
            assert (await second.status()).restarts == 0
            assert server.controller is not None
            await second.close()

    run(scenario())


def test_other_protocol_versions_and_messages_before_hello_are_denied() -> None:
    async def handshake(server: AgentServer, message: dict[str, Any]) -> str:
        ours, theirs = memory_pipe()
        serving = asyncio.create_task(server.serve(theirs))
        payload = (json.dumps(message) + "\n").encode()
        ours.write(encode(Frame(Kind.DATA, 0, payload)))
        await serving
        frames = FrameDecoder().feed(await ours.read(1 << 16))
        return b"".join(frame.payload for frame in frames if frame.kind is Kind.DATA).decode()

    async def scenario() -> None:
        async with agent(SLEEPER) as (server, _connect):
            old = await handshake(server, encode_message(Hello(version=0, tokens=[TOKEN]), 1))
            assert '"op":"denied"' in old
            assert "protocol version 0 is not supported" in old
            early = await handshake(server, {"op": "process.status", "id": 1})
            assert "expected hello first" in early

    run(scenario())


def test_welcome_describes_the_agent() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (_server, connect):
            client = await connect()
            assert client.welcome.command == SLEEPER
            assert client.welcome.version == PROTOCOL_VERSION
            assert client.welcome.started_at > 0
            await client.close()

    run(scenario())


def test_tree_apply_and_the_sync_rule_restart(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "old.txt").write_text("old")
    marker = tmp_path / "started"
    app = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]  # exits at once

    async def scenario() -> None:
        async with agent(app) as (server, connect):
            client = await connect()
            await server.supervisor.start()
            event = await anext(client.events())
            assert event.kind == "process-started"
            event = await anext(client.events())
            assert (event.kind, event.exit_code) == ("process-exited", 0)

            big = bytes(range(256)) * 20_000  # 5 MB: several windows' worth
            local = tmp_path / "local.bin"
            local.write_bytes(big)
            local.chmod(0o640)
            done = await client.apply(
                SyncBatch(
                    root=str(root),
                    files=[
                        FileUpload.from_bytes("src/main.py", b"print(2)\n"),
                        FileUpload.from_file("data.bin", local),
                    ],
                    deletes=["old.txt"],
                )
            )
            assert (done.applied, done.deleted, done.started) == (2, 1, True)  # the exited app came back
            assert (root / "data.bin").read_bytes() == big
            assert (root / "data.bin").stat().st_mode & 0o777 == 0o640
            assert await client.tree(str(root)) == {
                "src/main.py": hashlib.sha256(b"print(2)\n").hexdigest(),
                "data.bin": hashlib.sha256(big).hexdigest(),
            }
            for _ in range(500):  # the restarted app writes its mark, then exits again
                if marker.read_text() == "xx":
                    break
                await asyncio.sleep(0.01)
            assert marker.read_text() == "xx"
            await client.close()

    run(scenario())


def test_rejected_batches_write_nothing_and_the_session_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()

    async def scenario() -> None:
        async with agent(SLEEPER) as (_server, connect):
            client = await connect()
            with pytest.raises(AgentError, match="could escape the sync root"):
                await client.apply(
                    SyncBatch(root=str(root), files=[FileUpload.from_bytes("../evil", b"x" * 3_000_000)])
                )
            assert not (tmp_path / "evil").exists()
            liar = FileUpload(
                meta=FileMeta(path="f", mode=0o644, size=4, sha256=hashlib.sha256(b"else").hexdigest()), source=b"data"
            )
            with pytest.raises(AgentError, match="does not match its sha256"):
                await client.apply(SyncBatch(root=str(root), files=[liar]))
            with pytest.raises(AgentError, match="does not exist"):
                await client.tree(str(tmp_path / "missing"))
            assert list(root.iterdir()) == []
            # the session survived all of it
            done = await client.apply(SyncBatch(root=str(root), files=[FileUpload.from_bytes("ok", b"fine")]))
            assert done.applied == 1
            await client.close()

    run(scenario())


def test_a_file_that_changes_while_it_is_sent_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    local = tmp_path / "growing.txt"
    local.write_bytes(b"short")

    async def scenario() -> None:
        async with agent(SLEEPER) as (_server, connect):
            client = await connect()
            upload = FileUpload.from_file("growing.txt", local)
            local.write_bytes(b"much longer now")
            with pytest.raises(AgentError, match=r"growing\.txt changed while it was being sent"):
                await client.apply(SyncBatch(root=str(root), files=[upload]))
            assert list(root.iterdir()) == []
            await client.close()

    run(scenario())


def test_restart_status_and_run_through_the_client() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (server, connect):
            client = await connect()
            first = await server.supervisor.start()
            restarted = await client.restart()
            assert restarted.pid != first
            status = await client.status()
            assert (status.state, status.pid, status.restarts) == ("running", restarted.pid, 1)
            # a slow `run` does not hold up other requests
            slow = asyncio.create_task(client.run(["sh", "-c", "sleep 0.3; echo $X"], env={"X": "from-env"}))
            await asyncio.sleep(0.05)
            assert (await client.status()).state == "running"
            done = await slow
            assert (done.exit_code, done.output) == (0, "from-env\n")
            await client.close()

    run(scenario())


def test_events_end_when_the_session_ends() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (server, connect):
            client = await connect()
            server.publish(Event(kind="custom", message="hello"))
            received = []

            async def consume() -> None:
                async for event in client.events():
                    received.append(event)

            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            await server.close("agent stopping")
            await consumer
            assert received == [Event(kind="custom", message="hello")]
            assert "agent stopping" in (client.session.close_reason or "")
            with pytest.raises(SessionClosed):
                await client.status()
            await client.close()

    run(scenario())


def test_a_silent_connection_is_dropped_after_the_hello_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("innerloop.agent.server.HELLO_TIMEOUT", 0.1)

    async def scenario() -> None:
        async with agent(SLEEPER) as (server, _connect):
            ours, theirs = memory_pipe()
            started = asyncio.get_running_loop().time()
            await server.serve(theirs)  # returns on its own: no hello came
            assert asyncio.get_running_loop().time() - started < 2
            assert await ours.read(1 << 16) != b""  # a GOAWAY, then
            assert await ours.read(1 << 16) == b""  # the connection is closed

    run(scenario())


def test_closing_the_server_ends_every_session_greeted_or_not() -> None:
    async def scenario() -> None:
        async with agent(SLEEPER) as (server, connect):
            client = await connect()
            _ours, theirs = memory_pipe()
            silent = asyncio.create_task(server.serve(theirs))
            await asyncio.sleep(0.05)
            await server.close("agent stopping")
            await asyncio.wait_for(silent, 1)
            assert "agent stopping" in await client.session.wait_closed()
            await client.close()

    run(scenario())
