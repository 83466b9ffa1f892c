"""What to send: the first sync, watcher batches, a service's view of a change; examples and properties."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innerloop.sync.ignore import IgnoreFile, SyncScope
from innerloop.sync.plan import (
    Change,
    ChangeKind,
    PlanConflict,
    ServiceFiles,
    SyncedPath,
    SyncPlan,
    apply_plan,
    classify,
    plan,
    plan_batch,
    record_sent,
)
from innerloop.sync.tree import FileState, Scanner, Tree

ADDED, MODIFIED, DELETED = ChangeKind.ADDED, ChangeKind.MODIFIED, ChangeKind.DELETED


def state(content: str) -> FileState:
    return FileState(size=len(content), mode=0o100644, sha256=f"sha-{content}")


def local_tree(files: Mapping[str, str]) -> Tree[FileState]:
    return Tree({path: state(content) for path, content in files.items()})


def remote_tree(files: Mapping[str, str]) -> Tree[str]:
    return Tree({path: f"sha-{content}" for path, content in files.items()})


# -- the first sync ---------------------------------------------------------------


def test_plan_sends_only_what_differs_and_deletes_what_is_gone() -> None:
    local = local_tree({"same": "1", "changed": "new", "added": "a"})
    remote = remote_tree({"same": "1", "changed": "old", "removed": "r"})
    assert plan(local, remote) == SyncPlan(upload=["added", "changed"], delete=["removed"])


def test_plan_leaves_remote_files_the_rule_does_not_cover() -> None:
    scope = SyncScope(exclude=["node_modules/", "*.pyc"])
    local = local_tree({"app.py": "a", "app.pyc": "compiled locally"})
    remote = remote_tree({"app.py": "a", "node_modules/x/i.js": "n", "__pycache__/app.pyc": "c", "old.py": "o"})
    assert plan(local, remote, scope=scope) == SyncPlan(upload=[], delete=["old.py"])


def test_plan_deletes_excluded_remote_files_that_stand_in_the_way() -> None:
    scope = SyncScope(exclude=["build/", "lib", "!lib/"])
    # Locally "build" is a file (not excluded: the pattern is for folders); remotely a folder of excluded files.
    # Locally "lib" is a folder (re-included); remotely an excluded file.
    local = local_tree({"build": "script", "lib/x": "x"})
    remote = remote_tree({"build/out.o": "o", "lib": "a file where a folder must go"})
    result = plan(local, remote, scope=scope)
    assert result == SyncPlan(upload=["build", "lib/x"], delete=["build/out.o", "lib"])
    assert apply_plan(remote, result, local) == remote_tree({"build": "script", "lib/x": "x"})


def test_record_sent_updates_the_sessions_tree_in_place() -> None:
    sent = remote_tree({"a": "1", "gone": "g"})
    record_sent(sent, SyncPlan(upload=["a", "b/c"], delete=["gone"]), local_tree({"a": "2", "b/c": "c"}))
    assert sent == remote_tree({"a": "2", "b/c": "c"})
    assert sent.is_folder("b")


def test_apply_plan_refuses_a_plan_that_forgets_what_is_in_the_way() -> None:
    with pytest.raises(PlanConflict, match="cannot upload lib/x: lib is in the way"):
        apply_plan(remote_tree({"lib": "file"}), SyncPlan(upload=["lib/x"]), local_tree({"lib/x": "x"}))


# -- watcher batches ----------------------------------------------------------------


def test_a_save_with_the_same_bytes_sends_nothing() -> None:
    local = local_tree({"a.py": "v1"})
    sent = remote_tree({"a.py": "v1"})
    assert not plan_batch([Change(MODIFIED, "a.py")], local, sent)


def test_changed_and_changed_back_within_a_batch_sends_nothing() -> None:
    local = local_tree({"a.py": "v1"})
    sent = remote_tree({"a.py": "v1"})
    changes = [Change(MODIFIED, "a.py"), Change(DELETED, "a.py"), Change(ADDED, "a.py")]
    assert not plan_batch(changes, local, sent)
    # Created and removed again before the batch: nothing to send either.
    assert not plan_batch([Change(ADDED, "tmp.swp"), Change(DELETED, "tmp.swp")], local, sent)


def test_batch_uploads_changed_content_and_deletes_removed_files() -> None:
    local = local_tree({"a.py": "v2", "new.py": "n"})
    sent = remote_tree({"a.py": "v1", "old.py": "o", "untouched.py": "u"})
    changes = [Change(MODIFIED, "a.py"), Change(ADDED, "new.py"), Change(DELETED, "old.py")]
    assert plan_batch(changes, local, sent) == SyncPlan(upload=["a.py", "new.py"], delete=["old.py"])


def test_a_deleted_folder_expands_to_its_files() -> None:
    local = local_tree({"keep": "k"})
    sent = remote_tree({"keep": "k", "pkg/a.py": "a", "pkg/sub/b.py": "b"})
    assert plan_batch([Change(DELETED, "pkg")], local, sent) == SyncPlan(delete=["pkg/a.py", "pkg/sub/b.py"])


def test_a_folder_moved_in_expands_to_its_files_and_the_old_name_is_deleted() -> None:
    local = local_tree({"new/a.py": "a", "new/sub/b.py": "b"})
    sent = remote_tree({"old/a.py": "a", "old/sub/b.py": "b"})
    changes = [Change(DELETED, "old"), Change(ADDED, "new")]
    assert plan_batch(changes, local, sent) == SyncPlan(
        upload=["new/a.py", "new/sub/b.py"], delete=["old/a.py", "old/sub/b.py"]
    )


def test_a_file_replaced_by_a_folder_and_back() -> None:
    became_folder = plan_batch([Change(ADDED, "x")], local_tree({"x/y": "y"}), remote_tree({"x": "file"}))
    assert became_folder == SyncPlan(upload=["x/y"], delete=["x"])
    became_file = plan_batch([Change(ADDED, "x")], local_tree({"x": "file"}), remote_tree({"x/y": "y", "x/z": "z"}))
    assert became_file == SyncPlan(upload=["x"], delete=["x/y", "x/z"])


def test_a_batch_deletes_an_excluded_remote_file_in_the_way() -> None:
    scope = SyncScope(exclude=["a", "!a/"])  # a file named a is excluded, a folder named a is not
    local, sent = local_tree({"a/x": "x"}), remote_tree({"a": "left by the image"})
    batch = plan_batch([Change(ADDED, "a")], local, sent, scope=scope)
    assert batch == SyncPlan(upload=["a/x"], delete=["a"])


def test_mtime_churn_on_real_files_plans_nothing(tmp_path: Path) -> None:
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(name)
    scanner = Scanner(racy_window_ns=0)
    local = scanner.scan(tmp_path)
    sent = Tree({path: s.sha256 for path, s in local.items()})
    for name in ("a.py", "b.py"):
        os.utime(tmp_path / name, ns=(5_000_000_000, 5_000_000_000))  # touch, git checkout, formatter: same bytes
    scanner.refresh(local, tmp_path, ["a.py", "b.py"])
    assert not plan_batch([Change(MODIFIED, "a.py"), Change(MODIFIED, "b.py")], local, sent)


# -- a service's view of changes ---------------------------------------------------


@pytest.fixture
def api() -> ServiceFiles:
    return ServiceFiles(
        sync=[
            SyncedPath(local="./api/src/", scope=SyncScope(exclude=["*.pyc"])),
            SyncedPath(local="api/requirements.txt", scope=SyncScope()),
        ],
        context="api",
        dockerfile="api/Dockerfile",
        context_scope=SyncScope(dockerignore=IgnoreFile(text="docs\n", source=".dockerignore")),
        on_change=[["requirements.txt"], ["*.sql", "migrations/"], ["never"]],
    )


def test_classify_sorts_changes_for_a_service(api: ServiceFiles) -> None:
    update = classify(
        api,
        [
            "api/src/app.py",
            "api/src/migrations/001.py",
            "api/src/app.pyc",
            "api/requirements.txt",
            "api/Dockerfile",
            "api/.dockerignore",
            "api/setup.cfg",
            "api/docs/index.md",
            "web/index.html",
        ],
    )
    assert update.serve_by_sync == ["api/src/app.py", "api/src/migrations/001.py", "api/requirements.txt"]
    assert update.needs_rebuild == ["api/Dockerfile", "api/.dockerignore", "api/setup.cfg"]
    assert update.run_steps == [0, 1]
    assert update.ignored == ["api/src/app.pyc", "api/docs/index.md", "web/index.html"]


def test_classify_runs_no_step_when_nothing_matches(api: ServiceFiles) -> None:
    update = classify(api, ["api/src/app.py"])
    assert update.run_steps == [] and update.needs_rebuild == []


def test_classify_without_an_image_never_rebuilds() -> None:
    service = ServiceFiles(sync=[SyncedPath(local=".", scope=SyncScope())])
    update = classify(service, ["Dockerfile", "a.py"])
    assert update.needs_rebuild == [] and update.serve_by_sync == ["Dockerfile", "a.py"]


# -- properties over generated trees ----------------------------------------------

NAMES = ["a", "b", "x.pyc", "build", "keep.pyc"]
EXCLUDES = ["*.pyc", "build/", "!keep.pyc", "/a/b", "b/*", "**/x.pyc/", "a", "!a/"]

path_strategy = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
content_strategy = st.sampled_from(["1", "2", "3"])


def valid(files: dict[str, str]) -> dict[str, str]:
    """Drop paths that would need a file and a folder at the same place."""
    kept: dict[str, str] = {}
    for path in sorted(files, key=len):
        parents = [path.rsplit("/", k)[0] for k in range(1, path.count("/") + 1)]
        if not any(p in kept for p in parents):
            kept[path] = files[path]
    return kept


trees = st.dictionaries(path_strategy, content_strategy, max_size=12).map(valid)
# Random pattern lists, and two that make excluded remote files stand where covered local ones go.
scopes = st.one_of(
    st.lists(st.sampled_from(EXCLUDES), max_size=4),
    st.just(["a", "!a/"]),
    st.just(["build/", "b/*"]),
).map(lambda lines: SyncScope(exclude=lines))


# Remote files the image left (excluded by some scopes) where local files may want to go.
left_by_image = st.just({"a": "1", "build/out": "2", "b/a": "3", "x.pyc": "1"})
remotes = st.one_of(trees, left_by_image)


def covered(tree: Mapping[str, str], scope: SyncScope) -> dict[str, str]:
    return {p: v for p, v in tree.items() if scope.covers(p)}


@settings(max_examples=300)
@given(local=trees, remote=remotes, scope=scopes)
def test_applying_the_plan_makes_the_covered_remote_equal_the_covered_local(
    local: dict[str, str], remote: dict[str, str], scope: SyncScope
) -> None:
    local_states, remote_hashes = local_tree(local), remote_tree(remote)
    result = plan(local_states, remote_hashes, scope=scope)
    after = apply_plan(remote_hashes, result, local_states)  # raises on a conflict
    assert covered(after, scope) == covered(remote_tree(local), scope)
    assert all(scope.covers(p) for p in result.upload)
    # Remote files outside the rule survive unless they stood in the way.
    for path, value in remote_hashes.items():
        if not scope.covers(path) and path not in result.delete:
            assert after[path] == value


@settings(max_examples=300)
@given(local=trees, remote=remotes, scope=scopes)
def test_planning_is_idempotent(local: dict[str, str], remote: dict[str, str], scope: SyncScope) -> None:
    local_states, remote_hashes = local_tree(local), remote_tree(remote)
    first = plan(local_states, remote_hashes, scope=scope)
    assert plan(local_states, remote_hashes, scope=scope) == first
    after = apply_plan(remote_hashes, first, local_states)
    assert not plan(local_states, after, scope=scope)


@settings(max_examples=300)
@given(
    before=st.one_of(st.just({}), trees),
    after=trees,
    remote=remotes,
    scope=scopes,
    folder_events=st.lists(st.booleans(), min_size=12, max_size=12),
    noise=st.lists(path_strategy, max_size=4),
)
def test_batches_keep_the_remote_equal_to_the_local_tree(  # noqa: PLR0917 - one argument per generated input
    before: dict[str, str],
    after: dict[str, str],
    remote: dict[str, str],
    scope: SyncScope,
    folder_events: list[bool],
    noise: list[str],
) -> None:
    # The first sync, then the local tree changes from `before` to `after`.
    first = local_tree(before)
    sent = apply_plan(remote_tree(remote), plan(first, remote_tree(remote), scope=scope), first)
    now = local_tree(after)
    differing = sorted(p for p in set(before) | set(after) | set(sent) if sent.get(p) != now.get(p, state("")).sha256)
    # The watcher reports a path, or only its top folder (a folder moved or deleted whole), plus unchanged paths.
    changes = [
        Change(MODIFIED, path.split("/")[0] if whole_folder else path)
        for path, whole_folder in zip(differing, folder_events * 4, strict=False)
    ] + [Change(MODIFIED, path) for path in noise]
    batch = plan_batch(changes, now, sent, scope=scope)
    assert all(scope.covers(p) for p in batch.upload)
    synced = apply_plan(sent, batch, now)
    assert covered(synced, scope) == covered(remote_tree(after), scope)
    assert not plan(now, synced, scope=scope)
