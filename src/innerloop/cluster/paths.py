"""Where the bundled cluster keeps its cache and its state.

Two roots with different lifetimes:

- the *cache* (``INNERLOOP_CACHE``, default ``/var/cache/innerloop``) holds what
  is expensive and keyed by version: Go module and build caches, compiled
  binaries, image archives, the bundled registry's storage. It survives ``down``
  and lives outside any clone, so a fresh clone on a warm machine starts in
  seconds.
- the *state* (``INNERLOOP_CLUSTER_STATE``, default ``/var/lib/innerloop-cluster``)
  holds one running cluster: certificates, etcd data, containerd and kubelet
  roots, pid files, logs, kubeconfig. ``down`` deletes it entirely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class ClusterPaths:
    cache: Path
    state: Path

    @classmethod
    def from_env(cls) -> ClusterPaths:
        return cls(
            cache=Path(os.environ.get("INNERLOOP_CACHE", "/var/cache/innerloop")),
            state=Path(os.environ.get("INNERLOOP_CLUSTER_STATE", "/var/lib/innerloop-cluster")),
        )

    # cache
    @property
    def gomodcache(self) -> Path:
        return self.cache / "go" / "mod"

    @property
    def gocache(self) -> Path:
        return self.cache / "go" / "build"

    def bin_dir(self, component: str, version: str) -> Path:
        return self.cache / "bin" / f"{component}-{version}"

    @property
    def images(self) -> Path:
        return self.cache / "images"

    @property
    def registry_storage(self) -> Path:
        """The bundled registry's blobs and repositories (content-addressed, so safe to keep)."""
        return self.cache / "registry"

    # state
    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def run(self) -> Path:
        """Pid files and sockets."""
        return self.state / "run"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def containerd_root(self) -> Path:
        return self.state / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state / "kubelet"

    @property
    def config(self) -> Path:
        return self.state / "config"

    @property
    def containers_config(self) -> Path:
        """registries.conf and storage.conf for builders (buildah, podman, skopeo) on this machine."""
        return self.config / "containers"

    @property
    def containers_storage(self) -> Path:
        """Builders' image storage: a cache, kept by `down` like the images."""
        return self.cache / "containers" / "overlay"  # a graphroot keeps its driver: a new name for a new one

    @property
    def certs_d(self) -> Path:
        """containerd's per-registry ``hosts.toml`` files (its CRI ``config_path``)."""
        return self.config / "certs.d"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig users and tests talk through."""
        return self.state / "kubeconfig"
