"""The example app: five services in three languages, one call chain, restricted Pod Security.

frontend -> api (Python standard library, the built-in builder) -> backend (Flask + gunicorn,
``pip install`` in its Dockerfile) -> reviews (Express, ``npm ci``) -> inventory (Go, a
multi-stage build onto distroless static). The Dockerfiles with RUN are built by buildah, from
bases named as in any project (``FROM python:3.11-slim``) that the registries.conf in the
environment resolves to the bundled registry.

- deployed as ``innerloop demo`` deploys it, the services call each other through Services by DNS
  name from another pod, and every pod runs non-root under the restricted standard;
- under ``innerloop up``: the whole chain answers; an edit of the Flask backend and of the Node
  service is served by the same pod (the agent restarts gunicorn / node: no new pod, no container
  restart); an edit of inventory's Go source, which no sync rule covers, rebuilds the image and
  redeploys it, and the new binary answers.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from innerloop.cluster.node import BundledCluster
from innerloop.demo import build_example_images, deploy_example, example_dir

from .bookshop import copy_bookshop, running_up
from .conftest import run_cli
from .kube import Kube, eventually, free_port, pod_manifest

SERVICES = ("frontend", "api", "backend", "reviews", "inventory")
# inventory's edit is the same text every run: a warm run finds the edited image by its input hash
# (a cold one compiles it), and the redeploy is exercised either way.
GO_EDIT = "hello from an edited inventory"


def _deploy(bundled_cluster: BundledCluster, namespace: str) -> None:
    app = example_dir()
    deploy_example(bundled_cluster, app=app, namespace=namespace, tags=build_example_images(bundled_cluster, app))


def _hops(chain: Any) -> dict[str, Any]:
    """Each service's answer in the chain, by name; {} past a hop that could not reach the next
    (while a service restarts, the one before it answers with an error entry instead)."""
    hops = {"frontend": chain}
    for caller, callee in itertools.pairwise(SERVICES):
        hops[callee] = (hops[caller].get("via") or [{}])[0]
    return hops


def _pod(kube: Kube, namespace: str, app: str) -> dict[str, Any]:
    pods = kube.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/name={app}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = live[0]
    return pod


def test_the_chain_answers_across_services_by_dns_name_and_every_pod_is_restricted(
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
        hops = _hops(eventually(lambda host=host: fetch(host)))
        for name in SERVICES:
            assert hops[name]["service"] == name, hops[name]
        for name in SERVICES[1:]:
            assert hops[name]["pod"].startswith(f"{name}-"), hops[name]
        assert hops["backend"]["greeting"] == "hello from backend"
        assert hops["reviews"]["greeting"] == "hello from reviews"
        assert hops["inventory"]["greeting"] == "hello from inventory"
        # Data from every hop reaches the front: ratings from Node, stock from Go.
        books = {b["title"]: b for b in hops["api"]["books"]}
        assert books["Kubernetes Patterns"]["rating"] == 4.2
        assert [r["inStock"] for r in hops["reviews"]["reviews"]] == [True, True, False]

    pods = [p for p in kube.get_json("pods", "-n", namespace)["items"] if p["metadata"]["name"] != "client"]
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods) == sorted(SERVICES)
    for pod in pods:
        # Admitted under enforce=restricted, and started: the kubelet checked runAsNonRoot against the image.
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["image"].startswith("innerloop.local/bookshop-")
    # Each runtime's own view of its user (distroless inventory has nothing to run but itself).
    probes = {
        "backend": ["python3", "-c", "import os; print(os.getuid())"],
        "api": ["python3", "-c", "import os; print(os.getuid())"],
        "reviews": ["node", "-e", "console.log(process.getuid())"],
    }
    expected = {"backend": "65532", "api": "65532", "reviews": "1000"}
    for name, argv in probes.items():
        out = kube.run("exec", "-n", namespace, f"deploy/{name}", "--", *argv)
        assert out.stdout.strip() == expected[name], name


def test_demo_command_serves_the_app_on_localhost(innerloop_cli: list[str], namespace: str) -> None:
    out = run_cli(innerloop_cli, "demo", "--check", "--namespace", namespace, "--port", str(free_port()))
    assert out.returncode == 0, out.stderr
    hops = _hops(json.loads(out.stdout))
    assert [hops[name]["service"] for name in SERVICES] == list(SERVICES)


def test_up_serves_the_five_service_chain_and_each_language_edit(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    app, ports = copy_bookshop(tmp_path / "bookshop")
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    with running_up(innerloop_cli, app, ports, namespace=namespace, log=tmp_path / "up.log") as up:

        def greetings() -> dict[str, str]:
            hops = _hops(up.get())
            return {name: str(hops[name].get("greeting")) for name in ("backend", "reviews", "inventory")}

        assert eventually(lambda: greetings()["inventory"] == "hello from inventory")
        log = up.log.read_text()
        for name in ("backend", "reviews", "inventory"):  # RUN / COPY --from: a real builder, and why
            assert re.search(rf"{name}: {name}/Dockerfile:\d+: .* needs a real builder: using buildah", log), name
        for name in ("api", "frontend"):
            assert f"{name}: the built-in builder" in log
        # Each service is forwarded on its own local port, and answers there.
        assert up.get("inventory", "/inventory")["greeting"] == "hello from inventory"
        assert up.get("reviews", "/reviews")["service"] == "reviews"

        pods = {name: _pod(kube, namespace, name)["metadata"]["name"] for name in ("backend", "reviews")}
        flask = app / "backend" / "app.py"
        flask.write_text(flask.read_text().replace('"hello from backend"', '"hello from an edited flask"'))
        eventually(lambda: greetings()["backend"] == "hello from an edited flask", interval_s=0.1)
        node = app / "reviews" / "src" / "server.js"
        node.write_text(node.read_text().replace('"hello from reviews"', '"hello from an edited express"'))
        eventually(lambda: greetings()["reviews"] == "hello from an edited express", interval_s=0.1)
        for name, before in pods.items():
            pod = _pod(kube, namespace, name)
            # Same pod, same container: the agent restarted gunicorn / node with the new code.
            assert pod["metadata"]["name"] == before, name
            assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, name
        up.logged("backend: synced 1 file(s)")
        up.logged("reviews: synced 1 file(s)")
        # gunicorn's access log, through innerloop's log follower.
        up.logged('"GET /books HTTP/1.1" 200')

        image_before = kube.get_json("deployment", "inventory", "-n", namespace)["spec"]["template"]["spec"]
        go = app / "inventory" / "main.go"
        go.write_text(go.read_text().replace('"hello from inventory"', f'"{GO_EDIT}"'))
        up.logged("inventory: inventory/main.go changed, which sync cannot serve: redeploying")
        eventually(lambda: greetings()["inventory"] == GO_EDIT, timeout_s=600)
        image_after = kube.get_json("deployment", "inventory", "-n", namespace)["spec"]["template"]["spec"]
        assert image_after["containers"][0]["image"] != image_before["containers"][0]["image"]
        up.logged("inventory: redeployed")
        # The other services kept their pods through inventory's redeploy.
        assert _pod(kube, namespace, "backend")["metadata"]["name"] == pods["backend"]
        assert greetings() == {
            "backend": "hello from an edited flask",
            "reviews": "hello from an edited express",
            "inventory": GO_EDIT,
        }
