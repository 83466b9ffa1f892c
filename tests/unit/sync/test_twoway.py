"""Two-way sync decisions: the container's edits come home, conflicts keep both copies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from innerloop.sync.twoway import RemoteChange, concerned, conflict_name, is_conflict_copy, reconcile

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_nothing_changed_means_nothing_to_do() -> None:
    assert reconcile(remote={"x.py": A}, sent={"x.py": A}, local={"x.py": A}) == []


def test_a_file_only_the_container_changed_comes_home() -> None:
    assert reconcile(remote={"x.py": B}, sent={"x.py": A}, local={"x.py": A}) == [
        RemoteChange(kind="download", path="x.py", sha256=B)
    ]


def test_a_file_the_container_created_comes_home() -> None:
    assert reconcile(remote={"new.txt": B}, sent={}, local={}) == [
        RemoteChange(kind="download", path="new.txt", sha256=B)
    ]


def test_both_sides_changed_is_a_conflict() -> None:
    assert reconcile(remote={"x.py": B}, sent={"x.py": A}, local={"x.py": C}) == [
        RemoteChange(kind="conflict", path="x.py", sha256=B)
    ]


def test_same_change_on_both_sides_is_adopted() -> None:
    assert reconcile(remote={"x.py": B}, sent={"x.py": A}, local={"x.py": B}) == [
        RemoteChange(kind="adopt", path="x.py", sha256=B)
    ]


def test_container_deletion_removes_an_unchanged_local_file_but_never_a_changed_one() -> None:
    assert reconcile(remote={}, sent={"x.py": A}, local={"x.py": A}) == [RemoteChange(kind="delete-local", path="x.py")]
    assert reconcile(remote={}, sent={"x.py": A}, local={"x.py": C}) == [RemoteChange(kind="push", path="x.py")]
    assert reconcile(remote={}, sent={"x.py": A}, local={"x.py": None}) == []


def test_conflict_copies_are_never_synced_back() -> None:
    name = conflict_name("src/app.py", B)
    assert name == "src/app.py.innerloop-conflict-bbbbbbbb"
    assert is_conflict_copy(name) and not is_conflict_copy("src/app.py")
    assert reconcile(remote={name: B}, sent={}, local={}) == []


hashes = st.sampled_from([A, B, C])
views = st.dictionaries(st.sampled_from(["a", "b", "c", "d/e"]), hashes, max_size=4)


@given(remote=views, sent=views, local=views)
def test_a_local_edit_is_never_lost(remote: dict[str, str], sent: dict[str, str], local: dict[str, str]) -> None:
    """Whatever the container did, a file changed locally since the last sync is never overwritten or deleted."""
    for action in reconcile(remote=remote, sent=sent, local=dict(local)):
        locally_changed = action.path in local and local[action.path] != sent.get(action.path)
        if locally_changed:
            assert action.kind in ("conflict", "push", "adopt")
    assert {a.path for a in reconcile(remote=remote, sent=sent, local=dict(local))} <= concerned(remote, sent)
