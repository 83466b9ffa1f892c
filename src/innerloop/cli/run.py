"""``innerloop run -- CMD``: run a local command with a pod's environment, ConfigMaps and Secrets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import click

from innerloop.cli.dev import explain, report
from innerloop.connect.run import RunError, command_env, fetch_context, materialize
from innerloop.engine.up import connect


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig's).")
@click.option("--pod", help="The pod whose context to borrow.")
@click.option("-l", "--selector", help="Or a label selector (k=v,k2=v2): the newest running pod.")
@click.option("-c", "--container", help="Container name (default: the first).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    namespace: str | None, pod: str | None, selector: str | None, container: str | None, command: tuple[str, ...]
) -> None:
    """Run COMMAND locally with the pod's env vars (Service links included) and its ConfigMap and
    Secret files under .innerloop/run/ (paths in INNERLOOP_MOUNTS). Nothing changes in the cluster."""
    if (pod is None) == (selector is None):
        click.echo("error: give --pod NAME or --selector k=v", err=True)
        sys.exit(2)
    labels = dict(pair.split("=", 1) for pair in selector.split(",")) if selector else None
    try:
        target = connect(report)
        ns = namespace or target.conn.namespace
        name, context = asyncio.run(
            fetch_context(target.conn, namespace=ns, pod=pod, selector=labels, container=container)
        )
    except (RunError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except Exception as err:
        message = explain(err)
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    root = Path.cwd() / ".innerloop" / "run" / name
    mounts = materialize(context, root)
    report(f"context of {ns}/{name}: {len(context.env)} env vars, {len(mounts)} mounted folders under {root}")
    for missing in context.missing:
        report(f"optional {missing} is missing in the cluster")
    sys.exit(subprocess.run(list(command), env=command_env(context, mounts, root), check=False).returncode)
