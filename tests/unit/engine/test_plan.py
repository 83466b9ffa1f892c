"""Planning `up` against the manifests: shared files, one owner per object, refusals before deploying."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from innerloop.config import ConfigError, Problem, Project, locate_problems, parse_config
from innerloop.engine.plan import PlanProblems, assign_objects, object_key, plan_service


def deployment(
    name: str, *, image: str | None = None, replicas: int = 1, mounts: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": image or name,
                            "command": ["python3", "app.py"],
                            "volumeMounts": [{"name": f"v{i}", "mountPath": m} for i, m in enumerate(mounts)],
                        }
                    ]
                },
            },
        },
    }


def service(name: str, app: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app or name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}}


SHARED = """\
version: 1
name: team
services:
  api:
    manifests: {files: [k8s/app.yaml]}
    workload: deployment/api
    image: {name: api, context: api}
    sync: [{local: api/, remote: /app/}]
  web:
    manifests: {files: [k8s/app.yaml]}
    workload: deployment/web
    image: {name: web, context: web}
    sync: [{local: web/, remote: /app/}]
    dependsOn: [api]
  cache:
    manifests: {files: [k8s/app.yaml]}
    workload: deployment/cache
"""


def app_file() -> list[dict[str, Any]]:
    return [
        config_map("settings"),
        deployment("web"),
        service("web"),
        deployment("api", replicas=2),
        service("api"),
        deployment("cache", image="innerloop.local/busybox:1.35"),
        service("cache"),
    ]


def keys(docs: list[dict[str, Any]]) -> list[str]:
    return [object_key(d) for d in docs]


class TestSharedManifestFile:
    def test_each_object_is_applied_by_one_service(self) -> None:
        project = parse_config(SHARED)
        owned = assign_objects(project, {name: app_file() for name in project.services})
        assert keys(owned["api"]) == ["ConfigMap/settings", "Deployment/api", "Service/api"]
        assert keys(owned["web"]) == ["Deployment/web", "Service/web"]
        assert keys(owned["cache"]) == ["Deployment/cache", "Service/cache"]
        every = [k for docs in owned.values() for k in keys(docs)]
        assert sorted(every) == sorted(keys(app_file()))

    def test_a_service_never_applies_another_ones_workload_unpatched(self) -> None:
        project = parse_config(SHARED)
        owned = assign_objects(project, {name: app_file() for name in project.services})
        for name in ("api", "web"):
            plan = plan_service(
                project=project, name=name, docs=owned[name], built={}, agent_image="agent:1", token="t"
            )
            workloads = [d for d in plan.docs if d["kind"] == "Deployment"]
            assert [d["metadata"]["name"] for d in workloads] == [name]
            assert plan.dev_mode
            assert workloads[0]["spec"]["template"]["metadata"]["annotations"]["innerloop.dev/dev-mode"] == "true"

    def test_an_unclaimed_workload_goes_with_the_first_service_to_start(self) -> None:
        cache = "  cache:\n    manifests: {files: [k8s/app.yaml]}\n    workload: deployment/cache\n"
        project = parse_config(SHARED.replace(cache, ""))
        owned = assign_objects(project, {name: app_file() for name in project.services})
        assert "Deployment/cache" in keys(owned["api"])  # api starts first (web depends on it)
        assert "Deployment/cache" not in keys(owned["web"])


class TestRefusals:
    def test_two_services_on_one_default_workload(self) -> None:
        project = parse_config(
            "version: 1\nname: p\nservices:\n  a: {manifests: {files: [a.yaml]}}\n  b: {manifests: {files: [b.yaml]}}\n"
        )
        with pytest.raises(PlanProblems) as caught:
            assign_objects(project, {"a": [deployment("api")], "b": [deployment("api")]})
        [problem] = caught.value.problems
        assert problem.path == ("services", "b", "manifests")
        assert "deployment/api is already developed by service 'a'" in problem.message

    def test_a_workload_no_manifest_defines(self) -> None:
        project = parse_config(SHARED.replace("workload: deployment/web", "workload: deployment/webb"))
        with pytest.raises(PlanProblems) as caught:
            assign_objects(project, {name: app_file() for name in project.services})
        [problem] = caught.value.problems
        assert problem.path == ("services", "web", "workload")
        assert "no deployment/webb in this service's manifests" in problem.message
        assert "deployment/web" in problem.message  # what is there

    def test_a_shared_file_without_workload_asks_for_one(self) -> None:
        project = parse_config(SHARED.replace("    workload: deployment/web\n", ""))
        with pytest.raises(PlanProblems) as caught:
            assign_objects(project, {name: app_file() for name in project.services})
        assert [p.path for p in caught.value.problems] == [("services", "web", "manifests")]
        assert "set `workload:`" in caught.value.problems[0].message

    def test_one_object_defined_differently_by_two_services(self) -> None:
        project = parse_config(SHARED)
        changed = app_file()
        changed[0]["data"] = {"a": "other"}
        sources = {"api": app_file(), "web": changed, "cache": app_file()}
        with pytest.raises(PlanProblems, match="ConfigMap/settings is also defined by service 'api', differently"):
            assign_objects(project, sources)

    def test_a_sync_target_inside_a_volume_of_the_container(self) -> None:
        project = parse_config(SHARED)
        docs = [deployment("api", mounts=("/app",))]
        with pytest.raises(PlanProblems) as caught:
            plan_service(project=project, name="api", docs=docs, built={}, agent_image="a", token="t")
        [problem] = caught.value.problems
        assert problem.path == ("services", "api", "sync", 0, "remote")
        assert "inside the volume the container mounts at /app" in problem.message

    def test_a_volume_below_the_sync_target_is_fine(self) -> None:
        project = parse_config(SHARED)
        docs = [deployment("api", mounts=("/app/config",))]
        plan = plan_service(project=project, name="api", docs=copy.deepcopy(docs), built={}, agent_image="a", token="t")
        assert plan.dev_mode

    def test_problems_point_at_file_line_col(self, tmp_path: Path) -> None:
        path = tmp_path / "innerloop.yaml"
        path.write_text(SHARED)
        error = locate_problems(path, [Problem(("services", "web", "workload"), "no deployment/webb")])
        assert isinstance(error, ConfigError)
        assert str(error) == f"{path}:11:15: services.web.workload: no deployment/webb"


class TestConfigChecks:
    @pytest.mark.parametrize(
        ("remote", "why"),
        [
            ("/", "whole filesystem"),
            ("/proc/app", "outside the image's files"),
            ("/.innerloop/x", "outside the image's files"),
            ("/var/run/secrets/kubernetes.io/serviceaccount", "outside the image's files"),
            ("/app/../etc", "not a plain path"),
            ("//app", "not a plain path"),
            ("/var", "outside the image's files"),  # would hide the service-account token under it
        ],
    )
    def test_sync_targets_outside_the_image(self, remote: str, why: str) -> None:
        text = SHARED.replace("sync: [{local: api/, remote: /app/}]", f"sync: [{{local: api/, remote: {remote}}}]")
        with pytest.raises(ConfigError, match=why) as caught:
            parse_config(text)
        assert caught.value.problems[0].path == "services.api.sync.0.remote"
        assert caught.value.problems[0].line == 8

    def test_overlapping_sync_targets(self) -> None:
        text = SHARED.replace(
            "sync: [{local: api/, remote: /app/}]",
            "sync: [{local: api/, remote: /app/}, {local: lib/, remote: /app/lib}]",
        )
        with pytest.raises(ConfigError, match=r"overlaps sync\.0's target '/app'"):
            parse_config(text)

    def test_two_services_naming_one_workload(self) -> None:
        with pytest.raises(ConfigError, match="deployment/api is already developed by service 'api'") as caught:
            parse_config(SHARED.replace("workload: deployment/web", "workload: deployment/api"))
        assert caught.value.problems[0].path == "services.web.workload"

    def test_local_port_zero_means_any_free_port_and_is_never_shared(self) -> None:
        any_port = "    ports: [{remote: 8080, local: 0}]\n"
        text = SHARED.replace("    dependsOn: [api]\n", "    dependsOn: [api]\n" + any_port)
        text = text.replace("    workload: deployment/api\n", "    workload: deployment/api\n" + any_port)
        project: Project = parse_config(text)
        assert [p.local_port for s in project.services.values() for p in s.ports] == [0, 0]
