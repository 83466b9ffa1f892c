"""``python -m innerloop.agent`` as a real process: sync, restart, deny, signals, seed.

The closest thing to a pod without a cluster: the agent is started exactly as
the dev-mode entrypoint would be, supervises a tiny HTTP app, and is driven
over TCP by the same ``AgentClient`` the CLI uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from innerloop.agent.main import app_environment, main, parse_listen
from innerloop.protocol.client import AgentClient, AgentDenied, FileUpload, SyncBatch
from innerloop.protocol.messages import token_sha256
from innerloop.protocol.transport import connect_tcp

TOKEN = "e2e-token"
AGENT = [sys.executable, "-m", "innerloop.agent", "run"]

# Reads its message once, at start: only a restart shows a synced change.
HTTP_APP = """
import http.server, pathlib, signal, sys
message = pathlib.Path("message.txt").read_bytes()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        self.wfile.write(message)

    def log_message(self, *args):
        pass

print(f"app serving {message.decode()}", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: object, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; the timeout is a ceiling for a busy machine, not a speed."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def http_get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    port: int
    http_port: int
    app_dir: Path
    log: Path
    start_seconds: float

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(HTTP_APP)
    (app_dir / "message.txt").write_text("v1")
    token_file = tmp_path / "token"
    token_file.write_text(token_sha256(TOKEN) + "\n")
    port, http_port = free_port(), free_port()
    log = tmp_path / "agent.log"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *AGENT,
                "--listen",
                f"127.0.0.1:{port}",
                "--token-sha256-file",
                str(token_file),
                "--",
                sys.executable,
                "app.py",
                str(http_port),
            ],
            cwd=app_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "listening on" in log.read_text())
        running = RunningAgent(process, port, http_port, app_dir, log, time.monotonic() - started)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def connect(agent: RunningAgent, token: str = TOKEN) -> AgentClient:
    return await AgentClient.connect(await connect_tcp("127.0.0.1", agent.port), token=token)


def test_sync_and_restart_change_what_the_app_serves(agent: RunningAgent) -> None:
    wait_for(lambda: http_get(agent.http_port) == "v1")

    async def scenario() -> float:
        client = await connect(agent)
        try:
            assert client.welcome.command[-2:] == ["app.py", str(agent.http_port)]
            before = await client.tree(str(agent.app_dir))
            assert set(before) == {"app.py", "message.txt"}
            done = await client.apply(
                SyncBatch(root=str(agent.app_dir), files=[FileUpload.from_bytes("message.txt", b"v2")])
            )
            assert (done.applied, done.started) == (1, False)
            assert await asyncio.to_thread(http_get, agent.http_port) == "v1"  # read at start only
            started = time.monotonic()
            restarted = await client.restart()
            while await asyncio.to_thread(http_get, agent.http_port) != "v2":
                assert time.monotonic() - started < 60, "the restarted app never served v2"
                await asyncio.sleep(0.01)
            serving_after = time.monotonic() - started
            status = await client.status()
            assert (status.state, status.pid, status.restarts) == ("running", restarted.pid, 1)
            with pytest.raises(AgentDenied, match="wrong token"):
                await connect(agent, "not-the-token")
            assert (await client.status()).pid == restarted.pid  # the controller was not disturbed
            return serving_after
        finally:
            await client.close()

    serving_after = asyncio.run(scenario())
    assert agent.process.poll() is None  # restarts never end the agent (the container)
    output = agent.output()
    # The app's own output passes through the agent unchanged, for `kubectl logs`.
    assert "app serving v1\n" in output
    assert "app serving v2\n" in output
    print(f"agent start {agent.start_seconds * 1000:.0f} ms; restart to serving {serving_after * 1000:.0f} ms")


def test_sigterm_stops_the_app_and_the_agent_exits_with_its_code(agent: RunningAgent) -> None:
    wait_for(lambda: http_get(agent.http_port) == "v1")

    async def app_pid() -> int:
        client = await connect(agent)
        try:
            pid = (await client.status()).pid
            assert pid is not None
            return pid
        finally:
            await client.close()

    pid = asyncio.run(app_pid())
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=60) == 3  # the app's SIGTERM handler exits 3
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "SIGTERM: stopping the app" in agent.output()


def test_an_app_killed_by_the_signal_gives_the_shell_exit_status(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token_sha256(TOKEN))
    log = tmp_path / "log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *AGENT,
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--token-sha256-file",
                str(token_file),
                "--",
                "sleep",
                "60",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "listening on" in log.read_text())
        wait_for(lambda: ("S", "sleep") in children(process.pid).values())  # the app runs
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*AGENT, "--listen", "127.0.0.1:1", "--token-sha256-file", str(tmp_path / "nope"), "--", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert "cannot read the token file" in result.stderr


def test_listen_address_parsing() -> None:
    assert parse_listen("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("7000", "host:", "host:port", "h:70000"):
        with pytest.raises(Exception, match="HOST:PORT"):
            parse_listen(bad)


def test_the_app_does_not_inherit_the_agents_runtime_environment() -> None:
    container = {
        "PATH": "/usr/bin",
        "PYTHONHOME": "/.innerloop",
        "PYTHONDONTWRITEBYTECODE": "1",
        "INNERLOOP_RUNTIME_ENV": "PYTHONDONTWRITEBYTECODE,PYTHONHOME",
        "APP_SETTING": "x",
    }
    assert app_environment(container, "/.innerloop") == {"PATH": "/usr/bin", "APP_SETTING": "x"}
    # Without the list, a PYTHONHOME pointing at the agent's runtime still goes; the app's own stays.
    assert app_environment({"PYTHONHOME": "/.innerloop/"}, "/.innerloop") == {}
    assert app_environment({"PYTHONHOME": "/usr/local"}, "/.innerloop") == {"PYTHONHOME": "/usr/local"}


def test_app_and_run_commands_get_the_cleaned_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token_sha256(TOKEN))
    env_dump = tmp_path / "env"
    log = tmp_path / "log"
    port = free_port()
    app = f"import os, json, time; open({str(env_dump)!r}, 'w').write(json.dumps(dict(os.environ))); time.sleep(60)"
    environment = {**os.environ, "INNERLOOP_RUNTIME_ENV": "AGENT_ONLY", "AGENT_ONLY": "1", "SHARED": "yes"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *AGENT,
                "--listen",
                f"127.0.0.1:{port}",
                "--token-sha256-file",
                str(token_file),
                "--",
                sys.executable,
                "-c",
                app,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        wait_for(env_dump.exists)
        wait_for(lambda: env_dump.read_text().endswith("}"))
        seen = json.loads(env_dump.read_text())
        assert seen["SHARED"] == "yes"
        assert "AGENT_ONLY" not in seen
        assert "INNERLOOP_RUNTIME_ENV" not in seen

        async def run_env() -> str:
            client = await AgentClient.connect(await connect_tcp("127.0.0.1", port), token=TOKEN)
            try:
                return (
                    await client.run(["sh", "-c", "echo ${AGENT_ONLY:-unset} $SHARED $EXTRA"], env={"EXTRA": "e"})
                ).output
            finally:
                await client.close()

        assert asyncio.run(run_env()) == "unset yes e\n"
    finally:
        process.kill()
        process.wait()


def test_seed_copies_a_tree_keeping_modes_and_symlinks(tmp_path: Path) -> None:
    source, destination = tmp_path / "image-files", tmp_path / "empty-dir"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg/tool").write_text("#!/bin/sh\n")
    (source / "pkg/tool").chmod(0o750)
    (source / "secret").write_text("s")
    (source / "secret").chmod(0o600)
    (source / "link").symlink_to("pkg/tool")
    destination.mkdir()  # an emptyDir exists before the init container runs
    assert main(["seed", str(source), str(destination)]) == 0
    assert stat.S_IMODE((destination / "pkg/tool").stat().st_mode) == 0o750
    assert stat.S_IMODE((destination / "secret").stat().st_mode) == 0o600
    assert os.readlink(destination / "link") == "pkg/tool"
    assert (destination / "pkg/tool").read_text() == "#!/bin/sh\n"


def children(pid: int) -> dict[int, tuple[str, str]]:
    """``{pid: (state, command name)}`` of a process's children, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid:
            found[int(entry.name)] = (state, name)
    return found


def test_as_pid_1_the_agent_reaps_orphans(tmp_path: Path) -> None:
    """In a new pid namespace the agent is PID 1, as in a container: orphans become its children."""
    token_file = tmp_path / "token"
    token_file.write_text(token_sha256(TOKEN))
    # The subshell exits at once; its background loop is orphaned to PID 1 and exits when told to.
    release = tmp_path / "release"
    app = f"(while [ ! -e {release} ]; do sleep 0.05; done &); exec sleep 60"
    command = ["unshare", "--pid", "--fork", "--kill-child", *AGENT, "--listen", f"127.0.0.1:{free_port()}"]
    command += ["--token-sha256-file", str(token_file), "--", "sh", "-c", app]
    log = tmp_path / "log"
    with log.open("wb") as out:
        unshare = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening on" in log.read_text() or unshare.poll() is not None)
        if unshare.poll() is not None:
            pytest.skip(f"cannot create a pid namespace here: {log.read_text().strip()}")
        (agent_pid,) = children(unshare.pid)
        wait_for(lambda: len(children(agent_pid)) == 2)  # the app and the orphan
        app_pid, orphan = sorted(children(agent_pid))
        release.touch()
        wait_for(lambda: orphan not in children(agent_pid))  # exited *and* reaped: no zombie left
        assert children(agent_pid) == {app_pid: ("S", "sleep")}
        # unshare ignores SIGTERM while it waits; the container runtime signals PID 1 itself.
        os.kill(agent_pid, signal.SIGTERM)
        assert unshare.wait(timeout=60) == 128 + signal.SIGTERM  # sleep dies of the forwarded SIGTERM
    finally:
        if unshare.poll() is None:
            unshare.kill()  # --kill-child takes the namespace down with it
            unshare.wait()
