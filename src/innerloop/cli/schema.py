"""``innerloop schema``: the JSON Schema of innerloop.yaml, a project's copy of it, and a checker for config files.

The schema goes to stdout so it can be handed to an editor or redirected
(``innerloop schema > schema/innerloop.schema.json`` regenerates the copy
shipped in the package); ``--write`` refreshes the project's own copy at
``.innerloop/innerloop.schema.json``, the file the modeline ``innerloop init``
writes points at (why a project-local copy: :mod:`innerloop.config.schema`).
``--check`` runs the same loader as ``innerloop up``, so a config that passes
here fails there only for reasons outside the file (missing manifests, the
cluster).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from innerloop.config import ConfigError, find_config, json_schema_text, load_config
from innerloop.config.schema import PROJECT_SCHEMA, packaged_schema_text
from innerloop.config.state import state_dir


def write_project_schema(folder: Path) -> str | None:
    """Write ``folder``'s schema copy when it is missing or out of date; what was done, or ``None``.

    Through ``config/state.py`` (``.innerloop/`` is never a symlink; its
    .gitignore shares only the schema copy) and ``O_NOFOLLOW``: a cloned
    repository's ``.innerloop/.innerloop.schema.json.partial -> ~/.bashrc``
    had the schema written over ~/.bashrc.
    """
    target = state_dir(folder) / Path(PROJECT_SCHEMA).name
    text = packaged_schema_text()
    try:
        if not target.is_symlink() and target.read_text(encoding="utf-8") == text:
            return None
        done = "refreshed"
    except FileNotFoundError:
        done = "wrote"
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)  # unlink never follows a symlink
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    partial.replace(target)  # an editor reading it never sees half a file; a link there is replaced, not followed
    return done


@click.command()
@click.option(
    "--check",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Validate FILE instead of printing the schema: prints 'FILE: ok', or its problems as file:line:col (exit 1).",
)
@click.option(
    "--write",
    is_flag=True,
    help=f"Write the project's copy ({PROJECT_SCHEMA}, next to the innerloop.yaml found upwards from here), "
    "which innerloop.yaml's modeline points at.",
)
def schema(config: Path | None, write: bool) -> None:
    """Print the JSON Schema of innerloop.yaml (for editors), write the project's copy, or check a config file."""
    if config is not None and write:
        raise click.UsageError("give --check or --write, not both")
    if write:
        try:
            folder = find_config(Path.cwd()).parent
        except ConfigError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        done = write_project_schema(folder)
        click.echo(f"{done or 'current'}: {folder / PROJECT_SCHEMA}")
        return
    if config is None:
        click.echo(json_schema_text(), nl=False)
        return
    try:
        load_config(config)
    except ConfigError as err:
        click.echo(str(err), err=True)
        sys.exit(1)
    click.echo(f"{config}: ok")
