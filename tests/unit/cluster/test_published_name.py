"""The plain names the bundled cluster also gives its images (innerloop.local/busybox:1.35)."""

from __future__ import annotations

import pytest

from innerloop.cluster.node import published_name


@pytest.mark.parametrize(
    ("tag", "published"),
    [
        ("innerloop.local/busybox:1.35-1a1d7ff96e37", "innerloop.local/busybox:1.35"),
        ("innerloop.local/coredns:v1.14.7-55808363394a", "innerloop.local/coredns:v1.14.7"),
        ("innerloop.local/python:3.11-4ced973a076a", "innerloop.local/python:3.11"),
        ("innerloop.local/agent:debd090ec401", "innerloop.local/agent:debd090ec401"),
    ],
)
def test_the_content_key_is_dropped(tag: str, published: str) -> None:
    assert published_name(tag) == published
