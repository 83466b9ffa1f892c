"""A small Debug Adapter Protocol client for tests: Content-Length framing over TCP, requests and events.

Enough of DAP to prove a debugger works end to end: initialize, attach,
setBreakpoints, configurationDone, threads, stackTrace, scopes, variables,
continue. debugpy's child processes (a gunicorn worker is forked) announce
themselves with a ``debugpyAttach`` event, which an editor answers with a
second connection to the same adapter attaching with that event's
configuration: :func:`attach_tree` does what VS Code does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Message = dict[str, Any]


class DapError(AssertionError):
    """The adapter refused a request, or did not answer in time."""


class DapClient:
    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(None)
        self.seq = 0
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    # -- framing ----------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                header, _, buffer = buffer.partition(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in header.decode().split("\r\n") if line)
                length = int(fields["Content-Length"])
                while len(buffer) < length:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                with self.cond:
                    self.messages.append(json.loads(body))
                    self.cond.notify_all()
        except OSError:
            return
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def send(self, command: str, arguments: Mapping[str, Any] | None = None) -> int:
        self.seq += 1
        message = {"seq": self.seq, "type": "request", "command": command, "arguments": dict(arguments or {})}
        data = json.dumps(message).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(data) + data)
        return self.seq

    def _wait(self, match: Callable[[Message], bool], what: str, timeout_s: float) -> Message:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for message in self.messages:
                    if match(message):
                        self.messages.remove(message)
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    seen = [m.get("event") or m.get("command") for m in self.messages]
                    raise DapError(f"no {what} within {timeout_s:g}s (closed={self.closed}; pending: {seen})")
                self.cond.wait(left)

    def response(self, seq: int, *, timeout_s: float = 30.0) -> Message:
        message = self._wait(
            lambda m: m.get("type") == "response" and m.get("request_seq") == seq, f"response {seq}", timeout_s
        )
        if not message.get("success"):
            raise DapError(f"{message.get('command')} failed: {message.get('message')} {message.get('body')}")
        body: Message = message.get("body") or {}
        return body

    def request(self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout_s: float = 30.0) -> Message:
        return self.response(self.send(command, arguments), timeout_s=timeout_s)

    def event(self, name: str, *, timeout_s: float = 30.0) -> Message:
        message = self._wait(
            lambda m: m.get("type") == "event" and m.get("event") == name, f"{name!r} event", timeout_s
        )
        body: Message = message.get("body") or {}
        return body

    def has_event(self, name: str) -> Message | None:
        with self.cond:
            for message in self.messages:
                if message.get("type") == "event" and message.get("event") == name:
                    self.messages.remove(message)
                    body: Message = message.get("body") or {}
                    return body
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # -- a session ----------------------------------------------------------------

    def attach(self, arguments: Mapping[str, Any], breakpoints: Mapping[str, list[int]]) -> Message:
        """initialize, attach, breakpoints, configurationDone; the breakpoints as the adapter set them."""
        self.request(
            "initialize",
            {
                "clientID": "innerloop-tests",
                "adapterID": "debugpy",
                "pathFormat": "path",
                "linesStartAt1": True,
                "columnsStartAt1": True,
            },
        )
        attach = self.send("attach", arguments)
        self.event("initialized")
        verified: Message = {}
        for path, lines in breakpoints.items():
            body = self.request(
                "setBreakpoints", {"source": {"path": path}, "breakpoints": [{"line": n} for n in lines]}
            )
            verified[path] = body.get("breakpoints", [])
        self.request("configurationDone")
        self.response(attach)
        return verified

    def locals_of_top_frame(self, thread_id: int) -> tuple[Message, dict[str, str]]:
        """The top frame of a stopped thread and its local variables, name -> value as the debugger shows it."""
        frames = self.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 1})["stackFrames"]
        scopes = self.request("scopes", {"frameId": frames[0]["id"]})["scopes"]
        local = next(s for s in scopes if s["name"].lower().startswith("locals"))
        variables = self.request("variables", {"variablesReference": local["variablesReference"]})["variables"]
        return frames[0], {v["name"]: v["value"] for v in variables}


@contextlib.contextmanager
def attach_tree(
    host: str,
    port: int,
    arguments: Mapping[str, Any],
    breakpoints: Mapping[str, list[int]],
    *,
    children: int = 0,
    timeout_s: float = 30.0,
) -> Iterator[list[DapClient]]:
    """Attach to debugpy at ``host:port`` and to the first ``children`` subprocesses it announces, as VS Code does."""
    sessions = [DapClient(host, port)]
    try:
        sessions[0].attach(arguments, breakpoints)
        while len(sessions) < children + 1:
            config = sessions[0].event("debugpyAttach", timeout_s=timeout_s)
            child = DapClient(host, port)
            sessions.append(child)
            child.attach({**config}, breakpoints)
        yield sessions
    finally:
        for session in reversed(sessions):
            with contextlib.suppress(OSError, DapError):
                session.send("disconnect", {"terminateDebuggee": False})
            session.close()
