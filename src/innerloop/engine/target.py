"""Which cluster a command works against, and how images reach it.

The way images reach it is chosen once per command by :mod:`innerloop.delivery`
(the bundled import, a registry, or the cluster's own loader) and printed.

Kept apart from :mod:`innerloop.engine.up` so commands that only need a
cluster (``intercept``, ``run``) do not import the whole dev loop (sync,
watcher, manifests): the CLI starts ~0.3 s sooner.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from innerloop.builders.agent_image import AgentPlan, machine_architecture, plan_agent
from innerloop.cluster.components import API_PORT
from innerloop.cluster.node import BundledCluster
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.versions import PINNED
from innerloop.config.model import Registry
from innerloop.delivery import (
    ClusterFacts,
    Delivery,
    DeliveryPlan,
    Method,
    NoDelivery,
    delivery_for,
    gather_facts,
    plan_delivery,
    resolve_default_repo,
)
from innerloop.delivery.facts import architectures
from innerloop.k8s.connection import ClusterConnection, default_kubeconfig
from innerloop.oci.archive import BuiltImage

Report = Callable[[str], None]
BUNDLED_SERVER = f"https://127.0.0.1:{API_PORT}"


class UpError(RuntimeError):
    """`up` cannot go on; the message says what to do."""


@dataclass(kw_only=True)
class Target:
    """The cluster `up` works against and how images reach it."""

    conn: ClusterConnection
    bundled: BundledCluster | None
    default_repo: str | None = None  # --default-repo
    insecure_registry: bool = False  # --insecure-registry
    _chosen: tuple[Delivery, DeliveryPlan, ClusterFacts] | None = field(default=None, repr=False, compare=False)

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

    async def images(self, *, registry: Registry | None, report: Report) -> DeliveryPlan:
        """Choose how images reach this cluster (once), say it, and keep it for :meth:`deliver`.

        Raises :class:`UpError` listing what would work when nothing does, so
        a command fails before it builds or deploys anything.
        """
        if self._chosen is None:
            repo = resolve_default_repo(
                flag=self.default_repo,
                env=os.environ,
                config_repo=registry.repo if registry else None,
                config_insecure=registry.insecure if registry else False,
            )
            if repo is not None and self.insecure_registry:
                repo = dataclasses.replace(repo, insecure=True)
            facts = await gather_facts(self.conn, default_repo=repo)
            try:
                plan = plan_delivery(facts)
            except NoDelivery as err:
                raise UpError(str(err)) from None
            report(f"images: {plan.describe()} ({plan.reason})")
            self._chosen = (delivery_for(plan, bundled=self.bundled, report=report), plan, facts)
        return self._chosen[1]

    async def agent_plan(self, *, registry: Registry | None, base: str | None, report: Report) -> AgentPlan:
        """How the agent image is made here: the bundled Python, or ``base`` for the nodes' architectures."""
        delivery = await self.images(registry=registry, report=report)
        assert self._chosen is not None
        nodes = self._chosen[2].nodes
        return plan_agent(
            bundled=delivery.method is Method.BUNDLED,
            registry=delivery.method is Method.REGISTRY,
            node_architectures=architectures(nodes) if nodes is not None else None,
            unknown_reason=self._chosen[2].nodes_unknown,
            base=base,
            host_architecture=machine_architecture(),
        )

    def deliver(self, image: BuiltImage) -> str:
        """Put ``image`` where the cluster's nodes find it; the reference pods must use (by digest on a registry)."""
        assert self._chosen is not None, "images() chooses the path first"
        return self._chosen[0].deliver(image)


def connect(report: Report, *, default_repo: str | None = None, insecure_registry: bool = False) -> Target:
    """The configured cluster (KUBECONFIG or ~/.kube/config), else the bundled one, started if needed."""
    configured = default_kubeconfig()
    bundled = BundledCluster(report=report)
    if configured.exists() and configured.resolve() != bundled.paths.kubeconfig.resolve():
        conn = ClusterConnection.from_kubeconfig(configured)
        # Another identity (say, a least-privilege ServiceAccount) on the bundled cluster still loads images there.
        on_bundled = bundled.info() is not None and conn.server == BUNDLED_SERVER
        return Target(
            conn=conn,
            bundled=bundled if on_bundled else None,
            default_repo=default_repo,
            insecure_registry=insecure_registry,
        )
    if bundled.info() is None:
        report("no cluster configured: starting the bundled one (`innerloop cluster up`)")
        bundled.up()
    return Target(
        conn=ClusterConnection.from_kubeconfig(bundled.paths.kubeconfig),
        bundled=bundled,
        default_repo=default_repo,
        insecure_registry=insecure_registry,
    )
