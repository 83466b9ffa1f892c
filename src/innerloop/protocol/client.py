"""The CLI's handle on one agent: typed requests over one session.

``AgentClient.connect(io, tokens=...)`` runs the handshake over any
``ByteStream`` (a TCP socket in tests, a port-forward through the API server
in the CLI) and returns a client whose methods send one request each and
return the agent's typed answer; an ``error`` answer raises ``AgentError``.
Requests may run concurrently; answers are matched by id.

The client owns one task, the reader of the control channel, which routes
answers to their requests and events to ``events()``. ``close()`` (or
leaving ``async with``) ends the session and that task.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from innerloop.protocol.frames import ProtocolError
from innerloop.protocol.messages import (
    PROTOCOL_VERSION,
    Denied,
    Error,
    Event,
    FileData,
    FileMeta,
    FileRead,
    Hello,
    Message,
    MessageError,
    ProcessRestart,
    ProcessRestarted,
    ProcessStatus,
    ProcessStatusRequest,
    Run,
    RunDone,
    SyncApply,
    SyncDone,
    Tree,
    TreeRequest,
    Welcome,
    decode_message,
    encode_message,
)
from innerloop.protocol.session import (
    MAX_CONTROL_MESSAGE,
    ControlChannel,
    Role,
    Session,
    SessionClosed,
    Stream,
    StreamReset,
)
from innerloop.protocol.transport import ByteStream

SYNC_STREAM_HEADER = b'{"kind":"sync"}'
# Before the agent's welcome: one message of at most WELCOME_MAX bytes, PREAUTH_LIMIT bytes read in all.
WELCOME_MAX = 64 * 1024
PREAUTH_LIMIT = 128 * 1024
EVENT_BACKLOG = 1000
_CHUNK = 256 * 1024

AnswerT = TypeVar("AnswerT", bound=Message)


class AgentError(Exception):
    """The agent could not do what was asked; the message says why."""


class AgentDenied(AgentError):
    """The agent refused the connection (wrong token, protocol version)."""


@dataclass(frozen=True, kw_only=True)
class FileUpload:
    """A file to send: its metadata and where its bytes come from."""

    meta: FileMeta
    source: bytes | Path

    @classmethod
    def from_bytes(cls, path: str, data: bytes, *, mode: int = 0o644) -> FileUpload:
        meta = FileMeta(path=path, mode=mode, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        return cls(meta=meta, source=data)

    @classmethod
    def from_file(cls, path: str, local: Path, *, sha256: str | None = None) -> FileUpload:
        """``path`` (relative, posix) on the agent side for the local file ``local``.

        Pass ``sha256`` when the caller hashed the file already (a tree comparison did).
        """
        info = local.stat()
        if sha256 is None:
            digest = hashlib.sha256()
            with local.open("rb") as file:
                while chunk := file.read(_CHUNK):
                    digest.update(chunk)
            sha256 = digest.hexdigest()
        meta = FileMeta(path=path, mode=info.st_mode & 0o7777, size=info.st_size, sha256=sha256)
        return cls(meta=meta, source=local)


@dataclass(frozen=True, kw_only=True)
class SyncBatch:
    """Files to write and paths to delete below ``root`` (an absolute path in the container)."""

    root: str
    files: Sequence[FileUpload] = ()
    deletes: Sequence[str] = field(default_factory=tuple)


class AgentClient:
    """A connected, greeted agent. Build it with ``await AgentClient.connect(...)``."""

    def __init__(self, session: Session, control: ControlChannel, welcome: Welcome) -> None:
        self.session = session
        self.welcome = welcome
        self._control = control
        self._ids = itertools.count(2)  # 1 was the hello
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_BACKLOG)
        self._reader = asyncio.get_running_loop().create_task(self._read_answers(), name="agent-client-reader")

    @classmethod
    async def connect(
        cls,
        io: ByteStream,
        *,
        tokens: Sequence[str] = (),
        token: str | None = None,
        rotate: str | None = None,
        keepalive_interval: float | None = 10.0,
        keepalive_timeout: float = 30.0,
        hello_timeout: float = 10.0,
    ) -> AgentClient:
        """Start a session over ``io`` and greet the agent; ``AgentDenied`` if it refuses.

        ``tokens``: newest first (``token``: just one); ``rotate``: the hash the agent trusts from
        now on (see ``Hello``).
        Send them only to an agent verified first (``deploy.devmode.check_agent_pod``): a
        token is a password, and whoever answers here learns it.
        """
        candidates = [*tokens, *([token] if token is not None else [])]
        if not candidates:
            raise ValueError("AgentClient.connect needs a token")
        session = Session(
            io,
            role=Role.CLIENT,
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            preauth_limit=PREAUTH_LIMIT,
        )
        session.start()
        try:
            control = ControlChannel(session.control, max_message=WELCOME_MAX)
            await control.send(encode_message(Hello(tokens=candidates, rotate=rotate), 1))
            raw = await asyncio.wait_for(control.receive(), hello_timeout)
            if raw is None:
                raise AgentError(f"the agent closed the connection during the handshake: {session.close_reason}")
            _, answer = decode_message(raw)
            if isinstance(answer, Denied):
                raise AgentDenied(f"the agent refused the connection: {answer.reason}")
            if not isinstance(answer, Welcome):
                raise AgentError(f"the agent answered hello with {answer.OP}")
            if answer.version != PROTOCOL_VERSION:
                raise AgentDenied(f"the agent speaks protocol {answer.version}, this CLI {PROTOCOL_VERSION}")
            session.authenticated()
            control.max_message = MAX_CONTROL_MESSAGE
        except TimeoutError:
            await session.close("no answer to hello")
            raise AgentError(f"the agent did not answer hello within {hello_timeout:g}s") from None
        except (ProtocolError, MessageError) as exc:
            await session.close("handshake failed")
            raise AgentError(f"the agent broke the protocol during the handshake: {exc}") from None
        except BaseException:
            await session.close("handshake failed")
            raise
        return cls(session, control, answer)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, reason: str = "") -> None:
        await self.session.close(reason)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    # -- requests -----------------------------------------------------------

    async def tree(self, root: str) -> dict[str, str]:
        """``{relative path: sha256}`` of the files below ``root`` in the container."""
        return (await self._request(TreeRequest(root=root), Tree)).files

    async def read(self, root: str, path: str) -> tuple[bytes, int]:
        """``(content, mode)`` of one file below ``root`` in the container, checked against its sha256."""
        answer = await self._request(FileRead(root=root, path=path), FileData)
        data = base64.b64decode(answer.data)
        if hashlib.sha256(data).hexdigest() != answer.sha256:
            raise AgentError(f"{path}: the content the agent sent does not match its sha256")
        return data, answer.mode

    async def apply(self, batch: SyncBatch) -> SyncDone:
        """Send a batch: deletes, then every file, each replaced atomically once its sha256 checks out."""
        stream = await self.session.open(SYNC_STREAM_HEADER)
        header = SyncApply(
            root=batch.root,
            files=[upload.meta for upload in batch.files],
            deletes=list(batch.deletes),
            stream=stream.id,
        )
        request_id, answer = self._expect()
        try:
            await self._control.send(encode_message(header, request_id))
            changed: str | None = None
            try:
                for upload in batch.files:
                    if not await _send_content(stream, upload):
                        changed = upload.meta.path
                        stream.reset(f"{changed} changed while it was sent")
                        break
                else:
                    await stream.close()
            except StreamReset:
                pass  # the agent rejected the batch; its answer says why
            try:
                return await self._answer(answer, SyncDone)
            except AgentError:
                if changed is not None:
                    raise AgentError(f"{changed} changed while it was being sent; sync again") from None
                raise
        except BaseException:
            stream.reset("batch abandoned")
            raise
        finally:
            self._pending.pop(request_id, None)

    async def restart(self) -> ProcessRestarted:
        return await self._request(ProcessRestart(), ProcessRestarted)

    async def status(self) -> ProcessStatus:
        return await self._request(ProcessStatusRequest(), ProcessStatus)

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RunDone:
        """Run a command in the container to completion (it is killed after ``timeout`` seconds)."""
        return await self._request(Run(argv=list(argv), cwd=cwd, env=dict(env or {}), timeout=timeout), RunDone)

    async def events(self) -> AsyncIterator[Event]:
        """The agent's events, until the session ends (one consumer at a time)."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # the end, for the next iteration too
                return
            yield event

    # -- plumbing -------------------------------------------------------------

    def _expect(self) -> tuple[int, asyncio.Future[Message]]:
        if self.session.closed:
            raise SessionClosed(self.session.close_reason or "session closed")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return request_id, future

    async def _request(self, message: Message, expected: type[AnswerT]) -> AnswerT:
        request_id, answer = self._expect()
        try:
            await self._control.send(encode_message(message, request_id))
            return await self._answer(answer, expected)
        finally:
            self._pending.pop(request_id, None)

    async def _answer(self, future: asyncio.Future[Message], expected: type[AnswerT]) -> AnswerT:
        answer = await future
        if isinstance(answer, Error):
            raise AgentError(answer.reason)
        if not isinstance(answer, expected):
            raise AgentError(f"the agent answered with {answer.OP}, expected {expected.OP}")
        return answer

    async def _read_answers(self) -> None:
        try:
            while (raw := await self._control.receive()) is not None:
                try:
                    request_id, message = decode_message(raw)
                except MessageError:
                    continue  # newer agent, unknown message: not ours to fail on
                if isinstance(message, Event) and request_id is None:
                    if self._events.full():
                        self._events.get_nowait()  # keep the newest
                    self._events.put_nowait(message)
                    continue
                future = self._pending.get(request_id) if request_id is not None else None
                if future is not None and not future.done():
                    future.set_result(message)
        except ProtocolError as exc:
            await self.session.close(f"protocol error: {exc}")
        finally:
            reason = self.session.close_reason or "the control channel ended"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SessionClosed(reason))
            if self._events.full():
                self._events.get_nowait()
            self._events.put_nowait(None)


async def _send_content(stream: Stream, upload: FileUpload) -> bool:
    """Write one file's bytes; False if a local file no longer has its announced size."""
    size = upload.meta.size
    if isinstance(upload.source, bytes):
        if len(upload.source) != size:
            return False
        await stream.write(upload.source)
        return True
    sent = 0
    with upload.source.open("rb") as file:
        while sent < size:
            chunk = file.read(min(_CHUNK, size - sent))
            if not chunk:
                return False
            await stream.write(chunk)
            sent += len(chunk)
        return not file.read(1)
