"""The intercept router: the one pod an intercept adds to the cluster.

While a Service is intercepted its selector points here (see
:mod:`innerloop.router.restore`); the target workload's pods are not touched.
For every connection on a Service port the router decides where it goes:

- a *global* intercept takes the whole connection, whatever the protocol;
- otherwise HTTP/1.1 is routed request by request
  (:func:`innerloop.router.routing.serve_http1`) and HTTP/2 with prior
  knowledge (h2c, what gRPC speaks inside a cluster) stream by stream
  (:func:`innerloop.router.h2.serve_h2`): a request whose headers match an
  attached personal intercept goes through that developer's tunnel, every
  other one to the *origin*, a shadow Service with the original selector;
- anything else (other TCP) goes to the origin as raw bytes.

Developers reach the router through a port-forward to its control port
(loopback only) and speak the protocol session of :mod:`innerloop.protocol`:
JSON requests on stream 0, and one stream per intercepted connection that
the router opens towards them. Registrations and their secrets live in
:class:`innerloop.router.intercepts.Registry`.

Fail-safe: a dropped tunnel only *detaches* its intercept (traffic goes to
the origin at once; the same secret resumes it within the grace period).
When no intercept is left, the router points the Service back at its pods,
lets kube-proxy catch up while it still serves, closes its connections
gently and deletes its own Deployment; owner references take the rest
(shadow Service, ConfigMap, ServiceAccount, Role, RoleBinding) with it.
That is how nothing lingers after a CLI is SIGKILLed.

Standard library plus `h2` (its HTTP/2), which the agent image carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any

from innerloop.protocol.frames import ProtocolError
from innerloop.protocol.session import ControlChannel, Role, Session, SessionClosed, Stream, StreamReset
from innerloop.protocol.transport import AsyncioByteStream
from innerloop.router.h2 import serve_h2
from innerloop.router.http1 import BufferedConn, Conn, RequestHead, SocketConn, error_response, pipe
from innerloop.router.intercepts import MODES, InterceptRefused, Mode, Registry
from innerloop.router.kubeapi import InClusterApi, KubeError
from innerloop.router.limits import ConnectionCaps, Limits
from innerloop.router.log import log
from innerloop.router.match import HeaderRule
from innerloop.router.restore import restore_managed_fields, restore_selector, selector_of
from innerloop.router.routing import serve_http1
from innerloop.router.sniff import FIRST_BYTE_TIMEOUT, Kind, first_speaker, sniff

ORIGIN = "origin"
FIELD_MANAGER = "innerloop-intercept"
REJOIN_MARGIN = 5.0  # past the grace period: a CLI retries that long before it gives up on a router


@dataclass(frozen=True, kw_only=True)
class PortRoute:
    port: int  # the Service port
    listen: int  # the router's container port the Service's targetPort resolves to
    origin_host: str  # the shadow Service's ClusterIP
    origin_port: int


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    service: str
    namespace: str
    deployment: str
    router_selector: dict[str, str]
    original: dict[str, Any]  # the Service as it was, for the restore
    ports: list[PortRoute]
    control_port: int
    grace: float  # a detached intercept may resume for this long
    startup: float  # with no intercept ever registered, give up after this long
    settle: float  # after the restore, keep serving while kube-proxy moves new connections back
    drain: float  # then let open connections finish for at most this long
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouterConfig:
        return cls(
            service=data["service"],
            namespace=data["namespace"],
            deployment=data["deployment"],
            router_selector=dict(data["routerSelector"]),
            original=dict(data["original"]),
            ports=[
                PortRoute(port=p["port"], listen=p["listen"], origin_host=p["originHost"], origin_port=p["originPort"])
                for p in data["ports"]
            ],
            control_port=int(data.get("controlPort", 47601)),
            grace=float(data.get("grace", 15.0)),
            startup=float(data.get("startup", 60.0)),
            settle=float(data.get("settle", 3.0)),
            drain=float(data.get("drain", 5.0)),
            limits=Limits.from_json(data.get("limits")),
        )


class TunnelConn:
    """:class:`Conn` over a protocol stream to a developer's CLI."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def read(self, n: int) -> bytes:
        try:
            return await self._stream.read(n)
        except (StreamReset, SessionClosed):
            return b""

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except (StreamReset, SessionClosed, RuntimeError) as err:
            raise ConnectionResetError(f"tunnel closed: {err}") from None

    async def close_write(self) -> None:
        with contextlib.suppress(StreamReset, SessionClosed):
            await self._stream.close()

    async def close(self) -> None:
        with contextlib.suppress(StreamReset, SessionClosed):
            await self._stream.close()
        self._stream.reset("done")


class Router:
    def __init__(self, config: RouterConfig, *, api: InClusterApi | None = None) -> None:
        self.config = config
        self.api = api or InClusterApi()
        self.registry = Registry(grace=config.grace)
        # Which process this is: a CLI whose resume is refused as unknown by a *new* instance (the pod
        # was deleted, OOM-killed, rescheduled) registers again; by the same one, its intercept ended.
        self.instance = secrets.token_hex(8)
        self.started = time.monotonic()
        # A router that restarted (its Service already points here) does not restore and remove itself
        # before the CLIs that held intercepts on its predecessor had the time to register again; until
        # :meth:`watch` has looked, assume it did.
        self.rejoin_until = self.started + config.grace + REJOIN_MARGIN
        self._tunnels: dict[str, Session] = {}  # intercept name -> the session holding it
        self._connections: set[asyncio.Task[None]] = set()
        self.caps = ConnectionCaps(config.limits)
        self._draining = asyncio.Event()
        self.shutting_down = False
        self.done = asyncio.Event()
        self.stats: dict[str, int] = {"local": 0, "origin": 0, "connections": 0}
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Short work that must not hold up an answer; owned here until it ends (cancelled at exit)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- data path ---------------------------------------------------------------------------

    def handler(self, route: PortRoute) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            admitted, why = self.caps.admit(source, now=time.monotonic())
            if not admitted:
                # Over a cap: closed before one byte is read, so a flood costs a file descriptor for an instant.
                if why is not None:
                    log(f"port {route.port}: {why}")
                writer.transport.abort()
                return
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            self.stats["connections"] += 1
            try:
                await self._serve_connection(route, SocketConn(reader, writer))
            except Exception as err:  # one broken connection never takes the router down
                log(f"port {route.port}: connection broken: {type(err).__name__}: {err}")
            finally:
                self.caps.release(source)
                self._connections.discard(task)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        return on_connection

    async def _serve_connection(self, route: PortRoute, client: SocketConn) -> None:
        """Route one client connection: whole (a global intercept), per request (HTTP), per stream (h2c), or raw.

        What the connection speaks is decided by :mod:`innerloop.router.sniff`
        within ``head_timeout`` of its start; a client that sends nothing for
        ``FIRST_BYTE_TIMEOUT`` meets the origin, and whoever speaks first
        decides (see :func:`innerloop.router.sniff.first_speaker`).
        """
        name = self.registry.global_for(route.port)
        if name is not None:
            upstream = await self._connect(route, name)
            await pipe(client, upstream)
            return
        limits = self.config.limits
        deadline = asyncio.get_running_loop().time() + limits.head_timeout
        buffered = BufferedConn(client)
        origin: Conn | None = None
        greeting = b""
        kind: Kind = "tcp"
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    async with asyncio.timeout(FIRST_BYTE_TIMEOUT):
                        if not await buffered.fill():
                            return  # a probe, or a client that gave up
                except TimeoutError:
                    # Silent so far: a server-speaks-first protocol, or a slow client. Ask the origin.
                    origin = await self._connect(route, ORIGIN)
                    greeting = await first_speaker(buffered, origin)
                if not greeting and buffered.buffered:
                    kind = await sniff(buffered, limit=limits.max_head_bytes)
        except TimeoutError:
            if origin is not None:
                await origin.close()
            if buffered.buffered:  # the start of a request, never completed
                with contextlib.suppress(OSError):
                    await client.write(error_response(408, "request not received in time"))
            return
        if greeting:
            assert origin is not None
            await client.write(greeting)
            await pipe(buffered, origin)
            return
        if not buffered.buffered:  # one side closed without a word
            if origin is not None:
                await origin.close()
            return
        if kind == "tcp":
            upstream = origin or await self._connect(route, ORIGIN)
            await upstream.write(buffered.take_buffer())
            await pipe(buffered, upstream)
            return
        if origin is not None:
            await origin.close()
        if kind == "http1":

            def choose(head: RequestHead) -> Hashable:
                return self.registry.personal_for(route.port, head.headers) or ORIGIN

            await serve_http1(
                buffered,
                choose=choose,
                connect=lambda key: self._connect(route, str(key)),
                draining=self._draining,
                on_exchange=self._count,
                limits=limits,
                head_deadline=deadline,
            )
            return

        def choose_stream(headers: list[tuple[bytes, bytes]]) -> Hashable:
            return self.registry.personal_for(route.port, headers) or ORIGIN

        await serve_h2(
            buffered,
            choose=choose_stream,
            connect=lambda key: self._connect(route, str(key)),
            draining=self._draining,
            on_exchange=lambda key, _status: self._tally(key),
            limits=limits,
        )

    def _count(self, key: Hashable, head: RequestHead, status: int) -> None:
        self._tally(key)

    def _tally(self, key: Hashable) -> None:
        self.stats["origin" if key == ORIGIN else "local"] += 1

    async def _connect(self, route: PortRoute, key: str) -> Conn:
        """An upstream for ``key``: a developer's tunnel, or the origin when it is gone."""
        if key != ORIGIN:
            session = self._tunnels.get(key)
            intercept = self.registry.get(key)
            if session is not None and intercept is not None and intercept.attached:
                header = json.dumps({"kind": "intercept", "name": key, "port": route.port}).encode()
                try:
                    return TunnelConn(await session.open(header))
                except (SessionClosed, ProtocolError) as err:
                    log(f"tunnel of {key} failed ({err}); this connection goes to the cluster's pods")
        # asyncio sets TCP_NODELAY on its TCP transports: small heads are not held back.
        return SocketConn(*await asyncio.open_connection(route.origin_host, route.origin_port))

    # -- control: developers' sessions -------------------------------------------------------

    async def handle_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(
            AsyncioByteStream(reader, writer), role=Role.AGENT, keepalive_interval=2.0, keepalive_timeout=6.0
        )
        held: set[str] = set()
        try:
            async with session:
                control = ControlChannel(session.control)
                while True:
                    message = await control.receive()
                    if message is None:
                        break
                    answer = await self._answer(session, held, message)
                    await control.send(answer)
        except (SessionClosed, ProtocolError, ConnectionError):
            pass
        finally:
            now = time.monotonic()
            for name in held:
                if self._tunnels.get(name) is session:
                    del self._tunnels[name]
                    self.registry.detach(name, now=now)
                    if self.registry.get(name) is not None:
                        log(f"{name}: tunnel lost; its traffic goes to the cluster's pods until it resumes")

    async def _answer(self, session: Session, held: set[str], message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        request_id = message.get("id")
        try:
            if op == "intercept":
                return self._intercept(session, held, message) | {"id": request_id}
            if op == "leave":
                name = str(message.get("name", ""))
                intercept = self.registry.leave(name, str(message.get("secret", "")), now=time.monotonic())
                held.discard(name)
                holder = self._tunnels.pop(name, None)
                if holder is not None and holder is not session:
                    # Left from another terminal: the holding CLI learns it from its session's end.
                    self._spawn(holder.close(f"intercept {name} was left"))
                log(f"{name}: {intercept.owner} left")
                answer = {"op": "left", "id": request_id, "name": name, "remaining": len(self.registry)}
                if not len(self.registry) and (wait := self.rejoin_until - time.monotonic()) > 0:
                    answer["rejoining"] = round(wait, 1)  # the Service is restored after that, if no one came back
                return answer
            if op == "list":
                return {
                    "op": "intercepts",
                    "id": request_id,
                    "service": self.config.service,
                    "items": [i.describe(values=i.name in held) for i in self.registry.all()],
                    "stats": dict(self.stats),
                    "shuttingDown": self.shutting_down,
                }
            return {"op": "error", "id": request_id, "reason": f"unknown op {op!r}"}
        except InterceptRefused as err:
            return {"op": "denied", "id": request_id, "reason": str(err), "code": err.code, "router": self.instance}
        except (ValueError, TypeError, KeyError) as err:
            return {"op": "denied", "id": request_id, "reason": str(err), "code": "denied", "router": self.instance}

    def _intercept(self, session: Session, held: set[str], message: dict[str, Any]) -> dict[str, Any]:
        if self.shutting_down:
            raise InterceptRefused("this router is restoring the Service and going away; try again in a few seconds")
        mode = message.get("mode")
        if mode not in MODES:
            raise InterceptRefused(f"unknown mode {mode!r}")
        chosen: Mode = "global" if mode == "global" else "personal"
        ports = [int(p) for p in message.get("ports") or []]
        known = {r.port for r in self.config.ports}
        if unknown := sorted(set(ports) - known):
            raise InterceptRefused(f"service {self.config.service} has no port {unknown}; it has {sorted(known)}")
        rules = [HeaderRule.from_dict(r) for r in message.get("rules") or []]
        name = str(message.get("name", ""))
        intercept, resumed = self.registry.register(
            name=name,
            secret=str(message.get("secret", "")),
            owner=str(message.get("owner", "?"))[:200],
            mode=chosen,
            rules=rules,
            ports=ports,
            now=time.monotonic(),
            resume=bool(message.get("resume")),
            identity=str(message["identity"]) if message.get("identity") is not None else None,
        )
        previous = self._tunnels.get(name)
        self._tunnels[name] = session
        held.add(name)
        if previous is not None and previous is not session:
            self._spawn(previous.close("the intercept resumed on another connection"))
        log(f"{name}: {'resumed' if resumed else 'registered'} by {intercept.owner} ({intercept.mode})")
        return {
            "op": "intercepting",
            "name": name,
            "resumed": resumed,
            "service": self.config.service,
            "router": self.instance,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def watch(self) -> None:
        """Expire detached intercepts; when none is left, restore and remove everything.

        Not before ``rejoin_until`` when this router replaced one that held intercepts: their CLIs
        register again within seconds, and one that leaves meanwhile must not end the others'.
        """
        if not await self._replaced_a_router():
            self.rejoin_until = self.started
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for gone in self.registry.expire(now=now):
                self._tunnels.pop(gone.name, None)
                log(f"{gone.name}: not resumed within {self.config.grace:g}s; removed")
            never_used = self.registry.empty_since is None and not len(self.registry)
            if never_used and now - self.started >= self.config.startup:
                log(f"no intercept registered within {self.config.startup:g}s")
                break
            if self.registry.empty_since is not None and now >= self.rejoin_until:
                break
        await self.shut_down()

    async def _replaced_a_router(self) -> bool:
        """Whether the Service already pointed here when this router started: a pod deleted, evicted or
        OOM-killed was replaced. A fresh router is pointed at only after its first registration."""
        path = f"/api/v1/namespaces/{self.config.namespace}/services/{self.config.service}"
        try:
            current = await self.api.get(path)
        except (KubeError, OSError) as err:
            log(f"service {self.config.service}: cannot read it ({err}); assuming this router replaced another")
            return True
        replaced = selector_of(current) == self.config.router_selector
        if replaced:
            wait = self.rejoin_until - time.monotonic()
            log(f"service {self.config.service} already points here: waiting {wait:.0f}s for the CLIs to come back")
        return replaced

    async def shut_down(self) -> None:
        self.shutting_down = True
        restored = await self.restore_service()
        if restored:
            # New connections move back to the pods once kube-proxy has the new endpoints.
            await asyncio.sleep(self.config.settle)
        self._draining.set()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=self.config.drain)
        await self.delete_self()
        self.done.set()

    async def restore_service(self) -> bool:
        """Point the Service back at its pods (when it still points here). True when it did."""
        cfg = self.config
        path = f"/api/v1/namespaces/{cfg.namespace}/services/{cfg.service}"
        original_selector = selector_of(cfg.original)
        for attempt in range(5):
            try:
                current = await self.api.get(path)
                if selector_of(current) != cfg.router_selector:
                    if selector_of(current) != original_selector:
                        log(f"service {cfg.service}: its selector was changed by someone else; left as it is")
                    return False
                after = await self.api.json_patch(
                    path, restore_selector(cfg.router_selector, original_selector), field_manager=FIELD_MANAGER
                )
                patch = restore_managed_fields(cfg.original, after)
                if patch is not None:
                    with contextlib.suppress(KubeError):
                        await self.api.json_patch(path, patch, field_manager=FIELD_MANAGER)
                log(f"service {cfg.service}: selector restored")
                return True
            except KubeError as err:
                if err.status == 404:
                    return False
                log(f"service {cfg.service}: restore failed ({err}); retrying")
            except OSError as err:
                log(f"service {cfg.service}: API server unreachable ({err}); retrying")
            await asyncio.sleep(0.5 * (attempt + 1))
        return False

    async def delete_self(self) -> None:
        path = f"/apis/apps/v1/namespaces/{self.config.namespace}/deployments/{self.config.deployment}"
        try:
            await self.api.delete(path, options={"propagationPolicy": "Background"})
            log(f"deployment {self.config.deployment} deleted; owner references remove the rest")
        except (KubeError, OSError) as err:
            log(f"could not delete deployment {self.config.deployment}: {err}; `innerloop clean` removes it")

    async def on_terminate(self) -> None:
        """SIGTERM: when the router itself is being removed (not just moved), put the Service back first."""
        if self.shutting_down:
            return
        path = f"/apis/apps/v1/namespaces/{self.config.namespace}/deployments/{self.config.deployment}"
        try:
            deployment = await self.api.get(path)
            going = bool(deployment.get("metadata", {}).get("deletionTimestamp"))
        except KubeError as err:
            going = err.status == 404
        except OSError:
            going = False
        if going:
            self.shutting_down = True
            await self.restore_service()


async def run_router(config: RouterConfig) -> int:
    router = Router(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Data ports first: a CLI that could register (control port) may switch the Service at once.
    servers = [await asyncio.start_server(router.handler(route), None, route.listen) for route in config.ports]
    servers.append(await asyncio.start_server(router.handle_control, "127.0.0.1", config.control_port))
    log(
        f"routing service {config.namespace}/{config.service} ports "
        + ", ".join(f"{r.port}->:{r.listen} (origin {r.origin_host}:{r.origin_port})" for r in config.ports)
    )
    watcher = loop.create_task(router.watch())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({watcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        await stopped  # cleaned up: wait for the kubelet's SIGTERM
    else:
        await router.on_terminate()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    for server in servers:
        server.close()
    return 0


def load_config(path: str) -> RouterConfig:
    with open(path) as file:
        return RouterConfig.from_json(json.load(file))
