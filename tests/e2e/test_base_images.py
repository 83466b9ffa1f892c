"""The base images are real: real Dockerfiles build on them with buildah and their results run.

No cluster is needed. The bases are built (or taken from the cache) by
``innerloop.cluster.base_images``, pushed with skopeo into a throwaway Debian ``docker-registry`` on
127.0.0.1, and pulled from there by ``buildah bud`` as any Dockerfile's ``FROM`` would be:

- a Python app whose Dockerfile runs ``pip install -r requirements.txt`` (Flask, from PyPI);
- a Node app with a package-lock.json and ``npm ci`` (is-number, from npm), run as user ``node``;
- a multi-stage Go build (a module with one dependency from the Go proxy) whose binary runs on
  the distroless static image as nonroot, which has no shell.

Each result is run as a runtime would (its ENTRYPOINT and CMD as its USER, with ``buildah run``) and
its output checked. buildah's storage lives in the test's folder and is removed; the registry is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from innerloop.cluster.base_images import REFERENCES, base_images
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import stderr_report
from innerloop.oci.archive import BuiltImage

from .oci_tools import Buildah, LocalRegistry, local_registry, push_archive

TOOLS = ("debootstrap", "docker-registry", "skopeo", "buildah")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building base images needs root (debootstrap, chroot)")


@pytest.fixture(scope="module")
def bases() -> dict[str, BuiltImage]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools (Debian packages): {' '.join(missing)}")
    return base_images(ClusterPaths.from_env(), stderr_report)


@pytest.fixture(scope="module")
def registry(bases: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        for reference, image in bases.items():
            push_archive(image.archive, f"{reg.address}/{reference}")
        yield reg
    shutil.rmtree(reg.storage, ignore_errors=True)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    with Buildah(tmp_path_factory.mktemp("buildah")) as b:
        yield b


def _context(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return folder


def _env(builder: Buildah, image: str) -> dict[str, str]:
    doc = builder.inspect(image)
    config = doc["OCIv1"]["config"]  # type: ignore[index]
    return dict(item.split("=", 1) for item in config.get("Env", []))


def test_every_base_is_built_and_a_warm_call_reads_only_the_cache(bases: dict[str, BuiltImage]) -> None:
    assert sorted(bases) == sorted(REFERENCES)
    for reference, image in bases.items():
        assert image.archive.is_file(), reference
        assert image.tag == f"innerloop.local/{reference}"
    started = time.monotonic()
    again = base_images(ClusterPaths.from_env(), stderr_report)
    assert time.monotonic() - started < 5
    assert again == bases


def test_all_bases_share_one_debian_layer_and_distroless_has_no_shell(bases: dict[str, BuiltImage]) -> None:
    def layers(image: BuiltImage) -> list[str]:
        with tarfile.open(image.archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            return list(manifest[0]["Layers"])

    debian = layers(bases["library/debian:bookworm-slim"])
    assert len(debian) == 1
    for flavour in ("library/python:3.11-slim", "library/node:18-slim", "library/golang:1.19"):
        assert layers(bases[flavour])[:1] == debian, flavour
    for distroless in ("distroless/static-debian12:nonroot", "distroless/base-debian12:latest"):
        image = bases[distroless]
        with tarfile.open(image.archive) as outer:
            (layer_name,) = layers(image)
            layer = outer.extractfile(layer_name)
            assert layer is not None
            with tarfile.open(fileobj=layer) as inner:
                names = set(inner.getnames())
        assert "etc/ssl/certs/ca-certificates.crt" in names
        assert "usr/share/zoneinfo/Europe/Berlin" in names
        assert not {"bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash", "usr/bin/busybox"} & names, distroless
        if "base" in distroless:
            assert "usr/lib/x86_64-linux-gnu/libc.so.6" in names or "usr/lib/aarch64-linux-gnu/libc.so.6" in names
            assert "lib64" in names or "lib" in names  # the ELF interpreter's path resolves


def test_python_app_with_pip_install_builds_and_runs(registry: LocalRegistry, builder: Buildah, tmp_path: Path) -> None:
    context = _context(
        tmp_path / "py",
        {
            "requirements.txt": "flask==3.*\n",
            "app.py": """
                import importlib.metadata, sys
                import flask
                print("flask", importlib.metadata.version("flask"), "python", sys.version.split()[0])
            """,
            "Dockerfile": f"""
                FROM {registry.address}/library/python:3.11-slim
                WORKDIR /app
                COPY requirements.txt .
                RUN pip install --no-cache-dir -r requirements.txt
                COPY app.py .
                CMD ["python", "app.py"]
            """,
        },
    )
    builder.bud(context, "localhost/test/py-app:1")
    out = builder.run_image("localhost/test/py-app:1").stdout
    assert out.startswith("flask 3."), out
    assert " python 3.11." in out
    base = f"{registry.address}/library/python:3.11-slim"
    env = _env(builder, base)
    assert env["PYTHON_VERSION"].startswith("3.11."), env
    assert env["LANG"] == "C.UTF-8"
    assert builder.run(base, "pip", "--version").stdout.startswith("pip ")
    assert "venv" in builder.run(base, "python", "-m", "venv", "--help").stdout


def test_node_app_with_npm_ci_builds_and_runs(registry: LocalRegistry, builder: Buildah, tmp_path: Path) -> None:
    lock = {
        "name": "hello",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "hello", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}},
            "node_modules/is-number": {
                "version": "7.0.0",
                "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
                "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8AN"
                "v0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
                "engines": {"node": ">=0.12.0"},
            },
        },
    }
    context = _context(
        tmp_path / "node",
        {
            "package.json": json.dumps(
                {"name": "hello", "version": "1.0.0", "private": True, "dependencies": {"is-number": "7.0.0"}}
            ),
            "package-lock.json": json.dumps(lock, indent=2),
            "index.js": """
                const isNumber = require("is-number");
                const { version } = require("is-number/package.json");
                console.log(`is-number ${version} ${isNumber(5)} node ${process.version} uid ${process.getuid()}`);
            """,
            "Dockerfile": f"""
                FROM {registry.address}/library/node:18-slim
                WORKDIR /app
                COPY package.json package-lock.json ./
                RUN npm ci --omit=dev
                COPY index.js .
                USER node
                CMD ["node", "index.js"]
            """,
        },
    )
    builder.bud(context, "localhost/test/node-app:1")
    out = builder.run_image("localhost/test/node-app:1").stdout.strip()
    assert out.startswith("is-number 7.0.0 true node v18."), out
    assert out.endswith("uid 1000")
    assert _env(builder, f"{registry.address}/library/node:18-slim")["NODE_VERSION"].startswith("18.")


def test_go_multi_stage_build_runs_on_distroless_static(
    registry: LocalRegistry, builder: Buildah, tmp_path: Path
) -> None:
    context = _context(
        tmp_path / "go",
        {
            "go.mod": """
                module example.com/hello

                go 1.19

                require github.com/google/uuid v1.3.0
            """,
            "go.sum": """
                github.com/google/uuid v1.3.0 h1:t6JiXgmwXMjEs8VusXIJk2BXHsn+wx8BZdTaoZ5fu7I=
                github.com/google/uuid v1.3.0/go.mod h1:TIyPZe4MgqvfeYDBFedMoGGpEw/LqOeaOT+nhxU+yHo=
            """,
            "main.go": """
                package main

                import (
                    "fmt"
                    "os"
                    "runtime"

                    "github.com/google/uuid"
                )

                func main() {
                    _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt")
                    fmt.Printf("hello from %s uid=%d id=%s certs=%v\\n", runtime.Version(), os.Getuid(),
                        uuid.NewSHA1(uuid.NameSpaceDNS, []byte("innerloop.dev")), err == nil)
                }
            """,
            "Dockerfile": f"""
                FROM {registry.address}/library/golang:1.19 AS build
                WORKDIR /src
                COPY go.mod go.sum ./
                RUN go mod download
                COPY main.go .
                RUN CGO_ENABLED=0 go build -o /out/hello .

                FROM {registry.address}/distroless/static-debian12:nonroot
                COPY --from=build /out/hello /hello
                ENTRYPOINT ["/hello"]
            """,
        },
    )
    builder.bud(context, "localhost/test/go-app:1")
    out = builder.run_image("localhost/test/go-app:1").stdout.strip()
    assert out.startswith("hello from go1.19."), out
    # the dependency from the Go proxy computed it: a name-based UUID, as Python's uuid5 computes it
    assert out.endswith(f" uid=65532 id={uuid.uuid5(uuid.NAMESPACE_DNS, 'innerloop.dev')} certs=true"), out
    env = _env(builder, f"{registry.address}/library/golang:1.19")
    assert env["GOLANG_VERSION"].startswith("1.19."), env
    assert env["GOTOOLCHAIN"] == "local"
    assert env["GOPATH"] == "/go"
