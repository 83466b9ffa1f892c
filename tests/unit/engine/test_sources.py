"""The `helm template` command for each kind of chart, and helm's failures as one line to act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from innerloop.config.model import Helm
from innerloop.engine.sources import explain_helm_failure, helm_template_argv

ROOT = Path("/work/shop")


def chart(**fields: Any) -> Helm:
    return Helm.model_validate(fields)


class TestHelmTemplateArgv:
    def test_a_local_folder_with_values_and_sets(self) -> None:
        c = chart(chart="charts/api", values=["dev.yaml", "me.yaml"], set={"replicaCount": 1, "a.b": "x"})
        assert helm_template_argv(ROOT, "api", c) == [
            "helm",
            "template",
            "api",
            "/work/shop/charts/api",
            "--values",
            "/work/shop/dev.yaml",
            "--values",
            "/work/shop/me.yaml",
            "--set",
            "replicaCount=1",
            "--set",
            "a.b=x",
        ]

    def test_a_packaged_chart_is_a_path_too(self) -> None:
        argv = helm_template_argv(ROOT, "api", chart(chart="dist/api-1.0.0.tgz"), helm="/cache/helm")
        assert argv == ["/cache/helm", "template", "api", "/work/shop/dist/api-1.0.0.tgz"]

    def test_an_oci_chart_is_passed_as_written_with_its_version(self) -> None:
        c = chart(chart="oci://registry.example.com/charts/api", version="1.2.0", values=["dev.yaml"])
        assert helm_template_argv(ROOT, "rel", c) == [
            "helm",
            "template",
            "rel",
            "oci://registry.example.com/charts/api",
            "--version",
            "1.2.0",
            "--values",
            "/work/shop/dev.yaml",
        ]

    def test_a_repository_chart_is_its_name_with_repo_and_version(self) -> None:
        c = chart(chart="postgresql", repo="https://charts.example.com/stable", version="15.5.0")
        assert helm_template_argv(ROOT, "db", c) == [
            "helm",
            "template",
            "db",
            "postgresql",
            "--repo",
            "https://charts.example.com/stable",
            "--version",
            "15.5.0",
        ]


WHERE = "services.db.manifests.helm"
REPO = chart(chart="hello", repo="http://127.0.0.1:8879/charts", version="0.1.0")
OCI = chart(chart="oci://127.0.0.1:5000/charts/hello", version="0.1.0")


class TestExplainHelmFailure:
    """helm's own words (captured from helm 3.19), each mapped to what to do."""

    def test_a_version_the_repository_lacks(self) -> None:
        stderr = 'Error: chart "hello" version "0.1.0" not found in http://127.0.0.1:8879/charts repository\n'
        assert explain_helm_failure(stderr, where=WHERE, chart=REPO) == (
            "services.db.manifests.helm: http://127.0.0.1:8879/charts has no chart hello 0.1.0 "
            '(chart "hello" version "0.1.0" not found in http://127.0.0.1:8879/charts repository): '
            "fix chart or version (http://127.0.0.1:8879/charts/index.yaml lists its charts and versions)"
        )

    def test_an_unreachable_repository(self) -> None:
        stderr = (
            'Error: looks like "http://127.0.0.1:8879/charts" is not a valid chart repository or cannot be reached: '
            'Get "http://127.0.0.1:8879/charts/index.yaml": dial tcp 127.0.0.1:8879: connect: connection refused\n'
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=REPO)
        assert line.startswith("services.db.manifests.helm: cannot reach http://127.0.0.1:8879/charts (looks like")
        assert line.endswith("connection refused): check repo, the network and any proxy")

    def test_a_url_that_is_no_repository(self) -> None:
        stderr = (
            'Error: looks like "http://127.0.0.1:8879/charts" is not a valid chart repository or cannot be reached: '
            "failed to fetch http://127.0.0.1:8879/charts/index.yaml : 404 File not found\n"
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=REPO)
        assert line.startswith("services.db.manifests.helm: http://127.0.0.1:8879/charts is not a chart repository")
        assert line.endswith("404 File not found); check repo")

    def test_a_repository_that_wants_credentials(self) -> None:
        stderr = (
            'Error: looks like "http://127.0.0.1:8879/charts" is not a valid chart repository or cannot be reached: '
            "failed to fetch http://127.0.0.1:8879/charts/index.yaml : 401 Unauthorized\n"
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=REPO)
        assert "http://127.0.0.1:8879/charts wants credentials" in line
        assert line.endswith(
            "download the chart (`helm pull hello --repo http://127.0.0.1:8879/charts --version 0.1.0 "
            "--username ...`) and give the .tgz as chart"
        )

    def test_an_unreachable_registry_after_a_warning(self) -> None:
        stderr = (
            "install.go:757: WARN something unrelated\n"
            'Error: failed to perform "FetchReference" on source: Get '
            '"https://127.0.0.1:5000/v2/charts/hello/manifests/0.1.0": dial tcp 127.0.0.1:5000: connect: '
            "connection refused\n"
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=OCI)
        assert line == (
            "services.db.manifests.helm: cannot reach oci://127.0.0.1:5000/charts/hello "
            '(failed to perform "FetchReference" on source: Get '
            '"https://127.0.0.1:5000/v2/charts/hello/manifests/0.1.0": dial tcp 127.0.0.1:5000: connect: '
            "connection refused): check the address, the network and any proxy"
        )

    def test_a_registry_that_wants_credentials(self) -> None:
        stderr = (
            'Error: failed to perform "FetchReference" on source: GET "https://127.0.0.1:5000/v2/charts/hello/'
            'manifests/0.1.0": response status code 401: unauthorized: authentication required\n'
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=OCI)
        assert line.startswith("services.db.manifests.helm: 127.0.0.1:5000 wants credentials for oci://")
        assert line.endswith("run `helm registry login 127.0.0.1:5000`, then `innerloop up` again")

    def test_a_version_the_registry_lacks(self) -> None:
        stderr = 'Error: failed to perform "FetchReference" on source: 127.0.0.1:5000/charts/hello:0.1.0: not found\n'
        line = explain_helm_failure(stderr, where=WHERE, chart=OCI)
        assert line.startswith(
            "services.db.manifests.helm: 127.0.0.1:5000 has no oci://127.0.0.1:5000/charts/hello 0.1.0"
        )
        assert line.endswith("(`helm show chart oci://127.0.0.1:5000/charts/hello --version VERSION` checks one)")

    def test_a_registry_whose_certificate_is_not_trusted(self) -> None:
        stderr = (
            'Error: failed to perform "FetchReference" on source: Get "https://127.0.0.1:5000/v2/charts/hello/'
            'manifests/0.1.0": tls: failed to verify certificate: x509: certificate signed by unknown authority\n'
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=OCI)
        assert line.startswith(
            "services.db.manifests.helm: 127.0.0.1:5000 has a certificate this machine does not trust"
        )
        assert line.endswith("add its CA to the system's trust store (or point SSL_CERT_FILE at a bundle that has it)")

    def test_a_repository_on_plain_http_given_as_https(self) -> None:
        https = chart(chart="hello", repo="https://127.0.0.1:8879/charts", version="0.1.0")
        stderr = (
            'Error: looks like "https://127.0.0.1:8879/charts" is not a valid chart repository or cannot be reached: '
            'Get "https://127.0.0.1:8879/charts/index.yaml": tls: first record does not look like a TLS handshake\n'
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=https)
        assert line.startswith("services.db.manifests.helm: https://127.0.0.1:8879/charts answers plain HTTP")
        assert line.endswith("): write repo as http://...")

    def test_a_template_error_is_helms_own_message(self) -> None:
        stderr = (
            'Error: template: hello/templates/cm.yaml:5:14: executing "hello/templates/cm.yaml" at <.Values.x.y>: '
            "nil pointer evaluating interface {}.y\n\nUse --debug flag to render out invalid YAML\n"
        )
        line = explain_helm_failure(stderr, where=WHERE, chart=chart(chart="charts/hello"))
        assert line == (
            "services.db.manifests.helm: `helm template` failed: template: hello/templates/cm.yaml:5:14: executing "
            '"hello/templates/cm.yaml" at <.Values.x.y>: nil pointer evaluating interface {}.y'
        )
