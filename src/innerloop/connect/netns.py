"""A private network and mount namespace for local commands, made and entered without root.

``innerloop run`` gives a local command the cluster's DNS names. Changing the
machine's ``/etc/resolv.conf`` or ``/etc/hosts`` would change every program
on it and needs root; ``LD_PRELOAD`` tricks miss statically linked binaries
(Go's resolver reads ``/etc/resolv.conf`` itself). A namespace does neither:
an unprivileged user namespace owns a new network namespace (its own
loopback, so the command can be given 127.0.0.1:53 and a loopback address
per Service, even ports below 1024) and a new mount namespace (its own
``/etc/resolv.conf``, bind-mounted over the real one). Other programs see
nothing.

The namespace's first process is ``connect/netns_init.py`` (read its
docstring for the steps). It hands over the listening sockets it created
inside, so this side, in the host's namespaces, serves them: DNS answers
and port-forwards run in the CLI's event loop like any other server.

Why a long-lived first process rather than ``unshare(1)`` + exec: the CLI
must keep reaching *into* the namespace after the command started (an
intercept connects to a local app listening on the namespace's loopback).
``setns`` into a user namespace needs a single-threaded caller, which the
CLI is not; the first process is, and it answers ``dial(port)`` with a
connected socket. It also spawns the commands, so it is the one place that
knows when they exit, and everything dies with it.

Ownership: ``NetworkNamespace.start()`` returns a started namespace that
``close()`` (or ``async with``) ends: running commands get SIGTERM (SIGKILL
after 5 s), the first process exits, and the kernel drops the namespaces.
If the CLI is killed, the first process sees its channel close and does the
same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

_MAX_MESSAGE = 1 << 20
_MAX_FDS = 200
_SETUP_TIMEOUT_S = 20.0


class NamespaceError(RuntimeError):
    """The namespace cannot be made or used; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class Bind:
    """A socket to create inside the namespace: TCP listening, or UDP bound."""

    address: str
    port: int
    kind: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True, kw_only=True)
class NamespaceTimings:
    """How long the namespace took to be ready (seconds): interpreter start, then setup."""

    started_s: float
    ready_s: float


def _unshare_hint() -> str:
    return (
        "unprivileged user namespaces seem to be disabled: check `sysctl user.max_user_namespaces` (must be > 0)"
        " and, on Debian/Ubuntu, `sysctl kernel.unprivileged_userns_clone=1` and"
        " `kernel.apparmor_restrict_unprivileged_userns=0`; or run with --no-cluster-network"
    )


class NamespaceProcess:
    """A command running inside the namespace (a child of the namespace's first process)."""

    def __init__(self, namespace: NetworkNamespace, pid: int) -> None:
        self._namespace = namespace
        self.pid = pid
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        """As ``subprocess``: the exit status, or minus the signal that ended it; None while running."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if not self._exited.done():
            self._namespace._send({"op": "signal", "pid": self.pid, "signal": int(sig)})


class NetworkNamespace:
    """A user + network + mount namespace whose sockets this process serves.

    ``sockets`` holds, for every ``Bind`` asked for, the socket created inside
    the namespace (TCP: listening; UDP: bound), for this process to serve.
    ``spawn`` runs a command inside, ``dial`` connects to a port inside.
    """

    def __init__(self, proc: subprocess.Popen[bytes], chan: socket.socket) -> None:
        self._proc = proc
        self._chan = chan
        self.sockets: dict[Bind, socket.socket] = {}
        self.timings = NamespaceTimings(started_s=0.0, ready_s=0.0)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self._processes: dict[int, NamespaceProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._inbox: asyncio.Queue[tuple[dict[str, Any] | None, list[int]]] = asyncio.Queue()
        self._closed = False
        self._lost: str | None = None

    @property
    def pid(self) -> int:
        """The namespace's first process, e.g. for ``nsenter -t PID -U -n -m`` or slirp4netns."""
        return self._proc.pid

    # ---- lifecycle -----------------------------------------------------

    @classmethod
    async def start(cls, *, resolv_conf: str, binds: Sequence[Bind] = ()) -> NetworkNamespace:
        """Make the namespace, cover its ``/etc/resolv.conf`` with ``resolv_conf``, create ``binds``."""
        began = time.monotonic()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "innerloop.connect.netns_init", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        parent.setblocking(False)
        namespace = cls(proc, parent)
        asyncio.get_running_loop().add_reader(parent.fileno(), namespace._on_readable)
        try:
            await asyncio.wait_for(namespace._setup(resolv_conf, binds, began), _SETUP_TIMEOUT_S)
        except BaseException as err:
            await namespace.close()
            if isinstance(err, TimeoutError):
                raise NamespaceError(f"the namespace was not ready within {_SETUP_TIMEOUT_S:g}s") from None
            raise
        return namespace

    async def _setup(self, resolv_conf: str, binds: Sequence[Bind], began: float) -> None:
        message = await self._next_setup_message()
        started = time.monotonic()
        if message.get("op") != "unshared":
            raise NamespaceError(self._setup_failure(message))
        self._write_id_maps()
        self._send(
            {
                "op": "setup",
                "resolv_conf": resolv_conf,
                "binds": [{"address": b.address, "port": b.port, "kind": b.kind} for b in binds],
            }
        )
        received: list[socket.socket] = []
        while True:
            batch, fds = await self._inbox.get()
            if batch is None or batch.get("op") not in ("sockets", "ready"):
                for fd in fds:
                    os.close(fd)
                raise NamespaceError(self._setup_failure(batch))
            received += [socket.socket(fileno=fd) for fd in fds]
            if batch["op"] == "ready":
                break
        if len(received) != len(binds):
            raise NamespaceError(f"asked for {len(binds)} sockets in the namespace, got {len(received)}")
        for bind, sock in zip(binds, received, strict=True):
            sock.setblocking(False)
            self.sockets[bind] = sock
        self.timings = NamespaceTimings(started_s=started - began, ready_s=time.monotonic() - began)

    async def _next_setup_message(self) -> dict[str, Any]:
        message, fds = await self._inbox.get()
        for fd in fds:
            os.close(fd)
        if message is None:
            raise NamespaceError(self._setup_failure(None))
        return message

    def _setup_failure(self, message: dict[str, Any] | None) -> str:
        if message is not None and message.get("op") == "error":
            error = str(message.get("error"))
            if "unshare" in error or "not permitted" in error:  # disabled, or allowed without capabilities
                return f"cannot make the namespace for the command: {error}; {_unshare_hint()}"
            return f"cannot set up the namespace for the command: {error}"
        return "the namespace's first process exited during setup (its error is above)"

    def _write_id_maps(self) -> None:
        """Map ids from outside: only this process's owner may, and only root may map more than itself."""
        proc = Path(f"/proc/{self._proc.pid}")
        uid, gid = os.geteuid(), os.getegid()
        try:
            if uid == 0:
                (proc / "uid_map").write_text("0 0 4294967295\n")
                (proc / "gid_map").write_text("0 0 4294967295\n")
            else:
                (proc / "setgroups").write_text("deny\n")
                (proc / "uid_map").write_text(f"{uid} {uid} 1\n")
                (proc / "gid_map").write_text(f"{gid} {gid} 1\n")
        except OSError as err:
            raise NamespaceError(f"cannot map user ids into the namespace: {err}; {_unshare_hint()}") from err

    async def close(self) -> None:
        """Stop the commands still running (SIGTERM, SIGKILL after 5 s) and end the namespace."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets.values():
            sock.close()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._chan.fileno())
        self._chan.close()  # the first process sees the end of its channel: it stops its commands and exits
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self._proc.wait), 10.0)
        except TimeoutError:
            self._proc.kill()
            await loop.run_in_executor(None, self._proc.wait)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NamespaceError("the namespace was closed"))
        for process in self._processes.values():
            if not process._exited.done():
                process._exited.set_result(-signal.SIGKILL)

    async def __aenter__(self) -> NetworkNamespace:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # ---- using it ------------------------------------------------------

    async def dial(self, port: int, *, address: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``address:port`` inside the namespace (e.g. a local app listening there)."""
        reply, fds = await self._request({"op": "dial", "port": port, "address": address})
        if "error" in reply:
            raise ConnectionRefusedError(f"{address}:{port} in the command's namespace: {reply['error']}")
        sock = socket.socket(fileno=fds[0])
        for extra in fds[1:]:
            os.close(extra)
        return await asyncio.open_connection(sock=sock)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str],
        stdin: int = 0,
        stdout: int = 1,
        stderr: int = 2,
    ) -> NamespaceProcess:
        """Run ``argv`` inside the namespace with these descriptors as its stdio."""
        if not argv:
            raise ValueError("no command to run")
        message = {"op": "spawn", "argv": list(argv), "env": dict(env), "cwd": os.fspath(cwd)}
        if len(json.dumps(message)) > _MAX_MESSAGE:
            raise NamespaceError("the command's environment and arguments exceed 1 MiB")
        reply, fds = await self._request(message, fds=[stdin, stdout, stderr])
        for fd in fds:
            os.close(fd)
        if "error" in reply:
            raise NamespaceError(f"cannot start {argv[0]}: {reply['error']}")
        pid = int(reply["pid"])
        process = NamespaceProcess(self, pid)
        if pid in self._early_exits:
            process._exited.set_result(self._early_exits.pop(pid))
        else:
            self._processes[pid] = process
        return process

    # ---- the channel ---------------------------------------------------

    async def _request(self, message: dict[str, Any], *, fds: Sequence[int] = ()) -> tuple[dict[str, Any], list[int]]:
        if self._closed or self._lost is not None:
            raise NamespaceError(f"the command's namespace is gone ({self._lost or 'closed'})")
        request_id = next(self._ids)
        future: asyncio.Future[tuple[dict[str, Any], list[int]]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send({**message, "id": request_id}, fds)
            return await future
        finally:
            self._pending.pop(request_id, None)

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps(message).encode()
        # Packets are small and the peer reads promptly: a blocking send here is bounded in practice.
        self._chan.setblocking(True)
        try:
            if fds:
                socket.send_fds(self._chan, [data], list(fds))
            else:
                self._chan.send(data)
        except OSError as err:
            raise NamespaceError(f"the command's namespace is gone: {err}") from err
        finally:
            self._chan.setblocking(False)

    def _on_readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._chan, _MAX_MESSAGE, _MAX_FDS)
            except BlockingIOError:
                return
            except OSError as err:
                data, fds = b"", []
                self._lost = str(err)
            if not data:
                asyncio.get_running_loop().remove_reader(self._chan.fileno())
                self._lost = self._lost or "its first process exited"
                self._deliver(None, fds)
                return
            self._deliver(json.loads(data), fds)

    def _deliver(self, message: dict[str, Any] | None, fds: list[int]) -> None:
        if message is None:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(NamespaceError(f"the command's namespace is gone ({self._lost})"))
            for process in self._processes.values():
                if not process._exited.done():
                    process._exited.set_result(-signal.SIGKILL)
            self._inbox.put_nowait((None, fds))
            return
        op = message.get("op")
        if op == "exited":
            pid, returncode = int(message["pid"]), int(message["returncode"])
            exited = self._processes.pop(pid, None)
            if exited is None:  # before spawn() saw its reply (both arrived in one read)
                self._early_exits[pid] = returncode
            elif not exited._exited.done():
                exited._exited.set_result(returncode)
            return
        request_id = message.get("id")
        if isinstance(request_id, int):  # a reply; its requester may have given up (cancelled)
            waiting = self._pending.get(request_id)
            if waiting is not None and not waiting.done():
                waiting.set_result((message, fds))
            else:
                for fd in fds:
                    os.close(fd)
            return
        self._inbox.put_nowait((message, fds))
