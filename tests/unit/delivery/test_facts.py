"""The pure parts of gathering facts: where the default repo comes from, KEP-1755's YAML, PATH."""

from __future__ import annotations

import pytest

from innerloop.delivery.facts import (
    DefaultRepo,
    LocalRegistryHosting,
    find_tools,
    parse_local_registry,
    resolve_default_repo,
)


def test_default_repo_flag_beats_env_beats_config() -> None:
    env = {"INNERLOOP_DEFAULT_REPO": "env.example.com/x"}
    assert resolve_default_repo(flag="flag.example.com", env=env, config_repo="cfg.example.com") == DefaultRepo(
        repo="flag.example.com", source="--default-repo"
    )
    assert resolve_default_repo(flag=None, env=env, config_repo="cfg.example.com") == DefaultRepo(
        repo="env.example.com/x", source="INNERLOOP_DEFAULT_REPO"
    )
    assert resolve_default_repo(flag=None, env={}, config_repo="cfg.example.com", config_insecure=True) == DefaultRepo(
        repo="cfg.example.com", source="innerloop.yaml registry:", insecure=True
    )
    assert resolve_default_repo(flag="", env={"INNERLOOP_DEFAULT_REPO": ""}, config_repo=None) is None


def test_kep_1755_value_as_kind_documents_it() -> None:
    text = 'host: "localhost:5001"\nhelp: "https://kind.sigs.k8s.io/docs/user/local-registry/"\n'
    assert parse_local_registry(text) == LocalRegistryHosting(
        host="localhost:5001", help="https://kind.sigs.k8s.io/docs/user/local-registry/"
    )


def test_kep_1755_value_with_every_field() -> None:
    text = (
        "host: localhost:5000\nhostFromContainerRuntime: registry:5000\n"
        "hostFromClusterNetwork: registry.kube-system.svc:5000\nhelp: https://example.com\n"
    )
    hosting = parse_local_registry(text)
    assert hosting.host_from_container_runtime == "registry:5000"
    assert hosting.host_from_cluster_network == "registry.kube-system.svc:5000"


@pytest.mark.parametrize("text", ["host: [unclosed", "- a list\n- of things\n"])
def test_kep_1755_value_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"localRegistryHosting\.v1"):
        parse_local_registry(text)


def test_find_tools_keeps_only_what_is_there() -> None:
    there = {"kind": "/usr/local/bin/kind", "skopeo": "/usr/bin/skopeo"}
    assert find_tools(["kind", "k3d", "skopeo"], which=there.get) == there
