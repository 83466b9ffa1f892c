"""Which pod, and which of its ports, a port-forward connection goes to. Pure.

kubectl resolves a Service or Deployment to one pod when the forward starts and
dies with it (Tilt #2099, #4801, #6653; Skaffold #4518). Choosing again for
every connection is what lets a forward outlive pod restarts, so the choice is
a plain function over plain data, tested without a cluster:

- only pods that are Running, Ready and not being deleted receive traffic: a
  pod with a deletionTimestamp may still answer for its grace period, but it
  is on its way out and the next connection should not start there;
- the newest such pod wins, so a rolling update moves new connections to the
  new version as soon as it is Ready;
- a port is a number or a container port's name, resolved per pod (two pods of
  a rollout may number a named port differently); a Service port maps to its
  ``targetPort`` the way the Service itself would route it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lightkube.resources.core_v1 import Pod

RemotePort = int | str
"""A port number, or the name of a container port (``containerPorts[].name``)."""


@dataclass(frozen=True, kw_only=True)
class PodView:
    """What the choice needs to know about one pod."""

    name: str
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    created: datetime | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports of all containers, name -> number."""

    @property
    def eligible(self) -> bool:
        return self.phase == "Running" and self.ready and not self.deleting


def pod_view(pod: Pod) -> PodView:
    """The parts of a lightkube Pod that the choice reads."""
    meta = pod.metadata
    status = pod.status
    ready = False
    if status is not None:
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    ports: dict[str, int] = {}
    if pod.spec is not None:
        for container in pod.spec.containers:
            for port in container.ports or []:
                if port.name:
                    ports.setdefault(port.name, port.containerPort)
    return PodView(
        name=(meta.name if meta else None) or "",
        phase=(status.phase if status else None) or "Pending",
        ready=ready,
        deleting=meta is not None and meta.deletionTimestamp is not None,
        created=meta.creationTimestamp if meta else None,
        ports=ports,
    )


def choose_pod(pods: Iterable[PodView], *, ready: bool = True) -> str | None:
    """The pod a new connection should go to: Running, Ready, not deleting, newest; None if there is none.

    Ties on creation time (second resolution) go to the greater name, so the
    choice is stable for the same set of pods. ``ready=False`` takes a pod
    that is not Ready too: a debugger's port answers while the app, paused
    at a breakpoint or waiting for the debugger, fails its readiness probe.
    """
    eligible = [p for p in pods if p.eligible or (not ready and p.phase == "Running" and not p.deleting)]
    if not eligible:
        return None
    newest = max(eligible, key=lambda p: (p.created.timestamp() if p.created else 0.0, p.name))
    return newest.name


def resolve_port(pod: PodView, port: RemotePort) -> int | None:
    """The port number on this pod; None when a named port is not declared by any of its containers."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    return pod.ports.get(port)


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    """One entry of a Service's ``spec.ports``."""

    port: int
    name: str | None = None
    target_port: RemotePort | None = None


def service_target(ports: Sequence[ServicePort], port: RemotePort) -> RemotePort:
    """The pod port a Service sends ``port`` to (matched by number or name).

    A port the Service does not list is taken as a pod port as it is, so
    ``remote_port`` can also name a container port the Service does not expose
    (a debugger, a metrics endpoint).
    """
    for entry in ports:
        if entry.port == port or (entry.name is not None and entry.name == port):
            return entry.target_port if entry.target_port is not None else entry.port
    return port


# The API server and kubelet report the outcome of a port-forward's dial only
# as text on the error channel. These fragments mean the dial itself failed,
# so no byte reached any process in the pod and the connection can be retried
# elsewhere without repeating a request the application already received.
# Seen on this cluster (containerd 1.6):
#   error forwarding port 9999 to pod <id>, uid : failed to execute portforward in
#   network namespace "...": failed to connect to localhost:9999 inside namespace
#   "<id>", IPv4: dial tcp4 127.0.0.1:9999: connect: connection refused ...
_DIAL_FAILURES = ("failed to connect to", "connection refused", "find sandbox", "sandbox not found")


def is_dial_failure(message: str) -> bool:
    """True when a port-forward error says the pod's port could not be reached at all."""
    text = message.lower()
    return any(fragment in text for fragment in _DIAL_FAILURES)


def is_permanent_open_error(message: str) -> bool:
    """True for refusals that waiting for another pod will not fix (credentials, RBAC)."""
    return message.startswith(("401 ", "403 "))
