"""``innerloop run -- CMD``: run a local command with a pod's environment, ConfigMaps, Secrets and Service names.

By default the command runs in its own network and mount namespace
(``connect/network.py``), made without root, where the namespace's Services
resolve by their cluster names and answer through self-healing port-forwards;
``--no-cluster-network`` runs it as a plain child process instead.

Signals (:mod:`innerloop.cli.stopping`, ``_wait_command``): Ctrl-C reaches the
command straight from the terminal (same process group); this process passes
a SIGINT on only if the command still runs a second later, SIGTERM and SIGHUP
at once, and kills the command at the stop deadline (5 s), or at a second
Ctrl+C, and exits. The exit status is the command's (128 + N when signal N
ended it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import click

from innerloop.cli.output import explain_error, report
from innerloop.cli.stopping import Stopping, run_until_signal
from innerloop.cluster.progress import StepFailed
from innerloop.config.state import StateError
from innerloop.connect.context import RemoteContext, parse_env_options, withheld_line
from innerloop.connect.netns import NamespaceError
from innerloop.connect.network import ClusterNetwork
from innerloop.connect.run import Materialized, RunError, command_env, fetch_context, materialized
from innerloop.engine.target import UpError, connect
from innerloop.forward.forward import ForwardEvent
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable, default_kubeconfig


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig's).")
@click.option("--pod", help="The pod whose context to borrow.")
@click.option("-l", "--selector", help="Or a label selector (k=v,k2=v2): the newest running pod.")
@click.option("-c", "--container", help="Container name (default: the first).")
@click.option(
    "--env",
    "env_options",
    multiple=True,
    help="NAME=VALUE for COMMAND, over the pod's and this machine's (repeatable).",
)
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
    env_options: tuple[str, ...],
    no_cluster_network: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND locally with the pod's env vars (Service links included) and its ConfigMap and
    Secret files under .innerloop/run/ while it runs (paths in INNERLOOP_MOUNTS). The namespace's Services resolve by
    name (backend, backend.NS, backend.NS.svc.cluster.local) on every port, in a private network
    namespace made without root; the machine's own DNS settings are untouched. Nothing changes in
    the cluster. This machine's PATH, HOME, PYTHONHOME, LD_*, LC_*... stay (see README)."""
    if (pod is None) == (selector is None):
        click.echo("error: give --pod NAME or --selector k=v", err=True)
        sys.exit(2)
    labels = dict(pair.split("=", 1) for pair in selector.split(",")) if selector else None
    try:
        explicit = parse_env_options(env_options)
        conn = _connection()
        ns = namespace or conn.namespace
        options = _RunOptions(
            namespace=ns,
            pod=pod,
            selector=labels,
            container=container,
            env=explicit,
            argv=command,
            cluster_network=not no_cluster_network,
        )
        returncode = run_until_signal(functools.partial(_run, conn, options), what="innerloop run")
    except (KeyboardInterrupt, asyncio.CancelledError):
        report("stopped before the command started")
        sys.exit(130)
    except (RunError, NamespaceError, StateError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except Exception as err:
        message = explain_error(err, (UpError, ClusterUnreachable, StepFailed))
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    sys.exit(exit_status(returncode))


@dataclass(frozen=True, kw_only=True)
class _RunOptions:
    namespace: str
    pod: str | None
    selector: dict[str, str] | None
    container: str | None
    env: dict[str, str]
    argv: Sequence[str]
    cluster_network: bool


async def _run(conn: ClusterConnection, options: _RunOptions, stopping: Stopping) -> int:
    ns = options.namespace
    stopping.what = f"innerloop run: reading the context of a pod in {ns}"
    name, context = await fetch_context(
        conn, namespace=ns, pod=options.pod, selector=options.selector, container=options.container
    )
    with materialized(context, Path.cwd(), name) as files:  # deleted when the command ends, however it ends
        stopping.at_exit.append(files.remove)  # the hard exit (stop deadline, second Ctrl+C) skips the with
        return await _run_command(conn, options, stopping, name=name, context=context, files=files)


async def _run_command(
    conn: ClusterConnection,
    options: _RunOptions,
    stopping: Stopping,
    *,
    name: str,
    context: RemoteContext,
    files: Materialized,
) -> int:
    ns, root, mounts = options.namespace, files.root, files.mounts
    report(f"context of {ns}/{name}: {len(context.env)} env vars, {len(mounts)} mounted folders under {root}")
    for missing in context.missing:
        report(f"optional {missing} is missing in the cluster")
    decided = command_env(context, mounts, root, explicit=options.env)
    if (line := withheld_line(decided.withheld)) is not None:
        report(line)
    if not options.cluster_network:
        stopping.what = f"innerloop run: waiting for {options.argv[0]}"
        process = await asyncio.create_subprocess_exec(*options.argv, env=decided.env)
        return await _wait_command(process, stopping)
    async with ClusterNetwork.open(conn, namespace=ns, on_event=_on_forward_event) as net:
        ready_ms = net.netns.timings.ready_s * 1000
        report(f"{net.names.summary()}; namespace ready in {ready_ms:.0f} ms")
        if net.skipped:
            report("not forwarded: " + ", ".join(f"{s.name} ({s.reason})" for s in net.skipped))
        if not net.outbound.available:
            report(net.outbound.detail)
        stopping.what = f"innerloop run: waiting for {options.argv[0]}"
        spawned = await net.netns.spawn(options.argv, env=decided.env, cwd=os.getcwd())
        return await _wait_command(spawned, stopping)


class _Command(Protocol):
    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    async def wait(self) -> int: ...


async def _wait_command(process: _Command, stopping: Stopping) -> int:
    """Wait for the command; a signal to this process reaches it, and it has the stop deadline to exit.

    Ctrl+C reaches the command straight from the terminal (same process
    group), so a SIGINT is passed on only if it still runs a second later (the
    SIGINT was sent to this process alone); SIGTERM and SIGHUP are passed on
    at once. At the deadline the command is killed and this process exits.
    """
    loop = asyncio.get_running_loop()

    def send(sig: int) -> None:
        if process.returncode is None:
            process.send_signal(sig)

    def pass_on(sig: int) -> None:
        if sig == signal.SIGINT:
            loop.call_later(1.0, send, sig)
        else:
            send(sig)

    stopping.stop = pass_on
    stopping.at_exit.append(functools.partial(send, signal.SIGKILL))
    loop.add_signal_handler(signal.SIGHUP, process.send_signal, signal.SIGHUP)
    try:
        return await process.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


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
