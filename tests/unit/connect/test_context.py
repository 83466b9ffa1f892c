"""A container's environment and config files, computed from its pod spec as the kubelet would."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from innerloop.connect.context import ContextError, container_context, service_links


def pod(container: dict[str, Any], volumes: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
        "status": {"podIP": "10.244.0.9"},
        "spec": {"containers": [{"name": "c", **container}], "volumes": volumes or [], **spec},
    }


CMS = {"cfg": {"data": {"A": "1", "B": "2"}, "binaryData": {"bin": base64.b64encode(b"\x00\x01").decode()}}}
SECRETS = {"sec": {"data": {"PW": base64.b64encode(b"pw").decode()}}}
SERVICES = [
    {"metadata": {"name": "my-db"}, "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "pg", "port": 5432}]}}
]


def ctx(p: dict[str, Any]) -> Any:
    return container_context(p, None, configmaps=CMS, secrets=SECRETS, services=SERVICES)


def test_literal_values_expand_earlier_variables() -> None:
    env = ctx(pod({"env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "$(X)-$(UNKNOWN)"}]})).env
    assert env["X"] == "1" and env["Y"] == "1-$(UNKNOWN)"


def test_value_from_and_env_from_with_prefix() -> None:
    c = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "P_"}, {"secretRef": {"name": "sec"}}],
        "env": [
            {"name": "ONE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ],
    }
    env = ctx(pod(c)).env
    assert (env["P_A"], env["P_B"], env["PW"], env["ONE"], env["IP"], env["L"]) == (
        "1",
        "2",
        "pw",
        "1",
        "10.244.0.9",
        "x",
    )


def test_service_links_follow_the_kubelet_and_can_be_turned_off() -> None:
    links = service_links(SERVICES)
    assert links["MY_DB_SERVICE_HOST"] == "10.96.0.7"
    assert links["MY_DB_SERVICE_PORT"] == "5432"
    assert links["MY_DB_SERVICE_PORT_PG"] == "5432"
    assert links["MY_DB_PORT_5432_TCP_ADDR"] == "10.96.0.7"
    assert "MY_DB_SERVICE_HOST" not in ctx(pod({}, enableServiceLinks=False)).env
    headless = [{"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}]
    assert service_links(headless) == {}


def test_missing_references_fail_unless_optional() -> None:
    with pytest.raises(ContextError, match="secret nope"):
        ctx(pod({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}))
    optional = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}}]}
    result = ctx(pod(optional))
    assert "X" not in result.env and result.missing == ["secret nope key k"]


def test_configmap_and_secret_volumes_become_files() -> None:
    volumes = [
        {"name": "v1", "configMap": {"name": "cfg", "items": [{"key": "A", "path": "sub/a.txt"}]}},
        {"name": "v2", "secret": {"secretName": "sec"}},
        {"name": "v3", "projected": {"sources": [{"configMap": {"name": "cfg"}}, {"secret": {"name": "sec"}}]}},
        {"name": "empty", "emptyDir": {}},
    ]
    mounts = [
        {"name": "v1", "mountPath": "/etc/a"},
        {"name": "v2", "mountPath": "/etc/s"},
        {"name": "v3", "mountPath": "/etc/all"},
        {"name": "empty", "mountPath": "/scratch"},
    ]
    files = ctx(pod({"volumeMounts": mounts}, volumes)).files
    assert files["/etc/a"] == {"sub/a.txt": b"1"}
    assert files["/etc/s"] == {"PW": b"pw"}
    assert files["/etc/all"] == {"A": b"1", "B": b"2", "bin": b"\x00\x01", "PW": b"pw"}
    assert "/scratch" not in files


def test_unknown_container_is_named() -> None:
    with pytest.raises(ContextError, match="no container 'other'"):
        container_context(pod({}), "other", configmaps={}, secrets={}, services=[])
