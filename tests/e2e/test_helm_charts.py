"""Helm charts deployed by a real `innerloop up`: a folder, a packaged .tgz, a chart repository, an OCI registry.

The repository is served over HTTP on loopback by the test; the registry is tests/e2e/oci_registry.py over
TLS (trusted through SSL_CERT_FILE), with the chart put there by `helm push`.

The helm is the one innerloop builds into its cache (`innerloop cluster up` does, and the fixture does on a
machine whose cache predates it); PATH has none here, so `up` finding it is part of what is tested.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from innerloop.cluster.build import BinaryBuilder
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import stderr_report
from innerloop.cluster.versions import PINNED
from innerloop.config import parse_config
from innerloop.engine.plan import PlanError
from innerloop.engine.sources import read_manifests

from .kube import Kube, eventually, free_port
from .oci_registry import OciRegistry

CHART_YAML = """\
apiVersion: v2
name: hello
version: {version}
# Without the Kubernetes version built into helm, `helm template` says 1.20 and this refuses to render.
kubeVersion: ">=1.30.0-0"
"""

VALUES_YAML = """\
greeting: hello from the chart's defaults
image: busybox
"""

# Go templates: kept out of str.format.
TEMPLATES = {
    "configmap.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  greeting: {{ .Values.greeting | quote }}
  chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
""",
    "deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: 1
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: main
        image: {{ .Values.image }}
        imagePullPolicy: Never
        command: [sleep, "3600"]
        env:
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: {{ .Release.Name }}-settings, key: greeting}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
""",
}


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """innerloop's own helm, built on first need (cached by version: instant once built); needs no cluster."""
    builder = BinaryBuilder(paths=ClusterPaths.from_env(), versions=PINNED, report=stderr_report)
    return builder.ensure_helm() / "helm"


@pytest.fixture
def helm_env(tmp_path: Path) -> dict[str, str]:
    """No helm on PATH, and helm's config, cache and data in the test's folder (no repos, no logins)."""
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "helm").exists())
    homes = {f"HELM_{kind}_HOME": str(tmp_path / "helm-home" / kind.lower()) for kind in ("CONFIG", "CACHE", "DATA")}
    return {**os.environ, "PATH": path, **homes}


def write_chart(folder: Path, *, version: str = "0.1.0") -> Path:
    (folder / "templates").mkdir(parents=True)
    (folder / "Chart.yaml").write_text(CHART_YAML.format(version=version))
    (folder / "values.yaml").write_text(VALUES_YAML)
    for name, text in TEMPLATES.items():
        (folder / "templates" / name).write_text(text)
    return folder


def helm(helm_bin: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, f"helm {' '.join(args)}: {out.stderr}"
    return out.stdout


@pytest.fixture
def chart_repository(tmp_path: Path, helm_bin: Path, helm_env: dict[str, str]) -> Iterator[str]:
    """A chart repository with hello 0.1.0 and 0.2.0, served over HTTP on a free loopback port; yields its URL."""
    served = tmp_path / "www"
    charts = served / "charts"
    charts.mkdir(parents=True)
    for version in ("0.1.0", "0.2.0"):
        source = write_chart(tmp_path / f"src-{version}" / "hello", version=version)
        helm(helm_bin, helm_env, "package", str(source), "--destination", str(charts))
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/charts"
    helm(helm_bin, helm_env, "repo", "index", str(charts), "--url", url)
    thread = threading.Thread(target=server.serve_forever, name="chart-repository", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def oci_registry(tmp_path: Path, helm_bin: Path, helm_env: dict[str, str]) -> Iterator[OciRegistry]:
    """A registry with oci://HOST/charts/hello at 0.1.0 and 0.2.0; helm_env trusts its CA."""
    with OciRegistry(tmp_path / "registry") as registry:
        helm_env["SSL_CERT_FILE"] = str(registry.ca)
        for version in ("0.1.0", "0.2.0"):
            source = write_chart(tmp_path / f"oci-src-{version}" / "hello", version=version)
            helm(helm_bin, helm_env, "package", str(source), "--destination", str(tmp_path / "oci-dist"))
            package = tmp_path / "oci-dist" / f"hello-{version}.tgz"
            helm(helm_bin, helm_env, "push", str(package), f"oci://{registry.host}/charts")
        yield registry


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def innerloop_up(
    cli: list[str], project: Path, namespace: str, env: dict[str, str], kube: Kube, *, release: str
) -> dict[str, str]:
    """Run `innerloop up` until it watches for changes; return the chart's ConfigMap data."""
    log = project / "up.log"
    proc = subprocess.Popen(
        [*cli, "up", "-n", namespace, "--no-color"],
        cwd=project,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        eventually(lambda: proc.poll() is None and "watching for changes" in log.read_text(), timeout_s=180)
        settings = kube.get_json("configmap", f"{release}-settings", "-n", namespace)
        deployment = kube.get_json("deployment", release, "-n", namespace)
        assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
        data: dict[str, str] = settings["data"]
        return data
    except AssertionError:
        raise AssertionError(f"innerloop up (exit {proc.poll()}):\n{log.read_text()}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def write_project(folder: Path, helm_config: dict[str, Any], *, dev_values: str | None = None) -> Path:
    if dev_values is not None:
        (folder / "values-dev.yaml").write_text(dev_values)
    config = {"version": 1, "name": "charts", "services": {"web": {"manifests": {"helm": helm_config}}}}
    (folder / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def test_a_local_chart_folder_with_values_and_set(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path, helm_env: dict[str, str]
) -> None:
    write_chart(tmp_path / "charts" / "hello")
    project = write_project(
        tmp_path,
        {
            "chart": "charts/hello",
            "release": "greeter",
            "values": ["values-dev.yaml"],
            "set": {"image": kube.images["busybox"]},
        },
        dev_values="greeting: hello from values-dev.yaml\n",
    )
    data = innerloop_up(innerloop_cli, project, namespace, helm_env, kube, release="greeter")
    assert data["greeting"] == "hello from values-dev.yaml"
    assert data["chart"] == "hello-0.1.0"
    assert data["kubeVersion"].startswith("v1.34.")


def test_a_packaged_chart(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path, *, helm_bin: Path, helm_env: dict[str, str]
) -> None:
    source = write_chart(tmp_path / "src" / "hello", version="1.4.2")
    helm(helm_bin, helm_env, "package", str(source), "--destination", str(tmp_path / "dist"))
    project = write_project(
        tmp_path,
        {"chart": "dist/hello-1.4.2.tgz", "set": {"image": kube.images["busybox"], "greeting": "packaged"}},
    )
    data = innerloop_up(innerloop_cli, project, namespace, helm_env, kube, release="web")
    assert (data["greeting"], data["chart"]) == ("packaged", "hello-1.4.2")


def test_a_chart_from_a_repository_at_a_pinned_version(
    innerloop_cli: list[str],
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    *,
    helm_env: dict[str, str],
    chart_repository: str,
) -> None:
    # 0.2.0 is the newest in the repository; the pinned 0.1.0 is what gets deployed.
    project = write_project(
        tmp_path,
        {
            "chart": "hello",
            "repo": chart_repository,
            "version": "0.1.0",
            "values": ["values-dev.yaml"],
            "set": {"image": kube.images["busybox"]},
        },
        dev_values="greeting: hello from a repository\n",
    )
    data = innerloop_up(innerloop_cli, project, namespace, helm_env, kube, release="web")
    assert (data["greeting"], data["chart"]) == ("hello from a repository", "hello-0.1.0")


def test_a_chart_from_an_oci_registry_at_a_pinned_version(
    innerloop_cli: list[str],
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    *,
    helm_env: dict[str, str],
    oci_registry: OciRegistry,
) -> None:
    project = write_project(
        tmp_path,
        {
            "chart": f"oci://{oci_registry.host}/charts/hello",
            "version": "0.1.0",
            "set": {"image": kube.images["busybox"], "greeting": "hello from a registry"},
        },
    )
    data = innerloop_up(innerloop_cli, project, namespace, helm_env, kube, release="web")
    assert (data["greeting"], data["chart"]) == ("hello from a registry", "hello-0.1.0")


class TestRemoteChartFailures:
    """helm's failures to fetch a chart, as the one line `innerloop up` prints."""

    @pytest.fixture(autouse=True)
    def _helm_homes(self, helm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
        for key in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
            monkeypatch.setenv(key, helm_env[key])
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)

    def render(self, tmp_path: Path, helm_bin: Path, source: str) -> str:
        project = parse_config(f"version: 1\nname: shop\nservices:\n  db:\n    manifests:\n      helm: {source}\n")
        with pytest.raises(PlanError) as caught:
            read_manifests(tmp_path, "db", project.services["db"], helm=str(helm_bin))
        message = str(caught.value)
        assert "\n" not in message
        return message

    def test_a_version_the_repository_lacks(self, tmp_path: Path, helm_bin: Path, chart_repository: str) -> None:
        message = self.render(tmp_path, helm_bin, f"{{chart: hello, repo: '{chart_repository}', version: 9.9.9}}")
        assert message.startswith(f"services.db.manifests.helm: {chart_repository} has no chart hello 9.9.9 (")
        assert message.endswith(f"fix chart or version ({chart_repository}/index.yaml lists its charts and versions)")

    def test_a_chart_the_repository_lacks(self, tmp_path: Path, helm_bin: Path, chart_repository: str) -> None:
        message = self.render(tmp_path, helm_bin, f"{{chart: nope, repo: '{chart_repository}', version: 0.1.0}}")
        assert message.startswith(f"services.db.manifests.helm: {chart_repository} has no chart nope 0.1.0 (")

    def test_an_unreachable_repository(self, tmp_path: Path, helm_bin: Path) -> None:
        repo = f"http://127.0.0.1:{free_port()}/charts"
        message = self.render(tmp_path, helm_bin, f"{{chart: hello, repo: '{repo}', version: 0.1.0}}")
        assert message.startswith(f"services.db.manifests.helm: cannot reach {repo} (")
        assert message.endswith("): check repo, the network and any proxy")

    def test_an_unreachable_registry(self, tmp_path: Path, helm_bin: Path) -> None:
        chart = f"oci://127.0.0.1:{free_port()}/charts/hello"
        message = self.render(tmp_path, helm_bin, f"{{chart: '{chart}', version: 0.1.0}}")
        assert message.startswith(f"services.db.manifests.helm: cannot reach {chart} (")

    def test_a_version_the_registry_lacks(
        self, tmp_path: Path, helm_bin: Path, oci_registry: OciRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(oci_registry.ca))
        chart = f"oci://{oci_registry.host}/charts/hello"
        message = self.render(tmp_path, helm_bin, f"{{chart: '{chart}', version: 9.9.9}}")
        assert message.startswith(f"services.db.manifests.helm: {oci_registry.host} has no {chart} 9.9.9 (")
        assert message.endswith(f"(`helm show chart {chart} --version VERSION` checks one)")

    def test_a_registry_whose_certificate_is_not_trusted(
        self, tmp_path: Path, helm_bin: Path, oci_registry: OciRegistry
    ) -> None:
        chart = f"oci://{oci_registry.host}/charts/hello"
        message = self.render(tmp_path, helm_bin, f"{{chart: '{chart}', version: 0.1.0}}")
        assert message.startswith(
            f"services.db.manifests.helm: {oci_registry.host} has a certificate this machine does not trust ("
        )

    def test_a_missing_local_chart(self, tmp_path: Path, helm_bin: Path) -> None:
        message = self.render(tmp_path, helm_bin, "{chart: charts/nope}")
        assert message == f"services.db.manifests.helm.chart: charts/nope does not exist (looked in {tmp_path})"
