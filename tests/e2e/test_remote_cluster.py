"""The bundled cluster used as a remote one: images travel through a registry, never through ctr.

The kubeconfig (tests/e2e/remote.py) names neither the bundled cluster's
server nor its context, so innerloop takes the path it would take on a team's
cluster: the registry that the cluster advertises through KEP-1755, or one
the user names with credentials in a docker config. Each test asserts that
the kubelet pulled what runs (the pod's imageID is the registry's digest)
and that nothing was imported into the node's containerd.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from innerloop.cluster.node import BundledCluster
from innerloop.cluster.registry import LocalRegistry

from .bookshop import Up, copy_bookshop, running_up
from .intercepts import InterceptProcess, LocalApp, deploy_echo, leftovers, request
from .kube import Kube, eventually, free_port
from .remote import docker_config, imported_refs, pulled_from, remote_kubeconfig

DIGEST_REF = re.compile(r"^(?P<repo>[^@]+)@(?P<digest>sha256:[0-9a-f]{64})$")


def advertised_registry(kube: Kube) -> str:
    """The `host` of the cluster's KEP-1755 ConfigMap."""
    cm = kube.get_json("configmap", "local-registry-hosting", "-n", "kube-public")
    return str(yaml.safe_load(cm["data"]["localRegistryHosting.v1"])["host"])


def deployed_images(kube: Kube, namespace: str) -> dict[str, str]:
    """Deployment name -> the image its first container runs."""
    items = kube.get_json("deployments", "-n", namespace)["items"]
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"] for d in items}


def assert_pulled_by_digest(kube: Kube, namespace: str, app: str, registry: str) -> str:
    """The app's pods run a registry image by digest, and the kubelet reports that very digest."""
    image = deployed_images(kube, namespace)[app]
    match = DIGEST_REF.match(image)
    assert match and image.startswith(registry + "/"), image
    kubectl = kube.argv()

    def running_it() -> bool:
        # Until a rollout ends, an old pod may still be listed beside the new one.
        statuses = pulled_from(kubectl, namespace, f"app.kubernetes.io/name={app}")
        return bool(statuses) and all(image_id.endswith(match["digest"]) for _image, image_id in statuses)

    eventually(running_it, timeout_s=300)
    return image


@dataclass(frozen=True)
class Remote:
    """A developer whose kubeconfig points at a 'remote' cluster, in a namespace of their own."""

    cli: list[str]
    env: dict[str, str]
    namespace: str
    tmp: Path
    bundled: BundledCluster


@pytest.fixture
def remote(
    innerloop_cli: list[str], bundled_cluster: BundledCluster, kube: Kube, namespace: str, tmp_path: Path
) -> Remote:
    kubeconfig = remote_kubeconfig(bundled_cluster, tmp_path / "team.kubeconfig")
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    env = {"KUBECONFIG": str(kubeconfig), "XDG_STATE_HOME": str(tmp_path / "state")}
    return Remote(cli=innerloop_cli, env=env, namespace=namespace, tmp=tmp_path, bundled=bundled_cluster)


@pytest.fixture
def remote_up(remote: Remote) -> Iterator[Up]:
    app, ports = copy_bookshop(remote.tmp / "bookshop", only=["backend", "api", "frontend"])
    # Images no other test built (the tag is a hash of the inputs), so "not imported" means this run.
    dockerfile = app / "backend" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"ENV RUN_ID={remote.namespace}\n")
    log = remote.tmp / "up.log"
    with running_up(remote.cli, app, ports, namespace=remote.namespace, log=log, env=remote.env) as handle:
        yield handle


def test_up_sync_rebuild_and_down_through_the_advertised_registry(remote_up: Up, kube: Kube, remote: Remote) -> None:
    up = remote_up
    registry = advertised_registry(kube)
    up.logged(f"images: registry: push to {registry}")
    backend = assert_pulled_by_digest(kube, up.namespace, "backend", registry)
    for app in ("api", "frontend"):
        assert_pulled_by_digest(kube, up.namespace, app, registry)
    # Nothing went through ctr: the node holds this run's backend only under the registry's name.
    [built] = re.findall(r"pushing (innerloop\.local/bookshop-backend:\S+) to", up.log.read_text())
    refs = imported_refs(remote.bundled)
    assert built not in refs and backend in refs, (built, backend, [r for r in refs if "bookshop-backend" in r])

    # Sync works against pulled images as against imported ones.
    source = up.dir / "backend" / "app.py"
    source.write_text(source.read_text().replace('"hello from backend"', '"hello from a remote edit"'))
    eventually(lambda: up.greeting() == "hello from a remote edit", interval_s=0.1)

    # A Dockerfile change rebuilds, pushes and redeploys by the new digest.
    dockerfile = up.dir / "backend" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "ENV BOOKSHOP_EDITION=remote\n")
    eventually(lambda: deployed_images(kube, up.namespace)["backend"] != backend, timeout_s=300)
    rebuilt = assert_pulled_by_digest(kube, up.namespace, "backend", registry)
    assert rebuilt.split("@")[0] == backend.split("@")[0]
    source.write_text(source.read_text().replace('"hello from a remote edit"', '"after a remote rebuild"'))
    eventually(lambda: up.greeting() == "after a remote rebuild", timeout_s=300)

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    out = up.cli_run("down", "-n", up.namespace)
    assert out.returncode == 0, out.stderr
    assert kube.get_json("deployments", "-n", up.namespace)["items"] == []


def test_intercept_and_run_against_the_remote_cluster(kube: Kube, remote: Remote) -> None:
    innerloop_cli, namespace, tmp_path = remote.cli, remote.namespace, remote.tmp
    registry = advertised_registry(kube)
    ip = deploy_echo(kube, namespace, replicas=1)
    app = LocalApp("mine")
    try:
        cli = InterceptProcess.start(
            innerloop_cli, "echo", "-n", namespace, "--to", str(app.port), "--header", "x-dev=me",
            state=tmp_path / "state", env=remote.env,
        )  # fmt: skip
        cli.wait_for("intercepting svc/echo")
        assert f"images: registry: push to {registry}" in cli.output, cli.output
        routers = kube.get_json("deployments", "-n", namespace, "-l", "innerloop.dev/intercept-router")["items"]
        [router_image] = [c["image"] for d in routers for c in d["spec"]["template"]["spec"]["containers"]]
        assert DIGEST_REF.match(router_image) and router_image.startswith(registry + "/"), router_image
        eventually(lambda: request(ip, 80, headers={"x-dev": "me"})["where"] == "mine")
        assert cli.stop() == 0, cli.output
    finally:
        app.close()
    eventually(lambda: not leftovers(kube, namespace), timeout_s=180)

    # `run` needs no image: a local command reaches the Service by its DNS name through the same kubeconfig.
    env = {**os.environ, **remote.env}
    script = "import json, urllib.request; print(json.load(urllib.request.urlopen('http://echo/run', timeout=30)))"
    out = subprocess.run(
        [*innerloop_cli, "run", "--selector", "app=echo", "-n", namespace, "--", "python3", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "'where': 'cluster'" in out.stdout, out.stdout


def _pull_secret(kube: Kube, namespace: str, registry: str, user: str, password: str) -> None:
    """What a team does for a private registry: a pull secret on the namespace's default ServiceAccount."""
    kube.run(
        "create", "secret", "docker-registry", "team-registry", "-n", namespace,
        f"--docker-server={registry}", f"--docker-username={user}", f"--docker-password={password}",
    )  # fmt: skip
    patch = '{"imagePullSecrets": [{"name": "team-registry"}]}'
    kube.run("patch", "serviceaccount", "default", "-n", namespace, "-p", patch)


def _backend_app(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    return copy_bookshop(tmp_path / "bookshop", only=["backend"])


def test_a_registry_behind_auth_works_with_a_docker_config(kube: Kube, remote: Remote, auth_registry: Any) -> None:
    innerloop_cli, namespace, tmp_path = remote.cli, remote.namespace, remote.tmp
    host, user, password = auth_registry
    _pull_secret(kube, namespace, host, user, password)
    app, ports = _backend_app(tmp_path)
    env = {**remote.env, "DOCKER_CONFIG": str(docker_config(tmp_path / "docker", host, user, password))}
    args = ("--default-repo", f"{host}/team", "--insecure-registry")
    with running_up(
        innerloop_cli,
        app,
        ports,
        namespace=namespace,
        log=tmp_path / "up.log",
        env=env,
        args=args,
        probe=("backend", "/books"),
    ) as up:
        up.logged("images: registry: push to")
        assert_pulled_by_digest(kube, namespace, "backend", f"{host}/team")


def test_wrong_credentials_a_refusing_registry_and_no_path_each_fail_in_one_line_before_deploying(
    kube: Kube, remote: Remote, auth_registry: Any
) -> None:
    innerloop_cli, namespace, tmp_path = remote.cli, remote.namespace, remote.tmp
    host, user, _password = auth_registry
    app, _ports = _backend_app(tmp_path)

    def up_fails(env: dict[str, str], *args: str) -> str:
        out = subprocess.run(
            [*innerloop_cli, "up", "-n", namespace, "--no-color", *args],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
            check=False,
        )
        assert out.returncode == 1, (out.stdout, out.stderr)
        [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
        assert "Traceback" not in out.stderr, out.stderr
        assert kube.get_json("deployments,services", "-n", namespace)["items"] == [], "something was deployed"
        return line

    wrong = {**remote.env, "DOCKER_CONFIG": str(docker_config(tmp_path / "wrong", host, user, "not-the-password"))}
    line = up_fails(wrong, "--default-repo", f"{host}/team", "--insecure-registry")
    assert host in line and ("credentials" in line or "unauthorized" in line.lower()), line

    # A registry that refuses every push (read-only for maintenance), as a mirror-only registry would.
    node_ip = host.rpartition(":")[0]
    readonly = LocalRegistry(address=f"{node_ip}:{free_port()}", root=tmp_path / "readonly", read_only=True)
    readonly.start()
    try:
        readonly.wait_ready()
        line = up_fails(remote.env, "--default-repo", f"{readonly.address}/team", "--insecure-registry")
    finally:
        readonly.stop()
    assert readonly.address in line and "refused" in line, line

    # No path at all: an identity that may not read the KEP-1755 ConfigMap, on a cluster innerloop cannot
    # recognise, with no registry named.
    kubeconfig = _least_privilege_remote(kube, namespace, tmp_path, remote.bundled)
    line = up_fails({**remote.env, "KUBECONFIG": str(kubeconfig)})
    assert "--default-repo" in line, line


def _least_privilege_remote(kube: Kube, namespace: str, tmp_path: Path, bundled: BundledCluster) -> Path:
    kube.run("create", "serviceaccount", "dev", "-n", namespace)
    binding = ("rolebinding", "dev-edit", "-n", namespace, "--clusterrole=edit", f"--serviceaccount={namespace}:dev")
    kube.run("create", *binding)
    token = kube.run("create", "token", "dev", "-n", namespace, "--duration=1h").stdout.strip()
    path = remote_kubeconfig(bundled, tmp_path / "dev.kubeconfig")
    config = yaml.safe_load(path.read_text())
    config["users"][0]["user"] = {"token": token}
    config["contexts"][0]["context"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(config))
    return path


def test_doctor_names_the_registry_path_for_the_remote_kubeconfig(kube: Kube, remote: Remote) -> None:
    env = {**os.environ, **remote.env}
    out = subprocess.run([*remote.cli, "doctor"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert advertised_registry(kube) in out.stdout and "KEP-1755" in out.stdout, out.stdout
