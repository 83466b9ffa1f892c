"""Starting and stopping daemons by pid file, with harmless stand-in processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from innerloop.cluster.components import Component
from innerloop.cluster.daemons import Daemons, PidFile, process_start_time


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s")
        time.sleep(0.01)


def state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()[0]


def pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


class TestProcessStartTime:
    def test_running_process(self, sleeper: subprocess.Popen[bytes]) -> None:
        started = process_start_time(sleeper.pid)
        assert started is not None
        assert started.isdigit()
        # Clock ticks since boot: a child starts no earlier than this test process.
        own = process_start_time(os.getpid())
        assert own is not None
        assert int(started) >= int(own)
        assert process_start_time(sleeper.pid) == started

    def test_missing_process(self) -> None:
        assert process_start_time(pid_max() + 1) is None

    def test_zombie_counts_as_gone(self) -> None:
        proc = subprocess.Popen(["true"])
        try:
            wait_for(lambda: state(proc.pid) == "Z")
            assert process_start_time(proc.pid) is None
        finally:
            proc.wait()

    def test_command_name_with_spaces_and_parentheses(self, tmp_path: Path) -> None:
        odd = tmp_path / "a b) c ("
        odd.symlink_to("/bin/sleep")
        proc = subprocess.Popen([str(odd), "30"])
        try:
            wait_for(lambda: "a b) c (" in Path(f"/proc/{proc.pid}/stat").read_text())
            started = process_start_time(proc.pid)
            assert started is not None
            assert started.isdigit()
            own = process_start_time(os.getpid())
            assert own is not None
            assert int(started) >= int(own)
        finally:
            proc.kill()
            proc.wait()


class TestPidFile:
    def test_records_pid_and_start_time(self, tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
        pf = PidFile(path=tmp_path / "run" / "x.pid")
        pf.write(sleeper.pid)
        assert pf.path.read_text() == f"{sleeper.pid} {process_start_time(sleeper.pid)}\n"
        assert pf.running_pid() == sleeper.pid

    def test_not_running_once_the_process_is_gone(self, tmp_path: Path) -> None:
        proc = subprocess.Popen(["sleep", "30"])
        pf = PidFile(path=tmp_path / "x.pid")
        pf.write(proc.pid)
        assert pf.running_pid() == proc.pid
        proc.kill()
        proc.wait()
        assert pf.running_pid() is None

    def test_reused_pid_with_another_start_time_is_not_ours(
        self, tmp_path: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        started = process_start_time(sleeper.pid)
        assert started is not None
        pf = PidFile(path=tmp_path / "x.pid")
        pf.path.write_text(f"{sleeper.pid} {int(started) - 1}\n")
        assert pf.running_pid() is None

    @pytest.mark.parametrize("content", ["", "garbage\n", "123\n", "1 2 3\n"])
    def test_malformed_file(self, tmp_path: Path, content: str) -> None:
        pf = PidFile(path=tmp_path / "x.pid")
        pf.path.write_text(content)
        assert pf.running_pid() is None

    def test_missing_file(self, tmp_path: Path) -> None:
        assert PidFile(path=tmp_path / "nope.pid").running_pid() is None


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(run_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    yield d
    for pid_file in (tmp_path / "run").glob("*.pid"):
        d.stop(pid_file.stem, grace_s=0.5)


SLEEP = Component(name="sleeper", argv=["sleep", "30"])
BOOM = Component(name="boom", argv=["sh", "-c", "echo starting; echo boom >&2; exit 3"])


class TestDaemons:
    def test_start_runs_in_its_own_session_and_records_the_pid(self, daemons: Daemons, tmp_path: Path) -> None:
        pid = daemons.start(SLEEP)
        assert daemons.running("sleeper") == pid
        assert os.getsid(pid) == pid
        assert (tmp_path / "run" / "sleeper.pid").read_text().split()[0] == str(pid)
        assert (tmp_path / "logs" / "sleeper.log").exists()
        assert daemons.exited_early("sleeper") is None

    def test_start_twice_keeps_the_running_process(self, daemons: Daemons) -> None:
        first = daemons.start(SLEEP)
        assert daemons.start(SLEEP) == first
        assert daemons.running("sleeper") == first

    def test_stop(self, daemons: Daemons, tmp_path: Path) -> None:
        pid = daemons.start(SLEEP)
        assert daemons.stop("sleeper") is True
        assert daemons.running("sleeper") is None
        assert process_start_time(pid) is None
        assert not (tmp_path / "run" / "sleeper.pid").exists()

    def test_stop_when_not_running(self, daemons: Daemons, tmp_path: Path) -> None:
        assert daemons.stop("sleeper") is False
        stale = tmp_path / "run" / "sleeper.pid"
        stale.parent.mkdir(parents=True)
        stale.write_text(f"{pid_max() + 1} 12345\n")
        assert daemons.stop("sleeper") is False
        assert not stale.exists()

    def test_stop_kills_a_daemon_that_ignores_sigterm(self, daemons: Daemons) -> None:
        stubborn = Component(
            name="stubborn",
            argv=[
                sys.executable,
                "-c",
                "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ready', flush=True)\n"
                "time.sleep(30)\n",
            ],
        )
        pid = daemons.start(stubborn)
        wait_for(lambda: "ready" in daemons.log("stubborn").read_text())
        started = time.monotonic()
        assert daemons.stop("stubborn", grace_s=0.3) is True
        assert time.monotonic() - started >= 0.3
        assert process_start_time(pid) is None
        assert daemons.running("stubborn") is None

    def test_exited_early_explains_with_the_log_tail(self, daemons: Daemons) -> None:
        daemons.start(BOOM)
        wait_for(lambda: daemons.running("boom") is None)
        explanation = daemons.exited_early("boom")
        assert explanation == "starting\nboom"

    def test_exited_early_keeps_only_the_last_lines(self, daemons: Daemons) -> None:
        chatty = Component(name="chatty", argv=["sh", "-c", "for i in $(seq 1 40); do echo line $i; done; exit 1"])
        daemons.start(chatty)
        wait_for(lambda: daemons.running("chatty") is None)
        explanation = daemons.exited_early("chatty")
        assert explanation is not None
        assert explanation.splitlines() == [f"line {i}" for i in range(29, 41)]

    def test_exited_early_without_a_log(self, daemons: Daemons) -> None:
        assert daemons.exited_early("never-started") == ""

    def test_restart_appends_to_the_log(self, daemons: Daemons) -> None:
        daemons.start(BOOM)
        wait_for(lambda: daemons.running("boom") is None)
        daemons.start(BOOM)
        wait_for(lambda: daemons.running("boom") is None)
        assert daemons.log("boom").read_text().splitlines() == ["starting", "boom", "starting", "boom"]

    def test_environment_is_passed(self, daemons: Daemons) -> None:
        echo = Component(name="echo", argv=["sh", "-c", 'echo "greeting=$GREETING"'])
        daemons.start(echo, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GREETING": "hello"})
        wait_for(lambda: daemons.running("echo") is None)
        assert daemons.log("echo").read_text() == "greeting=hello\n"

    def test_unrelated_process_with_the_recorded_pid_is_never_stopped(
        self, daemons: Daemons, tmp_path: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        started = process_start_time(sleeper.pid)
        assert started is not None
        pid_file = tmp_path / "run" / "sleeper.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{sleeper.pid} {int(started) + 1}\n")
        assert daemons.running("sleeper") is None
        assert daemons.stop("sleeper") is False
        assert sleeper.poll() is None, "an unrelated process was signalled"
