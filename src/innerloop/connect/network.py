"""The cluster's Services by name for local commands: a namespace, its DNS server, one forward per port.

``ClusterNetwork.open`` lists the namespace's Services once, gives each a
loopback address (``dns.plan_services``), makes the command's namespace
(``netns.NetworkNamespace``) with DNS on 127.0.0.1:53 and a listener per
Service port inside it, and serves them from this process: DNS answers
(``dns_server.DnsServer``) and self-healing port-forwards (``PortForward``
with the pre-bound socket), so every connection reaches a ready pod of the
Service through the API server. Nothing is created in the cluster.

A Service created after the start is not resolvable until the next run (a
watch would need a way to add listeners to a running namespace; the first
process could create them on request, a later step). Services of other
namespaces, pod hostnames and ExternalName Services are not answered.

Outbound traffic: the namespace has only loopback. When ``slirp4netns`` is
installed (Debian package ``slirp4netns``) and can open ``/dev/net/tun``
(mode 0666 on most distributions; root only on some machines), it gives
the namespace user-mode NAT to the internet, and the host's own loopback
services at 10.0.2.2. Without it, only cluster Services are reachable, and
``outbound`` says why.

Ownership: ``open`` is an async context manager owning a task group with the
DNS server, every forward and slirp4netns; leaving it cancels them and
closes the namespace (its commands get SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube.resources.core_v1 import Service

from innerloop.connect.dns import (
    CLUSTER_DOMAIN,
    ClusterNames,
    ServiceAddress,
    SkippedService,
    host_resolv_conf,
    namespace_resolv_conf,
    plan_services,
)
from innerloop.connect.dns_server import DnsServer
from innerloop.connect.netns import Bind, NetworkNamespace
from innerloop.forward.forward import ForwardEvent, PortForward
from innerloop.k8s.connection import ClusterConnection

DNS_ADDRESS = "127.0.0.1"
HOST_LOOPBACK_FROM_NAMESPACE = "10.0.2.2"  # slirp4netns's gateway, forwarded to the host's 127.0.0.1
_SLIRP_READY_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class Outbound:
    """Whether the namespace reaches beyond the cluster's Services, and how or why not."""

    available: bool
    detail: str


async def list_services(conn: ClusterConnection, *, namespace: str) -> list[dict[str, Any]]:
    client = conn.client()
    try:
        return [s.to_dict() async for s in client.list(Service, namespace=namespace)]
    finally:
        await client.close()


class ClusterNetwork:
    """A namespace for local commands in which ``namespace``'s Services resolve and answer."""

    def __init__(
        self,
        *,
        netns: NetworkNamespace,
        names: ClusterNames,
        services: Sequence[ServiceAddress],
        skipped: Sequence[SkippedService],
        outbound: Outbound,
    ) -> None:
        self.netns = netns
        self.names = names
        self.services = list(services)
        self.skipped = list(skipped)
        self.outbound = outbound

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        conn: ClusterConnection,
        *,
        namespace: str,
        services: Sequence[Mapping[str, Any]] | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
        outbound: bool = True,
        on_event: Callable[[ForwardEvent], None] | None = None,
        host_resolv_conf_path: Path = Path("/etc/resolv.conf"),
    ) -> AsyncIterator[ClusterNetwork]:
        """Start everything; ``services`` (as ``to_dict()``) saves the listing when the caller has them."""
        if services is None:
            services = await list_services(conn, namespace=namespace)
        planned, skipped = plan_services(services)
        try:
            upstreams, host_search = host_resolv_conf(host_resolv_conf_path.read_text())
        except OSError:
            upstreams, host_search = [], []
        dns_udp = Bind(address=DNS_ADDRESS, port=53, kind="udp")
        dns_tcp = Bind(address=DNS_ADDRESS, port=53, kind="tcp")
        service_binds = {(s.name, port): Bind(address=s.address, port=port) for s in planned for port in s.ports}
        netns = await NetworkNamespace.start(
            resolv_conf=namespace_resolv_conf(
                namespace=namespace, host_search=host_search, cluster_domain=cluster_domain
            ),
            binds=[dns_udp, dns_tcp, *service_binds.values()],
        )
        try:
            names = ClusterNames.of(namespace=namespace, services=planned, cluster_domain=cluster_domain)
            async with asyncio.TaskGroup() as tg:
                tasks: list[asyncio.Task[None]] = []

                def own(work: Coroutine[Any, Any, None], name: str) -> None:
                    tasks.append(tg.create_task(_contained(work, name, on_event), name=name))

                server = DnsServer(
                    names=names,
                    upstreams=[(address, 53) for address in upstreams],
                    udp=netns.sockets[dns_udp],
                    tcp=netns.sockets[dns_tcp],
                )
                own(server.run(), "dns")
                for (service, port), bind in service_binds.items():
                    forward = PortForward(
                        conn,
                        namespace=namespace,
                        service=service,
                        remote_port=port,
                        sock=netns.sockets[bind],
                        on_event=on_event,
                    )
                    own(forward.run(), f"forward {service}:{port}")
                reach = Outbound(available=False, detail="not asked for")
                if outbound:
                    reach = await _start_slirp(netns, own)
                try:
                    yield cls(netns=netns, names=names, services=planned, skipped=skipped, outbound=reach)
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            await netns.close()


async def _contained(
    work: Coroutine[Any, Any, None], name: str, on_event: Callable[[ForwardEvent], None] | None
) -> None:
    """One part failing (a Service without pods, say) never takes the command's network down."""
    try:
        await work
    except Exception as err:
        if on_event is not None:
            on_event(ForwardEvent(kind="error", message=f"{name} stopped: {err}"))


async def _start_slirp(netns: NetworkNamespace, own: Callable[[Coroutine[Any, Any, None], str], None]) -> Outbound:
    binary = shutil.which("slirp4netns")
    if binary is None:
        return Outbound(
            available=False,
            detail="only cluster Services are reachable (install slirp4netns for outbound access)",
        )
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()  # slirp4netns exits when our end closes, even if we are killed
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--configure",
            "--mtu=65520",
            f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}",
            str(netns.pid),
            "tap0",
            pass_fds=(ready_w, exit_r),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as err:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        return Outbound(available=False, detail=f"only cluster Services are reachable (slirp4netns: {err})")
    os.close(ready_w)
    os.close(exit_r)
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[bytes] = loop.create_future()

    def on_ready() -> None:
        loop.remove_reader(ready_r)
        if not signalled.done():
            signalled.set_result(os.read(ready_r, 1))

    loop.add_reader(ready_r, on_ready)
    try:
        ready = await asyncio.wait_for(signalled, _SLIRP_READY_TIMEOUT_S)
    except TimeoutError:
        ready = b""
    finally:
        loop.remove_reader(ready_r)
        os.close(ready_r)
    if ready != b"1":
        os.close(exit_w)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        _, stderr = await proc.communicate()
        why = stderr.decode(errors="replace").strip().splitlines()
        reason = why[0] if why else "it did not start"
        return Outbound(available=False, detail=f"only cluster Services are reachable (slirp4netns: {reason})")

    async def supervise() -> None:
        try:
            await proc.communicate()  # drains its log lines so it never blocks on a full pipe
        finally:
            os.close(exit_w)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                await proc.wait()

    own(supervise(), "slirp4netns")
    return Outbound(
        available=True,
        detail=f"outbound through slirp4netns; this machine's loopback services at {HOST_LOOPBACK_FROM_NAMESPACE}",
    )
