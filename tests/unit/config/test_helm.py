"""manifests.helm: the four kinds of chart (folder, .tgz, oci://, repository) and what each accepts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from innerloop.config.model import Helm, Project


def helm(**fields: Any) -> Helm:
    project = Project.model_validate(
        {"version": 1, "name": "shop", "services": {"api": {"manifests": {"helm": fields}}}}
    )
    chart = project.services["api"].manifests.helm
    assert chart is not None
    return chart


def error(**fields: Any) -> tuple[tuple[int | str, ...], str]:
    with pytest.raises(ValidationError) as caught:
        helm(**fields)
    [found] = caught.value.errors()
    return found["loc"][4:], found["msg"].removeprefix("Value error, ")


class TestKindsOfChart:
    @pytest.mark.parametrize(
        ("fields", "remote"),
        [
            ({"chart": "charts/api"}, False),
            ({"chart": "charts/api-1.2.0.tgz"}, False),
            ({"chart": "oci://registry.example.com/charts/api", "version": "1.2.0"}, True),
            ({"chart": "oci://127.0.0.1:5000/api", "version": "^1.2"}, True),
            ({"chart": "postgresql", "repo": "https://charts.example.com/stable", "version": "15.5.0"}, True),
            ({"chart": "my_chart.v2", "repo": "http://127.0.0.1:8879", "version": "0.1.0"}, True),
        ],
    )
    def test_valid(self, fields: dict[str, Any], remote: bool) -> None:
        chart = helm(**fields)
        assert chart.remote is remote
        assert (chart.chart, chart.repo, chart.version) == (fields["chart"], fields.get("repo"), fields.get("version"))


class TestMistakes:
    def test_a_version_on_a_local_chart(self) -> None:
        for chart in ("charts/api", "charts/api-1.2.0.tgz"):
            loc, msg = error(chart=chart, version="1.2.0")
            assert loc == ()
            assert msg == (
                f"version is for a chart from a registry or repository; the local chart {chart!r} "
                "has its version in its Chart.yaml: remove version"
            )

    @pytest.mark.parametrize(
        "fields",
        [{"chart": "oci://registry.example.com/charts/api"}, {"chart": "api", "repo": "https://charts.example.com"}],
    )
    def test_a_remote_chart_without_version(self, fields: dict[str, Any]) -> None:
        assert error(**fields) == (
            (),
            "give version for a chart from a registry or repository (e.g. version: 1.2.0), "
            "so every `up` renders the same chart; without it helm takes the newest",
        )

    def test_repo_with_an_oci_chart(self) -> None:
        loc, msg = error(chart="oci://r.example.com/charts/api", repo="https://charts.example.com", version="1.0.0")
        assert loc == ()
        assert msg == "repo is for a chart repository; an oci:// chart names its registry itself: remove repo"

    @pytest.mark.parametrize("chart", ["charts/api", "api-1.0.0.tgz", "stable/api"])
    def test_repo_with_a_path_instead_of_a_name(self, chart: str) -> None:
        _, msg = error(chart=chart, repo="https://charts.example.com", version="1.0.0")
        assert msg == f"with repo, chart is the chart's name in that repository (e.g. postgresql), not {chart!r}"

    def test_an_oci_registry_as_repo(self) -> None:
        loc, msg = error(chart="api", repo="oci://r.example.com/charts", version="1.0.0")
        assert loc == ("repo",)
        assert msg.startswith("'oci://r.example.com/charts' is an OCI registry, not a chart repository")
        assert "chart: oci://HOST/PATH/NAME" in msg

    @pytest.mark.parametrize("repo", ["charts.example.com", "ftp://charts.example.com", "https://", "https://a b"])
    def test_a_repo_that_is_no_http_url(self, repo: str) -> None:
        loc, msg = error(chart="api", repo=repo, version="1.0.0")
        assert loc == ("repo",)
        assert msg == f"{repo!r} is not a chart repository URL: write http(s)://HOST/PATH (where index.yaml is)"

    @pytest.mark.parametrize("chart", ["oci://r.example.com/charts/api:1.2.0", "oci://r.example.com/api@sha256:ab"])
    def test_an_oci_reference_with_a_tag_or_digest(self, chart: str) -> None:
        loc, msg = error(chart=chart, version="1.2.0")
        assert loc == ("chart",)
        assert msg.startswith(f"{chart!r} has a tag or digest: write the reference without it")

    @pytest.mark.parametrize("chart", ["oci://", "oci://r.example.com", "oci://r.example.com/Charts/API"])
    def test_an_oci_reference_that_is_malformed(self, chart: str) -> None:
        loc, msg = error(chart=chart, version="1.2.0")
        assert (loc, msg) == (
            ("chart",),
            f"{chart!r} is not an OCI chart reference: write oci://HOST[:PORT]/PATH/NAME "
            "(e.g. oci://registry.example.com/charts/api)",
        )

    def test_an_oci_reference_with_a_port_is_not_a_tag(self) -> None:
        assert helm(chart="oci://localhost:5000/charts/api", version="1.0.0").remote

    def test_a_chart_url(self) -> None:
        loc, msg = error(chart="https://charts.example.com/api-1.0.0.tgz")
        assert loc == ("chart",)
        assert "for a chart repository write the chart's name in chart and the URL under repo" in msg

    def test_an_absolute_chart_path(self) -> None:
        loc, msg = error(chart="/srv/charts/api")
        assert (loc, msg) == (
            ("chart",),
            "'/srv/charts/api' is absolute; write it relative to the folder of innerloop.yaml",
        )

    def test_an_empty_version(self) -> None:
        loc, _ = error(chart="oci://r.example.com/api", version="")
        assert loc == ("version",)
