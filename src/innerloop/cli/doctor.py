"""``innerloop doctor``: which cluster, how images reach it and why, which builders are here, what is missing.

It reads and never changes anything: no cluster is started, nothing is
pushed. Facts the user may not read (nodes, ``kube-public``) show as
unknown; the exit status says whether images can reach the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import click

from innerloop.cli.options import default_repo_option, insecure_registry_option
from innerloop.cluster.node import BundledCluster
from innerloop.config import ConfigError, find_config, load_config
from innerloop.delivery.choice import INSTALL_HINTS, DeliveryPlan, Method, NoDelivery, Recognition, plan_delivery
from innerloop.delivery.facts import ClusterFacts, gather_facts, resolve_default_repo
from innerloop.delivery.skopeo import docker_authfile
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable, default_kubeconfig

BUILDERS = ("buildah", "podman", "docker", "buildx", "nerdctl", "buildctl")
# Where docker looks for CLI plugins (docker-buildx), besides PATH.
_PLUGIN_DIRS = (
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)
WIDTH = 11


def _line(label: str, text: str) -> None:
    click.echo(click.style(label.ljust(WIDTH), bold=True) + " " + text)


def installed_builders() -> list[str]:
    found = []
    for name in BUILDERS:
        if name == "buildx":
            plugin = any(Path(d).expanduser().joinpath("docker-buildx").is_file() for d in _PLUGIN_DIRS)
            if plugin or shutil.which("docker-buildx"):
                found.append(name)
        elif shutil.which(name):
            found.append(name)
    return found


def _connection() -> ClusterConnection:
    """The cluster `up` would use (KUBECONFIG or ~/.kube/config, else the bundled one), never started here."""
    configured = default_kubeconfig()
    if configured.exists():
        return ClusterConnection.from_kubeconfig(configured)
    bundled = BundledCluster(report=lambda _message: None)
    if bundled.info() is None:
        raise ClusterUnreachable(
            f"no kubeconfig at {configured} and the bundled cluster is not running: "
            "set KUBECONFIG, or start the bundled cluster with `innerloop cluster up`"
        )
    return ClusterConnection.from_kubeconfig(bundled.paths.kubeconfig)


def _config_repo() -> tuple[str | None, bool, str]:
    """innerloop.yaml's ``registry:`` (repo, insecure) when this folder has a config; a problem as text."""
    try:
        path = find_config(Path.cwd())
    except ConfigError:
        return None, False, ""  # no project here: doctor is about the machine and the cluster
    try:
        project = load_config(path)
    except ConfigError as err:
        return None, False, str(err).splitlines()[0]
    registry = project.registry
    return (registry.repo, registry.insecure, "") if registry is not None else (None, False, "")


def _nodes(facts: ClusterFacts) -> str:
    if facts.nodes is None:
        return f"unknown ({facts.nodes_unknown})"
    names = [n.name for n in facts.nodes]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)}: {shown}" if names else "none"


def _local_registry(facts: ClusterFacts) -> str:
    hosting = facts.local_registry
    if hosting is not None and hosting.host:
        pulled = hosting.host_from_container_runtime
        return f"{hosting.host} (KEP-1755)" + (
            f", nodes pull from {pulled}" if pulled not in ("", hosting.host) else ""
        )
    if facts.registry_unknown:
        return f"unknown ({facts.registry_unknown})"
    return "none published (kube-public/local-registry-hosting)"


def _recognised(cluster: Recognition) -> str:
    if not cluster.evidence:
        return f"{cluster.kind}: not a local cluster innerloop knows (kubeconfig and nodes say nothing)"
    return f"{cluster.kind}: {', '.join(cluster.evidence)}"


def _credentials(plan: DeliveryPlan | None) -> str | None:
    if plan is None or plan.method is not Method.REGISTRY:
        return None
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return f"REGISTRY_AUTH_FILE={os.environ['REGISTRY_AUTH_FILE']}"
    found = docker_authfile(os.environ, home=Path.home())
    return str(found) if found else "none found (fine for a registry that needs no login)"


@click.command("doctor")
@default_repo_option
@insecure_registry_option
def doctor(default_repo: str | None, insecure_registry: bool) -> None:
    """Say which cluster, how images reach it and why, which builders are installed, what is missing.

    Exit 0 when images can reach the cluster, 1 when they cannot (the last
    line says what would work).
    """
    try:
        conn = _connection()
    except ClusterUnreachable as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    config_repo, config_insecure, config_problem = _config_repo()
    repo = resolve_default_repo(
        flag=default_repo, env=os.environ, config_repo=config_repo, config_insecure=config_insecure
    )
    if repo is not None and insecure_registry:
        repo = dataclasses.replace(repo, insecure=True)
    facts = asyncio.run(gather_facts(conn, default_repo=repo))

    plan: DeliveryPlan | None = None
    problem: NoDelivery | None = None
    try:
        plan = plan_delivery(facts)
    except NoDelivery as err:
        problem = err
    cluster = plan.cluster if plan is not None else problem.cluster if problem is not None else None
    assert cluster is not None

    _line("context", f"{facts.context} (cluster {facts.cluster_name}, kubeconfig {conn.kubeconfig})")
    _line("server", facts.server + (f"  unreachable: {facts.unreachable}" if facts.unreachable else ""))
    _line("recognised", _recognised(cluster))
    _line("nodes", _nodes(facts))
    _line("registry", _local_registry(facts))
    if repo is not None:
        _line("default", f"{repo.repo} (from {repo.source})")
    if plan is not None:
        _line("delivery", plan.describe())
        _line("why", plan.reason)
    else:
        _line("delivery", "none")
    credentials = _credentials(plan)
    if credentials is not None:
        _line("auth", credentials)
    builders = installed_builders()
    absent = [b for b in BUILDERS if b not in builders]
    builders_text = ", ".join(builders) if builders else "none (the built-in builder needs none)"
    _line("builders", builders_text + (f"  (not found: {', '.join(absent)})" if absent else ""))

    missing = list(problem.missing) if problem is not None else []
    for tool in missing:
        _line("missing", INSTALL_HINTS.get(tool, f"install {tool}"))
    if config_problem:
        _line("config", config_problem)

    if facts.unreachable:
        click.echo(
            f"error: {facts.unreachable}. Check KUBECONFIG and that the cluster runs "
            "(`innerloop cluster up` starts the bundled one)",
            err=True,
        )
        sys.exit(1)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    if config_problem:
        click.echo(f"error: innerloop.yaml cannot be used: {config_problem}", err=True)
        sys.exit(1)
