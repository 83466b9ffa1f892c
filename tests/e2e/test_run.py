"""`innerloop run`: a local command sees the pod's env (Service links too) and its ConfigMap/Secret files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .kube import Kube, restricted_security

OBJECTS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {LOG_LEVEL: debug, FEATURE: "on", app.yaml: "greeting: hi\\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {DB_PASSWORD: s3cret, token: abc123}
---
apiVersion: v1
kind: Service
metadata: {name: backend-db}
spec:
  selector: {app: nothing}
  ports: [{name: pg, port: 5432}]
"""


def test_run_gives_a_local_command_the_pods_context(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.apply(namespace, OBJECTS)
    sec = restricted_security()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "target", "labels": {"app": "target"}},
        "spec": {
            "securityContext": sec["pod"],
            "containers": [
                {
                    "name": "app",
                    "image": kube.images["busybox"],
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "securityContext": sec["container"],
                    "env": [
                        {"name": "PLAIN", "value": "literal"},
                        {"name": "DERIVED", "value": "x-$(PLAIN)"},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "DB_PASSWORD"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {
                            "name": "ABSENT",
                            "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
                        },
                    ],
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/app"},
                        {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "config",
                    "configMap": {"name": "settings", "items": [{"key": "app.yaml", "path": "app.yaml"}]},
                },
                {"name": "creds", "secret": {"secretName": "creds"}},
            ],
        },
    }
    kube.apply(namespace, json.dumps(pod))
    kube.wait_ready(namespace, "target")
    script = (
        "import json, os\n"
        "mounts = json.loads(os.environ['INNERLOOP_MOUNTS'])\n"
        "print(json.dumps({k: os.environ.get(k) for k in ['PLAIN', 'DERIVED', 'PASSWORD', 'POD_NAME', 'ABSENT',"
        " 'CFG_LOG_LEVEL', 'CFG_FEATURE', 'BACKEND_DB_SERVICE_PORT', 'BACKEND_DB_SERVICE_HOST']}))\n"
        "print(open(os.path.join(mounts['/etc/app'], 'app.yaml')).read().strip())\n"
        "print(open(os.path.join(mounts['/var/run/creds'], 'token')).read())\n"
        "print(oct(os.stat(os.path.join(mounts['/var/run/creds'], 'token')).st_mode & 0o777))\n"
    )
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    out = subprocess.run(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app=target", "--", "python3", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    values = json.loads(lines[0])
    service_ip = kube.get_json("service", "backend-db", "-n", namespace)["spec"]["clusterIP"]
    assert values == {
        "PLAIN": "literal",
        "DERIVED": "x-literal",
        "PASSWORD": "s3cret",
        "POD_NAME": "target",
        "ABSENT": None,
        "CFG_LOG_LEVEL": "debug",
        "CFG_FEATURE": "on",
        "BACKEND_DB_SERVICE_PORT": "5432",
        "BACKEND_DB_SERVICE_HOST": service_ip,
    }
    assert lines[1:] == ["greeting: hi", "abc123", "0o600"]
    assert "optional configMap nope key k is missing" in out.stderr
    # The Secret's files were there while the command ran; they are deleted with it, and never committed.
    assert list((tmp_path / ".innerloop" / "run").iterdir()) == []
    assert (tmp_path / ".innerloop" / ".gitignore").read_text().startswith("*\n")
    # The exit code of the command is the exit code of `innerloop run`.
    failing = subprocess.run(
        [*innerloop_cli, "run", "-n", namespace, "--pod", "target", "--", "python3", "-c", "raise SystemExit(7)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert failing.returncode == 7
    missing = subprocess.run(
        [*innerloop_cli, "run", "-n", namespace, "--pod", "nope", "--", "true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert missing.returncode == 1 and "no pod nope" in missing.stderr
