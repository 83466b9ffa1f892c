"""``innerloop debug [SERVICE...]``: `up`, with those services' processes under their debuggers."""

from __future__ import annotations

from typing import Any

import click

from innerloop.cli.dev import loop_options, run_loop


@click.command(name="debug")
@click.argument("services", nargs=-1)
@loop_options
def debug_command(services: tuple[str, ...], **options: Any) -> None:  # noqa: ANN401 - the shared options
    """Like `up`, with SERVICES (default: every service whose language is known) under their debuggers.

    Python runs under debugpy, Go under Delve, Node with --inspect, the JVM with JDWP; each debugger's
    port is forwarded to this machine, and `.vscode/launch.json` gets an "innerloop: SERVICE" entry.
    Liveness and startup probes are off while debugging; the next plain `up` or `down` restores them.
    """
    run_loop(**options, debug=list(services))
