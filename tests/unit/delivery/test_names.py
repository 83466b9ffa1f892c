"""Skaffold's default-repo rewriting: the documented examples and the cases its own tests pin."""

from __future__ import annotations

import pytest

from innerloop.delivery.names import MAX_LENGTH, parse_image, rewrite

ECR = "aws_account_id.dkr.ecr.region.amazonaws.com"


@pytest.mark.parametrize(
    ("image", "default_repo", "expected"),
    [
        # skaffold.dev/docs/environment/image-registries/: not GCR/AR -> escape & concat & truncate
        ("gcr.io/k8s-skaffold/skaffold-example1", ECR, f"{ECR}/gcr_io_k8s-skaffold_skaffold-example1"),
        # GCR, prefix does not match -> concat
        (
            "gcr.io/k8s-skaffold/skaffold-example1",
            "gcr.io/myproject/myimage",
            "gcr.io/myproject/myimage/gcr.io/k8s-skaffold/skaffold-example1",
        ),
        # GCR, prefix matches -> unchanged
        ("gcr.io/k8s-skaffold/skaffold-example1", "gcr.io/k8s-skaffold", "gcr.io/k8s-skaffold/skaffold-example1"),
        # GCR, shared prefix -> the rest under the repo
        (
            "gcr.io/k8s-skaffold/skaffold-example1",
            "gcr.io/k8s-skaffold/myimage",
            "gcr.io/k8s-skaffold/myimage/skaffold-example1",
        ),
        # Skaffold's default_repo_test.go
        ("gcr.io/some/registry", "gcr.io/default", "gcr.io/default/gcr.io/some/registry"),
        ("gcr.io/k8s-project/image1", "gcr.io/default", "gcr.io/default/gcr.io/k8s-project/image1"),
        (
            "github.com/org/app",
            "us-central1-docker.pkg.dev/default",
            "us-central1-docker.pkg.dev/default/github.com/org/app",
        ),
        ("gcr.io/default/registry", "gcr.io/default", "gcr.io/default/registry"),
        ("eu.gcr.io/project/registry", "eu.gcr.io/project", "eu.gcr.io/project/registry"),
        ("gcr.io/default/example/registry", "gcr.io/default/repository", "gcr.io/default/repository/example/registry"),
        ("gcr.io/some/registry", ECR, f"{ECR}/gcr_io_some_registry"),
        ("myrepo/skaffold-example", "myrepo", "myrepo/skaffold-example"),
        ("img:tag", "gcr.io/default", "gcr.io/default/img:tag"),
        ("img@sha256:" + "8" * 64, "gcr.io/default", "gcr.io/default/img@sha256:" + "8" * 64),
        ("img:tag@sha256:" + "8" * 64, "gcr.io/default", "gcr.io/default/img:tag@sha256:" + "8" * 64),
        # innerloop's own names under a local registry
        ("bookshop-api:3f2a", "127.0.0.1:5999/x", "127.0.0.1:5999/x/bookshop-api:3f2a"),
        ("innerloop.local/agent:1-ab", "localhost:5001", "localhost:5001/innerloop_local_agent:1-ab"),
        ("localhost:5001/team/api:1", "localhost:5001", "localhost:5001/team/api:1"),
        ("Upper/Case:KeepTag", "registry.example.com/team", "registry.example.com/team/upper_case:KeepTag"),
        ("anything:1", "", "anything:1"),
    ],
)
def test_rewrite(image: str, default_repo: str, expected: str) -> None:
    assert rewrite(image, default_repo) == expected


def test_a_name_that_only_starts_like_the_repo_is_not_under_it() -> None:
    # Skaffold compares strings (gcr.io/defaultx/... would stay); a path component must match.
    assert rewrite("myrepox/app:1", "myrepo") == "myrepo/myrepox_app:1"


def test_long_names_are_truncated_to_255_before_the_tag() -> None:
    long = (
        "gcr.io/herewehaveanincrediblylongregistryname/herewealsohaveanabnormallylongimagename/"
        "doubtyouveseenanimagethislong/butyouneverknowdoyouimeanpeopledosomecrazystuffoutthere/"
        "goodluckpushingthistoanyregistrymyfriend"
    )
    expected = (
        f"{ECR}/gcr_io_herewehaveanincrediblylongregistryname_herewealsohaveanabnormallylongimagename_"
        "doubtyouveseenanimagethislong_butyouneverknowdoyouimeanpeopledosomecrazystuffoutthere_"
        "goodluckpushingthistoanyregistrymyfrien"
    )
    assert rewrite(long, ECR) == expected
    assert len(expected) == MAX_LENGTH
    assert rewrite(long + ":v1", ECR) == expected + ":v1"


def test_parse_tells_a_port_from_a_tag() -> None:
    assert parse_image("localhost:5000/app").name == "localhost:5000/app"
    assert parse_image("localhost:5000/app").tag == ""
    assert parse_image("localhost:5000/app:v2").tag == "v2"


@pytest.mark.parametrize("bad", ["!!invalid!!", "", "app:", "a//b"])
def test_invalid_names_are_refused_with_an_example(bad: str) -> None:
    with pytest.raises(ValueError, match="not an image reference"):
        rewrite(bad, "gcr.io/default")
