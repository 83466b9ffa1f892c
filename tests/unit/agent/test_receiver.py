"""Applying sync batches: inside the root only, atomically, verified, with deletes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from innerloop.agent.receiver import TEMP_SUFFIX, Batch, SyncError, apply_batch, check_path, hash_tree
from innerloop.protocol.messages import FileMeta


def meta(path: str, data: bytes, *, mode: int = 0o644) -> FileMeta:
    return FileMeta(path=path, mode=mode, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def upload(path: str, data: bytes, *, mode: int = 0o644) -> tuple[FileMeta, bytes]:
    return meta(path, data, mode=mode), data


def tree_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    return path


class TestPaths:
    @pytest.mark.parametrize("good", ["a", "a/b.py", "deep/er/still/file.txt", ".env", "..hidden", "a b/c"])
    def test_relative_posix_paths_pass(self, good: str) -> None:
        assert "/".join(check_path(good)) == good

    @pytest.mark.parametrize(
        ("bad", "why"),
        [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../outside", "'..'"),
            ("a/../../outside", "'..'"),
            ("a/..", "'..'"),
            ("a//b", "not normalized"),
            ("./a", "not normalized"),
            ("a/", "not normalized"),
            ("a\0b", "NUL"),
            (f"x{TEMP_SUFFIX}", "reserves"),
        ],
    )
    def test_paths_that_could_escape_are_rejected(self, bad: str, why: str) -> None:
        with pytest.raises(SyncError, match=why):
            check_path(bad)


class TestApply:
    def test_writes_files_with_modes_and_creates_parents(self, root: Path) -> None:
        result = apply_batch(
            str(root),
            [upload("main.py", b"print(1)\n"), upload("bin/run.sh", b"#!/bin/sh\n", mode=0o755)],
        )
        assert (result.applied, result.deleted) == (2, 0)
        assert (root / "main.py").read_bytes() == b"print(1)\n"
        assert stat.S_IMODE((root / "bin/run.sh").stat().st_mode) == 0o755
        assert stat.S_IMODE((root / "main.py").stat().st_mode) == 0o644
        assert tree_files(root) == {"main.py", "bin", "bin/run.sh"}  # no temporary files left

    def test_replace_is_atomic_an_open_reader_keeps_the_old_content(self, root: Path) -> None:
        (root / "config.txt").write_bytes(b"old")
        with (root / "config.txt").open("rb") as reader:
            inode = os.fstat(reader.fileno()).st_ino
            apply_batch(str(root), [upload("config.txt", b"new content")])
            # The destination was swapped, not rewritten in place: the open file is untouched.
            assert reader.read() == b"old"
        assert (root / "config.txt").read_bytes() == b"new content"
        assert (root / "config.txt").stat().st_ino != inode

    def test_hash_mismatch_rejects_the_whole_batch(self, root: Path) -> None:
        (root / "a.txt").write_bytes(b"original a")
        bad = FileMeta(path="b.txt", mode=0o644, size=5, sha256=hashlib.sha256(b"other").hexdigest())
        with pytest.raises(SyncError, match=r"b.txt: content does not match its sha256"):
            apply_batch(str(root), [upload("a.txt", b"changed a"), (bad, b"wrong")])
        # a.txt was staged fine but the batch failed: nothing was replaced, nothing left behind.
        assert (root / "a.txt").read_bytes() == b"original a"
        assert tree_files(root) == {"a.txt"}

    def test_short_and_long_content_is_rejected(self, root: Path) -> None:
        with Batch(str(root), files=[meta("f", b"12345")], deletes=[]) as batch:
            staged = batch.stage(meta("f", b"12345"))
            staged.write(b"123")
            with pytest.raises(SyncError, match="received 3 of 5 bytes"):
                staged.finish()
            with pytest.raises(SyncError, match="more than the announced 5 bytes"):
                staged.write(b"4567")
        assert tree_files(root) == set()

    def test_absolute_and_dotdot_paths_never_write_outside(self, root: Path, tmp_path: Path) -> None:
        for path in ("../escaped.txt", str(tmp_path / "escaped.txt")):
            with pytest.raises(SyncError):
                apply_batch(str(root), [upload(path, b"pwned")])
        assert not (tmp_path / "escaped.txt").exists()

    def test_symlinked_directory_is_not_written_through(self, root: Path, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (root / "link").symlink_to(outside)
        with pytest.raises(SyncError, match=r"link in .* is a symlink"):
            apply_batch(str(root), [upload("link/evil.txt", b"pwned")])
        with pytest.raises(SyncError, match="is a symlink"):
            apply_batch(str(root), [upload("link/sub/evil.txt", b"pwned")])
        assert list(outside.iterdir()) == []

    def test_symlink_to_a_directory_inside_the_root_is_refused_too(self, root: Path) -> None:
        (root / "real").mkdir()
        (root / "alias").symlink_to("real")
        with pytest.raises(SyncError, match="symlink"):
            apply_batch(str(root), [upload("alias/f.txt", b"x")])
        assert list((root / "real").iterdir()) == []

    def test_a_file_symlink_is_replaced_not_followed(self, root: Path, tmp_path: Path) -> None:
        target = tmp_path / "target.txt"
        target.write_bytes(b"keep me")
        (root / "f.txt").symlink_to(target)
        apply_batch(str(root), [upload("f.txt", b"synced")])
        assert target.read_bytes() == b"keep me"
        assert not (root / "f.txt").is_symlink()
        assert (root / "f.txt").read_bytes() == b"synced"

    def test_a_file_where_a_directory_is_needed_is_reported(self, root: Path) -> None:
        (root / "pkg").write_bytes(b"")
        with pytest.raises(SyncError, match=r"pkg in .* is a file, not a directory"):
            apply_batch(str(root), [upload("pkg/mod.py", b"x")])

    def test_a_directory_cannot_be_overwritten_by_a_file(self, root: Path) -> None:
        (root / "pkg").mkdir()
        with pytest.raises(SyncError, match="pkg is a directory"):
            apply_batch(str(root), [upload("pkg", b"x")])
        assert tree_files(root) == {"pkg"}

    def test_duplicate_paths_are_rejected(self, root: Path) -> None:
        with pytest.raises(SyncError, match="appears twice"):
            apply_batch(str(root), [upload("a", b"1")], deletes=["a"])

    def test_root_must_exist_and_be_absolute(self, root: Path) -> None:
        with pytest.raises(SyncError, match="does not exist"):
            apply_batch(str(root / "missing"), [upload("a", b"1")])
        with pytest.raises(SyncError, match="absolute"):
            apply_batch("relative/root", [upload("a", b"1")])


class TestDeletes:
    def test_deletes_files_and_prunes_emptied_directories(self, root: Path) -> None:
        (root / "pkg/sub").mkdir(parents=True)
        (root / "pkg/sub/a.py").write_bytes(b"a")
        (root / "pkg/b.py").write_bytes(b"b")
        (root / "keep").mkdir()
        (root / "keep/c.py").write_bytes(b"c")
        result = apply_batch(str(root), [], deletes=["pkg/sub/a.py", "pkg/b.py", "keep/missing.py"])
        assert result.deleted == 2  # the missing one is not an error
        assert tree_files(root) == {"keep", "keep/c.py"}

    def test_a_deleted_directory_goes_with_its_contents(self, root: Path) -> None:
        (root / "build/x").mkdir(parents=True)
        (root / "build/x/y.o").write_bytes(b"")
        assert apply_batch(str(root), [], deletes=["build"]).deleted == 1
        assert tree_files(root) == set()

    def test_deleting_a_symlink_removes_the_link_only(self, root: Path, tmp_path: Path) -> None:
        target = tmp_path / "precious"
        target.mkdir()
        (target / "data").write_bytes(b"d")
        (root / "link").symlink_to(target)
        assert apply_batch(str(root), [], deletes=["link"]).deleted == 1
        assert (target / "data").read_bytes() == b"d"
        assert tree_files(root) == set()

    def test_deletes_through_a_symlinked_directory_are_refused(self, root: Path, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "victim").write_bytes(b"v")
        (root / "link").symlink_to(outside)
        with pytest.raises(SyncError, match="symlink"):
            apply_batch(str(root), [], deletes=["link/victim"])
        assert (outside / "victim").exists()

    def test_a_file_can_become_a_directory_in_one_batch(self, root: Path) -> None:
        (root / "thing").write_bytes(b"was a file")
        apply_batch(str(root), [upload("thing/now.py", b"inside")], deletes=["thing"])
        assert (root / "thing/now.py").read_bytes() == b"inside"


class TestHashTree:
    def test_hashes_regular_files_and_skips_symlinks_and_temp_files(self, root: Path, tmp_path: Path) -> None:
        (root / "a").mkdir()
        (root / "a/x.py").write_bytes(b"x")
        (root / "top.txt").write_bytes(b"")
        (root / f".top.txt.1234{TEMP_SUFFIX}").write_bytes(b"half")
        (root / "ln").symlink_to(tmp_path)
        (root / "fl").symlink_to(root / "top.txt")
        assert hash_tree(str(root)) == {
            "a/x.py": hashlib.sha256(b"x").hexdigest(),
            "top.txt": hashlib.sha256(b"").hexdigest(),
        }

    def test_applying_a_tree_reproduces_its_hashes(self, root: Path, tmp_path: Path) -> None:
        files = {"a.py": b"1", "d/e/f.bin": bytes(range(256)) * 1000, "empty": b""}
        apply_batch(str(root), [upload(path, data) for path, data in files.items()])
        assert hash_tree(str(root)) == {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}

    def test_missing_root_is_a_sync_error(self, tmp_path: Path) -> None:
        with pytest.raises(SyncError, match="does not exist"):
            hash_tree(str(tmp_path / "nope"))
