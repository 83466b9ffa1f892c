"""Pod Security admission is enforced: restricted namespaces refuse privileged pods."""

from __future__ import annotations

import json

from .kube import Kube, pod_manifest


def _privileged_pod(image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                        "securityContext": {"privileged": True},
                    }
                ]
            },
        }
    )


def test_restricted_namespace_rejects_privileged_and_accepts_compliant(kube: Kube, namespace: str) -> None:
    busybox = kube.images["busybox"]
    # Without the label, the same pod passes admission (server-side dry run: nothing runs).
    out = kube.run("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=_privileged_pod(busybox), check=False)
    assert out.returncode == 0, out.stderr

    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    out = kube.run("apply", "-n", namespace, "-f", "-", input=_privileged_pod(busybox), check=False)
    assert out.returncode != 0
    assert "violates PodSecurity" in out.stderr and "restricted" in out.stderr
    assert kube.run("get", "pod", "privileged", "-n", namespace, check=False).returncode != 0

    kube.apply(namespace, pod_manifest("compliant", busybox, ["sleep", "3600"]))
    kube.wait_ready(namespace, "compliant")
