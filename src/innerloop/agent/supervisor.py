"""Run the app as a child of the agent, restart it in place, and behave as PID 1.

In dev mode the agent is the container's entrypoint, so restarting the app
must never end the container: the kubelet would count a restart and, after a
few fast ones, back off (CrashLoopBackOff). The agent stays and restarts the
app itself: SIGTERM to the app's process group, SIGKILL after a grace period,
start again. An app that exits on its own leaves the agent running; the exit
is reported as an event and the next sync (or restart request) starts it.

PID 1 duties: the kernel delivers no signal to PID 1 that it has no handler
for, so the agent handles SIGTERM/SIGINT and forwards them; and orphans are
re-parented to PID 1, so ``ChildReaper`` reaps every child on SIGCHLD, not
just ours. That is also why children are started with ``subprocess.Popen``
and not asyncio's subprocess API: asyncio's child watcher waits for its own
pids only, and a reaper that takes ``waitpid(-1)`` would steal their status.

The app inherits the agent's stdout and stderr: its output reaches
``kubectl logs`` byte for byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from innerloop.agent.log import log
from innerloop.protocol.messages import Event, ProcessState, ProcessStatus, RunDone

RUN_OUTPUT_LIMIT = 64 * 1024
# After a `run` command exits, how long to keep reading output that its
# leftover background children may still write to the shared pipe.
RUN_OUTPUT_LINGER = 0.5


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def shell_exit_code(code: int) -> int:
    """The exit status a shell would report: 128+N for a process killed by signal N."""
    return 128 - code if code < 0 else code


@dataclass(eq=False)
class Child:
    pid: int
    popen: subprocess.Popen[bytes]
    exited: asyncio.Future[int]  # exit code, negative for a signal


class ChildReaper:
    """Collects the exit status of children on SIGCHLD.

    With ``reap_all`` (the agent's mode: it may be PID 1) every child is
    reaped, orphans included; otherwise only the ones ``spawn`` started, so a
    test process's other children are left alone.
    """

    def __init__(self, *, reap_all: bool) -> None:
        self._reap_all = reap_all
        self._children: dict[int, Child] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Child:
        """Start ``argv`` in its own session and process group; raises OSError if it cannot start.

        Standard streams default to the agent's own (the app's output goes to ``kubectl logs``).
        """
        if self._loop is None:
            raise RuntimeError("ChildReaper.install() must run first")
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
        )
        child = Child(pid=process.pid, popen=process, exited=self._loop.create_future())
        self._children[child.pid] = child
        self.reap()  # it may have exited already; SIGCHLD would only be handled later anyway
        return child

    def reap(self) -> None:
        if self._reap_all:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                self._exited(pid, status)
        else:
            for pid in list(self._children):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if done:
                    self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        child = self._children.pop(pid, None)
        if child is None:
            return  # an orphan we inherited as PID 1: reaping it was the point
        code = os.waitstatus_to_exitcode(status)
        child.popen.returncode = code  # so Popen never waits for a pid we already reaped
        if not child.exited.done():
            child.exited.set_result(code)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pid, sig)


class StartError(Exception):
    """The app command could not be started (not found, not executable, ...)."""


class Supervisor:
    """The app process: start, restart, stop, status, and one-off ``run`` commands."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        reaper: ChildReaper,
        grace: float = 5.0,
        on_event: Callable[[Event], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("the app command is empty")
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)  # for the app and `run` commands
        self.grace = grace
        self.on_event = on_event
        self._reaper = reaper
        self._lock = asyncio.Lock()
        self._child: Child | None = None
        self._state: ProcessState = "exited"
        self._exit_code: int | None = None
        self._restarts = 0
        self._stopping = False  # an exit we caused is not news

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            state=self._state,
            pid=self._child.pid if self._child is not None and self._state != "exited" else None,
            exit_code=self._exit_code,
            restarts=self._restarts,
        )

    @property
    def pid(self) -> int | None:
        return self.status().pid

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # -- the app ------------------------------------------------------------

    async def start(self) -> int:
        """Start the app (it must not be running); returns its pid."""
        async with self._lock:
            return self._start()

    async def start_if_exited(self) -> bool:
        """Start the app if it exited on its own (the sync rule); True if it was started."""
        async with self._lock:
            if self._state != "exited":
                return False
            self._start()
            return True

    async def restart(self) -> tuple[int, float]:
        """Stop the app (SIGTERM, SIGKILL after ``grace``) and start it again: ``(pid, ms)``.

        A restart runs to its end even if the caller is cancelled meanwhile (the
        controller disconnected): an app left stopped would be worse than a late
        answer. The cancellation is re-raised once the app runs again.
        """
        cancelled = False
        async with self._lock:
            started = time.monotonic()
            self._state = "restarting"
            self._stopping = True
            try:
                while True:
                    try:
                        await self._stop(signal.SIGTERM, self.grace)
                        break
                    except asyncio.CancelledError:
                        cancelled = True
            finally:
                self._stopping = False
            pid = self._start()
            self._restarts += 1
            ms = (time.monotonic() - started) * 1000
        log(f"app restarted in {ms:.1f} ms (pid {pid})")
        if cancelled:
            raise asyncio.CancelledError
        return pid, ms

    async def stop(self, sig: int = signal.SIGTERM, *, grace: float | None = None) -> int | None:
        """Send ``sig`` to the app's group and wait for it (SIGKILL after ``grace``, if given).

        Returns the app's last exit code (None if it never ran).
        """
        async with self._lock:
            self._stopping = True
            try:
                await self._stop(sig, grace)
            finally:
                self._stopping = False
            return self._exit_code

    def kill(self) -> None:
        """SIGKILL the app's group now (a second Ctrl-C); ``stop()`` then returns."""
        if self._child is not None and not self._child.exited.done():
            _kill_group(self._child.pid, signal.SIGKILL)

    def _start(self) -> int:
        try:
            child = self._reaper.spawn(self.argv, env=self.env)
        except OSError as exc:
            self._state = "exited"
            self._exit_code = 126 if isinstance(exc, PermissionError) else 127
            message = f"cannot start {self.argv[0]}: {exc.strerror or exc}"
            log(message)
            self._emit(Event(kind="process-exited", exit_code=self._exit_code, message=message))
            raise StartError(message) from None
        self._child = child
        self._state = "running"
        child.exited.add_done_callback(lambda future: self._on_exit(child, future))
        self._emit(Event(kind="process-started", pid=child.pid))
        return child.pid

    def _on_exit(self, child: Child, future: asyncio.Future[int]) -> None:
        if child is not self._child or self._stopping or future.cancelled():
            return
        code = future.result()
        self._state = "exited"
        self._exit_code = code
        # Whatever it left behind in its group goes with it, as on a restart.
        _kill_group(child.pid, signal.SIGKILL)
        log(f"app {describe_exit(code)}; it starts again on the next sync or restart")
        self._emit(Event(kind="process-exited", pid=child.pid, exit_code=code, message=describe_exit(code)))

    async def _stop(self, sig: int, grace: float | None) -> None:
        """Signal the app's group and wait for the app; callers set ``_stopping`` around it."""
        child = self._child
        if child is None:
            return
        if not child.exited.done():
            _kill_group(child.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(child.exited), grace)
            except TimeoutError:
                log(f"app did not stop {grace:g}s after {signal.Signals(sig).name}; killing it")
                _kill_group(child.pid, signal.SIGKILL)
                await child.exited
        # The leader is gone; whatever else still runs in its group goes too.
        _kill_group(child.pid, signal.SIGKILL)
        self._exit_code = child.exited.result()
        self._state = "exited"

    # -- one-off commands ---------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunDone:
        """Run a command to completion; its output (stdout and stderr, interleaved) is kept, the last 64 KiB."""
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            child = self._reaper.spawn(
                argv,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
            )
        except OSError as exc:
            os.close(read_fd)
            code = 126 if isinstance(exc, PermissionError) else 127
            return RunDone(exit_code=code, output=f"cannot run {argv[0]}: {exc.strerror or exc}\n", ms=0.0)
        finally:
            os.close(write_fd)
        output: collections.deque[bytes] = collections.deque()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        collector = loop.create_task(_collect(reader, output), name="run-output")
        timed_out = False
        try:
            try:
                code = await asyncio.wait_for(asyncio.shield(child.exited), timeout)
            except TimeoutError:
                timed_out = True
                _kill_group(child.pid, signal.SIGKILL)
                code = await child.exited
            _kill_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(collector), RUN_OUTPUT_LINGER)
        finally:
            if not child.exited.done():  # cancelled: the command must not outlive its request
                _kill_group(child.pid, signal.SIGKILL)
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
            transport.close()
        text = b"".join(output)[-RUN_OUTPUT_LIMIT:].decode("utf-8", "replace")
        if timed_out:
            text += f"\n[innerloop: killed after the {timeout:g}s timeout]\n"
        return RunDone(exit_code=code, output=text, ms=(time.monotonic() - started) * 1000)


async def _collect(reader: asyncio.StreamReader, output: collections.deque[bytes]) -> None:
    kept = 0
    while chunk := await reader.read(64 * 1024):
        output.append(chunk)
        kept += len(chunk)
        while kept - len(output[0]) >= RUN_OUTPUT_LIMIT:
            kept -= len(output.popleft())
