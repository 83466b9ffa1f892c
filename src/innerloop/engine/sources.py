"""Read a service's manifests (YAML files and folders, kustomize, Helm) and build its image.

The I/O edge of planning: everything here reads the developer's files or runs
a renderer, and hands plain data to :mod:`innerloop.engine.plan`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from innerloop.builders.bases import BaseImages
from innerloop.builders.choice import build as build_with_choice
from innerloop.builders.dockerfile import DockerfileError
from innerloop.builders.image import BuiltinBuilder, read_config
from innerloop.builders.request import BuildError, BuildRequest
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.paths import ClusterPaths
from innerloop.config import Helm, Service
from innerloop.deploy.render import load_all
from innerloop.engine.plan import BuiltImageInfo, PlanError
from innerloop.oci.archive import BuiltImage


def _run_renderer(
    argv: list[str],
    what: str,
    *,
    install: str = "install it",
    explain: Callable[[str], str] | None = None,
    cwd: Path | None = None,
) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise PlanError(f"{what} needs `{argv[0]}` on PATH; {install} or list plain YAML files under manifests.files")
    out = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    if out.returncode != 0:
        if explain is not None:
            raise PlanError(explain(out.stderr))
        raise PlanError(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
    return out.stdout


def read_manifests(
    root: Path, name: str, service: Service, *, kubectl: str = "kubectl", helm: str = "helm"
) -> list[dict[str, Any]]:
    m = service.manifests
    if m.files:
        texts: list[tuple[Path, str]] = []
        for entry in m.files:
            path = root / entry
            if path.is_dir():
                texts += [(f, f.read_text()) for f in sorted(path.iterdir()) if f.suffix in (".yaml", ".yml", ".json")]
            elif path.is_file():
                texts.append((path, path.read_text()))
            else:
                raise PlanError(f"services.{name}.manifests.files: {entry} does not exist (looked in {root})")
        return [d for path, text in texts for d in load_all(text, source=str(path.relative_to(root)))]
    if m.kustomize:
        return load_all(_run_renderer([kubectl, "kustomize", str(root / m.kustomize)], "manifests.kustomize"))
    if m.helm:
        chart = m.helm
        where = f"services.{name}.manifests.helm"
        if not chart.remote and not (root / chart.chart).exists():
            raise PlanError(f"{where}.chart: {chart.chart} does not exist (looked in {root})")
        # In an empty folder: helm takes a folder in its working directory named like a remote
        # chart ("postgresql") over the repository, with only a warning.
        with tempfile.TemporaryDirectory(prefix="innerloop-helm-") as cwd:
            text = _run_renderer(
                helm_template_argv(root.absolute(), chart.release or name, chart, helm=helm),
                "manifests.helm",
                install="install it, run `innerloop cluster up` (which builds one),",
                explain=lambda err: explain_helm_failure(err, where=where, chart=chart),
                cwd=Path(cwd),
            )
        return load_all(text)
    raise PlanError(f"services.{name}.manifests: nothing to read")


def helm_template_argv(root: Path, release: str, chart: Helm, *, helm: str = "helm") -> list[str]:
    """The `helm template` command for a chart (pure).

    A local chart (folder or .tgz) and the values files are paths under
    ``root``; an oci:// reference and a repository's chart name are passed as
    written, with ``--repo`` and ``--version``.
    """
    argv = [helm, "template", release, chart.chart if chart.remote else str(root / chart.chart)]
    if chart.repo is not None:
        argv += ["--repo", chart.repo]
    if chart.version is not None:
        argv += ["--version", chart.version]
    for values in chart.values:
        argv += ["--values", str(root / values)]
    for key, value in chart.set_values.items():
        argv += ["--set", f"{key}={value}"]
    return argv


_UNAUTHORIZED = re.compile(r"\b(401|403)\b|unauthori[sz]ed|authentication required|denied", re.I)
_UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|network is unreachable|no route to host|context deadline exceeded",
    re.I,
)
_UNTRUSTED = re.compile(r"x509:|failed to verify certificate", re.I)
_PLAIN_HTTP = re.compile(r"does not look like a TLS handshake|server gave HTTP response to HTTPS client", re.I)
_NOT_FOUND = re.compile(r"\bnot found\b|\b404\b|manifest unknown|name unknown", re.I)


def _tls_failure(detail: str, *, where: str, source: str, plain_fix: str) -> str | None:
    if _UNTRUSTED.search(detail):
        return (
            f"{where}: {source} has a certificate this machine does not trust ({detail}): add its CA to the "
            "system's trust store (or point SSL_CERT_FILE at a bundle that has it)"
        )
    if _PLAIN_HTTP.search(detail):
        return f"{where}: {source} answers plain HTTP where helm speaks HTTPS ({detail}): {plain_fix}"
    return None


def explain_helm_failure(stderr: str, *, where: str, chart: Helm) -> str:
    """One line that says why `helm template` failed and what to do (pure).

    Fetching a remote chart fails in a few ways that helm words differently
    for registries and repositories; each gets the step that fixes it.
    Anything else (a template error, a bad values file) is helm's own message.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    detail = " ".join(errors or lines)
    if chart.repo is not None:
        return _repository_failure(detail, where=where, chart=chart.chart, repo=chart.repo, version=chart.version)
    if chart.remote:
        return _registry_failure(detail, where=where, reference=chart.chart, version=chart.version)
    return f"{where}: `helm template` failed: {detail}"


def _repository_failure(detail: str, *, where: str, chart: str, repo: str, version: str | None) -> str:
    if _UNAUTHORIZED.search(detail):
        return (
            f"{where}: {repo} wants credentials ({detail}); innerloop passes none to a repository: "
            f"download the chart (`helm pull {chart} --repo {repo} --version {version} --username ...`) "
            "and give the .tgz as chart"
        )
    if tls := _tls_failure(detail, where=where, source=repo, plain_fix="write repo as http://..."):
        return tls
    if "index.yaml" in detail and _NOT_FOUND.search(detail):
        return f"{where}: {repo} is not a chart repository: it has no index.yaml ({detail}); check repo"
    if _UNREACHABLE.search(detail):
        return f"{where}: cannot reach {repo} ({detail}): check repo, the network and any proxy"
    if _NOT_FOUND.search(detail):
        return (
            f"{where}: {repo} has no chart {chart} {version} ({detail}): "
            f"fix chart or version ({repo.rstrip('/')}/index.yaml lists its charts and versions)"
        )
    return f"{where}: `helm template` failed: {detail}"


def _registry_failure(detail: str, *, where: str, reference: str, version: str | None) -> str:
    host = reference.removeprefix("oci://").split("/", 1)[0]
    if _UNAUTHORIZED.search(detail):
        return (
            f"{where}: {host} wants credentials for {reference} ({detail}): "
            f"run `helm registry login {host}`, then `innerloop up` again"
        )
    if tls := _tls_failure(detail, where=where, source=host, plain_fix="helm reaches registries over HTTPS only"):
        return tls
    if _UNREACHABLE.search(detail):
        return f"{where}: cannot reach {reference} ({detail}): check the address, the network and any proxy"
    if _NOT_FOUND.search(detail):
        return (
            f"{where}: {host} has no {reference} {version} ({detail}): "
            f"fix chart or version (`helm show chart {reference} --version VERSION` checks one)"
        )
    return f"{where}: `helm template` failed: {detail}"


def base_resolver(paths: ClusterPaths) -> dict[str, Callable[[], Path]]:
    """The bundled base images, by the name a Dockerfile uses: each built (or found in the cache) when first asked."""
    images = ClusterImages(paths=paths, report=lambda _m: None)
    return {
        "innerloop.local/python:3.11": lambda: images.python().archive,
        "innerloop.local/busybox:1.35": lambda: images.busybox().archive,
    }


def build_service_image(
    root: Path, name: str, service: Service, *, paths: ClusterPaths, report: Callable[[str], None] | None = None
) -> tuple[BuiltImage, BuiltImageInfo]:
    """Build (or find by input hash) a service's image with the builder its config chooses.

    ``report`` gets the builder's choice and its reason, and a real builder's progress.
    """
    assert service.image is not None
    say = report or (lambda _line: None)
    image_config = service.image
    context = root / image_config.context
    dockerfile = root / image_config.dockerfile if image_config.dockerfile else context / "Dockerfile"
    where = f"services.{name}.image"
    if not context.is_dir():
        raise PlanError(f"{where}.context: {image_config.context} is not a folder (looked in {root})")
    if not dockerfile.exists():
        raise PlanError(f"{where}: no Dockerfile at {dockerfile}")
    request = BuildRequest(
        context=context,
        dockerfile=dockerfile,
        repository=f"innerloop.local/{image_config.name}",
        build_args=dict(image_config.build_args),
        target=image_config.target,
        platform=image_config.platform,
        out_dir=paths.images / "apps",
    )
    builtin = BuiltinBuilder(bases=BaseImages(bundled=base_resolver(paths), cache=paths.images / "fetched"))
    try:
        image, _choice = build_with_choice(
            image_config.builder,
            request,
            builtin=builtin,
            custom_command=image_config.custom.command if image_config.custom else None,
            report=lambda line: say(f"{name}: {line}"),
        )
    except (BuildError, DockerfileError) as err:
        raise PlanError(f"{where}: {err}") from None
    config = read_config(image.archive).get("config") or {}
    assert isinstance(config, dict)
    entrypoint = config.get("Entrypoint") or []
    cmd = config.get("Cmd") or []
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    return image, BuiltImageInfo(
        reference=image.tag, entrypoint=[str(e) for e in entrypoint], cmd=[str(c) for c in cmd]
    )
