"""A small kubectl-driven handle on the test cluster, for end-to-end tests.

The tests prove the cluster itself, so they drive it with the kubectl built
for it (same version), the way a user would.

Timeouts here and in the tests are ceilings for a loaded 2-core machine
(`hack/cpu-hog` beside the suite): they are only reached when something is
wrong, so they cost nothing when it is right. Wait on the condition itself
(`eventually`, `kubectl wait`), never on a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Kube:
    kubectl_bin: Path
    kubeconfig: Path
    images: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args]

    def run(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            self.argv(*args),
            input=input.decode() if isinstance(input, bytes) else input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def apply(self, namespace: str, manifest: str) -> None:
        self.run("apply", "-n", namespace, "-f", "-", input=manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def wait_ready(self, namespace: str, pod: str, timeout_s: int = 300) -> None:
        self.run(
            "wait",
            "-n",
            namespace,
            f"pod/{pod}",
            "--for=condition=Ready",
            f"--timeout={timeout_s}s",
            timeout=timeout_s + 10,
        )


def restricted_security() -> dict[str, Any]:
    """Pod and container securityContext that pass the restricted Pod Security Standard."""
    return {
        "pod": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "container": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def pod_manifest(
    name: str, image: str, command: list[str], *, labels: dict[str, str] | None = None, port: int | None = None
) -> str:
    sec = restricted_security()
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": sec["container"],
    }
    if port is not None:
        container["ports"] = [{"containerPort": port}]
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": sec["pod"],
            "containers": [container],
        },
    }
    return json.dumps(doc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Any, *, timeout_s: float = 120, interval_s: float = 0.2) -> Any:
    """Call ``check`` until it returns a truthy value without raising; re-raise its last error at the end.

    Errors retried: AssertionError, and OSError, HTTPException and JSONDecodeError (a connection or server
    not ready yet: a body cut short by a restarting process is not JSON).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, OSError, http.client.HTTPException, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
