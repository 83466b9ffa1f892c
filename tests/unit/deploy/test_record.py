"""What `down` does with the cluster's restore record, and this machine's copy of it.

The attack throughout: a teammate with the documented Role (or a process in a
pod of the namespace holding it) patches the record, so that the next `down`,
run with the caller's wider credentials, deletes or applies objects it names.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from innerloop.config.state import StateError
from innerloop.deploy.apply import forget_handled, namespaced, read_local, write_local
from innerloop.deploy.record import CREATED, DownPlan, ObjectRef, Record, body_problem, decode, plan_down

NS = "team-a"
RECORD_ID = "0123456789abcdef0123456789abcdef"
SETTINGS = "v1/ConfigMap/web-settings"
CREDENTIALS = "v1/Secret/web-credentials"
WEB = "apps/v1/Deployment/web"
SERVICE = "v1/Service/web"
DEFINED = frozenset({SETTINGS, CREDENTIALS, WEB, SERVICE})

ESCALATION = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "mallory-is-admin"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    "subjects": [{"kind": "ServiceAccount", "name": "mallory", "namespace": NS}],
}


def settings(mode: str = "original") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-settings"}, "data": {"mode": mode}}


def credentials() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-credentials"}, "data": {"k": "dg=="}}


def ours() -> Record:
    """The record one `up` of this machine wrote: the Deployment and Service created, two objects replaced."""
    return Record(
        id=RECORD_ID,
        namespace=NS,
        created=[SERVICE, WEB],
        replaced={SETTINGS: settings(), CREDENTIALS: credentials()},
    )


def plan(cluster: Record, mine: Record | None, *, trust: bool = False) -> DownPlan:
    return plan_down(
        cluster=cluster, mine=mine, defined=DEFINED, namespaced=namespaced, namespace=NS, trust_cluster=trust
    )


def test_a_record_this_machine_wrote_is_undone_entirely() -> None:
    result = plan(ours(), ours())
    assert [r.key for r in result.delete] == [WEB, SERVICE]  # the reverse of creation
    assert result.restore == [(ObjectRef.parse(SETTINGS), settings()), (ObjectRef.parse(CREDENTIALS), credentials())]
    assert result.refused == [] and result.notes == []
    assert result.keep.empty()


def test_entries_outside_the_project_are_refused_one_line_each_and_nothing_is_done() -> None:
    """A teammate lists a ClusterRoleBinding to apply, a Namespace and another project's Deployment to delete."""
    hostile = ours()
    hostile.replaced["rbac.authorization.k8s.io/v1/ClusterRoleBinding/mallory-is-admin"] = ESCALATION
    hostile.created += ["v1/Namespace/team-b", "apps/v1/Deployment/billing", "v1/Secret/billing-db"]
    result = plan(hostile, ours())
    touched = {r.key for r in result.delete} | {r.key for r, _ in result.restore}
    assert touched == DEFINED  # this project's objects, and nothing else
    assert len(result.refused) == 4
    assert all(line.startswith("refused ") and "nothing done" in line for line in result.refused)
    assert "cluster-scoped" in _line(result.refused, "ClusterRoleBinding")
    assert "cluster-scoped" in _line(result.refused, "Namespace/team-b")
    assert "not one of this project's objects" in _line(result.refused, "Deployment/billing")
    assert result.keep.empty(), "entries that are not the project's are not kept for a later down"


def _line(lines: list[str], part: str) -> str:
    [found] = [line for line in lines if part in line]
    return found


def test_a_changed_body_of_this_machines_entry_is_replaced_by_this_machines_copy() -> None:
    """A teammate rewrites the original the record keeps for an allowed object: down restores the true original."""
    hostile = ours()
    hostile.replaced[SETTINGS] = settings("attacker's")
    result = plan(hostile, ours())
    assert (ObjectRef.parse(SETTINGS), settings()) in result.restore
    assert (ObjectRef.parse(SETTINGS), settings("attacker's")) not in result.restore
    assert any("web-settings" in n and "used this machine's copy" in n for n in result.notes)


def test_a_replaced_entry_turned_into_created_restores_instead_of_deleting() -> None:
    """Moving a pre-existing object from `replaced` to `created` would make down delete the team's object."""
    hostile = ours()
    del hostile.replaced[SETTINGS]
    hostile.created.append(SETTINGS)
    result = plan(hostile, ours())
    assert SETTINGS not in {r.key for r in result.delete}
    assert (ObjectRef.parse(SETTINGS), settings()) in result.restore


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({**ESCALATION, "metadata": {"name": "web-settings"}}, "ClusterRoleBinding/web-settings, not this object"),
        ({**settings(), "metadata": {"name": "other-settings"}}, "ConfigMap/other-settings, not this object"),
        ({**settings(), "metadata": {"name": "web-settings", "namespace": "team-b"}}, "namespace 'team-b'"),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, "no metadata"),
        ({"metadata": {"name": "web-settings"}}, "names no object"),
    ],
)
def test_a_body_that_names_another_object_is_refused_even_when_trusted(body: dict[str, Any], why: str) -> None:
    """The key says ConfigMap/web-settings, the body another kind, name or namespace: never applied."""
    hostile = Record(id=RECORD_ID, replaced={SETTINGS: body})
    result = plan(hostile, None, trust=True)
    assert result.restore == [] and result.delete == []
    assert why in _line(result.refused, SETTINGS)


def test_a_teammates_record_deletes_what_this_config_defines_and_keeps_originals_it_cannot_verify() -> None:
    """Another machine's `up` wrote the record: its originals are not applied blindly, nor thrown away."""
    result = plan(ours(), None)
    assert [r.key for r in result.delete] == [WEB, SERVICE]
    assert result.restore == []
    assert set(result.keep.replaced) == {SETTINGS, CREDENTIALS}
    assert result.keep.created == []
    line = _line(result.refused, "web-settings")
    assert line.startswith("not restored ConfigMap/web-settings") and "--trust-cluster-record" in line
    trusted = plan(ours(), None, trust=True)
    assert {r.key for r, _ in trusted.restore} == {SETTINGS, CREDENTIALS}
    assert trusted.refused == [] and trusted.keep.empty()


def test_a_teammates_record_outside_the_project_stays_refused_when_trusted() -> None:
    hostile = ours()
    hostile.replaced["rbac.authorization.k8s.io/v1/ClusterRoleBinding/mallory-is-admin"] = ESCALATION
    hostile.created.append("apps/v1/Deployment/billing")
    result = plan(hostile, None, trust=True)
    assert {r.key for r in result.delete} | {r.key for r, _ in result.restore} == DEFINED
    assert len(result.refused) == 2


@pytest.mark.parametrize(
    "mine",
    [
        Record(id="f" * 32, namespace=NS, replaced={SETTINGS: settings("stale")}),  # an older record's copy
        Record(id=RECORD_ID, namespace="team-b", replaced={SETTINGS: settings("stale")}),  # another namespace's
    ],
)
def test_a_copy_of_another_record_is_not_this_records(mine: Record) -> None:
    result = plan(ours(), mine)
    assert result.restore == []
    assert SETTINGS in result.keep.replaced


def test_a_record_without_an_id_has_nothing_of_this_machine() -> None:
    cluster = ours()
    cluster.id = ""
    result = plan(cluster, Record(id="", namespace=NS, replaced={SETTINGS: settings()}))
    assert result.restore == [] and SETTINGS in result.keep.replaced


def test_an_object_the_config_no_longer_defines_is_kept_even_when_this_machine_recorded_it() -> None:
    """A copy under .innerloop/ may come with a clone or a pull: it never widens what `down` touches."""
    cluster, mine = ours(), ours()
    for record in (cluster, mine):
        record.created.append("apps/v1/Deployment/billing")
        record.replaced["v1/ConfigMap/billing-settings"] = {**settings(), "metadata": {"name": "billing-settings"}}
    result = plan(cluster, mine)
    touched = {r.key for r in result.delete} | {r.key for r, _ in result.restore}
    assert touched == DEFINED
    assert "kubectl -n team-a delete deployment billing" in _line(result.refused, "Deployment/billing")
    assert result.keep.listed() == {"apps/v1/Deployment/billing", "v1/ConfigMap/billing-settings"}


def test_an_entry_that_is_both_created_and_replaced_is_refused_unless_this_machine_wrote_it() -> None:
    hostile = ours()
    hostile.created.append(SETTINGS)
    assert "both created and replaced" in _line(plan(hostile, None).refused, "web-settings")
    result = plan(hostile, ours())
    assert (ObjectRef.parse(SETTINGS), settings()) in result.restore
    assert SETTINGS not in {r.key for r in result.delete}


def test_this_machines_entries_gone_from_the_cluster_record_are_said_and_left() -> None:
    cluster = ours()
    del cluster.replaced[CREDENTIALS]
    result = plan(cluster, ours())
    assert CREDENTIALS not in {r.key for r, _ in result.restore}
    assert any(CREDENTIALS in n and "left as it is" in n for n in result.notes)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("v1/ConfigMap/web", ("v1", "ConfigMap", "web")),
        ("apps/v1/Deployment/web", ("apps/v1", "Deployment", "web")),
        ("rbac.authorization.k8s.io/v1/RoleBinding/a.b-c", ("rbac.authorization.k8s.io/v1", "RoleBinding", "a.b-c")),
        ("batch/v1beta1/CronJob/x", ("batch/v1beta1", "CronJob", "x")),
        ("v1/ConfigMap/../x", None),
        ("v1/ConfigMap/Web", None),
        ("v1/ConfigMap", None),
        ("a/b/c/d/e", None),
        ("v1/Config Map/x", None),
        ("apps/v1/Deployment/", None),
        (7, None),
    ],
)
def test_record_keys(key: object, parsed: tuple[str, str, str] | None) -> None:
    ref = ObjectRef.parse(key)
    assert (None if ref is None else (ref.api_version, ref.kind, ref.name)) == parsed


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("apps/v1/Deployment/x", True),
        ("v1/Secret/x", True),
        ("rbac.authorization.k8s.io/v1/RoleBinding/x", True),
        ("rbac.authorization.k8s.io/v1/ClusterRoleBinding/x", False),
        ("v1/Namespace/x", False),
        ("v1/PersistentVolume/x", False),
        ("admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration/x", False),
        ("example.com/v1/Widget/x", False),  # a kind nobody registered: not touched
    ],
)
def test_namespaced_kinds(key: str, expected: bool) -> None:
    ref = ObjectRef.parse(key)
    assert ref is not None and namespaced(ref) is expected


def test_a_malformed_record_is_read_as_far_as_it_goes_and_says_what_it_left_out() -> None:
    record, problems = decode(
        {
            "id": RECORD_ID,
            "created": json.dumps(["v1/Service/web", 5, {"a": 1}, "v1/Service/web"]),
            "replaced": json.dumps({SETTINGS: settings(), CREDENTIALS: "not an object"}),
        },
        where="secret/r",
    )
    assert record.created == ["v1/Service/web"]
    assert record.replaced == {SETTINGS: settings()}
    assert len(problems) == 3 and all(p.startswith("secret/r: ") for p in problems)
    for data in ({"created": "{not json"}, {"created": '{"a": 1}'}, {"replaced": "[]"}):
        empty, problems = decode(data, where="secret/r")
        assert empty.empty() and len(problems) == 1


def test_a_malformed_key_is_refused() -> None:
    cluster = Record(id=RECORD_ID, created=["../../etc/passwd", "v1/ConfigMap/Web"])
    result = plan(cluster, None)
    assert result.delete == [] and len(result.refused) == 2
    assert all("not an object name" in line for line in result.refused)


def test_body_problem_accepts_the_object_itself() -> None:
    ref = ObjectRef.parse(SETTINGS)
    assert ref is not None
    assert body_problem(ref, settings(), NS) is None
    assert body_problem(ref, {**settings(), "metadata": {"name": "web-settings", "namespace": NS}}, NS) is None


def test_this_machines_copy_is_owner_only_ignored_by_git_and_read_back(tmp_path: Path) -> None:
    """It holds a replaced Secret's data: nobody else on the machine reads it, and it is never committed."""
    write_local(tmp_path, ours())
    [path] = (tmp_path / ".innerloop" / "restore").glob("*.json")
    assert path.name == f"{RECORD_ID}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert (tmp_path / ".innerloop" / ".gitignore").read_text().splitlines()[0] == "*"
    back, problems = read_local(tmp_path, RECORD_ID)
    assert problems == [] and back == ours()
    assert back is not None and back.entry(SERVICE) is CREATED


@pytest.mark.parametrize("record_id", ["../../../etc/passwd", "", "ABCDEF0123456789", "0123"])
def test_an_id_from_the_cluster_never_names_a_file(tmp_path: Path, record_id: str) -> None:
    """The record's id comes from the cluster; only innerloop's own id shape opens a file."""
    (tmp_path / "etc").mkdir()
    assert read_local(tmp_path / "project", record_id) == (None, [])


def test_a_corrupt_copy_is_said_and_ignored(tmp_path: Path) -> None:
    write_local(tmp_path, ours())
    [path] = (tmp_path / ".innerloop" / "restore").glob("*.json")
    path.write_text("{")
    mine, problems = read_local(tmp_path, RECORD_ID)
    assert mine is None and len(problems) == 1 and "not JSON" in problems[0]


def test_a_symlinked_copy_is_ignored_and_a_symlinked_folder_refused(tmp_path: Path) -> None:
    """A cloned repository ships .innerloop/restore/<id>.json -> a file of the developer's, or the folder itself."""
    write_local(tmp_path, ours())
    [path] = (tmp_path / ".innerloop" / "restore").glob("*.json")
    target = tmp_path / "elsewhere.json"
    path.rename(target)
    path.symlink_to(target)
    mine, problems = read_local(tmp_path, RECORD_ID)
    assert mine is None and len(problems) == 1
    project = tmp_path / "cloned"
    (project / ".innerloop").mkdir(parents=True)
    (project / ".innerloop" / "restore").symlink_to(tmp_path / "home", target_is_directory=True)
    (tmp_path / "home").mkdir()
    with pytest.raises(StateError, match="symlink"):
        write_local(project, ours())
    with pytest.raises(StateError, match="symlink"):
        read_local(project, RECORD_ID)
    assert list((tmp_path / "home").iterdir()) == []


def test_this_machines_copy_keeps_what_the_cluster_record_keeps(tmp_path: Path) -> None:
    mine = ours()
    write_local(tmp_path, mine)
    forget_handled(tmp_path, mine, Record(id=RECORD_ID, created=[WEB], replaced={SETTINGS: settings("theirs")}))
    left, _ = read_local(tmp_path, RECORD_ID)
    assert left == Record(id=RECORD_ID, namespace=NS, created=[WEB], replaced={SETTINGS: settings()})
    forget_handled(tmp_path, mine, Record(id=RECORD_ID))
    assert read_local(tmp_path, RECORD_ID) == (None, [])
    assert list((tmp_path / ".innerloop" / "restore").glob("*.json")) == []
