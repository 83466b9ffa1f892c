"""The models of innerloop.yaml: defaults, every validation rule, cross-references."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from innerloop.config.model import (
    ChangeStep,
    Image,
    InconsistentProject,
    PortForward,
    Problem,
    Project,
    cross_reference_problems,
)


def service(**fields: Any) -> dict[str, Any]:
    return {"manifests": {"files": ["k8s/app.yaml"]}, **fields}


def project(**services: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "name": "shop", "services": services or {"app": service()}}


def errors(data: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        Project.model_validate(data)
    return [(e["loc"], e["msg"]) for e in caught.value.errors()]


def problems(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        Project.model_validate(data)
    [error] = caught.value.errors()
    cause = (error.get("ctx") or {}).get("error")
    assert isinstance(cause, InconsistentProject), error
    return cause.problems


def one_error(data: dict[str, Any]) -> tuple[tuple[int | str, ...], str]:
    [error] = errors(data)
    return error


class TestValidConfigs:
    def test_minimal_config_gets_the_documented_defaults(self) -> None:
        p = Project.model_validate(project())
        app = p.services["app"]
        assert p.namespace is None
        assert app.manifests.files == ["k8s/app.yaml"]
        assert app.manifests.kustomize is None and app.manifests.helm is None
        assert app.image is None and app.workload is None and app.container is None
        assert app.sync == [] and app.on_change == [] and app.ports == [] and app.depends_on == []
        assert app.restart == "process"
        assert app.healthy == "ready"
        assert app.env == {}

    def test_full_service_in_yaml_spelling(self) -> None:
        full = service(
            image={"name": "registry.example.com:5000/team/api", "context": "api", "buildArgs": {"V": "1"}},
            workload="statefulset/api",
            container="api",
            sync=[{"local": "api/", "remote": "/app/", "exclude": ["*.pyc"], "mode": "two-way"}],
            onChange=[{"paths": ["requirements.txt"], "run": ["pip", "install", "-r", "requirements.txt"]}],
            restart="none",
            ports=[{"remote": "http", "local": 9000, "address": "0.0.0.0"}],
            healthy="started",
            env={"LOG_LEVEL": "debug"},
        )
        p = Project.model_validate(project(api=full, db=service(), web=service(dependsOn=["api", "db"])))
        api = p.services["api"]
        assert api.image is not None and api.image.build_args == {"V": "1"}
        assert api.sync[0].mode == "two-way" and api.sync[0].exclude == ["*.pyc"]
        assert api.on_change[0].run == ["pip", "install", "-r", "requirements.txt"]
        assert api.on_change[0].restart is True
        assert api.ports[0].local_port == 9000
        assert p.services["web"].depends_on == ["api", "db"]
        assert list(p.services) == ["api", "db", "web"]  # the file's order is kept

    def test_python_names_are_accepted_and_dumps_use_the_yaml_spelling(self) -> None:
        p = Project.model_validate(project(a=service(), b=service(depends_on=["a"], on_change=[])))
        assert p.services["b"].depends_on == ["a"]
        dumped = p.model_dump(by_alias=True, exclude_defaults=True)
        assert dumped["services"]["b"] == {"manifests": {"files": ["k8s/app.yaml"]}, "dependsOn": ["a"]}

    def test_models_are_frozen(self) -> None:
        p = Project.model_validate(project())
        with pytest.raises(ValidationError, match="frozen"):
            p.name = "other"

    @pytest.mark.parametrize(
        ("manifests", "source"),
        [
            ({"files": ["k8s/", "extra.yaml"]}, "files"),
            ({"kustomize": "k8s/overlays/dev"}, "kustomize"),
            ({"helm": {"chart": "oci://example.com/charts/api", "version": "1.0.0"}}, "helm"),
            ({"files": None, "kustomize": "k8s"}, "kustomize"),
        ],
    )
    def test_each_manifest_source_alone_is_valid(self, manifests: dict[str, Any], source: str) -> None:
        m = Project.model_validate(project(app={"manifests": manifests})).services["app"].manifests
        assert [name for name in ("files", "kustomize", "helm") if getattr(m, name) is not None] == [source]

    def test_helm_fields_and_defaults(self) -> None:
        chart = {"chart": "charts/api", "release": "api-dev", "values": ["dev.yaml"], "set": {"n": 1, "debug": True}}
        p = Project.model_validate(
            project(full={"manifests": {"helm": chart}}, bare={"manifests": {"helm": {"chart": "c"}}})
        )
        full, bare = p.services["full"].manifests.helm, p.services["bare"].manifests.helm
        assert full is not None and bare is not None
        assert (full.chart, full.release, full.values) == ("charts/api", "api-dev", ["dev.yaml"])
        assert full.set_values == {"n": "1", "debug": "true"}
        assert (bare.release, bare.values, bare.set_values) == (None, [], {})

    def test_env_build_args_and_helm_set_read_numbers_and_booleans_as_text(self) -> None:
        p = Project.model_validate(
            project(
                app=service(
                    image={"name": "app", "buildArgs": {"N": 3}},
                    env={"DEBUG": True, "RATIO": 0.5, "OFF": False, "NAME": "x"},
                )
            )
        )
        app = p.services["app"]
        assert app.env == {"DEBUG": "true", "RATIO": "0.5", "OFF": "false", "NAME": "x"}
        assert app.image is not None and app.image.build_args == {"N": "3"}

    def test_dockerfile_defaults_to_the_context(self) -> None:
        assert Image(name="api").dockerfile_path == "./Dockerfile"
        assert Image(name="api", context="api").dockerfile_path == "api/Dockerfile"
        assert Image(name="api", context="api", dockerfile="docker/dev.Dockerfile").dockerfile_path == (
            "docker/dev.Dockerfile"
        )

    def test_local_port_defaults_to_a_numeric_remote(self) -> None:
        assert PortForward(remote=8080).local_port == 8080
        assert PortForward(remote=8080, local=9090).local_port == 9090
        assert PortForward(remote="http", local=9090).local_port == 9090
        assert PortForward(remote=8080).address == "127.0.0.1"

    def test_change_step_restarts_by_default(self) -> None:
        assert ChangeStep(paths=["*.txt"], run=["true"]).restart is True


class TestTopLevel:
    def test_version_must_be_1(self) -> None:
        assert one_error({**project(), "version": 2}) == (("version",), "Input should be 1")
        assert one_error({**project(), "version": "1"}) == (("version",), "Input should be 1")

    @pytest.mark.parametrize("field", ["version", "name", "services"])
    def test_required_fields(self, field: str) -> None:
        data = project()
        del data[field]
        assert one_error(data) == ((field,), "Field required")

    @pytest.mark.parametrize("name", ["Shop", "my_shop", "-shop", "shop-", "a" * 64, "", "shop.dev"])
    def test_name_and_namespace_must_be_dns_labels(self, name: str) -> None:
        loc, msg = one_error({**project(), "name": name})
        assert loc == ("name",) and "is not a DNS-1123 label" in msg
        loc, msg = one_error({**project(), "namespace": name})
        assert loc == ("namespace",) and "is not a DNS-1123 label" in msg

    @pytest.mark.parametrize("name", ["a", "shop", "shop-2", "a" * 63, "0shop"])
    def test_good_dns_labels(self, name: str) -> None:
        assert Project.model_validate({**project(), "name": name, "namespace": name}).name == name

    def test_at_least_one_service(self) -> None:
        loc, msg = one_error({**project(), "services": {}})
        assert loc == ("services",) and "at least 1 item" in msg

    def test_service_names_must_be_dns_labels(self) -> None:
        loc, msg = one_error(project(My_API=service()))
        assert loc == ("services", "My_API", "[key]") and "is not a DNS-1123 label" in msg

    def test_unknown_keys_are_rejected_at_every_level(self) -> None:
        assert one_error({**project(), "servics": {}}) == (("servics",), "Extra inputs are not permitted")
        loc, _ = one_error(project(app=service(sync=[{"local": "a", "remote": "/a", "delete": True}])))
        assert loc == ("services", "app", "sync", 0, "delete")
        loc, _ = one_error(project(app=service(image={"name": "a", "tag": "1"})))
        assert loc == ("services", "app", "image", "tag")

    def test_types_are_strict(self) -> None:
        assert one_error({**project(), "name": 5}) == (("name",), "Input should be a valid string")
        loc, msg = one_error(project(app=service(ports=[{"remote": 80, "local": "8080"}])))
        assert loc == ("services", "app", "ports", 0, "local") and msg == "Input should be a valid integer"


class TestRegistryAndAgentImage:
    @pytest.mark.parametrize(
        "repo", ["registry.example.com/team", "10.0.0.5:5000", "localhost:5001/dev/x", "ghcr.io/o"]
    )
    def test_a_registry_is_a_host_with_an_optional_port_and_path(self, repo: str) -> None:
        config = Project.model_validate({**project(), "registry": {"repo": repo, "insecure": True}})
        assert config.registry is not None and config.registry.repo == repo and config.registry.insecure

    @pytest.mark.parametrize("repo", ["team", "https://registry.example.com", "Registry.example.com/Team", "r.io/a:1"])
    def test_what_is_not_a_registry_says_how_to_write_one(self, repo: str) -> None:
        loc, msg = one_error({**project(), "registry": {"repo": repo}})
        assert loc == ("registry", "repo") and "e.g. registry.example.com/team" in msg

    def test_insecure_is_off_unless_asked(self) -> None:
        config = Project.model_validate({**project(), "registry": {"repo": "r.example.com"}})
        assert config.registry is not None and not config.registry.insecure

    @pytest.mark.parametrize("ref", ["r.example.com/mirror/innerloop-agent:0.1.0", "agent@sha256:" + "a" * 64])
    def test_agent_image_takes_a_tag_or_digest(self, ref: str) -> None:
        assert Project.model_validate({**project(), "agentImage": ref}).agent_image == ref

    @pytest.mark.parametrize("ref", ["r.example.com/mirror/innerloop-agent", "UPPER:1", "a b:1"])
    def test_agent_image_without_tag_or_digest_is_refused(self, ref: str) -> None:
        loc, msg = one_error({**project(), "agentImage": ref})
        assert loc == ("agentImage",) and "with a tag or digest" in msg


class TestManifests:
    def test_exactly_one_source_none(self) -> None:
        loc, msg = one_error(project(app={"manifests": {}}))
        assert loc == ("services", "app", "manifests")
        assert msg == "Value error, give exactly one of files, kustomize or helm (got none)"

    def test_exactly_one_source_two(self) -> None:
        loc, msg = one_error(project(app={"manifests": {"files": ["a.yaml"], "kustomize": "k"}}))
        assert loc == ("services", "app", "manifests")
        assert msg.endswith("(got files and kustomize)")

    def test_manifests_are_required(self) -> None:
        assert one_error(project(app={})) == (("services", "app", "manifests"), "Field required")

    def test_files_must_not_be_empty(self) -> None:
        loc, msg = one_error(project(app={"manifests": {"files": []}}))
        assert loc == ("services", "app", "manifests", "files") and "at least 1 item" in msg

    def test_helm_needs_a_chart_and_a_valid_release(self) -> None:
        loc, msg = one_error(project(app={"manifests": {"helm": {}}}))
        assert (loc, msg) == (("services", "app", "manifests", "helm", "chart"), "Field required")
        loc, msg = one_error(project(app={"manifests": {"helm": {"chart": "c", "release": "Api_1"}}}))
        assert loc == ("services", "app", "manifests", "helm", "release") and "not a Helm release name" in msg


class TestPaths:
    @pytest.mark.parametrize("path", ["/abs/k8s", "~/k8s", "C:\\k8s", "c:/k8s", "\\\\server\\k8s"])
    @pytest.mark.parametrize(
        ("where", "build"),
        [
            (("manifests", "files", 0), lambda p: service(manifests={"files": [p]})),
            (("manifests", "kustomize"), lambda p: service(manifests={"kustomize": p})),
            (("manifests", "helm", "values", 0), lambda p: service(manifests={"helm": {"chart": "c", "values": [p]}})),
            (("image", "context"), lambda p: service(image={"name": "a", "context": p})),
            (("image", "dockerfile"), lambda p: service(image={"name": "a", "dockerfile": p})),
            (("sync", 0, "local"), lambda p: service(sync=[{"local": p, "remote": "/app"}])),
        ],
    )
    def test_local_paths_must_be_relative(self, path: str, where: tuple[str | int, ...], build: Any) -> None:
        loc, msg = one_error(project(app=build(path)))
        assert loc == ("services", "app", *where)
        assert "write it relative to the folder of innerloop.yaml" in msg

    @pytest.mark.parametrize("path", ["..", "../../.ssh", "a/../../b", "./../x", "a\\..\\..\\b"])
    @pytest.mark.parametrize(
        ("where", "build"),
        [
            (("manifests", "files", 0), lambda p: service(manifests={"files": [p]})),
            (("manifests", "kustomize"), lambda p: service(manifests={"kustomize": p})),
            (("manifests", "helm", "chart"), lambda p: service(manifests={"helm": {"chart": p}})),
            (("manifests", "helm", "values", 0), lambda p: service(manifests={"helm": {"chart": "c", "values": [p]}})),
            (("image", "context"), lambda p: service(image={"name": "a", "context": p})),
            (("image", "dockerfile"), lambda p: service(image={"name": "a", "dockerfile": p})),
            (("sync", 0, "local"), lambda p: service(sync=[{"local": p, "remote": "/app"}])),
        ],
    )
    def test_local_paths_must_stay_in_the_project(self, path: str, where: tuple[str | int, ...], build: Any) -> None:
        """Attack: a cloned repository's innerloop.yaml says ``sync: [{local: ../../.ssh}]`` (or a build context,
        a chart, a values file outside the project) and `up` copies the developer's keys into a pod."""
        loc, msg = one_error(project(app=build(path)))
        assert loc == ("services", "app", *where)
        assert "leads out of the folder of innerloop.yaml" in msg

    @pytest.mark.parametrize("path", ["a/..", "a/../b", "./x", "x..y", "..x"])
    def test_dots_that_stay_inside_are_fine(self, path: str) -> None:
        Project.model_validate(project(app=service(sync=[{"local": path, "remote": "/app"}])))

    def test_local_paths_must_not_be_empty(self) -> None:
        loc, msg = one_error(project(app=service(sync=[{"local": "", "remote": "/app"}])))
        assert loc == ("services", "app", "sync", 0, "local") and "the path is empty" in msg

    @pytest.mark.parametrize("remote", ["app/", "./app", "", "~/app"])
    def test_sync_remote_must_be_absolute(self, remote: str) -> None:
        loc, msg = one_error(project(app=service(sync=[{"local": "app/", "remote": remote}])))
        assert loc == ("services", "app", "sync", 0, "remote") and "is not absolute" in msg

    def test_sync_mode_is_one_way_or_two_way(self) -> None:
        loc, msg = one_error(project(app=service(sync=[{"local": "a", "remote": "/a", "mode": "both"}])))
        assert loc == ("services", "app", "sync", 0, "mode") and msg == "Input should be 'one-way' or 'two-way'"

    def test_sync_rule_defaults(self) -> None:
        p = Project.model_validate(project(app=service(sync=[{"local": "a/", "remote": "/app/"}])))
        rule = p.services["app"].sync[0]
        assert (rule.mode, rule.exclude) == ("one-way", [])


class TestImage:
    @pytest.mark.parametrize(
        "name", ["bookshop-api", "library/app", "localhost:5000/app", "registry.example.com/team/api", "a__b.c-d"]
    )
    def test_good_image_names(self, name: str) -> None:
        p = Project.model_validate(project(app=service(image={"name": name})))
        assert p.services["app"].image is not None and p.services["app"].image.name == name

    @pytest.mark.parametrize(
        ("name", "hint"),
        [
            ("bookshop-api:dev", "without a tag or digest"),
            ("app@sha256:" + "a" * 64, "without a tag or digest"),
            ("Bookshop", "is not an image name:"),
            ("app name", "is not an image name:"),
            ("", "is not an image name:"),
        ],
    )
    def test_bad_image_names(self, name: str, hint: str) -> None:
        loc, msg = one_error(project(app=service(image={"name": name})))
        assert loc == ("services", "app", "image", "name") and hint in msg

    def test_image_needs_a_name(self) -> None:
        assert one_error(project(app=service(image={"context": "api"}))) == (
            ("services", "app", "image", "name"),
            "Field required",
        )


class TestWorkloadAndContainer:
    @pytest.mark.parametrize("workload", ["deployment/api", "statefulset/db-0", "deployment/api.v1"])
    def test_good_workloads(self, workload: str) -> None:
        assert Project.model_validate(project(app=service(workload=workload))).services["app"].workload == workload

    @pytest.mark.parametrize("workload", ["api", "Deployment/api", "daemonset/api", "deployment/", "deploy/api"])
    def test_bad_workloads(self, workload: str) -> None:
        loc, msg = one_error(project(app=service(workload=workload)))
        assert loc == ("services", "app", "workload")
        assert "write deployment/<name> or statefulset/<name>" in msg

    def test_container_is_a_dns_label(self) -> None:
        loc, msg = one_error(project(app=service(container="Main")))
        assert loc == ("services", "app", "container") and "is not a DNS-1123 label" in msg


class TestChangeSteps:
    @pytest.mark.parametrize("field", ["paths", "run"])
    def test_paths_and_run_are_required_and_not_empty(self, field: str) -> None:
        step = {"paths": ["*.txt"], "run": ["true"]}
        sync = [{"local": "a", "remote": "/a"}]
        loc, msg = one_error(project(app=service(sync=sync, onChange=[{**step, field: []}])))
        assert loc == ("services", "app", "onChange", 0, field) and "at least 1 item" in msg
        del step[field]
        assert one_error(project(app=service(sync=sync, onChange=[step]))) == (
            ("services", "app", "onChange", 0, field),
            "Field required",
        )

    def test_on_change_needs_sync_rules(self) -> None:
        found = problems(project(app=service(onChange=[{"paths": ["*.txt"], "run": ["true"]}])))
        assert found == [
            Problem(("services", "app", "onChange"), "onChange needs sync rules: its paths are relative to their roots")
        ]

    def test_restart_is_process_or_none(self) -> None:
        loc, msg = one_error(project(app=service(restart="always")))
        assert loc == ("services", "app", "restart") and msg == "Input should be 'process' or 'none'"

    def test_healthy_is_ready_or_started(self) -> None:
        loc, msg = one_error(project(app=service(healthy="live")))
        assert loc == ("services", "app", "healthy") and msg == "Input should be 'ready' or 'started'"


class TestPorts:
    @pytest.mark.parametrize("remote", [0, -1, 65536])
    def test_remote_port_numbers_are_1_to_65535(self, remote: int) -> None:
        loc, msg = one_error(project(app=service(ports=[{"remote": remote, "local": 8080}])))
        assert loc == ("services", "app", "ports", 0, "remote") and "a port number is 1-65535" in msg

    @pytest.mark.parametrize("local", [-1, 65536])
    def test_local_port_numbers_are_0_to_65535(self, local: int) -> None:
        loc, _ = one_error(project(app=service(ports=[{"remote": 80, "local": local}])))
        assert loc == ("services", "app", "ports", 0, "local")

    @pytest.mark.parametrize("remote", [1, 65535, "http", "metrics-2", "a" * 15])
    def test_good_remote_ports(self, remote: int | str) -> None:
        p = Project.model_validate(project(app=service(ports=[{"remote": remote, "local": 8080}])))
        assert p.services["app"].ports[0].remote == remote

    @pytest.mark.parametrize(
        ("remote", "hint"),
        [
            ("8080", "write the port number without quotes"),
            ("HTTP", "is not a port name"),
            ("a" * 16, "is not a port name"),
            ("-http", "is not a port name"),
            ("123-456", "is not a port name"),
            (True, "expected a port number (8080) or the name of a container port (http), got True"),
            (80.5, "got 80.5"),
            ([80], "got [80]"),
        ],
    )
    def test_bad_remote_ports(self, remote: object, hint: str) -> None:
        loc, msg = one_error(project(app=service(ports=[{"remote": remote, "local": 8080}])))
        assert loc == ("services", "app", "ports", 0, "remote") and hint in msg

    def test_a_named_remote_port_needs_a_local_port(self) -> None:
        loc, msg = one_error(project(app=service(ports=[{"remote": "http"}])))
        assert loc == ("services", "app", "ports", 0) and "give local" in msg

    @pytest.mark.parametrize("address", ["localhost", "127.0.0.256", "", "::1:::"])
    def test_address_must_be_an_ip_address(self, address: str) -> None:
        loc, msg = one_error(project(app=service(ports=[{"remote": 80, "address": address}])))
        assert loc == ("services", "app", "ports", 0, "address") and "is not an IP address" in msg

    @pytest.mark.parametrize("address", ["0.0.0.0", "::1", "192.168.1.10"])
    def test_good_addresses(self, address: str) -> None:
        p = Project.model_validate(project(app=service(ports=[{"remote": 80, "address": address}])))
        assert p.services["app"].ports[0].address == address

    def test_local_ports_are_unique_across_services(self) -> None:
        found = problems(
            project(
                web=service(ports=[{"remote": 8080}]),
                api=service(ports=[{"remote": 9000, "local": 8080}]),
            )
        )
        assert found == [
            Problem(
                ("services", "api", "ports", 0, "local"), "local port 8080 is already forwarded by services.web.ports.0"
            )
        ]

    def test_local_ports_are_unique_within_a_service_and_defaults_count(self) -> None:
        found = problems(project(web=service(ports=[{"remote": "http", "local": 8080}, {"remote": 8080}])))
        assert found == [
            Problem(
                ("services", "web", "ports", 1, "remote"),
                "local port 8080 is already forwarded by services.web.ports.0",
            )
        ]

    def test_the_same_remote_port_on_different_local_ports_is_fine(self) -> None:
        p = Project.model_validate(
            project(a=service(ports=[{"remote": 8080, "local": 1}]), b=service(ports=[{"remote": 8080, "local": 2}]))
        )
        assert [s.ports[0].local_port for s in p.services.values()] == [1, 2]


class TestEnv:
    @pytest.mark.parametrize("name", ["1ST", "A=B", "A B", ""])
    def test_env_names(self, name: str) -> None:
        loc, msg = one_error(project(app=service(env={name: "x"})))
        assert loc == ("services", "app", "env", name, "[key]") and "is not an environment variable name" in msg

    @pytest.mark.parametrize("name", ["A", "_a.b-c", "LOG_LEVEL2"])
    def test_good_env_names(self, name: str) -> None:
        assert Project.model_validate(project(app=service(env={name: "x"}))).services["app"].env == {name: "x"}

    @pytest.mark.parametrize("value", [None, ["a"], {"a": 1}])
    def test_env_values_must_be_scalars(self, value: object) -> None:
        loc, msg = one_error(project(app=service(env={"A": value})))
        assert loc == ("services", "app", "env", "A") and msg == "Input should be a valid string"


class TestDependencies:
    def test_depends_on_must_name_a_service(self) -> None:
        found = problems(project(api=service(), web=service(dependsOn=["api", "apii"])))
        assert found == [
            Problem(
                ("services", "web", "dependsOn", 1), "no service named 'apii' (services: api, web); did you mean 'api'?"
            )
        ]

    def test_unknown_dependency_without_a_close_name(self) -> None:
        [problem] = problems(project(api=service(dependsOn=["postgres"])))
        assert problem.message == "no service named 'postgres' (services: api)"

    def test_a_two_service_cycle_is_reported_once_with_its_path(self) -> None:
        found = problems(project(api=service(dependsOn=["backend"]), backend=service(dependsOn=["api"])))
        assert found == [Problem(("services", "backend", "dependsOn", 0), "dependency cycle: api -> backend -> api")]

    def test_a_longer_cycle_starts_where_it_closes(self) -> None:
        found = problems(
            project(
                web=service(dependsOn=["api"]),
                api=service(dependsOn=["db", "cache"]),
                db=service(),
                cache=service(dependsOn=["web"]),
            )
        )
        assert found == [Problem(("services", "cache", "dependsOn", 0), "dependency cycle: web -> api -> cache -> web")]

    def test_depending_on_itself_is_a_cycle(self) -> None:
        found = problems(project(api=service(dependsOn=["api"])))
        assert found == [Problem(("services", "api", "dependsOn", 0), "dependency cycle: api -> api")]

    def test_a_diamond_is_not_a_cycle(self) -> None:
        p = Project.model_validate(
            project(
                web=service(dependsOn=["api", "auth"]),
                api=service(dependsOn=["db"]),
                auth=service(dependsOn=["db"]),
                db=service(),
            )
        )
        assert cross_reference_problems(p) == []

    def test_all_cross_reference_problems_are_reported_together(self) -> None:
        found = problems(
            project(
                a=service(dependsOn=["b", "zzz"], ports=[{"remote": 80}]),
                b=service(dependsOn=["a"], ports=[{"remote": 80}]),
            )
        )
        assert {p.path for p in found} == {
            ("services", "a", "dependsOn", 1),
            ("services", "b", "dependsOn", 0),
            ("services", "b", "ports", 0, "remote"),
        }

    def test_the_exception_message_lists_every_problem(self) -> None:
        data = project(a=service(dependsOn=["x"]), b=service(dependsOn=["y"]))
        with pytest.raises(ValidationError) as caught:
            Project.model_validate(copy.deepcopy(data))
        text = str(caught.value)
        assert "services.a.dependsOn.0: no service named 'x'" in text
        assert "services.b.dependsOn.0: no service named 'y'" in text
