"""``check_agent_pod``: is this pod the one `up` deployed? Pods as the API server returns them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from innerloop.deploy.devmode import DevMode, apply_dev_mode, check_agent_pod

WORKLOAD: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "web:1",
                        "command": ["python", "app.py"],
                        "env": [
                            {"name": "EMPTY", "value": ""},
                            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                        "ports": [{"containerPort": 8080}],
                        "resources": {"limits": {"cpu": "0.5"}},
                    }
                ]
            },
        },
    },
}


def planned() -> dict[str, Any]:
    dev = DevMode(agent_image="agent:1", token_secret="s", command=["python", "app.py"], sync_targets=["/app"])
    return apply_dev_mode(WORKLOAD, dev)


def as_the_api_server_returns_it(
    workload: dict[str, Any], *, owner: str = "web-5d8f7", template_hash: str = "5d8f7"
) -> dict[str, Any]:
    """The pod the controller makes from ``workload``'s template, with the defaults the API server adds."""
    spec = copy.deepcopy(workload["spec"]["template"]["spec"])
    for group in ("initContainers", "containers"):
        for container in spec.get(group, []):
            container.setdefault("imagePullPolicy", "IfNotPresent")
            container["terminationMessagePath"] = "/dev/termination-log"
            container["terminationMessagePolicy"] = "File"
            container["resources"] = {"limits": {"cpu": "500m"}} if container.get("resources") else {}
            container["env"] = [{k: v for k, v in e.items() if v != ""} for e in container.get("env", [])]
            for e in container["env"]:
                if "valueFrom" in e:
                    e["valueFrom"]["fieldRef"]["apiVersion"] = "v1"
            for port in container.get("ports", []):
                port["protocol"] = "TCP"
            container.setdefault("volumeMounts", []).append(
                {
                    "name": "kube-api-access-x7k2p",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": True,
                }
            )
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            volume["secret"].setdefault("defaultMode", 420)
    spec["volumes"].append(
        {"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    )
    spec.update(dnsPolicy="ClusterFirst", restartPolicy="Always", nodeName="node-1", schedulerName="default-scheduler")
    return {
        "metadata": {
            "name": f"{owner}-abcde",
            "labels": {"app": "web", "pod-template-hash": template_hash},
            "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": True, "uid": "u"}],
        },
        "spec": spec,
    }


def test_the_pod_up_deployed_passes() -> None:
    assert check_agent_pod(as_the_api_server_returns_it(planned()), [planned()]) is None


def _fake_agent_image(w: dict[str, Any]) -> None:
    w["spec"]["template"]["spec"]["initContainers"][0]["image"] = "evil/agent:1"


def _fake_agent_command(w: dict[str, Any]) -> None:
    w["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "nc -l 127.0.0.1 47600"]


def _sidecar(w: dict[str, Any]) -> None:
    w["spec"]["template"]["spec"]["containers"].append({"name": "helper", "image": "evil:1"})


def _pythonpath(w: dict[str, Any]) -> None:
    w["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "PYTHONPATH", "value": "/evil"})


def _env_from(w: dict[str, Any]) -> None:
    w["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "evil"}}]


def _runtime_volume(w: dict[str, Any]) -> None:
    volumes = w["spec"]["template"]["spec"]["volumes"]
    volumes[0] = {"name": volumes[0]["name"], "configMap": {"name": "evil-agent"}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_fake_agent_image, "innerloop-install: its image is not the one"),
        (_fake_agent_command, "command is not the one"),
        (_sidecar, "its containers are web, helper"),
        (_pythonpath, "env is not the one"),
        (_env_from, "envFrom, which innerloop did not set"),
        (_runtime_volume, "volumes are not the ones"),
    ],
    ids=["agent image", "agent command", "sidecar", "PYTHONPATH", "envFrom", "runtime volume"],
)
def test_a_pod_from_a_patched_template_is_refused(change: Any, reason: str) -> None:
    """Attack: a teammate with the Role patches the Deployment to serve a fake agent (and may restore it after).

    Before the fix the CLI greeted whatever answered on the agent's port, with its token.
    """
    tampered = planned()
    change(tampered)
    found = check_agent_pod(as_the_api_server_returns_it(tampered), [planned()])
    assert found is not None and reason in found, found


def test_a_pod_of_another_workload_with_the_same_labels_is_refused() -> None:
    """Attack: create a Deployment ``web-x`` whose pods carry ``app: web`` (the Role allows creating Deployments)."""
    pod = as_the_api_server_returns_it(planned(), owner="web-x-9f9f9", template_hash="9f9f9")
    assert "not created by Deployment web" in str(check_agent_pod(pod, [planned()]))


def test_a_pod_of_an_earlier_plan_of_this_up_passes() -> None:
    """A redeploy rolls out a new template; the old pods still running are this up's too."""
    old, new = planned(), planned()
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "web:2"
    assert check_agent_pod(as_the_api_server_returns_it(old), [old, new]) is None
    assert check_agent_pod(as_the_api_server_returns_it(old), [new]) is not None
