"""`innerloop run` / `intercept -- CMD` given a hostile pod spec: its files stay in .innerloop/run/, briefly.

The attacker writes the pod spec (a teammate with the documented Role, or a
hostile API server that skips Kubernetes' own validation): mount paths and
file names that climb out, variables that would run their code here.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from innerloop.config.state import STATE_GITIGNORE, StateError, state_dir
from innerloop.connect.context import ContextError, RemoteContext, command_environment, container_context
from innerloop.connect.run import OWNER_FILE, RunError, materialize, materialized, remove_stale

SECRET = {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"abc123").decode()}}


def pod(mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "target"},
        "spec": {"containers": [{"name": "app", "volumeMounts": mounts}], "volumes": volumes},
    }


def context_of(spec: dict[str, Any], secrets: dict[str, Any] | None = None) -> RemoteContext:
    return container_context(spec, None, configmaps={}, secrets=secrets or {"creds": SECRET}, services=[])


@pytest.mark.parametrize("mount_path", ["../../.bashrc", "/etc/../../../.bashrc", "etc/x", "/", "/a\\..\\b", "/a\0"])
def test_a_mount_path_that_could_leave_the_run_folder_is_refused(mount_path: str) -> None:
    """Attack: ``mountPath: ../../.bashrc`` made `run` write the Secret's files over the developer's files."""
    spec = pod([{"name": "v", "mountPath": mount_path}], [{"name": "v", "secret": {"secretName": "creds"}}])
    with pytest.raises(ContextError, match="mount path"):
        context_of(spec)


@pytest.mark.parametrize("path", ["../x", "../../.ssh/authorized_keys", "/etc/passwd", "a/../../b", "a//b"])
def test_a_projected_item_path_or_key_that_could_leave_its_mount_is_refused(path: str) -> None:
    """Attack: an item ``path: ../../.ssh/authorized_keys`` (or such a key, from a hostile API server)."""
    items = pod(
        [{"name": "v", "mountPath": "/etc/app"}],
        [{"name": "v", "secret": {"secretName": "creds", "items": [{"key": "token", "path": path}]}}],
    )
    with pytest.raises(ContextError, match="could leave it"):
        context_of(items)
    keyed = {"metadata": {"name": "creds"}, "data": {path: base64.b64encode(b"x").decode()}}
    whole = pod([{"name": "v", "mountPath": "/etc/app"}], [{"name": "v", "secret": {"secretName": "creds"}}])
    with pytest.raises(ContextError, match="could leave it"):
        context_of(whole, {"creds": keyed})


def test_materialize_checks_paths_again_and_writes_owner_only(tmp_path: Path) -> None:
    """Attack: a RemoteContext built some other way (intercept's own code path) with a climbing file name."""
    root = tmp_path / "run" / "p"
    with pytest.raises(ContextError):
        materialize(RemoteContext(env={}, files={"/etc/app": {"../../../escaped": b"x"}}), root)
    assert not (tmp_path / "escaped").exists()
    mounts = materialize(RemoteContext(env={}, files={"/etc/app": {"sub/token": b"abc"}}), root)
    token = Path(mounts["/etc/app"]) / "sub" / "token"
    assert token.read_bytes() == b"abc"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def test_the_files_are_git_ignored_and_deleted_when_the_command_ends(tmp_path: Path) -> None:
    """Attack (by accident): `run`'s Secrets stayed in .innerloop/run/ for ever, without a .gitignore unless `up`
    had run first, so a `git add -A` committed them."""
    spec = pod([{"name": "v", "mountPath": "/var/run/creds"}], [{"name": "v", "secret": {"secretName": "creds"}}])
    with materialized(context_of(spec), tmp_path, "target") as files:
        token = Path(files.mounts["/var/run/creds"]) / "token"
        assert token.read_bytes() == b"abc123"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert files.root.parent == tmp_path / ".innerloop" / "run"
        for folder in (tmp_path / ".innerloop", files.root.parent, files.root):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert (tmp_path / ".innerloop" / ".gitignore").read_text() == STATE_GITIGNORE
        assert STATE_GITIGNORE.startswith("*\n")
        git = subprocess.run(["git", "init", "-q", str(tmp_path)], check=False)
        if git.returncode == 0:
            ignored = subprocess.run(
                ["git", "-C", str(tmp_path), "check-ignore", "-q", str(token)], check=False
            ).returncode
            assert ignored == 0
    assert list((tmp_path / ".innerloop" / "run").iterdir()) == []


def test_the_files_are_deleted_on_an_error_and_on_ctrl_c(tmp_path: Path) -> None:
    spec = pod([{"name": "v", "mountPath": "/creds"}], [{"name": "v", "secret": {"secretName": "creds"}}])
    with pytest.raises(RuntimeError), materialized(context_of(spec), tmp_path, "target"):
        raise RuntimeError("the command could not start")
    assert list((tmp_path / ".innerloop" / "run").iterdir()) == []

    async def command() -> None:
        with materialized(context_of(spec), tmp_path, "target"):
            await asyncio.sleep(60)

    async def ctrl_c() -> None:  # run_until_signal cancels the main task on the first Ctrl+C
        task = asyncio.create_task(command())
        await asyncio.sleep(0.05)
        assert len(list((tmp_path / ".innerloop" / "run").iterdir())) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(ctrl_c())
    assert list((tmp_path / ".innerloop" / "run").iterdir()) == []


def test_a_killed_runs_folder_is_removed_by_the_next_run_and_a_live_ones_kept(tmp_path: Path) -> None:
    runs = state_dir(tmp_path, "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for name, pid in (("target.1", dead.pid), ("target.2", alive.pid)):
            (runs / name).mkdir()
            (runs / name / "token").write_text("secret")
            started = psutil.Process(alive.pid).create_time() if pid == alive.pid else 0.0
            (runs / name / OWNER_FILE).write_text(f"{pid} {started!r}")
        (runs / "old-format").mkdir()  # no owner file: from before owners were recorded
        assert remove_stale(runs) == ["old-format", "target.1"]
        assert sorted(os.listdir(runs)) == ["target.2"]
    finally:
        alive.kill()
        alive.wait()


def test_a_symlinked_state_folder_is_refused(tmp_path: Path) -> None:
    """Attack: a cloned repository ships ``.innerloop -> ~`` (or ``.innerloop/run -> ~``): `run` wrote, and
    deleted, below the developer's home."""
    home = tmp_path / "home"
    (home / "run" / "target").mkdir(parents=True)
    (home / "run" / "target" / "thesis.tex").write_text("years of work")
    project = tmp_path / "repo"
    project.mkdir()
    (project / ".innerloop").symlink_to(home, target_is_directory=True)
    spec = pod([{"name": "v", "mountPath": "/creds"}], [{"name": "v", "secret": {"secretName": "creds"}}])
    with pytest.raises(StateError, match="is a symlink"), materialized(context_of(spec), project, "target"):
        pass
    (project / ".innerloop").unlink()
    (project / ".innerloop").mkdir()
    (project / ".innerloop" / "run").symlink_to(home / "run", target_is_directory=True)
    with pytest.raises(StateError, match="is a symlink"), materialized(context_of(spec), project, "target"):
        pass
    (project / ".innerloop" / "run").unlink()
    (project / ".innerloop" / ".gitignore").unlink()
    (project / ".innerloop" / ".gitignore").symlink_to(home / "run" / "target" / "thesis.tex")
    with pytest.raises(StateError, match="not a regular file"), materialized(context_of(spec), project, "target"):
        pass
    assert (home / "run" / "target" / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(home)) == ["run"]


def test_a_repositorys_own_gitignore_that_unignores_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / ".innerloop").mkdir()
    (tmp_path / ".innerloop" / ".gitignore").write_text("!*\n")
    state_dir(tmp_path)
    assert (tmp_path / ".innerloop" / ".gitignore").read_text() == STATE_GITIGNORE


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "Target"])
def test_a_pod_name_that_is_not_a_kubernetes_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RunError, match="not a Kubernetes name"), materialized(RemoteContext(env={}), tmp_path, name):
        pass


LOCAL = {"PATH": "/usr/bin", "HOME": "/home/me"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LD_PRELOAD", "libevil.so"),
        ("LD_AUDIT", "evil.so"),
        ("DYLD_INSERT_LIBRARIES", "evil.dylib"),
        ("NODE_OPTIONS", "--require=evil"),
        ("BASH_ENV", "evil.sh"),
        ("ENV", "evil.sh"),
        ("PERL5OPT", "-Mevil"),
        ("RUBYOPT", "-revil"),
        ("JAVA_TOOL_OPTIONS", "-javaagent:evil.jar"),
        ("GIT_SSH_COMMAND", "evil"),
        ("GIT_CONFIG_COUNT", "1"),
        ("PYTHONSTARTUP", "evil.py"),
        ("PYTHONBREAKPOINT", "evil.run"),
        ("PYTHONWARNINGS", "error"),
        ("PROMPT_COMMAND", "evil"),
        ("PAGER", "evil"),
        ("LESSOPEN", "|evil %s"),
        ("SHELL", "evil"),
        ("BASH_FUNC_ls%%", "() { evil; }"),
        ("GLIBC_TUNABLES", "glibc.malloc.x=1"),
    ],
)
def test_variables_that_would_run_the_pods_code_here_are_never_applied(name: str, value: str) -> None:
    """Attack: the machine has no LD_PRELOAD, so a pod's ``LD_PRELOAD=libevil.so`` (no '/') filled the gap and
    every local program loaded it; NODE_OPTIONS, BASH_ENV, GIT_* were applied whatever the machine had."""
    decided = command_environment(LOCAL, {name: value})
    assert name not in decided.env
    assert decided.withheld == [name]
    assert command_environment(LOCAL, {name: value}, {name: value}).env[name] == value  # --env still sets it


def test_names_and_values_no_environment_can_hold_are_withheld() -> None:
    decided = command_environment(LOCAL, {"A=B": "x", "NUL": "a\0b", "OK": "1"})
    assert decided.env["OK"] == "1"
    assert "A=B" not in decided.env and "NUL" not in decided.env
    assert decided.withheld == ["A=B", "NUL"]
