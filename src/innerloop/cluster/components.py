"""What each component of the bundled cluster runs with: pure rendering.

Given a :class:`ClusterSpec`, these functions return command lines and file
contents. Nothing here touches the machine, so every flag is unit-tested and
the orchestration in :mod:`innerloop.cluster.node` stays a thin edge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from innerloop.cluster.paths import ClusterPaths

API_PORT = 6443
# The bundled OCI registry, on the node's address (see innerloop.cluster.registry).
REGISTRY_PORT = 5001
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "innerloop0"
CNI_NETWORK = "innerloop"


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    node: str
    node_ip: str
    paths: ClusterPaths
    kubernetes_bin: Path
    etcd_bin: Path
    pause_image: str

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{API_PORT}"

    @property
    def registry(self) -> str:
        """The bundled registry's address, ``host:port``, the same from this machine, containerd and pods."""
        return f"{self.node_ip}:{REGISTRY_PORT}"

    def kubeconfig_for(self, identity: str) -> Path:
        return self.paths.config / f"{identity}.kubeconfig"


@dataclass(frozen=True, kw_only=True)
class Component:
    """One daemon: its name (also its pid and log file) and its command line."""

    name: str
    argv: list[str]


def etcd(spec: ClusterSpec) -> Component:
    return Component(
        name="etcd",
        argv=[
            str(spec.etcd_bin / "etcd"),
            "--name=innerloop",
            f"--data-dir={spec.paths.etcd_data}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=innerloop=http://127.0.0.1:2380",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            # A throwaway test cluster: durability is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )


def apiserver(spec: ClusterSpec) -> Component:
    pki = spec.paths.pki
    return Component(
        name="kube-apiserver",
        argv=[
            str(spec.kubernetes_bin / "kube-apiserver"),
            f"--advertise-address={spec.node_ip}",
            f"--secure-port={API_PORT}",
            "--etcd-servers=http://127.0.0.1:2379",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # Privileged pods are allowed cluster-wide so that Pod Security
            # admission, not this flag, is what a restricted namespace relies on.
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
    )


def controller_manager(spec: ClusterSpec) -> Component:
    pki = spec.paths.pki
    kubeconfig = spec.kubeconfig_for("controller-manager")
    return Component(
        name="kube-controller-manager",
        argv=[
            str(spec.kubernetes_bin / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )


def scheduler(spec: ClusterSpec) -> Component:
    kubeconfig = spec.kubeconfig_for("scheduler")
    return Component(
        name="kube-scheduler",
        argv=[
            str(spec.kubernetes_bin / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )


def containerd_config(spec: ClusterSpec) -> str:
    p = spec.paths
    return f"""version = 2
root = "{p.containerd_root}"
state = "{p.run / "containerd"}"

[grpc]
  address = "{p.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{spec.pause_image}"
  # Without CAP_SYS_RESOURCE (as in this VM) runc cannot set the negative
  # oom_score_adj CRI asks for (-998 for sandboxes); clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{p.run / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{p.config / "cni"}"
  # One folder per registry host with a hosts.toml (the bundled registry, docker.io's mirror);
  # read at every pull, so a test can add a registry without restarting containerd.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{p.certs_d}"
"""


def containerd(spec: ClusterSpec) -> Component:
    return Component(
        name="containerd",
        argv=["containerd", f"--config={spec.paths.config / 'containerd.toml'}"],
    )


def cni_conflist(spec: ClusterSpec) -> str:
    doc = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(spec.paths.state / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(doc, indent=2)


def kubelet_config(spec: ClusterSpec) -> str:
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(spec.paths.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{spec.paths.containerd_socket}",
        "failSwapOn": False,
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "resolvConf": "/etc/resolv.conf",
        # Imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The disk here has been seen nearly full; do not evict test pods for it.
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kubelet(spec: ClusterSpec) -> Component:
    return Component(
        name="kubelet",
        argv=[
            str(spec.kubernetes_bin / "kubelet"),
            f"--config={spec.paths.config / 'kubelet.yaml'}",
            f"--kubeconfig={spec.kubeconfig_for('kubelet')}",
            f"--root-dir={spec.paths.kubelet_root}",
            f"--cert-dir={spec.paths.kubelet_root / 'pki'}",
            f"--node-ip={spec.node_ip}",
            f"--hostname-override={spec.node}",
            "--v=1",
        ],
    )


def kube_proxy_config(spec: ClusterSpec) -> str:
    doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(spec.kubeconfig_for("kube-proxy"))},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": spec.node,
        "bindAddress": spec.node_ip,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "conntrack": {"maxPerCore": 0},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kube_proxy(spec: ClusterSpec) -> Component:
    return Component(
        name="kube-proxy",
        argv=[str(spec.kubernetes_bin / "kube-proxy"), f"--config={spec.paths.config / 'kube-proxy.yaml'}"],
    )


def start_order(spec: ClusterSpec) -> list[list[Component]]:
    """Components in waves; a wave starts once the previous one is healthy."""
    return [
        [etcd(spec)],
        [apiserver(spec)],
        [controller_manager(spec), scheduler(spec), containerd(spec)],
        [kubelet(spec), kube_proxy(spec)],
    ]
