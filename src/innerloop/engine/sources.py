"""Read a service's manifests (YAML files and folders, kustomize, Helm) and build its image.

The I/O edge of planning: everything here reads the developer's files or runs
a renderer, and hands plain data to :mod:`innerloop.engine.plan`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from innerloop.build.image import build_image, read_archive
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.paths import ClusterPaths
from innerloop.config import Service
from innerloop.deploy.render import load_all
from innerloop.engine.plan import BuiltImageInfo, PlanError
from innerloop.oci.archive import BuiltImage


def _run_renderer(argv: list[str], what: str) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise PlanError(f"{what} needs `{argv[0]}` on PATH; install it or list plain YAML files under manifests.files")
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise PlanError(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
    return out.stdout


def read_manifests(root: Path, name: str, service: Service, *, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    m = service.manifests
    if m.files:
        texts: list[str] = []
        for entry in m.files:
            path = root / entry
            if path.is_dir():
                texts += [f.read_text() for f in sorted(path.iterdir()) if f.suffix in (".yaml", ".yml", ".json")]
            elif path.is_file():
                texts.append(path.read_text())
            else:
                raise PlanError(f"services.{name}.manifests.files: {entry} does not exist (looked in {root})")
        return [d for t in texts for d in load_all(t)]
    if m.kustomize:
        return load_all(_run_renderer([kubectl, "kustomize", str(root / m.kustomize)], "manifests.kustomize"))
    if m.helm:
        argv = ["helm", "template", m.helm.release or name, str(root / m.helm.chart)]
        for values in m.helm.values:
            argv += ["--values", str(root / values)]
        for key, value in m.helm.set_values.items():
            argv += ["--set", f"{key}={value}"]
        return load_all(_run_renderer(argv, "manifests.helm"))
    raise PlanError(f"services.{name}.manifests: nothing to read")


def base_resolver(paths: ClusterPaths) -> dict[str, BuiltImage]:
    """Base images innerloop can build without a registry, by the name a Dockerfile uses."""
    images = ClusterImages(paths=paths, report=lambda _m: None)
    return {"innerloop.local/python:3.11": images.python(), "innerloop.local/busybox:1.35": images.busybox()}


def build_service_image(
    root: Path, name: str, service: Service, *, paths: ClusterPaths
) -> tuple[BuiltImage, BuiltImageInfo]:
    assert service.image is not None
    context = root / service.image.context
    dockerfile = root / service.image.dockerfile if service.image.dockerfile else context / "Dockerfile"
    if not dockerfile.exists():
        raise PlanError(f"services.{name}.image: no Dockerfile at {dockerfile}")
    bases = base_resolver(paths)

    def resolve(ref: str) -> Path:
        if ref not in bases:
            known = ", ".join(sorted(bases))
            raise PlanError(f"{dockerfile}: base image {ref} is not available without a registry; use one of {known}")
        return bases[ref].archive

    image = build_image(
        context=context,
        dockerfile=dockerfile,
        repository=f"innerloop.local/{service.image.name}",
        resolve_base=resolve,
        out_dir=paths.images / "apps",
    )
    config = read_archive(image.archive).config
    entrypoint = config.get("Entrypoint") or []
    cmd = config.get("Cmd") or []
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    return image, BuiltImageInfo(tag=image.tag, entrypoint=[str(e) for e in entrypoint], cmd=[str(c) for c in cmd])
