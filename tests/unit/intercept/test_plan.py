"""What an intercept adds to the cluster: names, ports, RBAC and a restricted router pod."""

from __future__ import annotations

from typing import Any

import pytest

from innerloop.intercept.plan import (
    InterceptPlanError,
    check_interceptable,
    origin_service,
    plan_ports,
    rbac_objects,
    router_config,
    router_deployment,
    router_name,
)


def service(ports: list[dict[str, Any]], selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "api", "namespace": "ns"},
        "spec": {"selector": {"app": "api"} if selector is None else selector, "ports": ports},
    }


def test_names_stay_within_63_characters_and_distinct() -> None:
    long = "s" * 63
    assert len(router_name(long)) <= 63
    assert router_name(long) != router_name("s" * 62 + "t")
    assert router_name("api") == "api-il-router"


def test_numeric_and_named_target_ports() -> None:
    plans = plan_ports(
        service([
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "grpc", "port": 9000, "targetPort": 9090},
            {"name": "metrics", "port": 9100},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]),
        {"http": 8080},
    )  # fmt: skip
    assert [(p.port, p.target, p.listen) for p in plans] == [(80, "http", 8080), (9000, 9090, 9090), (9100, 9100, 9100)]


def test_a_named_port_no_pod_declares_gets_a_free_number() -> None:
    plans = plan_ports(service([{"port": 80, "targetPort": "web"}]), {})
    assert plans[0].listen == 20000


def test_services_that_cannot_be_intercepted() -> None:
    with pytest.raises(InterceptPlanError, match="no selector"):
        check_interceptable(service([{"port": 80}], selector={}))
    with pytest.raises(InterceptPlanError, match="no TCP port"):
        plan_ports(service([{"port": 53, "protocol": "UDP"}]), {})


def test_the_router_pod_passes_restricted_and_binds_low_ports_without_capabilities() -> None:
    plans = plan_ports(service([{"name": "http", "port": 80, "targetPort": 80}]), {})
    deployment = router_deployment("api", "ns", plans, image="innerloop.local/agent:x")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["ports"] == [{"containerPort": 80}]
    assert deployment["spec"]["selector"]["matchLabels"] == {"innerloop.dev/intercept-router": "api"}


def test_a_named_target_port_is_declared_by_name_on_the_router() -> None:
    plans = plan_ports(service([{"port": 80, "targetPort": "http"}]), {"http": 8080})
    container = router_deployment("api", "ns", plans, image="i")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert (
        "sysctls" not in router_deployment("api", "ns", plans, image="i")["spec"]["template"]["spec"]["securityContext"]
    )


def test_the_router_may_touch_only_its_service_and_its_own_deployment() -> None:
    _, role, binding = rbac_objects("api", "ns")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["api"], "verbs": ["get", "patch"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["api-il-router"],
            "verbs": ["get", "delete"],
        },
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "api-il-router", "namespace": "ns"}]


def test_origin_keeps_the_original_selector_and_ports() -> None:
    svc = service([{"name": "http", "port": 80, "targetPort": "http"}])
    plans = plan_ports(svc, {"http": 8080})
    origin = origin_service(svc, plans)
    assert origin["spec"]["selector"] == {"app": "api"}
    assert origin["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    config = router_config(svc, plans, origin_ip="10.0.0.9", grace=15)
    assert config["ports"] == [{"port": 80, "listen": 8080, "originHost": "10.0.0.9", "originPort": 80}]
    assert config["original"] == svc
