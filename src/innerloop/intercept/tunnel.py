"""The developer's end of an intercept: hold it, and carry its traffic to the local process.

One protocol session (:mod:`innerloop.protocol`) through a port-forward to
the router's control port. The CLI registers its intercept with a secret
only it knows; then the router opens a stream for every connection (global)
or request (personal) it routes here, and each stream is piped to the local
port that stands for the Service port.

When the session drops (network, laptop sleep, API server restart) the
router detaches the intercept at once, so the cluster's pods take its
traffic; this end reconnects with backoff and *resumes* with the same secret
(``resume: true`` refuses to create a new intercept, so one that was ended
meanwhile stays ended). Past the grace period the router has forgotten it
and the tunnel ends with a message saying so.

The router keeps its registry in memory, so a router pod that is deleted,
OOM-killed or rescheduled comes back knowing no intercept. Each answer names
the router process (``router``, random per start): a resume refused as
unknown by a *different* process than the one that took the registration
means the router restarted, and this end registers again with the same
name, secret and rules (the new router's ``startup`` window waits for the
CLIs; the Service still selects the router's pods). Refused by the same
process, the intercept really ended (``leave`` from another terminal, or
expired), and stays ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from innerloop.intercept.plan import CONTROL_PORT, ROUTER_LABEL
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.rest import RawApi, collection_path
from innerloop.k8s.streams import PortForwardByteStream, StreamError
from innerloop.protocol.frames import ProtocolError
from innerloop.protocol.session import ControlChannel, Role, Session, SessionClosed, Stream
from innerloop.router.http1 import SocketConn, pipe
from innerloop.router.intercepts import Mode
from innerloop.router.main import TunnelConn
from innerloop.router.match import HeaderRule

Dial = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Report = Callable[[str], None]


class InterceptDenied(RuntimeError):
    """The router refused the intercept; the message is the router's reason."""


class InterceptEnded(RuntimeError):
    """The intercept is gone (left from elsewhere, or not resumed in time)."""


@dataclass(frozen=True, kw_only=True)
class Registration:
    name: str
    secret: str = field(repr=False)
    owner: str
    mode: Mode
    rules: Sequence[HeaderRule]
    ports: Sequence[int]
    identity: str | None = field(default=None, repr=False)  # the developer's (intercept/session.py)

    def message(self, *, resume: bool) -> dict[str, Any]:
        extra = {"identity": self.identity} if self.identity is not None else {}
        return extra | {
            "op": "intercept",
            "name": self.name,
            "secret": self.secret,
            "owner": self.owner,
            "mode": self.mode,
            "rules": [rule.to_dict() for rule in self.rules],
            "ports": list(self.ports),
            "resume": resume,
        }


async def router_pod(conn: ClusterConnection, *, namespace: str, service: str) -> str | None:
    async with RawApi(conn) as api:
        pods = await api.call(
            "GET", collection_path("Pod", namespace), query={"labelSelector": f"{ROUTER_LABEL}={service}"}
        )
    # A Ready pod first; else one that is scheduled: port-forward works as soon as its sandbox exists,
    # well before the kubelet reports it Ready, so registering overlaps the pod's start.
    candidates = [p for p in pods.get("items") or [] if not p["metadata"].get("deletionTimestamp")]
    for pod in candidates:
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
        if conditions.get("Ready") == "True":
            return str(pod["metadata"]["name"])
    for pod in candidates:
        if pod.get("spec", {}).get("nodeName") and pod.get("status", {}).get("phase") in ("Pending", "Running"):
            return str(pod["metadata"]["name"])
    return None


class RouterSession:
    """One control session with a Service's router."""

    def __init__(self, session: Session, control: ControlChannel) -> None:
        self.session = session
        self.control = control
        self._next_id = 1
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, conn: ClusterConnection, *, namespace: str, service: str) -> RouterSession:
        pod = await router_pod(conn, namespace=namespace, service=service)
        if pod is None:
            raise InterceptEnded(f"service {service} has no intercept router running")
        io = await PortForwardByteStream.open(conn, namespace=namespace, pod=pod, port=CONTROL_PORT)
        session = Session(io, role=Role.CLIENT, keepalive_interval=2.0, keepalive_timeout=6.0)
        session.start()
        return cls(session, ControlChannel(session.control))

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """One request and its answer (the router answers in order)."""
        async with self._lock:
            self._next_id += 1
            await self.control.send({**message, "id": self._next_id})
            answer = await asyncio.wait_for(self.control.receive(), timeout)
        if answer is None:
            raise SessionClosed(self.session.close_reason or "the router closed the session")
        return answer

    async def close(self, reason: str = "") -> None:
        await self.session.close(reason)


class InterceptTunnel:
    """Holds one intercept until cancelled or ended; see the module docstring."""

    def __init__(
        self,
        conn: ClusterConnection,
        *,
        namespace: str,
        service: str,
        registration: Registration,
        local_ports: dict[int, int],
        dial: Dial,
        report: Report,
        grace: float,
        open_router: Callable[[], Awaitable[RouterSession]] | None = None,
    ) -> None:
        self._conn = conn
        self._namespace = namespace
        self._service = service
        self.registration = registration
        self.local_ports = dict(local_ports)  # Service port -> local port
        self.dial = dial  # local port -> connection; replaceable: a command in its own network namespace
        self._report = report
        self._grace = grace
        self.ready = asyncio.Event()
        self.routed = 0
        self._current: RouterSession | None = None
        self._carrying: set[asyncio.Task[Any]] = set()
        self._leaving = False
        self.router_waits = 0.0  # after the last leave: a restarted router waits this long for other CLIs
        # How to reach the router: a port-forward to its pod; replaceable in tests (a socket).
        self._open = open_router or functools.partial(RouterSession.open, conn, namespace=namespace, service=service)

    async def _register(
        self, router: RouterSession, *, resume: bool, instance: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Register or resume: the answer, and whether the router had restarted (a resume refused as
        unknown by a router process other than ``instance``, the one that took the registration):
        then it registers again."""
        answer = await router.request(self.registration.message(resume=resume))
        restarted = (
            resume
            and answer.get("op") == "denied"
            and answer.get("code") == "unknown"
            and answer.get("router") is not None
            and answer.get("router") != instance
        )
        if not restarted:
            return answer, False
        return await router.request(self.registration.message(resume=False)), True

    async def run(self) -> None:
        """Register, then serve and reconnect until cancelled; raises InterceptDenied/InterceptEnded."""
        resume = False
        instance: str | None = None  # the router process that holds the registration
        lost_at: float | None = None
        delay = 0.05
        first_deadline = time.monotonic() + 60  # a router pod that is still starting does not listen yet
        while True:
            try:
                router = await self._open()
            except (StreamError, OSError, InterceptEnded, ProtocolError, SessionClosed) as err:
                if not resume and time.monotonic() > first_deadline:
                    raise InterceptDenied(f"cannot reach the router of {self._service}: {err}") from err
                router = None
                error = str(err)
            if router is not None:
                try:
                    answer, restarted = await self._register(router, resume=resume, instance=instance)
                except (TimeoutError, SessionClosed, ProtocolError, ConnectionError) as err:
                    await router.close("no answer")
                    router, error = None, f"no answer from the router: {err}"
                else:
                    if answer.get("op") != "intercepting":
                        await router.close("denied")
                        reason = str(answer.get("reason", answer))
                        if restarted:
                            raise InterceptEnded(f"the router restarted and refused to register it again: {reason}")
                        if resume:
                            raise InterceptEnded(f"the intercept ended while disconnected: {reason}")
                        raise InterceptDenied(reason)
            if router is not None:
                if restarted:
                    self._report(
                        f"the router of {self._service} restarted without its intercepts;"
                        f" {self.registration.name} registered again"
                    )
                elif resume:
                    self._report(f"tunnel back; intercept {self.registration.name} resumed")
                instance = str(answer["router"]) if answer.get("router") is not None else instance
                self._current = router
                self.ready.set()
                resume, lost_at, delay = True, None, 0.2
                reason = await self._serve(router)
                self._current = None
                if self._leaving:
                    return
                self._report(f"tunnel lost ({reason}); requests go to the cluster's pods until it is back")
                lost_at = time.monotonic()
                continue
            if not resume:
                await asyncio.sleep(delay)
                continue
            lost_at = lost_at or time.monotonic()
            if time.monotonic() - lost_at > self._grace + 5:
                raise InterceptEnded(
                    f"could not reach the router for {self._grace:g}s+; the intercept has ended ({error})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _serve(self, router: RouterSession) -> str:
        async with asyncio.TaskGroup() as tg:
            try:
                while True:  # accept() raises once the session ends
                    stream = await router.session.accept()
                    tg.create_task(self._carry(stream))
            except (SessionClosed, ProtocolError, ConnectionError) as err:
                with contextlib.suppress(Exception):
                    await router.close()
                return str(err) or "session closed"

    async def _carry(self, stream: Stream) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._carrying.add(task)
        try:
            await self._carry_stream(stream)
        finally:
            self._carrying.discard(task)

    async def _carry_stream(self, stream: Stream) -> None:
        tunnel = TunnelConn(stream)
        try:
            port = int(json.loads(stream.header)["port"])
        except (ValueError, KeyError, TypeError):
            port = None
        if port not in self.local_ports:
            stream.reset("no local port for this stream")
            return
        self.routed += 1
        try:
            reader, writer = await self.dial(self.local_ports[port])
        except OSError as err:
            self._report(f"a request for port {port} arrived, but the local process refused it: {err.strerror or err}")
            stream.reset("the local process is not listening")
            return
        local = SocketConn(reader, writer)
        try:
            await pipe(tunnel, local)
        finally:
            await local.close()
            await tunnel.close()

    async def leave(self, *, drain_s: float = 5.0) -> int | None:
        """End the intercept; the number of intercepts left on the router, None if it could not be told.

        Requests already routed here get up to ``drain_s`` to be answered (an h2c
        connection to the local server stays open after its streams are, so this
        is a bound, not an expectation).
        """
        self._leaving = True
        router = self._current
        opened = False
        try:
            if router is None or router.session.closed:
                router = await self._open()
                opened = True
            answer = await router.request(
                {"op": "leave", "name": self.registration.name, "secret": self.registration.secret}
            )
        except (StreamError, OSError, InterceptEnded, ProtocolError, SessionClosed, TimeoutError):
            return None
        finally:
            if opened and router is not None:
                await router.close("left")
        if answer.get("op") != "left":
            return None
        if self._carrying:
            # Requests routed here before the router took the leave in: answer them, don't cut them off.
            await asyncio.wait(set(self._carrying), timeout=drain_s)
        remaining = answer.get("remaining")
        rejoining = answer.get("rejoining")
        self.router_waits = float(rejoining) if isinstance(rejoining, (int, float)) else 0.0
        return int(remaining) if isinstance(remaining, int) else None
