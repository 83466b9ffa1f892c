"""`innerloop down` against a restore record a teammate rewrote, on the bundled cluster."""

from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kube import Kube, eventually

ROLE = Path(__file__).resolve().parents[2] / "docs" / "rbac" / "innerloop-developer.yaml"
PROJECT = "downtest"
RECORD = f"innerloop-{PROJECT}-restore"

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: web
        image: innerloop.local/busybox:1.35
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-settings}
data: {mode: dev}
---
apiVersion: v1
kind: Secret
metadata: {name: web-credentials}
stringData: {password: dev-password}
"""


def _project(folder: Path) -> Path:
    (folder / "k8s").mkdir(parents=True)
    (folder / "k8s" / "web.yaml").write_text(WEB)
    config = {"version": 1, "name": PROJECT, "services": {"web": {"manifests": {"files": ["k8s/web.yaml"]}}}}
    (folder / "innerloop.yaml").write_text(yaml.safe_dump(config))
    return folder


def _kept(obj: dict[str, Any]) -> dict[str, Any]:
    """What a restore must give back exactly: everything but what the server manages."""
    meta = obj["metadata"]
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "labels", "annotations")},
        **{k: v for k, v in obj.items() if k not in ("metadata", "status")},
    }


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"t-down-team-b-{secrets.token_hex(3)}"
    kube.run("create", "namespace", name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def test_down_undoes_only_this_projects_objects_whatever_a_teammate_wrote_into_the_record(
    innerloop_cli: list[str], kube: Kube, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    """The attack: mallory, holding only the documented Role, patches the restore record so that the
    next `down` (run by an admin) binds her to cluster-admin, deletes another team's namespace and
    another project's Deployment, and puts her own version of a replaced ConfigMap back. Each is
    refused in one line; the project's own objects are still deleted and restored byte-exactly."""
    ns = ["-n", namespace]
    # What was there before `up`: the team's ConfigMap and Secret that the manifests replace, another project.
    kube.run("create", "configmap", "web-settings", "--from-literal=mode=team", *ns)
    kube.run("create", "secret", "generic", "web-credentials", "--from-literal=password=team-password", *ns)
    kube.run("create", "deployment", "billing", "--image=innerloop.local/busybox:1.35", "--replicas=0", *ns)
    before = {
        kind: _kept(kube.get_json(kind, name, *ns))
        for kind, name in (("cm", "web-settings"), ("secret", "web-credentials"))
    }
    kube.run("apply", "-f", str(ROLE), *ns)
    kube.run("create", "serviceaccount", "mallory", *ns)
    kube.run(
        "create", "rolebinding", "mallory", "--role=innerloop-developer", f"--serviceaccount={namespace}:mallory", *ns
    )
    escalation = f"t-down-mallory-{secrets.token_hex(3)}"

    app = _project(tmp_path / "alice")
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [*innerloop_cli, "up", *ns, "--no-color"], cwd=app, stdout=log.open("w"), stderr=subprocess.STDOUT
    )

    def deployed() -> bool:
        if up.poll() is not None:  # not retried: `up` gave up, its log says why
            raise RuntimeError(f"innerloop up exited {up.returncode}:\n{log.read_text()}")
        return "watching for changes" in log.read_text()

    try:
        eventually(deployed, timeout_s=120)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    assert "Traceback" not in log.read_text()
    # The replaced Secret's original is in a Secret, not in a ConfigMap that the `view` role reads.
    configmaps = json.dumps(kube.get_json("configmaps", *ns))
    assert "team-password" not in configmaps and base64.b64encode(b"team-password").decode() not in configmaps
    record = kube.get_json("secret", RECORD, *ns)
    assert record["type"] == "Opaque"
    [mine] = (app / ".innerloop" / "restore").glob("*.json")
    assert mine.stat().st_mode & 0o077 == 0

    # Mallory rewrites the record with nothing but the Role.
    data = {k: base64.b64decode(v).decode() for k, v in record["data"].items()}
    created, replaced = json.loads(data["created"]), json.loads(data["replaced"])
    created += [f"v1/Namespace/{other_namespace}", "apps/v1/Deployment/billing"]
    replaced[f"rbac.authorization.k8s.io/v1/ClusterRoleBinding/{escalation}"] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": escalation},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "mallory", "namespace": namespace}],
    }
    replaced["v1/ConfigMap/web-settings"]["data"] = {"mode": "mallory"}
    patch = {
        "data": {
            k: base64.b64encode(json.dumps(v).encode()).decode()
            for k, v in (("created", created), ("replaced", replaced))
        }
    }
    kube.run(
        "patch",
        "secret",
        RECORD,
        *ns,
        "--type=merge",
        "-p",
        json.dumps(patch),
        f"--as=system:serviceaccount:{namespace}:mallory",
    )

    try:
        # Bob's checkout of the same project, on another machine: his `down` cannot tell Alice's originals
        # from Mallory's, so it deletes what the project defines and keeps the originals for Alice.
        bob = _project(tmp_path / "bob")
        out = subprocess.run(
            [*innerloop_cli, "down", *ns], cwd=bob, capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 5, out.stderr
        assert sum(escalation in w and "cluster-scoped" in w for w in warnings) == 1
        assert sum(other_namespace in w and "cluster-scoped" in w for w in warnings) == 1
        assert sum("Deployment/billing" in w and "not one of this project's objects" in w for w in warnings) == 1
        assert sum(w.startswith("warning: not restored ") and "--trust-cluster-record" in w for w in warnings) == 2
        assert kube.run("get", "clusterrolebinding", escalation, check=False).returncode != 0
        assert "deletionTimestamp" not in kube.get_json("namespace", other_namespace)["metadata"]
        assert kube.get_json("deployment", "billing", *ns)["metadata"]["name"] == "billing"
        assert kube.get_json("deployments", "-l", "app.kubernetes.io/managed-by=innerloop", *ns)["items"] == []
        assert kube.run("get", "service", "web", *ns, check=False).returncode != 0

        # Alice's `down` restores both originals from her machine's copy, not from the rewritten record.
        out = subprocess.run(
            [*innerloop_cli, "down", *ns], cwd=app, capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert "web-settings: the cluster's record of it differs" in out.stderr
        for kind, name in (("cm", "web-settings"), ("secret", "web-credentials")):
            assert _kept(kube.get_json(kind, name, *ns)) == before[kind], name
        assert kube.run("get", "secret", RECORD, *ns, check=False).returncode != 0
        assert list((app / ".innerloop" / "restore").glob("*.json")) == []
    finally:
        kube.run("delete", "clusterrolebinding", escalation, "--ignore-not-found", check=False)
