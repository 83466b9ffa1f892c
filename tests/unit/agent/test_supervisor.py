"""The supervisor with real child processes: restarts, exits, signals, one-off commands."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from innerloop.agent.supervisor import ChildReaper, StartError, Supervisor, describe_exit, shell_exit_code
from innerloop.protocol.messages import Event

T = TypeVar("T")

# Answers every connection with its pid; exits 3 on SIGTERM.
SERVER_APP = """
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
while True:
    conn, _ = sock.accept()
    conn.sendall(f"{os.getpid()}\\n".encode())
    conn.close()
"""

STUBBORN_APP = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ask_pid(port: int, timeout: float = 5.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        if line:
            return int(line)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def zombie_children() -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry.name))
    return zombies


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def supervised(
    argv: list[str], body: Callable[[Supervisor, list[Event]], Awaitable[None]], *, grace: float = 2.0
) -> None:
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    events: list[Event] = []
    supervisor = Supervisor(argv, reaper=reaper, grace=grace, on_event=events.append)
    try:
        await body(supervisor, events)
    finally:
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()


def script(tmp_path: Path, text: str, name: str = "app.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_restart_changes_the_pid_and_the_new_process_serves(tmp_path: Path) -> None:
    port = free_port()

    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        first = await supervisor.start()
        assert await ask_pid(port) == first
        pid, ms = await supervisor.restart()
        assert pid != first
        assert not alive(first)
        assert await ask_pid(port) == pid
        assert 0 < ms < 2000
        status = supervisor.status()
        assert (status.state, status.pid, status.restarts, status.exit_code) == ("running", pid, 1, 3)
        # The stop we caused is no news: only starts were reported.
        assert [(e.kind, e.pid) for e in events] == [("process-started", first), ("process-started", pid)]
        assert zombie_children() == []

    run(supervised([sys.executable, script(tmp_path, SERVER_APP), str(port)], body))


def test_an_app_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        first = await supervisor.start()
        await asyncio.sleep(0.3)  # let it install its SIGTERM handler
        pid, ms = await supervisor.restart()
        assert ms >= 300
        assert not alive(first)
        assert alive(pid)
        assert supervisor.status().exit_code == -signal.SIGKILL

    run(supervised([sys.executable, script(tmp_path, STUBBORN_APP)], body, grace=0.3))


def test_a_cancelled_restart_still_brings_the_app_back(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        first = await supervisor.start()
        await asyncio.sleep(0.3)  # let it install its SIGTERM handler: the stop takes the whole grace
        restart = asyncio.create_task(supervisor.restart())
        await asyncio.sleep(0.05)
        restart.cancel()  # the controller went away mid-restart
        with pytest.raises(asyncio.CancelledError):
            await restart
        status = supervisor.status()
        assert status.state == "running"
        assert status.pid is not None
        assert status.pid != first
        assert alive(status.pid)
        assert not alive(first)

    run(supervised([sys.executable, script(tmp_path, STUBBORN_APP)], body, grace=0.3))


def test_restart_kills_the_whole_process_group(tmp_path: Path) -> None:
    app = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""
    marker = tmp_path / "grandchild.pid"

    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        await supervisor.start()
        await until(lambda: marker.exists() and marker.read_text() != "")
        grandchild = int(marker.read_text())
        assert alive(grandchild)
        marker.unlink()
        await supervisor.restart()
        await until(lambda: not alive(grandchild))

    run(supervised([sys.executable, script(tmp_path, app), str(marker)], body))


def test_an_app_that_exits_is_reported_and_started_again_on_request(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    app = f"""
import sys
from pathlib import Path
p = Path({str(counter)!r})
p.write_text(str(int(p.read_text() if p.exists() else "0") + 1))
sys.exit(4)
"""

    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        pid = await supervisor.start()
        await until(lambda: supervisor.status().state == "exited")
        assert supervisor.status().exit_code == 4
        assert supervisor.status().pid is None
        assert events[-1] == Event(kind="process-exited", pid=pid, exit_code=4, message="exited with code 4")
        assert await supervisor.start_if_exited()  # the next sync brings it back
        await until(lambda: counter.read_text() == "2")
        await until(lambda: supervisor.status().state == "exited")
        await supervisor.restart()  # so does a restart request
        await until(lambda: counter.read_text() == "3")
        await until(lambda: supervisor.status().state == "exited")
        assert zombie_children() == []  # every exit was collected

    run(supervised([sys.executable, script(tmp_path, app)], body))


def test_start_if_exited_leaves_a_running_app_alone(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        pid = await supervisor.start()
        assert not await supervisor.start_if_exited()
        assert supervisor.status().pid == pid

    run(supervised([sys.executable, script(tmp_path, STUBBORN_APP)], body))


def test_stop_forwards_the_signal_and_returns_the_apps_exit_code(tmp_path: Path) -> None:
    port = free_port()

    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        pid = await supervisor.start()
        await ask_pid(port)  # up, with its handler installed
        assert await supervisor.stop(signal.SIGTERM) == 3
        assert not alive(pid)
        assert supervisor.status().state == "exited"

    run(supervised([sys.executable, script(tmp_path, SERVER_APP), str(port)], body))


def test_a_command_that_cannot_start_is_reported_not_fatal(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, events: list[Event]) -> None:
        with pytest.raises(StartError, match="cannot start /nonexistent/app"):
            await supervisor.start()
        assert supervisor.status().state == "exited"
        assert supervisor.status().exit_code == 127
        assert events[-1].kind == "process-exited"

    run(supervised(["/nonexistent/app"], body))


class TestRun:
    def test_output_exit_code_cwd_and_env(self, tmp_path: Path) -> None:
        async def body(supervisor: Supervisor, events: list[Event]) -> None:
            done = await supervisor.run(
                ["sh", "-c", 'echo "out $GREETING $(pwd)"; echo err >&2; exit 5'],
                cwd=str(tmp_path),
                env={"GREETING": "hi"},
            )
            assert done.exit_code == 5
            assert done.output == f"out hi {tmp_path}\nerr\n"
            assert done.ms > 0

        run(supervised(["true"], body))

    def test_timeout_kills_the_command(self) -> None:
        async def body(supervisor: Supervisor, events: list[Event]) -> None:
            done = await supervisor.run(["sh", "-c", "echo started; sleep 30"], timeout=0.3)
            assert done.exit_code == -signal.SIGKILL
            assert done.output.startswith("started\n")
            assert "killed after the 0.3s timeout" in done.output
            assert done.ms < 3000

        run(supervised(["true"], body))

    def test_background_children_do_not_hold_the_answer(self) -> None:
        async def body(supervisor: Supervisor, events: list[Event]) -> None:
            started = asyncio.get_running_loop().time()
            done = await supervisor.run(["sh", "-c", "sleep 30 & echo bye"])
            assert done.exit_code == 0
            assert done.output == "bye\n"
            assert asyncio.get_running_loop().time() - started < 3

        run(supervised(["true"], body))

    def test_output_keeps_the_last_64_kib(self) -> None:
        async def body(supervisor: Supervisor, events: list[Event]) -> None:
            done = await supervisor.run([sys.executable, "-c", "print('a' * 100000 + 'END')"])
            assert len(done.output) == 64 * 1024
            assert done.output.endswith("aEND\n")

        run(supervised(["true"], body))

    def test_missing_command_is_exit_127(self) -> None:
        async def body(supervisor: Supervisor, events: list[Event]) -> None:
            done = await supervisor.run(["/no/such/tool"])
            assert done.exit_code == 127
            assert "cannot run /no/such/tool" in done.output

        run(supervised(["true"], body))


def test_exit_code_helpers() -> None:
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert shell_exit_code(-9) == 137
    assert shell_exit_code(2) == 2
