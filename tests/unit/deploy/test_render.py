"""Pinning built image tags into manifests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from innerloop.deploy.render import containers, dump_all, load_all, pin_images, pod_spec, repository

BUILT = {
    "bookshop-api": "innerloop.local/bookshop-api:3f2a9c0d1e2b",
    "localhost:5000/team/web": "localhost:5000/team/web:0123456789ab",
}


class TestRepository:
    @pytest.mark.parametrize(
        ("image", "repo"),
        [
            ("app", "app"),
            ("app:1", "app"),
            ("app:latest", "app"),
            ("library/app:1.2.3", "library/app"),
            ("innerloop.local/bookshop-api:3f2a", "innerloop.local/bookshop-api"),
            ("localhost:5000/app:1", "localhost:5000/app"),
            ("localhost:5000/app", "localhost:5000/app"),
            ("localhost:5000/team/app:v2-rc.1", "localhost:5000/team/app"),
            ("app@sha256:" + "a" * 64, "app"),
            ("app:1@sha256:" + "b" * 64, "app"),
            ("localhost:5000/app:1@sha256:" + "c" * 64, "localhost:5000/app"),
            ("localhost:5000/app@sha256:" + "d" * 64, "localhost:5000/app"),
            ("", ""),
        ],
    )
    def test_strips_tag_and_digest_but_keeps_the_registry_port(self, image: str, repo: str) -> None:
        assert repository(image) == repo


def deployment(*images: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": f"init{i}", "image": img} for i, img in enumerate(init)],
                    "containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)],
                }
            }
        },
    }


def images_of(doc: dict[str, Any]) -> list[str]:
    return [str(c["image"]) for c in containers(doc)]


class TestPinImages:
    def test_deployment(self) -> None:
        docs = [deployment("bookshop-api", "busybox:1.36")]
        used = pin_images(docs, BUILT)
        assert images_of(docs[0]) == ["innerloop.local/bookshop-api:3f2a9c0d1e2b", "busybox:1.36"]
        assert used == ["bookshop-api"]

    def test_tagged_and_digested_references_are_replaced(self) -> None:
        docs = [deployment("bookshop-api:dev", "bookshop-api@sha256:" + "e" * 64)]
        pin_images(docs, BUILT)
        assert images_of(docs[0]) == [BUILT["bookshop-api"]] * 2

    def test_init_containers(self) -> None:
        docs = [deployment("busybox", init=("bookshop-api:migrate",))]
        pin_images(docs, BUILT)
        spec = docs[0]["spec"]["template"]["spec"]
        assert spec["initContainers"][0]["image"] == BUILT["bookshop-api"]
        assert spec["containers"][0]["image"] == "busybox"

    def test_pod(self) -> None:
        doc: dict[str, Any] = {
            "kind": "Pod",
            "spec": {"containers": [{"name": "w", "image": "localhost:5000/team/web:old"}]},
        }
        assert pin_images([doc], BUILT) == ["localhost:5000/team/web"]
        assert doc["spec"]["containers"][0]["image"] == BUILT["localhost:5000/team/web"]

    def test_cronjob(self) -> None:
        doc: dict[str, Any] = {
            "kind": "CronJob",
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {
                    "spec": {"template": {"spec": {"containers": [{"name": "job", "image": "bookshop-api"}]}}}
                },
            },
        }
        pin_images([doc], BUILT)
        assert doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == BUILT["bookshop-api"]

    @pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "ReplicaSet", "Job"])
    def test_other_workloads(self, kind: str) -> None:
        doc = deployment("bookshop-api")
        doc["kind"] = kind
        pin_images([doc], BUILT)
        assert images_of(doc) == [BUILT["bookshop-api"]]

    def test_non_matching_images_are_untouched(self) -> None:
        # Similar names are different repositories: only an exact repository match counts.
        images = (
            "bookshop-api-v2",
            "other/bookshop-api",
            "registry.example/bookshop-api:1",
            "localhost:5000/web",
            "localhost:5001/team/web",
            "team/web",
        )
        docs = [deployment(*images)]
        before = copy.deepcopy(docs)
        assert pin_images(docs, BUILT) == []
        assert docs == before

    def test_everything_else_in_the_documents_is_untouched(self) -> None:
        docs = [
            deployment("bookshop-api"),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"}, "spec": {"image": "bookshop-api"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "data": {"image": "bookshop-api"}},
        ]
        before = copy.deepcopy(docs)
        pin_images(docs, BUILT)
        before[0]["spec"]["template"]["spec"]["containers"][0]["image"] = BUILT["bookshop-api"]
        assert docs == before

    def test_used_lists_each_replacement(self) -> None:
        docs = [deployment("bookshop-api"), deployment("localhost:5000/team/web", "bookshop-api:x")]
        assert pin_images(docs, BUILT) == ["bookshop-api", "localhost:5000/team/web", "bookshop-api"]

    def test_malformed_documents_are_skipped(self) -> None:
        docs: list[dict[str, Any]] = [
            {"kind": "Deployment"},
            {"kind": "Deployment", "spec": {"template": None}},
            {"kind": "Pod", "spec": {"containers": None}},
            {"kind": "Pod", "spec": {"containers": ["not-a-dict", {"name": "no-image"}]}},
            {"metadata": {"name": "no-kind"}},
        ]
        before = copy.deepcopy(docs)
        assert pin_images(docs, BUILT) == []
        assert docs == before


class TestPodSpec:
    def test_paths(self) -> None:
        assert pod_spec({"kind": "Pod", "spec": {"containers": []}}) == {"containers": []}
        assert pod_spec(deployment("x")) == deployment("x")["spec"]["template"]["spec"]
        assert pod_spec({"kind": "Service", "spec": {"ports": []}}) is None
        assert pod_spec({"kind": "Deployment", "spec": {"template": "oops"}}) is None


class TestLoadAndDump:
    def test_load_all_skips_empty_and_non_mapping_documents(self) -> None:
        text = "---\n---\napiVersion: v1\nkind: Service\n---\n# only a comment\n---\n- a list\n---\nkind: Pod\n...\n"
        assert load_all(text) == [{"apiVersion": "v1", "kind": "Service"}, {"kind": "Pod"}]

    def test_load_all_of_nothing(self) -> None:
        assert load_all("") == []

    def test_round_trip_keeps_key_order(self) -> None:
        docs = [deployment("bookshop-api"), {"kind": "Service", "metadata": {"name": "api"}}]
        text = dump_all(docs)
        assert load_all(text) == docs
        assert text.index("apiVersion") < text.index("kind") < text.index("metadata")
        assert len(list(yaml.safe_load_all(text))) == 2

    def test_pin_after_load(self) -> None:
        text = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    spec:
      containers:
      - name: api
        image: bookshop-api
---
"""
        docs = load_all(text)
        pin_images(docs, BUILT)
        assert f"image: {BUILT['bookshop-api']}" in dump_all(docs)
