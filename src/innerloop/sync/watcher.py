"""Batches of file changes under the sync roots, in tens of milliseconds, with no silent polling.

Built on watchfiles' ``RustNotify`` (the engine of ``watchfiles.awatch``,
Rust's notify crate: inotify on Linux), used directly for three reasons:
``awatch`` registers its watches inside the first ``__anext__``, on the event
loop's thread and invisibly (a 100,000-file tree would freeze the loop and
nobody could say when watching began); it reads ``WATCHFILES_FORCE_POLLING``
from the environment; and a change of plan needs no new dependency (the
Rust object is the same one ``awatch`` drives).

What a :class:`FileWatch` does:

- watches only the given roots (the sync roots, and the build context when a
  caller wants rebuild triggers), never the whole project;
- maps every event to each root that contains it, as a path relative to that
  root, and drops what the root's scope ignores (``.git``, excluded and
  git-ignored files): those never reach the planner;
- groups events with a small step: a batch is handed over once ``step_ms``
  (10 ms) pass without a new event, or after ``debounce_ms`` in a long burst,
  so a save reaches the planner in about 10-20 ms and a ``git checkout`` of
  thousands of files arrives as a few batches, not thousands;
- refuses to degrade silently. inotify needs one watch per folder, from a
  per-user budget (``fs.inotify.max_user_watches``) that editors and other
  watchers share; notify registers the whole tree, ignored folders included
  (watchfiles #341), drops folders created past the budget without a word,
  and watchfiles falls back to polling when inotify itself is unavailable
  (#195). So the folders are counted before watching and compared with the
  limit, the kernel's refusal is caught, folders created later are counted
  too, and a poll watcher that nobody asked for is an error. Each case raises
  :class:`WatchLimitError` (or :class:`WatchError`) with the numbers and the
  ``sysctl`` command that fixes it. Polling exists only as the explicit
  ``force_polling`` option (for filesystems without inotify: some network
  and VM-shared folders).

The blocking ``RustNotify.watch`` call runs on a thread owned by the watch,
one at a time, and the batch is filtered there too, off the event loop; a
cancelled ``__anext__`` leaves its call running and the next ``__anext__``
picks up its result, so no event is lost to a timeout.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from watchfiles._rust_notify import RustNotify

from innerloop.sync.contained import through_symlink
from innerloop.sync.ignore import PathFilter
from innerloop.sync.plan import Change, ChangeKind

# watchfiles' change codes (watchfiles.Change).
_KINDS = {1: ChangeKind.ADDED, 2: ChangeKind.MODIFIED, 3: ChangeKind.DELETED}
# A watch call returns after this long without events, so a watch thread
# whose owner vanished without closing it ends on its own.
_CALL_TIMEOUT_MS = 5_000
SUGGESTED_WATCHES = 524_288


class WatchError(RuntimeError):
    """The file watch could not start or broke; the message says why and what to do."""


class WatchLimitError(WatchError):
    """inotify's per-user budget is too small for the folders to watch."""

    def __init__(self, *, setting: str, limit: int | None, needed: int | None, detail: str = "") -> None:
        self.setting = setting
        self.limit = limit
        self.needed = needed
        suggested = max(SUGGESTED_WATCHES, _next_power_of_two(2 * (needed or 0)))
        if setting.endswith("max_user_instances"):
            suggested = 1024
        what = f"watching needs {needed:,} folder watches" if needed is not None else "the kernel refused a watch"
        current = f"{setting} is {limit:,}" if limit is not None else f"{setting} is too low"
        super().__init__(
            f"{what}, but {current} (a per-user budget shared with editors and other watchers)"
            + (f"; {detail}" if detail else "")
            + f". Raise it with: sudo sysctl {setting}={suggested}"
            f" (and in /etc/sysctl.d/ to keep it), or sync a narrower folder (every folder below a root"
            " costs a watch, excluded ones too)."
            " innerloop does not fall back to polling silently; pass force_polling=True to poll instead."
        )


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


@dataclass(frozen=True)
class WatchLimits:
    """inotify's per-user limits (the smaller of the global and the user-namespace value)."""

    max_user_watches: int
    max_user_instances: int


def _read_int(path: str) -> int | None:
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def read_watch_limits() -> WatchLimits | None:
    """The current inotify limits, or None where there is no inotify (not Linux)."""
    watches = [
        value
        for path in ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches")
        if (value := _read_int(path)) is not None
    ]
    instances = [
        value
        for path in ("/proc/sys/fs/inotify/max_user_instances", "/proc/sys/user/max_inotify_instances")
        if (value := _read_int(path)) is not None
    ]
    if not watches:
        return None
    return WatchLimits(max_user_watches=min(watches), max_user_instances=min(instances, default=1 << 30))


class Notify(Protocol):
    """The part of watchfiles' ``RustNotify`` used here (a fake stands in for it in tests)."""

    def watch(
        self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: _StopEvent | None
    ) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...


class _StopEvent(Protocol):
    def is_set(self) -> bool: ...


NotifyFactory = Callable[[list[str], bool, int], Notify]


def rust_notify(paths: list[str], force_polling: bool, poll_delay_ms: int) -> Notify:
    """watchfiles' Rust watcher over ``paths``, recursive; returns once every watch is registered."""
    return RustNotify(paths, False, force_polling, poll_delay_ms, True, False)


@dataclass(frozen=True)
class WatchRoot:
    """A folder to watch, and the scope that says which paths below it matter (None: all but ``.git``)."""

    path: Path
    scope: PathFilter | None = None


@dataclass(frozen=True)
class Batch:
    """Changes grouped by root (each path relative to its root), and when the batch arrived (monotonic)."""

    changes: dict[Path, list[Change]]
    arrived: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return sum(len(changes) for changes in self.changes.values())


def count_folders(paths: Iterable[Path], *, stop_after: int | None = None) -> tuple[int, set[str]]:
    """The folders inotify will watch below ``paths`` (symlinked folders followed, as notify does).

    Returns the count and the folders' paths; stops counting past ``stop_after``.
    """
    seen_inodes: set[tuple[int, int]] = set()
    folders: set[str] = set()
    pending = [os.fspath(p) for p in paths]
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if not stat.S_ISDIR(info.st_mode) or key in seen_inodes:
            continue
        seen_inodes.add(key)
        folders.add(folder)
        if stop_after is not None and len(folders) > stop_after:
            break
        try:
            with os.scandir(folder) as entries:
                pending.extend(entry.path for entry in entries if entry.is_dir(follow_symlinks=True))
        except OSError:
            continue
    return len(folders), folders


class FileWatch:
    """Watch folders; ``async with FileWatch(roots) as watch: async for batch in watch: ...``.

    Entering returns once every watch is registered (``ready_seconds`` says
    how long that took); leaving stops the watch thread and releases the
    inotify instance.
    """

    def __init__(
        self,
        roots: Sequence[WatchRoot],
        *,
        step_ms: int = 10,
        debounce_ms: int = 1_000,
        force_polling: bool = False,
        poll_delay_ms: int = 300,
        limits: Callable[[], WatchLimits | None] = read_watch_limits,
        notify_factory: NotifyFactory = rust_notify,
    ) -> None:
        if not roots:
            raise ValueError("nothing to watch: give at least one root")
        self._roots = {root.path.absolute(): root for root in roots}
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._poll_delay_ms = poll_delay_ms
        self._limits_reader = limits
        self._notify_factory = notify_factory
        self._limits: WatchLimits | None = None
        self._notify: Notify | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._pending: asyncio.Future[Batch | str] | None = None
        self._stop = _Flag()
        self._folders: set[str] = set()
        self.ready_seconds = 0.0

    @property
    def folders(self) -> int:
        """How many folders are watched (inotify spends one watch on each)."""
        return len(self._folders)

    def set_scope(self, root: Path, scope: PathFilter | None) -> None:
        """Use a new scope for ``root`` (after its ignore files changed) from the next batch on."""
        key = root.absolute()
        if key not in self._roots:
            raise KeyError(f"{root} is not watched here; its roots are fixed when the watch starts")
        self._roots[key] = WatchRoot(key, scope)

    async def __aenter__(self) -> Self:
        started = time.perf_counter()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="innerloop-watch")
        loop = asyncio.get_running_loop()
        try:
            self._notify = await loop.run_in_executor(self._thread, self._start)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise
        self.ready_seconds = time.perf_counter() - started
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._stop.set()
        if self._pending is not None:
            # The call sees the stop flag within one step.
            await asyncio.gather(asyncio.shield(self._pending), return_exceptions=True)
            self._pending = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _start(self) -> Notify:
        """On the watch thread: count, check the budget, register every watch."""
        if not self._force_polling:
            self._limits = self._limits_reader()
        budget = self._limits.max_user_watches if self._limits is not None else None
        count, self._folders = count_folders(self._roots, stop_after=budget)
        if budget is not None and count > budget:
            raise WatchLimitError(
                setting="fs.inotify.max_user_watches",
                limit=budget,
                needed=count_folders(self._roots)[0],
                detail="inotify needs one watch per folder, ignored ones included",
            )
        paths = sorted(os.fspath(p) for p in self._roots)
        try:
            notify = self._notify_factory(paths, self._force_polling, self._poll_delay_ms)
        except FileNotFoundError as error:
            raise WatchError(f"cannot watch a folder that does not exist: {error}") from error
        except OSError as error:
            if "limit" in str(error).lower():
                raise WatchLimitError(
                    setting="fs.inotify.max_user_watches",
                    limit=budget,
                    needed=count,
                    detail="other programs already use part of it",
                ) from error
            raise WatchError(f"cannot watch {', '.join(paths)}: {error}") from error
        except RuntimeError as error:  # WatchfilesRustInternalError
            if "too many open files" in str(error).lower():
                instances = self._limits.max_user_instances if self._limits is not None else None
                raise WatchLimitError(
                    setting="fs.inotify.max_user_instances",
                    limit=instances,
                    needed=None,
                    detail="every watching program holds inotify instances (or the open-file limit was hit)",
                ) from error
            raise WatchError(f"cannot start watching: {error}") from error
        if not self._force_polling and repr(notify).startswith("RustNotify(Poll"):
            notify.close()
            raise WatchError(
                "native file watching (inotify) is unavailable here and watchfiles fell back to polling; "
                "pass force_polling=True to poll on purpose (slower, and CPU-hungry on big trees)"
            )
        return notify

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        if self._notify is None or self._thread is None:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        while True:
            if self._pending is None:
                self._pending = loop.run_in_executor(self._thread, self._wait, self._notify)
            try:
                result = await asyncio.shield(self._pending)
            finally:
                if self._pending.done():
                    self._pending = None
            if result == "stop":
                raise StopAsyncIteration
            if isinstance(result, Batch) and result.changes:
                return result

    def _wait(self, notify: Notify) -> Batch | str:
        """On the watch thread: wait for a batch, then count and filter it there, off the event loop.

        A ``git checkout`` of thousands of files is thousands of scope
        questions; the loop keeps serving port-forwards meanwhile.
        """
        try:
            raw = notify.watch(self._debounce_ms, self._step_ms, _CALL_TIMEOUT_MS, self._stop)
        except RuntimeError as error:  # WatchfilesRustInternalError
            raise self._watch_failed(error) from error
        if isinstance(raw, str):  # "stop", or "timeout"/"signal": nothing happened
            return raw
        arrived = time.monotonic()
        self._count_new_folders(raw)
        return Batch(self._sort(raw), arrived)

    def _watch_failed(self, error: RuntimeError) -> WatchError:
        text = str(error)
        if "limit" in text.lower():
            limit = self._limits.max_user_watches if self._limits is not None else None
            return WatchLimitError(setting="fs.inotify.max_user_watches", limit=limit, needed=None, detail=text)
        return WatchError(f"file watching failed: {text}")

    def _count_new_folders(self, raw: set[tuple[int, str]]) -> None:
        """Keep the count of watched folders, and fail when new folders outgrow the budget.

        notify drops the watch of a folder created past the budget without
        a word: its files would never be synced.
        """
        grew = False
        for code, path in raw:
            if code == 3:
                if path in self._folders:
                    prefix = os.path.join(path, "")
                    self._folders.difference_update([f for f in self._folders if f == path or f.startswith(prefix)])
            elif code == 1 and os.path.isdir(path) and path not in self._folders:
                self._folders.update(count_folders([Path(path)])[1])
                grew = True
        budget = self._limits.max_user_watches if self._limits is not None else None
        if grew and budget is not None and len(self._folders) > budget:
            raise WatchLimitError(
                setting="fs.inotify.max_user_watches",
                limit=budget,
                needed=len(self._folders),
                detail="new folders appeared under the sync roots; changes in the newest are not seen",
            )

    def _sort(self, raw: set[tuple[int, str]]) -> dict[Path, list[Change]]:
        out: dict[Path, list[Change]] = {}
        roots = [(os.fspath(path), path, root.scope) for path, root in self._roots.items()]
        real_roots = {root_text: os.path.realpath(root_text) for root_text, _, _ in roots}
        linked: dict[str, dict[str, bool]] = {root_text: {} for root_text, _, _ in roots}
        for code, path in sorted(raw, key=lambda item: (item[1], item[0])):
            kind = _KINDS.get(code)
            if kind is None:
                continue
            is_dir = kind is not ChangeKind.DELETED and _is_dir(path)
            if is_dir and kind is ChangeKind.MODIFIED:
                continue  # a folder's own metadata: its files' events carry the content
            for root_text, root_path, scope in roots:
                relative = _relative(path, root_text)
                if relative is None or through_symlink(real_roots[root_text], relative, seen=linked[root_text]):
                    continue  # outside, or below a symlinked folder: not the root's file
                if scope is None:
                    if ".git" in relative.split("/"):
                        continue
                elif scope.ignores(relative, is_dir=is_dir):
                    continue
                out.setdefault(root_path, []).append(Change(kind, relative))
        return out


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _relative(path: str, root: str) -> str | None:
    if not path.startswith(root) or path[len(root) : len(root) + 1] != os.sep:
        return None
    return path[len(root) + 1 :].replace(os.sep, "/")


class _Flag:
    """A stop flag the watch thread polls (``threading.Event`` would do; this one has no lock)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set
