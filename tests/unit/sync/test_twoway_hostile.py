"""Two-way sync against a hostile container: nothing is written, read or deleted outside the sync root.

The agent here is the real protocol server (``agent/server.py``) over memory
pipes, with its answers to ``tree`` and ``file.read`` replaced by what a
compromised app container (or a teammate's fake agent) would say. The CLI's
side is the real ``SyncSession._pull``, with the real ``AgentClient``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from innerloop.agent import server as agent_server
from innerloop.agent.supervisor import ChildReaper, Supervisor
from innerloop.config import Service
from innerloop.engine.plan import ServicePlan
from innerloop.k8s.connection import ClusterConnection
from innerloop.protocol.client import AgentClient
from innerloop.protocol.messages import FileData, FileRead, Message, Tree, TreeRequest
from innerloop.protocol.transport import memory_pipe
from innerloop.status.store import Store
from innerloop.sync.contained import LocalRoot, UnsafePath, local_mode, relative_parts
from innerloop.sync.session import Replica, SyncSession
from innerloop.sync.twoway import HomeSide, conflict_name

T = TypeVar("T")
TOKEN = "hostile-test-token"
PAYLOAD = b"#!/bin/sh\necho owned\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Hostile:
    """What the fake agent lists, serves and was asked for."""

    def __init__(self, listing: dict[str, str]) -> None:
        self.listing = listing
        self.reads: list[str] = []


@asynccontextmanager
async def hostile_agent(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AgentClient]:
    class HostileConnection(agent_server.Connection):
        async def _answer(self, message: Message) -> Message:
            if isinstance(message, TreeRequest):
                return Tree(root=message.root, files=dict(hostile.listing))
            if isinstance(message, FileRead):
                hostile.reads.append(message.path)
                return FileData(
                    root=message.root,
                    path=message.path,
                    mode=0o6777,  # setuid, setgid, sticky, world-writable
                    sha256=SHA,
                    data=base64.b64encode(PAYLOAD).decode(),
                )
            return await super()._answer(message)

    monkeypatch.setattr(agent_server, "Connection", HostileConnection)
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    supervisor = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], reaper=reaper, grace=1.0)
    server = agent_server.AgentServer(token=TOKEN, supervisor=supervisor, keepalive_interval=None)
    ours, theirs = memory_pipe()
    serving = asyncio.create_task(server.serve(theirs))
    client = await AgentClient.connect(ours, token=TOKEN, keepalive_interval=None)
    try:
        yield client
    finally:
        await client.close()
        await server.close()
        await serving
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()


def session(project: Path, lines: list[str]) -> SyncSession:
    config = Service.model_validate(
        {
            "manifests": {"files": ["k8s.yaml"]},
            "sync": [{"local": "src", "remote": "/app/src", "mode": "two-way"}],
        },
        by_alias=True,
    )
    plan = ServicePlan(
        name="api",
        docs=[],
        workload_kind="Deployment",
        workload_name="api",
        selector={},
        container="api",
        dev_mode=True,
    )
    return SyncSession(
        conn=cast(ClusterConnection, None),  # _pull talks to the agent only
        namespace="dev",
        service="api",
        plan=plan,
        token=TOKEN,
        root=project,
        config=config,
        store=Store(project="p", namespace="dev"),
        report=lines.append,
    )


def test_a_hostile_listing_writes_and_reads_nothing_outside_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the container lists ``../outside/hook.sh``, an absolute path, ``a/../../b``, a path through a
    symlinked folder that leaves the root, and a "conflict" on ``../secret`` (which made the CLI upload that
    local file). Each must be refused with one line, and the legitimate file must still come home."""
    project = tmp_path / "project"
    src = project / "src"
    src.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "secret").write_text("the developer's secret")
    (src / "escape").symlink_to(outside, target_is_directory=True)
    absolute = tmp_path / "abs"
    hostile = Hostile(
        {
            "../outside/hook.sh": SHA,
            str(absolute): SHA,
            "a/../../b": SHA,
            "escape/hook.sh": SHA,
            "../secret": SHA,
            "ok/new.sh": SHA,
            "ok/bad-sha": "/../../x",
        }
    )
    lines: list[str] = []
    sync = session(project, lines)
    replica = Replica(pod="api-0", sent=[{"../secret": "0" * 64}])  # as if a conflict on it had been recorded
    sync._replicas[replica.pod] = replica

    async def scenario() -> None:
        async with hostile_agent(hostile, monkeypatch) as client:
            await sync._pull(client, replica)
            await sync._pull(client, replica)  # a second pull says nothing new

    run(scenario())
    assert sorted(os.listdir(outside)) == []
    assert not absolute.exists()
    assert not (tmp_path / "b").exists()
    assert (tmp_path / "secret").read_text() == "the developer's secret"
    assert hostile.reads == ["ok/new.sh"]  # asked only for the legitimate file
    assert (src / "ok" / "new.sh").read_bytes() == PAYLOAD
    assert stat.S_IMODE((src / "ok" / "new.sh").stat().st_mode) == 0o755  # no setuid/setgid/sticky, no o+w
    refused = [line for line in lines if "refused" in line]
    assert len(refused) == 6, lines
    for path in ("../outside/hook.sh", str(absolute), "a/../../b", "escape/hook.sh", "../secret", "ok/bad-sha"):
        assert sum(repr(path) in line for line in refused) == 1, (path, refused)
    # Nothing of the local disk outside the root is marked to be sent to the container.
    assert all(not rel.startswith("..") and not rel.startswith("/") for _, rel in replica.dirty)


def test_a_conflict_copy_is_written_inside_the_root_with_a_clamped_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a conflict on a legitimate path with a container mode of 0o6777; the copy lands next to the
    file, 0o755, and the local version is the one pushed back."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("mine\n")
    lines: list[str] = []
    sync = session(project, lines)
    replica = Replica(pod="api-0", sent=[{"app.py": "0" * 64}])
    sync._replicas[replica.pod] = replica

    async def scenario() -> None:
        async with hostile_agent(Hostile({"app.py": SHA}), monkeypatch) as client:
            await sync._pull(client, replica)

    run(scenario())
    copy = project / "src" / conflict_name("app.py", SHA)
    assert copy.read_bytes() == PAYLOAD
    assert stat.S_IMODE(copy.stat().st_mode) == 0o755
    assert (project / "src" / "app.py").read_text() == "mine\n"
    assert replica.dirty == {(0, "app.py")}


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a//b", "a/", ".", "..", "a\\..\\b", "a\0b", 7]
)
def test_paths_that_could_leave_the_root_are_refused_by_their_spelling(path: object) -> None:
    with pytest.raises(UnsafePath):
        relative_parts(path)


def test_local_files_are_never_reached_through_a_symlink(tmp_path: Path) -> None:
    """Attack: a symlink inside the root (a folder to ~/.ssh, a file to a secret) is used to read or write
    outside it."""
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "id_rsa").write_text("key")
    (root / "ssh").symlink_to(elsewhere, target_is_directory=True)
    (root / "key").symlink_to(elsewhere / "id_rsa")
    files = LocalRoot(root)
    with pytest.raises(UnsafePath, match="symlink"):
        files.write("ssh/authorized_keys", b"x", 0o644)
    with pytest.raises(UnsafePath, match="symlink"):
        files.sha256("ssh/id_rsa")
    with pytest.raises(UnsafePath, match="symlink"):
        files.write("key", b"x", 0o644)
    assert files.sha256("key") is None
    assert files.delete("key") is False
    assert (root / "key").is_symlink()
    assert sorted(os.listdir(elsewhere)) == ["id_rsa"]
    assert (elsewhere / "id_rsa").read_text() == "key"


def test_home_side_reports_each_refused_path_once(tmp_path: Path) -> None:
    lines: list[str] = []
    home = HomeSide(tmp_path, report=lines.append, service="api")
    assert home.admit({"../x": SHA, "ok": SHA}) == {"ok": SHA}
    assert home.admit({"../x": SHA, "ok": SHA}) == {"ok": SHA}
    assert lines == ["api: refused '../x' from the container: '../x' contains '..'"]


@pytest.mark.parametrize(("mode", "expected"), [(0o100755, 0o755), (0o6777, 0o755), (0o4644, 0o644), (0o666, 0o644)])
def test_container_modes_are_clamped(mode: int, expected: int) -> None:
    assert local_mode(mode) == expected
