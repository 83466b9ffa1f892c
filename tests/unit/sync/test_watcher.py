"""The watcher on real files: kinds of change, filtering, batching, latency, and the inotify budget."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from innerloop.sync.ignore import SyncScope
from innerloop.sync.plan import Change, ChangeKind, plan_batch
from innerloop.sync.tree import Scanner, Tree
from innerloop.sync.watcher import (
    Batch,
    FileWatch,
    Notify,
    WatchError,
    WatchLimitError,
    WatchLimits,
    WatchRoot,
    count_folders,
    read_watch_limits,
    rust_notify,
)

T = TypeVar("T")
ADDED, MODIFIED, DELETED = ChangeKind.ADDED, ChangeKind.MODIFIED, ChangeKind.DELETED


# Ceilings for a busy machine, reached only when an expected batch never comes.
def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def next_batch(watch: FileWatch, timeout: float = 30.0) -> Batch:
    return await asyncio.wait_for(anext(watch), timeout)


async def quiet(watch: FileWatch, seconds: float = 0.15) -> list[Batch]:
    """Every batch that arrives within ``seconds`` (expected: none)."""
    batches = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            batches.append(await asyncio.wait_for(anext(watch), left))
        except TimeoutError:
            break
    return batches


def changes_of(batch: Batch, root: Path) -> set[tuple[ChangeKind, str]]:
    return {(c.kind, c.path) for c in batch.changes.get(root, [])}


async def collect_until(
    watch: FileWatch, root: Path, want: Callable[[set[tuple[ChangeKind, str]]], bool]
) -> set[tuple[ChangeKind, str]]:
    seen: set[tuple[ChangeKind, str]] = set()
    while not want(seen):
        seen |= changes_of(await next_batch(watch), root)
    return seen


def test_create_modify_delete_rename_arrive_as_changes_relative_to_the_root(tmp_path: Path) -> None:
    async def scenario() -> list[set[tuple[ChangeKind, str]]]:
        (tmp_path / "src").mkdir()
        seen = []
        async with FileWatch([WatchRoot(tmp_path)]) as watch:
            (tmp_path / "src/a.py").write_text("1")
            seen.append(await collect_until(watch, tmp_path, lambda s: (ADDED, "src/a.py") in s))
            (tmp_path / "src/a.py").write_text("2")
            seen.append(await collect_until(watch, tmp_path, lambda s: (MODIFIED, "src/a.py") in s))
            (tmp_path / "src/a.py").rename(tmp_path / "src/b.py")
            seen.append(
                await collect_until(watch, tmp_path, lambda s: {(DELETED, "src/a.py"), (ADDED, "src/b.py")} <= s)
            )
            (tmp_path / "src/b.py").unlink()
            seen.append(await collect_until(watch, tmp_path, lambda s: (DELETED, "src/b.py") in s))
        return seen

    created, modified, renamed, deleted = run(scenario())
    assert created == {(ADDED, "src/a.py")}
    assert modified == {(MODIFIED, "src/a.py")}
    assert renamed == {(DELETED, "src/a.py"), (ADDED, "src/b.py")}
    assert deleted == {(DELETED, "src/b.py")}


def test_excluded_and_git_paths_produce_nothing(tmp_path: Path) -> None:
    for folder in ("node_modules/pkg", ".git", "src/__pycache__"):
        (tmp_path / folder).mkdir(parents=True)
    scope = SyncScope(exclude=["node_modules/", "*.pyc", "__pycache__/"])

    async def scenario() -> tuple[list[Batch], list[Batch]]:
        async with FileWatch([WatchRoot(tmp_path, scope)]) as watch:
            (tmp_path / "node_modules/pkg/index.js").write_text("x")
            (tmp_path / "src/__pycache__/a.cpython-311.pyc").write_text("x")
            (tmp_path / "b.pyc").write_text("x")
            (tmp_path / ".git/index").write_text("x")
            nothing = await quiet(watch)
            (tmp_path / "src/a.py").write_text("x")
            return nothing, [await next_batch(watch)]

    nothing, after = run(scenario())
    assert nothing == []
    assert changes_of(after[0], tmp_path) == {(ADDED, "src/a.py")}


def test_a_burst_of_200_writes_arrives_as_few_batches(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, set[str]]:
        async with FileWatch([WatchRoot(tmp_path)]) as watch:
            for i in range(200):
                (tmp_path / f"f{i:03}.txt").write_text(str(i))
            paths: set[str] = set()
            batches = 0
            while len(paths) < 200:
                batch = await next_batch(watch)
                batches += 1
                paths |= {c.path for c in batch.changes[tmp_path]}
            return batches, paths

    batches, paths = run(scenario())
    assert paths == {f"f{i:03}.txt" for i in range(200)}
    assert batches <= 5


def test_a_write_reaches_the_batch_in_tens_of_milliseconds(tmp_path: Path) -> None:
    async def scenario() -> list[float]:
        latencies = []
        async with FileWatch([WatchRoot(tmp_path)], step_ms=10) as watch:
            for i in range(5):
                written = time.monotonic()
                (tmp_path / f"save{i}.py").write_text("x")
                batch = await next_batch(watch)
                latencies.append(batch.arrived - written)
        return latencies

    latencies = run(scenario())
    assert sorted(latencies)[len(latencies) // 2] < 0.2  # typically ~0.012 s; loose for a busy machine


def test_a_new_folder_with_files_syncs_through_refresh_and_plan(tmp_path: Path) -> None:
    """inotify sees the folder, maybe not the files created before its watch existed: refresh finds them."""
    scanner = Scanner()
    local = scanner.scan(tmp_path)
    sent: Tree[str] = Tree()

    async def scenario() -> list[Change]:
        async with FileWatch([WatchRoot(tmp_path)]) as watch:
            (tmp_path / "pkg/sub").mkdir(parents=True)
            for name in ("pkg/a.py", "pkg/sub/b.py"):
                (tmp_path / name).write_text(name)
            return (await next_batch(watch)).changes[tmp_path]

    changes = run(scenario())
    assert Change(ADDED, "pkg") in changes
    scanner.refresh(local, tmp_path, [c.path for c in changes])
    assert plan_batch(changes, local, sent).upload == ["pkg/a.py", "pkg/sub/b.py"]


def test_nested_roots_each_get_the_change_relative_to_themselves(tmp_path: Path) -> None:
    inner = tmp_path / "api"
    inner.mkdir()

    async def scenario() -> Batch:
        async with FileWatch([WatchRoot(tmp_path), WatchRoot(inner)]) as watch:
            (inner / "main.py").write_text("x")
            return await next_batch(watch)

    batch = run(scenario())
    assert changes_of(batch, tmp_path) == {(ADDED, "api/main.py")}
    assert changes_of(batch, inner) == {(ADDED, "main.py")}


def test_a_new_scope_applies_from_the_next_batch(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Batch], Batch]:
        async with FileWatch([WatchRoot(tmp_path, SyncScope(exclude=["*.gen"]))]) as watch:
            (tmp_path / "a.gen").write_text("1")
            before = await quiet(watch)
            with pytest.raises(KeyError, match="is not watched here"):
                watch.set_scope(tmp_path / "elsewhere", SyncScope())
            watch.set_scope(tmp_path, SyncScope())
            (tmp_path / "a.gen").write_text("2")
            return before, await next_batch(watch)

    before, after = run(scenario())
    assert before == []
    assert changes_of(after, tmp_path) == {(MODIFIED, "a.gen")}


def test_a_timed_out_wait_loses_no_event(tmp_path: Path) -> None:
    async def scenario() -> Batch:
        async with FileWatch([WatchRoot(tmp_path)]) as watch:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(watch), 0.05)
            (tmp_path / "late.py").write_text("x")
            return await next_batch(watch)

    assert changes_of(run(scenario()), tmp_path) == {(ADDED, "late.py")}


def test_polling_only_when_asked(tmp_path: Path) -> None:
    async def scenario() -> Batch:
        async with FileWatch([WatchRoot(tmp_path)], force_polling=True, poll_delay_ms=20) as watch:
            (tmp_path / "polled.txt").write_text("x")
            return await next_batch(watch)

    assert changes_of(run(scenario()), tmp_path) == {(ADDED, "polled.txt")}


# -- the inotify budget ------------------------------------------------------


def folders(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"d{i}").mkdir()


def test_too_many_folders_for_the_limit_is_refused_before_watching(tmp_path: Path) -> None:
    folders(tmp_path, 10)

    async def scenario() -> None:
        async with FileWatch([WatchRoot(tmp_path)], limits=lambda: WatchLimits(5, 128)):
            raise AssertionError("started")

    with pytest.raises(WatchLimitError) as caught:
        run(scenario())
    message = str(caught.value)
    assert "watching needs 11 folder watches, but fs.inotify.max_user_watches is 5" in message
    assert "sudo sysctl fs.inotify.max_user_watches=524288" in message
    assert caught.value.needed == 11 and caught.value.limit == 5


def test_folders_created_past_the_limit_are_reported(tmp_path: Path) -> None:
    folders(tmp_path, 3)

    async def scenario() -> None:
        async with FileWatch([WatchRoot(tmp_path)], limits=lambda: WatchLimits(6, 128)) as watch:
            assert watch.folders == 4
            for i in range(3, 7):
                (tmp_path / f"d{i}").mkdir()
            while True:
                await next_batch(watch)

    with pytest.raises(WatchLimitError, match="new folders appeared under the sync roots"):
        run(scenario())


def test_folders_deleted_give_their_watches_back(tmp_path: Path) -> None:
    folders(tmp_path, 4)

    async def scenario() -> int:
        async with FileWatch([WatchRoot(tmp_path)], limits=lambda: WatchLimits(6, 128)) as watch:
            for i in range(4):
                (tmp_path / f"d{i}").rmdir()
            await collect_until(watch, tmp_path, lambda s: len(s) >= 4)
            for i in range(4):
                (tmp_path / f"n{i}").mkdir()  # 1 + 4 folders: within the budget again
            await collect_until(watch, tmp_path, lambda s: len(s) >= 4)
            return watch.folders

    assert run(scenario()) == 5


class RefusingNotify:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, paths: list[str], force_polling: bool, poll_delay_ms: int) -> Notify:
        raise self.error


@pytest.mark.parametrize(
    ("error", "setting"),
    [
        (OSError('OS file watch limit reached. about ["/x/d19"]'), "fs.inotify.max_user_watches"),
        (
            RuntimeError("Error creating recommended watcher: Too many open files (os error 24)"),
            "fs.inotify.max_user_instances",
        ),
    ],
)
def test_the_kernels_refusal_becomes_a_watch_limit_error(tmp_path: Path, error: Exception, setting: str) -> None:
    async def scenario() -> None:
        async with FileWatch(
            [WatchRoot(tmp_path)], limits=lambda: WatchLimits(100, 128), notify_factory=RefusingNotify(error)
        ):
            raise AssertionError("started")

    with pytest.raises(WatchLimitError, match=f"sudo sysctl {setting}=") as caught:
        run(scenario())
    assert caught.value.setting == setting


def test_a_silent_fallback_to_polling_is_an_error(tmp_path: Path) -> None:
    class PollFallback:
        closed = False

        def watch(self, *args: object) -> str:
            return "timeout"

        def close(self) -> None:
            PollFallback.closed = True

        def __repr__(self) -> str:
            return "RustNotify(Poll(PollWatcher { ... }))"

    async def scenario() -> None:
        async with FileWatch([WatchRoot(tmp_path)], notify_factory=lambda *args: PollFallback()):
            raise AssertionError("started")

    with pytest.raises(WatchError, match="fell back to polling; pass force_polling=True"):
        run(scenario())
    assert PollFallback.closed


def test_count_folders_follows_links_once(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/loop").symlink_to(tmp_path / "a")
    (tmp_path / "to-b").symlink_to(tmp_path / "a/b")
    assert count_folders([tmp_path])[0] == 3


def test_read_watch_limits_reads_this_machine() -> None:
    limits = read_watch_limits()
    assert limits is not None
    assert limits.max_user_watches == min(
        int(Path(p).read_text())
        for p in ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches")
    )


CHILD = """
import asyncio, sys
from pathlib import Path
from innerloop.sync.watcher import FileWatch, WatchLimitError, WatchRoot, WatchLimits
async def main():
    # Our own count says it fits; the kernel (the namespace's budget of 20) says no.
    async with FileWatch([WatchRoot(Path(sys.argv[1]))], limits=lambda: WatchLimits(1000, 128)):
        print("started")
try:
    asyncio.run(main())
except WatchLimitError as error:
    print("refused:", error)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_the_kernel_refuses_past_its_budget(tmp_path: Path) -> None:
    """In a user namespace whose inotify budget is 20 watches, for real."""
    tree = tmp_path / "tree"
    tree.mkdir()
    folders(tree, 30)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    script = f"echo 20 > /proc/sys/user/max_inotify_watches && exec {sys.executable} {child} {tree}"
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and not result.stdout:
        pytest.skip(f"no user namespace with its own inotify budget here: {result.stderr.strip()}")
    assert result.stdout.startswith(
        "refused: watching needs 31 folder watches, but fs.inotify.max_user_watches is 1,000"
    ), result.stdout + result.stderr
    assert "other programs already use part of it" in result.stdout
    assert "sudo sysctl fs.inotify.max_user_watches=524288" in result.stdout


def test_rust_notify_is_native_here(tmp_path: Path) -> None:
    notify = rust_notify([os.fspath(tmp_path)], False, 300)
    try:
        assert repr(notify).startswith("RustNotify(Recommended") or repr(notify).startswith("RustNotify(Inotify")
    finally:
        notify.close()


def test_a_change_below_a_symlinked_folder_that_leaves_the_root_is_not_the_roots(tmp_path: Path) -> None:
    """Attack: a cloned repository holds ``keys -> ~/.ssh``; notify follows the link, and a change there (ssh
    updating known_hosts) arrived as ``keys/known_hosts``, which the sync then uploaded into the pod."""
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "ssh"
    elsewhere.mkdir()
    (root / "keys").symlink_to(elsewhere, target_is_directory=True)

    async def scenario() -> list[Batch]:
        async with FileWatch([WatchRoot(root)]) as watch:
            (elsewhere / "known_hosts").write_text("x")
            (root / "a.py").write_text("x")
            return [await next_batch(watch), *await quiet(watch, 0.3)]

    batches = run(scenario())
    assert {c for b in batches for c in changes_of(b, root)} == {(ADDED, "a.py")}
