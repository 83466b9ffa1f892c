"""The first process of an ``innerloop run`` namespace: it builds the namespace, then serves the CLI inside it.

Started by ``connect.netns.NetworkNamespace`` as ``python -m innerloop.connect.netns_init FD``
(FD: its end of a ``SOCK_SEQPACKET`` socketpair with the CLI). A separate
process rather than a fork of the CLI because the CLI runs an event loop with
threads, and ``unshare(CLONE_NEWUSER)`` needs a single-threaded caller; a
fresh interpreter is single-threaded by construction. Standard library only,
so it starts in ~40 ms.

What it does, in order:

1. ``unshare`` a user, a network and a mount namespace, and tell the CLI,
   which writes the uid/gid maps from outside (it has the right there: it
   owns the new user namespace; for root it maps every id, so root stays root
   for file access; any other user is mapped to itself only);
2. bring ``lo`` up, make every mount private, bind-mount the generated
   ``resolv.conf`` over ``/etc/resolv.conf`` (only this mount namespace sees
   it; the file itself is unlinked right away);
3. create the listening sockets the CLI asked for (DNS on 127.0.0.1:53, a
   loopback address per Service) and send their descriptors to the CLI. A
   socket keeps the namespace it was created in, so the CLI, in the host's
   namespaces, serves them with ordinary asyncio servers;
4. serve requests until the CLI closes its end: ``dial`` (a socket connected
   to a port inside the namespace, passed back, so the CLI can reach a local
   app listening in here), ``spawn`` (a command, with the stdio descriptors
   the CLI passed; its exit is reported), ``signal``.

It keeps the capabilities it has in the new user namespace (needed to mount
and bind ports below 1024) because it never execs; the commands it spawns
lose them at exec because their uid inside is not 0 (root's commands stay
root, as they would outside). When the CLI's end closes (the CLI exited, even
by SIGKILL), it sends SIGTERM to the commands still running, SIGKILL after
5 s, and exits: the namespaces die with their last process.

Messages are one JSON object per packet; descriptors ride along as
``SCM_RIGHTS``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

MAX_MESSAGE = 1 << 20
MAX_FDS = 200  # SCM_MAX_FD is 253 per message
STOP_GRACE_S = 5.0


class SetupError(RuntimeError):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def send(chan: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(chan, [data], fds)
    else:
        chan.send(data)


def receive(chan: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(chan, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _cover_resolv_conf(libc: ctypes.CDLL, text: str) -> None:
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    folder = tempfile.mkdtemp(prefix="innerloop-netns-")
    path = os.path.join(folder, "resolv.conf")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o644)
        target = os.path.realpath("/etc/resolv.conf")
        if not os.path.isfile(target):
            raise SetupError(f"/etc/resolv.conf (-> {target}) is not a file, so there is nothing to cover")
        _check(libc.mount(path.encode(), target.encode(), None, MS_BIND, None), f"bind-mounting over {target}")
    finally:
        os.unlink(path)
        os.rmdir(folder)


def _listen(bind: dict[str, Any]) -> socket.socket:
    kind = socket.SOCK_STREAM if bind["kind"] == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind["address"], int(bind["port"])))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except OSError as err:
        sock.close()
        raise SetupError(f"cannot listen on {bind['kind']} {bind['address']}:{bind['port']}: {err.strerror}") from err
    return sock


def setup(chan: socket.socket) -> None:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS), "unshare(user, net, mount namespaces)")
    send(chan, {"op": "unshared"})
    request, _ = receive(chan)
    if request is None:
        raise SystemExit(0)
    if request.get("op") != "setup":
        raise SetupError(f"expected setup, got {request.get('op')}")
    _bring_up_loopback()
    _cover_resolv_conf(libc, str(request["resolv_conf"]))
    sockets = [_listen(bind) for bind in request["binds"]]
    for start in range(0, len(sockets), MAX_FDS):
        batch = sockets[start : start + MAX_FDS]
        send(chan, {"op": "sockets", "count": len(batch)}, [s.fileno() for s in batch])
    for s in sockets:
        s.close()
    send(chan, {"op": "ready", "pid": os.getpid()})


class Init:
    """Serves the CLI's requests; owns the commands it spawned."""

    def __init__(self, chan: socket.socket) -> None:
        self.chan = chan
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.pidfds: dict[int, int] = {}

    def serve(self) -> None:
        self.selector.register(self.chan, selectors.EVENT_READ, None)
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    if not self._request():
                        self._stop_children()
                        return
                else:
                    self._reap(int(key.data))

    def _request(self) -> bool:
        try:
            message, fds = receive(self.chan)
        except ConnectionResetError:
            return False
        if message is None:
            return False
        op = message.get("op")
        try:
            if op == "dial":
                self._dial(message)
            elif op == "spawn":
                self._spawn(message, fds)
            elif op == "signal":
                child = self.children.get(int(message["pid"]))
                if child is not None and child.returncode is None:
                    child.send_signal(int(message["signal"]))
            else:
                send(self.chan, {"op": "error", "id": message.get("id"), "error": f"unknown op {op!r}"})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _dial(self, message: dict[str, Any]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect((str(message.get("address", "127.0.0.1")), int(message["port"])))
        except OSError as err:
            sock.close()
            send(self.chan, {"op": "dialed", "id": message["id"], "error": err.strerror or str(err)})
            return
        send(self.chan, {"op": "dialed", "id": message["id"]}, [sock.fileno()])
        sock.close()

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        stdin, stdout, stderr = fds
        try:
            child = subprocess.Popen(
                message["argv"],
                env=message["env"],
                cwd=message["cwd"],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
            )
        except OSError as err:
            send(self.chan, {"op": "spawned", "id": message["id"], "error": f"{message['argv'][0]}: {err.strerror}"})
            return
        pidfd = os.pidfd_open(child.pid)
        self.children[child.pid] = child
        self.pidfds[child.pid] = pidfd
        self.selector.register(pidfd, selectors.EVENT_READ, child.pid)
        send(self.chan, {"op": "spawned", "id": message["id"], "pid": child.pid})

    def _reap(self, pid: int) -> None:
        child = self.children.pop(pid)
        pidfd = self.pidfds.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        returncode = child.wait()
        send(self.chan, {"op": "exited", "pid": pid, "returncode": returncode})

    def _stop_children(self) -> None:
        running = [c for c in self.children.values() if c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main(argv: list[str]) -> int:
    # The terminal's Ctrl-C reaches the whole foreground group: the command decides, not its init.
    # A handler (not SIG_IGN) is reset to the default at exec, so commands still get Ctrl-C.
    signal.signal(signal.SIGINT, lambda *_: None)
    chan = socket.socket(fileno=int(argv[1]))
    try:
        setup(chan)
    except (SetupError, OSError) as err:
        send(chan, {"op": "error", "error": str(err)})
        return 1
    Init(chan).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
