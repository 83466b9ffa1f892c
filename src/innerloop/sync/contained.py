"""Paths that stay inside a root on this machine, whatever the other side says.

Two-way sync writes, reads and deletes local files at paths the container
names, and ``innerloop run`` writes files at paths a pod spec names: both
come from a peer that may be hostile (a compromised app container, a
teammate who patched the Deployment, a pod spec from a hostile API server).
Every such path goes through this module, checked twice, as the agent does
on its side (``agent/receiver.py``):

1. by its spelling (:func:`relative_parts`): a relative POSIX path, already
   normal (no empty, ``.`` or ``..`` part), no NUL, no backslash (a
   Windows separator some tools honour), not absolute, not empty. A path that
   is not already in that form is refused rather than cleaned: the agent
   never sends one, so cleaning would only serve an attacker;
2. by the file system (:class:`LocalRoot`): the root is opened once and every
   folder below it is opened relative to its parent with ``O_NOFOLLOW``, so a
   symlink anywhere on the way (a symlinked folder in the developer's tree
   that points to ``~/.ssh``) makes the access fail instead of leading out of
   the root; the last component is opened with ``O_NOFOLLOW`` too, and a
   write never replaces a symlink. Symlinks inside the root are not followed
   either: the sync records a link as a link and never looks through it, in
   both directions.

Modes from the container are clamped (:func:`local_mode`): ``0o644``, or
``0o755`` when the container's owner may execute the file. No setuid, setgid
or sticky bit, no write for group or others, whatever the container says:
the container decides only whether a script it wrote stays executable.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

TEMP_SUFFIX = ".innerloop-tmp"
MAX_PATH_BYTES = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us


class UnsafePath(ValueError):
    """A path that could leave its root, or an access that would go through a symlink; the message says which."""


def relative_parts(path: object) -> tuple[str, ...]:
    """The parts of a relative, normal POSIX path, or :class:`UnsafePath` saying why it is refused."""
    if not isinstance(path, str) or not path:
        raise UnsafePath(f"{path!r} is not a path")
    if "\0" in path:
        raise UnsafePath(f"{path!r} contains a NUL byte")
    if "\\" in path:
        raise UnsafePath(f"{path!r} contains a backslash")
    if len(path) > MAX_PATH_BYTES // 4 and len(os.fsencode(path)) > MAX_PATH_BYTES:  # 4: UTF-8's widest
        raise UnsafePath(f"{path[:40]!r}... is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise UnsafePath(f"{path!r} is absolute")
    parts = tuple(path.split("/"))
    if ".." in parts:
        raise UnsafePath(f"{path!r} contains '..'")
    if "" in parts or "." in parts:
        raise UnsafePath(f"{path!r} is not normalized")
    return parts


def is_relative_path(path: object) -> bool:
    """Whether :func:`relative_parts` accepts ``path``."""
    try:
        relative_parts(path)
    except UnsafePath:
        return False
    return True


def local_mode(mode: int) -> int:
    """The permission bits a file from the container gets here: 0o755 if its owner may execute it, else 0o644."""
    return 0o755 if mode & stat.S_IXUSR else 0o644


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``, symlinks resolved, is ``root`` (resolved) or below it."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def through_symlink(real_root: str, path: str, *, seen: dict[str, bool] | None = None) -> bool:
    """Whether a folder on the way from ``real_root`` (a resolved root) to ``path`` (relative) is a symlink.

    A change reported below a symlinked folder (notify follows them, so a
    link to ``~/.ssh`` inside the root is watched) must not be synced: the
    file is not inside the root. ``seen`` caches the answer per folder
    within one batch of events.
    """
    parent = path.rpartition("/")[0]
    if not parent:
        return False
    if seen is not None and parent in seen:
        return seen[parent]
    lexical = os.path.join(real_root, parent)
    found = os.path.realpath(lexical) != lexical
    if seen is not None:
        seen[parent] = found
    return found


class LocalRoot:
    """A folder on this machine that files are read from and written to by relative paths, never leaving it.

    Each call opens the root again (a root that was replaced or removed
    meanwhile is seen as it is now) and walks to the file with ``dir_fd``
    calls. The methods raise :class:`UnsafePath` for a refused path, and
    ``OSError`` for the ordinary failures of the file system.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self, path: str) -> None:
        """Refuse ``path`` if its spelling could leave the root or an existing folder on its way is a symlink."""
        self.check_folder(relative_parts(path)[:-1])

    def check_folder(self, parts: Sequence[str]) -> None:
        """Refuse the folder ``parts`` (checked parts of a path) if an existing folder on its way is a symlink."""
        with self._folder(parts, create=False) as fd:
            del fd

    def sha256(self, path: str) -> str | None:
        """The sha256 of the regular file at ``path``; None when it is absent, a symlink or not a regular file."""
        parts = relative_parts(path)
        with self._folder(parts[:-1], create=False) as folder:
            if folder is None:
                return None
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    return None
                raise
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                os.set_blocking(fd, True)
                return hashlib.file_digest(file, "sha256").hexdigest()

    def write(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` at ``path`` as editors save (a temp file renamed over it); folders are created (0o755).

        ``mode`` is the container's: it is clamped by :func:`local_mode`. A
        symlink or a folder at ``path`` is not replaced.
        """
        parts = relative_parts(path)
        name = parts[-1]
        if name.endswith(TEMP_SUFFIX):
            raise UnsafePath(f"{path!r} ends in {TEMP_SUFFIX}, which innerloop reserves for its temporary files")
        with self._folder(parts[:-1], create=True) as folder:
            assert folder is not None  # created
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(name, dir_fd=folder).st_mode):
                    raise UnsafePath(f"{path} is a symlink or a folder here; innerloop does not replace it")
            temp = f".{name}{TEMP_SUFFIX}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder)  # a leftover of an interrupted write (unlink never follows)
            fd = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    os.fchmod(file.fileno(), local_mode(mode))
                os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=folder)
                raise

    def delete(self, path: str) -> bool:
        """Delete the regular file at ``path`` (a symlink or a folder is left alone); whether one was deleted."""
        parts = relative_parts(path)
        with self._folder(parts[:-1], create=False) as folder:
            if folder is None:
                return False
            try:
                if not stat.S_ISREG(os.lstat(parts[-1], dir_fd=folder).st_mode):
                    return False
                os.unlink(parts[-1], dir_fd=folder)
            except FileNotFoundError:
                return False
            return True

    @contextlib.contextmanager
    def _folder(self, parts: Sequence[str], *, create: bool) -> Iterator[int | None]:
        """An fd of the folder ``parts`` below the root, walked without following symlinks (None: missing)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, name in enumerate(parts):
                try:
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            yield None
                            return
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, 0o755, dir_fd=fd)
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    where = "/".join(parts[: depth + 1])
                    if exc.errno == errno.ELOOP or _is_symlink(name, fd):
                        raise UnsafePath(f"{where} is a symlink here; innerloop does not go through symlinks") from None
                    if exc.errno == errno.ENOTDIR:
                        raise UnsafePath(f"{where} is a file here, not a folder") from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)


def _is_symlink(name: str, dir_fd: int) -> bool:
    # Linux answers O_DIRECTORY | O_NOFOLLOW on a symlink with ENOTDIR, not ELOOP.
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
