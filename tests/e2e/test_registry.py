"""The OCI registry beside the bundled cluster: advertised (KEP-1755), filled at `up`, pulled from by the kubelet.

Every pull here is a real one: the pods use `imagePullPolicy: Always` and names that nothing was
imported under (`<registry>/library/busybox:1.35`, `busybox:1.35`), and their `imageID` must carry
the digest the registry serves, which only a pull through containerd can give.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from innerloop.cluster import registry as bundled_registry
from innerloop.cluster.node import BundledCluster

from .conftest import RegistryLogin, run_cli
from .kube import Kube, eventually, restricted_security

BUSYBOX = bundled_registry.PUBLISHED["busybox"]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)


def served_digest(ref: str, *, creds: str | None = None) -> str:
    """The manifest digest a plain-HTTP registry serves for ``ref``."""
    args = ["inspect", "--tls-verify=false", "--format={{.Digest}}"]
    if creds is not None:
        args.append(f"--creds={creds}")
    out = skopeo(*args, f"docker://{ref}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def pulling_pod(name: str, image: str, *, pull_secret: str | None = None, command: list[str] | None = None) -> str:
    """A restricted-PSS pod whose image the kubelet must pull (never the imported copy)."""
    sec = restricted_security()
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 1,
        "restartPolicy": "Never",
        "securityContext": sec["pod"],
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "Always",
                "command": command or ["sleep", "3600"],
                "securityContext": sec["container"],
            }
        ],
    }
    if pull_secret is not None:
        spec["imagePullSecrets"] = [{"name": pull_secret}]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def container_status(kube: Kube, namespace: str, pod: str) -> dict[str, Any]:
    statuses = kube.get_json("pod", pod, "-n", namespace).get("status", {}).get("containerStatuses", [])
    assert statuses, f"pod {pod} has no container status yet"
    return dict(statuses[0])


def assert_pulled(kube: Kube, namespace: str, pod: str, image: str) -> None:
    """The kubelet reports it pulled ``image`` for ``pod`` (its status names may be other names of that image)."""

    def pulled() -> bool:
        events = kube.get_json("events", "-n", namespace, f"--field-selector=involvedObject.name={pod},reason=Pulled")
        messages = [e.get("message", "") for e in events["items"]]
        assert any(m.startswith(f'Successfully pulled image "{image}"') for m in messages), messages
        return True

    eventually(pulled, timeout_s=30)


def assert_pulled_digest(status: dict[str, Any], digest: str) -> None:
    """The container runs the manifest the registry serves (a repo digest: only a pull records one).

    containerd keeps one image per content with all its names, and the status shows the first
    ones (an earlier pull's ``docker.io/...``, say), so only the digest counts here.
    """
    name, _, pulled = status["imageID"].partition("@")
    assert pulled == digest, status["imageID"]
    assert not name.startswith("innerloop.local/"), "the imported copy ran, not a pulled one"


def test_kep_1755_configmap_advertises_the_registry(kube: Kube, registry: str) -> None:
    cm = kube.get_json("configmap", "local-registry-hosting", "-n", "kube-public")
    hosting = yaml.safe_load(cm["data"]["localRegistryHosting.v1"])
    assert hosting["host"] == registry
    assert hosting["hostFromContainerRuntime"] == registry
    assert hosting["hostFromClusterNetwork"] == registry


def test_the_bundled_images_are_published_under_public_names(registry: str) -> None:
    for name in bundled_registry.PUBLISHED.values():
        out = skopeo("inspect", "--tls-verify=false", f"docker://{registry}/{name}")
        assert out.returncode == 0, f"{name}: {out.stderr}"
        doc = json.loads(out.stdout)
        assert doc["Architecture"] == "amd64"
        assert doc["Digest"].startswith("sha256:")


def test_cluster_status_shows_the_registry(innerloop_cli: list[str], registry: str) -> None:
    out = run_cli(innerloop_cli, "cluster", "status")
    assert out.returncode == 0, out.stderr
    assert f"registry: {registry}" in out.stdout
    assert "registry                 running, pid" in out.stdout
    doc = json.loads(run_cli(innerloop_cli, "cluster", "status", "--json").stdout)
    assert doc["registry"] == registry


def test_pushing_what_is_there_pushes_nothing(bundled_cluster: BundledCluster, registry: str) -> None:
    busybox = bundled_cluster.paths.images / next(
        p.name for p in bundled_cluster.paths.images.glob("busybox-1.35-*.tar")
    )
    assert bundled_cluster.push_to_registry({BUSYBOX: busybox}) == []


def test_the_kubelet_pulls_from_the_registry(kube: Kube, namespace: str, registry: str) -> None:
    image = f"{registry}/{BUSYBOX}"
    kube.apply(namespace, pulling_pod("from-registry", image))
    kube.wait_ready(namespace, "from-registry")
    status = container_status(kube, namespace, "from-registry")
    assert_pulled(kube, namespace, "from-registry", image)
    assert_pulled_digest(status, served_digest(image))


def test_docker_hub_names_pull_through_the_mirror(kube: Kube, namespace: str, registry: str) -> None:
    # What a manifest written for Docker Hub says; Docker Hub itself is unreachable here.
    kube.apply(namespace, pulling_pod("from-mirror", "busybox:1.35"))
    kube.wait_ready(namespace, "from-mirror")
    status = container_status(kube, namespace, "from-mirror")
    assert_pulled(kube, namespace, "from-mirror", "busybox:1.35")
    assert_pulled_digest(status, served_digest(f"{registry}/{BUSYBOX}"))


def test_pods_reach_the_registry_at_the_advertised_address(kube: Kube, namespace: str, registry: str) -> None:
    # KEP-1755's hostFromClusterNetwork: an in-cluster client (a builder, a pipeline) at the same address.
    pod = pulling_pod("client", f"{registry}/{BUSYBOX}", command=["wget", "-q", "-O-", f"http://{registry}/v2/"])
    kube.apply(namespace, pod)

    def finished() -> dict[str, Any]:
        state = container_status(kube, namespace, "client")["state"]
        assert "terminated" in state, state
        return dict(state["terminated"])

    assert eventually(finished)["exitCode"] == 0
    assert kube.run("logs", "-n", namespace, "client").stdout.strip() == "{}"


@pytest.fixture(scope="module")
def pushed(auth_registry: RegistryLogin, registry: str) -> str:
    """busybox, copied into the registry behind auth with its credentials."""
    creds = f"{auth_registry.user}:{auth_registry.password}"
    image = f"{auth_registry.address}/team/busybox:1.35"
    out = skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"--dest-creds={creds}",
        f"docker://{registry}/{BUSYBOX}",
        f"docker://{image}",
    )
    assert out.returncode == 0, out.stderr
    return image


class TestRegistryBehindAuth:
    def test_refuses_without_credentials_and_with_wrong_ones(self, auth_registry: RegistryLogin) -> None:
        ref = f"docker://{auth_registry.address}/library/nothing:1"
        anonymous = skopeo("inspect", "--tls-verify=false", ref)
        assert anonymous.returncode != 0
        assert "authentication required" in anonymous.stderr or "unauthorized" in anonymous.stderr
        wrong = skopeo("inspect", "--tls-verify=false", f"--creds={auth_registry.user}:not-it", ref)
        assert wrong.returncode != 0
        assert "unauthorized" in wrong.stderr or "authentication required" in wrong.stderr

    def test_serves_what_was_pushed_with_credentials(self, auth_registry: RegistryLogin, pushed: str) -> None:
        creds = f"{auth_registry.user}:{auth_registry.password}"
        assert served_digest(pushed, creds=creds).startswith("sha256:")

    def test_the_kubelet_pulls_with_an_image_pull_secret(
        self, kube: Kube, namespace: str, auth_registry: RegistryLogin, pushed: str
    ) -> None:
        kube.run(
            "create",
            "secret",
            "docker-registry",
            "pull",
            "-n",
            namespace,
            f"--docker-server={auth_registry.address}",
            f"--docker-username={auth_registry.user}",
            f"--docker-password={auth_registry.password}",
        )
        kube.apply(namespace, pulling_pod("with-secret", pushed, pull_secret="pull"))
        kube.apply(namespace, pulling_pod("without-secret", pushed))
        kube.wait_ready(namespace, "with-secret")
        creds = f"{auth_registry.user}:{auth_registry.password}"
        digest = served_digest(pushed, creds=creds)
        status = container_status(kube, namespace, "with-secret")
        assert_pulled(kube, namespace, "with-secret", pushed)
        assert_pulled_digest(status, digest)

        def refused() -> str:
            waiting = container_status(kube, namespace, "without-secret")["state"].get("waiting", {})
            assert waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"), waiting
            return str(waiting.get("message", ""))

        message = eventually(refused)
        assert "401" in message or "unauthorized" in message.lower(), message
