"""The agent's side of the protocol: accept the CLI, check its token, serve its requests.

One controller at a time. A connection must say ``hello`` with a token
within a few seconds; a wrong token gets ``denied`` and never disturbs the
controller that is connected. A right token *replaces* the current
controller (its session ends with GOAWAY): only the holder of the token can
do that, and it is what a CLI reconnecting after a broken port-forward
needs, without waiting for the keepalive to notice that the old connection
is dead.

Tokens. The agent never holds a token, only its sha256: the Secret mounted
at the token file holds the hash, so whoever may read Secrets in the
namespace (every holder of the documented Role) learns nothing that opens
the agent. Which hash is trusted:

- until a controller rotated it, the token file's, read again on every
  ``hello`` (a mounted Secret changes in place, so a pod that outlived an
  `up` follows the newest one's Secret);
- once a greeted controller sent ``rotate``, that hash alone, in memory:
  the file no longer counts (a teammate who rewrites the Secret does not
  gain the running pods), and the token of an earlier `up` stops working at
  once, without a pod restart and without waiting for the kubelet's Secret
  refresh. A container restart forgets it and trusts the file again.

Hashes are compared in constant time (``hmac.compare_digest``).

Capabilities: one, the controller's. Everything the agent serves is for
`innerloop up`'s sync session: reads (``tree.request``, ``file.read``,
``process.status``) and changes (``sync.apply``, ``process.restart``, and
``run``, a command in the container). No other client talks to the agent:
`innerloop run` and `intercept -- CMD` read the pod's environment from the
API server, with the caller's Role, and never get a token. So there is no
read-only token to issue, and nothing short of the controller's token
reaches any of these.

Each connection owns its tasks: the request handlers (so a long ``run`` does
not hold up ``process.status``), the loop that accepts sync streams, and
the one that forwards the supervisor's events. All are cancelled when the
connection ends. Requests that change the container (``sync.apply``,
``process.restart``, ``run``) take one lock, so a restart never starts the
app on half a batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Sequence

from innerloop import __version__
from innerloop.agent.log import log
from innerloop.agent.receiver import Batch, SyncError, hash_tree, read_file
from innerloop.agent.supervisor import StartError, Supervisor
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
    ProcessStatusRequest,
    Run,
    SyncApply,
    SyncDone,
    Tree,
    TreeRequest,
    Welcome,
    decode_message,
    encode_message,
    token_sha256,
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
from innerloop.protocol.transport import AsyncioByteStream, ByteStream

HELLO_TIMEOUT = 10.0
# Before hello is accepted: one message of at most HELLO_MAX bytes, PREAUTH_LIMIT bytes read in all.
HELLO_MAX = 4 * 1024
PREAUTH_LIMIT = 16 * 1024
CLAIM_TIMEOUT = 10.0
EVENT_BACKLOG = 1000
READ_CHUNK = 256 * 1024


class AgentServer:
    """Serves CLI sessions for one supervised app."""

    def __init__(
        self,
        *,
        supervisor: Supervisor,
        trusted: Callable[[], str] | None = None,
        token: str | None = None,
        started_at: float | None = None,
        keepalive_interval: float | None = 10.0,
        keepalive_timeout: float = 30.0,
    ) -> None:
        if trusted is None:
            if token is None:
                raise ValueError("AgentServer needs trusted (the token file's reader) or a token")
            trusted = functools.partial(str, token_sha256(token))  # for tests and embedders holding the token
        self._trusted_file = trusted  # the token file's hash, read on each hello
        self._rotated: str | None = None  # set by a greeted controller; then the file no longer counts
        self.supervisor = supervisor
        self.started_at = time.time() if started_at is None else started_at
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._controller: Connection | None = None
        self._sessions: set[Session] = set()  # greeted or not: close() ends them all
        self.change_lock = asyncio.Lock()
        supervisor.on_event = self.publish

    @property
    def controller(self) -> Connection | None:
        return self._controller

    def publish(self, event: Event) -> None:
        """Forward an event to the controller, if one is connected (dropped otherwise)."""
        if self._controller is not None:
            self._controller.queue_event(event)

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The ``asyncio.start_server`` callback."""
        await self.serve(AsyncioByteStream(reader, writer))

    async def serve(self, io: ByteStream) -> None:
        """Serve one connection until it ends."""
        session = Session(
            io,
            role=Role.AGENT,
            keepalive_interval=self._keepalive_interval,
            keepalive_timeout=self._keepalive_timeout,
            preauth_limit=PREAUTH_LIMIT,
        )
        self._sessions.add(session)
        try:
            async with session:
                await self._serve_session(session)
        finally:
            self._sessions.discard(session)

    async def _serve_session(self, session: Session) -> None:
        """Handshake, then serve the controller until its session ends."""
        control = ControlChannel(session.control, max_message=HELLO_MAX)
        try:
            raw = await asyncio.wait_for(control.receive(), HELLO_TIMEOUT)
        except ProtocolError as exc:
            log(f"refused a connection before hello: {exc}")
            await session.close(f"protocol error: {exc}")
            return
        except (TimeoutError, SessionClosed):
            return
        if raw is None:
            return
        try:
            request_id, hello = decode_message(raw)
        except MessageError as exc:
            await self._deny(session, control, None, f"invalid hello: {exc}")
            return
        if not isinstance(hello, Hello):
            await self._deny(session, control, request_id, f"expected hello first, got {hello.OP}")
            return
        reason = self._check(hello)
        if reason is not None:
            await self._deny(session, control, request_id, reason)
            return
        if hello.rotate is not None and hello.rotate != self._rotated:
            self._rotated = hello.rotate
            log("the controller rotated the token; earlier tokens no longer open this agent")
        session.authenticated()
        control.max_message = MAX_CONTROL_MESSAGE
        connection = Connection(self, session, control)
        previous, self._controller = self._controller, connection
        if previous is not None:
            log("a new controller connected; closing the previous session")
            await previous.session.close("another controller connected with the same token")
        welcome = Welcome(
            agent_version=__version__,
            pid=os.getpid(),
            started_at=self.started_at,
            command=self.supervisor.argv,
        )
        try:
            await control.send(encode_message(welcome, request_id))
            await connection.serve()
        except SessionClosed:
            pass
        finally:
            if self._controller is connection:
                self._controller = None

    def _check(self, hello: Hello) -> str | None:
        if hello.version != PROTOCOL_VERSION:
            return (
                f"protocol version {hello.version} is not supported; this agent speaks {PROTOCOL_VERSION}. "
                "Run `innerloop up` again to redeploy the agent."
            )
        trusted = self._rotated
        if trusted is None:
            try:
                trusted = self._trusted_file()
            except (OSError, ValueError) as exc:
                return f"this agent cannot read its token file: {exc}"
        # Every candidate is hashed and compared, so the time taken says nothing about which matched.
        matches = [hmac.compare_digest(token_sha256(token), trusted) for token in hello.tokens]
        if not any(matches):
            return "wrong token: this agent belongs to another `innerloop up` session"
        return None

    async def _deny(self, session: Session, control: ControlChannel, request_id: int | None, reason: str) -> None:
        log(f"denied a connection: {reason}")
        try:
            await control.send(encode_message(Denied(reason=reason), request_id))
        except SessionClosed:
            return
        await session.close("denied")

    async def close(self, reason: str = "agent stopping") -> None:
        """End every session, the controller's with ``reason``."""
        for session in list(self._sessions):
            await session.close(reason)


class Connection:
    """The controller's session: dispatches its requests and sends it events."""

    def __init__(self, server: AgentServer, session: Session, control: ControlChannel) -> None:
        self.server = server
        self.session = session
        self.control = control
        self._events: asyncio.Queue[Event] = asyncio.Queue(EVENT_BACKLOG)
        self._claims: dict[int, asyncio.Future[Stream]] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    def queue_event(self, event: Event) -> None:
        # A controller that stopped reading loses events, not the agent its memory.
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._accept_streams(), name="agent-accept"),
            loop.create_task(self._send_events(), name="agent-events"),
        ]
        try:
            while True:
                raw = await self.control.receive()
                if raw is None:
                    return
                try:
                    request_id, message = decode_message(raw)
                except MessageError as exc:
                    raw_id = raw.get("id")
                    await self._reply(raw_id if isinstance(raw_id, int) else None, Error(reason=str(exc)))
                    continue
                task = loop.create_task(self._handle(request_id, message), name=f"agent-{message.OP}")
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        except ProtocolError as exc:
            await self.session.close(f"protocol error: {exc}")
        finally:
            owned = [*helpers, *self._handlers]
            for task in owned:
                task.cancel()
            await asyncio.gather(*owned, return_exceptions=True)
            for future in self._claims.values():
                if future.done() and not future.cancelled():
                    future.result().reset("connection ended")

    async def _reply(self, request_id: int | None, message: Message) -> None:
        await self.control.send(encode_message(message, request_id))

    async def _send_events(self) -> None:
        while True:
            event = await self._events.get()
            await self._reply(None, event)

    async def _accept_streams(self) -> None:
        while True:
            stream = await self.session.accept()
            try:
                kind = json.loads(stream.header).get("kind")
            except (ValueError, AttributeError):
                kind = None
            if kind != "sync":
                stream.reset(f"unknown stream kind {kind!r}")
                continue
            future = self._claims.setdefault(stream.id, asyncio.get_running_loop().create_future())
            if not future.done():
                future.set_result(stream)

    async def _claim(self, stream_id: int) -> Stream:
        future = self._claims.setdefault(stream_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(future), CLAIM_TIMEOUT)
        except TimeoutError:
            raise SyncError(f"the client never opened stream {stream_id} for the batch") from None
        finally:
            self._claims.pop(stream_id, None)

    async def _handle(self, request_id: int | None, message: Message) -> None:
        try:
            answer = await self._answer(message)
        except (SyncError, StartError, MessageError) as exc:
            answer = Error(reason=str(exc))
        except SessionClosed:
            return
        except Exception as exc:  # a bug must cost one request, not the connection
            log(f"internal error while handling {message.OP}: {exc!r}")
            answer = Error(reason=f"agent internal error in {message.OP}: {exc!r}")
        with contextlib.suppress(SessionClosed):
            await self._reply(request_id, answer)

    async def _answer(self, message: Message) -> Message:
        supervisor = self.server.supervisor
        if isinstance(message, TreeRequest):
            files = await asyncio.to_thread(hash_tree, message.root)
            return Tree(root=message.root, files=files)
        if isinstance(message, FileRead):
            data, mode = await asyncio.to_thread(read_file, message.root, message.path)
            return FileData(
                root=message.root,
                path=message.path,
                mode=mode,
                sha256=hashlib.sha256(data).hexdigest(),
                data=base64.b64encode(data).decode(),
            )
        if isinstance(message, ProcessStatusRequest):
            return supervisor.status()
        if isinstance(message, SyncApply):
            async with self.server.change_lock:
                return await self._apply(message)
        if isinstance(message, ProcessRestart):
            async with self.server.change_lock:
                pid, ms = await supervisor.restart()
            return ProcessRestarted(pid=pid, ms=ms)
        if isinstance(message, Run):
            async with self.server.change_lock:
                return await supervisor.run(message.argv, cwd=message.cwd, env=message.env, timeout=message.timeout)
        if isinstance(message, Hello):
            return Error(reason="already greeted: hello is only valid as the first message")
        return Error(reason=f"{message.OP} is not a request the agent answers")

    async def _apply(self, message: SyncApply) -> SyncDone:
        started = time.monotonic()
        stream = await self._claim(message.stream)
        try:
            applied, deleted = await _receive_batch(stream, message.root, message.files, message.deletes)
        except BaseException as exc:
            stream.reset(str(exc) if isinstance(exc, SyncError) else type(exc).__name__)
            raise
        await stream.close()
        try:
            restarted = await self.server.supervisor.start_if_exited()
        except StartError:
            restarted = False  # reported as an event; the files are applied all the same
        ms = (time.monotonic() - started) * 1000
        return SyncDone(applied=applied, deleted=deleted, ms=ms, started=restarted)


async def _receive_batch(
    stream: Stream, root: str, files: Sequence[FileMeta], deletes: Sequence[str]
) -> tuple[int, int]:
    """Stream a batch's contents into staged files, then commit them: ``(applied, deleted)``."""
    with Batch(root, files=files, deletes=deletes) as batch:
        deleted = batch.delete()
        for meta in files:
            staged = batch.stage(meta)
            while staged.missing:
                try:
                    chunk = await stream.read(min(staged.missing, READ_CHUNK))
                except StreamReset as exc:
                    raise SyncError(f"the client aborted the batch during {meta.path}: {exc}") from None
                if not chunk:
                    raise SyncError(f"the batch stream ended before {meta.path} was complete")
                staged.write(chunk)
            staged.finish()
        if await stream.read(1):
            raise SyncError("the batch stream carries more bytes than its files announce")
        return batch.commit(), deleted
