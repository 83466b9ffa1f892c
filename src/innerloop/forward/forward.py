"""A local port that keeps reaching a workload while its pods come and go.

``kubectl port-forward svc/x`` picks one pod when it starts and dies with it;
Tilt and Skaffold wrap it and restart it, and their users still see dead
forwards after a pod restart (Tilt #2099, #4801, #6653; Skaffold #4518).
Here the local socket is bound once and never changes, and the pod is chosen
per TCP connection from a watched, cached view of the matching pods
(``targets.choose_pod``). A connection that cannot reach its pod waits for
the next eligible one (the watch wakes it; it re-checks at most every 25 ms)
for up to a retry window, instead of failing while a replacement starts.

Bytes the client sent before the pod answered are kept, so a connection whose
dial into the pod failed (the replacement is Ready but not listening yet) is
replayed to the next attempt. Once the pod has answered, or if the error does
not prove the dial failed, nothing is replayed: a request that may have
reached the application is never sent twice.

Each connection is one websocket stream through the API server
(``k8s.streams.PortForwardStream``). Websocket port-forward has no half-close,
so either side closing ends the connection, as with kubectl.

Ownership: ``run()`` owns a task group holding the pod watch and every
connection; cancelling it (or leaving ``async with``) stops listening and
cancels them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Service

from innerloop.forward.targets import (
    PodView,
    RemotePort,
    ServicePort,
    choose_pod,
    is_dial_failure,
    is_permanent_open_error,
    pod_view,
    resolve_port,
    service_target,
)
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable
from innerloop.k8s.streams import PortForwardStream, StreamError
from innerloop.k8s.watching import watch_pods

_CHUNK = 64 * 1024
_REPLAY_LIMIT = 1024 * 1024  # a request bigger than this before any answer is not replayed
# A pod that refused a connection is tried again after 25 ms, then 50, 100, up to 200 ms: quick for an
# app restarting after a sync (about 50 ms), few attempts against a pod that keeps refusing.
_RECHECK_S = 0.025
_RECHECK_MAX_S = 0.2
_SERVICE_RETRY_S = 1.0

EventKind = Literal["listening", "connected", "retargeted", "waiting", "connection-failed", "error"]


@dataclass(frozen=True, kw_only=True)
class ForwardEvent:
    """A change worth showing to the user; ``message`` is written for them."""

    kind: EventKind
    message: str
    pod: str | None = None
    previous_pod: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, kw_only=True)
class ForwardStatus:
    """What a UI shows for one forward."""

    address: str
    local_port: int
    pod: str | None
    """The pod new connections go to; None while waiting for a ready pod."""
    connections: int
    last_error: str | None


class ForwardError(RuntimeError):
    """The forward (or one of its connections) cannot work; the message says why and what to do."""


class _Replay:
    """The client's bytes sent before the pod's first byte: safe to resend after a failed dial."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.open = True

    def record(self, data: bytes) -> None:
        if self.open:
            self.data += data
            if len(self.data) > _REPLAY_LIMIT:
                self.settle()

    def settle(self) -> None:
        self.open = False
        self.data = bytearray()


_CLIENT_CLOSED = "client-closed"
_POD_WRITE_FAILED = "pod-write-failed"


class PortForward:
    """``address:local_port`` -> ``remote_port`` of whichever matching pod is ready.

    Give either ``selector`` (pod labels) or ``service`` (its selector is used,
    and a Service port maps to its ``targetPort``; both are read once, when the
    forward starts, waiting for the Service if it does not exist yet; a Service
    without a selector is an error). ``remote_port`` is a number
    or a named container port. ``local_port=0`` lets the system choose; the
    chosen port is ``local_port`` once started, and stays for the forward's life.

    ``sock`` is an already bound, listening TCP socket to serve instead of
    binding ``address:local_port`` (``innerloop run`` creates its sockets
    inside the command's network namespace); the forward closes it when done.

    ``on_event`` is called for state changes (listening, connected to a pod,
    re-targeted, waiting for a ready pod, a connection given up); it runs on
    the event loop and must not block or raise.
    """

    def __init__(
        self,
        conn: ClusterConnection,
        *,
        namespace: str,
        remote_port: RemotePort,
        local_port: int = 0,
        selector: Mapping[str, str] | None = None,
        service: str | None = None,
        address: str = "127.0.0.1",
        retry_window_s: float = 10.0,
        on_event: Callable[[ForwardEvent], None] | None = None,
        sock: socket.socket | None = None,
        ready_only: bool = True,
    ) -> None:
        if (selector is None) == (service is None):
            raise ValueError("give a pod label selector or a service name (exactly one)")
        if selector is not None and not selector:
            raise ValueError("an empty label selector would match every pod in the namespace")
        self._conn = conn
        self._namespace = namespace
        self._remote_port = remote_port
        self._pod_port: RemotePort = remote_port
        self._requested_port = local_port
        self._selector = dict(selector) if selector is not None else None
        self._service = service
        self._address = address
        self._sock = sock
        if sock is not None:
            self._address, self._requested_port = sock.getsockname()[:2]
        self._retry_window_s = retry_window_s
        self._ready_only = ready_only  # False: any running pod (a debugger's port; see choose_pod)
        self._on_event = on_event

        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._serving = asyncio.Event()
        self._pods: dict[str, PodView] = {}
        self._set_aside: dict[str, float] = {}
        self._refusals: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._pod: str | None = None
        self._reported = False  # whether the first pod list has been reported
        self._last_pod: str | None = None
        self._connections = 0
        self._last_error: str | None = None

    # ---- what the UI reads -------------------------------------------

    @property
    def target(self) -> str:
        """The workload in the user's words: ``svc/api:80`` or ``app=api:http``."""
        if self._service is not None:
            return f"svc/{self._service}:{self._remote_port}"
        labels = ",".join(f"{k}={v}" for k, v in sorted((self._selector or {}).items()))
        return f"{labels}:{self._remote_port}"

    @property
    def local_port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the forward is not listening yet: use `async with` or await start()")
        return self._bound_port

    @property
    def status(self) -> ForwardStatus:
        return ForwardStatus(
            address=self._address,
            local_port=self._bound_port or self._requested_port,
            pod=self._pod,
            connections=self._connections,
            last_error=self._last_error,
        )

    # ---- lifecycle -----------------------------------------------------

    async def start(self) -> None:
        """Bind the local port (once); connections are accepted when ``run()`` runs."""
        if self._server is not None:
            return
        try:
            if self._sock is not None:
                self._server = await asyncio.start_server(self._accept, sock=self._sock, start_serving=False)
            else:
                self._server = await asyncio.start_server(
                    self._accept, host=self._address, port=self._requested_port, start_serving=False
                )
        except OSError as err:
            raise ForwardError(
                f"cannot listen on {self._address}:{self._requested_port} for {self.target}: {err.strerror or err};"
                " choose another local port"
            ) from err
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        self._emit("listening", f"listening on {self._address}:{self._bound_port} for {self.target}")

    def close(self) -> None:
        """Give the local port back when ``run()`` will not be called after ``start()``."""
        if self._server is not None and self._task is None:
            self._server.close()

    async def run(self) -> None:
        """Serve until cancelled; cancelling closes the port and every connection."""
        await self.start()
        assert self._server is not None
        client = self._conn.client()
        try:
            await self._serve(client)
        except BaseExceptionGroup as group:  # the task group's wrapping hides the one error that matters
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], ForwardError):
                raise group.exceptions[0] from None
            raise
        finally:
            await self._server.wait_closed()
            await client.close()

    async def _serve(self, client: AsyncClient) -> None:
        assert self._server is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._follow_pods(client), name=f"forward-pods-{self.target}")
            try:
                await self._server.start_serving()
                self._serving.set()
                await asyncio.get_running_loop().create_future()  # until cancelled
            finally:
                self._tg = None
                self._server.close()

    async def __aenter__(self) -> PortForward:
        await self.start()
        self._task = task = asyncio.create_task(self.run(), name=f"forward-{self.target}")
        serving = asyncio.create_task(self._serving.wait())
        try:
            await asyncio.wait({task, serving}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self._stop()
            raise
        finally:
            serving.cancel()
        if task.done():  # run() failed before accepting anything: raise its error
            self._task = None
            task.result()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    # ---- choosing the pod ----------------------------------------------

    async def _follow_pods(self, client: AsyncClient) -> None:
        try:
            labels = await self._resolve_selector(client)
        except ForwardError as err:
            self._note_error(str(err))
            self._emit("error", str(err))
            raise
        async for snapshot in watch_pods(client, namespace=self._namespace, labels=labels, on_error=self._note_error):
            self._pods = {name: pod_view(pod) for name, pod in snapshot.items()}
            self._set_aside = {name: t for name, t in self._set_aside.items() if name in self._pods}
            self._refusals = {name: n for name, n in self._refusals.items() if name in self._pods}
            self._report_target()
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _resolve_selector(self, client: AsyncClient) -> Mapping[str, str]:
        if self._selector is not None:
            return self._selector
        assert self._service is not None
        announced = False
        while True:
            try:
                service = await client.get(Service, self._service, namespace=self._namespace)
                break
            except Exception as err:  # missing or unreachable: the Service may be about to be applied
                self._note_error(f"service {self._namespace}/{self._service}: {err}")
                if not announced:
                    self._emit("waiting", f"{self.target}: waiting for service {self._service} ({err})")
                    announced = True
                await asyncio.sleep(_SERVICE_RETRY_S)
        spec = service.spec
        if spec is None or not spec.selector:
            raise ForwardError(
                f"service {self._namespace}/{self._service} has no pod selector, so it has no pods to forward to;"
                " forward to a pod label selector instead"
            )
        ports = [ServicePort(port=p.port, name=p.name, target_port=p.targetPort) for p in spec.ports or []]
        self._pod_port = service_target(ports, self._remote_port)
        return dict(spec.selector)

    def _choose(self, *, now: float | None) -> tuple[str, int] | None:
        """The pod and port number for a new connection; pods set aside until ``now`` are skipped."""
        candidates = [
            view
            for view in self._pods.values()
            if resolve_port(view, self._pod_port) is not None
            and (now is None or self._set_aside.get(view.name, 0.0) <= now)
        ]
        name = choose_pod(candidates, ready=self._ready_only)
        if name is None:
            return None
        port = resolve_port(self._pods[name], self._pod_port)
        assert port is not None
        return name, port

    def _why_no_pod(self) -> str:
        eligible = [view for view in self._pods.values() if view.eligible]
        if not eligible:
            return f"no running, ready pod matches {self.target}"
        names = ", ".join(sorted(view.name for view in eligible))
        if all(resolve_port(view, self._pod_port) is None for view in eligible):
            return f"pods {names} declare no container port named {self._pod_port!r}"
        return f"pods {names} refused the connection"

    def _report_target(self) -> None:
        chosen = self._choose(now=None)
        pod = chosen[0] if chosen else None
        if pod == self._pod and self._reported:
            return
        self._reported = True
        previous, self._pod = self._pod, pod
        if pod is None:
            self._emit("waiting", f"{self.target}: waiting for a ready pod ({self._why_no_pod()})", previous=previous)
        elif self._last_pod is None:
            self._emit("connected", f"{self.target}: forwarding to pod {pod}", pod=pod)
        else:
            self._emit(
                "retargeted",
                f"{self.target}: now forwarding to pod {pod} (was {self._last_pod})",
                pod=pod,
                previous=self._last_pod,
            )
        if pod is not None:
            self._last_pod = pod

    async def _wait_for_pod(self, deadline: float) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            chosen = self._choose(now=now)
            if chosen is not None:
                return chosen
            if now >= deadline:
                reason = self._why_no_pod()
                detail = f" (last error: {self._last_error})" if self._last_error else ""
                raise ForwardError(
                    f"{self.target}: gave up on a connection after {self._retry_window_s:g}s: {reason}{detail}"
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(_RECHECK_S, deadline - now))

    def _put_aside(self, pod: str, error: str) -> None:
        refusals = self._refusals.get(pod, 0)
        self._refusals[pod] = refusals + 1
        delay = min(_RECHECK_MAX_S, _RECHECK_S * 2**refusals)
        self._set_aside[pod] = asyncio.get_running_loop().time() + delay
        self._note_error(f"pod {pod}: {error}")

    # ---- one connection ------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tg = self._tg
        if tg is None:  # shutting down
            writer.close()
            return
        try:
            tg.create_task(self._connection(reader, writer), name=f"forward-connection-{self.target}")
        except RuntimeError:  # the group began shutting down in between
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            await self._forward(reader, writer)
        except ForwardError as err:
            self._note_error(str(err))
            self._emit("connection-failed", str(err))
        except Exception as err:  # one broken connection never takes the port down with it
            self._note_error(f"{self.target}: connection broken: {type(err).__name__}: {err}")
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_window_s
        replay = _Replay()
        while True:
            pod, port = await self._wait_for_pod(deadline)
            try:
                stream = await asyncio.wait_for(
                    PortForwardStream.open(self._conn, namespace=self._namespace, pod=pod, port=port),
                    max(1.0, deadline - loop.time()),
                )
            except (StreamError, ClusterUnreachable, TimeoutError) as err:
                message = str(err) or "timed out opening the stream"
                if is_permanent_open_error(message):
                    raise ForwardError(f"{self.target}: {message}") from err
                self._put_aside(pod, message)
                continue
            try:
                retry_because = await self._relay(stream, reader, writer, replay)
            finally:
                await stream.close()
            if retry_because is None:
                self._refusals.pop(pod, None)
                return
            self._put_aside(pod, retry_because)

    async def _relay(
        self,
        stream: PortForwardStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        replay: _Replay,
    ) -> str | None:
        """Pump both ways until one side closes. Returns the error when the dial failed and a retry is safe."""
        if replay.data:
            try:
                await stream.write(bytes(replay.data))
            except StreamError as err:
                if is_dial_failure(str(err)):
                    return str(err)
                raise
        to_pod = asyncio.create_task(self._client_to_pod(reader, stream, replay))
        to_client = asyncio.create_task(self._pod_to_client(stream, writer, replay))
        try:
            done, _ = await asyncio.wait({to_pod, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if to_client in done:
                return to_client.result()
            if to_pod.result() == _POD_WRITE_FAILED:
                # The websocket broke under a write; the reading side says why (briefly).
                done, _ = await asyncio.wait({to_client}, timeout=1.0)
                if to_client in done:
                    return to_client.result()
            return None
        finally:
            for task in (to_pod, to_client):
                task.cancel()
            await asyncio.gather(to_pod, to_client, return_exceptions=True)

    @staticmethod
    async def _client_to_pod(reader: asyncio.StreamReader, stream: PortForwardStream, replay: _Replay) -> str:
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                return _CLIENT_CLOSED
            if not data:
                return _CLIENT_CLOSED
            replay.record(data)
            try:
                await stream.write(data)
            except (OSError, aiohttp.ClientError, StreamError):
                return _POD_WRITE_FAILED

    async def _pod_to_client(
        self, stream: PortForwardStream, writer: asyncio.StreamWriter, replay: _Replay
    ) -> str | None:
        while True:
            try:
                data = await stream.reader.read(_CHUNK)
            except StreamError as err:
                message = str(err)
                if replay.open and is_dial_failure(message):
                    return message
                self._note_error(message)
                return None
            if not data:
                return None
            replay.settle()
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return None

    # ---- reporting -----------------------------------------------------

    def _note_error(self, message: str) -> None:
        self._last_error = message

    def _emit(self, kind: EventKind, message: str, *, pod: str | None = None, previous: str | None = None) -> None:
        if self._on_event is not None:
            self._on_event(ForwardEvent(kind=kind, message=message, pod=pod, previous_pod=previous))
