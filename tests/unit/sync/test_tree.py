"""Scanning a folder into path -> (size, mode, sha256): links, modes, the stat cache, in-place refresh."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import innerloop.sync.tree as tree_module
from innerloop.sync.ignore import SyncScope
from innerloop.sync.tree import FileState, Scanner, Tree


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the scanner reads, in order (the real hash still runs)."""
    reads: list[str] = []
    real = tree_module.hash_file

    def counting(path: str) -> str:
        reads.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(tree_module, "hash_file", counting)
    return reads


def test_scan_records_size_mode_and_content_hash(tmp_path: Path) -> None:
    write(tmp_path, {"a.txt": b"hello", "src/run.sh": b"#!/bin/sh\n", "src/deep/x": b""})
    (tmp_path / "src/run.sh").chmod(0o755)
    tree = Scanner().scan(tmp_path)
    assert sorted(tree) == ["a.txt", "src/deep/x", "src/run.sh"]
    assert tree["a.txt"] == FileState(size=5, mode=(tmp_path / "a.txt").lstat().st_mode, sha256=sha(b"hello"))
    assert tree["src/run.sh"].permissions == 0o755
    assert stat.S_ISREG(tree["src/run.sh"].mode)
    assert tree["src/deep/x"].sha256 == sha(b"")


def test_symlinks_are_recorded_not_followed(tmp_path: Path) -> None:
    write(tmp_path, {"real/file.txt": b"data"})
    (tmp_path / "to-file").symlink_to("real/file.txt")
    (tmp_path / "to-folder").symlink_to("real")
    (tmp_path / "dangling").symlink_to("nowhere")
    tree = Scanner().scan(tmp_path)
    assert sorted(tree) == ["dangling", "real/file.txt", "to-file", "to-folder"]  # nothing below to-folder
    link = tree["to-folder"]
    assert link.is_symlink and link.target == "real"
    assert link.sha256 == sha(b"real") and link.size == 4
    assert stat.S_ISLNK(link.mode)
    assert tree["dangling"].target == "nowhere"
    assert not tree["real/file.txt"].is_symlink


def test_fifos_are_skipped_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    write(tmp_path, {"a": b"x"})
    assert list(Scanner().scan(tmp_path)) == ["a"]


def test_ignored_folders_are_not_entered_and_ignored_files_not_read(tmp_path: Path, hashed: list[str]) -> None:
    write(tmp_path, {"src/a.py": b"a", "src/a.pyc": b"c", "node_modules/p/index.js": b"n", ".git/HEAD": b"ref"})
    scope = SyncScope(exclude=["node_modules/", "*.pyc"])
    tree = Scanner().scan(tmp_path, scope)
    assert list(tree) == ["src/a.py"]
    assert hashed == ["a.py"]


def test_a_rescan_of_unchanged_files_reads_none(tmp_path: Path, hashed: list[str]) -> None:
    write(tmp_path, {f"d{i}/f{j}": f"{i}-{j}".encode() for i in range(3) for j in range(4)})
    scanner = Scanner(racy_window_ns=0)
    first = scanner.scan(tmp_path)
    assert len(hashed) == 12
    second = scanner.scan(tmp_path)
    assert len(hashed) == 12
    assert second == first
    (tmp_path / "d1/f2").write_bytes(b"changed, and longer")
    third = scanner.scan(tmp_path)
    assert hashed[12:] == ["f2"]
    assert third["d1/f2"].sha256 == sha(b"changed, and longer")


def test_mtime_churn_rereads_but_keeps_the_same_hash(tmp_path: Path, hashed: list[str]) -> None:
    write(tmp_path, {"a": b"same bytes"})
    scanner = Scanner(racy_window_ns=0)
    before = scanner.scan(tmp_path)["a"]
    os.utime(tmp_path / "a", ns=(1_000_000_000, 1_000_000_000))
    after = scanner.scan(tmp_path)["a"]
    assert len(hashed) == 2  # the stat changed, so the file was read again ...
    assert after.sha256 == before.sha256  # ... and found unchanged: nothing for the planner to send


def test_a_hash_taken_right_after_a_change_is_not_trusted(tmp_path: Path, hashed: list[str]) -> None:
    write(tmp_path, {"a": b"x"})
    changed = (tmp_path / "a").stat().st_mtime_ns
    # The clock says the hash is taken within the racy window of the file's last change.
    racy = Scanner(clock=lambda: changed + 1_000)
    racy.scan(tmp_path)
    racy.scan(tmp_path)
    assert len(hashed) == 2
    settled = Scanner(clock=lambda: changed + 10 * tree_module.RACY_WINDOW_NS)
    settled.scan(tmp_path)
    settled.scan(tmp_path)
    assert len(hashed) == 3


def test_refresh_follows_creates_edits_deletes_and_type_changes(tmp_path: Path) -> None:
    write(tmp_path, {"keep": b"k", "edit": b"1", "gone": b"g", "dir/a": b"a", "dir/sub/b": b"b", "was-file": b"f"})
    scanner = Scanner(racy_window_ns=0)
    tree = scanner.scan(tmp_path)
    (tmp_path / "edit").write_bytes(b"2")
    (tmp_path / "gone").unlink()
    write(tmp_path, {"new/x/y": b"y", "new/z": b"z"})  # a folder with files and no event of their own
    for name in ("dir/sub/b", "dir/a"):
        (tmp_path / name).unlink()
    (tmp_path / "dir/sub").rmdir()
    (tmp_path / "dir").rmdir()
    (tmp_path / "dir").write_bytes(b"now a file")
    (tmp_path / "was-file").unlink()
    write(tmp_path, {"was-file/inside": b"i"})
    scanner.refresh(tree, tmp_path, ["edit", "gone", "new", "dir", "was-file", "never-existed"])
    assert tree == scanner.scan(tmp_path)
    assert sorted(tree) == ["dir", "edit", "keep", "new/x/y", "new/z", "was-file/inside"]
    assert not tree.is_folder("dir") and tree.is_folder("was-file")


def test_refresh_applies_the_scope(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": b"a"})
    scope = SyncScope(exclude=["*.log", "cache/"])
    scanner = Scanner()
    tree = scanner.scan(tmp_path, scope)
    write(tmp_path, {"x.log": b"l", "cache/c": b"c", "b.py": b"b"})
    scanner.refresh(tree, tmp_path, ["x.log", "cache", "b.py"], scope)
    assert sorted(tree) == ["a.py", "b.py"]


# -- Tree: a mapping that knows its folders ---------------------------------

segment = st.sampled_from(["a", "b", "c"])
paths = st.lists(segment, min_size=1, max_size=4).map("/".join)
operations = st.lists(st.tuples(st.booleans(), paths), max_size=40)


@given(operations)
def test_tree_folder_index_matches_a_plain_dict(ops: list[tuple[bool, str]]) -> None:
    tree: Tree[int] = Tree()
    model: dict[str, int] = {}
    for number, (insert, path) in enumerate(ops):
        if insert:
            tree[path] = model[path] = number
        elif path in model:
            del tree[path], model[path]
    assert dict(tree) == model
    folders = {p.rpartition("/")[0] for p in model if "/" in p}
    folders |= {f.rsplit("/", k)[0] for f in set(folders) for k in range(f.count("/") + 1)}
    for candidate in {"a", "b", "a/b", "a/b/c", "c/a", "b/b/b"} | folders:
        below = {p for p in model if p.startswith(candidate + "/")}
        assert tree.is_folder(candidate) == bool(below)
        assert set(tree.under(candidate)) == below


def test_a_symlinked_folder_out_of_the_root_is_never_scanned_through(tmp_path: Path) -> None:
    """Attack: a cloned repository holds ``keys -> ~/.ssh`` inside a sync root; neither the scan nor a refresh
    of a path reported below the link may read the files it leads to (they would be uploaded to the pod)."""
    root = tmp_path / "root"
    root.mkdir()
    home_ssh = tmp_path / "ssh"
    home_ssh.mkdir()
    (home_ssh / "id_rsa").write_text("private key")
    (root / "keys").symlink_to(home_ssh, target_is_directory=True)
    (root / "app.py").write_text("x")
    scanner = Scanner()
    tree = scanner.scan(root)
    assert sorted(tree) == ["app.py", "keys"]
    assert tree["keys"].is_symlink
    scanner.refresh(tree, root, ["keys/id_rsa"])
    assert "keys/id_rsa" not in tree
    assert scanner.reads == 1  # app.py only
