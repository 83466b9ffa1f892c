"""``innerloop init`` through click's test runner: what lands on disk, what is kept, what is said."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from innerloop.cli.main import cli
from innerloop.config import load_config
from innerloop.config.schema import packaged_schema_text

APP = 'import os\nfrom http.server import HTTPServer\nHTTPServer(("", int(os.environ.get("PORT", "8080"))), H)\n'


def _app(tmp_path: Path) -> Path:
    folder = tmp_path / "Hello_World"
    folder.mkdir()
    (folder / "app.py").write_text(APP)
    return folder


def test_writes_a_config_that_loads_with_a_modeline_that_reaches_the_schema(tmp_path: Path) -> None:
    folder = _app(tmp_path)
    result = CliRunner().invoke(cli, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == {
        "app.py",
        "innerloop.yaml",
        "Dockerfile",
        "k8s/hello-world.yaml",
        ".innerloop/innerloop.schema.json",
        ".innerloop/.gitignore",
    }
    project = load_config(folder / "innerloop.yaml")
    assert list(project.services) == ["hello-world"]
    modeline = (folder / "innerloop.yaml").read_text().splitlines()[0]
    assert modeline == "# yaml-language-server: $schema=.innerloop/innerloop.schema.json"
    assert (folder / ".innerloop/innerloop.schema.json").read_text() == packaged_schema_text()
    assert "wrote     k8s/hello-world.yaml" in result.output
    assert result.output.rstrip().endswith("innerloop up")


def test_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    folder = _app(tmp_path)
    (folder / "innerloop.yaml").write_text("# mine\n")
    result = CliRunner().invoke(cli, ["init", str(folder), "--name", "web", "--port", "9000"])
    assert result.exit_code == 0, result.output
    assert (folder / "innerloop.yaml").read_text() == "# mine\n"
    assert "kept      innerloop.yaml" in result.output
    assert "ENV PORT=9000" in (folder / "Dockerfile").read_text()
    (folder / "Dockerfile").write_text((folder / "Dockerfile").read_text() + "# edited\n")

    forced = CliRunner().invoke(cli, ["init", str(folder), "--name", "web", "--force"])
    assert forced.exit_code == 0, forced.output
    assert load_config(folder / "innerloop.yaml").services["web"].ports[0].remote == 8080
    # The Dockerfile exists, so detection uses it: even --force leaves it alone.
    assert (folder / "Dockerfile").read_text().endswith("# edited\n")
    assert "kept      Dockerfile" in forced.output
    assert "replaced  innerloop.yaml" in forced.output


def test_unknown_app_exits_1_and_says_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi\n")
    result = CliRunner().invoke(cli, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "package.json" in result.output and "go.mod" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_bad_name_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", str(_app(tmp_path)), "--name", "Bad_Name"])
    assert result.exit_code == 2
    assert "DNS-1123" in result.output


def test_node_app_prints_the_builder_note_and_writes_a_dockerignore(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"scripts": {"start": "node index.js"}}')
    (tmp_path / "index.js").write_text("require('http').createServer(h).listen(3000)\n")
    result = CliRunner().invoke(cli, ["init", str(tmp_path), "--name", "web"])
    assert result.exit_code == 0, result.output
    assert "note: the Dockerfile installs the dependencies (FROM node:18-slim, RUN npm ci --omit=dev)" in result.output
    assert "node_modules/" in (tmp_path / ".dockerignore").read_text().splitlines()
    assert load_config(tmp_path / "innerloop.yaml").services["web"].ports[0].remote == 3000


def test_the_modeline_survives_moving_the_project_and_innerloop(tmp_path: Path) -> None:
    """The schema reference is a path inside the project: nothing outside it (a checkout, a venv) is named."""
    folder = _app(tmp_path)
    assert CliRunner().invoke(cli, ["init", str(folder)]).exit_code == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    folder.rename(moved)
    modeline = (moved / "innerloop.yaml").read_text().splitlines()[0]
    assert (moved / modeline.split("=", 1)[1]).is_file()
    assert str(tmp_path) not in (moved / "innerloop.yaml").read_text()


def test_the_schema_copy_is_shared_the_state_next_to_it_is_not(tmp_path: Path) -> None:
    folder = _app(tmp_path)
    assert CliRunner().invoke(cli, ["init", str(folder)]).exit_code == 0
    ignore = (folder / ".innerloop" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!innerloop.schema.json" in ignore


def _repository(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "api").mkdir(parents=True)
    (root / "api" / "app.py").write_text(APP.replace("H)", 'H)\nBACKEND = "http://cache:6379"'))
    (root / "admin").mkdir()
    (root / "admin" / "app.py").write_text(APP)
    (root / "k8s").mkdir()
    (root / "k8s" / "app.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    metadata:\n"
        "      labels: {app: api}\n    spec:\n      containers: [{name: api, image: 'shop/api:1'}]\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cache}\nspec:\n  template:\n    metadata:\n"
        "      labels: {app: cache}\n    spec:\n      containers: [{name: cache, image: 'redis:7'}]\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: cache}\nspec: {selector: {app: cache}}\n"
    )
    return root


def test_a_repository_gets_one_config_and_says_why(tmp_path: Path) -> None:
    root = _repository(tmp_path)
    shared = (root / "k8s" / "app.yaml").read_text()
    result = CliRunner().invoke(cli, ["init", str(root), "--name", "shop"])
    assert result.exit_code == 0, result.output
    assert "found 2 apps and 2 workloads in existing manifests" in result.output
    assert "deployment/api in k8s/app.yaml: its image shop/api is named after api/" in result.output
    assert "dependsOn cache: api/app.py:4 calls http://cache" in result.output
    assert "kept      k8s/app.yaml (existing manifests, referenced)" in result.output
    assert "wrote     k8s/admin.yaml" in result.output
    assert (root / "k8s" / "app.yaml").read_text() == shared
    project = load_config(root / "innerloop.yaml")
    assert (project.name, list(project.services)) == ("shop", ["admin", "api", "cache"])
    assert project.services["api"].depends_on == ["cache"]
    assert [(p.remote, p.local_port) for p in project.services["api"].ports] == [(8080, 8081)]
    assert not (root / "api" / "innerloop.yaml").exists()


def test_port_is_refused_for_a_repository(tmp_path: Path) -> None:
    root = _repository(tmp_path)
    result = CliRunner().invoke(cli, ["init", str(root), "--port", "9000"])
    assert result.exit_code == 2
    assert "--port is for a folder with one app" in result.output
    assert not (root / "innerloop.yaml").exists()


def test_init_never_writes_through_a_symlink_a_cloned_repository_ships(tmp_path: Path) -> None:
    """Attack: the repository ships ``innerloop.yaml -> ~/.bashrc`` and ``k8s -> ~/.config/autostart`` (a link
    that dangles, so it "does not exist"); `init` (with --force too) wrote its files over or into them."""
    folder = _app(tmp_path)
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("precious\n")
    autostart = tmp_path / "autostart"
    autostart.mkdir()
    (folder / "innerloop.yaml").symlink_to(bashrc)
    (folder / "k8s").symlink_to(autostart, target_is_directory=True)
    (folder / "Dockerfile").symlink_to(tmp_path / "dangling")
    for argv in (["init", str(folder)], ["init", str(folder), "--force"]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.output
    assert bashrc.read_text() == "precious\n"
    assert list(autostart.iterdir()) == []
    assert not (tmp_path / "dangling").exists()
    assert "kept      k8s/hello-world.yaml (not written: k8s is a symlink here" in result.output
