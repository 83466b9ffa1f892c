"""The example app rolls out, and its services call each other through Services by DNS name."""

from __future__ import annotations

import json
from typing import Any

from innerloop.cluster.node import BundledCluster
from innerloop.demo import build_example_images, deploy_example, example_dir

from .conftest import run_cli
from .kube import Kube, eventually, free_port, pod_manifest


def _deploy(bundled_cluster: BundledCluster, namespace: str) -> None:
    app = example_dir()
    deploy_example(bundled_cluster, app=app, namespace=namespace, tags=build_example_images(bundled_cluster, app))


def test_request_through_frontend_reaches_backend_from_another_pod(
    bundled_cluster: BundledCluster, kube: Kube, namespace: str
) -> None:
    _deploy(bundled_cluster, namespace)
    ns = kube.get_json("namespace", namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    kube.apply(namespace, pod_manifest("client", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "client")

    def fetch(host: str) -> Any:
        out = kube.run("exec", "-n", namespace, "client", "--", "wget", "-qO-", f"http://{host}:8080/api.json")
        return json.loads(out.stdout)

    for host in ("frontend", f"frontend.{namespace}", f"frontend.{namespace}.svc.cluster.local"):
        # Rolled out is not yet reachable: kube-proxy programs new Services on its next sync.
        chain = eventually(lambda host=host: fetch(host))
        assert chain["service"] == "frontend"
        api = chain["via"][0]
        assert api["service"] == "api"
        backend = api["via"][0]
        assert backend["service"] == "backend"
        assert backend["greeting"] == "hello from backend"
        assert backend["pod"].startswith("backend-")
        assert {b["title"] for b in api["books"]} >= {"Kubernetes Patterns"}


def test_example_pods_are_non_root_and_restricted(bundled_cluster: BundledCluster, kube: Kube, namespace: str) -> None:
    _deploy(bundled_cluster, namespace)
    pods = kube.get_json("pods", "-n", namespace)["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["image"].startswith("innerloop.local/bookshop-")
        out = kube.run(
            "exec", "-n", namespace, pod["metadata"]["name"], "--", "python3", "-c", "import os; print(os.getuid())"
        )
        assert out.stdout.strip() == "65532"


def test_demo_command_serves_the_app_on_localhost(innerloop_cli: list[str], namespace: str) -> None:
    out = run_cli(innerloop_cli, "demo", "--check", "--namespace", namespace, "--port", str(free_port()))
    assert out.returncode == 0, out.stderr
    chain = json.loads(out.stdout)
    assert chain["via"][0]["via"][0]["service"] == "backend"
