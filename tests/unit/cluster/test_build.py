"""go.mod parsing and wrapper rendering for building the cluster's binaries."""

from __future__ import annotations

import re

import pytest

from innerloop.cluster.build import helm_ldflags, local_replacements, version_ldflags, wrapper_gomod
from innerloop.cluster.progress import StepFailed
from innerloop.cluster.versions import PINNED, Versions

# The tail of go.etcd.io/etcd/server/v3@v3.6.16's go.mod, as published.
ETCD_SERVER_GOMOD = """module go.etcd.io/etcd/server/v3

go 1.26.0

toolchain go1.26.10

require (
\tgithub.com/coreos/go-semver v0.3.1
\tgo.etcd.io/etcd/api/v3 v3.6.16
\tgolang.org/x/text v0.43.0 // indirect
\tgopkg.in/yaml.v3 v3.0.1 // indirect
)

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/client/pkg/v3 => ../client/pkg
\tgo.etcd.io/etcd/client/v3 => ../client/v3
\tgo.etcd.io/etcd/pkg/v3 => ../pkg
)

// Bad imports are sometimes causing attempts to pull that code.
// This makes the error more explicit.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace go.etcd.io/tests/v3 => ./FORBIDDEN_DEPENDENCY
"""

# Shaped like k8s.io/kubernetes's go.mod: staging modules replaced with ./staging/...
KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tsigs.k8s.io/yaml v1.4.0
)

require (
\tsigs.k8s.io/kustomize/api v0.20.1 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/component-base => ./staging/src/k8s.io/component-base
)
"""


class TestLocalReplacements:
    def test_etcd_block_is_found_and_forbidden_dependency_ignored(self) -> None:
        assert local_replacements(ETCD_SERVER_GOMOD) == [
            "go.etcd.io/etcd/api/v3",
            "go.etcd.io/etcd/client/pkg/v3",
            "go.etcd.io/etcd/client/v3",
            "go.etcd.io/etcd/pkg/v3",
        ]

    def test_kubernetes_staging_modules(self) -> None:
        assert local_replacements(KUBERNETES_GOMOD) == [
            "k8s.io/api",
            "k8s.io/apimachinery",
            "k8s.io/client-go",
            "k8s.io/component-base",
        ]

    def test_single_line_replaces_with_dot_and_dotdot(self) -> None:
        gomod = (
            "module example.com/m\n\n"
            "replace example.com/a => ./a\n"
            "replace example.com/b => ../b/v2\n"
            "  replace   example.com/c   =>   ./   \n"
        )
        assert local_replacements(gomod) == ["example.com/a", "example.com/b", "example.com/c"]

    def test_replacements_with_published_versions_are_not_local(self) -> None:
        gomod = (
            "module example.com/m\n"
            "replace example.com/remote => example.com/fork v1.2.3\n"
            "replace (\n"
            "\texample.com/other => github.com/someone/other v0.0.0-20240101000000-abcdef123456\n"
            "\texample.com/local => ./local\n"
            ")\n"
        )
        assert local_replacements(gomod) == ["example.com/local"]

    def test_require_lines_and_comments_are_not_replacements(self) -> None:
        gomod = (
            "module example.com/m\n"
            "// replace example.com/commented => ./x is documentation, not a directive\n"
            "require example.com/a v1.0.0\n"
            "require (\n\texample.com/b v1.0.0 // indirect\n)\n"
        )
        assert local_replacements(gomod) == []

    def test_forbidden_dependency_in_a_block_is_ignored_too(self) -> None:
        gomod = "replace (\n\texample.com/x => ./FORBIDDEN_DEPENDENCY\n\texample.com/y => ../y\n)\n"
        assert local_replacements(gomod) == ["example.com/y"]

    def test_empty(self) -> None:
        assert local_replacements("") == []


class TestWrapperGomod:
    def test_pins_every_sibling_to_its_published_version(self) -> None:
        text = wrapper_gomod(
            module="innerloop.local/build/etcd",
            require="go.etcd.io/etcd/server/v3",
            version="v3.6.16",
            siblings={"go.etcd.io/etcd/pkg/v3": "v3.6.16", "go.etcd.io/etcd/api/v3": "v3.6.16"},
        )
        assert text == (
            "module innerloop.local/build/etcd\n"
            "\n"
            "go 1.26\n"
            "\n"
            "require go.etcd.io/etcd/server/v3 v3.6.16\n"
            "\n"
            "replace (\n"
            "\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16\n"
            "\tgo.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 v3.6.16\n"
            ")\n"
        )

    def test_no_replace_block_without_siblings(self) -> None:
        text = wrapper_gomod(module="m", require="github.com/coredns/coredns", version="v1.14.7", siblings={})
        assert "replace" not in text
        assert "require github.com/coredns/coredns v1.14.7\n" in text
        assert text.endswith("\n")

    def test_round_trip_from_an_upstream_gomod_leaves_nothing_local(self) -> None:
        siblings = {path: PINNED.kubernetes_staging for path in local_replacements(KUBERNETES_GOMOD)}
        text = wrapper_gomod(
            module="innerloop.local/build/kubernetes",
            require="k8s.io/kubernetes",
            version=PINNED.kubernetes,
            siblings=siblings,
        )
        pinned = dict(re.findall(r"^\t(\S+) => \1 (\S+)$", text, flags=re.MULTILINE))
        assert pinned == siblings
        assert local_replacements(text) == []


class TestVersionLdflags:
    def test_sets_version_fields_for_both_packages(self) -> None:
        flags = version_ldflags("v1.34.4").split(" -X ")
        assert flags[0] == "-s -w"
        settings = dict(f.split("=", 1) for f in flags[1:])
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            assert settings[f"{pkg}.gitVersion"] == "v1.34.4"
            assert settings[f"{pkg}.gitMajor"] == "1"
            assert settings[f"{pkg}.gitMinor"] == "34"
            assert settings[f"{pkg}.gitTreeState"] == "clean"
            assert settings[f"{pkg}.buildDate"] == "1970-01-01T00:00:00Z"
        assert len(settings) == 10

    @pytest.mark.parametrize(("version", "minor"), [("v1.9.0", "9"), ("1.35.0-rc.1", "35")])
    def test_minor_is_taken_from_the_version(self, version: str, minor: str) -> None:
        assert f"-X k8s.io/component-base/version.gitMinor={minor} " in version_ldflags(version)


class TestHelmLdflags:
    # helm.sh/helm/v3@v3.19.5's go.mod, the lines that matter.
    GOMOD = "module helm.sh/helm/v3\n\nrequire (\n\tk8s.io/apimachinery v0.34.2\n\tk8s.io/client-go v0.34.2\n)\n"

    def test_version_and_the_kubernetes_of_its_client_go(self) -> None:
        flags = helm_ldflags("v3.19.5", self.GOMOD).split(" -X ")
        assert flags[0] == "-s -w"
        assert dict(f.split("=", 1) for f in flags[1:]) == {
            "helm.sh/helm/v3/internal/version.version": "v3.19.5",
            "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor": "1",
            "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor": "34",
            "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor": "1",
            "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor": "34",
        }

    def test_a_gomod_without_client_go_is_refused(self) -> None:
        with pytest.raises(StepFailed, match=r"requires no k8s\.io/client-go"):
            helm_ldflags("v3.19.5", "module helm.sh/helm/v3\n")


def test_staging_modules_use_v0_versions() -> None:
    assert Versions(kubernetes="v1.34.4").kubernetes_staging == "v0.34.4"
    assert Versions(kubernetes="v1.30.0").kubernetes_staging == "v0.30.0"


def test_helm_is_built_on_the_clusters_kubernetes_minor() -> None:
    assert PINNED.helm.startswith("v3.19.")  # helm 3.19 requires k8s.io/client-go v0.34, as PINNED.kubernetes is 1.34
    assert PINNED.kubernetes.startswith("v1.34.")
