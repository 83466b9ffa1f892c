"""The bundled single-node cluster: ``up``, ``down`` and ``status``.

``up`` is idempotent: it builds what the cache lacks, starts only the daemons
that are not running (so after a crash or a reboot it restarts the dead ones
on the state they left), and returns once the cluster can run pods: the API
is ready, the node is Ready, CoreDNS is rolled out and the ``default``
service account exists. ``down`` stops everything by pid and restores the
host (see :mod:`innerloop.cluster.host`).

This module orchestrates subprocesses synchronously: it is a setup tool whose
steps are sequential by nature, not part of the asyncio dev loop.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from innerloop.cluster import components, coredns, registry
from innerloop.cluster.base_images import base_images
from innerloop.cluster.build import BinaryBuilder
from innerloop.cluster.daemons import Daemons
from innerloop.cluster.host import Host, ensure_packages
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.pki import Pki, component_identities
from innerloop.cluster.progress import Report, StepFailed
from innerloop.cluster.versions import PINNED, Versions
from innerloop.oci.archive import BuiltImage

ALL_DAEMONS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    registry.NAME,
)


def detect_node_ip() -> str:
    """The address of the interface that holds the default route.

    The host name maps to 127.0.0.1 here, which a node must not advertise.
    """
    override = os.environ.get("INNERLOOP_NODE_IP")
    if override:
        return override
    out = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=False)
    words = out.stdout.split()
    if "src" in words:
        return words[words.index("src") + 1]
    raise StepFailed(
        "found no IPv4 default route to pick a node IP from; set INNERLOOP_NODE_IP to this machine's address"
    )


@dataclass(frozen=True, kw_only=True)
class ClusterInfo:
    """What a user or a test needs to use a running cluster."""

    kubeconfig: Path
    kubectl: Path
    images: dict[str, str]
    # The bundled OCI registry, host:port (plain HTTP); containerd pulls from it and mirrors docker.io to it.
    registry: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "kubeconfig": str(self.kubeconfig),
                "kubectl": str(self.kubectl),
                "images": self.images,
                "registry": self.registry,
            }
        )


# Where the registry beside the cluster serves agentBase's default (gcr.io/distroless/python3-debian12),
# mirrored there by registries.conf.
AGENT_BASE_NAME = "distroless/python3-debian12:latest"


def published_name(tag: str) -> str:
    """``innerloop.local/busybox:1.35-1a1d7f`` -> ``innerloop.local/busybox:1.35`` (pure)."""
    name, _, version = tag.rpartition(":")
    return f"{name}:{version.rsplit('-', 1)[0]}" if "-" in version else tag


class BundledCluster:
    def __init__(self, *, paths: ClusterPaths | None = None, versions: Versions = PINNED, report: Report) -> None:
        self.paths = paths or ClusterPaths.from_env()
        self.versions = versions
        self._report = report
        self.daemons = Daemons(run_dir=self.paths.run, log_dir=self.paths.logs)
        self.host = Host(state=self.paths.state, containerd_socket=self.paths.containerd_socket, report=report)
        self._info_file = self.paths.state / "cluster.json"

    @property
    def kubectl_path(self) -> Path:
        return self.paths.bin_dir("kubernetes", self.versions.kubernetes) / "kubectl"

    # ---- up -------------------------------------------------------------

    def up(self, *, timeout_s: float = 300.0) -> ClusterInfo:
        if os.geteuid() != 0:
            raise StepFailed(
                "the bundled cluster runs containerd and a kubelet, which need root: run `sudo innerloop cluster up`"
            )
        started = time.monotonic()
        ensure_packages(self._report)
        bins = BinaryBuilder(paths=self.paths, versions=self.versions, report=self._report).ensure_all()
        built = ClusterImages(paths=self.paths, report=self._report)
        images = {
            "pause": built.pause(),
            "coredns": built.coredns(bins["coredns"] / "coredns", self.versions.coredns),
            "python": built.python(),
            "busybox": built.busybox(),
        }
        node = socket.gethostname()
        spec = components.ClusterSpec(
            node=node,
            node_ip=detect_node_ip(),
            paths=self.paths,
            kubernetes_bin=bins["kubernetes"],
            etcd_bin=bins["etcd"],
            pause_image=images["pause"].tag,
        )
        self._write_files(spec)
        self.host.prepare()
        # The timeout covers starting, not building: a cold build takes many minutes.
        deadline = time.monotonic() + timeout_s
        self._start(components.etcd(spec), ready=self._etcd_ready, deadline=deadline)
        self._start(components.apiserver(spec), ready=self._api_ready, deadline=deadline)
        self._start(components.controller_manager(spec), ready=None, deadline=deadline)
        self._start(components.scheduler(spec), ready=None, deadline=deadline)
        self._start(components.containerd(spec), ready=self._containerd_ready, deadline=deadline)
        # The registry starts while containerd imports (about 0.3 s to answer); the push waits for it.
        self._start(registry.component(spec), ready=None, deadline=deadline)
        self._import_images(images)
        self._wait("registry ready", lambda: registry.is_ready(spec.registry), deadline, watch=(registry.NAME,))
        published = {name: images[key].archive for key, name in registry.PUBLISHED.items()}
        # The agent's default base on other clusters (agentBase): its runtime comes from this very image.
        published[AGENT_BASE_NAME] = images["python"].archive
        # Bases that look like public ones (python:3.11-slim, node, golang, distroless) for real Dockerfiles.
        published.update({name: image.archive for name, image in base_images(self.paths, self._report).items()})
        self.push_to_registry(published, address=spec.registry)
        self._start(components.kubelet(spec), ready=None, deadline=deadline)
        self._start(components.kube_proxy(spec), ready=None, deadline=deadline)
        self._wait("node Ready", lambda: self._node_ready(node), deadline, watch=("kubelet",))
        self._apply(coredns.manifests(images["coredns"].tag) + "---\n" + registry.local_registry_hosting(spec.registry))
        self._wait("default service account", self._default_sa_ready, deadline, watch=("kube-controller-manager",))
        self._wait("CoreDNS rolled out", self._coredns_ready, deadline, watch=("kubelet",))
        info = ClusterInfo(
            kubeconfig=self.paths.kubeconfig,
            kubectl=self.kubectl_path,
            images={name: img.tag for name, img in images.items()},
            registry=spec.registry,
        )
        self._info_file.write_text(info.to_json())
        self._report(f"cluster ready in {time.monotonic() - started:.1f}s; kubeconfig: {self.paths.kubeconfig}")
        return info

    def _write_files(self, spec: components.ClusterSpec) -> None:
        p = self.paths
        for d in (p.state, p.config, p.config / "cni", p.run, p.logs):
            d.mkdir(parents=True, exist_ok=True)
        p.state.chmod(0o700)
        pki = Pki(p.pki)
        pki.ensure(node=spec.node, node_ip=spec.node_ip, service_ip=components.SERVICE_IP)
        for ident in component_identities(spec.node):
            _write_if_changed(
                spec.kubeconfig_for(ident.file),
                pki.kubeconfig(identity=ident.file, server=spec.server, user=ident.user),
            )
        _write_if_changed(p.kubeconfig, pki.kubeconfig(identity="admin", server=spec.server, user="innerloop-admin"))
        _write_if_changed(p.config / "containerd.toml", components.containerd_config(spec))
        _write_if_changed(p.config / "cni" / "10-innerloop.conflist", components.cni_conflist(spec))
        _write_if_changed(p.config / "kubelet.yaml", components.kubelet_config(spec))
        _write_if_changed(p.config / "kube-proxy.yaml", components.kube_proxy_config(spec))
        _write_if_changed(registry.config_path(spec), registry.bundled_config(spec))
        p.registry_storage.mkdir(parents=True, exist_ok=True)
        for host, text in registry.containerd_hosts(spec.registry, mirror_docker_hub=True).items():
            (p.certs_d / host).mkdir(parents=True, exist_ok=True)
            _write_if_changed(p.certs_d / host / "hosts.toml", text)
        p.containers_config.mkdir(parents=True, exist_ok=True)
        _write_if_changed(p.containers_config / "registries.conf", registry.containers_registries_conf(spec.registry))
        storage = registry.containers_storage_conf(graphroot=p.containers_storage, runroot=p.run / "containers")
        _write_if_changed(p.containers_config / "storage.conf", storage)

    def _start(self, component: components.Component, *, ready: Callable[[], bool] | None, deadline: float) -> None:
        if self.daemons.running(component.name) is not None:
            self._report(f"{component.name}: already running")
        else:
            self._report(f"{component.name}: starting (log: {self.daemons.log(component.name)})")
            env = dict(os.environ)
            # containerd finds runc and the shim on PATH; the shim in /usr/bin.
            env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            self.daemons.start(component, env=env)
        if ready is not None:
            self._wait(f"{component.name} ready", ready, deadline, watch=(component.name,))

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, *, watch: tuple[str, ...]) -> None:
        last_report = time.monotonic()
        while True:
            if check():
                return
            for name in watch:
                tail = self.daemons.exited_early(name)
                if tail is not None:
                    raise StepFailed(
                        f"{name} exited while waiting for {what}; last lines of {self.daemons.log(name)}:\n{tail}"
                    )
            now = time.monotonic()
            if now > deadline:
                raise StepFailed(
                    f"timed out waiting for {what}; logs are in {self.paths.logs}. "
                    "`innerloop cluster down` then `innerloop cluster up` starts from a clean state."
                )
            if now - last_report > 10:
                self._report(f"still waiting for {what}")
                last_report = now
            time.sleep(0.25)

    def kubectl(
        self, *args: str, input_text: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.paths.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout,
            check=False,
        )

    def _apply(self, manifest: str) -> None:
        out = self.kubectl("apply", "-f", "-", input_text=manifest)
        if out.returncode != 0:
            raise StepFailed(f"kubectl apply failed: {out.stderr.strip()}")

    def _etcd_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", 2379), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                return b'"health":"true"' in s.recv(4096)
        except OSError:
            return False

    def _api_ready(self) -> bool:
        return self.kubectl("get", "--raw=/readyz", timeout=5).stdout.strip() == "ok"

    def _containerd_ready(self) -> bool:
        out = subprocess.run(
            ["ctr", f"--address={self.paths.containerd_socket}", "version"], capture_output=True, check=False
        )
        return out.returncode == 0

    def _import_images(self, images: dict[str, BuiltImage]) -> None:
        present = self.ctr("images", "ls", "-q").stdout.split()
        for image in images.values():
            if image.tag not in present:
                self._report(f"importing {image.tag} into containerd")
                out = self.ctr("images", "import", str(image.archive))
                if out.returncode != 0:
                    raise StepFailed(f"importing {image.archive} failed: {out.stderr.strip()}")
            # Also by its plain name (innerloop.local/busybox:1.35), as a registry would publish it:
            # manifests can run the bundled images without knowing the content hash in their tags.
            published = published_name(image.tag)
            if published not in present:
                out = self.ctr("images", "tag", "--force", image.tag, published)
                if out.returncode != 0:
                    raise StepFailed(f"tagging {image.tag} as {published} failed: {out.stderr.strip()}")

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", f"--address={self.paths.containerd_socket}", "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def push_to_registry(self, images: dict[str, Path], *, address: str | None = None) -> list[str]:
        """Push docker-save archives to the bundled registry, ``{"library/python:3.11-slim": tar}``.

        What the registry already holds (same name, same config digest) is skipped; returns the
        references pushed. ``address`` defaults to the running cluster's registry.
        """
        if address is None:
            info = self.info()
            if info is None:
                raise StepFailed("the bundled cluster is not running; start it with `innerloop cluster up`")
            address = info.registry
        return registry.push_missing(address, images, report=self._report)

    def import_image(self, archive: Path) -> None:
        """Import one image archive (for example an app image) into the node."""
        out = self.ctr("images", "import", str(archive))
        if out.returncode != 0:
            raise StepFailed(f"importing {archive} failed: {out.stderr.strip()}")

    def _node_ready(self, node: str) -> bool:
        # After a crash the stored Ready condition is stale; ask the kubelet itself first.
        if _http_get("http://127.0.0.1:10248/healthz") != b"ok":
            return False
        out = self.kubectl("get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        return out.stdout.strip() == "True"

    def _default_sa_ready(self) -> bool:
        sa = self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "name")
        cm = self.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "default", "-o", "name")
        return sa.returncode == 0 and cm.returncode == 0

    def _coredns_ready(self) -> bool:
        # Ask CoreDNS's own readiness endpoint: a stored readyReplicas may predate a crash.
        out = self.kubectl("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns", "-o", "jsonpath={..podIP}")
        ips = out.stdout.split()
        return bool(ips) and all(_http_get(f"http://{ip}:8181/ready") == b"OK" for ip in ips)

    # ---- down -----------------------------------------------------------

    def down(self) -> None:
        started = time.monotonic()
        for name in ("kubelet", "kube-proxy"):
            if self.daemons.stop(name):
                self._report(f"{name}: stopped")
        killed = self.host.kill_workloads()
        if killed:
            self._report(f"killed {killed} pod processes and shims")
        stopping = (registry.NAME, "containerd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
        for name in stopping:
            if self.daemons.stop(name):
                self._report(f"{name}: stopped")
        self.host.kill_workloads()  # anything containerd started while stopping
        self.host.remove_cgroups()
        self.host.unmount_all()
        self.host.remove_network()
        self.host.restore_settings()
        shutil.rmtree(self.paths.state, ignore_errors=True)
        left = self.host.leftovers()
        if left:
            raise StepFailed("down left these behind: " + "; ".join(left) + ". Run `innerloop cluster down` again.")
        self._report(f"cluster removed in {time.monotonic() - started:.1f}s")

    # ---- status ---------------------------------------------------------

    def status(self) -> dict[str, int | None]:
        return {name: self.daemons.running(name) for name in ALL_DAEMONS}

    def info(self) -> ClusterInfo | None:
        """The running cluster's info, or None if it is not (fully) up."""
        if not self._info_file.exists() or any(pid is None for pid in self.status().values()):
            return None
        doc = json.loads(self._info_file.read_text())
        return ClusterInfo(
            kubeconfig=Path(doc["kubeconfig"]),
            kubectl=Path(doc["kubectl"]),
            images=doc["images"],
            registry=doc.get("registry", ""),
        )


def _http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bytes(resp.read()).strip()
    except OSError:
        return None


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o600)
