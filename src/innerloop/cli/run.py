"""``innerloop run -- CMD``: run a local command with a pod's environment, ConfigMaps, Secrets and Service names.

By default the command runs in its own network and mount namespace
(``connect/network.py``), made without root, where the namespace's Services
resolve by their cluster names and answer through self-healing port-forwards;
``--no-cluster-network`` runs it as a plain child process instead.

Signals: Ctrl-C reaches the command straight from the terminal (same
process group), so this process ignores SIGINT while the command runs and
waits for it to exit; SIGTERM and SIGHUP sent to this process are passed on.
The exit status is the command's (128 + N when signal N ended it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from innerloop.cli.output import explain_error, report
from innerloop.cluster.progress import StepFailed
from innerloop.connect.netns import NamespaceError
from innerloop.connect.network import ClusterNetwork
from innerloop.connect.run import RunError, command_env, fetch_context, materialize
from innerloop.engine.target import UpError, connect
from innerloop.forward.forward import ForwardEvent
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable, default_kubeconfig


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig's).")
@click.option("--pod", help="The pod whose context to borrow.")
@click.option("-l", "--selector", help="Or a label selector (k=v,k2=v2): the newest running pod.")
@click.option("-c", "--container", help="Container name (default: the first).")
@click.option(
    "--no-cluster-network",
    is_flag=True,
    help="Run COMMAND as a plain local process: Service names do not resolve, the machine's network is used as is.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    *,
    namespace: str | None,
    pod: str | None,
    selector: str | None,
    container: str | None,
    no_cluster_network: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND locally with the pod's env vars (Service links included) and its ConfigMap and
    Secret files under .innerloop/run/ (paths in INNERLOOP_MOUNTS). The namespace's Services resolve by
    name (backend, backend.NS, backend.NS.svc.cluster.local) on every port, in a private network
    namespace made without root; the machine's own DNS settings are untouched. Nothing changes in
    the cluster."""
    if (pod is None) == (selector is None):
        click.echo("error: give --pod NAME or --selector k=v", err=True)
        sys.exit(2)
    labels = dict(pair.split("=", 1) for pair in selector.split(",")) if selector else None
    try:
        conn = _connection()
        ns = namespace or conn.namespace
        name, context = asyncio.run(fetch_context(conn, namespace=ns, pod=pod, selector=labels, container=container))
        root = Path.cwd() / ".innerloop" / "run" / name
        mounts = materialize(context, root)
        report(f"context of {ns}/{name}: {len(context.env)} env vars, {len(mounts)} mounted folders under {root}")
        for missing in context.missing:
            report(f"optional {missing} is missing in the cluster")
        env = command_env(context, mounts, root)
        if no_cluster_network:
            returncode = subprocess.run(list(command), env=env, check=False).returncode
        else:
            returncode = asyncio.run(_run_in_cluster_network(conn, namespace=ns, argv=command, env=env))
    except (RunError, NamespaceError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except Exception as err:
        message = explain_error(err, (UpError, ClusterUnreachable, StepFailed))
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    sys.exit(exit_status(returncode))


def _connection() -> ClusterConnection:
    """The configured cluster, else the bundled one (started if needed).

    A configured kubeconfig is used as is: ``engine.up.connect`` would also
    look at the bundled cluster's state, which only root may read, and `run`
    has no use for it (it loads no images), so `run` works for any user.
    """
    configured = default_kubeconfig()
    if configured.exists():
        return ClusterConnection.from_kubeconfig(configured)
    return connect(report).conn


def exit_status(returncode: int) -> int:
    """A shell's convention: a command ended by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _on_forward_event(event: ForwardEvent) -> None:
    # Listening/connected/waiting per Service port would drown the command's output; failures matter.
    if event.kind in ("connection-failed", "error"):
        report(event.message)


async def _run_in_cluster_network(
    conn: ClusterConnection, *, namespace: str, argv: Sequence[str], env: dict[str, str]
) -> int:
    loop = asyncio.get_running_loop()
    async with ClusterNetwork.open(conn, namespace=namespace, on_event=_on_forward_event) as net:
        ready_ms = net.netns.timings.ready_s * 1000
        report(f"{net.names.summary()}; namespace ready in {ready_ms:.0f} ms")
        if net.skipped:
            report("not forwarded: " + ", ".join(f"{s.name} ({s.reason})" for s in net.skipped))
        if not net.outbound.available:
            report(net.outbound.detail)
        process = await net.netns.spawn(argv, env=env, cwd=os.getcwd())
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the terminal sends it to the command too
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, process.send_signal, sig)
        try:
            return await process.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
