"""What innerloop can learn about a cluster before choosing how images reach it (the I/O edge).

Everything :mod:`innerloop.delivery.choice` decides on is gathered here once,
as plain data: the kubeconfig's names, the nodes' names, labels and
providerIDs, the KEP-1755 ConfigMap, whether this is the bundled cluster,
the registry the user named and which tools are on PATH.

A least-privilege user (a namespaced Role, docs/RBAC.md) may not read nodes
or ``kube-public``: a 403 makes that fact *unknown*, never an error, and the
decision goes on from the kubeconfig alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import yaml
from lightkube import ApiError
from lightkube.resources.core_v1 import ConfigMap, Node

from innerloop.cluster.components import API_PORT
from innerloop.cluster.node import BundledCluster
from innerloop.k8s.connection import ClusterConnection

BUNDLED_SERVER = f"https://127.0.0.1:{API_PORT}"
LOCAL_REGISTRY_CONFIGMAP = ("kube-public", "local-registry-hosting")
LOCAL_REGISTRY_KEY = "localRegistryHosting.v1"
DEFAULT_REPO_ENV = "INNERLOOP_DEFAULT_REPO"
# Loaders and runtimes a local cluster shares, and the registry client.
DELIVERY_TOOLS = ("kind", "minikube", "k3d", "docker", "nerdctl", "microk8s", "skopeo")

Which = Callable[[str], str | None]


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    provider_id: str = ""
    container_runtime: str = ""  # status.nodeInfo.containerRuntimeVersion, e.g. containerd://1.7.2
    architecture: str = ""  # status.nodeInfo.architecture (GOARCH): amd64, arm64


@dataclass(frozen=True, kw_only=True)
class LocalRegistryHosting:
    """KEP-1755's ``localRegistryHosting.v1``: where a local cluster's registry is, seen from each side."""

    host: str = ""  # from the developer's machine (push here)
    host_from_container_runtime: str = ""  # what the nodes' runtime pulls (pod specs name this)
    host_from_cluster_network: str = ""  # from inside pods (in-cluster builders)
    help: str = ""


@dataclass(frozen=True, kw_only=True)
class DefaultRepo:
    """The registry the user named, and where they named it (shown by `doctor`)."""

    repo: str
    source: str  # "--default-repo", "INNERLOOP_DEFAULT_REPO", "innerloop.yaml registry:"
    insecure: bool = False


@dataclass(frozen=True, kw_only=True)
class ClusterFacts:
    """Plain data about one cluster, as seen by this user from this machine."""

    context: str
    cluster_name: str
    server: str
    ca_file: str = ""
    bundled: bool = False
    # None: unknown (forbidden or unreachable); the reason is in nodes_unknown.
    nodes: tuple[NodeFacts, ...] | None = ()
    nodes_unknown: str = ""
    # None with registry_unknown empty: no ConfigMap; None with a reason: could not read it.
    local_registry: LocalRegistryHosting | None = None
    registry_unknown: str = ""
    default_repo: DefaultRepo | None = None
    tools: Mapping[str, str] = field(default_factory=dict)  # name -> path, only the ones found
    unreachable: str = ""  # the API server could not be reached at all


def resolve_default_repo(
    *, flag: str | None, env: Mapping[str, str], config_repo: str | None = None, config_insecure: bool = False
) -> DefaultRepo | None:
    """flag > INNERLOOP_DEFAULT_REPO > innerloop.yaml ``registry:`` (pure)."""
    if flag:
        return DefaultRepo(repo=flag, source="--default-repo")
    if env.get(DEFAULT_REPO_ENV):
        return DefaultRepo(repo=env[DEFAULT_REPO_ENV], source=DEFAULT_REPO_ENV)
    if config_repo:
        return DefaultRepo(repo=config_repo, source="innerloop.yaml registry:", insecure=config_insecure)
    return None


def parse_local_registry(text: str) -> LocalRegistryHosting:
    """The ConfigMap's ``localRegistryHosting.v1`` value (YAML); ValueError when it is not usable (pure)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{LOCAL_REGISTRY_KEY} is not YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{LOCAL_REGISTRY_KEY} is not a mapping")

    def text_of(key: str) -> str:
        value = doc.get(key)
        return value.strip() if isinstance(value, str) else ""

    return LocalRegistryHosting(
        host=text_of("host"),
        host_from_container_runtime=text_of("hostFromContainerRuntime"),
        host_from_cluster_network=text_of("hostFromClusterNetwork"),
        help=text_of("help"),
    )


def find_tools(names: Iterable[str], *, which: Which = shutil.which) -> dict[str, str]:
    return {name: path for name in names if (path := which(name)) is not None}


def _node_facts(node: Any) -> NodeFacts:  # noqa: ANN401 (lightkube's Node)
    meta, spec, status = node.metadata, node.spec, node.status
    info = status.nodeInfo if status is not None else None
    return NodeFacts(
        name=meta.name or "",
        labels=dict(meta.labels or {}),
        provider_id=(spec.providerID or "") if spec is not None else "",
        container_runtime=(info.containerRuntimeVersion or "") if info is not None else "",
        architecture=(info.architecture or "") if info is not None else "",
    )


def architectures(nodes: Iterable[NodeFacts]) -> tuple[str, ...]:
    """The nodes' architectures, each once, sorted; nodes that do not say are left out (pure)."""
    return tuple(sorted({node.architecture for node in nodes if node.architecture}))


async def node_architectures(conn: ClusterConnection, *, timeout_s: float = 10.0) -> tuple[tuple[str, ...] | None, str]:
    """(the nodes' architectures, "") or (None, why they are unknown): a 403 or an unreachable cluster is no error."""
    client = conn.client()
    try:
        async with asyncio.timeout(timeout_s):
            return architectures([_node_facts(n) async for n in client.list(Node)]), ""
    except ApiError as err:
        return None, _refusal(err, "nodes")
    except (httpx.TransportError, OSError, TimeoutError) as err:
        return None, f"cannot reach {conn.server}: {str(err) or type(err).__name__}"
    finally:
        await client.close()


def _refusal(err: ApiError, what: str) -> str:
    code = err.status.code
    if code == 403:
        return f"not allowed to read {what}"
    return f"reading {what} failed ({code}: {err.status.message})"


async def _read_cluster(conn: ClusterConnection) -> dict[str, Any]:
    found: dict[str, Any] = {}
    client = conn.client()
    try:
        try:
            found["nodes"] = tuple([_node_facts(n) async for n in client.list(Node)])
        except ApiError as err:
            found["nodes"], found["nodes_unknown"] = None, _refusal(err, "nodes")
        namespace, name = LOCAL_REGISTRY_CONFIGMAP
        try:
            cm = await client.get(ConfigMap, name, namespace=namespace)
        except ApiError as err:
            if err.status.code != 404:
                found["registry_unknown"] = _refusal(err, f"ConfigMap {namespace}/{name}")
        else:
            text = (cm.data or {}).get(LOCAL_REGISTRY_KEY)
            if text is None:
                found["registry_unknown"] = f"ConfigMap {namespace}/{name} has no {LOCAL_REGISTRY_KEY}"
            else:
                try:
                    found["local_registry"] = parse_local_registry(text)
                except ValueError as err:
                    found["registry_unknown"] = f"ConfigMap {namespace}/{name}: {err}"
    finally:
        await client.close()
    return found


def bundled_is_running() -> bool:
    return BundledCluster(report=lambda _message: None).info() is not None


def kubeconfig_facts(conn: ClusterConnection, *, default_repo: DefaultRepo | None = None) -> ClusterFacts:
    """What the kubeconfig alone says (context, cluster name, server, CA file); nothing else known yet."""
    config = conn.config
    return ClusterFacts(
        context=config.context_name,
        cluster_name=config.context.cluster,
        server=conn.server,
        ca_file=str(config.cluster.certificate_auth or ""),
        default_repo=default_repo,
    )


async def gather_facts(
    conn: ClusterConnection,
    *,
    default_repo: DefaultRepo | None,
    which: Which = shutil.which,
    bundled_running: Callable[[], bool] = bundled_is_running,
    timeout_s: float = 10.0,
) -> ClusterFacts:
    """Read the kubeconfig, the nodes and the KEP-1755 ConfigMap; look for tools on PATH.

    Never raises for what the cluster refuses or for an unreachable API
    server: those become ``nodes_unknown`` / ``registry_unknown`` /
    ``unreachable``, so `doctor` can still say what it knows.
    """
    base = kubeconfig_facts(conn, default_repo=default_repo)
    found: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout_s):
            found = await _read_cluster(conn)
    except (httpx.TransportError, OSError, TimeoutError) as err:
        reason = str(err) or type(err).__name__
        found = {
            "nodes": None,
            "nodes_unknown": "cluster unreachable",
            "registry_unknown": "cluster unreachable",
            "unreachable": f"cannot reach {conn.server}: {reason}",
        }
    return dataclasses.replace(
        base,
        bundled=conn.server == BUNDLED_SERVER and bundled_running(),
        tools=find_tools(DELIVERY_TOOLS, which=which),
        **found,
    )
