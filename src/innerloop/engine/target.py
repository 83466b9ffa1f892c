"""Which cluster a command works against, and how images reach it.

Kept apart from :mod:`innerloop.engine.up` so commands that only need a
cluster (``intercept``, ``run``) do not import the whole dev loop (sync,
watcher, manifests): the CLI starts ~0.3 s sooner.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

from innerloop.cluster.components import API_PORT
from innerloop.cluster.node import BundledCluster
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.versions import PINNED
from innerloop.k8s.connection import ClusterConnection, default_kubeconfig
from innerloop.oci.archive import BuiltImage

Report = Callable[[str], None]
BUNDLED_SERVER = f"https://127.0.0.1:{API_PORT}"


class UpError(RuntimeError):
    """`up` cannot go on; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """The cluster `up` works against and how images reach it."""

    conn: ClusterConnection
    bundled: BundledCluster | None

    @property
    def paths(self) -> ClusterPaths:
        """Where images are built and cached."""
        return self.bundled.paths if self.bundled else ClusterPaths.from_env()

    @property
    def kubectl(self) -> str:
        """The kubectl that renders kustomize (the bundled cluster's own, else the one on PATH)."""
        return str(self.bundled.kubectl_path) if self.bundled else "kubectl"

    @property
    def helm(self) -> str:
        """The helm that renders charts: the one on PATH, else the one `innerloop cluster up` built."""
        built = self.paths.bin_dir("helm", PINNED.helm) / "helm"
        return str(built) if shutil.which("helm") is None and built.exists() else "helm"

    def load_image(self, image: BuiltImage) -> None:
        if self.bundled is None:
            raise UpError(
                f"built {image.tag}, but only the bundled cluster can load images without a registry for now; "
                "unset KUBECONFIG to use it"
            )
        present = self.bundled.ctr("images", "ls", "-q").stdout.split()
        if image.tag not in present:
            self.bundled.import_image(image.archive)


def connect(report: Report) -> Target:
    """The configured cluster (KUBECONFIG or ~/.kube/config), else the bundled one, started if needed."""
    configured = default_kubeconfig()
    bundled = BundledCluster(report=report)
    if configured.exists() and configured.resolve() != bundled.paths.kubeconfig.resolve():
        conn = ClusterConnection.from_kubeconfig(configured)
        # Another identity (say, a least-privilege ServiceAccount) on the bundled cluster still loads images there.
        on_bundled = bundled.info() is not None and conn.server == BUNDLED_SERVER
        return Target(conn=conn, bundled=bundled if on_bundled else None)
    if bundled.info() is None:
        report("no cluster configured: starting the bundled one (`innerloop cluster up`)")
        bundled.up()
    return Target(conn=ClusterConnection.from_kubeconfig(bundled.paths.kubeconfig), bundled=bundled)
