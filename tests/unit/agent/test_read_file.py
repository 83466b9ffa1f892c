"""Reading a file for two-way sync: only regular files below the root, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from innerloop.agent.receiver import SyncError, read_file


def test_reads_content_and_mode(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "run.sh"
    f.write_bytes(b"#!/bin/sh\necho hi\n")
    f.chmod(0o750)
    assert read_file(str(tmp_path), "a/run.sh") == (b"#!/bin/sh\necho hi\n", 0o750)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "a/../../outside", ""])
def test_paths_that_could_leave_the_root_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(SyncError):
        read_file(str(tmp_path), path)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(secret, root / "link")
    os.symlink(tmp_path, root / "dirlink")
    with pytest.raises(SyncError):
        read_file(str(root), "link")
    with pytest.raises(SyncError, match="symlink"):
        read_file(str(root), "dirlink/secret")


def test_missing_and_oversized_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="does not exist"):
        read_file(str(tmp_path), "nope.txt")
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(SyncError, match="over the 10-byte limit"):
        read_file(str(tmp_path), "big", limit=10)
    (tmp_path / "d").mkdir()
    with pytest.raises(SyncError, match=r"not a regular file|cannot read"):
        read_file(str(tmp_path), "d")
