"""``innerloop up|down|status|logs``: the dev loop and its views from other terminals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click

from innerloop.cli.options import default_repo_option, insecure_registry_option
from innerloop.cli.output import explain_error, report
from innerloop.cli.stopping import run_until_signal
from innerloop.cluster.progress import StepFailed
from innerloop.config import ConfigError, find_config
from innerloop.dashboard import DEFAULT_PORT, DashboardError, Listen
from innerloop.debug.languages import DebugError
from innerloop.delivery import DeliveryError
from innerloop.deploy.apply import DeployError
from innerloop.deploy.devmode import DevModeError
from innerloop.deploy.render import ManifestError
from innerloop.engine.plan import PlanError
from innerloop.engine.target import UpError, connect
from innerloop.engine.up import DevLoop, down
from innerloop.forward.forward import ForwardError
from innerloop.k8s.connection import ClusterUnreachable
from innerloop.logs.lines import LogLine, color_index, format_line
from innerloop.status.api import AlreadyRunning, socket_path
from innerloop.sync.watcher import WatchError

USER_ERRORS = (
    ConfigError,
    PlanError,
    DevModeError,
    DeployError,
    ManifestError,
    UpError,
    ClusterUnreachable,
    StepFailed,
    AlreadyRunning,
    WatchError,
    ForwardError,
    DeliveryError,
    DashboardError,
    DebugError,
)


def explain(err: BaseException) -> str | None:
    """One actionable line for errors from the cluster or the network, or None for bugs."""
    return explain_error(err, USER_ERRORS)


def _fail(err: BaseException) -> None:
    message = explain(err)
    if message is None:
        raise err
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _config(path: str | None) -> Path:
    return Path(path).resolve() if path else find_config(Path.cwd())


config_option = click.option("-f", "--file", "config_file", help="innerloop.yaml (default: found upwards from here)")
namespace_option = click.option("-n", "--namespace", help="Namespace (default: innerloop.yaml, then the kubeconfig)")


def _doing(loop: DevLoop) -> str:
    """What a Ctrl+C stops, in the user's words: each service's phase."""
    phases = ", ".join(f"{name} {s.phase}" for name, s in loop.store.services.items()) if loop.store.services else ""
    return "innerloop up" + (f" ({phases})" if phases else "") + "; the app stays deployed"


def loop_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `up` and `debug` share: config, namespace, colours, images, the dashboard."""
    for option in reversed(
        [
            config_option,
            namespace_option,
            click.option("--no-color", is_flag=True, help="Plain log prefixes."),
            default_repo_option,
            insecure_registry_option,
            click.option(
                "--dashboard-port",
                type=click.IntRange(0, 65535),
                help=f"The web dashboard's port on 127.0.0.1 (default {DEFAULT_PORT}, or the next free one; "
                "0: any free port).",
            ),
            click.option("--no-dashboard", is_flag=True, help="Do not serve the web dashboard."),
        ]
    ):
        command = option(command)
    return command


def run_loop(  # noqa: PLR0917 - the shared options, as click gives them
    config_file: str | None,
    namespace: str | None,
    no_color: bool,
    default_repo: str | None,
    insecure_registry: bool,
    dashboard_port: int | None,
    no_dashboard: bool,
    *,
    debug: list[str] | None = None,
) -> None:
    """`up` (``debug`` None) or `debug` (the services named, ``[]`` for every one whose language is known)."""
    if no_dashboard and dashboard_port is not None:
        raise click.UsageError("--dashboard-port and --no-dashboard contradict each other: choose one")
    try:
        loop = DevLoop(
            config_path=_config(config_file),
            target=connect(report, default_repo=default_repo, insecure_registry=insecure_registry),
            namespace=namespace,
            report=report,
            color=not no_color and sys.stdout.isatty(),
            print_log=click.echo,
            dashboard=None if no_dashboard else Listen(port=dashboard_port),
            debug=debug,
        )
        if debug is not None:
            if not loop.debugging:
                raise DebugError(
                    "no service's language is known: name the services (innerloop debug NAME) "
                    "and set debug.language for them in innerloop.yaml"
                )
            report(f"debugging {', '.join(loop.debugging)}")
        run_until_signal(lambda _stopping: loop.run(), what=functools.partial(_doing, loop))
    except (KeyboardInterrupt, asyncio.CancelledError):
        if debug is None:
            report("stopped; the app stays deployed (`innerloop down` removes it)")
        else:
            report("stopped; the app stays deployed under its debuggers (`innerloop up` or `down` restores it)")
    except Exception as err:
        _fail(err)


@click.command()
@loop_options
def up(**options: Any) -> None:  # noqa: ANN401 - the shared options (loop_options)
    """Build, deploy and develop: sync edits into running containers, forward ports, follow logs.

    The web dashboard (services, logs, timeline, alerts, actions) is served on 127.0.0.1: open the
    `dashboard:` URL it prints."""
    run_loop(**options)


@click.command(name="down")
@config_option
@namespace_option
@click.option(
    "--trust-cluster-record",
    is_flag=True,
    help="Also restore originals that another machine's `up` recorded (check the record first).",
)
def down_command(config_file: str | None, namespace: str | None, trust_cluster_record: bool) -> None:
    """Remove everything `up` created and restore everything it changed (this project's objects only)."""
    try:
        result = asyncio.run(
            down(
                config_path=_config(config_file),
                target=connect(report),
                namespace=namespace,
                trust_cluster_record=trust_cluster_record,
            )
        )
    except Exception as err:
        _fail(err)
        raise
    for line in result.done + result.notes:
        report(line)
    for line in result.refused:
        click.echo(f"warning: {line}", err=True)
    report("nothing to remove" if not result.done else f"removed or restored {len(result.done)} objects")
    if result.refused:
        click.echo(f"error: {len(result.refused)} entries of the restore record were not acted on (above)", err=True)
        sys.exit(1)


def _api(sock: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://innerloop",
        connector=aiohttp.UnixConnector(path=str(sock)),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
    )


def _socket(config_file: str | None) -> Path:
    sock = socket_path(_config(config_file).parent)
    if not sock.exists():
        click.echo(f"error: `innerloop up` is not running for {sock.parent.parent} (no {sock})", err=True)
        sys.exit(1)
    return sock


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
def status(config_file: str | None, as_json: bool) -> None:
    """What a running `innerloop up` is doing (from another terminal)."""

    async def fetch() -> dict[str, object]:
        async with _api(_socket(config_file)) as api, api.get("/v1/status") as resp:
            data: dict[str, object] = await resp.json()
            return data

    try:
        snapshot = asyncio.run(fetch())
    except aiohttp.ClientError as err:
        click.echo(f"error: cannot reach `innerloop up`: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
        return
    click.echo(f"project {snapshot['project']} in namespace {snapshot['namespace']}")
    services = snapshot["services"]
    assert isinstance(services, dict)
    for name, s in services.items():
        sync = f"{s['syncs']} syncs, last {s['last_sync_ms']} ms" if s["syncs"] else "no syncs yet"
        if s.get("sync_paused"):
            sync += " (sync paused)"
        click.echo(f"  {name:<16} {s['phase']:<10} {s['pod'] or '-':<36} {sync}  {' '.join(s['forwards'])}")
        if s.get("debug"):
            click.echo(f"    debugger: {s['debug']}")
        replicas = s.get("replicas") or {}
        if len(replicas) > 1 or any(r["state"] != "in sync" for r in replicas.values()):
            for pod, r in replicas.items():
                last = f", last {r['last_sync_ms']} ms" if r["syncs"] else ""
                why = f" ({r['message']})" if r["message"] else ""
                click.echo(f"    {pod:<46} {r['state']:<12} {r['syncs']} syncs{last}{why}")
    alerts = snapshot.get("alerts") or []
    assert isinstance(alerts, list)
    if alerts:
        click.echo(f"alerts ({len(alerts)}):")
    for alert in alerts:
        times = f" (x{alert['count']})" if alert.get("count", 1) > 1 else ""
        click.echo(f"  {alert['service']}: {alert['kind']}{times}: {alert['cause']}")
        if alert.get("hint"):
            click.echo(f"    {alert['hint']}")


@click.command()
@click.option("--file", "config_file", help="innerloop.yaml (default: found upwards from here)")
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (like kubectl logs -f).")
def logs(config_file: str | None, service: str | None, follow: bool) -> None:
    """Logs of every service (or one), from a running `innerloop up`."""

    async def stream() -> None:
        query = f"?follow={'1' if follow else '0'}" + (f"&service={service}" if service else "")
        async with _api(_socket(config_file)) as api, api.get(f"/v1/logs{query}") as resp:
            async for raw in resp.content:
                entry = json.loads(raw)
                line = LogLine(
                    service=entry["service"],
                    pod=entry["pod"],
                    container="",
                    text=entry["text"],
                    timestamp=datetime.fromtimestamp(entry["at"], UTC),
                )
                colour = color_index(entry["service"]) if sys.stdout.isatty() else None
                click.echo(format_line(line, colour, 12))

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(stream())
    except aiohttp.ClientError as err:
        click.echo(f"error: cannot reach `innerloop up`: {err}", err=True)
        sys.exit(1)
