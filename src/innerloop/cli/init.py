"""``innerloop init``: from a folder with an app to a working ``innerloop.yaml`` in one command.

The decisions are pure (:mod:`innerloop.engine.init`); this edge reads the
folder into a listing, writes what may be written (never an existing file
without ``--force``), and says what it did and what to run next.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

import innerloop
from innerloop.config.model import DNS_LABEL_PATTERN
from innerloop.engine.init import (
    SKIPPED_FOLDERS,
    NotDetected,
    detect,
    plan_writes,
    render,
    service_name,
    with_port,
)

MAX_FILES = 5000
MAX_TEXT_BYTES = 256 * 1024
MAX_DEPTH = 4
TEXT_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts", ".go", ".json", ".toml", ".txt", ".yaml", ".yml", ".mod", ".cfg")
TEXT_NAMES = ("Dockerfile",)


def read_listing(root: Path) -> dict[str, str]:
    """Relative path -> text for the files detection reads; other files map to ``""`` (present, unread)."""
    listing: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        for skipped in [d for d in dirs if d in SKIPPED_FOLDERS or depth + 1 > MAX_DEPTH]:
            dirs.remove(skipped)
            if (here / skipped / "pyvenv.cfg").is_file():  # a virtualenv: to exclude, never to read
                listing[(here / skipped / "pyvenv.cfg").relative_to(root).as_posix()] = ""
        dirs.sort()
        for name in sorted(names):
            path = here / name
            relative = path.relative_to(root).as_posix()
            text = ""
            if (name.endswith(TEXT_SUFFIXES) or name in TEXT_NAMES) and path.is_file():
                try:
                    if path.stat().st_size <= MAX_TEXT_BYTES:
                        text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    text = ""
            listing[relative] = text
            if len(listing) >= MAX_FILES:
                return listing
    return listing


def schema_reference(folder: Path) -> str | None:
    """The repository's JSON Schema relative to ``folder``, when this innerloop runs from a checkout."""
    schema = Path(innerloop.__file__).resolve().parents[2] / "schema" / "innerloop.schema.json"
    if not schema.is_file():
        return None
    return Path(os.path.relpath(schema, folder.resolve())).as_posix()


def _name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(DNS_LABEL_PATTERN, value):
        raise click.BadParameter(
            f"{value!r} is not a DNS-1123 label: at most 63 lowercase letters, digits and '-' (e.g. my-app)"
        )
    return value


@click.command(name="init")
@click.argument("folder", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", callback=_name, help="Service and project name (default: the folder's name, DNS-1123).")
@click.option("--port", type=click.IntRange(1, 65535), help="The port the app listens on (default: guessed).")
@click.option("--force", is_flag=True, help="Overwrite files that exist (default: keep them).")
def init_command(folder: Path, name: str | None, port: int | None, force: bool) -> None:
    """Detect the app in FOLDER and write innerloop.yaml (and a Dockerfile and manifests when missing)."""
    root = folder.resolve()
    listing = read_listing(root)
    try:
        detected = detect(listing)
    except NotDetected as err:
        click.echo(f"error: {root}: {err}", err=True)
        sys.exit(1)
    if port is not None:
        detected = with_port(detected, port)
    name = name or service_name(root.name)
    rendered = render(detected, name, schema=schema_reference(root))
    plan = plan_writes(rendered, [p for p in rendered if (root / p).exists()], force=force)

    kind = detected.kind.capitalize()
    click.echo(f"found a {kind} app: {detected.entry}, port {detected.port} ({detected.port_source})")
    if detected.dockerfile:
        click.echo("  kept      Dockerfile (exists)")
    for path in detected.manifests:
        click.echo(f"  kept      {path} (existing manifests)")
    for path in plan.write:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        target.write_text(rendered[path], encoding="utf-8")
        click.echo(f"  {'replaced' if existed else 'wrote':<9} {path}")
    for path in plan.keep:
        click.echo(f"  kept      {path} (exists; --force overwrites it)")
    for note in detected.notes:
        click.echo(f"note: {note}")
    where = "" if root == Path.cwd().resolve() else f"cd {folder} && "
    click.echo(f"next: {where}innerloop up")
