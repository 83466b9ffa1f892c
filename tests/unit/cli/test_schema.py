"""``innerloop schema`` and ``innerloop schema --check``, through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from innerloop.cli.main import cli
from innerloop.config.schema import json_schema, json_schema_text, packaged_schema_text

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "bookshop" / "innerloop.yaml"


def test_prints_the_schema() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == json_schema_text()
    assert json.loads(result.stdout) == json_schema()


def test_is_listed_in_the_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "schema" in result.stdout.split("Commands:", 1)[1]


def test_check_accepts_the_example() -> None:
    result = CliRunner().invoke(cli, ["schema", "--check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLE}: ok\n"


def check(config: Path, text: str) -> tuple[int, str, str]:
    config.write_text(text)
    result = CliRunner().invoke(cli, ["schema", "--check", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_check_prints_every_problem_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "innerloop.yaml"
    head = "version: 1\nname: shop\nservices:\n  api:\n    manifests: {files: [a.yaml]}\n"
    code, out, err = check(config, head + "    restart: always\n    healthy: maybe\n")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{config}:6:14: services.api.restart: Input should be 'process' or 'none', got 'always'",
        f"{config}:7:14: services.api.healthy: Input should be 'ready' or 'started', got 'maybe'",
    ]


def test_check_reports_cross_references(tmp_path: Path) -> None:
    config = tmp_path / "innerloop.yaml"
    head = "version: 1\nname: shop\nservices:\n  api:\n    manifests: {files: [a.yaml]}\n"
    code, out, err = check(config, head + "    dependsOn: [db]\n")
    assert (code, out) == (1, "")
    assert err == f"{config}:6:17: services.api.dependsOn.0: no service named 'db' (services: api)\n"


def test_check_names_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schema", "--check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.stderr == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"


def test_check_reports_yaml_syntax(tmp_path: Path) -> None:
    config = tmp_path / "innerloop.yaml"
    config.write_text("version: 1\nname: [\n")
    result = CliRunner().invoke(cli, ["schema", "--check", str(config)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{config}:3:1: invalid YAML: ")


def test_write_refreshes_the_projects_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "innerloop.yaml").write_text("version: 1\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found upwards, like `innerloop up` finds the config
    copy = tmp_path / ".innerloop" / "innerloop.schema.json"

    first = CliRunner().invoke(cli, ["schema", "--write"])
    assert first.exit_code == 0, first.output
    assert first.stdout == f"wrote: {copy}\n"
    assert copy.read_text() == packaged_schema_text()

    copy.write_text("{}\n")  # from an older innerloop
    assert CliRunner().invoke(cli, ["schema", "--write"]).stdout == f"refreshed: {copy}\n"
    assert CliRunner().invoke(cli, ["schema", "--write"]).stdout == f"current: {copy}\n"
    assert copy.read_text() == packaged_schema_text()


def test_write_without_a_project_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["schema", "--write"])
    assert result.exit_code == 1
    assert "innerloop init" in result.stderr
    assert not (tmp_path / ".innerloop").exists()
