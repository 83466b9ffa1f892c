"""``innerloop schema``: the JSON Schema of innerloop.yaml, and a checker for config files.

The schema goes to stdout so it can be redirected into the repository
(``innerloop schema > schema/innerloop.schema.json``) or handed to an editor;
``--check`` runs the same loader as ``innerloop up``, so a config that passes
here fails there only for reasons outside the file (missing manifests, the
cluster).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from innerloop.config import ConfigError, json_schema_text, load_config


@click.command()
@click.option(
    "--check",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Validate FILE instead of printing the schema: prints 'FILE: ok', or its problems as file:line:col (exit 1).",
)
def schema(config: Path | None) -> None:
    """Print the JSON Schema of innerloop.yaml (for editors), or check a config file."""
    if config is None:
        click.echo(json_schema_text(), nl=False)
        return
    try:
        load_config(config)
    except ConfigError as err:
        click.echo(str(err), err=True)
        sys.exit(1)
    click.echo(f"{config}: ok")
