"""``innerloop init``: from a folder with an app, or a repository with several, to a working ``innerloop.yaml``.

The decisions are pure (:mod:`innerloop.engine.init` for one app,
:mod:`innerloop.engine.init_repo` for a repository's apps and existing
manifests); this edge reads the folder into a listing, writes what may be
written (never an existing file without ``--force``), keeps the project's
copy of the JSON Schema current, and says what it guessed, what it did and
what to run next.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from innerloop.cli.schema import write_project_schema
from innerloop.config.model import DNS_LABEL_PATTERN
from innerloop.config.schema import PROJECT_SCHEMA
from innerloop.engine.init import (
    SKIPPED_FOLDERS,
    Detected,
    NotDetected,
    detect,
    plan_writes,
    render,
    service_name,
    with_port,
)
from innerloop.engine.init_repo import RepoPlan, plan_repo, render_repo
from innerloop.sync.contained import LocalRoot, UnsafePath

MAX_FILES = 5000
MAX_TEXT_BYTES = 256 * 1024
MAX_DEPTH = 4
TEXT_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts", ".go", ".json", ".toml", ".txt", ".yaml", ".yml", ".mod", ".cfg")
TEXT_NAMES = ("Dockerfile", "Kustomization")


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
    """Detect the app in FOLDER (or every app of a repository) and write innerloop.yaml.

    A Dockerfile and manifests are written only for apps that have none; a
    repository's existing manifests are paired with its apps by image name.
    """
    root = folder.resolve()
    listing = read_listing(root)
    try:
        detected = detect(listing)
    except NotDetected as err:
        try:
            repo = plan_repo(listing, name=name or service_name(root.name))
        except NotDetected:
            click.echo(f"error: {root}: {err}", err=True)
            sys.exit(1)
        if port is not None:
            raise click.UsageError(
                f"--port is for a folder with one app; {root} has {len(repo.apps)}: edit the ports in innerloop.yaml"
            ) from None
        _init_repo(root, repo, force=force)
    else:
        _init_app(root, detected if port is None else with_port(detected, port), name=name, force=force)
    where = "" if root == Path.cwd().resolve() else f"cd {folder} && "
    click.echo(f"next: {where}innerloop up")


def _write(root: Path, rendered: dict[str, str], *, force: bool) -> None:
    plan = plan_writes(rendered, [p for p in rendered if (root / p).exists() or (root / p).is_symlink()], force=force)
    files = LocalRoot(root)  # never through a symlink: a cloned repo's Dockerfile -> ~/.bashrc stays unwritten
    for path in plan.write:
        existed = (root / path).exists()
        try:
            files.write(path, rendered[path].encode(), 0o644)
        except UnsafePath as err:
            click.echo(f"  kept      {path} (not written: {err})")
            continue
        click.echo(f"  {'replaced' if existed else 'wrote':<9} {path}")
    for path in plan.keep:
        click.echo(f"  kept      {path} (exists; --force overwrites it)")
    # The schema copy is innerloop's own file (in its folder), not the user's: kept current, never "kept".
    done = write_project_schema(root)
    if done:
        click.echo(f"  {done:<9} {PROJECT_SCHEMA} (the schema innerloop.yaml's first line points at)")


def _init_app(root: Path, detected: Detected, *, name: str | None, force: bool) -> None:
    rendered = render(detected, name or service_name(root.name), schema=PROJECT_SCHEMA)
    click.echo(
        f"found a {detected.kind.capitalize()} app: {detected.entry}, port {detected.port} ({detected.port_source})"
    )
    if detected.dockerfile:
        click.echo("  kept      Dockerfile (exists)")
    for path in detected.manifests:
        click.echo(f"  kept      {path} (existing manifests)")
    _write(root, rendered, force=force)
    for note in detected.notes:
        click.echo(f"note: {note}")


def _init_repo(root: Path, repo: RepoPlan, *, force: bool) -> None:
    rendered = render_repo(repo, schema=PROJECT_SCHEMA)
    click.echo(
        f"found {len(repo.apps)} app{'s' * (len(repo.apps) != 1)} and {repo.workload_count} workload"
        f"{'s' * (repo.workload_count != 1)} in existing manifests: one innerloop.yaml for the repository"
    )
    for service in repo.services:
        click.echo(f"  {service.name}")
        for reason in service.reasons:
            click.echo(f"      {reason}")
    referenced = sorted({p for s in repo.services for p in s.files if p not in rendered})
    referenced += sorted({s.workload.source.path for s in repo.services if s.workload and not s.files})
    for path in dict.fromkeys(referenced):
        click.echo(f"  kept      {path} (existing manifests, referenced)")
    _write(root, rendered, force=force)
    for note in repo.notes:
        click.echo(f"note: {note}")
