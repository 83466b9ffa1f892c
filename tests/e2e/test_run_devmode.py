"""`run` and `intercept -- CMD` on a service `up` is developing: the app's context, never the agent's.

The dev-mode pod's container has the agent's own variables (PYTHONHOME
names the agent's interpreter under /.innerloop), its runtime and token
mounts and the token's Secret; a local python3 given PYTHONHOME=/.innerloop
dies at start ("No module named 'encodings'"). Both commands must give the
local process this machine's toolchain plus the app's own variables.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .bookshop import copy_bookshop
from .kube import Kube
from .stopping import Cli

# The interpreter itself, not a pyenv shim (a shim puts its own folders in front of PATH).
PYTHON = os.path.realpath(sys.executable)
DUMP = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


@pytest.fixture
def developing(innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """`innerloop up` running on backend and api (api's manifest sets BACKEND_URL), in sync."""
    app, _ = copy_bookshop(tmp_path / "bookshop", only=["backend", "api"])
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    up = Cli.start([*innerloop_cli, "up", "-n", namespace, "--no-color"], cwd=app)
    try:
        up.wait_for("watching for changes")
        up.wait_for("api: in sync")
        yield app
    finally:
        print(up.output)
        up.kill()


def _local_env() -> dict[str, str]:
    """The test's own environment, as a developer's shell would have it: no PYTHONHOME."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}


def _assert_the_apps_context(env: dict[str, Any], local: dict[str, str]) -> None:
    assert env["BACKEND_URL"] == "http://backend:8080"  # from k8s/api.yaml
    assert env["BACKEND_SERVICE_HOST"]  # a service link, as the kubelet adds it
    assert "PYTHONHOME" not in env  # this machine's (absent), not the agent's /.innerloop
    assert "INNERLOOP_RUNTIME_ENV" not in env
    assert env["PATH"] == local["PATH"]
    assert env["HOME"] == local["HOME"]
    leaks = {k: v for k, v in env.items() if "/.innerloop" in v and not k.startswith("INNERLOOP_")}
    assert not leaks, leaks
    mounts = json.loads(env["INNERLOOP_MOUNTS"])
    assert not [m for m in mounts if m.startswith("/.innerloop")], mounts  # no token, no runtime


def test_run_on_a_dev_mode_pod_gets_the_apps_context(
    developing: Path, innerloop_cli: list[str], namespace: str, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    local = _local_env()
    run = Cli.start(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app.kubernetes.io/name=api", "--", PYTHON, "-c", DUMP,
         str(out)],
        cwd=tmp_path,
        env=local,
    )  # fmt: skip
    code = run.proc.wait(120)
    print(run.output)
    assert code == 0, run.output  # python3 started: no PYTHONHOME=/.innerloop
    _assert_the_apps_context(json.loads(out.read_text()), local)
    assert list((tmp_path / ".innerloop" / "run").iterdir()) == []  # the pod's files are gone with the command


def test_intercept_command_on_a_dev_mode_pod_gets_the_apps_context_and_env_options(
    developing: Path, innerloop_cli: list[str], namespace: str, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    local = _local_env()
    intercept = Cli.start(
        [*innerloop_cli, "intercept", "api", "-n", namespace, "--header", "x-innerloop-user=ctx",
         "--env", "FROM_FLAG=yes", "--env", "PYTHONUNBUFFERED=1",
         "--", PYTHON, "-c", DUMP, str(out)],
        cwd=tmp_path,
        env={**local, "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    try:
        code = intercept.proc.wait(180)
    finally:
        print(intercept.output)
        intercept.kill()
    assert code == 0, intercept.output
    assert "the command exited with 0" in intercept.output
    env = json.loads(out.read_text())
    _assert_the_apps_context(env, local)
    assert env["FROM_FLAG"] == "yes"
    assert env["PORT"].isdigit()
