"""The control messages CLI and agent exchange on stream 0, as typed values.

On the wire every message is a JSON object ``{"op": ..., "id": ..., ...fields}``.
A request carries an ``id`` chosen by the client; the answer repeats it.
Events, which the agent sends on its own, carry ``"id": null``. Any request
can be answered with ``error{reason}`` instead of its usual answer.

| request (CLI -> agent)             | answer                                   |
|------------------------------------|------------------------------------------|
| ``hello{version, tokens, rotate}`` | ``welcome{...}`` or ``denied{reason}``   |
| ``tree.request{root}``             | ``tree{root, files: {path: sha256}}``    |
| ``sync.apply{root, files, deletes, stream}`` | ``sync.done{applied, deleted, ms}`` |
| ``process.restart{}``              | ``process.restarted{pid, ms}``           |
| ``process.status{}``               | ``process{state, pid, exit_code, restarts}`` |
| ``run{argv, cwd, env, timeout}``   | ``run.done{exit_code, output, ms}``      |

``sync.apply`` names a stream the client opened for the batch (header
``{"kind": "sync"}``): the files' contents follow on it, concatenated in the
order of ``files``, then the client half-closes it.

Decoding is strict about the fields a message needs (a wrong type is a
``MessageError`` naming the op and field) and ignores fields it does not
know, so a newer peer can add optional ones without a version bump.

Standard library only: the agent imports this module. The dataclasses are
not frozen on purpose: a frozen one costs about three times as much to
create at import (measured: ~0.6 ms against ~0.2 ms each, here), and the
agent's start time is paid on every pod start. Treat them as values anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

PROTOCOL_VERSION = 3  # 2: stream windows of 4 MiB; 3: the agent holds token hashes, hello rotates them
MAX_HELLO_TOKENS = 4

ProcessState: TypeAlias = Literal["running", "exited", "restarting"]
PROCESS_STATES: tuple[ProcessState, ...] = ("running", "exited", "restarting")


class MessageError(ValueError):
    """A control message that does not have the shape its op requires."""


# -- field readers: each names the op and field in its error ----------------


def _get(data: Mapping[str, Any], op: str, name: str) -> object:
    try:
        return data[name]
    except KeyError:
        raise MessageError(f"{op}: missing field {name!r}") from None


def _str(data: Mapping[str, Any], op: str, name: str) -> str:
    value = _get(data, op, name)
    if not isinstance(value, str):
        raise MessageError(f"{op}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _opt_str(data: Mapping[str, Any], op: str, name: str) -> str | None:
    return None if data.get(name) is None else _str(data, op, name)


def _int(data: Mapping[str, Any], op: str, name: str) -> int:
    value = _get(data, op, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"{op}: field {name!r} must be an integer, got {type(value).__name__}")
    return value


def _opt_int(data: Mapping[str, Any], op: str, name: str) -> int | None:
    return None if data.get(name) is None else _int(data, op, name)


def _float(data: Mapping[str, Any], op: str, name: str) -> float:
    value = _get(data, op, name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MessageError(f"{op}: field {name!r} must be a number, got {type(value).__name__}")
    return float(value)


def _opt_float(data: Mapping[str, Any], op: str, name: str) -> float | None:
    return None if data.get(name) is None else _float(data, op, name)


def _str_list(data: Mapping[str, Any], op: str, name: str) -> list[str]:
    value = _get(data, op, name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MessageError(f"{op}: field {name!r} must be a list of strings")
    return list(value)


def _str_map(data: Mapping[str, Any], op: str, name: str) -> dict[str, str]:
    value = _get(data, op, name)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MessageError(f"{op}: field {name!r} must be an object of strings")
    return dict(value)


# -- handshake ----------------------------------------------------------------


def token_sha256(token: str) -> str:
    """What the agent keeps of a token (its Secret holds only this): sha256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(kw_only=True)
class Hello:
    """The CLI's greeting: its tokens, newest first, and the hash the agent trusts from now on.

    ``tokens`` are this `up`'s and those of the few before it that this
    machine kept (so pods a crashed `up` left behind are still reached);
    ``rotate``, if set, replaces whatever the agent trusted with that one
    hash, so a token stops opening the agent as soon as a newer `up`
    greeted it, without waiting for the kubelet to refresh the Secret.
    """

    OP: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    tokens: list[str] = field(repr=False)
    rotate: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "tokens": self.tokens, "rotate": self.rotate}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hello:
        op = cls.OP
        version = _int(data, op, "version")
        if version != PROTOCOL_VERSION:  # the fields below may mean something else: say only the version
            return cls(version=version, tokens=[])
        tokens = _str_list(data, op, "tokens")
        if not 1 <= len(tokens) <= MAX_HELLO_TOKENS:
            raise MessageError(f"{op}: 1 to {MAX_HELLO_TOKENS} tokens, got {len(tokens)}")
        rotate = _opt_str(data, op, "rotate")
        if rotate is not None and not _is_sha256(rotate):
            raise MessageError(f"{op}: rotate must be a sha256 in lowercase hex")
        return cls(version=version, tokens=tokens, rotate=rotate)


@dataclass(kw_only=True)
class Welcome:
    OP: ClassVar[str] = "welcome"
    version: int = PROTOCOL_VERSION
    agent_version: str
    pid: int  # the agent's own pid (1 in a container)
    started_at: float  # unix time the agent started
    command: list[str]  # the app command it supervises

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "agent_version": self.agent_version,
            "pid": self.pid,
            "started_at": self.started_at,
            "command": self.command,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Welcome:
        op = cls.OP
        return cls(
            version=_int(data, op, "version"),
            agent_version=_str(data, op, "agent_version"),
            pid=_int(data, op, "pid"),
            started_at=_float(data, op, "started_at"),
            command=_str_list(data, op, "command"),
        )


@dataclass(kw_only=True)
class Denied:
    OP: ClassVar[str] = "denied"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Denied:
        return cls(reason=_str(data, cls.OP, "reason"))


@dataclass(kw_only=True)
class Error:
    """The answer to any request that failed; ``reason`` is meant for the user."""

    OP: ClassVar[str] = "error"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Error:
        return cls(reason=_str(data, cls.OP, "reason"))


# -- files --------------------------------------------------------------------


@dataclass(kw_only=True)
class TreeRequest:
    OP: ClassVar[str] = "tree.request"
    root: str

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeRequest:
        return cls(root=_str(data, cls.OP, "root"))


@dataclass(kw_only=True)
class Tree:
    OP: ClassVar[str] = "tree"
    root: str
    files: dict[str, str]  # relative posix path -> sha256 hex

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "files": self.files}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tree:
        return cls(root=_str(data, cls.OP, "root"), files=_str_map(data, cls.OP, "files"))


@dataclass(kw_only=True)
class FileRead:
    """Ask for one file below ``root`` (two-way sync: the container changed it)."""

    OP: ClassVar[str] = "file.read"
    root: str
    path: str

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "path": self.path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileRead:
        return cls(root=_str(data, cls.OP, "root"), path=_str(data, cls.OP, "path"))


@dataclass(kw_only=True)
class FileData:
    """One file's content (base64; source files are small, a limit applies) and mode."""

    OP: ClassVar[str] = "file"
    root: str
    path: str
    mode: int
    sha256: str
    data: str

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "path": self.path, "mode": self.mode, "sha256": self.sha256, "data": self.data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileData:
        op = cls.OP
        return cls(
            root=_str(data, op, "root"),
            path=_str(data, op, "path"),
            mode=_int(data, op, "mode"),
            sha256=_str(data, op, "sha256"),
            data=_str(data, op, "data"),
        )


@dataclass(kw_only=True)
class FileMeta:
    """One file of a sync batch; its ``size`` bytes follow on the batch's stream."""

    path: str  # relative posix path under the batch's root
    mode: int  # permission bits, e.g. 0o644
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileMeta:
        op = "sync.apply file"
        if not isinstance(data, Mapping):
            raise MessageError(f"{op}: must be an object")
        meta = cls(
            path=_str(data, op, "path"),
            mode=_int(data, op, "mode"),
            size=_int(data, op, "size"),
            sha256=_str(data, op, "sha256"),
        )
        if meta.size < 0:
            raise MessageError(f"{op} {meta.path!r}: negative size {meta.size}")
        if not 0 <= meta.mode <= 0o7777:
            raise MessageError(f"{op} {meta.path!r}: mode {meta.mode:#o} is not a permission mode")
        return meta


@dataclass(kw_only=True)
class SyncApply:
    OP: ClassVar[str] = "sync.apply"
    root: str
    files: list[FileMeta]
    deletes: list[str]
    stream: int  # the stream carrying the contents

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "files": [meta.to_json() for meta in self.files],
            "deletes": self.deletes,
            "stream": self.stream,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SyncApply:
        op = cls.OP
        files = _get(data, op, "files")
        if not isinstance(files, list):
            raise MessageError(f"{op}: field 'files' must be a list")
        return cls(
            root=_str(data, op, "root"),
            files=[FileMeta.from_json(item) for item in files],
            deletes=_str_list(data, op, "deletes"),
            stream=_int(data, op, "stream"),
        )


@dataclass(kw_only=True)
class SyncDone:
    OP: ClassVar[str] = "sync.done"
    applied: int
    deleted: int
    ms: float
    started: bool = False  # the batch (re)started an app that had exited

    def to_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "deleted": self.deleted, "ms": self.ms, "started": self.started}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SyncDone:
        op = cls.OP
        return cls(
            applied=_int(data, op, "applied"),
            deleted=_int(data, op, "deleted"),
            ms=_float(data, op, "ms"),
            started=bool(data.get("started", False)),
        )


# -- the app process ------------------------------------------------------------


@dataclass(kw_only=True)
class ProcessRestart:
    OP: ClassVar[str] = "process.restart"

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRestart:
        return cls()


@dataclass(kw_only=True)
class ProcessRestarted:
    OP: ClassVar[str] = "process.restarted"
    pid: int
    ms: float  # from the restart request to the new process running

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "ms": self.ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRestarted:
        return cls(pid=_int(data, cls.OP, "pid"), ms=_float(data, cls.OP, "ms"))


@dataclass(kw_only=True)
class ProcessStatusRequest:
    OP: ClassVar[str] = "process.status"

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessStatusRequest:
        return cls()


@dataclass(kw_only=True)
class ProcessStatus:
    OP: ClassVar[str] = "process"
    state: ProcessState
    pid: int | None
    exit_code: int | None  # of the last exit; negative: killed by that signal
    restarts: int

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.pid, "exit_code": self.exit_code, "restarts": self.restarts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessStatus:
        op = cls.OP
        state = _str(data, op, "state")
        if state not in PROCESS_STATES:
            raise MessageError(f"{op}: state {state!r} is not one of {', '.join(PROCESS_STATES)}")
        return cls(
            state=state,
            pid=_opt_int(data, op, "pid"),
            exit_code=_opt_int(data, op, "exit_code"),
            restarts=_int(data, op, "restarts"),
        )


@dataclass(kw_only=True)
class Run:
    """Run a one-off command in the container (an on-change step such as ``pip install``)."""

    OP: ClassVar[str] = "run"
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the container's environment
    timeout: float | None = None  # seconds; the command's process group is killed after it

    def to_json(self) -> dict[str, Any]:
        return {"argv": self.argv, "cwd": self.cwd, "env": self.env, "timeout": self.timeout}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        op = cls.OP
        argv = _str_list(data, op, "argv")
        if not argv:
            raise MessageError(f"{op}: argv must not be empty")
        return cls(
            argv=argv,
            cwd=_opt_str(data, op, "cwd"),
            env=_str_map(data, op, "env") if data.get("env") is not None else {},
            timeout=_opt_float(data, op, "timeout"),
        )


@dataclass(kw_only=True)
class RunDone:
    OP: ClassVar[str] = "run.done"
    exit_code: int  # negative: killed by that signal; 127: could not start
    output: str  # stdout and stderr interleaved, the last 64 KiB
    ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "output": self.output, "ms": self.ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunDone:
        op = cls.OP
        return cls(exit_code=_int(data, op, "exit_code"), output=_str(data, op, "output"), ms=_float(data, op, "ms"))


@dataclass(kw_only=True)
class Event:
    """Something the agent reports on its own: ``process-started``, ``process-exited``, ..."""

    OP: ClassVar[str] = "event"
    kind: str
    pid: int | None = None
    exit_code: int | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "exit_code": self.exit_code, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        op = cls.OP
        return cls(
            kind=_str(data, op, "kind"),
            pid=_opt_int(data, op, "pid"),
            exit_code=_opt_int(data, op, "exit_code"),
            message=_opt_str(data, op, "message") or "",
        )


Message: TypeAlias = (
    Hello
    | Welcome
    | Denied
    | Error
    | TreeRequest
    | Tree
    | FileRead
    | FileData
    | SyncApply
    | SyncDone
    | ProcessRestart
    | ProcessRestarted
    | ProcessStatusRequest
    | ProcessStatus
    | Run
    | RunDone
    | Event
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.OP: cls
    for cls in (
        Hello,
        Welcome,
        Denied,
        Error,
        TreeRequest,
        Tree,
        FileRead,
        FileData,
        SyncApply,
        SyncDone,
        ProcessRestart,
        ProcessRestarted,
        ProcessStatusRequest,
        ProcessStatus,
        Run,
        RunDone,
        Event,
    )
}


def encode_message(message: Message, request_id: int | None) -> dict[str, Any]:
    """The JSON object for ``message``; ``request_id`` is None for events."""
    return {"op": message.OP, "id": request_id, **message.to_json()}


def decode_message(data: Mapping[str, Any]) -> tuple[int | None, Message]:
    """``(request id, message)``; ``MessageError`` for an unknown op or a malformed field."""
    op = data.get("op")
    if not isinstance(op, str):
        raise MessageError("control message without a string 'op'")
    cls = MESSAGE_TYPES.get(op)
    if cls is None:
        raise MessageError(f"unknown op {op!r}")
    request_id = data.get("id")
    if request_id is not None and (not isinstance(request_id, int) or isinstance(request_id, bool)):
        raise MessageError(f"{op}: field 'id' must be an integer or null")
    return request_id, cls.from_json(data)
