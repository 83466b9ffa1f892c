"""Rendered command lines and configuration files of the bundled cluster's components."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from innerloop.cluster import components
from innerloop.cluster.components import (
    API_PORT,
    BRIDGE,
    CNI_NETWORK,
    DNS_IP,
    POD_CIDR,
    SERVICE_CIDR,
    SERVICE_IP,
    ClusterSpec,
    Component,
)
from innerloop.cluster.paths import ClusterPaths

PAUSE = "innerloop.local/pause:3.10-abc123"


@pytest.fixture
def spec(tmp_path: Path) -> ClusterSpec:
    # A space in the paths checks that nothing splits or mis-quotes them.
    paths = ClusterPaths(cache=tmp_path / "ca che", state=tmp_path / "st ate")
    return ClusterSpec(
        node="dev-box",
        node_ip="192.168.56.10",
        paths=paths,
        kubernetes_bin=tmp_path / "bin" / "kubernetes-v1.34.4",
        etcd_bin=tmp_path / "bin" / "etcd-v3.6.16",
        pause_image=PAUSE,
    )


def flags(component: Component) -> dict[str, str]:
    """``--name=value`` arguments as a dict (bare ``--flag`` maps to "")."""
    out: dict[str, str] = {}
    for arg in component.argv[1:]:
        assert arg.startswith("--"), f"unexpected positional argument {arg!r}"
        name, _, value = arg[2:].partition("=")
        assert name not in out, f"--{name} given twice"
        out[name] = value
    return out


class TestNetworkConstants:
    def test_service_and_dns_ips_are_inside_the_service_cidr(self) -> None:
        net = ipaddress.ip_network(SERVICE_CIDR)
        assert ipaddress.ip_address(SERVICE_IP) in net
        assert ipaddress.ip_address(DNS_IP) in net
        # The apiserver takes the first address of the range for `kubernetes.default`.
        assert ipaddress.ip_address(SERVICE_IP) == net.network_address + 1

    def test_pod_and_service_ranges_do_not_overlap(self) -> None:
        assert not ipaddress.ip_network(POD_CIDR).overlaps(ipaddress.ip_network(SERVICE_CIDR))


class TestSpec:
    def test_server_is_the_local_secure_port(self, spec: ClusterSpec) -> None:
        assert spec.server == f"https://127.0.0.1:{API_PORT}"

    def test_kubeconfig_per_identity(self, spec: ClusterSpec) -> None:
        assert spec.kubeconfig_for("kubelet") == spec.paths.state / "config" / "kubelet.kubeconfig"


class TestEtcd:
    def test_argv(self, spec: ClusterSpec) -> None:
        c = components.etcd(spec)
        assert c.name == "etcd"
        assert c.argv[0] == str(spec.etcd_bin / "etcd")
        f = flags(c)
        assert f["data-dir"] == str(spec.paths.state / "etcd")
        assert f["listen-client-urls"] == "http://127.0.0.1:2379"
        assert f["initial-cluster"] == "innerloop=http://127.0.0.1:2380"
        assert f["name"] == "innerloop"
        assert "unsafe-no-fsync" in f

    def test_listens_on_loopback_only(self, spec: ClusterSpec) -> None:
        urls = [v for k, v in flags(components.etcd(spec)).items() if "urls" in k]
        assert len(urls) == 5
        assert all(u.startswith("http://127.0.0.1:") for u in urls)


class TestApiserver:
    def test_argv(self, spec: ClusterSpec) -> None:
        c = components.apiserver(spec)
        assert c.name == "kube-apiserver"
        assert c.argv[0] == str(spec.kubernetes_bin / "kube-apiserver")
        f = flags(c)
        pki = spec.paths.state / "pki"
        assert f["advertise-address"] == "192.168.56.10"
        assert f["secure-port"] == str(API_PORT)
        assert f["allow-privileged"] == "true"
        assert f["etcd-servers"] == "http://127.0.0.1:2379"
        assert f["service-cluster-ip-range"] == SERVICE_CIDR
        assert f["client-ca-file"] == str(pki / "ca.crt")
        assert f["tls-cert-file"] == str(pki / "apiserver.crt")
        assert f["tls-private-key-file"] == str(pki / "apiserver.key")
        assert f["kubelet-client-certificate"] == str(pki / "apiserver-kubelet-client.crt")
        assert f["service-account-key-file"] == str(pki / "service-account.pub")
        assert f["service-account-signing-key-file"] == str(pki / "service-account.key")
        assert f["authorization-mode"].split(",") == ["Node", "RBAC"]
        assert "NodeRestriction" in f["enable-admission-plugins"].split(",")

    def test_node_ip_follows_the_spec(self, spec: ClusterSpec) -> None:
        other = ClusterSpec(
            node=spec.node,
            node_ip="10.0.0.7",
            paths=spec.paths,
            kubernetes_bin=spec.kubernetes_bin,
            etcd_bin=spec.etcd_bin,
            pause_image=PAUSE,
        )
        assert flags(components.apiserver(other))["advertise-address"] == "10.0.0.7"
        assert "--advertise-address=192.168.56.10" not in components.apiserver(other).argv


class TestControlPlaneClients:
    def test_controller_manager(self, spec: ClusterSpec) -> None:
        c = components.controller_manager(spec)
        assert c.argv[0] == str(spec.kubernetes_bin / "kube-controller-manager")
        f = flags(c)
        kubeconfig = str(spec.paths.state / "config" / "controller-manager.kubeconfig")
        assert f["kubeconfig"] == f["authentication-kubeconfig"] == f["authorization-kubeconfig"] == kubeconfig
        assert f["cluster-signing-cert-file"] == str(spec.paths.state / "pki" / "ca.crt")
        assert f["cluster-signing-key-file"] == str(spec.paths.state / "pki" / "ca.key")
        assert f["service-account-private-key-file"] == str(spec.paths.state / "pki" / "service-account.key")
        assert f["use-service-account-credentials"] == "true"
        assert f["bind-address"] == "127.0.0.1"

    def test_scheduler(self, spec: ClusterSpec) -> None:
        c = components.scheduler(spec)
        assert c.name == "kube-scheduler"
        f = flags(c)
        assert f["kubeconfig"] == str(spec.paths.state / "config" / "scheduler.kubeconfig")
        assert f["bind-address"] == "127.0.0.1"
        assert f["leader-elect"] == "false"


class TestContainerd:
    def config(self, spec: ClusterSpec) -> dict[str, Any]:
        return tomllib.loads(components.containerd_config(spec))

    def test_toml_parses_with_the_expected_roots(self, spec: ClusterSpec) -> None:
        doc = self.config(spec)
        assert doc["version"] == 2
        assert doc["root"] == str(spec.paths.state / "containerd")
        assert doc["state"] == str(spec.paths.state / "run" / "containerd")
        assert doc["grpc"]["address"] == str(spec.paths.containerd_socket)

    def test_cri_plugin(self, spec: ClusterSpec) -> None:
        cri = self.config(spec)["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == PAUSE
        assert cri["restrict_oom_score_adj"] is True
        assert cri["containerd"]["default_runtime_name"] == "runc"
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["options"]["SystemdCgroup"] is False
        assert runc["options"]["Root"] == str(spec.paths.state / "run" / "runc")
        assert cri["cni"]["conf_dir"] == str(spec.paths.state / "config" / "cni")
        assert cri["cni"]["bin_dir"] == "/usr/lib/cni"

    def test_runtime_state_stays_inside_the_cluster_state(self, spec: ClusterSpec) -> None:
        doc = self.config(spec)
        runc = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
        for path in (doc["root"], doc["state"], doc["grpc"]["address"], runc["Root"]):
            assert Path(path).is_relative_to(spec.paths.state), path

    def test_daemon_reads_the_rendered_config(self, spec: ClusterSpec) -> None:
        c = components.containerd(spec)
        assert c.argv == ["containerd", f"--config={spec.paths.state / 'config' / 'containerd.toml'}"]


class TestCni:
    def test_conflist_is_bridge_then_portmap(self, spec: ClusterSpec) -> None:
        doc = json.loads(components.cni_conflist(spec))
        assert doc["name"] == CNI_NETWORK
        assert doc["cniVersion"] == "1.0.0"
        assert [p["type"] for p in doc["plugins"]] == ["bridge", "portmap"]
        bridge, portmap = doc["plugins"]
        assert bridge["bridge"] == BRIDGE
        assert bridge["isGateway"] is True
        assert bridge["ipMasq"] is True
        assert bridge["ipam"]["type"] == "host-local"
        assert bridge["ipam"]["ranges"] == [[{"subnet": POD_CIDR}]]
        assert bridge["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
        assert bridge["ipam"]["dataDir"] == str(spec.paths.state / "cni-ipam")
        assert portmap["capabilities"] == {"portMappings": True}


class TestKubelet:
    def config(self, spec: ClusterSpec) -> dict[str, Any]:
        doc = yaml.safe_load(components.kubelet_config(spec))
        assert isinstance(doc, dict)
        return doc

    def test_config(self, spec: ClusterSpec) -> None:
        doc = self.config(spec)
        assert doc["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
        assert doc["kind"] == "KubeletConfiguration"
        assert doc["cgroupDriver"] == "cgroupfs"
        assert doc["clusterDNS"] == [DNS_IP]
        assert doc["clusterDomain"] == "cluster.local"
        assert doc["imageGCHighThresholdPercent"] == 100
        assert doc["imageGCLowThresholdPercent"] == 99
        assert doc["authentication"]["anonymous"]["enabled"] is False
        assert doc["authentication"]["webhook"]["enabled"] is True
        assert doc["authentication"]["x509"]["clientCAFile"] == str(spec.paths.state / "pki" / "ca.crt")
        assert doc["authorization"]["mode"] == "Webhook"
        assert doc["readOnlyPort"] == 0
        assert doc["failSwapOn"] is False

    def test_never_evicts_for_disk_or_memory(self, spec: ClusterSpec) -> None:
        assert set(self.config(spec)["evictionHard"].values()) == {"0%"}

    def test_agrees_with_containerd(self, spec: ClusterSpec) -> None:
        kubelet = self.config(spec)
        containerd = tomllib.loads(components.containerd_config(spec))
        assert kubelet["containerRuntimeEndpoint"] == f"unix://{containerd['grpc']['address']}"
        runc = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
        # Both sides must use the same cgroup driver or pods fail to start.
        assert (kubelet["cgroupDriver"] == "systemd") == runc["SystemdCgroup"]

    def test_argv(self, spec: ClusterSpec) -> None:
        c = components.kubelet(spec)
        assert c.argv[0] == str(spec.kubernetes_bin / "kubelet")
        f = flags(c)
        assert f["node-ip"] == "192.168.56.10"
        assert f["hostname-override"] == "dev-box"
        assert f["config"] == str(spec.paths.state / "config" / "kubelet.yaml")
        assert f["kubeconfig"] == str(spec.paths.state / "config" / "kubelet.kubeconfig")
        assert f["root-dir"] == str(spec.paths.state / "kubelet")
        assert f["cert-dir"] == str(spec.paths.state / "kubelet" / "pki")


class TestKubeProxy:
    def test_config(self, spec: ClusterSpec) -> None:
        doc = yaml.safe_load(components.kube_proxy_config(spec))
        assert doc["kind"] == "KubeProxyConfiguration"
        assert doc["mode"] == "iptables"
        assert doc["clusterCIDR"] == POD_CIDR
        assert doc["hostnameOverride"] == "dev-box"
        assert doc["bindAddress"] == "192.168.56.10"
        assert doc["clientConnection"]["kubeconfig"] == str(spec.paths.state / "config" / "kube-proxy.kubeconfig")
        assert doc["conntrack"]["maxPerCore"] == 0

    def test_argv(self, spec: ClusterSpec) -> None:
        c = components.kube_proxy(spec)
        assert c.argv == [
            str(spec.kubernetes_bin / "kube-proxy"),
            f"--config={spec.paths.state / 'config' / 'kube-proxy.yaml'}",
        ]


def test_start_order(spec: ClusterSpec) -> None:
    waves = [[c.name for c in wave] for wave in components.start_order(spec)]
    assert waves == [
        ["etcd"],
        ["kube-apiserver"],
        ["kube-controller-manager", "kube-scheduler", "containerd"],
        ["kubelet", "kube-proxy"],
    ]


def test_every_component_has_a_distinct_name(spec: ClusterSpec) -> None:
    names = [c.name for wave in components.start_order(spec) for c in wave]
    assert len(names) == len(set(names))
