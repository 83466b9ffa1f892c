"""`innerloop up` end to end on the bookshop example: deploy, sync, restart, forward, logs, down."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from innerloop.cluster.node import BundledCluster

from .bookshop import Up, copy_bookshop, running_up
from .conftest import innerloop_command
from .intercepts import LocalApp
from .kube import Kube, eventually
from .stopping import Cli

# Stands in for `pip install -r requirements.txt` (the distroless image has no pip): records that it ran.
STEP = "import pathlib; pathlib.Path('/app/step-ran.txt').write_text(pathlib.Path('/app/requirements.txt').read_text())"


def _start(innerloop_cli: list[str], kube: Kube, namespace: str, folder: Path) -> Iterator[Up]:
    # The Python services only: the five-service chain is tests/e2e/test_example_app.py's.
    app, ports = copy_bookshop(folder / "bookshop", only=["backend", "api", "frontend"])
    # An onChange step, as a project would reinstall dependencies when requirements.txt changes.
    config = yaml.safe_load((app / "innerloop.yaml").read_text())
    config["services"]["backend"]["onChange"] = [
        {"paths": ["requirements.txt"], "run": ["python3", "-c", STEP], "restart": True}
    ]
    (app / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    with running_up(innerloop_cli, app, ports, namespace=namespace, log=folder / "up.log") as handle:
        yield handle


@pytest.fixture
def up(innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Up]:
    """An `up` of this test's own: for the tests that stop it, kill it, break it or redeploy it."""
    yield from _start(innerloop_cli, kube, namespace, tmp_path)


@pytest.fixture(scope="module")
def shared_up(bundled_cluster: BundledCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `up` for the tests that only edit files and read: each leaves it serving, none assumes another's edits."""
    info = bundled_cluster.info()
    assert info is not None, "bundled cluster is not ready"
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    name = f"t-shared-up-{secrets.token_hex(3)}"
    kube.run("create", "namespace", name)
    cli = innerloop_command()
    try:
        yield from _start(cli, kube, name, tmp_path_factory.mktemp("shared-up"))
    finally:
        kube.run("delete", "namespace", name, "--wait=false", check=False)


def _set_greeting(up: Up, text: str) -> None:
    source = up.dir / "backend" / "app.py"
    source.write_text(re.sub(r'"(hello from backend|greeting: [^"]*)"', f'"greeting: {text}"', source.read_text()))


def _pod(kube: Kube, namespace: str, app: str) -> dict[str, object]:
    pods = kube.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/name={app}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, object] = live[0]
    return pod


def test_edit_reaches_the_running_container_without_a_new_pod(shared_up: Up, kube: Kube) -> None:
    up = shared_up
    before = _pod(kube, up.namespace, "backend")
    _set_greeting(up, "an edit")
    # How fast is measured in bench/ (docs/BENCHMARKS.md); here, that it happens, and how.
    eventually(lambda: up.greeting() == "greeting: an edit", interval_s=0.05)
    after = _pod(kube, up.namespace, "backend")
    # Same pod, same container: the process was restarted by the agent, nothing was recreated.
    assert after["metadata"]["name"] == before["metadata"]["name"]  # type: ignore[index]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0  # type: ignore[index]
    up.logged("backend: synced 1 file(s)")


def test_new_and_deleted_files_propagate_and_excludes_hold(shared_up: Up, kube: Kube) -> None:
    up = shared_up
    pod = _pod(kube, up.namespace, "backend")["metadata"]["name"]  # type: ignore[index]

    def remote_listing() -> list[str]:
        out = kube.run(
            "exec",
            "-n",
            up.namespace,
            str(pod),
            "-c",
            "backend",
            "--",
            "python3",
            "-c",
            "import os; print(sorted(os.listdir('/app')))",
        )
        listing: list[str] = eval(out.stdout)
        return listing

    (up.dir / "backend" / "notes.txt").write_text("synced\n")
    (up.dir / "backend" / "scratch.pyc").write_bytes(b"excluded")
    eventually(lambda: "notes.txt" in remote_listing())
    assert "scratch.pyc" not in remote_listing()
    (up.dir / "backend" / "notes.txt").unlink()
    eventually(lambda: "notes.txt" not in remote_listing())
    assert "Dockerfile" not in remote_listing()


def test_status_and_logs_work_from_another_terminal(shared_up: Up) -> None:
    up = shared_up
    status = up.cli_run("status", "--json")
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert snapshot["namespace"] == up.namespace
    assert set(snapshot["services"]) == {"backend", "api", "frontend"}
    assert all(s["phase"] == "running" and s["pod"] for s in snapshot["services"].values())
    up.get()  # makes the backend log a request
    logs = eventually(lambda: (r := up.cli_run("logs", "backend")).stdout.count("GET /books") and r)
    assert all(line.startswith("backend") for line in logs.stdout.splitlines())


def _api(up: Up, method: str, path: str) -> tuple[int, Any]:
    """One call to the running `up`'s local API (its unix socket), as the dashboard and editors make."""

    async def call() -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(up.dir / ".innerloop" / "api.sock"))
        async with (
            aiohttp.ClientSession(base_url="http://innerloop", connector=connector) as api,
            api.request(method, path) as resp,
        ):
            return resp.status, await resp.json()

    return asyncio.run(call())


def test_pause_resume_and_restart_through_the_local_api_and_the_timeline_says_what_a_save_did(shared_up: Up) -> None:
    up = shared_up
    served = up.greeting()
    assert _api(up, "POST", "/v1/services/backend/pause") == (200, {"message": "backend: sync paused"})
    _set_greeting(up, "saved while paused")
    eventually(
        lambda: any(e["kind"] == "save" and "(sync paused)" in e["message"] for e in _api(up, "GET", "/v1/timeline")[1])
    )
    time.sleep(1.5)  # a sync takes ~0.1 s here: a paused one has had ten times that
    assert up.greeting() == served
    assert _api(up, "POST", "/v1/services/backend/resume")[0] == 200
    eventually(lambda: up.greeting() == "greeting: saved while paused")
    # What the save did, in order (the process's own started event may land on either side of synced).
    kinds = [e["kind"] for e in _api(up, "GET", "/v1/timeline?service=backend")[1]]
    after_pause = [k for k in kinds[len(kinds) - 1 - kinds[::-1].index("paused") :] if k != "started"]
    assert after_pause[:5] == ["paused", "save", "resumed", "synced", "restarted"], kinds
    assert not [a for a in _api(up, "GET", "/v1/status")[1]["alerts"] if a["service"] == "backend"]
    restarts = up.cli_run("status", "--json")
    before = json.loads(restarts.stdout)["services"]["backend"]["replicas"]
    status, answer = _api(up, "POST", "/v1/services/backend/restart")
    assert (status, answer) == (200, {"message": "backend: restarted in 1 replica(s)"})
    timeline = _api(up, "GET", "/v1/timeline?service=backend")[1]
    restarted = [e for e in timeline if e["kind"] == "restarted" and "on request" in e["message"]]
    assert [e["pod"] for e in restarted] == list(before), timeline[-3:]
    eventually(lambda: up.greeting() == "greeting: saved while paused")  # it serves again after the restart
    status, refused = _api(up, "POST", "/v1/services/nope/restart")
    assert status == 409
    assert "no service 'nope'" in refused["error"]
    # Rebuild and redeploy on request (the dashboard's button): unchanged sources find their image by hash.
    assert _api(up, "POST", "/v1/services/api/rebuild") == (200, {"message": "api: redeployed"})
    kinds = [e["kind"] for e in _api(up, "GET", "/v1/timeline?service=api")[1]]
    rebuilt = kinds[len(kinds) - 1 - kinds[::-1].index("built") :]
    assert rebuilt[:2] == ["built", "deployed"], kinds
    assert kinds.count("built") == 2, kinds  # at start, and on request
    up.logged("api: rebuilding and redeploying on request")
    eventually(lambda: up.greeting() == "greeting: saved while paused")


def test_an_intercept_of_a_service_shows_on_it_while_it_lasts(
    shared_up: Up, innerloop_cli: list[str], tmp_path: Path
) -> None:
    """A teammate's (here: another terminal's) `innerloop intercept backend`: `up` shows the router on backend."""
    up = shared_up
    entry = "svc/backend through the intercept router"

    def intercepts() -> list[str]:
        shown: list[str] = json.loads(up.cli_run("status", "--json").stdout)["services"]["backend"]["intercepts"]
        return shown

    local = LocalApp("laptop")
    argv = [*innerloop_cli, "intercept", "backend", "-n", up.namespace, "--global", "--to", str(local.port)]
    cli = Cli.start(argv, cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    try:
        cli.wait_for("intercepting svc/backend")
        eventually(lambda: intercepts() == [entry], timeout_s=60)
        code, _ = cli.stop(signal.SIGINT, within=30)
        assert code == 0, cli.output
        eventually(lambda: intercepts() == [], timeout_s=120)  # the router restores backend, then goes
        kinds = [e["kind"] for e in _api(up, "GET", "/v1/timeline?service=backend")[1]]
        assert "intercepted" in kinds and "intercept ended" in kinds
    finally:
        cli.kill()
        local.close()


def test_sync_resumes_after_the_pod_is_deleted(up: Up, kube: Kube) -> None:
    old = _pod(kube, up.namespace, "backend")["metadata"]["name"]  # type: ignore[index]
    kube.run("delete", "pod", "-n", up.namespace, str(old), "--wait=false")
    # Edit while there is no agent to receive it.
    source = up.dir / "backend" / "app.py"
    source.write_text(source.read_text().replace('"hello from backend"', '"edited while the pod was gone"'))
    eventually(lambda: up.greeting() == "edited while the pod was gone", timeout_s=300)
    assert _pod(kube, up.namespace, "backend")["metadata"]["name"] != old  # type: ignore[index]


def test_down_removes_what_up_created(up: Up, kube: Kube) -> None:
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    assert kube.get_json("deployments", "-n", up.namespace)["items"], "Ctrl+C leaves the app deployed"
    out = up.cli_run("down", "-n", up.namespace)
    assert out.returncode == 0, out.stderr
    assert kube.get_json("deployments", "-n", up.namespace)["items"] == []
    assert kube.get_json("services", "-n", up.namespace)["items"] == []
    secrets = kube.get_json("secrets", "-n", up.namespace)["items"]
    assert not [s for s in secrets if s["metadata"]["name"].startswith("innerloop-")]


def test_a_dockerfile_change_rebuilds_and_redeploys(up: Up, kube: Kube) -> None:
    def backend_image() -> str:
        deployment = kube.get_json("deployment", "backend", "-n", up.namespace)
        containers = deployment["spec"]["template"]["spec"]["containers"]
        return str(containers[0]["image"])

    before = backend_image()
    old_pod = _pod(kube, up.namespace, "backend")["metadata"]["name"]  # type: ignore[index]
    dockerfile = up.dir / "backend" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "ENV BOOKSHOP_EDITION=second\n")
    eventually(lambda: backend_image() != before, timeout_s=300)  # a rebuild
    assert backend_image().startswith("innerloop.local/bookshop-backend:")
    # The new pod runs the new image, and sync works against it.
    eventually(lambda: _pod(kube, up.namespace, "backend")["metadata"]["name"] != old_pod, timeout_s=300)  # type: ignore[index]
    source = up.dir / "backend" / "app.py"
    source.write_text(source.read_text().replace('"hello from backend"', '"after a rebuild"'))
    eventually(lambda: up.greeting() == "after a rebuild", timeout_s=300)
    up.logged("Dockerfile changed, which sync cannot serve: redeploying")


def test_up_killed_with_sigkill_then_up_and_down_again(up: Up, kube: Kube) -> None:
    up.proc.kill()
    up.proc.wait(timeout=60)
    # A second `up` takes over from the crashed one: same objects, sync works.
    log = up.dir.parent / "up-again.log"
    again = subprocess.Popen(
        [*up.cli, "up", "-n", up.namespace, "--no-color"], cwd=up.dir, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        eventually(lambda: "in sync" in log.read_text() and up.greeting(), timeout_s=600)
        source = up.dir / "backend" / "app.py"
        source.write_text(source.read_text().replace('"hello from backend"', '"after a crash"'))
        eventually(lambda: up.greeting() == "after a crash", interval_s=0.1)
    finally:
        again.kill()
        again.wait(timeout=60)
    out = up.cli_run("down", "-n", up.namespace)
    assert out.returncode == 0, out.stderr
    assert kube.get_json("deployments", "-n", up.namespace)["items"] == []
    configmaps = kube.get_json("configmaps", "-n", up.namespace)["items"]
    assert [c["metadata"]["name"] for c in configmaps] == ["kube-root-ca.crt"]


def test_on_change_steps_run_in_the_container_when_their_files_change(shared_up: Up, kube: Kube) -> None:
    up = shared_up
    pod = str(_pod(kube, up.namespace, "backend")["metadata"]["name"])  # type: ignore[index]

    def step_output() -> str:
        script = "import pathlib; p = pathlib.Path('/app/step-ran.txt'); print(p.read_text() if p.exists() else '')"
        out = kube.run("exec", "-n", up.namespace, pod, "-c", "backend", "--", "python3", "-c", script)
        return out.stdout.strip()

    assert step_output() == ""
    synced = up.log.read_text().count("backend: synced")
    (up.dir / "backend" / "requirements.txt").write_text("requests==2.32.3\n")
    assert eventually(lambda: step_output() == "requests==2.32.3")
    up.logged("backend: ran python3")
    # A change that matches no step runs none.
    (up.dir / "backend" / "other.txt").write_text("x")
    eventually(lambda: up.log.read_text().count("backend: synced") >= synced + 2)
    assert up.log.read_text().count("backend: ran python3") == 1


def test_a_second_up_for_the_same_project_is_refused(shared_up: Up) -> None:
    up = shared_up
    out = subprocess.run(
        [*up.cli, "up", "-n", up.namespace], cwd=up.dir, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 1
    assert "already runs" in out.stderr
    assert up.proc.poll() is None, "the first up keeps running"
    assert up.greeting()  # and serves


def test_a_manifest_change_is_applied(up: Up, kube: Kube) -> None:
    manifest = up.dir / "k8s" / "backend.yaml"
    manifest.write_text(manifest.read_text().replace("runAsGroup: 65532", "runAsGroup: 65532\n        fsGroup: 65532"))

    def fs_group() -> object:
        deployment = kube.get_json("deployment", "backend", "-n", up.namespace)
        return deployment["spec"]["template"]["spec"]["securityContext"].get("fsGroup")

    eventually(lambda: fs_group() == 65532, timeout_s=180)
    up.logged("k8s/backend.yaml changed, which sync cannot serve: redeploying")
    # The dev-mode patch is still applied to the new pod template, and the loop keeps working.
    eventually(lambda: up.greeting() == "hello from backend", timeout_s=300)


def test_the_token_secret_holds_a_hash_and_a_patched_deployment_gets_nothing(up: Up, kube: Kube) -> None:
    """Attack: a teammate with the documented Role reads the token Secret, then patches the Deployment.

    Before the fix the Secret held the token itself (enough to take over the
    agent and run commands in the container), and the CLI greeted whatever
    pod answered with it. Now the Secret holds only a sha256, and a pod of a
    patched template gets one refusal line and no connection.
    """
    secrets = kube.get_json("secrets", "-n", up.namespace)["items"]
    agent_secret = next(s for s in secrets if s["metadata"]["name"].endswith("-backend-agent"))
    assert list(agent_secret["data"]) == ["sha256"]
    deployment = next(
        d["metadata"]["name"]
        for d in kube.get_json("deployments", "-n", up.namespace)["items"]
        if "backend" in d["metadata"]["name"]
    )
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "backend", "env": [{"name": "PYTHONPATH", "value": "/x"}]}]}}
        }
    }
    kube.run("patch", "deployment", deployment, "-n", up.namespace, "-p", json.dumps(patch))
    eventually(lambda: "is not the one innerloop deployed" in up.log.read_text(), timeout_s=120)
