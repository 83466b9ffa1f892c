"""`innerloop up` on a layout nobody wrote for it: one manifest file, two replicas, a StatefulSet, a sidecar.

examples/storefront keeps every object in k8s/app.yaml and each service names
its workload there. Before each service applied only its own objects, the
second service re-applied the first one's Deployment without its dev-mode
patch; before sync followed every pod, one of two replicas kept the old code.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kube import Kube, eventually
from .storefront import Storefront, copy_storefront, storefront_up

DEV_MODE = "innerloop.dev/dev-mode"


@pytest.fixture
def storefront(innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Storefront]:
    with storefront_up(innerloop_cli, kube, namespace, tmp_path) as handle:
        yield handle


def _live_pods(kube: Kube, namespace: str, app: str) -> list[Any]:
    pods = kube.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_one_manifest_file_every_service_in_dev_mode(storefront: Storefront, kube: Kube) -> None:
    ns = storefront.namespace
    for app in ("catalog", "gateway", "ledger"):
        pods = _live_pods(kube, ns, app)
        assert pods, app
        for pod in pods:
            annotations = pod["metadata"].get("annotations") or {}
            assert annotations.get(DEV_MODE) == "true", (app, pod["metadata"]["name"])
    # The unbuilt service runs as written; the sidecar is untouched.
    [cache] = _live_pods(kube, ns, "cache")
    assert DEV_MODE not in (cache["metadata"].get("annotations") or {})
    [gateway] = _live_pods(kube, ns, "gateway")
    containers = {c["name"]: c for c in gateway["spec"]["containers"]}
    assert containers["heartbeat"]["command"][0] == "sh"
    # The whole chain answers through the forward: catalog by a numeric targetPort, the StatefulSet, the cache.
    chain = storefront.get("/")
    assert chain["catalog"]["version"] == "catalog v1"
    assert chain["ledger"]["service"] == "ledger"
    assert chain["cache"] == {"ok": True}
    status = storefront.status()["services"]
    for name in ("catalog", "gateway", "ledger"):
        assert status[name]["pod"], name
        assert all(r["state"] == "in sync" for r in status[name]["replicas"].values()), status[name]
    assert len(status["catalog"]["replicas"]) == 2
    # The shared ConfigMap is applied once, by one service, and every object is recorded once for `down`.
    record = kube.get_json("secret", "innerloop-storefront-restore", "-n", ns)  # a Secret: it may hold Secrets
    created = yaml.safe_load(base64.b64decode(record["data"]["created"]))
    assert sorted(created) == sorted(set(created))
    assert len(created) == 13  # 1 ConfigMap, 4 workloads, 5 Services, 3 agent token Secrets
    down = subprocess.run(
        [*storefront.cli, "down", "-n", ns], cwd=storefront.dir, capture_output=True, text=True, check=False
    )
    assert down.returncode == 0, down.stderr


def test_every_replica_serves_an_edit_and_a_new_replica_gets_the_current_tree(
    storefront: Storefront, kube: Kube
) -> None:
    source = storefront.dir / "catalog" / "app.py"
    source.write_text(source.read_text().replace('VERSION = "catalog v1"', 'VERSION = "catalog v2"'))

    def every_replica_synced() -> bool:
        replicas = storefront.replicas("catalog")
        return len(replicas) == 2 and all(r["syncs"] >= 1 and r["state"] == "in sync" for r in replicas.values())

    eventually(every_replica_synced, timeout_s=30)
    # Through the calling service (kube-proxy balancing over both pods): nothing old is left.
    answers = [storefront.get("/catalog") for _ in range(20)]
    assert Counter(a["version"] for a in answers) == {"catalog v2": 20}, answers
    # A replica that appears later first gets what the others have.
    kube.run("scale", "deployment/catalog", "--replicas=3", "-n", storefront.namespace)

    def three_in_sync() -> bool:
        replicas = storefront.replicas("catalog")
        return len(replicas) == 3 and all(r["state"] == "in sync" for r in replicas.values())

    eventually(three_in_sync, timeout_s=120, interval_s=0.5)
    newest = max(_live_pods(kube, storefront.namespace, "catalog"), key=lambda p: p["metadata"]["creationTimestamp"])
    name = newest["metadata"]["name"]
    out = kube.run(
        "exec",
        "-n",
        storefront.namespace,
        str(name),
        "-c",
        "catalog",
        "--",
        "python3",
        "-c",
        "print(open('/app/app.py').read())",
    )
    assert 'VERSION = "catalog v2"' in out.stdout
    assert f"catalog: in sync in {name}" in storefront.log.read_text()


def test_a_local_port_in_use_stops_up_before_it_deploys(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    app, port = copy_storefront(tmp_path / "storefront")
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('ready', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        started = time.monotonic()
        done = subprocess.run(
            [*innerloop_cli, "up", "-n", namespace], cwd=app, capture_output=True, text=True, check=False, timeout=120
        )
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [e for e in done.stderr.splitlines() if e.startswith("error:")]
    assert "innerloop.yaml:" in line and ": services.gateway.ports.0.local: " in line, line
    assert f"local port {port} on 127.0.0.1 is in use by python3 (pid {holder.pid}" in line, line
    assert "`local: 0` picks a free one" in line
    assert elapsed < 60
    # Nothing was deployed: no workload, no restore record.
    assert (
        kube.get_json(
            "deployments,statefulsets,configmaps", "-n", namespace, "-l", "app.kubernetes.io/managed-by=innerloop"
        )["items"]
        == []
    )


def _up_once(cli: list[str], namespace: str, app: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli, "up", "-n", namespace], cwd=app, capture_output=True, text=True, check=False, timeout=120
    )


def test_a_configuration_up_cannot_serve_is_refused_with_its_position(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    app, _ = copy_storefront(tmp_path / "storefront")
    config = (app / "innerloop.yaml").read_text()
    broken = config.replace("workload: deployment/gateway", "workload: deployment/gatewy")
    (app / "innerloop.yaml").write_text(broken)
    done = subprocess.run(
        [*innerloop_cli, "up", "-n", namespace], cwd=app, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line_no = next(i for i, text in enumerate(broken.splitlines(), 1) if "deployment/gatewy" in text)
    assert (
        f"innerloop.yaml:{line_no}:15: services.gateway.workload: no deployment/gatewy in this service's manifests"
        in done.stderr
    )
    # Two services on one workload.
    shared = config.replace("workload: statefulset/ledger", "workload: deployment/catalog")
    (app / "innerloop.yaml").write_text(shared)
    done = _up_once(innerloop_cli, namespace, app)
    assert done.returncode == 1
    line_no = [i for i, text in enumerate(shared.splitlines(), 1) if "workload: deployment/catalog" in text][-1]
    assert f"innerloop.yaml:{line_no}:15: services.ledger.workload: " in done.stderr, done.stderr
    assert "deployment/catalog is already developed by service 'catalog'" in done.stderr
    assert kube.get_json("deployments,statefulsets", "-n", namespace)["items"] == []


def test_local_port_zero_picks_a_free_port_that_status_shows(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    with storefront_up(innerloop_cli, kube, namespace, tmp_path, port=0) as storefront:
        assert storefront.port != 0
        assert storefront.get("/")["service"] == "gateway"
        assert f"gateway: forwarding 127.0.0.1:{storefront.port} -> http" in storefront.log.read_text()
