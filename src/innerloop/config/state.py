"""The project's ``.innerloop/`` folder: innerloop's state on this machine, never shared, never a symlink.

Several commands keep files next to innerloop.yaml: ``up`` its lock and
socket, ``run`` and ``intercept -- CMD`` the pod's Secrets and ConfigMaps,
``up`` the restore records, ``schema --write`` the schema copy. They reach
the folder through :func:`state_dir`, which

- creates it (and any subfolder asked for) owner-only, 0700;
- writes ``.innerloop/.gitignore`` whenever it is missing or says something
  else: ``*`` first (nothing here is committed, Secrets included), then the
  two exceptions worth sharing, the ``.gitignore`` itself and the schema copy
  that innerloop.yaml's modeline names. A cloned repository's own
  ``.innerloop/.gitignore`` that un-ignores files is rewritten;
- refuses a symlink anywhere on the way (``.innerloop``, ``.innerloop/run``,
  the ``.gitignore``): a repository that ships ``.innerloop -> ~`` would
  otherwise have innerloop write, and delete, the developer's files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from innerloop.config.load import ConfigError

STATE_DIR = ".innerloop"
SCHEMA_COPY = "innerloop.schema.json"  # config/schema.py PROJECT_SCHEMA's file name
STATE_GITIGNORE = (
    "*\n"
    "# Written by innerloop: what innerloop keeps here stays on this machine (Secrets included),\n"
    "# except the schema copy that innerloop.yaml's modeline points at.\n"
    "!.gitignore\n"
    f"!{SCHEMA_COPY}\n"
)


class StateError(ConfigError):
    """``.innerloop/`` cannot be used safely; the message says what to remove (a ConfigError: one line)."""


def state_dir(project: Path, *parts: str) -> Path:
    """``project/.innerloop/<parts...>``, created 0700 with the folder's ``.gitignore``; never through a symlink."""
    folder = project / STATE_DIR
    _real_folder(folder)
    _write_gitignore(folder / ".gitignore")
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"{part!r} is not a folder name")
        folder /= part
        _real_folder(folder)
    return folder


def _real_folder(folder: Path) -> None:
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise StateError(
            f"{folder} is a symlink (to {os.readlink(folder)}); innerloop keeps its state in a folder of its own "
            "there: remove the link"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{folder} is not a folder; innerloop keeps its state there: remove it")
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700, follow_symlinks=False)


def _write_gitignore(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path} is not a regular file (a symlink?); remove it and run the command again")
        with open(path, "rb") as current:
            if current.read(len(STATE_GITIGNORE) + 1) == STATE_GITIGNORE.encode():
                return
    partial = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(STATE_GITIGNORE)
    os.replace(partial, path)
