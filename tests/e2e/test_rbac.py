"""RBAC is enforced: a ServiceAccount bound to a namespaced Role gets exactly what it grants."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

from .kube import Kube

ROLE = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: dev}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader-config-writer}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader-config-writer}
subjects:
- {kind: ServiceAccount, name: dev}
"""


def test_service_account_can_do_what_its_role_grants_and_nothing_else(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.apply(namespace, ROLE)
    token = kube.run("create", "token", "dev", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    sa_config = tmp_path / "sa.kubeconfig"
    sa_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": cluster["server"], "certificate-authority": str(ca)}}],
                "users": [{"name": "dev", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "dev", "namespace": namespace}}],
                "current-context": "c",
            }
        )
    )

    def as_dev(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kube.kubectl_bin), f"--kubeconfig={sa_config}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # Granted.
    listed = as_dev("get", "pods")
    assert listed.returncode == 0, listed.stderr
    created = as_dev("create", "configmap", "made-by-dev", "--from-literal=a=b")
    assert created.returncode == 0, created.stderr
    assert kube.run("get", "configmap", "made-by-dev", "-n", namespace).returncode == 0

    # Refused: other verbs, other resources, other namespaces, cluster scope.
    for args in (
        ("delete", "configmap", "made-by-dev"),
        ("get", "secrets"),
        ("create", "deployment", "x", "--image=busybox"),
        ("get", "pods", "-n", "kube-system"),
        ("get", "nodes"),
    ):
        out = as_dev(*args)
        assert out.returncode != 0, f"{args} should be forbidden"
        assert "Forbidden" in out.stderr or "forbidden" in out.stderr, out.stderr
    assert kube.run("get", "configmap", "made-by-dev", "-n", namespace).returncode == 0
