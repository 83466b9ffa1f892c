"""`innerloop intercept`: from the command to traffic arriving locally, and back.

1. the agent image (the router runs it) is built or found by content hash
   and loaded into the cluster;
2. the Service's router is started or joined (:mod:`innerloop.intercept.cluster`);
3. the intercept is registered with a fresh secret, kept on disk (0600)
   so ``innerloop leave`` from another terminal can end it, and with the
   developer's identity (:class:`DeveloperKey`);
4. the optional local command starts with the target pod's env, ConfigMaps
   and Secrets (:mod:`innerloop.connect.run`);
5. the tunnel carries the intercepted traffic until Ctrl+C, SIGTERM, the
   command's exit or a ``leave``; then the intercept is left and, when it was
   the last one, the router restores the Service and removes itself: this
   waits until the Service is back, so "done" means done.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from innerloop.builders.agent_image import build_agent
from innerloop.config.model import Registry
from innerloop.engine.target import Target
from innerloop.intercept.cluster import RouterInfo, ensure_router, switch_service, wait_router_ready
from innerloop.intercept.plan import router_name, router_selector
from innerloop.intercept.tunnel import InterceptTunnel, Registration
from innerloop.k8s.rest import RawApi, object_path
from innerloop.router.intercepts import DEFAULT_HEADER, Mode
from innerloop.router.match import HeaderRule
from innerloop.router.restore import selector_of

Report = Callable[[str], None]


def whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def owner() -> str:
    return f"{whoami()}@{socket.gethostname()}"


def default_rules() -> list[HeaderRule]:
    """``x-innerloop-user=<user>-<16 hex digits>``: readable, the same on every run, and not guessable."""
    return [HeaderRule(header=DEFAULT_HEADER, op="exact", value=DeveloperKey.load().header_value)]


@dataclass(frozen=True)
class DeveloperKey:
    """This user's random key (``identity.json`` in the state folder, 0600), created on first use.

    A personal intercept's default header value is derived from it: the user
    name for people, plus 64 random bits, so a teammate cannot register it
    before you do (with ``$USER`` alone they could, and get your requests),
    and stable across runs, so a browser extension or a bookmarked preview
    keeps working. One value per user rather than per Service: one header
    then reaches every intercepted Service along a call chain. The router
    gets a second derivation, the *identity*, which tells it that a new
    registration comes from the same developer as a detached one (a crashed
    CLI), never the key itself. Kept in the user's state folder, not in the
    project's ``.innerloop/``: a cloned repository must not be able to
    choose a developer's value.
    """

    key: str

    @classmethod
    def load(cls) -> DeveloperKey:
        path = state_dir().parent / "identity.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                json.dump({"key": secrets.token_urlsafe(32)}, file)
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            key = json.loads(path.read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is unreadable ({err}): delete it; the next intercept makes a new one") from None
        if not isinstance(key, str) or len(key) < 32:
            raise ValueError(f"{path} holds no usable key: delete it; the next intercept makes a new one")
        return cls(key)

    def _derive(self, purpose: str) -> str:
        return hmac.new(self.key.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    @property
    def header_value(self) -> str:
        label = re.sub(r"[^A-Za-z0-9._-]", "", whoami())[:32] or "dev"
        return f"{label}-{self._derive(DEFAULT_HEADER)[:16]}"

    def identity(self, namespace: str, service: str) -> str:
        """What tells one router this developer: per Service, so a router that is not what it seems
        (a teammate can replace its pod) learns nothing it could show another router."""
        return self._derive(f"router identity {namespace}/{service}")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "innerloop" / "intercepts"


def state_file(namespace: str, service: str, name: str) -> Path:
    return state_dir() / f"{namespace}.{service}.{name}.json"


def save_secret(namespace: str, service: str, registration: Registration) -> Path:
    path = state_file(namespace, service, registration.name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"namespace": namespace, "service": service, "name": registration.name, "secret": registration.secret}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file)
    return path


def saved_intercepts(namespace: str | None = None) -> list[dict[str, str]]:
    found = []
    for path in sorted(state_dir().glob("*.json")) if state_dir().is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if namespace is None or data.get("namespace") == namespace:
                found.append({**data, "path": str(path)})
    return found


async def agent_image(
    target: Target, report: Report, *, registry: Registry | None, mirrored: str | None, base: str | None = None
) -> str:
    """The router's image: the pre-mirrored ``agentImage``, else the agent built here (on ``agentBase`` when
    the cluster is not the bundled one, for the nodes' architectures) and delivered."""
    if mirrored is not None:
        return mirrored
    plan = await target.agent_plan(registry=registry, base=base, report=report)
    report(plan.describe())
    image = await asyncio.to_thread(build_agent, plan, paths=target.paths, report=report)
    return await asyncio.to_thread(target.deliver, image)


@dataclass(frozen=True, kw_only=True)
class InterceptRequest:
    service: str
    namespace: str
    mode: Mode
    rules: Sequence[HeaderRule]
    local_ports: dict[int, int]  # Service port -> local port; {} : the single port to `default_local`
    default_local: int | None
    name: str | None
    grace: float
    registry: Registry | None = None  # innerloop.yaml `registry:`
    agent_image: str | None = None  # innerloop.yaml `agentImage:`
    agent_base: str | None = None  # innerloop.yaml `agentBase:`


async def start(target: Target, request: InterceptRequest, *, report: Report) -> InterceptTunnel:
    """The router started or joined (its pod may still be starting) and the tunnel that will hold the
    intercept; the caller runs ``tunnel.run()`` (it registers) and then :func:`switch`."""
    image = await agent_image(
        target, report, registry=request.registry, mirrored=request.agent_image, base=request.agent_base
    )
    async with RawApi(target.conn) as api:
        info = await ensure_router(
            api, namespace=request.namespace, service=request.service, image=image, grace=request.grace, report=report
        )
    return _tunnel(target, request, info, report)


def local_port_map(request: InterceptRequest, info: RouterInfo) -> dict[int, int]:
    ports = dict(request.local_ports)
    if request.default_local is not None:
        for port in info.ports:
            ports.setdefault(port, request.default_local)
    for port in ports:
        if port not in info.ports:
            raise ValueError(f"service {request.service} has no port {port}; its ports: {info.ports}")
    return ports


def _tunnel(target: Target, request: InterceptRequest, info: RouterInfo, report: Report) -> InterceptTunnel:
    ports = local_port_map(request, info)
    if not ports:
        raise ValueError(
            f"say where the traffic goes: --to LOCAL_PORT, or --port SERVICE_PORT:LOCAL_PORT ({info.ports})"
        )
    registration = Registration(
        name=request.name or f"{whoami()}-{secrets.token_hex(3)}",
        secret=secrets.token_urlsafe(32),
        owner=owner(),
        mode=request.mode,
        rules=list(request.rules),
        ports=sorted(ports),
        identity=DeveloperKey.load().identity(request.namespace, request.service),
    )
    save_secret(request.namespace, request.service, registration)

    async def dial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    return InterceptTunnel(
        target.conn,
        namespace=request.namespace,
        service=request.service,
        registration=registration,
        local_ports=ports,
        dial=dial,
        report=report,
        grace=request.grace,
    )


async def switch(
    target: Target, request: InterceptRequest, *, registered: asyncio.Event, timeout: float = 60.0
) -> None:
    """Once the router pod is Ready and the intercept registered through it, point the Service at it."""
    async with RawApi(target.conn) as api:
        deadline = time.monotonic() + timeout
        await wait_router_ready(api, namespace=request.namespace, service=request.service, deadline=deadline)
        await registered.wait()
        await switch_service(api, namespace=request.namespace, service=request.service)


async def wait_restored(target: Target, *, namespace: str, service: str, timeout: float = 30.0) -> bool:
    """Until the router is gone and the Service selects its pods again."""
    deadline = time.monotonic() + timeout
    async with RawApi(target.conn) as api:
        while time.monotonic() < deadline:
            svc = await api.get(object_path("Service", namespace, service))
            router = await api.get(object_path("Deployment", namespace, router_name(service)))
            if (svc is None or selector_of(svc) != router_selector(service)) and router is None:
                return True
            await asyncio.sleep(0.2)
    return False


def forget(namespace: str, service: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_file(namespace, service, name).unlink()
