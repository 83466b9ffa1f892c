"""The dev-mode patch of a debugging service: its process under the debugger, probes that could kill it gone."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from innerloop.config import parse_config
from innerloop.connect.context import command_environment, container_context
from innerloop.debug.python import DEBUGPY
from innerloop.deploy.devmode import DEBUG_ORIGINAL_ENV, app_pod, check_agent_pod
from innerloop.engine.plan import BuiltImageInfo, PlanProblems, ServicePlan, plan_service

CONFIG = """\
version: 1
name: shop
services:
  api:
    manifests: {files: [k8s/api.yaml]}
    image: {name: api, context: api}
    sync: [{local: api/, remote: /app/}]
  jvm:
    manifests: {files: [k8s/jvm.yaml]}
    debug: {wait: true, port: 5006}
  blob:
    manifests: {files: [k8s/blob.yaml]}
  web:
    manifests: {files: [k8s/web.yaml]}
    env: {NODE_OPTIONS: --max-old-space-size=100}
"""
PROBE = {"httpGet": {"path": "/healthz", "port": 8080}}


def workload(name: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": name,
                            "image": name,
                            "readinessProbe": PROBE,
                            "livenessProbe": PROBE,
                            "startupProbe": PROBE,
                            "securityContext": {"capabilities": {"drop": ["ALL"]}},
                            **container,
                        }
                    ],
                },
            },
        },
    }


def plan(name: str, doc: dict[str, Any], *, debug: bool = True, files: tuple[str, ...] = ()) -> ServicePlan:
    built = {"api": BuiltImageInfo(reference="api", entrypoint=["/usr/bin/python3", "/app/app.py"])}
    return plan_service(
        project=parse_config(CONFIG),
        name=name,
        docs=[copy.deepcopy(doc)],
        built=built,
        agent_image="agent:1",
        token="t",
        debugging={name: list(files)} if debug else None,
    )


def app_container(plan: ServicePlan) -> dict[str, Any]:
    [doc] = [d for d in plan.docs if d["kind"] == "Deployment"]
    container: dict[str, Any] = doc["spec"]["template"]["spec"]["containers"][0]
    return container


def test_python_runs_under_debugpy_and_only_readiness_stays() -> None:
    got = plan("api", workload("api"))
    assert got.debug is not None and got.debug.language == "python"
    app = app_container(got)
    after = app["command"][app["command"].index("--") + 1 :]
    assert after == ["/usr/bin/python3", DEBUGPY, "--listen", "127.0.0.1:5678", "/app/app.py"]
    assert "livenessProbe" not in app and "startupProbe" not in app
    assert app["readinessProbe"] == PROBE
    assert {"name": "PYDEVD_USE_CYTHON", "value": "NO"} in app["env"]
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # nothing added: restricted PSS holds
    [doc] = [d for d in got.docs if d["kind"] == "Deployment"]
    assert doc["spec"]["template"]["metadata"]["annotations"]["innerloop.dev/debug"] == "python 5678"


def test_without_debugging_the_probes_and_command_are_the_manifests() -> None:
    app = app_container(plan("api", workload("api"), debug=False))
    assert app["livenessProbe"] == PROBE and app["startupProbe"] == PROBE
    assert DEBUGPY not in app["command"]


def test_a_service_without_sync_gets_dev_mode_to_debug() -> None:
    doc = workload("jvm", command=["java", "-jar", "/app.jar"], env=[{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g"}])
    got = plan("jvm", doc, files=("src/Main.java",))
    assert got.dev_mode and got.token_secret
    app = app_container(got)
    assert app["command"][-4:] == ["--", "java", "-jar", "/app.jar"]  # the JVM reads the variable: same command
    options = [e["value"] for e in app["env"] if e["name"] == "JAVA_TOOL_OPTIONS"]
    assert options == ["-agentlib:jdwp=transport=dt_socket,server=y,suspend=y,address=127.0.0.1:5006 -Xmx1g"]
    assert "livenessProbe" not in app


def test_the_planned_debug_pod_passes_the_agent_identity_check() -> None:
    got = plan("api", workload("api"))
    [doc] = [d for d in got.docs if d["kind"] == "Deployment"]
    template = doc["spec"]["template"]
    pod = {
        "metadata": {
            "labels": {"pod-template-hash": "abc"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "api-abc", "controller": True}],
        },
        "spec": copy.deepcopy(template["spec"]),
    }
    assert check_agent_pod(pod, [doc]) is None


def test_an_unknown_language_points_at_debug_language() -> None:
    with pytest.raises(PlanProblems) as caught:
        plan("blob", workload("blob", command=["/bin/blob"]), files=("README.md",))
    [problem] = caught.value.problems
    assert problem.path == ("services", "blob", "debug", "language")
    assert "set debug.language" in problem.message


def test_a_command_the_debugger_cannot_run_points_at_debug() -> None:
    with pytest.raises(PlanProblems) as caught:
        plan("blob", workload("blob", command=["npm", "start"]))
    [problem] = caught.value.problems
    assert problem.path == ("services", "blob", "debug")
    assert "node SCRIPT" in problem.message


def as_pod(plan: ServicePlan) -> dict[str, Any]:
    """The pod the planned Deployment makes, as the API server returns it."""
    [doc] = [d for d in plan.docs if d["kind"] == "Deployment"]
    template = copy.deepcopy(doc["spec"]["template"])
    return {"metadata": {"name": "pod-1", **template["metadata"]}, "spec": template["spec"]}


def local_env(pod: dict[str, Any]) -> dict[str, str]:
    """What `innerloop run` / `intercept -- CMD` give a local command on an empty machine environment."""
    context = container_context(app_pod(pod), None, configmaps={}, secrets={}, services=[])
    return command_environment({}, context.env).env


@pytest.mark.parametrize(
    ("name", "container", "original", "own"),
    [
        # Python under debugpy: command replaced, PYDEVD_* and PYTHONDONTWRITEBYTECODE added.
        ("api", {"env": [{"name": "GREETING", "value": "hi"}]}, ["/usr/bin/python3", "/app/app.py"], {}),
        # Node: --inspect on node's argv; innerloop.yaml's own NODE_OPTIONS is the app's.
        (
            "web",
            {"command": ["node", "src/server.js"]},
            ["node", "src/server.js"],
            {"NODE_OPTIONS": "--max-old-space-size=100"},
        ),
        # The JVM: same command, jdwp joined in front of the manifest's JAVA_TOOL_OPTIONS.
        (
            "jvm",
            {"command": ["java", "-jar", "/app.jar"], "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g"}]},
            ["java", "-jar", "/app.jar"],
            {"JAVA_TOOL_OPTIONS": "-Xmx1g"},
        ),
    ],
)
def test_a_local_command_gets_the_apps_context_not_the_debuggers(
    name: str, container: dict[str, Any], original: list[str], own: dict[str, str]
) -> None:
    debugged = as_pod(plan(name, workload(name, **container), files=("src/x.java",) if name == "jvm" else ()))
    plain = as_pod(plan(name, workload(name, **container), debug=False))
    [app] = debugged["spec"]["containers"]
    assert app["command"][app["command"].index("--") + 1 :] != original or name == "jvm"  # the launch ran
    assert any(e["name"] == DEBUG_ORIGINAL_ENV for e in app["env"])

    [restored] = app_pod(debugged)["spec"]["containers"]
    assert restored["command"] == original
    assert restored["env"] == app_pod(plain)["spec"]["containers"][0]["env"]  # as without debugging
    values = {e["name"]: e.get("value") for e in restored["env"]}
    for variable, value in own.items():
        assert values[variable] == value
    assert not {"PYDEVD_USE_CYTHON", "PYTHONDONTWRITEBYTECODE", DEBUG_ORIGINAL_ENV} & set(values)
    assert "jdwp" not in str(values) and "--inspect" not in str(restored)

    env = local_env(debugged)
    assert not [k for k in env if k.startswith("PYDEVD_") or k == DEBUG_ORIGINAL_ENV], env
    assert "jdwp" not in str(env) and "inspect" not in str(env)
    assert env == local_env(plain)


def test_a_malformed_debug_record_restores_nothing_and_goes() -> None:
    pod = as_pod(plan("api", workload("api")))
    [app] = pod["spec"]["containers"]
    for entry in app["env"]:
        if entry["name"] == DEBUG_ORIGINAL_ENV:
            entry["value"] = '{"command": "rm -rf /", "set": ["GREETING"], "env": []}'
    [restored] = app_pod(pod)["spec"]["containers"]
    assert DEBUG_ORIGINAL_ENV not in {e["name"] for e in restored["env"]}
    assert DEBUGPY in restored["command"]  # as it runs: a record innerloop did not write restores nothing
