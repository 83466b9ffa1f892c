"""``innerloop cluster``: the bundled single-node Kubernetes."""

from __future__ import annotations

import sys

import click

from innerloop.cluster.node import ALL_DAEMONS, BundledCluster
from innerloop.cluster.progress import StepFailed, stderr_report


def _cluster() -> BundledCluster:
    return BundledCluster(report=stderr_report)


@click.group()
def cluster() -> None:
    """The bundled single-node cluster (real apiserver, kubelet, containerd)."""


@cluster.command()
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, help="Seconds to wait for readiness.")
def up(timeout_s: float) -> None:
    """Build what is missing, start every component, wait until ready.

    Running it again is harmless; after a crash or a reboot it restarts what
    is not running. Prints the kubeconfig path on stdout.
    """
    try:
        info = _cluster().up(timeout_s=timeout_s)
    except StepFailed as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(str(info.kubeconfig))


@cluster.command()
def down() -> None:
    """Stop everything by pid and leave the machine as it was found."""
    try:
        _cluster().down()
    except StepFailed as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@cluster.command()
@click.option("--json", "as_json", is_flag=True, help="Print kubeconfig, kubectl, image tags and registry as JSON.")
def status(as_json: bool) -> None:
    """Which components run; exit 1 unless all of them do."""
    c = _cluster()
    info = c.info()
    if as_json:
        if info is None:
            click.echo("error: the bundled cluster is not running; start it with `innerloop cluster up`", err=True)
            sys.exit(1)
        click.echo(info.to_json())
        return
    pids = c.status()
    for name in ALL_DAEMONS:
        pid = pids[name]
        click.echo(f"{name:<24} {'running, pid ' + str(pid) if pid else 'not running'}")
    if info is None:
        click.echo("cluster: not ready (run `innerloop cluster up`)")
        sys.exit(1)
    click.echo(f"kubeconfig: {info.kubeconfig}")
    click.echo(f"registry: {info.registry} (plain HTTP; containerd also pulls docker.io images from it)")


@cluster.command()
def kubeconfig() -> None:
    """Print the path of the admin kubeconfig (for KUBECONFIG=...)."""
    click.echo(str(_cluster().paths.kubeconfig))
