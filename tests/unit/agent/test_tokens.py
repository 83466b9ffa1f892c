"""Which tokens open the agent: the token file holds a hash, hello rotates it, earlier tokens stop working.

The attacker is a teammate with the documented Role: they read (and may
rewrite) the token Secret, which the agent sees as its token file.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from innerloop.agent.main import read_token_sha256
from innerloop.agent.server import AgentServer
from innerloop.agent.supervisor import ChildReaper, Supervisor
from innerloop.protocol.client import AgentClient, AgentDenied
from innerloop.protocol.messages import token_sha256
from innerloop.protocol.transport import memory_pipe

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
Connect = Callable[..., Awaitable[AgentClient]]


@asynccontextmanager
async def agent(token_file: Path) -> AsyncIterator[tuple[AgentServer, Connect]]:
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    supervisor = Supervisor(SLEEPER, reaper=reaper, grace=1.0)
    server = AgentServer(
        trusted=functools.partial(read_token_sha256, str(token_file)), supervisor=supervisor, keepalive_interval=None
    )
    tasks: list[asyncio.Task[None]] = []

    async def connect(*tokens: str, rotate: str | None = None) -> AgentClient:
        ours, theirs = memory_pipe()
        tasks.append(asyncio.create_task(server.serve(theirs)))
        return await AgentClient.connect(ours, tokens=tokens, rotate=rotate, keepalive_interval=None)

    try:
        yield server, connect
    finally:
        await server.close()
        await asyncio.gather(*tasks)
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 10)

    asyncio.run(bounded())


def test_what_the_secret_holds_does_not_open_the_agent(tmp_path: Path) -> None:
    """Attack: read the token Secret (the Role allows it) and present what it holds.

    Before the fix the Secret held the token itself: reading it was enough to
    take over the agent and run commands in the container.
    """
    token_file = tmp_path / "sha256"
    token_file.write_text(token_sha256("the CLI's token"))

    async def scenario() -> None:
        async with agent(token_file) as (_server, connect):
            with pytest.raises(AgentDenied, match="wrong token"):
                await connect(token_file.read_text())
            await (await connect("the CLI's token")).close()

    run(scenario())


def test_a_rotated_agent_refuses_the_earlier_token_at_once(tmp_path: Path) -> None:
    """Attack: a token an earlier `up` used (leaked, or read from an old plain-text Secret) is replayed.

    The newer `up` greets with both and rotates: from then on only its own
    token opens the agent, with no pod restart and no kubelet refresh.
    """
    token_file = tmp_path / "sha256"
    token_file.write_text(token_sha256("up-1"))

    async def scenario() -> None:
        async with agent(token_file) as (_server, connect):
            client = await connect("up-2", "up-1", rotate=token_sha256("up-2"))  # the Secret still says up-1
            await client.close()
            with pytest.raises(AgentDenied, match="wrong token"):
                await connect("up-1")
            await (await connect("up-2")).close()

    run(scenario())


def test_the_token_file_is_read_again_until_a_controller_rotated(tmp_path: Path) -> None:
    """A pod that outlived an `up` follows the Secret the next `up` wrote (the kubelet updates it in place)."""
    token_file = tmp_path / "sha256"
    token_file.write_text(token_sha256("up-1"))

    async def scenario() -> None:
        async with agent(token_file) as (_server, connect):
            token_file.write_text(token_sha256("up-2"))
            await (await connect("up-2")).close()

    run(scenario())


def test_rewriting_the_secret_does_not_gain_a_rotated_agent(tmp_path: Path) -> None:
    """Attack: patch the token Secret with the hash of one's own token, then connect.

    Once the controller rotated, the agent trusts only what it was told over
    the authenticated session; the file no longer counts.
    """
    token_file = tmp_path / "sha256"
    token_file.write_text(token_sha256("ours"))

    async def scenario() -> None:
        async with agent(token_file) as (_server, connect):
            ours = await connect("ours", rotate=token_sha256("ours"))
            token_file.write_text(token_sha256("the teammate's"))
            with pytest.raises(AgentDenied, match="wrong token"):
                await connect("the teammate's")
            assert not ours.session.closed  # undisturbed
            await ours.status()
            await ours.close()

    run(scenario())


def test_an_unreadable_token_file_denies_with_the_reason(tmp_path: Path) -> None:
    token_file = tmp_path / "sha256"
    token_file.write_text("not a hash")

    async def scenario() -> None:
        async with agent(token_file) as (_server, connect):
            with pytest.raises(AgentDenied, match="cannot read its token file"):
                await connect("anything")

    run(scenario())
