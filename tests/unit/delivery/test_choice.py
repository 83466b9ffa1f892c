"""The choice of delivery path over kubeconfigs as each local cluster writes them, plus nodes and tools."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from innerloop.delivery.choice import (
    ClusterKind,
    LoaderCommand,
    Method,
    NoDelivery,
    plain_http_tolerated,
    plan_delivery,
    recognise,
)
from innerloop.delivery.facts import (
    ClusterFacts,
    DefaultRepo,
    LocalRegistryHosting,
    NodeFacts,
    kubeconfig_facts,
)
from innerloop.k8s.connection import ClusterConnection

ARCHIVE = Path("/cache/images/api-1.tar")
ALL_TOOLS = ("kind", "minikube", "k3d", "docker", "nerdctl", "microk8s", "skopeo")


def _facts(
    tmp_path: Path,
    *,
    context: str,
    cluster: str | None = None,
    server: str = "https://127.0.0.1:40123",
    ca: str | None = None,
    nodes: tuple[NodeFacts, ...] | None = (),
    tools: tuple[str, ...] = ALL_TOOLS,
    **more: object,
) -> ClusterFacts:
    """Facts from a kubeconfig file written the way the tool writes it, then nodes and tools."""
    entry: dict[str, object] = {"server": server}
    if ca:
        entry["certificate-authority"] = ca
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": cluster or context, "cluster": entry}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": context, "context": {"cluster": cluster or context, "user": "u"}}],
                "current-context": context,
            }
        )
    )
    base = kubeconfig_facts(ClusterConnection.from_kubeconfig(kubeconfig))
    return dataclasses.replace(base, nodes=nodes, tools={t: f"/usr/bin/{t}" for t in tools}, **more)  # type: ignore[arg-type]


def _argv(facts: ClusterFacts) -> LoaderCommand:
    plan = plan_delivery(facts)
    assert plan.method is Method.LOADER, plan
    assert plan.loader is not None
    return plan.loader.command(ARCHIVE)


# ---- each local cluster, recognised and loaded with its own tool --------------------------------


def test_kind_by_context_loads_with_kind_and_its_cluster_name(tmp_path: Path) -> None:
    node = NodeFacts(name="dev-control-plane", provider_id="kind://docker/dev/dev-control-plane")
    facts = _facts(tmp_path, context="kind-dev", nodes=(node,))
    assert recognise(facts).kind is ClusterKind.KIND
    assert recognise(facts).evidence == ("context kind-dev", "node providerID kind://docker/dev/dev-control-plane")
    assert _argv(facts).argv == ("kind", "load", "image-archive", str(ARCHIVE), "--name", "dev")


def test_kind_renamed_context_is_recognised_by_its_nodes_provider_id(tmp_path: Path) -> None:
    node = NodeFacts(name="work-control-plane", provider_id="kind://podman/work/work-control-plane")
    facts = _facts(tmp_path, context="my-laptop", nodes=(node,))
    found = recognise(facts)
    assert (found.kind, found.name) == (ClusterKind.KIND, "work")
    assert _argv(facts).argv[-2:] == ("--name", "work")


def test_old_kind_contexts_name_the_cluster_before_at_kind(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="kind@kind", cluster="kind")
    assert _argv(facts).argv[-2:] == ("--name", "kind")


def test_minikube_default_profile(tmp_path: Path) -> None:
    node = NodeFacts(name="minikube", labels={"minikube.k8s.io/name": "minikube"})
    facts = _facts(
        tmp_path, context="minikube", server="https://192.168.49.2:8443", ca="/home/u/.minikube/ca.crt", nodes=(node,)
    )
    assert _argv(facts).argv == ("minikube", "image", "load", str(ARCHIVE), "-p", "minikube")


def test_minikube_profile_from_its_node_label_when_nodes_are_readable(tmp_path: Path) -> None:
    node = NodeFacts(name="dev", labels={"minikube.k8s.io/name": "dev"})
    facts = _facts(tmp_path, context="team-cluster", server="https://192.168.58.2:8443", nodes=(node,))
    found = recognise(facts)
    assert found.evidence == ("node label minikube.k8s.io/name=dev",)
    assert _argv(facts).argv[-2:] == ("-p", "dev")


def test_minikube_profile_from_its_ca_in_dot_minikube(tmp_path: Path) -> None:
    # Tilt's clusterid: a profile named anything still has its CA under ~/.minikube.
    facts = _facts(tmp_path, context="dev", ca="/home/u/.minikube/ca.crt", nodes=None, nodes_unknown="forbidden")
    assert recognise(facts).kind is ClusterKind.MINIKUBE
    assert _argv(facts).argv[-2:] == ("-p", "dev")


def test_k3d_by_context(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="k3d-dev", server="https://0.0.0.0:6550")
    assert _argv(facts).argv == ("k3d", "image", "import", str(ARCHIVE), "-c", "dev")


def test_k3d_by_node_names(tmp_path: Path) -> None:
    nodes = (
        NodeFacts(name="k3d-my-app-server-0", labels={"node.kubernetes.io/instance-type": "k3s"}),
        NodeFacts(name="k3d-my-app-agent-0", labels={"node.kubernetes.io/instance-type": "k3s"}),
    )
    facts = _facts(tmp_path, context="default", nodes=nodes)
    assert recognise(facts).evidence == ("node k3d-my-app-server-0",)
    assert _argv(facts).argv[-2:] == ("-c", "my-app")


@pytest.mark.parametrize("context", ["docker-desktop", "docker-for-desktop"])
def test_docker_desktop_loads_into_the_docker_engine_it_runs_on(tmp_path: Path, context: str) -> None:
    facts = _facts(tmp_path, context=context, server="https://kubernetes.docker.internal:6443")
    assert _argv(facts).argv == ("docker", "load", "-i", str(ARCHIVE))


def test_docker_desktop_kind_mode_is_not_taken_for_kind(tmp_path: Path) -> None:
    node = NodeFacts(name="desktop-control-plane", provider_id="kind://docker/desktop/desktop-control-plane")
    facts = _facts(tmp_path, context="docker-desktop", nodes=(node,))
    assert recognise(facts).kind is ClusterKind.DOCKER_DESKTOP
    assert _argv(facts).argv[0] == "docker"


def test_rancher_desktop_with_containerd_uses_nerdctl_in_the_k8s_namespace(tmp_path: Path) -> None:
    node = NodeFacts(name="lima-rancher-desktop", container_runtime="containerd://1.7.17")
    facts = _facts(tmp_path, context="rancher-desktop", server="https://127.0.0.1:6443", nodes=(node,))
    assert _argv(facts).argv == ("nerdctl", "--namespace", "k8s.io", "load", "-i", str(ARCHIVE))


def test_rancher_desktop_with_moby_uses_docker(tmp_path: Path) -> None:
    node = NodeFacts(name="lima-rancher-desktop", container_runtime="docker://24.0.7")
    facts = _facts(tmp_path, context="rancher-desktop", nodes=(node,))
    assert _argv(facts).argv[0] == "docker"


def test_rancher_desktop_unknown_runtime_takes_whichever_client_is_installed(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="rancher-desktop", nodes=None, tools=("docker",))
    assert _argv(facts).argv[0] == "docker"
    facts = _facts(tmp_path, context="rancher-desktop", nodes=None, tools=("nerdctl", "docker"))
    assert _argv(facts).argv[0] == "nerdctl"


def test_orbstack_loads_into_its_docker_engine(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="orbstack", server="https://127.0.0.1:26443")
    assert recognise(facts).kind is ClusterKind.ORBSTACK
    assert _argv(facts).argv == ("docker", "load", "-i", str(ARCHIVE))


def test_microk8s_reads_the_archive_on_stdin(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="microk8s", cluster="microk8s-cluster", server="https://10.0.0.5:16443")
    command = _argv(facts)
    assert command == LoaderCommand(argv=("microk8s", "images", "import"), stdin=ARCHIVE)


def test_microk8s_by_node_label(tmp_path: Path) -> None:
    node = NodeFacts(name="ubuntu", labels={"microk8s.io/cluster": "true"})
    facts = _facts(tmp_path, context="prod-like", nodes=(node,))
    assert recognise(facts).evidence == ("node label microk8s.io/cluster",)


# ---- the order: a named registry, the bundled cluster, KEP-1755, loaders ------------------------


def test_a_named_registry_wins_even_on_kind(tmp_path: Path) -> None:
    repo = DefaultRepo(repo="registry.example.com/team", source="--default-repo")
    facts = _facts(tmp_path, context="kind-dev", default_repo=repo)
    plan = plan_delivery(facts)
    assert plan.method is Method.REGISTRY
    assert plan.cluster.kind is ClusterKind.KIND  # still recognised, for doctor
    assert plan.registry is not None
    assert (plan.registry.push, plan.registry.pull, plan.registry.insecure) == (
        "registry.example.com/team",
        "registry.example.com/team",
        False,
    )
    assert "--default-repo" in plan.reason


def test_a_named_registry_wins_over_the_bundled_cluster(tmp_path: Path) -> None:
    repo = DefaultRepo(repo="127.0.0.1:5999/x", source="INNERLOOP_DEFAULT_REPO")
    facts = _facts(tmp_path, context="default", server="https://127.0.0.1:6443", bundled=True, default_repo=repo)
    plan = plan_delivery(facts)
    assert plan.method is Method.REGISTRY
    assert plan.registry is not None
    assert plan.registry.insecure  # loopback: plain HTTP tolerated


def test_config_insecure_is_kept_for_a_named_host(tmp_path: Path) -> None:
    repo = DefaultRepo(repo="registry.lan:5000", source="innerloop.yaml registry:", insecure=True)
    plan = plan_delivery(_facts(tmp_path, context="x", default_repo=repo))
    assert plan.registry is not None
    assert plan.registry.insecure


def test_a_named_registry_without_skopeo_says_install_skopeo(tmp_path: Path) -> None:
    repo = DefaultRepo(repo="registry.example.com/team", source="--default-repo")
    with pytest.raises(NoDelivery, match=r"install skopeo \(apt install skopeo / brew install skopeo\)") as err:
        plan_delivery(_facts(tmp_path, context="kind-dev", default_repo=repo, tools=("kind",)))
    assert err.value.missing == ("skopeo",)


def test_the_bundled_cluster_imports_into_containerd(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="default", server="https://127.0.0.1:6443", bundled=True, tools=())
    plan = plan_delivery(facts)
    assert plan.method is Method.BUNDLED
    assert plan.cluster.kind is ClusterKind.BUNDLED
    assert "containerd import" in plan.describe()


def test_bundled_beats_a_context_named_like_kind(tmp_path: Path) -> None:
    # The server and the running bundled cluster identify it; a renamed context does not change that.
    facts = _facts(tmp_path, context="kind-dev", server="https://127.0.0.1:6443", bundled=True)
    assert plan_delivery(facts).method is Method.BUNDLED


def test_kep_1755_pushes_to_host_and_deploys_from_the_container_runtimes_name(tmp_path: Path) -> None:
    hosting = LocalRegistryHosting(
        host="localhost:5001", host_from_container_runtime="kind-registry:5000", help="https://kind.sigs.k8s.io"
    )
    plan = plan_delivery(_facts(tmp_path, context="kind-dev", local_registry=hosting))
    assert plan.method is Method.REGISTRY  # preferred to `kind load`, as Tilt and Skaffold do
    assert plan.registry is not None
    assert (plan.registry.push, plan.registry.pull, plan.registry.insecure) == (
        "localhost:5001",
        "kind-registry:5000",
        True,
    )
    assert "KEP-1755" in plan.reason


def test_kep_1755_without_host_from_container_runtime_falls_back_to_host(tmp_path: Path) -> None:
    hosting = LocalRegistryHosting(host="10.0.0.5:5000")
    plan = plan_delivery(_facts(tmp_path, context="some-cluster", local_registry=hosting))
    assert plan.registry is not None
    assert plan.registry.pull == "10.0.0.5:5000"


def test_kep_1755_without_skopeo_falls_back_to_the_loader(tmp_path: Path) -> None:
    hosting = LocalRegistryHosting(host="localhost:5001")
    facts = _facts(tmp_path, context="kind-dev", local_registry=hosting, tools=("kind",))
    assert plan_delivery(facts).method is Method.LOADER


def test_kep_1755_on_an_unknown_cluster_without_skopeo_says_install_skopeo(tmp_path: Path) -> None:
    hosting = LocalRegistryHosting(host="localhost:5001", help="https://example.com/registry")
    with pytest.raises(NoDelivery) as err:
        plan_delivery(_facts(tmp_path, context="lab", local_registry=hosting, tools=()))
    assert "install skopeo" in str(err.value)
    assert "localhost:5001" in str(err.value)
    assert "https://example.com/registry" in str(err.value)
    assert err.value.missing == ("skopeo",)


# ---- nothing works: one message with what would ---------------------------------------------------


def test_a_recognised_cluster_whose_loader_is_missing_says_which_tool_to_install(tmp_path: Path) -> None:
    with pytest.raises(NoDelivery) as err:
        plan_delivery(_facts(tmp_path, context="kind-dev", tools=("skopeo", "docker")))
    message = str(err.value)
    assert "kind (context kind-dev)" in message
    assert "kind is not on PATH" in message
    assert "install kind (https://kind.sigs.k8s.io" in message
    assert "--default-repo, INNERLOOP_DEFAULT_REPO or `registry: {repo: ...}`" in message
    assert "\n" not in message
    assert err.value.missing == ("kind",)
    assert err.value.cluster.kind is ClusterKind.KIND


def test_rancher_desktop_without_either_client_names_both(tmp_path: Path) -> None:
    with pytest.raises(NoDelivery) as err:
        plan_delivery(_facts(tmp_path, context="rancher-desktop", nodes=None, tools=()))
    assert err.value.missing == ("nerdctl", "docker")
    assert "nerdctl or docker is not on PATH" in str(err.value)


def test_an_unrecognised_cluster_lists_the_ways_that_would_work(tmp_path: Path) -> None:
    eks = "arn:aws:eks:eu-west-1:123456789012:cluster/dev"
    facts = _facts(tmp_path, context=eks, server="https://ABC.gr7.eu-west-1.eks.amazonaws.com")
    with pytest.raises(NoDelivery) as err:
        plan_delivery(facts)
    message = str(err.value)
    assert message.startswith(f"no way to get images onto cluster {eks} (https://ABC.gr7.eu-west-1.eks.amazonaws.com)")
    assert "set --default-repo, INNERLOOP_DEFAULT_REPO or `registry: {repo: ...}` in innerloop.yaml" in message
    assert "KEP-1755" in message
    assert err.value.cluster.kind is ClusterKind.UNKNOWN
    assert err.value.missing == ()


def test_unreadable_nodes_leave_the_decision_to_the_kubeconfig(tmp_path: Path) -> None:
    facts = _facts(tmp_path, context="k3d-dev", nodes=None, nodes_unknown="not allowed to read nodes")
    assert _argv(facts).argv[-2:] == ("-c", "dev")
    facts = _facts(tmp_path, context="team", nodes=None, nodes_unknown="not allowed to read nodes")
    with pytest.raises(NoDelivery):
        plan_delivery(facts)


@pytest.mark.parametrize(
    ("repo", "tolerated"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5001/team", True),
        ("10.0.0.5:5000", True),
        ("192.168.1.20/x", True),
        ("[::1]:5000", True),
        ("registry.example.com", False),
        ("registry.example.com:5000/team", False),
        ("8.8.8.8:5000", False),
    ],
)
def test_plain_http_is_tolerated_only_on_loopback_and_private_addresses(repo: str, tolerated: bool) -> None:
    assert plain_http_tolerated(repo) is tolerated
