"""``innerloop debug [SERVICE...]``: `up`, with those services' processes under their debuggers."""

from __future__ import annotations

import asyncio
import functools
import sys

import click

from innerloop.cli.dev import _config, _doing, _fail, config_option, namespace_option
from innerloop.cli.options import default_repo_option, insecure_registry_option
from innerloop.cli.output import report
from innerloop.cli.stopping import run_until_signal
from innerloop.debug.languages import DebugError
from innerloop.engine.target import connect
from innerloop.engine.up import DevLoop


@click.command(name="debug")
@click.argument("services", nargs=-1)
@config_option
@namespace_option
@click.option("--no-color", is_flag=True, help="Plain log prefixes.")
@default_repo_option
@insecure_registry_option
def debug_command(
    services: tuple[str, ...],
    *,
    config_file: str | None,
    namespace: str | None,
    no_color: bool,
    default_repo: str | None,
    insecure_registry: bool,
) -> None:
    """Like `up`, with SERVICES (default: every service whose language is known) under their debuggers.

    Python runs under debugpy, Go under Delve, Node with --inspect, the JVM with JDWP; each debugger's
    port is forwarded to this machine, and `.vscode/launch.json` gets an "innerloop: SERVICE" entry.
    Liveness and startup probes are off while debugging; the next plain `up` or `down` restores them.
    """
    try:
        path = _config(config_file)
        try:
            loop = DevLoop(
                config_path=path,
                target=connect(report, default_repo=default_repo, insecure_registry=insecure_registry),
                namespace=namespace,
                report=report,
                color=not no_color and sys.stdout.isatty(),
                print_log=click.echo,
                debug=list(services),
            )
        except DebugError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        if not loop.debugging:
            click.echo(
                "error: no service's language is known: name the services (innerloop debug NAME) "
                "and set debug.language for them in innerloop.yaml",
                err=True,
            )
            sys.exit(1)
        report(f"debugging {', '.join(loop.debugging)}")
        run_until_signal(lambda _stopping: loop.run(), what=functools.partial(_doing, loop))
    except (KeyboardInterrupt, asyncio.CancelledError):
        report("stopped; the app stays deployed under its debuggers (`innerloop up` or `down` restores it)")
    except Exception as err:
        _fail(err)
