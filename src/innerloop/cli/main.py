"""Entry point of the ``innerloop`` command."""

from __future__ import annotations

import sys

import click

from innerloop import __version__
from innerloop.cli.cluster import cluster
from innerloop.cli.debug import debug_command
from innerloop.cli.demo import demo
from innerloop.cli.dev import down_command, logs, status, up
from innerloop.cli.doctor import doctor
from innerloop.cli.init import init_command
from innerloop.cli.intercept import clean_command, intercept, leave
from innerloop.cli.run import run
from innerloop.cli.schema import schema


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="innerloop")
def cli() -> None:
    """innerloop: the Kubernetes inner dev loop, as fast as working locally."""


cli.add_command(cluster)
cli.add_command(demo)
cli.add_command(up)
cli.add_command(debug_command)
cli.add_command(down_command)
cli.add_command(status)
cli.add_command(logs)
cli.add_command(schema)
cli.add_command(init_command)
cli.add_command(run)
cli.add_command(intercept)
cli.add_command(leave)
cli.add_command(clean_command)
cli.add_command(doctor)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
