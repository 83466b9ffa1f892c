"""``seed SRC DST``: fill an emptyDir with the files the image has at a synced path.

In dev mode a synced directory becomes an emptyDir (the agent must be able to
write it, whatever the image's file ownership), which hides what the image
put there. An init container runs ``python -m innerloop.agent seed`` to copy
the image's files in first, keeping modes and symlinks, so the app starts
with exactly the files it would have had and the first sync sends only what
differs from the image.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from innerloop.agent.log import log


def seed(source_dir: str | Path, destination_dir: str | Path) -> int:
    """Copy ``source_dir`` into ``destination_dir`` (which may exist); returns the number of files copied.

    Idempotent, because a failed init container runs again on the same
    emptyDir: existing files and links are replaced. The destination itself
    is an emptyDir mount point owned by root, so its own mode and times are
    left alone (changing them is not permitted to a non-root user). A source
    the image does not have is an empty start, not an error.
    """
    source, destination = Path(source_dir), Path(destination_dir)
    if not source.exists():
        log(f"{source} does not exist in the image: {destination} starts empty")
        return 0
    if not source.is_dir():
        raise SystemExit(f"innerloop-agent: seed source {source} is not a directory")
    copied = 0
    for dirpath, dirnames, filenames in os.walk(source):
        base = Path(dirpath)
        target_dir = destination / base.relative_to(source)
        for name in dirnames:
            src, dst = base / name, target_dir / name
            if src.is_symlink():
                _replace_link(src, dst)
                continue
            dst.mkdir(exist_ok=True)
            shutil.copystat(src, dst)
        for name in filenames:
            src, dst = base / name, target_dir / name
            if src.is_symlink():
                _replace_link(src, dst)
            else:
                tmp = dst.with_name(f".{name}.innerloop-seed")
                shutil.copy2(src, tmp)
                os.replace(tmp, dst)
            copied += 1
    log(f"seeded {destination} with {copied} files from {source}")
    return copied


def _replace_link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    dst.symlink_to(os.readlink(src))
