"""A local folder as path -> (size, mode, sha256), and the stat cache that keeps re-scans cheap.

Decisions are made by content hash, never by modification time: an editor,
a ``git checkout`` or a formatter that rewrites a file with the same bytes
changes its mtime, and a tool that uploads (and restarts) on mtime churn
wastes the developer's time (DevSpace #1177). The mtime only decides whether
a file must be *read* again: :class:`Scanner` keeps the sha256 of every file
it hashed, keyed by path and checked against ``(size, mtime_ns, ctime_ns,
inode, device)``; a re-scan of an unchanged tree stats every file and reads
none.

Two details make that cache safe:

- ``ctime`` is part of the key as well as ``mtime``: tools that restore an
  old mtime (``cp -p``, ``tar x``, ``rsync -t``) cannot set ctime;
- "racy" entries are not trusted, as in git's index: Linux stamps files with
  a coarse clock (one scheduler tick), so a file rewritten with the same size
  within the tick of its first hash keeps the same stat. A hash taken less
  than ``racy_window_ns`` (2 s, which also covers 2 s filesystems) after the
  file's last change is used once and not cached; such files are few (the
  ones just saved) and are read again on the next look.

Symbolic links are recorded, not followed: their state is their target
(``sha256`` of the target text, as git stores a link). Sockets, FIFOs and
devices are skipped: they are not source, and opening a FIFO would block.

:class:`Tree` is a mapping that also knows its folders, so a batch can
tell in O(1) whether a changed path was a folder and list what was under it
without scanning 100,000 paths.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from innerloop.sync.contained import through_symlink
from innerloop.sync.ignore import PathFilter

T = TypeVar("T")

RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class FileState:
    """What the sync compares and sends for one file: its size, mode bits and content hash.

    ``mode`` is the full ``st_mode`` (type and permission bits). For a
    symbolic link, ``target`` is the link's text, ``size`` its length in
    bytes and ``sha256`` its hash.
    """

    size: int
    mode: int
    sha256: str
    target: str | None = None

    @property
    def is_symlink(self) -> bool:
        return self.target is not None

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


class Tree(MutableMapping[str, T]):
    """Posix paths relative to a root -> a value (a :class:`FileState` locally, a sha256 remotely).

    Holds files only (folders exist through the files below them, as in
    git). It also keeps each folder's children, so :meth:`is_folder` is a
    lookup and :meth:`under` costs the size of the subtree, not of the tree.
    """

    def __init__(self, items: Mapping[str, T] | Iterable[tuple[str, T]] = ()) -> None:
        self._files: dict[str, T] = {}
        self._children: dict[str, set[str]] = {}
        for path, value in items.items() if isinstance(items, Mapping) else items:
            self[path] = value

    def __getitem__(self, path: str) -> T:
        return self._files[path]

    def __setitem__(self, path: str, value: T) -> None:
        if path not in self._files:
            child = path
            while True:
                parent, _, name = child.rpartition("/")
                names = self._children.setdefault(parent, set())
                if name in names:
                    break
                names.add(name)
                if not parent:
                    break
                child = parent
        self._files[path] = value

    def __delitem__(self, path: str) -> None:
        del self._files[path]
        child = path
        # Drop the name from its folder unless something still goes by it (a
        # file, or a folder of a tree caught between the two), and so on up.
        while child not in self._children and child not in self._files:
            parent, _, name = child.rpartition("/")
            names = self._children[parent]
            names.discard(name)
            if names or not parent:
                break
            del self._children[parent]
            child = parent

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return path in self._files

    def __repr__(self) -> str:
        return f"Tree({self._files!r})"

    def is_folder(self, path: str) -> bool:
        """Whether some file of the tree lies below ``path``."""
        return bool(path) and bool(self._children.get(path))

    def under(self, folder: str) -> list[str]:
        """The files below ``folder``, in no particular order."""
        found: list[str] = []
        pending = [folder]
        while pending:
            current = pending.pop()
            for name in self._children.get(current, ()):
                path = f"{current}/{name}" if current else name
                if path in self._files:
                    found.append(path)
                if path in self._children:
                    pending.append(path)
        return found

    def remove_under(self, folder: str) -> None:
        """Forget every file below ``folder``."""
        for path in self.under(folder):
            del self[path]


def hash_file(path: str) -> str:
    """The sha256 of a file's content, hex (``hashlib.file_digest``: no Python-level read loop)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def link_state(path: str, info: os.stat_result) -> FileState:
    target = os.readlink(path)
    raw = os.fsencode(target)
    return FileState(size=len(raw), mode=info.st_mode, sha256=hashlib.sha256(raw).hexdigest(), target=target)


@dataclass(frozen=True, slots=True)
class _Hashed:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    sha256: str

    def fits(self, info: os.stat_result) -> bool:
        return (
            self.size == info.st_size
            and self.mtime_ns == info.st_mtime_ns
            and self.ctime_ns == info.st_ctime_ns
            and self.inode == info.st_ino
            and self.device == info.st_dev
        )


class Scanner:
    """Scans folders into :class:`Tree` values, reading only files whose stat changed since it last read them.

    One scanner per sync session: its cache is the reason a second scan of
    100,000 unchanged files costs their ``lstat`` calls and nothing more.
    ``unreadable`` collects the paths (absolute) that could not be read, for
    the caller to report; they are left out of the tree.
    """

    def __init__(self, *, racy_window_ns: int = RACY_WINDOW_NS, clock: Callable[[], int] = time.time_ns) -> None:
        self._racy_window_ns = racy_window_ns
        self._clock = clock
        self._cache: dict[str, _Hashed] = {}
        self.unreadable: set[str] = set()
        self.reads = 0

    def scan(self, root: Path, scope: PathFilter | None = None) -> Tree[FileState]:
        """Every covered file and link below ``root`` (a folder); ignored folders are not entered."""
        tree: Tree[FileState] = Tree()
        seen: set[str] = set()
        self._scan_into(tree, os.fspath(root), "", scope, seen)
        prefix = os.path.join(os.fspath(root), "")
        # Forget cache entries for files that are gone (or now ignored).
        for key in [k for k in self._cache if k.startswith(prefix) and k not in seen]:
            del self._cache[key]
        return tree

    def refresh(self, tree: Tree[FileState], root: Path, paths: Iterable[str], scope: PathFilter | None = None) -> None:
        """Bring the entries of ``tree`` at and below ``paths`` up to date with the disk, in place.

        In place because a copy of 100,000 entries per save would cost
        milliseconds for nothing. A path that is now a folder is scanned
        (a folder created or moved in brings no event for its files), a path
        that is gone takes its subtree with it.
        """
        base = os.fspath(root)
        real_base = os.path.realpath(base)
        for path in paths:
            full = os.path.join(base, path)
            if through_symlink(real_base, path):
                self._forget(tree, path, full)  # not the root's file: a symlinked folder leads elsewhere
                continue
            try:
                info = os.lstat(full)
            except (FileNotFoundError, NotADirectoryError):
                self._forget(tree, path, full)
                continue
            if stat.S_ISDIR(info.st_mode):
                tree.pop(path, None)
                tree.remove_under(path)
                if scope is None or not scope.ignores(path, is_dir=True):
                    self._scan_into(tree, base, path, scope, set())
                continue
            if tree.is_folder(path):
                tree.remove_under(path)
            state = self._state(full, info) if scope is None or not scope.ignores(path) else None
            if state is None:
                tree.pop(path, None)
            else:
                tree[path] = state

    def state(self, full: str) -> FileState | None:
        """The state of one file or link (None: gone, unreadable, or neither file nor link)."""
        try:
            info = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._state(full, info)

    def _forget(self, tree: Tree[FileState], path: str, full: str) -> None:
        tree.pop(path, None)
        self._cache.pop(full, None)
        if tree.is_folder(path):
            prefix = os.path.join(full, "")
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]
            tree.remove_under(path)

    def _scan_into(
        self, tree: Tree[FileState], base: str, start: str, scope: PathFilter | None, seen: set[str]
    ) -> None:
        pending = [start]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(os.path.join(base, folder) if folder else base) as entries:
                    listing = list(entries)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                self.unreadable.add(os.path.join(base, folder))
                continue
            for entry in listing:
                path = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if scope is None or not scope.ignores(path, is_dir=True):
                        pending.append(path)
                    continue
                if scope is not None and scope.ignores(path):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                state = self._state(entry.path, info)
                if state is not None:
                    tree[path] = state
                    seen.add(entry.path)

    def _state(self, full: str, info: os.stat_result) -> FileState | None:
        try:
            if stat.S_ISLNK(info.st_mode):
                return link_state(full, info)
            if not stat.S_ISREG(info.st_mode):
                return None
            cached = self._cache.get(full)
            if cached is not None and cached.fits(info):
                return FileState(size=info.st_size, mode=info.st_mode, sha256=cached.sha256)
            now = self._clock()
            sha256 = hash_file(full)
            self.reads += 1
        except FileNotFoundError:
            return None
        except OSError:
            self.unreadable.add(full)
            return None
        self.unreadable.discard(full)
        if max(info.st_mtime_ns, info.st_ctime_ns) < now - self._racy_window_ns:
            self._cache[full] = _Hashed(
                info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev, sha256
            )
        else:
            self._cache.pop(full, None)  # racy: the same stat could hide a later write
        return FileState(size=info.st_size, mode=info.st_mode, sha256=sha256)
