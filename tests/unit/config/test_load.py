"""Loading innerloop.yaml: exact file:line:col for every kind of mistake, in the YAML spelling."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from innerloop.config.load import CONFIG_FILE, ConfigError, ConfigProblem, find_config, load_config, parse_config

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "bookshop"

HEAD = "version: 1\nname: shop\nservices:\n"  # lines 1-3


def lines_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text))
    return str(caught.value).splitlines()


def one_line(text: str) -> str:
    [line] = lines_of(text)
    return line


class TestExample:
    def test_the_bookshop_config_parses(self) -> None:
        project = load_config(EXAMPLE / CONFIG_FILE)
        assert project.name == "bookshop"
        assert list(project.services) == ["backend", "reviews", "inventory", "api", "frontend"]
        assert {name: s.depends_on for name, s in project.services.items()} == {
            "backend": ["reviews"],
            "reviews": ["inventory"],
            "inventory": [],
            "api": ["backend"],
            "frontend": ["api"],
        }
        assert {name: [p.local_port for p in s.ports] for name, s in project.services.items()} == {
            "backend": [8082],
            "reviews": [8083],
            "inventory": [8084],
            "api": [8081],
            "frontend": [8080],
        }
        for name in ("backend", "api", "frontend"):
            s = project.services[name]
            assert s.restart == "process"
            assert [(r.local, r.remote, r.exclude) for r in s.sync] == [
                (f"{name}/", "/app/", ["__pycache__/", "*.pyc", "Dockerfile"])
            ]
        # Node: the code is synced, the dependency files are not (a change rebuilds); Go: nothing is synced.
        reviews = project.services["reviews"]
        assert (reviews.restart, [(r.local, r.remote) for r in reviews.sync]) == (
            "process",
            [("reviews/src/", "/app/src/")],
        )
        assert project.services["inventory"].sync == []

    @pytest.mark.parametrize(
        ("name", "entry"),
        [
            ("backend", "app.py"),
            ("api", "app.py"),
            ("frontend", "app.py"),
            ("reviews", "src/server.js"),
            ("inventory", "main.go"),
        ],
    )
    def test_the_bookshop_config_matches_the_example_files(self, name: str, entry: str) -> None:
        service = load_config(EXAMPLE / CONFIG_FILE).services[name]
        assert service.manifests.files == [f"k8s/{name}.yaml"]
        assert service.image is not None
        assert (EXAMPLE / service.image.dockerfile_path).is_file()
        assert (EXAMPLE / service.image.context / entry).is_file()
        docs = list(yaml.safe_load_all((EXAMPLE / service.manifests.files[0]).read_text()))
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == service.image.name
        assert container["ports"][0]["containerPort"] == service.ports[0].remote

    def test_the_example_points_editors_at_the_shipped_schema(self) -> None:
        first = (EXAMPLE / CONFIG_FILE).read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../schema/innerloop.schema.json"
        assert (EXAMPLE / "../../schema/innerloop.schema.json").resolve().is_file()

    def test_anchors_and_merge_keys_are_plain_yaml(self) -> None:
        project = parse_config(
            HEAD
            + """\
  api: &base
    manifests: {files: [api.yaml]}
    env: {LOG_LEVEL: debug}
  web:
    <<: *base
    manifests: {files: [web.yaml]}
"""
        )
        web = project.services["web"]
        assert (web.manifests.files, web.env) == (["web.yaml"], {"LOG_LEVEL": "debug"})


class TestPositions:
    def test_wrong_type_points_at_the_value(self) -> None:
        line = one_line(
            HEAD
            + """\
  api:
    manifests: {files: [k8s/api.yaml]}
    ports:
      - remote: 8080
        local: eighty
"""
        )
        assert line == (
            "innerloop.yaml:8:16: services.api.ports.0.local: Input should be a valid integer, got 'eighty' "
            "(expected: an integer from 0 to 65535)"
        )

    def test_unknown_key_points_at_the_key_and_suggests_the_spelling(self) -> None:
        line = one_line(
            HEAD
            + """\
  api:
    manifests: {files: [k8s/api.yaml]}
    dependson: [db]
"""
        )
        assert line == (
            "innerloop.yaml:6:5: services.api.dependson: unknown key; did you mean dependsOn? "
            "(expected one of: manifests, image, workload, container, sync, onChange, restart, ports, dependsOn, "
            "healthy, env, alerts, debug)"
        )

    def test_unknown_top_level_key(self) -> None:
        assert one_line("version: 1\nname: shop\nservices: {a: {manifests: {files: [a]}}}\nnamespaec: x\n") == (
            "innerloop.yaml:4:1: namespaec: unknown key; did you mean namespace? "
            "(expected one of: version, name, namespace, services, intercepts, registry, agentImage, agentBase)"
        )

    def test_missing_field_points_at_the_mapping_that_lacks_it(self) -> None:
        line = one_line(
            HEAD
            + """\
  api:
    manifests: {files: [k8s/api.yaml]}
    sync:
      - local: api/
        exclude: ["*.pyc"]
"""
        )
        assert line == "innerloop.yaml:7:9: services.api.sync.0.remote: required, but missing (expected: a string)"

    def test_missing_field_in_a_flow_mapping(self) -> None:
        line = one_line(HEAD + "  api:\n    manifests: {files: [a.yaml]}\n    sync: [{local: api/}]\n")
        assert line.startswith("innerloop.yaml:6:12: services.api.sync.0.remote: required, but missing")

    def test_missing_manifests_says_what_they_are(self) -> None:
        line = one_line(HEAD + "  api:\n    image: {name: api}\n")
        assert line == (
            "innerloop.yaml:5:5: services.api.manifests: required, but missing "
            "(expected: a mapping with one of files, kustomize, helm)"
        )

    def test_missing_top_level_field(self) -> None:
        assert one_line("# innerloop\nversion: 1\nservices: {a: {manifests: {files: [a]}}}\n") == (
            "innerloop.yaml:2:1: name: required, but missing (expected: a string)"
        )

    def test_bad_service_name_points_at_the_key(self) -> None:
        line = one_line(HEAD + "  My_API:\n    manifests: {files: [a.yaml]}\n")
        assert line.startswith("innerloop.yaml:4:3: services.My_API: 'My_API' is not a DNS-1123 label")

    def test_null_value_points_at_its_key(self) -> None:
        line = one_line(HEAD + "  api:\n    manifests: {files: [a.yaml]}\n    ports:\n    restart: none\n")
        assert line == (
            "innerloop.yaml:6:5: services.api.ports: Input should be a valid list, got null "
            "(expected: a list of mappings (required: remote; optional: local, address))"
        )

    def test_null_for_an_optional_mapping_means_left_out(self) -> None:
        project = parse_config(HEAD + "  api:\n    manifests: {files: [a.yaml]}\n    image:\n")
        assert project.services["api"].image is None

    def test_validator_message_points_at_the_value(self) -> None:
        line = one_line(
            HEAD + "  api:\n    manifests: {files: [a.yaml]}\n    ports: [{remote: 80, local: 1}, {remote: x_y}]\n"
        )
        assert line.startswith("innerloop.yaml:6:46: services.api.ports.1.remote: 'x_y' is not a port name")

    def test_model_rule_points_at_the_mapping(self) -> None:
        line = one_line(HEAD + "  api:\n    manifests:\n      files: [a.yaml]\n      kustomize: k8s\n")
        assert line == (
            "innerloop.yaml:6:7: services.api.manifests: give exactly one of files, kustomize or helm "
            "(got files and kustomize)"
        )

    def test_unknown_dependency(self) -> None:
        line = one_line(
            HEAD
            + """\
  backend:
    manifests: {files: [b.yaml]}
  api:
    manifests: {files: [a.yaml]}
    dependsOn: [backend, backnd]
"""
        )
        assert line == (
            "innerloop.yaml:8:26: services.api.dependsOn.1: no service named 'backnd' (services: backend, api); "
            "did you mean 'backend'?"
        )

    def test_dependency_cycle(self) -> None:
        line = one_line(
            HEAD
            + """\
  api:
    manifests: {files: [a.yaml]}
    dependsOn: [backend]
  backend:
    manifests: {files: [b.yaml]}
    dependsOn:
      - api
"""
        )
        assert line == "innerloop.yaml:10:9: services.backend.dependsOn.0: dependency cycle: api -> backend -> api"

    def test_duplicate_local_port(self) -> None:
        line = one_line(
            HEAD
            + """\
  web:
    manifests: {files: [w.yaml]}
    ports:
      - remote: 8080
  api:
    manifests: {files: [a.yaml]}
    ports:
      - remote: 9000
        local: 8080
"""
        )
        assert line == (
            "innerloop.yaml:12:16: services.api.ports.0.local: local port 8080 is already forwarded by "
            "services.web.ports.0"
        )

    def test_duplicate_local_port_from_a_default_points_at_remote(self) -> None:
        line = one_line(
            HEAD + "  a:\n    manifests: {files: [a]}\n    ports: [{remote: 80, local: 81}, {remote: 81}]\n"
        )
        assert line.startswith("innerloop.yaml:6:47: services.a.ports.1.remote: local port 81 is already forwarded")

    def test_on_change_without_sync(self) -> None:
        line = one_line(HEAD + "  a:\n    manifests: {files: [a]}\n    onChange:\n      - {paths: [x], run: [y]}\n")
        assert line == (
            "innerloop.yaml:7:7: services.a.onChange: onChange needs sync rules: its paths are relative to their roots"
        )

    def test_problems_are_sorted_by_position_and_all_reported(self) -> None:
        lines = lines_of(
            """\
            version: 2
            name: Shop
            services:
              api:
                manifests: {files: [a.yaml]}
                restart: no
            """
        )
        assert [line.split(": ", 2)[:2] for line in lines] == [
            ["innerloop.yaml:1:10", "version"],
            ["innerloop.yaml:2:7", "name"],
            ["innerloop.yaml:6:14", "services.api.restart"],
        ]
        assert lines[2].endswith("Input should be 'process' or 'none', got 'no'")

    def test_problems_follow_the_file_not_the_model(self) -> None:
        # The model validates manifests before restart and healthy, and looks
        # for unknown dependencies before shared ports; the user reads top down.
        lines = lines_of(HEAD + "  api:\n    restart: always\n    healthy: x\n    manifests: {files: []}\n")
        assert [line.split(": ", 2)[0] for line in lines] == [
            "innerloop.yaml:5:14",
            "innerloop.yaml:6:14",
            "innerloop.yaml:7:24",
        ]
        lines = lines_of(
            HEAD
            + "  a:\n    ports: [{remote: 80}]\n    manifests: {files: [a]}\n"
            + "  b:\n    ports: [{remote: 80}]\n    manifests: {files: [b]}\n    dependsOn: [c]\n"
        )
        assert [line.split(": ", 2)[1] for line in lines] == ["services.b.ports.0.remote", "services.b.dependsOn.0"]

    def test_structured_problems(self) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_config(HEAD + "  api:\n    manifests: {files: [a]}\n    healthy: 1\n", file="dev/innerloop.yaml")
        assert caught.value.problems == (
            ConfigProblem(
                file="dev/innerloop.yaml",
                line=6,
                column=14,
                path="services.api.healthy",
                message="Input should be 'ready' or 'started', got 1",
            ),
        )


class TestYamlSpelling:
    def test_paths_use_aliases(self) -> None:
        line = one_line(
            HEAD
            + """\
  api:
    manifests: {files: [a.yaml]}
    sync: [{local: a/, remote: /app/}]
    onChange:
      - paths: []
        run: [make]
"""
        )
        assert line == "innerloop.yaml:8:16: services.api.onChange.0.paths: List should have at least 1 item, not 0"

    @pytest.mark.parametrize(
        ("service", "path", "meant"),
        [
            ("depends_on: []", "services.api.depends_on", "dependsOn"),
            ("on_change: []", "services.api.on_change", "onChange"),
            ("image: {name: api, build_args: {}}", "services.api.image.build_args", "buildArgs"),
        ],
    )
    def test_python_names_are_unknown_keys_in_yaml(self, service: str, path: str, meant: str) -> None:
        line = one_line(HEAD + f"  api:\n    manifests: {{files: [a]}}\n    {service}\n")
        assert line.startswith("innerloop.yaml:6:")
        assert f": {path}: unknown key; did you mean {meant}? (expected one of: " in line

    def test_nested_alias_and_mapping_key(self) -> None:
        line = one_line(HEAD + "  api:\n    manifests: {files: [a]}\n    image: {name: api, buildArgs: {A: [1]}}\n")
        assert line == (
            "innerloop.yaml:6:39: services.api.image.buildArgs.A: Input should be a valid string, got a list "
            "(expected: a string or a number or true or false)"
        )

    def test_helm_set_is_spelled_set(self) -> None:
        line = one_line(HEAD + "  api:\n    manifests:\n      helm: {chart: c, set: {a: {b: 1}}}\n")
        assert line.startswith("innerloop.yaml:6:33: services.api.manifests.helm.set.a: Input should be a valid string")

    def test_keys_with_spaces_or_dots_are_quoted(self) -> None:
        line = one_line(HEAD + '  api:\n    manifests: {files: [a]}\n    env: {"a b": x}\n')
        assert line.startswith('innerloop.yaml:6:11: services.api.env."a b": ')


class TestWholeFile:
    def test_empty_file(self) -> None:
        assert one_line("") == (
            "innerloop.yaml:1:1: the file is empty "
            "(expected: a mapping (required: version, name, services; "
            "optional: namespace, intercepts, registry, agentImage, agentBase))"
        )

    def test_a_list_instead_of_a_mapping(self) -> None:
        assert one_line("- version: 1\n").startswith("innerloop.yaml:1:1: Input should be a mapping, got a list")

    def test_yaml_syntax_error(self) -> None:
        assert one_line("version: 1\nname: shop: x\n") == (
            "innerloop.yaml:2:11: invalid YAML: mapping values are not allowed here"
        )

    def test_yaml_syntax_error_with_context(self) -> None:
        line = one_line("version: 1\nname: 'shop\n")
        assert line == (
            "innerloop.yaml:3:1: invalid YAML: found unexpected end of stream (while scanning a quoted scalar at 2:7)"
        )

    def test_duplicate_keys_are_errors(self) -> None:
        assert one_line("version: 1\nname: a\nname: b\n") == (
            'innerloop.yaml:3:1: invalid YAML: found duplicate key "name" with value "b" (original value: "a") '
            "(while constructing a mapping at 1:1)"
        )

    def test_two_documents_are_an_error(self) -> None:
        assert one_line("version: 1\n---\nname: a\n").startswith("innerloop.yaml:2:1: invalid YAML: ")

    def test_control_characters(self) -> None:
        assert one_line("version: 1\nname: a\x07\n") == (
            "innerloop.yaml:2:8: invalid YAML: character '\\x07' is not allowed in YAML"
        )

    def test_yaml_problems_are_structured_too(self) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_config("a: [", file="x.yaml")
        [problem] = caught.value.problems
        assert (problem.file, problem.line, problem.path) == ("x.yaml", 1, "")
        assert problem.message.startswith("invalid YAML: ")


class TestLoadConfig:
    def test_names_the_file_as_given(self, tmp_path: Path) -> None:
        config = tmp_path / CONFIG_FILE
        config.write_text("version: 1\n")
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        assert str(caught.value).startswith(f"{config}:1:1: name: required, but missing")

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"innerloop.yaml: cannot read: No such file or directory$"):
            load_config(tmp_path / CONFIG_FILE)

    def test_not_utf8(self, tmp_path: Path) -> None:
        config = tmp_path / CONFIG_FILE
        config.write_bytes(b"name: \xff\n")
        with pytest.raises(ConfigError, match="cannot read: 'utf-8' codec can't decode"):
            load_config(config)


class TestFindConfig:
    def test_in_the_start_folder(self, tmp_path: Path) -> None:
        (tmp_path / CONFIG_FILE).write_text("version: 1\n")
        assert find_config(tmp_path) == tmp_path / CONFIG_FILE

    def test_walks_up_to_the_nearest(self, tmp_path: Path) -> None:
        deep = tmp_path / "a" / "b" / "c"
        deep.mkdir(parents=True)
        (tmp_path / CONFIG_FILE).write_text("")
        (tmp_path / "a" / CONFIG_FILE).write_text("")
        assert find_config(deep) == tmp_path / "a" / CONFIG_FILE

    def test_a_folder_named_like_the_config_is_not_it(self, tmp_path: Path) -> None:
        (tmp_path / "a" / CONFIG_FILE).mkdir(parents=True)
        (tmp_path / CONFIG_FILE).write_text("")
        assert find_config(tmp_path / "a") == tmp_path / CONFIG_FILE

    def test_relative_start_is_made_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "sub").mkdir()
        (tmp_path / CONFIG_FILE).write_text("")
        monkeypatch.chdir(tmp_path / "sub")
        assert find_config(Path()) == tmp_path / CONFIG_FILE

    def test_not_found_says_where_it_looked_and_what_to_do(self, tmp_path: Path) -> None:
        deep = tmp_path / "x" / "y"
        deep.mkdir(parents=True)
        if any((p / CONFIG_FILE).is_file() for p in tmp_path.parents):
            pytest.skip(f"an {CONFIG_FILE} above {tmp_path} would be found")
        with pytest.raises(ConfigError) as caught:
            find_config(deep)
        message = str(caught.value)
        assert message.startswith(
            f"no {CONFIG_FILE} in {deep} or any folder above it (looked in {deep}, {deep.parent}, "
        )
        assert message.endswith(", /); create one with `innerloop init`")
        assert caught.value.problems == ()


class TestLocalPathsStayInTheProject:
    """Attack: a repository someone cloned names the developer's files (``~/.ssh``) as a sync root, a build
    context or a values file, by ``..`` or through a symlink inside the project; `up` would send them to a pod."""

    def test_a_path_that_climbs_out_is_refused_at_its_line(self) -> None:
        text = HEAD + "  app:\n    manifests: {files: [k8s.yaml]}\n    sync:\n      - {local: ../../.ssh, remote: /x}\n"
        assert one_line(text) == (
            "innerloop.yaml:7:17: services.app.sync.0.local: '../../.ssh' leads out of the folder of "
            "innerloop.yaml; name a file or folder inside the project (innerloop reads only the project's own files)"
        )

    def test_a_symlink_out_of_the_project_is_refused_at_its_line(self, tmp_path: Path) -> None:
        project = tmp_path / "repo"
        project.mkdir()
        secrets = tmp_path / "home" / ".ssh"
        secrets.mkdir(parents=True)
        (project / "keys").symlink_to(secrets, target_is_directory=True)
        (project / "ctx").symlink_to(tmp_path / "home", target_is_directory=True)
        (project / "src").mkdir()
        (project / "inside").symlink_to(project / "src", target_is_directory=True)
        config = project / CONFIG_FILE
        config.write_text(
            HEAD
            + "  app:\n"
            + "    manifests: {files: [k8s.yaml]}\n"
            + "    image: {name: app, context: ctx}\n"
            + "    sync:\n"
            + "      - {local: inside, remote: /app}\n"
            + "      - {local: keys/, remote: /x}\n"
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        lines = str(caught.value).splitlines()
        assert [line.split(": ", 2)[:2] for line in lines] == [
            [f"{config}:6:33", "services.app.image.context"],
            [f"{config}:6:33", "services.app.image.context"],  # the default Dockerfile, ctx/Dockerfile
            [f"{config}:9:17", "services.app.sync.1.local"],
        ]
        assert f"through a symlink (to {secrets.resolve()})" in lines[2]

    def test_links_that_stay_inside_are_fine(self, tmp_path: Path) -> None:
        (tmp_path / "src").mkdir()
        (tmp_path / "code").symlink_to(tmp_path / "src", target_is_directory=True)
        config = tmp_path / CONFIG_FILE
        config.write_text(HEAD + "  app:\n    manifests: {files: [k8s.yaml]}\n    sync: [{local: code, remote: /a}]\n")
        assert load_config(config).services["app"].sync[0].local == "code"


def test_an_alert_pattern_that_is_not_a_regular_expression_is_refused_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "innerloop.yaml").write_text(
        "name: shop\nservices:\n  api:\n    manifests: {files: [k8s.yaml]}\n    alerts: {errors: ['(unclosed']}\n"
    )
    (tmp_path / "k8s.yaml").write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "innerloop.yaml")
    assert "innerloop.yaml:5:" in str(err.value)
    assert "not a regular expression" in str(err.value)
