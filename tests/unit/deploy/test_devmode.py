"""The dev-mode patch: restricted-compliant, shell-less, original command preserved."""

from __future__ import annotations

from typing import Any

import pytest

from innerloop.builders.agent_image import MOUNT_ROOT, runtime_command
from innerloop.deploy.devmode import DevMode, DevModeError, app_pod, apply_dev_mode, original_command


def deployment(**container: Any) -> dict[str, Any]:
    c = {"name": "api", "image": "innerloop.local/bookshop-api:abc", **container}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"securityContext": {"runAsNonRoot": True}, "containers": [c]},
            },
        },
    }


DEV = DevMode(
    agent_image="innerloop.local/agent:1",
    token_secret="innerloop-api-agent",
    command=["/usr/bin/python3", "/app/app.py"],
    sync_targets=["/app/"],
    env={"DEBUG": "1"},
)


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def test_app_runs_under_the_agent_with_its_original_command() -> None:
    patched = apply_dev_mode(deployment(args=["--ignored"]), DEV)
    app = pod(patched)["containers"][0]
    assert app["command"][: len(runtime_command(MOUNT_ROOT))] == runtime_command(MOUNT_ROOT)
    assert app["command"][-3:] == ["--", "/usr/bin/python3", "/app/app.py"]
    assert "args" not in app
    assert {"name": "DEBUG", "value": "1"} in app["env"]


def test_sync_target_is_a_seeded_writable_volume_and_root_stays_read_only() -> None:
    patched = apply_dev_mode(deployment(securityContext={"readOnlyRootFilesystem": True}), DEV)
    spec = pod(patched)
    app = spec["containers"][0]
    assert {"name": "innerloop-sync-0", "mountPath": "/app"} in app["volumeMounts"]
    assert {"name": "innerloop-sync-0", "emptyDir": {}} in spec["volumes"]
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    install, seed = spec["initContainers"][:2]
    assert install["image"] == "innerloop.local/agent:1"
    assert seed["image"] == app["image"], "the seed runs the app's own image to copy its files"
    assert seed["command"][-3:] == ["seed", "/app/", "/.innerloop-sync/0"]


def test_every_added_container_passes_restricted() -> None:
    spec = pod(apply_dev_mode(deployment(), DEV))
    for c in spec["initContainers"]:
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert not any("hostPath" in v for v in volumes.values())
    assert volumes["innerloop-token"]["secret"]["secretName"] == "innerloop-api-agent"


def test_input_is_not_modified() -> None:
    original = deployment()
    before = repr(original)
    apply_dev_mode(original, DEV)
    assert repr(original) == before


def test_several_containers_need_a_name() -> None:
    doc = deployment()
    pod(doc)["containers"].append({"name": "sidecar", "image": "x"})
    with pytest.raises(DevModeError, match="container:"):
        apply_dev_mode(doc, DEV)
    patched = apply_dev_mode(doc, DevMode(**{**DEV.__dict__, "container": "api"}))
    assert pod(patched)["containers"][1]["image"] == "x"


def test_relative_sync_target_is_refused() -> None:
    with pytest.raises(DevModeError, match="absolute"):
        apply_dev_mode(deployment(), DevMode(**{**DEV.__dict__, "sync_targets": ["app"]}))


@pytest.mark.parametrize(
    ("container", "entrypoint", "cmd", "expected"),
    [
        ({}, ["python3"], ["app.py"], ["python3", "app.py"]),
        ({"args": ["other.py"]}, ["python3"], ["app.py"], ["python3", "other.py"]),
        ({"command": ["node"]}, ["python3"], ["app.py"], ["node"]),
        ({"command": ["node"], "args": ["x.js"]}, ["python3"], ["app.py"], ["node", "x.js"]),
    ],
)
def test_original_command_follows_kubernetes_rules(
    container: dict[str, Any], entrypoint: list[str], cmd: list[str], expected: list[str]
) -> None:
    assert original_command(container, entrypoint, cmd) == expected


def _as_pod(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod a Deployment's template makes (metadata and spec), as the API returns it."""
    template = doc["spec"]["template"]
    return {"metadata": {"name": "api-1", **template.get("metadata", {})}, "spec": template["spec"]}


def test_app_pod_takes_out_exactly_what_the_patch_added() -> None:
    original = deployment(
        command=["/usr/bin/python3", "/app/app.py"],
        env=[{"name": "BACKEND_URL", "value": "http://backend:8080"}],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/app"}],
    )
    spec = pod(original)
    spec["volumes"] = [{"name": "cfg", "configMap": {"name": "settings"}}]
    spec["initContainers"] = [{"name": "migrate", "image": "x"}]
    dev = DevMode(
        agent_image="a:1",
        token_secret="innerloop-api-agent",
        command=["/usr/bin/python3", "/app/app.py"],
        sync_targets=["/app/", "/srv/"],
    )
    patched = _as_pod(apply_dev_mode(original, dev))
    assert pod(original) != patched["spec"]
    restored = app_pod(patched)
    app = restored["spec"]["containers"][0]
    assert app["command"] == ["/usr/bin/python3", "/app/app.py"]
    assert app["env"] == [{"name": "BACKEND_URL", "value": "http://backend:8080"}]
    assert app["volumeMounts"] == [{"name": "cfg", "mountPath": "/etc/app"}]
    assert restored["spec"]["volumes"] == [{"name": "cfg", "configMap": {"name": "settings"}}]
    assert restored["spec"]["initContainers"] == [{"name": "migrate", "image": "x"}]
    assert restored["spec"] == pod(original)  # nothing else left over


def test_app_pod_keeps_innerloop_yaml_env_and_an_apps_own_python_variables() -> None:
    original = deployment(env=[{"name": "PYTHONHOME", "value": "/usr/local"}])
    patched = _as_pod(apply_dev_mode(original, DEV))  # DEV sets env DEBUG=1 from innerloop.yaml
    env = app_pod(patched)["spec"]["containers"][0]["env"]
    assert env == [{"name": "PYTHONHOME", "value": "/usr/local"}, {"name": "DEBUG", "value": "1"}]


def test_a_pod_not_in_dev_mode_is_unchanged() -> None:
    plain = _as_pod(deployment(command=["/agent", "--", "x"], volumeMounts=[{"name": "innerloop-token"}]))
    assert app_pod(plain) == plain
