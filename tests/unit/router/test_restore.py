"""Switching a Service's selector and putting it back exactly."""

from __future__ import annotations

import copy
from typing import Any

from innerloop.router.restore import (
    restore_managed_fields,
    restore_selector,
    same_but_bookkeeping,
    selector_of,
    swap_selector,
)

ORIGINAL: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "echo",
        "namespace": "ns",
        "resourceVersion": "100",
        "managedFields": [{"manager": "kubectl-client-side-apply", "fieldsV1": {"f:spec": {}}}],
        "labels": {"team": "shop"},
    },
    "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": "http"}]},
}
ROUTER = {"innerloop.dev/intercept-router": "echo"}


def test_both_switches_test_the_selector_they_expect() -> None:
    swap = swap_selector({"app": "echo"}, ROUTER)
    assert swap[0] == {"op": "test", "path": "/spec/selector", "value": {"app": "echo"}}
    assert swap[1] == {"op": "replace", "path": "/spec/selector", "value": ROUTER}
    back = restore_selector(ROUTER, {"app": "echo"})
    assert back[0]["value"] == ROUTER
    assert back[1]["value"] == {"app": "echo"}


def _after_restore() -> dict[str, Any]:
    after = copy.deepcopy(ORIGINAL)
    after["metadata"]["resourceVersion"] = "105"
    after["metadata"]["managedFields"].append({"manager": "innerloop-intercept", "fieldsV1": {"f:spec": {}}})
    return after


def test_managed_fields_come_back_when_nothing_else_changed() -> None:
    patch = restore_managed_fields(ORIGINAL, _after_restore())
    assert patch == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "105"},
        {"op": "replace", "path": "/metadata/managedFields", "value": ORIGINAL["metadata"]["managedFields"]},
    ]


def test_managed_fields_stay_when_someone_else_changed_the_service() -> None:
    after = _after_restore()
    after["metadata"]["labels"]["team"] = "platform"
    assert restore_managed_fields(ORIGINAL, after) is None
    assert not same_but_bookkeeping(ORIGINAL, after)


def test_nothing_to_do_when_managed_fields_are_already_the_same() -> None:
    after = copy.deepcopy(ORIGINAL)
    after["metadata"]["resourceVersion"] = "101"
    assert restore_managed_fields(ORIGINAL, after) is None
    assert same_but_bookkeeping(ORIGINAL, after)


def test_selector_of_a_service_without_one_is_empty() -> None:
    assert selector_of({"spec": {}}) == {}
    assert selector_of(ORIGINAL) == {"app": "echo"}
