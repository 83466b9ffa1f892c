"""Which way images reach a cluster, decided from :class:`ClusterFacts` alone (pure).

The order follows Tilt (internal/build/image_builder.go, internal/k8s/
registry.go) and Skaffold (pkg/skaffold/config/util.go ``GetCluster``,
pkg/skaffold/kubernetes/loader/load.go):

1. a registry the user named (``--default-repo``, ``INNERLOOP_DEFAULT_REPO``,
   ``registry:`` in innerloop.yaml) wins: push there, deploy by digest;
2. innerloop's bundled cluster: import into its containerd;
3. a local registry the cluster publishes (KEP-1755): push to ``host``,
   deploy with ``hostFromContainerRuntime`` (Tilt and Skaffold both prefer
   it to a loader: one push serves every node);
4. a local cluster recognised by its kubeconfig or its nodes (kind, minikube,
   k3d, Docker Desktop, Rancher Desktop, OrbStack, microk8s): its own
   loader, or the container runtime it shares with this machine;
5. nothing else: :class:`NoDelivery`, whose message lists what would work.

Recognition reads the context and cluster names first (what the user
picked), then the nodes (names, labels, providerID: what the cluster says
of itself), and keeps the evidence so `doctor` can say why.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from innerloop.delivery.facts import ClusterFacts, NodeFacts


class Method(StrEnum):
    BUNDLED = "bundled"  # ctr import into the bundled cluster's containerd
    REGISTRY = "registry"  # skopeo copy to a registry, deploy by digest
    LOADER = "loader"  # the local cluster's own loader (kind load, minikube image load, ...)


class ClusterKind(StrEnum):
    BUNDLED = "bundled"
    KIND = "kind"
    MINIKUBE = "minikube"
    K3D = "k3d"
    DOCKER_DESKTOP = "docker-desktop"
    RANCHER_DESKTOP = "rancher-desktop"
    ORBSTACK = "orbstack"
    MICROK8S = "microk8s"
    UNKNOWN = "unknown"


INSTALL_HINTS = {
    "kind": "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
    "minikube": "install minikube (https://minikube.sigs.k8s.io/docs/start/)",
    "k3d": "install k3d (https://k3d.io/#installation)",
    "docker": "install the docker CLI (it talks to the cluster's Docker engine)",
    "nerdctl": "install nerdctl (Rancher Desktop ships it in ~/.rd/bin)",
    "microk8s": "install microk8s or put it on PATH (snap install microk8s --classic)",
    "skopeo": "install skopeo (apt install skopeo / brew install skopeo)",
}
_NAMED_REPO_HINT = (
    "set --default-repo, INNERLOOP_DEFAULT_REPO or `registry: {repo: ...}` in innerloop.yaml "
    "to a registry the cluster can pull from (credentials come from `docker login`)"
)


@dataclass(frozen=True, kw_only=True)
class Recognition:
    """What kind of cluster this is, and the facts that say so."""

    kind: ClusterKind
    evidence: tuple[str, ...] = ()
    name: str = ""  # the cluster's or profile's own name, for its loader (kind's --name, minikube's -p)

    def describe(self) -> str:
        why = ", ".join(self.evidence)
        return f"{self.kind} ({why})" if why else str(self.kind)


@dataclass(frozen=True, kw_only=True)
class RegistryTarget:
    """Where images are pushed and how the nodes name that same place."""

    push: str  # repository prefix reachable from this machine: localhost:5001, registry.example.com/team
    pull: str  # the same repository as the nodes' container runtime reaches it
    insecure: bool  # plain HTTP / unverified TLS allowed
    source: str  # where it was configured or published


@dataclass(frozen=True, kw_only=True)
class LoaderCommand:
    """One loader invocation; ``stdin`` is a file fed to it (microk8s reads the archive there)."""

    argv: tuple[str, ...]
    stdin: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Loader:
    """A local cluster's loader: the tool, and how it is called with an image archive."""

    tool: str
    build: Callable[[Path], LoaderCommand] = field(compare=False)
    shown: str  # the command as `doctor` prints it, with <archive>

    def command(self, archive: Path) -> LoaderCommand:
        return self.build(archive)


@dataclass(frozen=True, kw_only=True)
class DeliveryPlan:
    method: Method
    cluster: Recognition
    reason: str
    registry: RegistryTarget | None = None
    loader: Loader | None = None

    def describe(self) -> str:
        """One line for `doctor` and `up`."""
        if self.method is Method.BUNDLED:
            return "bundled: containerd import (ctr) into the bundled cluster's node"
        if self.method is Method.REGISTRY:
            assert self.registry is not None
            reg = self.registry
            pull = f", nodes pull from {reg.pull}" if reg.pull != reg.push else ""
            plain = " (plain HTTP allowed)" if reg.insecure else ""
            return f"registry: push to {reg.push}{plain}{pull}, deploy by digest"
        assert self.loader is not None
        return f"loader: {self.loader.shown}"


class NoDelivery(RuntimeError):
    """No way to get images onto this cluster; the message lists what would work."""

    def __init__(self, message: str, *, cluster: Recognition, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.missing = tuple(missing)


# ---- recognising the cluster ---------------------------------------------------------------------

_K3D_NODE = re.compile(r"^k3d-(?P<cluster>.+)-(?:server|agent)-\d+$")


def _strip(prefix: str, *names: str) -> str:
    for name in names:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return ""


def _names(facts: ClusterFacts) -> list[tuple[str, str]]:
    """(which, value) for the context and cluster names, each once."""
    found = [("context", facts.context)]
    if facts.cluster_name and facts.cluster_name != facts.context:
        found.append(("cluster", facts.cluster_name))
    return found


def _by_name(facts: ClusterFacts) -> Recognition | None:
    """From the kubeconfig's context and cluster names (as Skaffold and Tilt's clusterid read them)."""
    for which, value in _names(facts):
        said = f"{which} {value}"
        if value in ("docker-desktop", "docker-for-desktop") or value.startswith("docker-for-desktop-cluster"):
            return Recognition(kind=ClusterKind.DOCKER_DESKTOP, evidence=(said,))
        if value.startswith("rancher-desktop"):
            return Recognition(kind=ClusterKind.RANCHER_DESKTOP, evidence=(said,))
        if value == "orbstack":
            return Recognition(kind=ClusterKind.ORBSTACK, evidence=(said,))
        if value.startswith("microk8s"):
            return Recognition(kind=ClusterKind.MICROK8S, evidence=(said,))
        if value.startswith("k3d-"):
            return Recognition(kind=ClusterKind.K3D, evidence=(said,), name=value[len("k3d-") :])
        if value == "kind" or value.startswith("kind-") or value.endswith("@kind"):
            name = value[len("kind-") :] if value.startswith("kind-") else value.removesuffix("@kind")
            return Recognition(kind=ClusterKind.KIND, evidence=(said,), name=name or "kind")
        if value.startswith("minikube"):
            return Recognition(kind=ClusterKind.MINIKUBE, evidence=(said,), name=value)
    if "/.minikube/" in facts.ca_file:  # Tilt's clusterid: a profile renamed, its CA still in ~/.minikube
        return Recognition(kind=ClusterKind.MINIKUBE, evidence=(f"CA {facts.ca_file}",), name=facts.context)
    return None


def _by_node(node: NodeFacts) -> Recognition | None:
    """From one node: labels and providerID the distribution sets, or its well-known node name."""
    labels = node.labels
    # Docker Desktop's kind-based clusters have kind's providerID too; `kind` does not see them.
    if node.name in {"docker-desktop", "desktop-control-plane"}:
        return Recognition(kind=ClusterKind.DOCKER_DESKTOP, evidence=(f"node {node.name}",))
    if node.provider_id.startswith("kind://"):
        # kind://docker/<cluster>/<node>
        parts = node.provider_id.removeprefix("kind://").split("/")
        name = parts[1] if len(parts) >= 3 else ""
        return Recognition(kind=ClusterKind.KIND, evidence=(f"node providerID {node.provider_id}",), name=name)
    if "minikube.k8s.io/name" in labels:
        profile = labels["minikube.k8s.io/name"]
        return Recognition(
            kind=ClusterKind.MINIKUBE, evidence=(f"node label minikube.k8s.io/name={profile}",), name=profile
        )
    if "microk8s.io/cluster" in labels:
        return Recognition(kind=ClusterKind.MICROK8S, evidence=("node label microk8s.io/cluster",))
    if m := _K3D_NODE.match(node.name):
        return Recognition(kind=ClusterKind.K3D, evidence=(f"node {node.name}",), name=m["cluster"])
    if node.name == "lima-rancher-desktop":
        return Recognition(kind=ClusterKind.RANCHER_DESKTOP, evidence=(f"node {node.name}",))
    if node.name == "orbstack":
        return Recognition(kind=ClusterKind.ORBSTACK, evidence=(f"node {node.name}",))
    return None


def recognise(facts: ClusterFacts) -> Recognition:
    """The kind of cluster, with evidence; the kubeconfig's names first, then the nodes."""
    if facts.bundled:
        return Recognition(
            kind=ClusterKind.BUNDLED, evidence=(f"server {facts.server} and the bundled cluster runs on this machine",)
        )
    from_name = _by_name(facts)
    from_nodes = [r for node in facts.nodes or () if (r := _by_node(node)) is not None]
    if from_name is not None:
        agreeing = [r for r in from_nodes if r.kind is from_name.kind]
        if agreeing:  # the nodes confirm it; their name (kind's providerID) is the cluster's own
            node = agreeing[0]
            return Recognition(
                kind=from_name.kind,
                evidence=(*from_name.evidence, *node.evidence),
                name=node.name or from_name.name,
            )
        return from_name
    return from_nodes[0] if from_nodes else Recognition(kind=ClusterKind.UNKNOWN)


# ---- registries ----------------------------------------------------------------------------------


def _host_of(repo: str) -> str:
    host = repo.split("/", 1)[0]
    if host.startswith("["):  # [::1]:5000
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def plain_http_tolerated(repo: str) -> bool:
    """A registry on loopback or a private address may speak plain HTTP (as docker treats 127.0.0.0/8)."""
    host = _host_of(repo)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _named_registry(facts: ClusterFacts, recognised: Recognition) -> DeliveryPlan:
    repo = facts.default_repo
    assert repo is not None
    if "skopeo" not in facts.tools:
        raise NoDelivery(
            f"images go to {repo.repo} (from {repo.source}), which needs skopeo: {INSTALL_HINTS['skopeo']}",
            cluster=recognised,
            missing=("skopeo",),
        )
    insecure = repo.insecure or plain_http_tolerated(repo.repo)
    return DeliveryPlan(
        method=Method.REGISTRY,
        cluster=recognised,
        reason=f"{repo.source} names {repo.repo}",
        registry=RegistryTarget(push=repo.repo, pull=repo.repo, insecure=insecure, source=repo.source),
    )


def _local_registry(facts: ClusterFacts, recognised: Recognition) -> DeliveryPlan | None:
    hosting = facts.local_registry
    if hosting is None or not hosting.host or "skopeo" not in facts.tools:
        return None
    pull = hosting.host_from_container_runtime or hosting.host
    return DeliveryPlan(
        method=Method.REGISTRY,
        cluster=recognised,
        reason="the cluster publishes a local registry (KEP-1755 ConfigMap kube-public/local-registry-hosting)",
        registry=RegistryTarget(
            push=hosting.host, pull=pull, insecure=True, source="kube-public/local-registry-hosting"
        ),
    )


# ---- loaders -------------------------------------------------------------------------------------


def _loader(tool: str, shown: str, build: Callable[[Path], LoaderCommand]) -> Loader:
    return Loader(tool=tool, build=build, shown=shown)


def _docker_load() -> Loader:
    return _loader("docker", "docker load -i <archive>", lambda a: LoaderCommand(argv=("docker", "load", "-i", str(a))))


def _nerdctl_load() -> Loader:
    return _loader(
        "nerdctl",
        "nerdctl --namespace k8s.io load -i <archive>",
        lambda a: LoaderCommand(argv=("nerdctl", "--namespace", "k8s.io", "load", "-i", str(a))),
    )


def _runtime(facts: ClusterFacts) -> str:
    """containerd or docker, from the nodes' containerRuntimeVersion; '' when unknown."""
    runtimes = {n.container_runtime.split("://", 1)[0] for n in facts.nodes or () if n.container_runtime}
    return runtimes.pop() if len(runtimes) == 1 else ""


def loader_candidates(facts: ClusterFacts, recognised: Recognition) -> list[Loader]:
    """The loaders that serve this kind of cluster, best first (pure)."""
    kind, name = recognised.kind, recognised.name
    if kind is ClusterKind.KIND:
        cluster = name or "kind"
        return [
            _loader(
                "kind",
                f"kind load image-archive <archive> --name {cluster}",
                lambda a: LoaderCommand(argv=("kind", "load", "image-archive", str(a), "--name", cluster)),
            )
        ]
    if kind is ClusterKind.MINIKUBE:
        profile = name or "minikube"
        return [
            _loader(
                "minikube",
                f"minikube image load <archive> -p {profile}",
                lambda a: LoaderCommand(argv=("minikube", "image", "load", str(a), "-p", profile)),
            )
        ]
    if kind is ClusterKind.K3D:
        cluster = name or "k3s-default"
        return [
            _loader(
                "k3d",
                f"k3d image import <archive> -c {cluster}",
                lambda a: LoaderCommand(argv=("k3d", "image", "import", str(a), "-c", cluster)),
            )
        ]
    if kind in (ClusterKind.DOCKER_DESKTOP, ClusterKind.ORBSTACK):
        return [_docker_load()]  # the cluster runs on this Docker engine: what it loads, pods run
    if kind is ClusterKind.RANCHER_DESKTOP:
        runtime = _runtime(facts)
        if runtime == "docker":
            return [_docker_load()]
        if runtime == "containerd":
            return [_nerdctl_load()]
        return [_nerdctl_load(), _docker_load()]  # nodes unreadable: whichever of its two runtimes is here
    if kind is ClusterKind.MICROK8S:
        return [
            _loader(
                "microk8s",
                "microk8s images import < <archive>",
                lambda a: LoaderCommand(argv=("microk8s", "images", "import"), stdin=a),
            )
        ]
    return []


# ---- the decision --------------------------------------------------------------------------------


def plan_delivery(facts: ClusterFacts) -> DeliveryPlan:
    """How images reach this cluster; :class:`NoDelivery` when no way works from here."""
    recognised = recognise(facts)
    if facts.default_repo is not None:
        return _named_registry(facts, recognised)
    if recognised.kind is ClusterKind.BUNDLED:
        return DeliveryPlan(
            method=Method.BUNDLED, cluster=recognised, reason="the bundled cluster's containerd runs on this machine"
        )
    local = _local_registry(facts, recognised)
    if local is not None:
        return local
    candidates = loader_candidates(facts, recognised)
    for loader in candidates:
        if loader.tool in facts.tools:
            return DeliveryPlan(
                method=Method.LOADER,
                cluster=recognised,
                reason=f"{recognised.kind} cluster, {loader.tool} is installed",
                loader=loader,
            )
    raise _nothing_works(facts, recognised, [loader.tool for loader in candidates])


def _nothing_works(facts: ClusterFacts, recognised: Recognition, loader_tools: list[str]) -> NoDelivery:
    where = f"cluster {facts.context} ({facts.server})"
    options: list[str] = []
    missing: list[str] = []
    if loader_tools:
        tools = " or ".join(loader_tools)
        options.append(" or ".join(INSTALL_HINTS[t] for t in loader_tools))
        missing.extend(loader_tools)
        head = f"{where} is {recognised.describe()}, but {tools} is not on PATH"
    else:
        head = f"no way to get images onto {where}: innerloop does not recognise it as a local cluster"
    hosting = facts.local_registry
    if hosting is not None and hosting.host and "skopeo" not in facts.tools:
        options.insert(0, f"{INSTALL_HINTS['skopeo']} to push to its local registry {hosting.host}")
        missing.insert(0, "skopeo")
    options.append(_NAMED_REPO_HINT)
    if hosting is None and not loader_tools:
        options.append("or publish a local registry (KEP-1755 ConfigMap kube-public/local-registry-hosting)")
    if hosting is not None and hosting.help:
        options.append(f"(the cluster's registry help: {hosting.help})")
    return NoDelivery(f"{head}: " + "; ".join(options), cluster=recognised, missing=missing)
