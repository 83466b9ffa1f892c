"""Apply sync batches to a directory, never writing outside it.

Paths arrive from the network, so every one is checked twice: by its spelling
(relative, posix, no ``.``/``..``/empty parts) and by the file system. The
second check does not trust path strings at all: the root is opened once and
every directory below it is opened relative to its parent with ``O_NOFOLLOW``,
so a symlink anywhere in a path (even one the app created a moment ago) makes
the write fail instead of leading elsewhere. Files are written, deleted and
renamed with ``dir_fd`` calls on those descriptors.

A file's content goes to a temporary file next to its destination, its
sha256 is compared with the one the CLI announced, and only then does
``os.replace`` swap it in: the app sees the old file or the new one, never
half of one. A batch stages all its files before replacing any, so a batch
that fails (hash mismatch, stream cut) changes no file content; its deletes,
which run first so a file can turn into a directory and back, stay applied,
and the CLI's next tree comparison repairs that.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from innerloop.protocol.messages import FileMeta

TEMP_SUFFIX = ".innerloop-tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 256 * 1024


class SyncError(Exception):
    """A batch that cannot be applied; the message names the path and the cause."""


def check_path(path: str) -> tuple[str, ...]:
    """The parts of a relative posix path, or ``SyncError`` if it could leave the root."""
    if not path:
        raise SyncError("empty path in sync batch")
    if "\0" in path:
        raise SyncError(f"sync path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise SyncError(f"sync path {path!r} is absolute; paths must be relative to the sync root")
    parts = tuple(path.split("/"))
    for part in parts:
        if part == "..":
            raise SyncError(f"sync path {path!r} contains '..' and could escape the sync root")
        if part in ("", "."):
            raise SyncError(f"sync path {path!r} is not normalized (empty or '.' component)")
    if parts[-1].endswith(TEMP_SUFFIX):
        raise SyncError(f"sync path {path!r} ends in {TEMP_SUFFIX}, which innerloop reserves for its temporary files")
    return parts


def _open_root(root: str) -> int:
    if not os.path.isabs(root):
        raise SyncError(f"sync root {root!r} must be an absolute path")
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SyncError(f"sync root {root} does not exist in the container") from None
    except NotADirectoryError:
        raise SyncError(f"sync root {root} is not a directory") from None


class SyncRoot:
    """A directory opened once; all access below it goes through ``dir_fd`` without following symlinks."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fd = _open_root(root)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SyncRoot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open_dir(self, parts: Sequence[str], *, create: bool) -> int | None:
        """A new fd for the directory ``parts`` below the root (None if missing and not ``create``)."""
        fd = os.dup(self._fd)
        for depth, name in enumerate(parts):
            try:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    # Created meanwhile? The open below checks what it is.
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                where = "/".join(parts[: depth + 1])
                if exc.errno == errno.ELOOP or _is_symlink(name, fd):
                    raise SyncError(
                        f"{where} in {self.root} is a symlink; innerloop does not write through symlinks"
                    ) from None
                if exc.errno == errno.ENOTDIR:
                    raise SyncError(f"{where} in {self.root} is a file, not a directory") from None
                raise SyncError(f"cannot open {where} in {self.root}: {exc.strerror}") from None
            finally:
                os.close(fd)
            fd = child
        return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


class StagedFile:
    """A file being received into a temporary file beside its destination."""

    def __init__(self, meta: FileMeta, dir_fd: int, name: str) -> None:
        self.meta = meta
        self._dir_fd = dir_fd
        self._name = name
        self._temp = f".{name}.{os.urandom(4).hex()}{TEMP_SUFFIX}"
        self._fd = os.open(
            self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
        self._hash = hashlib.sha256()
        self._written = 0
        self.finished = False

    def write(self, data: bytes) -> None:
        if self._written + len(data) > self.meta.size:
            raise SyncError(f"{self.meta.path}: received more than the announced {self.meta.size} bytes")
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)

    @property
    def missing(self) -> int:
        return self.meta.size - self._written

    def finish(self) -> None:
        """Check size and sha256, set the mode; the file is then ready to replace its destination."""
        if self._written != self.meta.size:
            raise SyncError(f"{self.meta.path}: received {self._written} of {self.meta.size} bytes")
        digest = self._hash.hexdigest()
        if digest != self.meta.sha256:
            raise SyncError(
                f"{self.meta.path}: content does not match its sha256 "
                f"(announced {self.meta.sha256}, received {digest}); the file changed while it was sent?"
            )
        os.fchmod(self._fd, self.meta.mode)
        os.close(self._fd)
        self._fd = -1
        self.finished = True

    def commit(self) -> None:
        try:
            os.replace(self._temp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except IsADirectoryError:
            raise SyncError(
                f"{self.meta.path} is a directory in the container; delete it before sending a file"
            ) from None
        except OSError as exc:
            raise SyncError(f"{self.meta.path}: cannot replace: {exc.strerror}") from None
        self._temp = ""
        os.close(self._dir_fd)
        self._dir_fd = -1

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            if self._temp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temp, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = -1


@dataclass(kw_only=True)
class ApplyResult:
    applied: int
    deleted: int


class Batch:
    """One sync batch against one root: ``delete()``, ``stage()`` each file, then ``commit()``.

    Leaving the ``with`` block without ``commit()`` removes every temporary file.
    """

    def __init__(self, root: str, *, files: Sequence[FileMeta], deletes: Sequence[str]) -> None:
        seen: set[str] = set()
        for path in [meta.path for meta in files] + list(deletes):
            check_path(path)
            if path in seen:
                raise SyncError(f"sync path {path!r} appears twice in one batch")
            seen.add(path)
        self.files = list(files)
        self.deletes = list(deletes)
        self._root = SyncRoot(root)
        self._staged: list[StagedFile] = []

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for staged in self._staged:
            staged.discard()
        self._staged.clear()
        self._root.close()

    def delete(self) -> int:
        """Delete the batch's paths (files, symlinks or whole directories), then prune emptied directories."""
        deleted = 0
        for path in self.deletes:
            *parents, name = check_path(path)
            dir_fd = self._root.open_dir(parents, create=False)
            if dir_fd is None:
                continue
            try:
                info = os.lstat(name, dir_fd=dir_fd)
                if stat.S_ISDIR(info.st_mode):
                    # Imported here: shutil pulls in bz2 and lzma, a few ms of every agent start.
                    import shutil  # noqa: PLC0415

                    shutil.rmtree(name, dir_fd=dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
                deleted += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(dir_fd)
        self._prune()
        return deleted

    def _prune(self) -> None:
        emptied: set[tuple[str, ...]] = set()
        for path in self.deletes:
            parts = check_path(path)
            emptied.update(parts[:depth] for depth in range(1, len(parts)))
        for parts in sorted(emptied, key=len, reverse=True):
            *parents, name = parts
            try:
                dir_fd = self._root.open_dir(parents, create=False)
            except SyncError:
                continue
            if dir_fd is None:
                continue
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                    raise SyncError(f"cannot remove emptied directory {'/'.join(parts)}: {exc.strerror}") from None
            finally:
                os.close(dir_fd)

    def stage(self, meta: FileMeta) -> StagedFile:
        """Start receiving ``meta``'s content; parent directories are created as needed."""
        *parents, name = check_path(meta.path)
        dir_fd = self._root.open_dir(parents, create=True)
        assert dir_fd is not None
        try:
            staged = StagedFile(meta, dir_fd, name)
        except OSError as exc:
            os.close(dir_fd)
            raise SyncError(f"{meta.path}: cannot create a temporary file: {exc.strerror}") from None
        self._staged.append(staged)
        return staged

    def commit(self) -> int:
        """Replace every destination with its verified temporary file."""
        unfinished = [staged.meta.path for staged in self._staged if not staged.finished]
        if unfinished:
            raise SyncError(f"cannot commit a batch with unfinished files: {', '.join(unfinished)}")
        committed = 0
        while self._staged:
            self._staged[0].commit()
            self._staged.pop(0)
            committed += 1
        return committed


def apply_batch(root: str, files: Sequence[tuple[FileMeta, bytes]], deletes: Sequence[str] = ()) -> ApplyResult:
    """Apply a batch whose contents are already in memory (tests, small batches)."""
    with Batch(root, files=[meta for meta, _ in files], deletes=deletes) as batch:
        deleted = batch.delete()
        for meta, content in files:
            staged = batch.stage(meta)
            staged.write(content)
            staged.finish()
        return ApplyResult(applied=batch.commit(), deleted=deleted)


READ_LIMIT = 8 * 1024 * 1024


def read_file(root: str, path: str, *, limit: int = READ_LIMIT) -> tuple[bytes, int]:
    """``(content, mode)`` of ``path`` below ``root``, never following a symlink out of it."""
    parts = check_path(path)
    with SyncRoot(root) as sync_root:
        dir_fd = sync_root.open_dir(parts[:-1], create=False)
        if dir_fd is None:
            raise SyncError(f"{path} does not exist in {root}")
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                raise SyncError(f"{path} does not exist in {root}") from None
            except OSError as exc:
                raise SyncError(f"cannot read {path} in {root}: {exc.strerror}") from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise SyncError(f"{path} in {root} is not a regular file")
            with os.fdopen(fd, "rb") as f:
                if info.st_size > limit:
                    raise SyncError(f"{path} in {root} is {info.st_size} bytes, over the {limit}-byte limit")
                return f.read(limit + 1)[:limit], stat.S_IMODE(info.st_mode)
        finally:
            os.close(dir_fd)


def hash_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: str) -> dict[str, str]:
    """``{relative posix path: sha256}`` of the regular files below ``root`` (symlinks are not followed)."""
    if not os.path.isdir(root):
        raise SyncError(f"sync root {root} does not exist in the container")
    return {path: hash_file(os.path.join(root, path)) for path in _walk(root, "")}


def _walk(root: str, prefix: str) -> Iterator[str]:
    with os.scandir(os.path.join(root, prefix) if prefix else root) as entries:
        for entry in entries:
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(root, rel)
            elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(TEMP_SUFFIX):
                yield rel
