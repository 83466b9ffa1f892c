"""Pinned versions of everything the bundled cluster builds.

Every cache key derives from these values, so bumping one rebuilds only that
component. Kubernetes stays on 1.34: it is the newest minor whose kubelet runs
on cgroup v1 without opting out (1.35+ need ``failCgroupV1: false``) and whose
kubelet still accepts containerd 1.6 (no CRI RuntimeConfig) without warnings
about a fallback being removed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Versions:
    kubernetes: str = "v1.34.4"
    etcd: str = "v3.6.16"
    coredns: str = "v1.14.7"
    # Helm renders charts (`helm template`); 3.19 is built on the Kubernetes 1.34 libraries, the cluster's minor.
    helm: str = "v3.19.5"

    @property
    def kubernetes_staging(self) -> str:
        """Staging modules (k8s.io/api, ...) are published as v0.<minor>.<patch>."""
        return "v0" + self.kubernetes[2:]


PINNED = Versions()
