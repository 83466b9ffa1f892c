"""``.innerloop/``: one way in for every command that keeps state there, never through a cloned repo's symlink."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from innerloop.cli.schema import write_project_schema
from innerloop.config.state import STATE_GITIGNORE, StateError, state_dir
from innerloop.status.api import project_lock


def test_the_folder_is_owner_only_and_ignores_everything_but_the_schema_copy(tmp_path: Path) -> None:
    runs = state_dir(tmp_path, "run")
    assert runs == tmp_path / ".innerloop" / "run"
    assert stat.S_IMODE((tmp_path / ".innerloop").stat().st_mode) == 0o700
    assert stat.S_IMODE(runs.stat().st_mode) == 0o700
    assert (tmp_path / ".innerloop" / ".gitignore").read_text() == STATE_GITIGNORE
    assert STATE_GITIGNORE.splitlines()[0] == "*"
    with pytest.raises(ValueError, match="not a folder name"):
        state_dir(tmp_path, "..")


def test_ups_lock_does_not_truncate_a_file_a_cloned_repository_links_to(tmp_path: Path) -> None:
    """Attack: a repository ships ``.innerloop/up.lock -> ~/.bashrc``; `innerloop up` opened it with open("w"),
    which truncated ~/.bashrc."""
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("precious\n")
    repo = tmp_path / "repo"
    (repo / ".innerloop").mkdir(parents=True)
    (repo / ".innerloop" / "up.lock").symlink_to(bashrc)
    with pytest.raises(StateError, match=r"up\.lock cannot be opened"), project_lock(repo):
        pass
    assert bashrc.read_text() == "precious\n"


def test_ups_state_folder_is_never_a_symlink(tmp_path: Path) -> None:
    """Attack: ``.innerloop -> ~``: `up` wrote its .gitignore over ~/.gitignore and its lock and socket in ~."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitignore").write_text("my global excludes\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".innerloop").symlink_to(home, target_is_directory=True)
    with pytest.raises(StateError, match="symlink"), project_lock(repo):
        pass
    assert (home / ".gitignore").read_text() == "my global excludes\n"
    assert sorted(p.name for p in home.iterdir()) == [".gitignore"]


def test_the_schema_copy_is_not_written_through_a_cloned_repositorys_symlink(tmp_path: Path) -> None:
    """Attack: a repository ships ``.innerloop/.innerloop.schema.json.partial -> ~/.bashrc`` (or the copy itself
    as a link); `innerloop init` / `schema --write` wrote the schema over ~/.bashrc."""
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("precious\n")
    repo = tmp_path / "repo"
    (repo / ".innerloop").mkdir(parents=True)
    (repo / ".innerloop" / ".innerloop.schema.json.partial").symlink_to(bashrc)
    assert write_project_schema(repo) == "wrote"
    (repo / ".innerloop" / "innerloop.schema.json").unlink()
    (repo / ".innerloop" / "innerloop.schema.json").symlink_to(bashrc)
    assert write_project_schema(repo) == "refreshed"
    assert bashrc.read_text() == "precious\n"
    copy = repo / ".innerloop" / "innerloop.schema.json"
    assert not copy.is_symlink() and copy.read_text().startswith("{")
